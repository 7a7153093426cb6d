//! The joiner's side: one HTTPS request to a join peer, the CA pinned by the token.

use std::time::Duration;

use super::{JoinError, JoinRequestV1, JoinResponseV1, PeersRequestV1, PeersV1};
use crate::config::JoinPeer;
use crate::http::ErrorBody;
use crate::identity::{JoinToken, tls};

/// Asks `peer`'s join service (on its underlay IP, `port`) for an identity. The TLS
/// handshake fails unless the peer shows a server certificate of the CA the token
/// names, for the address given with it: the token is sent to nobody else.
pub async fn request(
    peer: &JoinPeer,
    port: u16,
    token: &JoinToken,
    body: &JoinRequestV1,
) -> Result<JoinResponseV1, JoinError> {
    post(peer, port, token, "/v1/join", body, "the join").await
}

/// The cluster's nodes from `peer`'s join service (`POST /v1/join/peers`).
pub async fn peers(peer: &JoinPeer, port: u16, token: &JoinToken) -> Result<PeersV1, JoinError> {
    let body = PeersRequestV1 {
        token: token.to_string(),
    };
    post(peer, port, token, "/v1/join/peers", &body, "the peer list").await
}

async fn post<B: serde::Serialize, R: serde::de::DeserializeOwned>(
    peer: &JoinPeer,
    port: u16,
    token: &JoinToken,
    path: &str,
    body: &B,
    what: &str,
) -> Result<R, JoinError> {
    let at = format!("{}@{}:{port}", peer.address, peer.ip);
    let unreachable = |why: String| JoinError::Unreachable {
        at: at.clone(),
        why,
    };
    let config = tls::pinned_client_config(&token.ca_digest, peer.address)?;
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| unreachable(crate::http::request_error(e)))?;
    let resp = http
        .post(format!("https://{}:{port}{path}", peer.ip))
        .json(body)
        .send()
        .await
        .map_err(|e| unreachable(handshake_error(e)))?;
    let status = resp.status();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| unreachable(crate::http::request_error(e)))?;
    if !status.is_success() {
        let why = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|b| b.error)
            .unwrap_or_else(|_| format!("HTTP {status}"));
        if status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
            return Err(JoinError::NotReady(format!(
                "{} cannot issue yet: {why}",
                peer.address
            )));
        }
        return Err(JoinError::Refused(format!(
            "{} refused {what}: {why}",
            peer.address
        )));
    }
    crate::http::parse_json(&bytes)
        .map_err(|why| JoinError::Refused(format!("{} answered {what} with {why}", peer.address)))
}

/// A failed handshake most often means the token's CA is not the peer's: say so rather
/// than reqwest's "error sending request".
fn handshake_error(e: reqwest::Error) -> String {
    use std::error::Error;
    let mut source = Error::source(&e);
    while let Some(s) = source {
        // io::Error hides the error it wraps from source() (and hyper-rustls wraps one
        // io::Error in another): look inside each.
        let mut inner: &(dyn Error + 'static) = s;
        while let Some(e) = inner
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            inner = e;
        }
        if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
            return format!(
                "TLS: {}: the peer is not a server of the cluster whose CA the token names (or not the node ADDRESS in --join ADDRESS@IP); nothing was sent",
                tls::describe(tls)
            );
        }
        source = s.source();
    }
    crate::http::request_error(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Ca, LocalIdentity, NodeIdentity, NodeKey, Role, tls};

    /// A join service on loopback whose server holds a certificate of `ca`.
    async fn serve(ca: &Ca) -> u16 {
        let key = NodeKey::generate().unwrap();
        let who = NodeIdentity {
            cluster: "apples".into(),
            address: "0.1".parse().unwrap(),
            role: Role::Server,
        };
        let issued = ca
            .issue(&key.csr_pem().unwrap(), &who, Duration::from_secs(600))
            .unwrap();
        let local = LocalIdentity {
            files: crate::paths::IdentityFiles::new(std::path::Path::new("/nonexistent")),
            ca_pem: ca.cert_pem.clone(),
            cert_pem: issued.cert_pem.clone(),
            key_pem: key.key_pem(),
            info: crate::identity::CertInfo::from_pem(&issued.cert_pem).unwrap(),
        };
        let config = tls::join_server_config(&local).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new().route(
            "/v1/join",
            axum::routing::post(|| async {
                (
                    axum::http::StatusCode::FORBIDDEN,
                    axum::Json(ErrorBody { error: "no".into() }),
                )
            }),
        );
        let listener = crate::http::TlsListener::new(listener, "join service", None, move || {
            Some(config.clone())
        })
        .unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        port
    }

    fn body() -> JoinRequestV1 {
        JoinRequestV1 {
            token: String::new(),
            address: "0.2".into(),
            role: "client".into(),
            name: "h2".into(),
            csr: String::new(),
        }
    }

    #[tokio::test]
    async fn a_peer_of_another_ca_fails_the_handshake_and_says_so() {
        let ca = Ca::generate("apples").unwrap();
        let port = serve(&ca).await;
        let peer = JoinPeer {
            address: "0.1".parse().unwrap(),
            ip: std::net::Ipv4Addr::LOCALHOST,
        };
        let other = Ca::generate("apples").unwrap();
        let token = JoinToken {
            ca_digest: other.digest(),
            secret: "0".repeat(32),
        };
        let e = request(&peer, port, &token, &body())
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("nothing was sent"), "{e}");
        // The right CA: the request goes through and the refusal is the server's.
        let token = JoinToken {
            ca_digest: ca.digest(),
            secret: "0".repeat(32),
        };
        let e = request(&peer, port, &token, &body())
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(e, "0.1 refused the join: no");
    }
}
