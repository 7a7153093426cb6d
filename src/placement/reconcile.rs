//! This node's share of the cluster services, carried out by the same plan and apply
//! as containers.d (in the cluster scope, so neither removes the other's containers).

use std::time::Duration;

use super::{Node, instances_for, store};
use crate::config::Role;
use crate::consul::client::{Consul, HealthEntry};
use crate::containers::{self, Desired, Pass, Scope, apply};
use crate::docker::engine::Engine;

/// Healthy nodes in the catalog (the `arpanet` service's passing instances), as far as
/// their claims can be believed (the overlay's rule: `consul::node::believed`).
pub fn nodes_from(entries: &[HealthEntry]) -> Vec<Node> {
    let mut nodes: Vec<Node> = crate::consul::node::believed(entries)
        .0
        .into_iter()
        .filter_map(|e| {
            let meta = &e.service.meta;
            let address = meta.get("arpanet_address")?.parse().ok()?;
            let role = match meta.get("role").map(String::as_str) {
                Some("boot") => Role::Boot,
                Some("server") => Role::Server,
                _ => Role::Client,
            };
            let labels = meta
                .iter()
                .filter_map(|(k, v)| {
                    let key = k.strip_prefix(crate::consul::node::LABEL_PREFIX)?;
                    Some((key.to_string(), v.clone()))
                })
                .collect();
            Some(Node {
                address,
                role,
                labels,
            })
        })
        .collect();
    nodes.sort();
    nodes.dedup_by_key(|n| n.address);
    nodes
}

pub async fn healthy_nodes(consul: &Consul) -> anyhow::Result<Vec<Node>> {
    let (entries, _) = consul
        .healthy_instances(crate::consul::node::SERVICE, None, Duration::ZERO)
        .await?;
    Ok(nodes_from(&entries))
}

/// One pass: what this node should run of each service, against what it runs.
/// Fails (and changes nothing) when Consul cannot be read, so an outage never stops
/// instances.
pub async fn reconcile(
    engine: &Engine,
    consul: &Consul,
    me: Node,
    apply_plan: bool,
    swarm: Option<&std::path::Path>,
) -> anyhow::Result<Pass> {
    let state = store::load(consul).await?;
    let mut nodes = healthy_nodes(consul).await?;
    // Until the catalog lists this node (it just started), it counts itself in rather
    // than stopping what it runs; the others' share is briefly larger, never smaller.
    if !nodes.iter().any(|n| n.address == me.address) {
        nodes.push(me.clone());
    }
    let instances = instances_for(me.address, &state.services, &nodes, &state.drained);
    let mut desired = Vec::new();
    let mut fetch_errors = Vec::new();
    for i in instances {
        let mut image_id = engine.image_id(i.spec.image.as_str()).await?;
        if apply_plan && image_id.is_none() {
            image_id = containers::fetch_from_swarm(
                engine,
                swarm,
                i.spec.image.as_str(),
                &mut fetch_errors,
            )
            .await?;
        }
        desired.push(Desired {
            name: i.name,
            scope: Scope::Cluster,
            file: i.service.to_string(),
            hash: containers::spec_hash(&i.spec),
            spec: i.spec,
            image_id,
        });
    }
    let keep: Vec<String> = state.broken.iter().map(|(n, _)| n.clone()).collect();
    let actual = engine
        .containers_with_label(Scope::Cluster.label(), "true")
        .await?;
    let actions = containers::plan(Scope::Cluster, &desired, &actual, &keep);
    let mut report = if apply_plan {
        apply::apply(engine, &actions, &desired, &actual, &|_, _, _| {}).await
    } else {
        apply::Report::default()
    };
    report.errors.extend(fetch_errors);
    Ok(Pass {
        diagnostics: state
            .broken
            .iter()
            .map(|(name, why)| format!("service {name} in Consul KV is unreadable: {why}"))
            .collect(),
        actions,
        report,
    })
}

/// This node as placement sees it.
pub fn me(node: &crate::config::NodeConfig) -> Node {
    Node {
        address: node.address,
        role: node.role,
        labels: node.labels.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_entries_become_nodes_with_role_and_labels() {
        let entry = |meta: &[(&str, &str)]| {
            let mut meta = meta.to_vec();
            meta.push(("underlay_ip", "192.168.8.1"));
            crate::consul::node::entry("n", &meta)
        };
        let nodes = nodes_from(&[
            entry(&[
                ("arpanet_address", "0.3"),
                ("role", "server"),
                ("label_zone", "a"),
            ]),
            entry(&[("arpanet_address", "0.1"), ("role", "boot")]),
            entry(&[("arpanet_address", "0.1"), ("role", "boot")]),
            entry(&[("role", "client")]),
        ]);
        let addresses: Vec<String> = nodes.iter().map(|n| n.address.to_string()).collect();
        assert_eq!(addresses, ["0.1", "0.3"]);
        assert_eq!(nodes[1].role, Role::Server);
        assert_eq!(nodes[1].labels["zone"], "a");
        assert!(nodes[0].labels.is_empty());
    }
}
