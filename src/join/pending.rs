//! Joins taken before Consul can record them. A cluster of several initial servers
//! (`cluster.expect` > 1) has no leader until they have joined, and so no KV and no
//! ACL tokens: until the boot node has published the join tokens it checks them against
//! its own copy, issues the certificate, and keeps here what Consul must hold (the
//! certificate record and the node's Consul token, its SecretID already handed over),
//! to write once Consul takes writes. Consul's own bootstrap does the same with the
//! management token it is configured with. Once Consul answers, a join on the local
//! copy also checks Consul's records, and a waiting join that meets an address or name
//! on record when it is written is refused after the fact: its certificate is revoked.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{ISSUED_PREFIX, IssuedV1};
use crate::consul::client::Consul;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingV1 {
    pub joins: Vec<PendingJoin>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingJoin {
    pub address: String,
    pub record: IssuedV1,
    /// The SecretID the joiner was given for its Consul token.
    pub consul_token: String,
    /// [`crate::identity::public_key_digest`] of its certificate: a join asked again
    /// with the same key (its answer was lost) is the same joiner, and gets the same
    /// answer.
    pub public_key: String,
    /// The certificate it was given, for that answer.
    pub cert_pem: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PendingError {
    #[error("{path}: {why}")]
    File { path: String, why: String },
    #[error("{0}")]
    Consul(String),
}

fn file_error(path: &Path, why: impl std::fmt::Display) -> PendingError {
    PendingError::File {
        path: path.display().to_string(),
        why: why.to_string(),
    }
}

pub fn load(path: &Path) -> Result<PendingV1, PendingError> {
    match std::fs::read(path) {
        Ok(b) => crate::http::parse_json(&b).map_err(|why| file_error(path, why)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PendingV1::default()),
        Err(e) => Err(file_error(path, e)),
    }
}

/// Writes the list (0600), or removes the file when it is empty.
pub fn save(path: &Path, pending: &PendingV1) -> Result<(), PendingError> {
    if pending.joins.is_empty() {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(file_error(path, e)),
            _ => Ok(()),
        };
    }
    let text = serde_json::to_string_pretty(pending).expect("pending joins serialize");
    crate::files::write_private(path, &text).map_err(|e| file_error(path, format!("{e:#}")))
}

/// Records every waiting join in Consul, oldest first, dropping each from the file as
/// it lands or is refused. Stops at the first write Consul does not take: the rest
/// waits for the next call.
pub async fn flush(consul: &Consul, path: &Path) -> Result<(), PendingError> {
    let mut pending = load(path)?;
    while let Some(join) = pending.joins.first().cloned() {
        let key = format!("{ISSUED_PREFIX}{}", join.address);
        let consul_error = |e: crate::consul::client::ConsulError| {
            PendingError::Consul(format!("record {key}: {e}"))
        };
        // The name must be free too: recording it would hand this joiner the name's
        // Consul token (node write for that node).
        let (records, _) = consul
            .kv_list(ISSUED_PREFIX, None, std::time::Duration::ZERO)
            .await
            .map_err(consul_error)?;
        let name_held_elsewhere = records.iter().any(|(k, v)| {
            *k != key
                && serde_json::from_slice::<IssuedV1>(v).is_ok_and(|r| r.name == join.record.name)
        });
        let record = serde_json::to_vec(&join.record).expect("a record serializes");
        let ours = !name_held_elsewhere
            && match consul
                .kv_put_new(&key, record)
                .await
                .map_err(consul_error)?
            {
                true => true,
                // Either this record, written by a flush that stopped before it was
                // done, or another node's, which got the address while this join waited.
                false => {
                    let held = consul.kv_get(&key).await.map_err(consul_error)?;
                    held.and_then(|b| serde_json::from_slice::<IssuedV1>(&b).ok())
                        .is_some_and(|r| r.serial == join.record.serial)
                }
            };
        if ours {
            crate::consul::acl::ensure_node_token(consul, &join.record.name, &join.consul_token)
                .await
                .map_err(|e| {
                    PendingError::Consul(format!("Consul token of {}: {e}", join.record.name))
                })?;
            info!(
                "join: recorded node {} ({}) certificate {}, taken before Consul had a leader",
                join.address, join.record.name, join.record.serial
            );
        } else {
            // The address or the name is someone else's: this join gets neither, nor
            // the name's Consul token, and the certificate it was given is revoked (a
            // server's CA key and management token are not taken back, as with node rm).
            revoke(consul, &join).await?;
            warn!(
                "join of {} ({}) refused after the fact: the address or name is another node's; its certificate {} is revoked",
                join.address, join.record.name, join.record.serial
            );
        }
        pending.joins.remove(0);
        save(path, &pending)?;
    }
    Ok(())
}

async fn revoke(consul: &Consul, join: &PendingJoin) -> Result<(), PendingError> {
    let record = super::RevokedV1 {
        address: join.address.clone(),
        name: join.record.name.clone(),
        at: crate::network::admission::unix_now(),
    };
    for serial in std::iter::once(&join.record.serial).chain(&join.record.earlier) {
        let key = format!("{}{serial}", super::REVOKED_PREFIX);
        consul
            .kv_put(
                &key,
                serde_json::to_vec(&record).expect("a record serializes"),
            )
            .await
            .map_err(|e| PendingError::Consul(format!("revoke {key}: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_is_kept_private_and_gone_when_empty() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("join-pending.json");
        assert!(load(&path).unwrap().joins.is_empty());
        let join = PendingJoin {
            address: "0.2".into(),
            record: IssuedV1 {
                serial: "1a".into(),
                name: "h1".into(),
                role: "server".into(),
                not_after: 1,
                earlier: Vec::new(),
            },
            consul_token: "secret".into(),
            public_key: "ab".into(),
            cert_pem: String::new(),
        };
        save(&path, &PendingV1 { joins: vec![join] }).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load(&path).unwrap().joins[0].record.name, "h1");
        save(&path, &PendingV1::default()).unwrap();
        assert!(!path.exists());
        std::fs::write(&path, "{\"joins\": 3}").unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}: joins", path.display())), "{e}");
    }
}
