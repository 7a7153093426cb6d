//! The cluster API's TCP side: mutual TLS with the node certificates. A connection
//! reaches axum only after a full handshake in which the peer showed a certificate from
//! the cluster CA that is neither expired nor revoked; anything else (no certificate,
//! another CA, plain HTTP) fails in the handshake and never reaches a handler.

use std::net::SocketAddr;

use crate::http::TlsListener;
use crate::identity::NodeIdentity;
use crate::identity::tls::peer_identity;

/// Who is on the other end of a cluster API request over TCP: handlers take it as
/// `ConnectInfo<Peer>`.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// What the peer's verified certificate names; `None` only if it names no node,
    /// which [`super::server`] refuses.
    pub node: Option<NodeIdentity>,
    /// The certificate itself (serial, validity): renewal reads whether it is due.
    pub cert: Option<crate::identity::CertInfo>,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        let certs = stream.io().get_ref().get_ref().1.peer_certificates();
        Self {
            addr: *stream.remote_addr(),
            node: peer_identity(certs),
            cert: certs
                .and_then(|c| c.first())
                .and_then(|c| crate::identity::CertInfo::from_der(c).ok()),
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::extract::ConnectInfo;
    use axum::routing::get;

    use std::time::Duration;

    use tokio::net::TcpListener;

    use super::*;
    use crate::identity::{Ca, NodeIdentity, NodeTls, Role, enroll_locally};
    use crate::paths::IdentityFiles;

    fn node(ca: &Ca, dir: &std::path::Path, address: &str) -> NodeTls {
        let files = IdentityFiles::new(&dir.join(address));
        let who = NodeIdentity {
            cluster: "apples".into(),
            address: address.parse().unwrap(),
            role: Role::Client,
        };
        enroll_locally(ca, &files, &who).unwrap();
        NodeTls::new(files, dir.join(format!("{address}-revoked.json")))
    }

    /// Over loopback (node certificates name 127.0.0.1): a node's client gets through
    /// and the handler knows who it is; a client without a certificate gets nothing.
    #[tokio::test]
    async fn handlers_see_the_verified_peer_and_strangers_get_no_answer() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate("apples").unwrap();
        let server = node(&ca, dir.path(), "0.1");
        let client = node(&ca, dir.path(), "0.2");
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = tcp.local_addr().unwrap().port();
        let listener = TlsListener::new(tcp, "cluster API", None, move || {
            server.current().ok().map(|c| c.server)
        })
        .unwrap();
        let app = axum::Router::new().route(
            "/who",
            get(|ConnectInfo(p): ConnectInfo<Peer>| async move {
                p.node.map(|n| n.spiffe_id()).unwrap_or_default()
            }),
        );
        tokio::spawn(async move {
            axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
                .await
                .unwrap()
        });
        let url = format!("https://127.0.0.1:{port}/who");
        let nodes = crate::identity::NodeClient::new(
            client,
            Duration::from_secs(3),
            Duration::from_secs(10),
        );
        let answer = nodes.get().unwrap().get(&url).send().await.unwrap();
        assert_eq!(answer.text().await.unwrap(), "spiffe://apples/client/0.2");
        // Trusts the server, shows no certificate of its own.
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(
                crate::identity::first_cert_der(&ca.cert_pem)
                    .unwrap()
                    .into(),
            )
            .unwrap();
        let anonymous = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let stranger = reqwest::Client::builder()
            .tls_backend_preconfigured(anonymous)
            .build()
            .unwrap();
        let e = stranger.get(&url).send().await.unwrap_err();
        assert!(!e.is_status(), "{e}");
        let plain = reqwest::get(format!("http://127.0.0.1:{port}/who")).await;
        assert!(plain.is_err(), "plain HTTP got an answer: {plain:?}");
    }

    /// Node 0.1 answering "hello" on a loopback TLS listener (which cuts connections
    /// whose certificate is revoked, when `cut`); returns its address, node 0.2's TLS
    /// and 0.1's revocation list.
    async fn hello_server(
        dir: &std::path::Path,
        cut: bool,
    ) -> (std::net::SocketAddr, NodeTls, crate::identity::Revoked) {
        let ca = Ca::generate("apples").unwrap();
        let server = node(&ca, dir, "0.1");
        let client = node(&ca, dir, "0.2");
        let revoked = server.revoked().clone();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let cut = cut.then(|| revoked.cut_when_revoked());
        let listener = TlsListener::new(tcp, "cluster API", cut, move || {
            server.current().ok().map(|c| c.server)
        })
        .unwrap();
        let app = axum::Router::new().route("/", get(|| async { "hello" }));
        tokio::spawn(async move {
            axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
                .await
                .unwrap()
        });
        (addr, client, revoked)
    }

    /// A keep-alive connection from a node ends when the node's certificate is revoked,
    /// though it is idle, waiting in a read.
    #[tokio::test]
    async fn an_open_connection_ends_when_its_certificate_is_revoked() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let (addr, client, revoked) = hello_server(dir.path(), true).await;
        let connector = tokio_rustls::TlsConnector::from(client.current().unwrap().client);
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let mut stream = connector.connect(name, tcp).await.unwrap();
        let request = b"GET / HTTP/1.1\r\nHost: node\r\n\r\n";
        stream.write_all(request).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = stream.read(&mut buf).await.unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

        // Another node's revocation leaves it open.
        revoked.set(["ff".to_string()].into());
        let idle = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf)).await;
        assert!(idle.is_err(), "the connection ended early: {idle:?}");
        let mine = crate::identity::LocalIdentity::load(client.files())
            .unwrap()
            .info
            .serial;
        revoked.set(["ff".to_string(), mine].into());
        let ended = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("the connection is still open after the revocation");
        assert!(matches!(ended, Ok(0) | Err(_)), "{ended:?}");
    }

    /// Connections that never start their handshake hold at most
    /// [`crate::http::HANDSHAKES_PER_PEER`] tasks per peer address: the next from that
    /// address is closed at once, another address is still served, and so is the first
    /// when its connections go.
    #[tokio::test]
    async fn half_open_connections_beyond_the_limit_are_closed_at_once() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let (addr, client, _) = hello_server(dir.path(), false).await;
        let from = |ip: [u8; 4]| async move {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket
                .bind((std::net::Ipv4Addr::from(ip), 0).into())
                .unwrap();
            socket.connect(addr).await.unwrap()
        };
        let mut idle = Vec::new();
        for _ in 0..crate::http::HANDSHAKES_PER_PEER {
            idle.push(from([127, 0, 0, 1]).await);
        }
        // Accepted in order: the last of them has its task before the next arrives.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut over = from([127, 0, 0, 1]).await;
        let mut buf = [0u8; 16];
        let closed = tokio::time::timeout(Duration::from_secs(2), over.read(&mut buf)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "one past the limit was kept: {closed:?}"
        );
        let hello = |tcp: tokio::net::TcpStream| {
            let config = client.current().unwrap().client;
            async move {
                let connector = tokio_rustls::TlsConnector::from(config);
                let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
                let mut tls = connector.connect(name, tcp).await.ok()?;
                tls.write_all(b"GET / HTTP/1.1\r\nHost: node\r\n\r\n")
                    .await
                    .ok()?;
                // Headers and body may come in more than one read.
                let mut answer = Vec::new();
                let mut buf = vec![0u8; 4096];
                while !answer.ends_with(b"hello") {
                    match tls.read(&mut buf).await.ok()? {
                        0 => break,
                        n => answer.extend_from_slice(&buf[..n]),
                    }
                }
                Some(answer.ends_with(b"hello"))
            }
        };
        assert_eq!(
            hello(from([127, 0, 0, 2]).await).await,
            Some(true),
            "another peer"
        );
        drop(idle);
        let mut answer = None;
        for _ in 0..20 {
            answer = hello(from([127, 0, 0, 1]).await).await;
            if answer.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            answer,
            Some(true),
            "the first peer once its connections went"
        );
    }
}
