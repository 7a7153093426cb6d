//! This node in Consul's catalog: the service `arpanet`, whose meta is everything
//! another node needs to reach it over the overlay. Every registered instance of that
//! service is an overlay peer, a failed one too: Consul's gossip runs over the overlay,
//! and a node coming back from a partition must be reachable by all the others for
//! their agents to see it alive again. Only the healthy ones are placement's nodes.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::client::{Consul, HealthEntry, ServiceRegistration};
use crate::addressing::NodeAddress;
use crate::config::{Capacity, Config, Role};
use crate::network::admission::RefusedClaim;
use crate::network::{Peer, vtep_mac};

pub const SERVICE: &str = "arpanet";

/// Node labels travel as service meta under this prefix.
pub const LABEL_PREFIX: &str = "label_";

pub fn registration(config: &Config, underlay_ip: Ipv4Addr) -> ServiceRegistration {
    let a = config.node.address;
    let capacity = config.node.capacity.resolve();
    let meta: BTreeMap<String, String> = [
        ("arpanet_address", a.to_string()),
        ("underlay_ip", underlay_ip.to_string()),
        ("vtep_mac", vtep_mac(a).to_string()),
        ("docker_api", crate::plan::docker_api(config)),
        ("role", config.node.role.to_string()),
        ("capacity_cpu", capacity.cpu.to_string()),
        ("capacity_memory", capacity.memory.to_string()),
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

/// A node of the cluster as the catalog's believed `arpanet` entry describes it: the
/// one parse of the catalog, which both the overlay (its peers) and placement (its
/// nodes) read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogNode {
    pub address: NodeAddress,
    pub underlay_ip: Ipv4Addr,
    pub role: Role,
    pub labels: BTreeMap<String, String>,
    /// What cluster services may reserve there; `None` from a release that did not
    /// say, which places as before (without limit).
    pub capacity: Option<Capacity>,
    /// Every check of its entry passes (its agent is alive in the gossip pool).
    pub healthy: bool,
}

impl CatalogNode {
    pub fn peer(&self) -> Peer {
        Peer {
            address: self.address,
            underlay_ip: self.underlay_ip,
        }
    }
}

/// The catalog's `arpanet` entries as far as they can be believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    /// One per node, sorted by address.
    pub nodes: Vec<CatalogNode>,
    pub refused: Vec<RefusedClaim>,
}

impl Catalog {
    /// The overlay's peers: every registered node, failed or not.
    pub fn peers(&self) -> Vec<Peer> {
        self.nodes.iter().map(CatalogNode::peer).collect()
    }

    /// The nodes that run work: those whose checks pass.
    pub fn healthy(&self) -> impl Iterator<Item = &CatalogNode> {
        self.nodes.iter().filter(|n| n.healthy)
    }
}

/// The registered `arpanet` instances, read once (no blocking query).
pub async fn read_catalog(consul: &Consul) -> anyhow::Result<Catalog> {
    let (entries, _) = consul
        .all_instances(SERVICE, None, std::time::Duration::ZERO)
        .await?;
    Ok(catalog_from(&entries, &[]))
}

fn claim(e: &HealthEntry) -> (Option<NodeAddress>, Option<Ipv4Addr>) {
    let meta = &e.service.meta;
    (
        meta.get("arpanet_address").and_then(|a| a.parse().ok()),
        meta.get("underlay_ip").and_then(|a| a.parse().ok()),
    )
}

/// The entries whose claim can be believed: an entry speaks for node `a.b` only when
/// its Consul node's address is `10.253.a.b`, which that node's agent advertises and
/// no other agent can (Consul refuses a second member at one address). Any Consul
/// writer can register a service with any meta; it cannot move another node.
pub fn believed(entries: &[HealthEntry]) -> (Vec<&HealthEntry>, Vec<RefusedClaim>) {
    let mut ok = Vec::new();
    let mut refused = Vec::new();
    for e in entries {
        let meta = &e.service.meta;
        let raw = || {
            format!(
                "{} at {}",
                meta.get("arpanet_address").map_or("?", String::as_str),
                meta.get("underlay_ip").map_or("?", String::as_str)
            )
        };
        match claim(e) {
            (Some(address), Some(_)) if e.node.address == address.consul_ip().to_string() => {
                ok.push(e)
            }
            (Some(address), Some(_)) => refused.push(RefusedClaim {
                node: e.node.node.clone(),
                claims: raw(),
                reason: format!(
                    "its Consul node address is {}, not {}",
                    if e.node.address.is_empty() {
                        "empty"
                    } else {
                        e.node.address.as_str()
                    },
                    address.consul_ip()
                ),
            }),
            _ => refused.push(RefusedClaim {
                node: e.node.node.clone(),
                claims: raw(),
                reason: "no usable arpanet_address and underlay_ip".into(),
            }),
        }
    }
    (ok, refused)
}

fn role_of(e: &HealthEntry) -> Role {
    match e.service.meta.get("role").map(String::as_str) {
        Some("boot") => Role::Boot,
        Some("server") => Role::Server,
        _ => Role::Client,
    }
}

/// The capacity a node publishes. Any other node could have written the meta, so a
/// part that is there but not a number offers nothing rather than everything.
fn capacity_of(e: &HealthEntry) -> Option<Capacity> {
    let meta = &e.service.meta;
    let (cpu, memory) = (meta.get("capacity_cpu")?, meta.get("capacity_memory")?);
    Some(Capacity {
        cpu: cpu.parse().unwrap_or(0),
        memory: memory.parse().unwrap_or(0),
    })
}

fn labels_of(e: &HealthEntry) -> BTreeMap<String, String> {
    e.service
        .meta
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(LABEL_PREFIX)?.to_string(), v.clone())))
        .collect()
}

/// The catalog's nodes. Entries that cannot be believed are refused (and named); when
/// believed entries disagree on a node's underlay IP, the node keeps what it was in
/// `previous` (or is left out): a conflicting claim changes nothing.
pub fn catalog_from(entries: &[HealthEntry], previous: &[CatalogNode]) -> Catalog {
    let (ok, mut refused) = believed(entries);
    let mut by_address: BTreeMap<NodeAddress, Vec<(Ipv4Addr, &HealthEntry)>> = BTreeMap::new();
    for e in ok {
        if let (Some(address), Some(ip)) = claim(e) {
            by_address.entry(address).or_default().push((ip, e));
        }
    }
    let mut nodes = Vec::new();
    for (address, mut claims) in by_address {
        // At one IP a passing entry speaks before a failed one (a host renamed, its old
        // Consul node not reaped yet), so the node is as healthy as its live entry.
        claims.sort_by(|a, b| {
            (a.0, !a.1.passing(), &a.1.node.node).cmp(&(b.0, !b.1.passing(), &b.1.node.node))
        });
        claims.dedup_by_key(|(ip, _)| *ip);
        if let [(underlay_ip, e)] = claims[..] {
            nodes.push(CatalogNode {
                address,
                underlay_ip,
                role: role_of(e),
                labels: labels_of(e),
                capacity: capacity_of(e),
                healthy: e.passing(),
            });
            continue;
        }
        let kept = previous.iter().find(|n| n.address == address);
        let all: Vec<String> = claims
            .iter()
            .map(|(ip, e)| format!("{ip} (node {})", e.node.node))
            .collect();
        for (ip, e) in &claims {
            refused.push(RefusedClaim {
                node: e.node.node.clone(),
                claims: format!("{address} at {ip}"),
                reason: format!(
                    "conflicting claims for {address}: {}; {}",
                    all.join(", "),
                    kept.map_or("it stays out".to_string(), |p| format!(
                        "it stays at {}",
                        p.underlay_ip
                    ))
                ),
            });
        }
        // Its health is the claim's at the kept address (none: not healthy).
        nodes.extend(kept.map(|k| {
            CatalogNode {
                healthy: claims
                    .iter()
                    .any(|(ip, e)| *ip == k.underlay_ip && e.passing()),
                ..k.clone()
            }
        }));
    }
    Catalog { nodes, refused }
}

/// A node as placement sees it: where it is in the plan, its role, its labels and what
/// it offers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Node {
    pub address: NodeAddress,
    pub role: Role,
    pub labels: BTreeMap<String, String>,
    pub capacity: Option<Capacity>,
}

impl From<&CatalogNode> for Node {
    fn from(n: &CatalogNode) -> Self {
        Node {
            address: n.address,
            role: n.role,
            labels: n.labels.clone(),
            capacity: n.capacity,
        }
    }
}

/// A catalog entry of the `arpanet` service, for tests of what is read from it, on a
/// Consul node whose address is the one its meta claims (as a real node's is).
#[cfg(test)]
pub(crate) fn entry(node: &str, meta: &[(&str, &str)]) -> HealthEntry {
    use super::client::{AgentService, HealthNode};
    let address = meta
        .iter()
        .find(|(k, _)| *k == "arpanet_address")
        .and_then(|(_, a)| a.parse::<NodeAddress>().ok())
        .map_or(String::new(), |a| a.consul_ip().to_string());
    HealthEntry {
        node: HealthNode {
            node: node.into(),
            address,
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
        checks: vec![],
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
        assert_eq!(r.meta["docker_api"], "tcp://10.254.0.7:2376");
        assert_eq!(r.address, "10.255.0.7");
    }

    fn p(a: &str, last: u8) -> Peer {
        Peer {
            address: a.parse().unwrap(),
            underlay_ip: Ipv4Addr::new(192, 168, 8, last),
        }
    }

    #[test]
    fn catalog_entries_become_peers() {
        let got = catalog_from(
            &[
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
            ],
            &[],
        );
        assert_eq!(got.peers(), [p("0.2", 121)]);
        assert_eq!(got.refused.len(), 1);
        assert_eq!(got.refused[0].node, "b");
    }

    #[test]
    fn a_claim_from_another_consul_node_is_refused() {
        // Node c (10.253.0.3) registers an `arpanet` service claiming 0.2 at its own IP.
        let mut forged = entry(
            "c",
            &[("arpanet_address", "0.2"), ("underlay_ip", "192.168.8.66")],
        );
        forged.node.address = "10.253.0.3".into();
        let real = entry(
            "b",
            &[("arpanet_address", "0.2"), ("underlay_ip", "192.168.8.121")],
        );
        let got = catalog_from(&[real, forged], &[]);
        assert_eq!(got.peers(), [p("0.2", 121)]);
        assert_eq!(
            got.refused,
            [RefusedClaim {
                node: "c".into(),
                claims: "0.2 at 192.168.8.66".into(),
                reason: "its Consul node address is 10.253.0.3, not 10.253.0.2".into()
            }]
        );
    }

    #[test]
    fn a_failed_node_stays_a_peer_but_runs_nothing() {
        let mut failed = entry(
            "b",
            &[("arpanet_address", "0.2"), ("underlay_ip", "192.168.8.121")],
        );
        failed.checks = serde_json::from_str(
            r#"[{"CheckID":"serfHealth","Status":"critical"},{"CheckID":"service:arpanet","Status":"passing"}]"#,
        )
        .unwrap();
        let alive = entry(
            "c",
            &[("arpanet_address", "0.3"), ("underlay_ip", "192.168.8.122")],
        );
        let catalog = catalog_from(&[failed.clone(), alive], &[]);
        // Its agent must be reachable when it comes back, or gossip never heals.
        assert_eq!(catalog.peers(), [p("0.2", 121), p("0.3", 122)]);
        let healthy: Vec<String> = catalog.healthy().map(|n| n.address.to_string()).collect();
        assert_eq!(healthy, ["0.3"]);
        // A failed entry is still a claim: a second one for its address is a conflict
        // (whoever registered it), not a replacement.
        let twin = entry(
            "evil",
            &[("arpanet_address", "0.2"), ("underlay_ip", "192.168.8.66")],
        );
        let seen = catalog.nodes.clone();
        assert_eq!(
            catalog_from(&[failed.clone(), twin], &seen).peers(),
            [p("0.2", 121)]
        );
        // The same host under a new Consul node name, its old one failed and not yet
        // reaped: the live entry says how it is, whichever name sorts first.
        let mut renamed = failed.clone();
        renamed.node.node = "z-new".into();
        renamed.checks.clear();
        let both = catalog_from(&[failed, renamed], &[]);
        assert_eq!(both.peers(), [p("0.2", 121)]);
        assert!(both.nodes[0].healthy);
    }

    #[test]
    fn conflicting_claims_change_nothing() {
        // A second Consul node registered at the same address (catalog/register can).
        let real = entry(
            "b",
            &[("arpanet_address", "0.2"), ("underlay_ip", "192.168.8.121")],
        );
        let twin = entry(
            "evil",
            &[("arpanet_address", "0.2"), ("underlay_ip", "192.168.8.66")],
        );
        let both = [real.clone(), twin];
        let seen = catalog_from(std::slice::from_ref(&real), &[]).nodes;
        let got = catalog_from(&both, &seen);
        assert_eq!(got.peers(), [p("0.2", 121)], "the node stays where it was");
        assert_eq!(got.refused.len(), 2);
        assert!(
            got.refused[0].reason.contains("conflicting claims for 0.2")
                && got.refused[0].reason.contains("it stays at 192.168.8.121"),
            "{:?}",
            got.refused
        );
        assert_eq!(
            catalog_from(&both, &[]).peers(),
            [],
            "never seen: it stays out"
        );
        // The same claim twice (two instances on one node) is no conflict.
        assert_eq!(
            catalog_from(&[real.clone(), real], &[]).peers(),
            [p("0.2", 121)]
        );
    }
}
