//! Node identity: the cluster CA, each node's certificate, and the TLS configurations
//! every node-to-node connection uses (the cluster API, image sync, Docker, Consul).
//!
//! After Swarm: the CA key lives on servers only (they issue certificates at join and
//! renewal, so with no master any server can; a client that is taken over cannot mint
//! identities). Each node makes its own key, which never leaves it, and sends a CSR of
//! which the CA keeps only the public key: what a certificate names (cluster, address,
//! role) is decided by the issuer, never by the request.
//!
//! A node certificate names its node three ways: the IPs of its planes (so TLS to
//! `10.254.a.b:2376` or `10.255.a.b:7100` verifies as it is), a SPIFFE ID
//! `spiffe://CLUSTER/ROLE/A.B` (what [`NodeIdentity`] reads back), and, for servers,
//! `server.DC.consul`, the name Consul's `verify_server_hostname` checks.

pub mod ca;
pub mod live;
pub mod renew;
pub mod tls;
pub mod token;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::addressing::NodeAddress;
use crate::paths::IdentityFiles;

pub use ca::{Ca, Issued, NodeKey};
pub use live::{NodeClient, NodeTls};
pub use tls::{Revoked, TlsConfigs};
pub use token::{JoinSecrets, JoinToken};

/// How long a node certificate is valid (Swarm's default); it is renewed when a third
/// of that is left.
pub const NODE_CERT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// How long the cluster CA is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

#[derive(Debug, Clone, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {why}")]
    File { path: PathBuf, why: String },
    #[error(
        "{path} does not exist: this node has no cluster identity yet (`arpanet boot`, or join with `arpanet server|client ... --token TOKEN`)"
    )]
    Missing { path: PathBuf },
    #[error("{what}: {why}")]
    Certificate { what: String, why: String },
    #[error("TLS: {0}")]
    Tls(String),
}

impl IdentityError {
    fn cert(what: impl Into<String>, why: impl fmt::Display) -> Self {
        Self::Certificate {
            what: what.into(),
            why: why.to_string(),
        }
    }
}

/// A node's role as its certificate states it. Boot nodes are servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Server,
    Client,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Client => "client",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "server" => Ok(Role::Server),
            "client" => Ok(Role::Client),
            _ => Err(format!("{s:?} is not a role (server or client)")),
        }
    }
}

/// Who a certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// The cluster (Consul's datacenter: lower case).
    pub cluster: String,
    pub address: NodeAddress,
    pub role: Role,
}

impl NodeIdentity {
    pub fn spiffe_id(&self) -> String {
        format!(
            "spiffe://{}/{}/{}",
            self.cluster.to_ascii_lowercase(),
            self.role,
            self.address
        )
    }

    /// Reads a SPIFFE ID as [`NodeIdentity::spiffe_id`] writes it; anything else is None.
    pub fn from_spiffe_id(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix("spiffe://")?;
        let mut parts = rest.split('/');
        let (cluster, role, address) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || cluster.is_empty() {
            return None;
        }
        Some(Self {
            cluster: cluster.to_string(),
            role: role.parse().ok()?,
            address: address.parse().ok()?,
        })
    }

    /// The IPs a certificate for this node names: its planes, and loopback for the
    /// node's own clients (Consul's HTTPS, the local registry).
    pub fn ips(&self) -> Vec<IpAddr> {
        vec![
            IpAddr::V4(self.address.overlay_ip()),
            IpAddr::V4(self.address.docker_api_ip()),
            IpAddr::V4(self.address.consul_ip()),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
        ]
    }

    /// DNS names: `localhost`, and for servers the name Consul's
    /// `verify_server_hostname` wants (`server.<datacenter>.consul`).
    pub fn dns_names(&self) -> Vec<String> {
        let mut names = vec!["localhost".to_string()];
        if self.role == Role::Server {
            names.push(format!(
                "server.{}.consul",
                self.cluster.to_ascii_lowercase()
            ));
        }
        names
    }
}

/// What a node certificate holds that arpanet acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub identity: NodeIdentity,
    /// Lower-case hex without separators: the key of the revocation list.
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl CertInfo {
    /// Parses one certificate (DER).
    pub fn from_der(der: &[u8]) -> Result<Self, IdentityError> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| IdentityError::cert("certificate", e))?;
        let mut identity = None;
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::URI(uri) = name
                    && let Some(id) = NodeIdentity::from_spiffe_id(uri)
                {
                    identity = Some(id);
                }
            }
        }
        let identity = identity.ok_or_else(|| {
            IdentityError::cert(
                "certificate",
                "names no arpanet node (spiffe://CLUSTER/ROLE/A.B)",
            )
        })?;
        let at = |t: i64| UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
        Ok(Self {
            identity,
            serial: serial_hex(cert.raw_serial()),
            not_before: at(cert.validity().not_before.timestamp()),
            not_after: at(cert.validity().not_after.timestamp()),
        })
    }

    pub fn from_pem(pem: &str) -> Result<Self, IdentityError> {
        let der = first_cert_der(pem).map_err(|why| IdentityError::cert("certificate", why))?;
        Self::from_der(&der)
    }

    /// Whether a third or less of its lifetime is left at `now`.
    pub fn due_for_renewal(&self, now: SystemTime) -> bool {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        match self.not_after.duration_since(now) {
            Ok(left) => left <= life / 3,
            Err(_) => true,
        }
    }
}

/// A serial as the revocation list keys it: lower-case hex, leading zero bytes dropped.
pub fn serial_hex(raw: &[u8]) -> String {
    let trimmed: &[u8] = match raw.iter().position(|b| *b != 0) {
        Some(i) => &raw[i..],
        None => &[0],
    };
    trimmed.iter().map(|b| format!("{b:02x}")).collect()
}

/// The DER of the first certificate in a PEM text.
pub fn first_cert_der(pem: &str) -> Result<Vec<u8>, String> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| "no PEM certificate in it".to_string())?
        .map(|c| c.to_vec())
        .map_err(|e| format!("not PEM: {e:?}"))
}

/// SHA-256 of a certificate's DER, in lower-case hex: how a join token pins the CA.
pub fn cert_digest(der: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// SHA-256 of the public key (SubjectPublicKeyInfo) a certificate names, in lower-case
/// hex: two certificates with it are for one key, so for one holder.
pub fn public_key_digest(cert_pem: &str) -> Result<String, IdentityError> {
    let der = first_cert_der(cert_pem).map_err(|why| IdentityError::cert("certificate", why))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| IdentityError::cert("certificate", e))?;
    Ok(cert_digest(cert.public_key().raw))
}

fn read(path: &Path) -> Result<String, IdentityError> {
    std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            IdentityError::Missing {
                path: path.to_path_buf(),
            }
        } else {
            IdentityError::File {
                path: path.to_path_buf(),
                why: e.to_string(),
            }
        }
    })
}

/// A node's identity as its files hold it.
#[derive(Debug, Clone)]
pub struct LocalIdentity {
    pub files: IdentityFiles,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub info: CertInfo,
}

impl LocalIdentity {
    /// Reads ca.pem, cert.pem and key.pem, and checks that the certificate is the CA's
    /// and names a node: a wrong file is one error naming it.
    pub fn load(files: &IdentityFiles) -> Result<Self, IdentityError> {
        let ca_pem = read(&files.ca_cert())?;
        let cert_pem = read(&files.node_cert())?;
        let key_pem = read(&files.node_key())?;
        let info = CertInfo::from_pem(&cert_pem).map_err(|e| IdentityError::File {
            path: files.node_cert(),
            why: e.to_string(),
        })?;
        rcgen::KeyPair::from_pem(&key_pem).map_err(|e| IdentityError::File {
            path: files.node_key(),
            why: format!("not a private key: {e}"),
        })?;
        first_cert_der(&ca_pem).map_err(|why| IdentityError::File {
            path: files.ca_cert(),
            why,
        })?;
        Ok(Self {
            files: files.clone(),
            ca_pem,
            cert_pem,
            key_pem,
            info,
        })
    }

    /// Whether these files exist at all (a node from before identities, or not joined).
    pub fn present(files: &IdentityFiles) -> bool {
        files.node_cert().exists() && files.node_key().exists() && files.ca_cert().exists()
    }

    pub fn ca_digest(&self) -> String {
        cert_digest(&first_cert_der(&self.ca_pem).expect("checked at load"))
    }
}

/// Writes a node's identity: ca.pem and cert.pem world-readable (Docker's client and
/// Consul read them), key.pem 0600. The directory is made 0755.
pub fn write_identity(
    files: &IdentityFiles,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<(), IdentityError> {
    let io = |path: &Path, e: anyhow::Error| IdentityError::File {
        path: path.to_path_buf(),
        why: format!("{e:#}"),
    };
    std::fs::create_dir_all(&files.dir).map_err(|e| io(&files.dir, e.into()))?;
    crate::files::write_private(&files.node_key(), key_pem)
        .map_err(|e| io(&files.node_key(), e))?;
    crate::files::write_atomically_with_mode(&files.ca_cert(), ca_pem, 0o644)
        .map_err(|e| io(&files.ca_cert(), e))?;
    crate::files::write_atomically_with_mode(&files.node_cert(), cert_pem, 0o644)
        .map_err(|e| io(&files.node_cert(), e))?;
    Ok(())
}

/// Makes this node's identity with a CA held here (the boot node, the lab): a fresh
/// key, a certificate issued to `identity`, the files written.
pub fn enroll_locally(
    ca: &Ca,
    files: &IdentityFiles,
    identity: &NodeIdentity,
) -> Result<(), IdentityError> {
    let key = NodeKey::generate()?;
    let issued = ca.issue(&key.csr_pem()?, identity, NODE_CERT_VALIDITY)?;
    write_identity(files, &ca.cert_pem, &issued.cert_pem, &key.key_pem())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(role: Role) -> NodeIdentity {
        NodeIdentity {
            cluster: "Apples".into(),
            address: "0.2".parse().unwrap(),
            role,
        }
    }

    #[test]
    fn spiffe_ids_round_trip_and_odd_ones_are_refused() {
        let s = id(Role::Server).spiffe_id();
        assert_eq!(s, "spiffe://apples/server/0.2");
        let back = NodeIdentity::from_spiffe_id(&s).unwrap();
        assert_eq!(back.address, "0.2".parse().unwrap());
        assert_eq!(back.role, Role::Server);
        for bad in [
            "spiffe://apples/server/0.2/x",
            "spiffe://apples/root/0.2",
            "spiffe://apples/client/300.2",
            "spiffe:///client/0.2",
            "https://apples/client/0.2",
        ] {
            assert!(NodeIdentity::from_spiffe_id(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn servers_carry_consuls_server_name() {
        assert!(
            id(Role::Server)
                .dns_names()
                .contains(&"server.apples.consul".to_string())
        );
        assert_eq!(id(Role::Client).dns_names(), vec!["localhost".to_string()]);
    }

    #[test]
    fn serials_drop_leading_zeros() {
        assert_eq!(serial_hex(&[0, 0, 0x1a, 0x02]), "1a02");
        assert_eq!(serial_hex(&[0]), "00");
    }

    #[test]
    fn renewal_is_due_in_the_last_third() {
        let start = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let info = CertInfo {
            identity: id(Role::Client),
            serial: "01".into(),
            not_before: start,
            not_after: start + Duration::from_secs(90),
        };
        assert!(!info.due_for_renewal(start + Duration::from_secs(59)));
        assert!(info.due_for_renewal(start + Duration::from_secs(61)));
        assert!(info.due_for_renewal(start + Duration::from_secs(91)));
    }

    #[test]
    fn enrolled_files_load_back_with_modes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let files = IdentityFiles::new(&dir.path().join("identity"));
        let ca = Ca::generate("apples").unwrap();
        enroll_locally(&ca, &files, &id(Role::Client)).unwrap();
        let local = LocalIdentity::load(&files).unwrap();
        assert_eq!(local.info.identity.role, Role::Client);
        assert_eq!(local.ca_digest(), ca.digest());
        let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(files.node_key()), 0o600);
        assert_eq!(mode(files.node_cert()), 0o644);
    }

    #[test]
    fn a_missing_identity_names_the_file_and_the_way_out() {
        let dir = tempfile::tempdir().unwrap();
        let files = IdentityFiles::new(dir.path());
        let e = LocalIdentity::load(&files).unwrap_err().to_string();
        assert!(e.contains("ca.pem does not exist"), "{e}");
        assert!(e.contains("--token"), "{e}");
    }
}
