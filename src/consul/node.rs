//! This node in Consul's catalog: the service `arpanet`, whose meta is everything
//! another node needs to reach it over the overlay. The healthy instances of that
//! service are the overlay's peers.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::client::{HealthEntry, ServiceRegistration};
use crate::addressing::NodeAddress;
use crate::config::Config;
use crate::network::{Peer, vtep_mac};

pub const SERVICE: &str = "arpanet";

/// Node labels travel as service meta under this prefix.
pub const LABEL_PREFIX: &str = "label_";

pub fn registration(config: &Config, underlay_ip: Ipv4Addr) -> ServiceRegistration {
    let a = config.node.address;
    let meta: BTreeMap<String, String> = [
        ("arpanet_address", a.to_string()),
        ("underlay_ip", underlay_ip.to_string()),
        ("vtep_mac", vtep_mac(a).to_string()),
        (
            "docker_api",
            format!("tcp://{}:{}", a.docker_api_ip(), config.docker.api_port),
        ),
        ("role", config.node.role.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .chain(
        config
            .node
            .labels
            .iter()
            .map(|(k, v)| (format!("{LABEL_PREFIX}{k}"), v.clone())),
    )
    .collect();
    ServiceRegistration {
        id: SERVICE.into(),
        name: SERVICE.into(),
        tags: vec![config.node.role.to_string()],
        address: a.overlay_ip().to_string(),
        port: config.api.port,
        meta,
        check: None,
    }
}

/// Peers from the catalog; entries without usable meta are skipped (and named).
pub fn peers_from(entries: &[HealthEntry]) -> (Vec<Peer>, Vec<String>) {
    let mut peers = Vec::new();
    let mut skipped = Vec::new();
    for e in entries {
        let meta = &e.service.meta;
        let address = meta
            .get("arpanet_address")
            .and_then(|a| a.parse::<NodeAddress>().ok());
        let underlay_ip = meta
            .get("underlay_ip")
            .and_then(|a| a.parse::<Ipv4Addr>().ok());
        match (address, underlay_ip) {
            (Some(address), Some(underlay_ip)) => peers.push(Peer {
                address,
                underlay_ip,
            }),
            _ => skipped.push(e.node.node.clone()),
        }
    }
    peers.sort();
    peers.dedup();
    (peers, skipped)
}

/// A catalog entry of the `arpanet` service, for tests of what is read from it.
#[cfg(test)]
pub(crate) fn entry(node: &str, meta: &[(&str, &str)]) -> HealthEntry {
    use super::client::{AgentService, HealthNode};
    HealthEntry {
        node: HealthNode {
            node: node.into(),
            address: String::new(),
        },
        service: AgentService {
            id: SERVICE.into(),
            service: SERVICE.into(),
            tags: vec![],
            address: String::new(),
            port: 0,
            meta: meta
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn registration_carries_what_peers_need() {
        let c = Config::parse(
            Path::new("t"),
            "[node]\naddress = \"0.7\"\nrole = \"boot\"\nlabels = { zone = \"a\" }\n",
        )
        .unwrap();
        let r = registration(&c, Ipv4Addr::new(192, 168, 8, 127));
        assert_eq!(r.meta["label_zone"], "a");
        assert_eq!(r.meta["arpanet_address"], "0.7");
        assert_eq!(r.meta["underlay_ip"], "192.168.8.127");
        assert_eq!(r.meta["vtep_mac"], "02:61:72:70:00:07");
        assert_eq!(r.meta["docker_api"], "tcp://10.254.0.7:2375");
        assert_eq!(r.address, "10.255.0.7");
    }

    #[test]
    fn catalog_entries_become_peers() {
        let (peers, skipped) = peers_from(&[
            entry(
                "a",
                &[("arpanet_address", "0.2"), ("underlay_ip", "192.168.8.121")],
            ),
            entry(
                "b",
                &[
                    ("arpanet_address", "0.300"),
                    ("underlay_ip", "192.168.8.122"),
                ],
            ),
        ]);
        assert_eq!(
            peers,
            [Peer {
                address: "0.2".parse().unwrap(),
                underlay_ip: Ipv4Addr::new(192, 168, 8, 121)
            }]
        );
        assert_eq!(skipped, ["b"]);
    }
}
