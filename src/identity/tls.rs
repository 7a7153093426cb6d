//! rustls configurations from a node's identity: servers that require a client
//! certificate from the cluster CA, clients that present the node's own and trust only
//! the cluster CA. Both refuse a revoked certificate ([`Revoked`]), which webpki alone
//! would accept until it expires.

use std::collections::BTreeSet;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;

use super::{CertInfo, IdentityError, LocalIdentity, NodeIdentity};

/// Serials of revoked node certificates (see [`super::serial_hex`]), shared by every
/// verifier of the process and updated as the cluster's list changes. Open connections
/// follow it too: [`Revoked::cut_when_revoked`] ends a peer's connection when its
/// serial joins the list, so a removed node keeps no keep-alive or tunnel it had.
#[derive(Debug, Clone)]
pub struct Revoked(Arc<tokio::sync::watch::Sender<BTreeSet<String>>>);

impl Default for Revoked {
    fn default() -> Self {
        Self(Arc::new(tokio::sync::watch::Sender::new(BTreeSet::new())))
    }
}

impl Revoked {
    pub fn contains(&self, serial: &str) -> bool {
        self.0.borrow().contains(serial)
    }

    /// Replaces the list; returns whether it changed.
    pub fn set(&self, serials: BTreeSet<String>) -> bool {
        self.0.send_if_modified(|held| {
            let changed = *held != serials;
            *held = serials;
            changed
        })
    }

    pub fn serials(&self) -> BTreeSet<String> {
        self.0.borrow().clone()
    }

    /// Resolves once `serial` is on the list (at once if it is already).
    pub fn until_revoked(&self, serial: String) -> crate::http::Ending {
        let mut list = self.0.subscribe();
        Box::pin(async move {
            if list.wait_for(|s| s.contains(&serial)).await.is_err() {
                // The list is gone with its process: nothing is revoked any more.
                std::future::pending::<()>().await;
            }
        })
    }

    /// For [`crate::http::TlsListener`]: a connection ends when the certificate its
    /// peer showed is revoked.
    pub fn cut_when_revoked(&self) -> crate::http::CutWhen {
        let revoked = self.clone();
        Arc::new(move |conn: &rustls::ServerConnection| revoked.until_peer_revoked(conn))
    }

    /// Resolves once the certificate the peer of `conn` showed is revoked.
    pub fn until_peer_revoked(&self, conn: &rustls::ServerConnection) -> crate::http::Ending {
        let serial = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| CertInfo::from_der(c).ok())
            .map(|info| info.serial);
        match serial {
            Some(serial) => self.until_revoked(serial),
            None => Box::pin(std::future::pending()),
        }
    }

    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<CertInfo, rustls::Error> {
        let info = CertInfo::from_der(end_entity).map_err(|e| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(e),
            )))
        })?;
        if self.contains(&info.serial) {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Revoked,
            ));
        }
        Ok(info)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn tls(e: impl std::fmt::Display) -> IdentityError {
    IdentityError::Tls(e.to_string())
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, IdentityError> {
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        store
            .add(cert.map_err(|e| tls(format!("CA certificate: {e:?}")))?)
            .map_err(tls)?;
    }
    if store.is_empty() {
        return Err(tls("the CA file holds no certificate"));
    }
    Ok(Arc::new(store))
}

fn chain(cert_pem: &str) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls(format!("node certificate: {e:?}")))
}

fn key(key_pem: &str) -> Result<PrivateKeyDer<'static>, IdentityError> {
    PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| tls(format!("node key: {e:?}")))
}

/// A certificate whose signature the cluster CA's key does not verify (another CA with
/// the cluster CA's name) is one that CA never issued: refused as from an unknown CA.
/// rustls's own alert for it, decrypt_error, makes clients such as Docker's say
/// "error decrypting message", nothing about the certificate.
fn unknown_ca_for_a_bad_signature(e: rustls::Error) -> rustls::Error {
    match e {
        rustls::Error::InvalidCertificate(c)
            if rustls::AlertDescription::from(c.clone())
                == rustls::AlertDescription::DecryptError =>
        {
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
        }
        e => e,
    }
}

/// Requires a client certificate from the cluster CA that is not revoked.
#[derive(Debug)]
struct ClusterClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: Revoked,
}

impl ClientCertVerifier for ClusterClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(unknown_ca_for_a_bad_signature)?;
        self.revoked.check(end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Verifies a server against the cluster CA (name = the IP dialled) and the revocation
/// list.
#[derive(Debug)]
struct ClusterServerVerifier {
    inner: Arc<dyn ServerCertVerifier>,
    revoked: Revoked,
}

impl ServerCertVerifier for ClusterServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified =
            self.inner
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        self.revoked.check(end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The two TLS configurations of a node, built once from its identity and sharing its
/// revocation list.
#[derive(Debug, Clone)]
pub struct TlsConfigs {
    /// For listeners: the node's certificate; clients must show one from the CA.
    pub server: Arc<rustls::ServerConfig>,
    /// For connections to other nodes: the node's certificate as the client's; the
    /// server must show one from the CA naming the IP dialled.
    pub client: Arc<rustls::ClientConfig>,
    pub revoked: Revoked,
}

impl TlsConfigs {
    pub fn new(identity: &LocalIdentity, revoked: Revoked) -> Result<Self, IdentityError> {
        Self::from_pems(
            &identity.ca_pem,
            &identity.cert_pem,
            &identity.key_pem,
            revoked,
        )
    }

    pub fn from_pems(
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
        revoked: Revoked,
    ) -> Result<Self, IdentityError> {
        let roots = roots(ca_pem)?;
        let client_verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(tls)?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(tls)?
            .with_client_cert_verifier(Arc::new(ClusterClientVerifier {
                inner: client_verifier,
                revoked: revoked.clone(),
            }))
            .with_single_cert(chain(cert_pem)?, key(key_pem)?)
            .map_err(tls)?;
        // A resumed session skips the client's certificate, so a revoked node could go
        // on resuming: every connection is a full handshake.
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        server.send_tls13_tickets = 0;
        let server_verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(tls)?;
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(tls)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ClusterServerVerifier {
                inner: server_verifier,
                revoked: revoked.clone(),
            }))
            .with_client_auth_cert(chain(cert_pem)?, key(key_pem)?)
            .map_err(tls)?;
        Ok(Self {
            server: Arc::new(server),
            client: Arc::new(client),
            revoked,
        })
    }
}

/// The join service's server side: no client certificate (joiners have none yet), and
/// the CA's certificate sent after the node's, so a joiner holding only the CA's digest
/// can check the chain.
pub fn join_server_config(
    identity: &LocalIdentity,
) -> Result<Arc<rustls::ServerConfig>, IdentityError> {
    let mut certs = chain(&identity.cert_pem)?;
    certs.extend(chain(&identity.ca_pem)?);
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls)?
        .with_no_client_auth()
        .with_single_cert(certs, key(&identity.key_pem)?)
        .map_err(tls)?;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Trusts the one CA whose certificate has `digest` (from a join token), found among
/// the certificates the server sent, and only a server of that CA: a fake boot node, or
/// a client of the right cluster, fails the handshake before the joiner sends its token.
#[derive(Debug)]
struct PinnedCaVerifier {
    digest: String,
    /// The join peer's overlay IP, from the ADDRESS in `--join ADDRESS@IP`: checked
    /// instead of the name dialled, which is its underlay IP and in no certificate.
    peer: ServerName<'static>,
}

impl PinnedCaVerifier {
    fn anchored(
        &self,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<Arc<dyn ServerCertVerifier>, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| super::cert_digest(c) == self.digest)
            .ok_or_else(|| {
                rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
                    rustls::OtherError(Arc::new(IdentityError::Tls(
                        "the join peer's CA is not the one the token names (another cluster, or not an arpanet server)".into(),
                    ))),
                ))
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map(|v| v as Arc<dyn ServerCertVerifier>)
            .map_err(|e| rustls::Error::General(e.to_string()))
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialled: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.anchored(intermediates)?.verify_server_cert(
            end_entity,
            &[],
            &self.peer,
            ocsp,
            now,
        )?;
        let info = CertInfo::from_der(end_entity).map_err(|e| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(e),
            )))
        })?;
        if info.identity.role != super::Role::Server {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A joiner's client config: no certificate of its own, the CA pinned by `digest`, and
/// the peer a server of that CA with the address `peer`.
pub fn pinned_client_config(
    digest: &str,
    peer: crate::addressing::NodeAddress,
) -> Result<rustls::ClientConfig, IdentityError> {
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCaVerifier {
            digest: digest.to_string(),
            peer: ServerName::IpAddress(std::net::IpAddr::V4(peer.overlay_ip()).into()),
        }))
        .with_no_client_auth())
}

/// A TLS failure in words: the message of arpanet's own verifier errors rather than
/// rustls' nested Debug form of them.
pub fn describe(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
            let text = other.0.to_string();
            text.strip_prefix("TLS: ").unwrap_or(&text).to_string()
        }
        e => e.to_string(),
    }
}

/// Who the peer of a verified connection is, from the certificate it showed.
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Option<NodeIdentity> {
    let first = certs?.first()?;
    CertInfo::from_der(first).ok().map(|i| i.identity)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::{Ca, NodeKey, Role};
    use super::*;

    struct Pems {
        ca: String,
        cert: String,
        key: String,
        serial: String,
    }

    fn node(ca: &Ca, address: &str, valid: Duration) -> Pems {
        let key = NodeKey::generate().unwrap();
        let who = NodeIdentity {
            cluster: "apples".into(),
            address: address.parse().unwrap(),
            role: Role::Client,
        };
        let issued = ca.issue(&key.csr_pem().unwrap(), &who, valid).unwrap();
        Pems {
            ca: ca.cert_pem.clone(),
            cert: issued.cert_pem,
            key: key.key_pem(),
            serial: issued.serial,
        }
    }

    fn configs(p: &Pems, revoked: Revoked) -> TlsConfigs {
        TlsConfigs::from_pems(&p.ca, &p.cert, &p.key, revoked).unwrap()
    }

    /// A handshake in memory between `client` dialling 10.255.0.1 and `server`.
    fn handshake(client: &TlsConfigs, server: &TlsConfigs) -> Result<(), rustls::Error> {
        let name = ServerName::IpAddress(std::net::Ipv4Addr::new(10, 255, 0, 1).into());
        let mut c = rustls::ClientConnection::new(client.client.clone(), name)?;
        let mut s = rustls::ServerConnection::new(server.server.clone())?;
        for _ in 0..10 {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).unwrap();
            let mut rd = &buf[..];
            while !rd.is_empty() {
                s.read_tls(&mut rd).unwrap();
            }
            s.process_new_packets()?;
            let mut buf = Vec::new();
            s.write_tls(&mut buf).unwrap();
            let mut rd = &buf[..];
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
            }
            c.process_new_packets()?;
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(());
            }
        }
        Err(rustls::Error::General("handshake did not finish".into()))
    }

    #[test]
    fn nodes_of_one_ca_shake_hands_and_know_each_other() {
        let ca = Ca::generate("apples").unwrap();
        let server = configs(
            &node(&ca, "0.1", Duration::from_secs(600)),
            Revoked::default(),
        );
        let client = configs(
            &node(&ca, "0.2", Duration::from_secs(600)),
            Revoked::default(),
        );
        handshake(&client, &server).unwrap();
    }

    #[test]
    fn another_cas_certificate_is_refused_both_ways() {
        let ca = Ca::generate("apples").unwrap();
        let other = Ca::generate("apples").unwrap();
        let server = configs(
            &node(&ca, "0.1", Duration::from_secs(600)),
            Revoked::default(),
        );
        let stranger = configs(
            &node(&other, "0.1", Duration::from_secs(600)),
            Revoked::default(),
        );
        assert!(handshake(&stranger, &server).is_err());
        assert!(handshake(&server, &stranger).is_err());
    }

    #[test]
    fn a_revoked_certificate_is_refused_once_listed() {
        let ca = Ca::generate("apples").unwrap();
        let revoked = Revoked::default();
        let server = configs(&node(&ca, "0.1", Duration::from_secs(600)), revoked.clone());
        let p = node(&ca, "0.2", Duration::from_secs(600));
        let client = configs(&p, Revoked::default());
        handshake(&client, &server).unwrap();
        assert!(revoked.set([p.serial.clone()].into()));
        let e = handshake(&client, &server).unwrap_err();
        assert!(
            matches!(
                e,
                rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)
            ),
            "{e:?}"
        );
    }

    fn local(p: &Pems) -> LocalIdentity {
        LocalIdentity {
            files: crate::paths::IdentityFiles::new(std::path::Path::new("/nonexistent")),
            ca_pem: p.ca.clone(),
            cert_pem: p.cert.clone(),
            key_pem: p.key.clone(),
            info: CertInfo::from_pem(&p.cert).unwrap(),
        }
    }

    fn join_handshake(digest: &str, server: &Pems) -> Result<(), rustls::Error> {
        let name = ServerName::IpAddress(std::net::Ipv4Addr::new(10, 255, 0, 1).into());
        let peer = "0.1".parse().unwrap();
        let mut c = rustls::ClientConnection::new(
            Arc::new(pinned_client_config(digest, peer).unwrap()),
            name,
        )?;
        let mut s = rustls::ServerConnection::new(join_server_config(&local(server)).unwrap())?;
        for _ in 0..10 {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).unwrap();
            let mut rd = &buf[..];
            while !rd.is_empty() {
                s.read_tls(&mut rd).unwrap();
            }
            s.process_new_packets()?;
            let mut buf = Vec::new();
            s.write_tls(&mut buf).unwrap();
            let mut rd = &buf[..];
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
            }
            c.process_new_packets()?;
            if !c.is_handshaking() {
                return Ok(());
            }
        }
        Err(rustls::Error::General("handshake did not finish".into()))
    }

    fn server_node(ca: &Ca, address: &str) -> Pems {
        let key = NodeKey::generate().unwrap();
        let who = NodeIdentity {
            cluster: "apples".into(),
            address: address.parse().unwrap(),
            role: Role::Server,
        };
        let issued = ca
            .issue(&key.csr_pem().unwrap(), &who, Duration::from_secs(600))
            .unwrap();
        Pems {
            ca: ca.cert_pem.clone(),
            cert: issued.cert_pem,
            key: key.key_pem(),
            serial: issued.serial,
        }
    }

    #[test]
    fn a_joiner_trusts_only_a_server_of_the_pinned_ca() {
        let ca = Ca::generate("apples").unwrap();
        join_handshake(&ca.digest(), &server_node(&ca, "0.1")).unwrap();
        // A fake boot node with a CA of its own.
        let fake = Ca::generate("apples").unwrap();
        assert!(join_handshake(&ca.digest(), &server_node(&fake, "0.1")).is_err());
        // The right CA, but the peer is a client, or not the node the joiner named.
        assert!(join_handshake(&ca.digest(), &node(&ca, "0.1", Duration::from_secs(600))).is_err());
        assert!(join_handshake(&ca.digest(), &server_node(&ca, "0.9")).is_err());
    }

    #[test]
    fn an_expired_certificate_is_refused() {
        let ca = Ca::generate("apples").unwrap();
        let server = configs(
            &node(&ca, "0.1", Duration::from_secs(600)),
            Revoked::default(),
        );
        let key = NodeKey::generate().unwrap();
        let who = NodeIdentity {
            cluster: "apples".into(),
            address: "0.2".parse().unwrap(),
            role: Role::Client,
        };
        let now = std::time::SystemTime::now();
        let hour = Duration::from_secs(3600);
        let issued = ca
            .issue_between(&key.csr_pem().unwrap(), &who, now - 2 * hour, now - hour)
            .unwrap();
        let old = configs(
            &Pems {
                ca: ca.cert_pem.clone(),
                cert: issued.cert_pem,
                key: key.key_pem(),
                serial: issued.serial,
            },
            Revoked::default(),
        );
        let e = handshake(&old, &server).unwrap_err();
        assert!(
            matches!(
                e,
                rustls::Error::InvalidCertificate(rustls::CertificateError::Expired)
                    | rustls::Error::InvalidCertificate(
                        rustls::CertificateError::ExpiredContext { .. }
                    )
            ),
            "{e:?}"
        );
    }
}
