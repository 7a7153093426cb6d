//! The cluster secret: one file, the same on every node. Consul's gossip encryption
//! key is derived from it, so operators handle one secret, not Consul's key format.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

/// 32 random bytes, base64.
pub fn generate() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("no randomness for the secret: {e}"))?;
    Ok(STANDARD.encode(bytes))
}

pub fn read(path: &Path) -> anyhow::Result<String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "the cluster secret {} does not exist: create it with `arpanet secret` on the boot node and put the same file on every node (cluster.secret_file)",
            path.display()
        ),
        Err(e) => {
            return Err(e).with_context(|| format!("read the cluster secret {}", path.display()));
        }
    };
    let secret = text.trim().to_string();
    if secret.len() < 16 {
        bail!(
            "the cluster secret {} is too short (at least 16 characters); `arpanet secret --force` makes a new one",
            path.display()
        );
    }
    Ok(secret)
}

/// Writes the secret readable by root only. Refuses to replace an existing one unless `force`.
pub fn write(path: &Path, secret: &str, force: bool) -> anyhow::Result<()> {
    if path.exists() && !force {
        bail!(
            "{} exists already; use --force to replace it (every node then needs the new one)",
            path.display()
        );
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("write {}", path.display()))?;
    writeln!(f, "{secret}")?;
    Ok(())
}

/// Consul's `encrypt` key: 32 bytes, base64, fixed by the secret.
pub fn gossip_key(secret: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"arpanet consul gossip key\0");
    h.update(secret.as_bytes());
    STANDARD.encode(h.finalize())
}

/// A short, safe-to-print identifier of a key, for telling secrets apart in messages.
pub fn fingerprint(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    digest.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

pub const ADMISSION_LABEL: &str = "arpanet/v1/overlay-admission";

/// A 32-byte key for one purpose, derived from the secret with HKDF-SHA256.
pub fn derive_key(secret: &str, label: &str) -> [u8; 32] {
    let mut okm = [0u8; 32];
    hkdf::Hkdf::<Sha256>::new(None, secret.as_bytes())
        .expand(label.as_bytes(), &mut okm)
        .expect("32 bytes is a valid HKDF-SHA256 length");
    okm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gossip_key_is_32_bytes_and_follows_the_secret() {
        let key = gossip_key("apples-secret-0123456789");
        assert_eq!(STANDARD.decode(&key).unwrap().len(), 32);
        assert_eq!(key, gossip_key("apples-secret-0123456789"));
        assert_ne!(key, gossip_key("pears-secret-0123456789"));
        assert_eq!(fingerprint(&key).len(), 8);
    }

    #[test]
    fn secret_file_round_trip_and_no_silent_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etc/secret");
        let s = generate().unwrap();
        write(&path, &s, false).unwrap();
        assert_eq!(read(&path).unwrap(), s);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(
            write(&path, "other-secret-000000", false)
                .unwrap_err()
                .to_string()
                .contains("--force")
        );
        assert!(
            read(&dir.path().join("missing"))
                .unwrap_err()
                .to_string()
                .contains("arpanet secret")
        );
    }
}
