//! This node's share of the cluster services, carried out by the same plan and apply
//! as containers.d (in the cluster scope, so neither removes the other's containers).

use super::{instances_for, store};
use crate::consul::client::Consul;
use crate::consul::node::{Node, healthy_nodes};
use crate::containers::{self, Desired, Pass, Scope, apply};
use crate::docker::engine::Engine;

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
