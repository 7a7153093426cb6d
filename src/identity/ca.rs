//! The cluster CA (ECDSA P-256: Docker, Consul, rustls and webpki all accept it, where
//! Ed25519 is not accepted by every consumer's TLS stack in its default set) and node
//! keys.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

use super::{IdentityError, NodeIdentity, cert_digest, first_cert_der};
use crate::paths::IdentityFiles;

static ALG: &rcgen::SignatureAlgorithm = &rcgen::PKCS_ECDSA_P256_SHA256;

/// The cluster CA: its certificate and (where it is held) its key.
pub struct Ca {
    pub cert_pem: String,
    key: KeyPair,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("digest", &self.digest())
            .finish()
    }
}

/// A certificate issued to a node.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub serial: String,
}

fn random_serial() -> Result<SerialNumber, IdentityError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| IdentityError::cert("serial number", e))?;
    // Positive, and never starting with a zero byte (DER would drop it).
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

fn rfc(e: rcgen::Error) -> String {
    e.to_string()
}

impl Ca {
    /// A new CA for `cluster`.
    pub fn generate(cluster: &str) -> Result<Self, IdentityError> {
        let key = KeyPair::generate_for(ALG).map_err(|e| IdentityError::cert("CA key", rfc(e)))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("arpanet cluster CA {}", cluster.to_ascii_lowercase()),
        );
        dn.push(DnType::OrganizationName, "arpanet");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + super::CA_VALIDITY).into();
        params.serial_number = Some(random_serial()?);
        let cert = params
            .self_signed(&key)
            .map_err(|e| IdentityError::cert("CA certificate", rfc(e)))?;
        Ok(Self {
            cert_pem: cert.pem(),
            key,
        })
    }

    /// The CA as a server holds it: ca.pem and ca-key.pem.
    pub fn load(files: &IdentityFiles) -> Result<Self, IdentityError> {
        let cert_pem = super::read(&files.ca_cert())?;
        let key_pem = super::read(&files.ca_key())?;
        Self::from_pems(&cert_pem, &key_pem).map_err(|e| IdentityError::File {
            path: files.ca_key(),
            why: e.to_string(),
        })
    }

    pub fn from_pems(cert_pem: &str, key_pem: &str) -> Result<Self, IdentityError> {
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| IdentityError::cert("CA key", format!("not a private key: {e}")))?;
        let ca = Self {
            cert_pem: cert_pem.to_string(),
            key,
        };
        // The key must be the certificate's: an issuer from a mismatched pair would sign
        // certificates nobody accepts.
        let der =
            first_cert_der(cert_pem).map_err(|why| IdentityError::cert("CA certificate", why))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| IdentityError::cert("CA certificate", e))?;
        if cert.public_key().subject_public_key.data.as_ref() != ca.key.public_key_raw() {
            return Err(IdentityError::cert(
                "CA key",
                "it is not the key of the CA certificate",
            ));
        }
        Ok(ca)
    }

    /// Writes ca.pem (0644) and ca-key.pem (0600).
    pub fn store(&self, files: &IdentityFiles) -> Result<(), IdentityError> {
        let io = |path: &Path, e: anyhow::Error| IdentityError::File {
            path: path.to_path_buf(),
            why: format!("{e:#}"),
        };
        std::fs::create_dir_all(&files.dir).map_err(|e| io(&files.dir, e.into()))?;
        crate::files::write_private(&files.ca_key(), &self.key_pem())
            .map_err(|e| io(&files.ca_key(), e))?;
        crate::files::write_atomically_with_mode(&files.ca_cert(), &self.cert_pem, 0o644)
            .map_err(|e| io(&files.ca_cert(), e))
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// SHA-256 of the CA certificate: what join tokens carry.
    pub fn digest(&self) -> String {
        cert_digest(&first_cert_der(&self.cert_pem).expect("our own PEM"))
    }

    /// Issues a certificate to `identity` for the key in `csr_pem`. Only the CSR's
    /// public key (and its proof of possession) is used: names, usages and validity are
    /// the CA's choice.
    pub fn issue(
        &self,
        csr_pem: &str,
        identity: &NodeIdentity,
        valid_for: Duration,
    ) -> Result<Issued, IdentityError> {
        let now = SystemTime::now();
        // An hour of slack before now, for hosts whose clocks are a little behind.
        self.issue_between(
            csr_pem,
            identity,
            now - Duration::from_secs(3600),
            now + valid_for,
        )
    }

    /// [`Ca::issue`] with the validity given (tests make expired certificates with it).
    pub fn issue_between(
        &self,
        csr_pem: &str,
        identity: &NodeIdentity,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Issued, IdentityError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| IdentityError::cert("certificate request", rfc(e)))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("arpanet {} {}", identity.role, identity.address),
        );
        dn.push(DnType::OrganizationName, "arpanet");
        params.distinguished_name = dn;
        let mut sans =
            vec![SanType::URI(identity.spiffe_id().try_into().map_err(
                |e: rcgen::Error| IdentityError::cert("SPIFFE ID", rfc(e)),
            )?)];
        sans.extend(identity.ips().into_iter().map(SanType::IpAddress));
        for name in identity.dns_names() {
            sans.push(SanType::DnsName(name.try_into().map_err(
                |e: rcgen::Error| IdentityError::cert("DNS name", rfc(e)),
            )?));
        }
        params.subject_alt_names = sans;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let serial = random_serial()?;
        let serial_hex = super::serial_hex(&serial.to_bytes());
        params.serial_number = Some(serial);
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)
            .map_err(|e| IdentityError::cert("CA certificate", rfc(e)))?;
        let cert = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        }
        .signed_by(&issuer)
        .map_err(|e| IdentityError::cert("node certificate", rfc(e)))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            serial: serial_hex,
        })
    }
}

/// A node's own key pair.
pub struct NodeKey {
    key: KeyPair,
}

impl NodeKey {
    pub fn generate() -> Result<Self, IdentityError> {
        Ok(Self {
            key: KeyPair::generate_for(ALG).map_err(|e| IdentityError::cert("node key", rfc(e)))?,
        })
    }

    pub fn from_pem(pem: &str) -> Result<Self, IdentityError> {
        Ok(Self {
            key: KeyPair::from_pem(pem)
                .map_err(|e| IdentityError::cert("node key", format!("not a private key: {e}")))?,
        })
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A CSR proving possession of the key; the names in it do not matter (see
    /// [`Ca::issue`]).
    pub fn csr_pem(&self) -> Result<String, IdentityError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .serialize_request(&self.key)
            .and_then(|r| r.pem())
            .map_err(|e| IdentityError::cert("certificate request", rfc(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{CertInfo, Role};
    use super::*;

    fn who(role: Role) -> NodeIdentity {
        NodeIdentity {
            cluster: "apples".into(),
            address: "0.14".parse().unwrap(),
            role,
        }
    }

    #[test]
    fn an_issued_certificate_names_what_the_ca_chose() {
        let ca = Ca::generate("apples").unwrap();
        let key = NodeKey::generate().unwrap();
        let issued = ca
            .issue(
                &key.csr_pem().unwrap(),
                &who(Role::Client),
                Duration::from_secs(600),
            )
            .unwrap();
        let info = CertInfo::from_pem(&issued.cert_pem).unwrap();
        assert_eq!(info.identity, who(Role::Client));
        assert_eq!(info.serial, issued.serial);
        let left = info.not_after.duration_since(SystemTime::now()).unwrap();
        assert!(left <= Duration::from_secs(600) && left > Duration::from_secs(590));
    }

    #[test]
    fn a_ca_loads_back_and_a_foreign_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let files = IdentityFiles::new(dir.path());
        let ca = Ca::generate("apples").unwrap();
        ca.store(&files).unwrap();
        let back = Ca::load(&files).unwrap();
        assert_eq!(back.digest(), ca.digest());
        let other = Ca::generate("apples").unwrap();
        let e = Ca::from_pems(&ca.cert_pem, &other.key_pem()).unwrap_err();
        assert!(e.to_string().contains("not the key of the CA"), "{e}");
    }

    #[test]
    fn a_bad_request_is_one_error() {
        let ca = Ca::generate("apples").unwrap();
        let e = ca
            .issue("not a csr", &who(Role::Server), Duration::from_secs(60))
            .unwrap_err();
        assert!(e.to_string().starts_with("certificate request:"), "{e}");
    }
}
