//! Cluster services: how many instances of each service this node runs. Pure, and the
//! same on every node: the inputs are the healthy nodes of Consul's catalog, the
//! drained nodes and the services in KV, so no leader is needed.
//!
//! Instances of a service are interchangeable, so placement is a count per node: the
//! replicas split evenly (`R / N` each) and the `R % N` left over go to the nodes that
//! rank highest for that service by rendezvous hashing. Losing a node therefore only
//! adds its share to the survivors, and its return only takes that share back.

pub mod reconcile;
pub mod store;
pub mod wire;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::addressing::NodeAddress;
use crate::config::Role;
use crate::config::containers::{ContainerName, ContainerSpec, ServiceSpec};
use crate::consul::node::Node;

/// A cluster service: what to run and how many. In KV and the API it is
/// [`wire::ServiceDefV1`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceDef {
    pub name: ServiceName,
    /// The container every instance runs (its `name` is the service's, instances get
    /// their own).
    pub spec: ContainerSpec,
    pub replicas: u32,
    pub constraints: Constraints,
}

/// Where a service may run. Empty lists allow every node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Constraints {
    /// `server` also admits the boot node (it is a server).
    pub roles: Vec<Role>,
    pub nodes: Vec<NodeAddress>,
    /// Every one of these must be among the node's labels (`node.labels`).
    pub labels: BTreeMap<String, String>,
}

impl Constraints {
    pub fn admits(&self, node: &Node) -> bool {
        let role_ok = self.roles.is_empty()
            || self
                .roles
                .iter()
                .any(|r| *r == node.role || (*r == Role::Server && node.role == Role::Boot));
        let node_ok = self.nodes.is_empty() || self.nodes.contains(&node.address);
        let labels_ok = self
            .labels
            .iter()
            .all(|(k, v)| node.labels.get(k) == Some(v));
        role_ok && node_ok && labels_ok
    }
}

/// A service name is a DNS label, since it becomes `NAME.service.consul`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServiceName(String);

impl ServiceName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Lowercase letters, digits and inner `-`, at most 63 characters: a DNS label, and
/// nothing that could step out of a KV key, a file name or a URL path segment.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// `s` itself when it is a DNS label, else the one error for a `kind` name.
fn dns_label(kind: &str, s: String) -> Result<String, String> {
    if is_dns_label(&s) {
        Ok(s)
    } else {
        Err(format!(
            "`{}` is not a {kind} name: lowercase letters, digits and `-` (a DNS label, at most 63 characters)",
            s.escape_debug()
        ))
    }
}

impl TryFrom<String> for ServiceName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        dns_label("service", s).map(Self)
    }
}

/// A template's name: the rule of service names, which it usually becomes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TemplateName(String);

impl TemplateName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TemplateName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        dns_label("template", s).map(Self)
    }
}

impl From<TemplateName> for String {
    fn from(n: TemplateName) -> String {
        n.0
    }
}

impl std::fmt::Display for TemplateName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<ServiceName> for String {
    fn from(n: ServiceName) -> String {
        n.0
    }
}

impl std::fmt::Display for ServiceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Rendezvous score of `node` for `service`: every node computes the same ranking.
fn score(service: &str, node: NodeAddress) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(service.as_bytes());
    h.update([0]);
    h.update(node.to_string().as_bytes());
    h.finalize().into()
}

/// How many instances of `service` each admitted, undrained node runs. Nodes that run
/// none are left out.
pub fn shares(
    service: &ServiceDef,
    nodes: &[Node],
    drained: &[NodeAddress],
) -> BTreeMap<NodeAddress, u32> {
    let mut eligible: Vec<NodeAddress> = nodes
        .iter()
        .filter(|n| !drained.contains(&n.address) && service.constraints.admits(n))
        .map(|n| n.address)
        .collect();
    eligible.sort();
    eligible.dedup();
    if eligible.is_empty() {
        return BTreeMap::new();
    }
    let name = service.name.as_str();
    eligible.sort_by_cached_key(|a| std::cmp::Reverse(score(name, *a)));
    let n = eligible.len() as u32;
    let (each, extra) = (service.replicas / n, service.replicas % n);
    eligible
        .into_iter()
        .enumerate()
        .map(|(rank, a)| (a, each + u32::from((rank as u32) < extra)))
        .filter(|(_, count)| *count > 0)
        .collect()
}

/// `me`'s entry of [`shares`], in one score per node and no sort: its rank is how
/// many admitted nodes score higher. A pass computes only its own node's share, for
/// every service, on every catalog change.
pub fn share_of(
    service: &ServiceDef,
    nodes: &[Node],
    drained: &[NodeAddress],
    me: NodeAddress,
) -> u32 {
    let eligible: std::collections::BTreeSet<NodeAddress> = nodes
        .iter()
        .filter(|n| !drained.contains(&n.address) && service.constraints.admits(n))
        .map(|n| n.address)
        .collect();
    if !eligible.contains(&me) {
        return 0;
    }
    let name = service.name.as_str();
    let mine = score(name, me);
    let rank = eligible.iter().filter(|a| score(name, **a) > mine).count() as u32;
    let n = eligible.len() as u32;
    service.replicas / n + u32::from(rank < service.replicas % n)
}

/// One instance this node should run.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub service: ServiceName,
    /// Docker's name, unique in the cluster: `web_0.2_1` is web's first on node 0.2.
    pub name: String,
    pub spec: ContainerSpec,
}

pub fn instance_name(service: &ServiceName, node: NodeAddress, k: u32) -> String {
    format!("{service}_{node}_{k}")
}

/// The instances `me` runs. Each registers in Consul under the service's name unless
/// the spec says otherwise.
pub fn instances_for(
    me: NodeAddress,
    services: &[ServiceDef],
    nodes: &[Node],
    drained: &[NodeAddress],
) -> Vec<Instance> {
    let mut out = Vec::new();
    for s in services {
        let count = share_of(s, nodes, drained, me);
        for k in 1..=count {
            let name = instance_name(&s.name, me, k);
            let mut spec = s.spec.clone();
            spec.name = ContainerName::try_from(name.clone()).expect("built from valid parts");
            let service = spec.service.get_or_insert_with(|| ServiceSpec {
                name: None,
                tags: Vec::new(),
                port: None,
                check: None,
            });
            service.name.get_or_insert_with(|| s.name.to_string());
            out.push(Instance {
                service: s.name.clone(),
                name,
                spec,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(a: &str, role: Role) -> Node {
        Node {
            address: a.parse().unwrap(),
            role,
            labels: BTreeMap::new(),
        }
    }

    fn nodes(n: u8) -> Vec<Node> {
        (1..=n)
            .map(|i| node(&format!("0.{i}"), Role::Client))
            .collect()
    }

    fn service(name: &str, replicas: u32) -> ServiceDef {
        let spec: ContainerSpec = toml::from_str(&format!(
            "name = \"{name}\"\nimage = \"busybox:1\"\ncommand = [\"sleep\", \"1d\"]\n"
        ))
        .unwrap();
        ServiceDef {
            name: ServiceName::try_from(name.to_string()).unwrap(),
            spec,
            replicas,
            constraints: Constraints::default(),
        }
    }

    fn counts(s: &ServiceDef, nodes: &[Node], drained: &[NodeAddress]) -> Vec<u32> {
        let shares = shares(s, nodes, drained);
        nodes
            .iter()
            .map(|n| shares.get(&n.address).copied().unwrap_or(0))
            .collect()
    }

    #[test]
    fn six_on_three_nodes_is_two_each_and_three_each_on_two() {
        let s = service("web", 6);
        let all = nodes(3);
        assert_eq!(counts(&s, &all, &[]), [2, 2, 2]);
        assert_eq!(counts(&s, &all[..2], &[]), [3, 3]);
        assert_eq!(counts(&s, &all, &[all[2].address]), [3, 3, 0]);
    }

    #[test]
    fn instances_are_named_per_node_and_register_under_the_service() {
        let s = service("web", 4);
        let all = nodes(2);
        let mine = instances_for(all[0].address, &[s], &all, &[]);
        let names: Vec<_> = mine.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["web_0.1_1", "web_0.1_2"]);
        assert_eq!(mine[0].spec.name.as_str(), "web_0.1_1");
        assert_eq!(
            mine[0].spec.service.as_ref().unwrap().name.as_deref(),
            Some("web")
        );
    }

    #[test]
    fn constraints_limit_the_nodes() {
        let mut s = service("db", 3);
        let all = vec![
            node("0.1", Role::Boot),
            node("0.2", Role::Server),
            node("0.3", Role::Client),
        ];
        s.constraints.roles = vec![Role::Server];
        assert_eq!(counts(&s, &all, &[]).iter().sum::<u32>(), 3);
        assert_eq!(counts(&s, &all, &[])[2], 0);
        s.constraints.roles = vec![];
        s.constraints.nodes = vec!["0.3".parse().unwrap()];
        assert_eq!(counts(&s, &all, &[]), [0, 0, 3]);
        // No admitted node: nothing runs anywhere.
        assert_eq!(counts(&s, &all[..2], &[]), [0, 0]);
        // Labels: every constraint label must match.
        let mut labelled = all.clone();
        labelled[1].labels.insert("zone".into(), "a".into());
        labelled[2].labels.insert("zone".into(), "b".into());
        s.constraints.nodes = vec![];
        s.constraints.labels.insert("zone".into(), "a".into());
        assert_eq!(counts(&s, &labelled, &[]), [0, 3, 0]);
    }

    #[test]
    fn zero_replicas_run_nowhere() {
        assert!(shares(&service("web", 0), &nodes(3), &[]).is_empty());
    }

    #[test]
    fn service_names_are_dns_labels() {
        assert!(ServiceName::try_from("web-1".to_string()).is_ok());
        for bad in ["", "Web", "web_1", "-web", "web.x", &"a".repeat(64)] {
            assert!(ServiceName::try_from(bad.to_string()).is_err(), "{bad}");
        }
    }

    proptest! {
        /// Every replica is placed, as evenly as possible, whatever the order of the input.
        #[test]
        fn spread_is_even_and_complete(replicas in 0u32..50, n in 1u8..12, rotate in 0usize..12) {
            let s = service("svc", replicas);
            let mut all = nodes(n);
            let before = shares(&s, &all, &[]);
            let len = all.len();
            all.rotate_left(rotate % len);
            prop_assert_eq!(&before, &shares(&s, &all, &[]));
            prop_assert_eq!(before.values().sum::<u32>(), replicas);
            let (lo, hi) = (replicas / u32::from(n), replicas.div_ceil(u32::from(n)));
            prop_assert!(before.values().all(|c| *c >= lo && *c <= hi));
        }

        /// One node's share, computed alone, is its entry of the whole placement.
        #[test]
        fn a_nodes_share_alone_is_its_entry_of_the_whole(replicas in 0u32..50, n in 1u8..12, drained in 0usize..13) {
            let s = service("svc", replicas);
            let all = nodes(n);
            let drained: Vec<NodeAddress> = all.get(drained).map(|n| n.address).into_iter().collect();
            let whole = shares(&s, &all, &drained);
            for node in &all {
                prop_assert_eq!(
                    share_of(&s, &all, &drained, node.address),
                    whole.get(&node.address).copied().unwrap_or(0)
                );
            }
        }

        /// A node leaving moves only its own instances; coming back takes back only as
        /// many as it is due.
        #[test]
        fn a_lost_node_moves_only_its_share(replicas in 0u32..50, n in 2u8..12, lost in 0usize..12) {
            let s = service("svc", replicas);
            let all = nodes(n);
            let lost = all[lost % all.len()].address;
            let before = shares(&s, &all, &[]);
            let after = shares(&s, &all, &[lost]);
            let moved: u32 = before.get(&lost).copied().unwrap_or(0);
            // Survivors only gain, and gain exactly what the lost node ran.
            let mut gained = 0;
            for n in &all {
                if n.address == lost { continue; }
                let (b, a) = (before.get(&n.address).copied().unwrap_or(0), after.get(&n.address).copied().unwrap_or(0));
                prop_assert!(a >= b);
                gained += a - b;
            }
            prop_assert_eq!(gained, moved);
        }
    }
}
