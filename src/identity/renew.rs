//! Replacing a node's key and certificate in place, so that no reader (this process's
//! [`super::NodeTls`], the sync service's, a restart after a crash) is left with a key
//! that is not its certificate's.
//!
//! Two renames cannot be one, so the old key is kept aside until the new certificate is
//! in: at every moment either key.pem or key.pem.previous is cert.pem's key.
//! [`recover`] puts the right one back after a crash between the renames, and
//! `NodeTls` keeps its last good configuration while the pair is briefly mismatched.

use std::path::{Path, PathBuf};

use super::{CertInfo, IdentityError, NodeKey, first_cert_der};
use crate::paths::IdentityFiles;

fn previous_key(files: &IdentityFiles) -> PathBuf {
    files.dir.join("key.pem.previous")
}

fn file_error(path: &Path, why: impl std::fmt::Display) -> IdentityError {
    IdentityError::File {
        path: path.to_path_buf(),
        why: why.to_string(),
    }
}

/// Whether `key_pem` is the private key of the certificate in `cert_pem`.
pub fn key_matches(cert_pem: &str, key_pem: &str) -> Result<bool, IdentityError> {
    let der = first_cert_der(cert_pem).map_err(|why| IdentityError::cert("certificate", why))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| IdentityError::cert("certificate", e))?;
    let key = rcgen::KeyPair::from_pem(key_pem)
        .map_err(|e| IdentityError::cert("node key", format!("not a private key: {e}")))?;
    // The key bits alone: the algorithm's parameters may be encoded either way.
    Ok(*cert.public_key().subject_public_key.data == *rcgen::PublicKeyData::der_bytes(&key))
}

/// Writes a renewed certificate and its key (ca.pem is left alone). The certificate
/// must be for `key`: a mismatched pair is refused before anything is written.
pub fn replace(files: &IdentityFiles, key: &NodeKey, cert_pem: &str) -> Result<(), IdentityError> {
    let key_pem = key.key_pem();
    if !key_matches(cert_pem, &key_pem)? {
        return Err(IdentityError::cert(
            "renewed certificate",
            "is not for the key its request was made with",
        ));
    }
    CertInfo::from_pem(cert_pem)?;
    let io = |path: &Path, e: anyhow::Error| file_error(path, format!("{e:#}"));
    let (key_path, cert_path, previous) =
        (files.node_key(), files.node_cert(), previous_key(files));
    let old = std::fs::read_to_string(&key_path).map_err(|e| file_error(&key_path, e))?;
    crate::files::write_private(&previous, &old).map_err(|e| io(&previous, e))?;
    crate::files::write_private(&key_path, &key_pem).map_err(|e| io(&key_path, e))?;
    crate::files::write_atomically_with_mode(&cert_path, cert_pem, 0o644)
        .map_err(|e| io(&cert_path, e))?;
    std::fs::remove_file(&previous).map_err(|e| file_error(&previous, e))
}

/// After a crash inside [`replace`]: puts back the key that is cert.pem's, and drops
/// the one kept aside. Returns whether it had to restore the old key.
pub fn recover(files: &IdentityFiles) -> Result<bool, IdentityError> {
    let previous = previous_key(files);
    let Ok(kept) = std::fs::read_to_string(&previous) else {
        return Ok(false);
    };
    let cert_path = files.node_cert();
    let cert = std::fs::read_to_string(&cert_path).map_err(|e| file_error(&cert_path, e))?;
    let current = std::fs::read_to_string(files.node_key()).unwrap_or_default();
    if !current.is_empty() && key_matches(&cert, &current).unwrap_or(false) {
        std::fs::remove_file(&previous).map_err(|e| file_error(&previous, e))?;
        return Ok(false);
    }
    if key_matches(&cert, &kept)? {
        std::fs::rename(&previous, files.node_key()).map_err(|e| file_error(&previous, e))?;
        return Ok(true);
    }
    Err(file_error(
        &cert_path,
        "neither key.pem nor key.pem.previous is this certificate's key",
    ))
}

#[cfg(test)]
mod tests {
    use super::super::{Ca, LocalIdentity, NODE_CERT_VALIDITY, NodeIdentity, Role, enroll_locally};
    use super::*;

    fn setup() -> (tempfile::TempDir, IdentityFiles, Ca, NodeIdentity) {
        let dir = tempfile::tempdir().unwrap();
        let files = IdentityFiles::new(&dir.path().join("identity"));
        let ca = Ca::generate("apples").unwrap();
        let who = NodeIdentity {
            cluster: "apples".into(),
            address: "0.2".parse().unwrap(),
            role: Role::Client,
        };
        enroll_locally(&ca, &files, &who).unwrap();
        (dir, files, ca, who)
    }

    #[test]
    fn a_replaced_pair_loads_and_leaves_nothing_aside() {
        let (_dir, files, ca, who) = setup();
        let before = LocalIdentity::load(&files).unwrap();
        let key = NodeKey::generate().unwrap();
        let issued = ca
            .issue(&key.csr_pem().unwrap(), &who, NODE_CERT_VALIDITY)
            .unwrap();
        replace(&files, &key, &issued.cert_pem).unwrap();
        let after = LocalIdentity::load(&files).unwrap();
        assert_ne!(after.info.serial, before.info.serial);
        assert!(key_matches(&after.cert_pem, &after.key_pem).unwrap());
        assert!(!key_matches(&after.cert_pem, &before.key_pem).unwrap());
        assert!(!previous_key(&files).exists());
        // A certificate for another key is refused, and nothing changes.
        let other = NodeKey::generate().unwrap();
        let e = replace(&files, &other, &issued.cert_pem).unwrap_err();
        assert!(e.to_string().contains("not for the key"), "{e}");
        assert_eq!(LocalIdentity::load(&files).unwrap().key_pem, after.key_pem);
    }

    #[test]
    fn a_crash_between_the_renames_is_recovered() {
        let (_dir, files, _ca, _who) = setup();
        let before = LocalIdentity::load(&files).unwrap();
        // As if the process died after writing the new key, before the certificate.
        std::fs::write(previous_key(&files), &before.key_pem).unwrap();
        std::fs::write(files.node_key(), NodeKey::generate().unwrap().key_pem()).unwrap();
        assert!(recover(&files).unwrap());
        let back = LocalIdentity::load(&files).unwrap();
        assert_eq!(back.key_pem, before.key_pem);
        assert!(!previous_key(&files).exists());
        // Died after the certificate: the kept key is only dropped.
        std::fs::write(previous_key(&files), NodeKey::generate().unwrap().key_pem()).unwrap();
        assert!(!recover(&files).unwrap());
        assert!(!previous_key(&files).exists());
        assert!(!recover(&files).unwrap());
    }
}
