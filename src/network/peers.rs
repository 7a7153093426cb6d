//! Where the overlay's peers come from: Consul's catalog (after a restart, until it
//! answers, its last answer kept in the state dir) and nodes admitted by a signed
//! hello. Naming a node in the join list admits nobody: it is where hellos go.

use std::path::Path;

use super::Peer;
use crate::config::Config;

/// The last catalog answer; a missing or unreadable cache is empty, never an error
/// (the catalog will answer again).
pub fn load_cache(path: &Path) -> Vec<Peer> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
            tracing::warn!("ignoring the peer cache {}: {e}", path.display());
            Vec::new()
        }),
        Err(_) => Vec::new(),
    }
}

pub fn save_cache(path: &Path, peers: &[Peer]) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(peers)?;
    if std::fs::read_to_string(path).is_ok_and(|t| t == text) {
        return Ok(());
    }
    crate::files::write_atomically(path, &text)
}

/// The peers to program: the catalog's nodes (failed ones too), or the cached ones before the
/// catalog has answered, plus the nodes admitted by hello that the catalog does not name
/// (newcomers, and every peer when Consul is not used). Where both name a node, the
/// catalog's entry stands.
pub fn desired(
    config: &Config,
    catalog: Option<&[Peer]>,
    cache: &[Peer],
    hello: &[Peer],
) -> Vec<Peer> {
    let mut by_address = std::collections::BTreeMap::new();
    for p in hello.iter().chain(catalog.unwrap_or(cache)) {
        by_address.insert(p.address, *p);
    }
    by_address
        .into_values()
        .filter(|p| p.address != config.node.address)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn config() -> Config {
        Config::parse(
            Path::new("t"),
            "[node]\naddress = \"0.3\"\nrole = \"client\"\njoin = [{ address = \"0.1\", ip = \"192.168.1.1\" }]\n",
        )
        .unwrap()
    }

    fn peer(a: &str, last: u8) -> Peer {
        Peer {
            address: a.parse().unwrap(),
            underlay_ip: Ipv4Addr::new(192, 168, 1, last),
        }
    }

    #[test]
    fn the_join_list_alone_admits_nobody() {
        assert_eq!(desired(&config(), None, &[], &[]), []);
        assert_eq!(desired(&config(), Some(&[]), &[], &[]), []);
    }

    #[test]
    fn catalog_and_hellos_add_up_and_skip_ourselves() {
        let catalog = [peer("0.1", 1), peer("0.2", 2), peer("0.3", 3)];
        assert_eq!(
            desired(&config(), Some(&catalog), &[], &[peer("0.5", 5)]),
            [peer("0.1", 1), peer("0.2", 2), peer("0.5", 5)]
        );
    }

    #[test]
    fn cache_stands_in_until_the_catalog_answers() {
        let cache = [peer("0.2", 2), peer("0.4", 4)];
        assert_eq!(
            desired(&config(), None, &cache, &[]),
            [peer("0.2", 2), peer("0.4", 4)]
        );
        // Once the catalog answers, the cache no longer matters: 0.4 has left.
        assert_eq!(
            desired(&config(), Some(&[peer("0.2", 2)]), &cache, &[]),
            [peer("0.2", 2)]
        );
    }

    #[test]
    fn the_catalog_wins_over_a_hello() {
        assert_eq!(
            desired(&config(), Some(&[peer("0.1", 9)]), &[], &[peer("0.1", 1)]),
            [peer("0.1", 9)]
        );
    }

    #[test]
    fn cache_round_trips_and_tolerates_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peers.json");
        assert!(load_cache(&path).is_empty());
        save_cache(&path, &[peer("0.2", 2)]).unwrap();
        assert_eq!(load_cache(&path), [peer("0.2", 2)]);
        std::fs::write(&path, "not json").unwrap();
        assert!(load_cache(&path).is_empty());
    }
}
