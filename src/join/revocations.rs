//! The cluster's revocation list, from Consul KV (`arpanet/identity/revoked/SERIAL`,
//! written by `node rm` with the management token; node tokens may only read it) into
//! STATE_DIR/revoked.json, which every TLS verifier of the node follows
//! ([`crate::identity::NodeTls`]). The file outlives Consul outages and restarts, so a
//! revoked certificate stays refused before Consul answers.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use tracing::{info, warn};

use super::REVOKED_PREFIX;
use crate::consul::client::Consul;
use crate::consul::watch::{Answer, BlockingQuery};

/// The serials named by the keys under [`REVOKED_PREFIX`]; keys that are not a serial
/// (at most 40 lower-case hex digits) are returned apart, to be reported.
pub fn serials(keys: &[String]) -> (BTreeSet<String>, Vec<String>) {
    let mut good = BTreeSet::new();
    let mut bad = Vec::new();
    for key in keys {
        let serial = key.strip_prefix(REVOKED_PREFIX).unwrap_or(key);
        if !serial.is_empty()
            && serial.len() <= 40
            && serial
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            good.insert(serial.to_string());
        } else {
            bad.push(key.clone());
        }
    }
    (good, bad)
}

/// Adds the serials to the file's list; returns whether it grew. The list only grows:
/// an empty answer (a 404 when ACLs hide every key, a restored snapshot) must not
/// forget a revocation. Entries are small, and a rejoined node has a new serial.
pub fn store(path: &Path, serials: &BTreeSet<String>) -> anyhow::Result<bool> {
    let old: BTreeSet<String> = std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    if serials.is_subset(&old) && path.exists() {
        return Ok(false);
    }
    let all: BTreeSet<String> = old.union(serials).cloned().collect();
    let text = serde_json::to_string(&all).expect("serials serialize");
    crate::files::write_atomically_with_mode(path, &text, 0o644)?;
    Ok(true)
}

/// Follows the revocation list in Consul for as long as the daemon runs.
pub async fn watch(consul: Consul, path: std::path::PathBuf) {
    let mut query = BlockingQuery::new(Duration::from_secs(30));
    let mut reported = BTreeSet::new();
    loop {
        let answer = query
            .next(|index, wait| consul.kv_list(REVOKED_PREFIX, index, wait))
            .await;
        // The first answer counts too: the file may be from before a restart.
        let Ok(Answer { value: entries, .. }) = answer else {
            continue;
        };
        let keys: Vec<String> = entries.into_iter().map(|(k, _)| k).collect();
        let (good, bad) = serials(&keys);
        for key in bad {
            if reported.insert(key.clone()) {
                warn!("Consul key {key} is not a certificate serial; ignored");
            }
        }
        match store(&path, &good) {
            Ok(true) => info!(revoked = good.len(), "the revocation list grew"),
            Ok(false) => {}
            Err(e) => warn!("cannot keep the revocation list: {e:#}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_serials_become_entries() {
        let keys: Vec<String> = ["1a2b", "../../etc", "ABCD", "", &"a".repeat(41)]
            .iter()
            .map(|k| format!("{REVOKED_PREFIX}{k}"))
            .collect();
        let (good, bad) = serials(&keys);
        assert_eq!(good, ["1a2b".to_string()].into());
        assert_eq!(bad.len(), 4);
    }

    #[test]
    fn the_list_only_grows_and_is_written_only_when_it_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revoked.json");
        let list: BTreeSet<String> = ["0a".to_string()].into();
        assert!(store(&path, &list).unwrap());
        assert!(!store(&path, &list).unwrap());
        // An empty answer forgets nothing.
        assert!(!store(&path, &BTreeSet::new()).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "[\"0a\"]");
        assert!(store(&path, &["0b".to_string()].into()).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "[\"0a\",\"0b\"]");
    }
}
