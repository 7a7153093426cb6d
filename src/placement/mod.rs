//! Cluster services: how many instances of each service this node runs. Pure, and the
//! same on every node: the inputs are the healthy nodes of Consul's catalog, the
//! drained nodes and the services in KV, so no leader is needed.
//!
//! Instances of a service are interchangeable, so placement is a count per node: the
//! replicas split evenly (`R / N` each) and the `R % N` left over go to the nodes that
//! rank highest for that service by rendezvous hashing. Losing a node therefore only
//! adds its share to the survivors, and its return only takes that share back.

pub mod driver;
pub mod reconcile;
pub mod rollout;
pub mod store;
pub mod wire;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::addressing::NodeAddress;
use crate::config::containers::{ContainerName, ContainerSpec, ServiceSpec};
use crate::config::{Capacity, Role};
use crate::consul::node::Node;
pub use rollout::{Previous, Rollout, RolloutState, UpdateConfig};

/// A cluster service: what to run and how many. In KV and the API it is
/// [`wire::ServiceDefV2`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceDef {
    pub name: ServiceName,
    /// The container every instance runs (its `name` is the service's, instances get
    /// their own).
    pub spec: ContainerSpec,
    pub replicas: u32,
    pub constraints: Constraints,
    /// `spec`'s version: 1 at creation, one more at each update.
    pub version: u64,
    /// The spec before the last update, which a rollback puts back.
    pub previous: Option<Previous>,
    /// How the last update rolled out, and how a rollback does.
    pub update: UpdateConfig,
    pub rollout: Option<Rollout>,
    /// When its KV key was made (Consul's CreateIndex; 0 when not read from KV): the
    /// order in which services take room, so a new one never pushes out an older one.
    pub created: u64,
}

impl ServiceDef {
    /// A new service, at version 1 with no history.
    pub fn new(
        name: ServiceName,
        spec: ContainerSpec,
        replicas: u32,
        constraints: Constraints,
    ) -> Self {
        Self {
            name,
            spec,
            replicas,
            constraints,
            version: 1,
            previous: None,
            update: UpdateConfig::default(),
            rollout: None,
            created: 0,
        }
    }

    /// The version and spec instance `name` runs: while a rollout splits the service,
    /// the instances it has not reached yet keep the previous spec (new ones too, say
    /// from a scale-up, until a batch takes them).
    pub fn spec_for(&self, instance: &str) -> (u64, &ContainerSpec) {
        match (&self.rollout, &self.previous) {
            (Some(r), Some(p)) if r.state.splits() && !r.updated.contains(instance) => {
                (p.version, &p.spec)
            }
            _ => (self.version, &self.spec),
        }
    }

    /// What one instance reserves: the larger of the two specs while a rollout runs
    /// both, so neither is placed where it would not fit.
    pub fn reservation(&self) -> Capacity {
        let mut r = reservation(&self.spec);
        if let (Some(rollout), Some(p)) = (&self.rollout, &self.previous)
            && rollout.state.splits()
        {
            let q = reservation(&p.spec);
            r = Capacity {
                cpu: r.cpu.max(q.cpu),
                memory: r.memory.max(q.memory),
            };
        }
        r
    }
}

/// A spec's `cpu` (shares, 1024 to a CPU) and `memory` are what each instance reserves.
pub fn reservation(spec: &ContainerSpec) -> Capacity {
    Capacity {
        cpu: spec.cpu.map_or(0, |c| u64::from(c.0)),
        memory: spec.memory.map_or(0, |m| m.0),
    }
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

/// Where every service's instances go when nodes have limits: each node's count, and
/// what could be placed nowhere, with why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub shares: BTreeMap<ServiceName, BTreeMap<NodeAddress, u32>>,
    pub unplaced: BTreeMap<ServiceName, Unplaced>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unplaced {
    pub count: u32,
    pub why: String,
}

impl Plan {
    pub fn share(&self, service: &ServiceName, node: NodeAddress) -> u32 {
        self.shares
            .get(service)
            .and_then(|s| s.get(&node))
            .copied()
            .unwrap_or(0)
    }
}

/// How many instances of `r` fit into `free`; no limit without a capacity or a
/// reservation.
fn fits(free: Option<Capacity>, r: Capacity) -> u64 {
    let Some(free) = free else { return u64::MAX };
    let per = |have: u64, need: u64| have.checked_div(need).unwrap_or(u64::MAX);
    per(free.cpu, r.cpu).min(per(free.memory, r.memory))
}

fn human_reservation(r: Capacity) -> String {
    let mut parts = Vec::new();
    if r.cpu > 0 {
        parts.push(format!(
            "{} CPU",
            r.cpu as f64 / crate::config::SHARES_PER_CPU as f64
        ));
    }
    if r.memory > 0 {
        parts.push(format!("{} MiB", r.memory.div_ceil(1 << 20)));
    }
    parts.join(" and ")
}

/// Placement of every service, the same on every node. A service that reserves nothing
/// is [`shares`]. One that reserves CPU or memory is placed oldest first: each node
/// first takes what it fits of its even share, then what did not fit goes one at a
/// time to the admitted node with room that runs the fewest of it (ties by rank).
/// What fits nowhere is [`Unplaced`], never put on a node that has no room. While
/// every service fits, this is [`shares`], so a lost node still moves only its own.
pub fn plan(services: &[ServiceDef], nodes: &[Node], drained: &[NodeAddress]) -> Plan {
    let mut free: BTreeMap<NodeAddress, Option<Capacity>> =
        nodes.iter().map(|n| (n.address, n.capacity)).collect();
    let mut plan = Plan::default();
    // Oldest first: a service created (or scaled) into a full cluster is the one left
    // unplaced, never one that runs already.
    let mut sorted: Vec<&ServiceDef> = services.iter().collect();
    sorted.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    for s in sorted {
        let ideal = shares(s, nodes, drained);
        let admitted: Vec<&Node> = nodes
            .iter()
            .filter(|n| !drained.contains(&n.address) && s.constraints.admits(n))
            .collect();
        if admitted.is_empty() && s.replicas > 0 {
            plan.unplaced.insert(
                s.name.clone(),
                Unplaced {
                    count: s.replicas,
                    why: "no healthy, undrained node meets its constraints".into(),
                },
            );
        }
        let r = s.reservation();
        if r == Capacity::default() {
            plan.shares.insert(s.name.clone(), ideal);
            continue;
        }
        let name = s.name.as_str();
        let mut ranked: Vec<NodeAddress> = admitted.iter().map(|n| n.address).collect();
        ranked.sort();
        ranked.dedup();
        ranked.sort_by_cached_key(|a| std::cmp::Reverse(score(name, *a)));
        let mut got: BTreeMap<NodeAddress, u32> = BTreeMap::new();
        let take = |a: NodeAddress,
                    free: &mut BTreeMap<NodeAddress, Option<Capacity>>,
                    got: &mut BTreeMap<NodeAddress, u32>| {
            if let Some(Some(f)) = free.get_mut(&a) {
                f.cpu -= r.cpu;
                f.memory -= r.memory;
            }
            *got.entry(a).or_insert(0) += 1;
        };
        let mut overflow = 0u32;
        for a in &ranked {
            let want = ideal.get(a).copied().unwrap_or(0);
            let room = fits(free.get(a).copied().flatten(), r).min(u64::from(want)) as u32;
            for _ in 0..room {
                take(*a, &mut free, &mut got);
            }
            overflow += want - room;
        }
        while overflow > 0 {
            // Only to nodes that publish a capacity: one of an older release places
            // by the even share alone and would never start the extra instance.
            let next = ranked
                .iter()
                .filter(|a| matches!(free.get(a), Some(Some(f)) if fits(Some(*f), r) > 0))
                .min_by_key(|a| got.get(a).copied().unwrap_or(0));
            let Some(a) = next else { break };
            take(*a, &mut free, &mut got);
            overflow -= 1;
        }
        if overflow > 0 {
            plan.unplaced.insert(
                s.name.clone(),
                Unplaced {
                    count: overflow,
                    why: format!(
                        "no node that meets its constraints has {} free",
                        human_reservation(r)
                    ),
                },
            );
        }
        got.retain(|_, c| *c > 0);
        plan.shares.insert(s.name.clone(), got);
    }
    plan
}

/// Every instance of `service` the cluster should run, by name, on its node.
pub fn placed_instances(service: &ServiceName, plan: &Plan) -> Vec<(String, NodeAddress)> {
    let mut out = Vec::new();
    for (node, count) in plan.shares.get(service).into_iter().flatten() {
        for k in 1..=*count {
            out.push((instance_name(service, *node, k), *node));
        }
    }
    out.sort();
    out
}

/// One instance this node should run.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub service: ServiceName,
    /// Docker's name, unique in the cluster: `web_0.2_1` is web's first on node 0.2.
    pub name: String,
    pub spec: ContainerSpec,
    /// The service version of `spec`.
    pub version: u64,
}

pub use crate::containers::registration::LABEL_VERSION;

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
    // Only services that reserve something compete for room; the others are placed
    // alone, in one score per node.
    let reserving: Vec<ServiceDef> = services
        .iter()
        .filter(|s| s.reservation() != Capacity::default())
        .cloned()
        .collect();
    let capped = plan(&reserving, nodes, drained);
    let mut out = Vec::new();
    for s in services {
        let count = if s.reservation() == Capacity::default() {
            share_of(s, nodes, drained, me)
        } else {
            capped.share(&s.name, me)
        };
        for k in 1..=count {
            let name = instance_name(&s.name, me, k);
            let (version, spec) = s.spec_for(&name);
            let mut spec = spec.clone();
            spec.name = ContainerName::try_from(name.clone()).expect("built from valid parts");
            let service = spec.service.get_or_insert_with(|| ServiceSpec {
                name: None,
                tags: Vec::new(),
                port: None,
                check: None,
            });
            service.name.get_or_insert_with(|| s.name.to_string());
            // Version 1 carries no label, so an upgrade to this release changes no
            // instance's spec hash (and replaces none).
            if version > 1 {
                spec.labels
                    .insert(LABEL_VERSION.to_string(), version.to_string());
            }
            out.push(Instance {
                service: s.name.clone(),
                name,
                spec,
                version,
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
            capacity: None,
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
        ServiceDef::new(
            ServiceName::try_from(name.to_string()).unwrap(),
            spec,
            replicas,
            Constraints::default(),
        )
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

    fn reserving(name: &str, replicas: u32, cpus: f64, memory_mib: u64) -> ServiceDef {
        let mut s = service(name, replicas);
        s.spec.cpu = Some(crate::config::containers::CpuShares(
            (cpus * crate::config::SHARES_PER_CPU as f64) as u32,
        ));
        s.spec.memory = Some(crate::config::containers::MemoryLimit(memory_mib << 20));
        s
    }

    fn with_capacity(mut n: Node, cpus: u64, memory_mib: u64) -> Node {
        n.capacity = Some(Capacity {
            cpu: cpus * crate::config::SHARES_PER_CPU,
            memory: memory_mib << 20,
        });
        n
    }

    fn total_on(plan: &Plan, services: &[ServiceDef], node: NodeAddress) -> Capacity {
        let mut used = Capacity::default();
        for s in services {
            let k = u64::from(plan.share(&s.name, node));
            used.cpu += k * s.reservation().cpu;
            used.memory += k * s.reservation().memory;
        }
        used
    }

    #[test]
    fn a_small_node_never_gets_more_than_it_has_and_the_rest_go_elsewhere() {
        let mut all = nodes(3);
        all[0] = with_capacity(all[0].clone(), 1, 256);
        let svc = [reserving("web", 6, 0.5, 100)];
        let plan = plan(&svc, &all, &[]);
        // 0.1 fits two of 100 MiB in 256 MiB; its third goes to the others.
        assert_eq!(plan.share(&svc[0].name, all[0].address), 2);
        let placed: u32 = all
            .iter()
            .map(|n| plan.share(&svc[0].name, n.address))
            .sum();
        assert_eq!(placed, 6);
        assert!(plan.unplaced.is_empty());
        let used = total_on(&plan, &svc, all[0].address);
        assert!(used.memory <= 256 << 20 && used.cpu <= 1024, "{used:?}");
    }

    #[test]
    fn a_service_that_fits_nowhere_is_reported_not_overcommitted() {
        let all: Vec<Node> = nodes(2)
            .into_iter()
            .map(|n| with_capacity(n, 1, 256))
            .collect();
        let big = reserving("big", 1, 2.0, 10);
        let plan = plan(std::slice::from_ref(&big), &all, &[]);
        assert!(plan.shares[&big.name].is_empty());
        let u = &plan.unplaced[&big.name];
        assert_eq!(u.count, 1);
        assert_eq!(
            u.why,
            "no node that meets its constraints has 2 CPU and 10 MiB free"
        );
        // Instances of a service that does not fit are not given to this node either.
        assert!(instances_for(all[0].address, &[big], &all, &[]).is_empty());
    }

    #[test]
    fn a_new_service_is_the_one_left_out_not_one_that_runs() {
        let all = vec![with_capacity(node("0.1", Role::Client), 1, 1024)];
        let mut old = reserving("zz-old", 1, 1.0, 10);
        old.created = 10;
        let mut new = reserving("aa-new", 1, 1.0, 10);
        new.created = 20;
        let plan = plan(&[new.clone(), old.clone()], &all, &[]);
        assert_eq!(plan.share(&old.name, all[0].address), 1);
        assert_eq!(plan.unplaced[&new.name].count, 1);
    }

    #[test]
    fn overflow_goes_only_to_nodes_that_publish_a_capacity() {
        // 0.2 runs an older release: unlimited, but it places by the even share alone.
        let all = vec![
            with_capacity(node("0.1", Role::Client), 1, 1024),
            node("0.2", Role::Client),
        ];
        let s = reserving("web", 4, 1.0, 10);
        let plan = plan(std::slice::from_ref(&s), &all, &[]);
        assert_eq!(plan.share(&s.name, all[0].address), 1);
        assert_eq!(
            plan.share(&s.name, all[1].address),
            2,
            "its even share only"
        );
        assert_eq!(plan.unplaced[&s.name].count, 1);
    }

    #[test]
    fn services_that_reserve_nothing_and_nodes_without_capacity_are_unlimited() {
        let all = nodes(3);
        let plain = service("plain", 7);
        let res = reserving("res", 7, 1.0, 64);
        let plan = plan(&[plain.clone(), res.clone()], &all, &[]);
        assert_eq!(plan.shares[&plain.name], shares(&plain, &all, &[]));
        assert_eq!(plan.shares[&res.name], shares(&res, &all, &[]));
    }

    proptest! {
        /// Capacity is never exceeded, every instance is placed or reported, and while
        /// everything fits the placement is the even one.
        #[test]
        fn capacity_holds_and_fitting_services_keep_the_even_spread(
            replicas in 0u32..20, n in 1u8..6, mem in 0u64..600, cpus in 1u64..4,
        ) {
            let all: Vec<Node> = nodes(n).into_iter().map(|x| with_capacity(x, cpus, mem)).collect();
            let svc = [reserving("a", replicas, 0.5, 100), reserving("b", replicas / 2, 0.25, 50)];
            let plan = plan(&svc, &all, &[]);
            for node in &all {
                let used = total_on(&plan, &svc, node.address);
                prop_assert!(used.memory <= mem << 20 && used.cpu <= cpus * 1024, "{:?}", used);
            }
            for s in &svc {
                let placed: u32 = all.iter().map(|x| plan.share(&s.name, x.address)).sum();
                let unplaced = plan.unplaced.get(&s.name).map_or(0, |u| u.count);
                prop_assert_eq!(placed + unplaced, s.replicas);
            }
            if plan.unplaced.is_empty() && all.iter().all(|x| {
                let per = |s: &ServiceDef| u64::from(shares(s, &all, &[]).get(&x.address).copied().unwrap_or(0));
                per(&svc[0]) * 100 + per(&svc[1]) * 50 <= mem
                    && per(&svc[0]) * 512 + per(&svc[1]) * 256 <= cpus * 1024
            }) {
                prop_assert_eq!(&plan.shares[&svc[0].name], &shares(&svc[0], &all, &[]));
            }
        }

        /// With room to spare, a lost node's instances go to the others and no other
        /// instance moves.
        #[test]
        fn with_room_a_lost_node_moves_only_its_share(replicas in 0u32..30, n in 2u8..8, lost in 0usize..8) {
            let all: Vec<Node> = nodes(n).into_iter().map(|x| with_capacity(x, 64, 1 << 20)).collect();
            let svc = [reserving("svc", replicas, 0.5, 100)];
            let lost = all[lost % all.len()].address;
            let before = plan(&svc, &all, &[]);
            let after = plan(&svc, &all, &[lost]);
            let mut gained = 0;
            for x in &all {
                if x.address == lost { continue; }
                let (b, a) = (before.share(&svc[0].name, x.address), after.share(&svc[0].name, x.address));
                prop_assert!(a >= b);
                gained += a - b;
            }
            prop_assert_eq!(gained, before.share(&svc[0].name, lost));
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
