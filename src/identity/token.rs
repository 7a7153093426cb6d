//! Join tokens, after Swarm's `SWMTKN-1-<CA digest>-<secret>`:
//! `ARPN-1-<SHA-256 of the CA certificate, hex>-<secret, 32 hex digits>`.
//!
//! The digest lets a joiner pin the CA before it sends anything: a node that answers
//! at the join address with a certificate from another CA fails the handshake. The
//! secret says which role the joiner may take; servers compare it with the cluster's
//! current server and client secrets, so rotating one stops new joins with the old
//! token and leaves running nodes (which never use it again) alone.

use std::fmt;
use std::str::FromStr;

use super::{IdentityError, Role};

const PREFIX: &str = "ARPN";
const VERSION: &str = "1";
const SECRET_HEX: usize = 32;

#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Lower-case hex SHA-256 of the CA certificate's DER.
    pub ca_digest: String,
    pub secret: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_digest", &self.ca_digest)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}-{VERSION}-{}-{}", self.ca_digest, self.secret)
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl FromStr for JoinToken {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, IdentityError> {
        let bad = |why: &str| IdentityError::cert("join token", why);
        let s = s.trim();
        let mut parts = s.split('-');
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some(PREFIX), Some(VERSION), Some(digest), Some(secret), None) => {
                if !is_hex(digest, 64) {
                    return Err(bad("its CA digest is not 64 lower-case hex digits"));
                }
                if !is_hex(secret, SECRET_HEX) {
                    return Err(bad("its secret is not 32 lower-case hex digits"));
                }
                Ok(Self {
                    ca_digest: digest.to_string(),
                    secret: secret.to_string(),
                })
            }
            (Some(PREFIX), Some(v), ..) if v != VERSION => Err(bad(&format!(
                "version {v}; this arpanet reads version {VERSION}"
            ))),
            _ => Err(bad(
                "not ARPN-1-<CA digest>-<secret>: copy it whole from `arpanet token show` on a server",
            )),
        }
    }
}

/// A fresh secret for a role's token.
pub fn new_secret() -> Result<String, IdentityError> {
    let mut bytes = [0u8; SECRET_HEX / 2];
    getrandom::fill(&mut bytes).map_err(|e| IdentityError::cert("join token", e))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The cluster's current join secrets, one per role.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JoinSecrets {
    pub server: String,
    pub client: String,
}

impl fmt::Debug for JoinSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JoinSecrets { .. }")
    }
}

impl JoinSecrets {
    pub fn generate() -> Result<Self, IdentityError> {
        Ok(Self {
            server: new_secret()?,
            client: new_secret()?,
        })
    }

    pub fn get(&self, role: Role) -> &str {
        match role {
            Role::Server => &self.server,
            Role::Client => &self.client,
        }
    }

    pub fn set(&mut self, role: Role, secret: String) {
        match role {
            Role::Server => self.server = secret,
            Role::Client => self.client = secret,
        }
    }

    /// Which role a presented secret grants, comparing in constant time.
    pub fn role_of(&self, secret: &str) -> Option<Role> {
        let eq = |a: &str, b: &str| {
            a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
        };
        let server = eq(secret, &self.server);
        let client = eq(secret, &self.client);
        if server {
            Some(Role::Server)
        } else if client {
            Some(Role::Client)
        } else {
            None
        }
    }

    pub fn token(&self, role: Role, ca_digest: &str) -> JoinToken {
        JoinToken {
            ca_digest: ca_digest.to_string(),
            secret: self.get(role).to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_and_hides_its_secret_in_debug() {
        let s = JoinSecrets::generate().unwrap();
        let t = s.token(Role::Client, &"ab".repeat(32));
        let text = t.to_string();
        assert!(text.starts_with("ARPN-1-abab"), "{text}");
        assert_eq!(text.parse::<JoinToken>().unwrap(), t);
        assert!(!format!("{t:?}").contains(&t.secret));
        assert!(!format!("{s:?}").contains(&s.client));
    }

    #[test]
    fn a_secret_grants_its_role_only() {
        let s = JoinSecrets::generate().unwrap();
        assert_eq!(s.role_of(&s.server), Some(Role::Server));
        assert_eq!(s.role_of(&s.client), Some(Role::Client));
        assert_eq!(s.role_of(&new_secret().unwrap()), None);
        assert_eq!(s.role_of(""), None);
    }

    #[test]
    fn malformed_tokens_are_one_clear_error() {
        let d = "ab".repeat(32);
        for (bad, says) in [
            ("SWMTKN-1-abc-def".to_string(), "not ARPN-1-"),
            (format!("ARPN-2-{d}-{}", "0".repeat(32)), "version 2"),
            (format!("ARPN-1-{}-{}", "ab", "0".repeat(32)), "CA digest"),
            (format!("ARPN-1-{d}-short"), "secret"),
            (format!("ARPN-1-{d}-{}-x", "0".repeat(32)), "not ARPN-1-"),
        ] {
            let e = bad.parse::<JoinToken>().unwrap_err().to_string();
            assert!(
                e.starts_with("join token: ") && e.contains(says),
                "{bad}: {e}"
            );
        }
    }
}
