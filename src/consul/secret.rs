//! The cluster secret: one file, the same on every node. Every key arpanet uses (Consul's
//! gossip key, the overlay admission key) is derived from it with HKDF-SHA256 under a label
//! of its own, so operators handle one secret and no two uses share a key.

use std::path::Path;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::{
    STANDARD, STANDARD_PAD_INDIFFERENT, URL_SAFE_PAD_INDIFFERENT,
};
use hkdf::Hkdf;
use sha2::{Digest, Sha256};

/// HKDF label of Consul's serf gossip encryption key (`encrypt`).
pub const GOSSIP_LABEL: &str = "arpanet/v1/consul-gossip";
/// HKDF label of the key a node proves overlay admission with.
pub const ADMISSION_LABEL: &str = "arpanet/v1/overlay-admission";

/// The least a secret must decode to: 128 bits.
pub const MIN_BYTES: usize = 16;
/// The least number of distinct byte values in the decoded secret (rejects all-zero and
/// other patterned keys that are long but not random).
pub const MIN_DISTINCT: usize = 8;

/// Why a secret is refused; the caller says where it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Weak {
    #[error("it is empty")]
    Empty,
    #[error("it is neither base64 nor hex")]
    NotEncoded,
    #[error("it decodes to {0} bytes")]
    TooShort(usize),
    #[error("its bytes take only {0} distinct values")]
    LowDiversity(usize),
}

/// 32 random bytes, base64.
pub fn generate() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("no randomness for the secret: {e}"))?;
    Ok(STANDARD.encode(bytes))
}

/// The bytes a secret stands for. A string of hex digits is judged as hex, even where it
/// would also be valid base64, so its strength is never overestimated.
fn decode(secret: &str) -> Option<Vec<u8>> {
    let s = secret.trim();
    if s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return decode_hex(s);
    }
    STANDARD_PAD_INDIFFERENT
        .decode(s)
        .or_else(|_| URL_SAFE_PAD_INDIFFERENT.decode(s))
        .ok()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// The strength policy: base64 (standard or URL-safe, padding optional) or hex, decoding
/// to at least 16 bytes with at least 8 distinct byte values.
pub fn check_strength(secret: &str) -> Result<(), Weak> {
    if secret.trim().is_empty() {
        return Err(Weak::Empty);
    }
    let bytes = decode(secret).ok_or(Weak::NotEncoded)?;
    if bytes.len() < MIN_BYTES {
        return Err(Weak::TooShort(bytes.len()));
    }
    let mut seen = [false; 256];
    for b in &bytes {
        seen[usize::from(*b)] = true;
    }
    let distinct = seen.iter().filter(|s| **s).count();
    if distinct < MIN_DISTINCT {
        return Err(Weak::LowDiversity(distinct));
    }
    Ok(())
}

/// `secret`, trimmed, if it passes [`check_strength`]; the error starts with `origin`
/// ("the cluster secret in /etc/arpanet/secret", "--secret: the cluster secret").
pub fn validated(secret: &str, origin: &str) -> anyhow::Result<String> {
    let secret = secret.trim();
    if let Err(why) = check_strength(secret) {
        bail!(
            "{origin} is weaker than 128 bits ({why}): it must be at least {MIN_BYTES} random bytes in base64 or hex; `arpanet secret` makes one"
        );
    }
    Ok(secret.to_string())
}

/// Reads the secret file and refuses a secret weaker than 128 bits.
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
    validated(&text, &format!("the cluster secret in {}", path.display()))
}

/// Writes the secret readable by root only (0600 whatever the file was before), atomically.
/// Refuses to replace an existing one unless `force`.
pub fn write(path: &Path, secret: &str, force: bool) -> anyhow::Result<()> {
    if path.exists() && !force {
        bail!(
            "{} exists already; use --force to replace it (every node then needs the new one)",
            path.display()
        );
    }
    crate::files::write_private(path, &format!("{}\n", secret.trim()))
}

/// A 32-byte key for one use of the secret: HKDF-SHA256 (RFC 5869) with the trimmed
/// secret text as input key material, no salt, and `label` as info.
pub fn derive_key(secret: &str, label: &str) -> [u8; 32] {
    let mut key = [0u8; 32];
    Hkdf::<Sha256>::new(None, secret.trim().as_bytes())
        .expand(label.as_bytes(), &mut key)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    key
}

/// Consul's `encrypt` key: base64 of the key derived under [`GOSSIP_LABEL`].
pub fn gossip_key(secret: &str) -> String {
    STANDARD.encode(derive_key(secret, GOSSIP_LABEL))
}

/// A short, safe-to-print identifier of a key, for telling secrets apart in messages.
pub fn fingerprint(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    digest.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const GOOD: &str = "mulU7vmg9jYkZ98E8AZXHBEmqyR9v9JsTDnihyFcuc8=";

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn gossip_key_is_32_bytes_and_follows_the_secret() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        let key = gossip_key(&a);
        assert_eq!(STANDARD.decode(&key).unwrap().len(), 32);
        assert_eq!(key, gossip_key(&a));
        assert_eq!(key, gossip_key(&format!("  {a}\n")), "the file's newline");
        assert_ne!(key, gossip_key(&b));
        assert_eq!(fingerprint(&key).len(), 8);
    }

    #[test]
    fn each_label_gets_its_own_key_and_the_same_secret_the_same_one() {
        let s = generate().unwrap();
        assert_eq!(derive_key(&s, GOSSIP_LABEL), derive_key(&s, GOSSIP_LABEL));
        assert_eq!(
            derive_key(&s, ADMISSION_LABEL),
            derive_key(&s, ADMISSION_LABEL)
        );
        assert_ne!(
            derive_key(&s, GOSSIP_LABEL),
            derive_key(&s, ADMISSION_LABEL)
        );
        assert_ne!(
            derive_key(&s, GOSSIP_LABEL),
            derive_key(&generate().unwrap(), GOSSIP_LABEL)
        );
        assert_eq!(
            gossip_key(&s),
            STANDARD.encode(derive_key(&s, GOSSIP_LABEL))
        );
    }

    #[test]
    fn derive_key_matches_a_fixed_vector() {
        // HKDF-SHA256(salt = none, ikm = the secret's text, info = label, L = 32),
        // computed independently with Python's hmac module.
        let hex = |k: [u8; 32]| k.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(hex(derive_key(GOOD, GOSSIP_LABEL)), GOSSIP_VECTOR);
        assert_eq!(hex(derive_key(GOOD, ADMISSION_LABEL)), ADMISSION_VECTOR);
    }
    const GOSSIP_VECTOR: &str = "bd1702b12ab6363a29f37590a0e9811a7f495618e1727730df56ba05d19b8835";
    const ADMISSION_VECTOR: &str =
        "7f5b533399f96952b1905b844a36bff5528832f5a3731f072da8fd7deb5b1039";

    #[test]
    fn the_policy_wants_128_random_bits_in_base64_or_hex() {
        // Good: what `arpanet secret` makes, padded or not, URL-safe, and hex.
        for _ in 0..50 {
            check_strength(&generate().unwrap()).unwrap();
        }
        check_strength(GOOD).unwrap();
        check_strength(GOOD.trim_end_matches('=')).unwrap();
        check_strength("-_-_q0VhZ3J5c3RhbGxpbmVzZWNyZXQ").unwrap();
        check_strength("00112233445566778899aabbccddeeff").unwrap();
        check_strength("00112233445566778899AABBCCDDEEFF").unwrap();
        check_strength(&format!("  {GOOD}\n")).unwrap();

        // Too short: 15 bytes, and 30 hex digits (which base64 would read as 22 bytes).
        assert_eq!(
            check_strength(&STANDARD.encode([1u8, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15])),
            Err(Weak::TooShort(15))
        );
        assert_eq!(
            check_strength("00112233445566778899aabbccddee"),
            Err(Weak::TooShort(15))
        );
        assert_eq!(check_strength("abcz"), Err(Weak::TooShort(3)));

        assert_eq!(check_strength(" \n"), Err(Weak::Empty));
        // Not base64 or hex: passwords, like the old tests' ones.
        for s in [
            "a-different-secret-entirely",
            "hunter2!",
            "correct horse battery staple",
            "0011223344556677889",
        ] {
            assert_eq!(check_strength(s), Err(Weak::NotEncoded), "{s:?}");
        }

        // Long but not random.
        assert_eq!(
            check_strength(&STANDARD.encode([0u8; 32])),
            Err(Weak::LowDiversity(1))
        );
        assert_eq!(check_strength(&"00".repeat(32)), Err(Weak::LowDiversity(1)));
        assert_eq!(
            check_strength(&"01020304050607".repeat(4)),
            Err(Weak::LowDiversity(7))
        );
        check_strength(&"0102030405060708".repeat(2)).unwrap();
    }

    #[test]
    fn a_weak_secret_is_refused_naming_where_it_came_from() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "lab-secret-old\n").unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "the cluster secret in {} is weaker than 128 bits",
                path.display()
            )),
            "{e}"
        );
        assert!(e.contains("`arpanet secret` makes one"), "{e}");
        let e = validated(
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "--secret: the cluster secret",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("--secret: the cluster secret is weaker than 128 bits"),
            "{e}"
        );
    }

    #[test]
    fn secret_file_round_trip_and_no_silent_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etc/secret");
        let s = generate().unwrap();
        write(&path, &s, false).unwrap();
        assert_eq!(read(&path).unwrap(), s);
        assert_eq!(mode(&path), 0o600);
        assert!(
            write(&path, &generate().unwrap(), false)
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

    #[test]
    fn an_overwritten_secret_file_is_0600_whatever_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "old\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let s = generate().unwrap();
        write(&path, &s, true).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(read(&path).unwrap(), s);
    }
}
