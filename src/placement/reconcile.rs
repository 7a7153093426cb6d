//! This node's share of the cluster services, carried out by the same plan and apply
//! as containers.d (in the cluster scope, so neither removes the other's containers).

use std::collections::BTreeMap;

use super::{instances_for, store::ClusterState};
use crate::consul::client::Consul;
use crate::consul::node::{Catalog, Node};
use crate::containers::converge::{Options, Pass, converge_scope};
use crate::containers::{self, Desired, Scope};
use crate::docker::engine::Engine;
use crate::docker::images::LocalImages;

/// This node as placement sees it.
pub fn me(node: &crate::config::NodeConfig) -> Node {
    Node {
        address: node.address,
        role: node.role,
        labels: node.labels.clone(),
        capacity: Some(node.capacity.resolve()),
    }
}

/// The nodes services are placed on: the catalog's healthy ones, and this node. Until the catalog
/// lists this node (it just started), it counts itself in rather than stopping what it
/// runs; the others' share is briefly larger, never smaller.
pub fn cluster_nodes(catalog: &Catalog, me: &Node) -> Vec<Node> {
    let mut nodes: Vec<Node> = catalog.healthy().map(Node::from).collect();
    if !nodes.iter().any(|n| n.address == me.address) {
        nodes.push(me.clone());
        nodes.sort();
    }
    nodes
}

/// The cluster's nodes, read from Consul now (for the API; a pass reads its snapshot).
pub async fn healthy_nodes(consul: &Consul, me: &Node) -> anyhow::Result<Vec<Node>> {
    let catalog = crate::consul::node::read_catalog(consul).await?;
    Ok(cluster_nodes(&catalog, me))
}

/// What this node should run of each service, its images resolved against this host's.
pub fn desired(me: &Node, nodes: &[Node], state: &ClusterState) -> Vec<Desired> {
    instances_for(me.address, &state.services, nodes, &state.drained)
        .into_iter()
        .map(|i| Desired {
            name: i.name,
            scope: Scope::Cluster,
            file: i.service.to_string(),
            hash: containers::spec_hash(&i.spec),
            spec: i.spec,
            image_id: None,
        })
        .collect()
}

/// How many instances of each service in KV this node should run (0 for those it has
/// no share of). The one place the metrics' desired count comes from: it asks
/// placement the way a pass does, so it follows whatever placement decides.
pub fn desired_counts(me: &Node, nodes: &[Node], state: &ClusterState) -> BTreeMap<String, u32> {
    let mut counts: BTreeMap<String, u32> = state
        .services
        .iter()
        .map(|s| (s.name.to_string(), 0))
        .collect();
    for d in desired(me, nodes, state) {
        *counts.entry(d.file).or_default() += 1;
    }
    counts
}

/// One pass: this node's share against what it runs. Unreadable services are
/// diagnostics, and their instances are left alone.
pub async fn converge(
    engine: &Engine,
    images: &LocalImages,
    me: &Node,
    nodes: &[Node],
    state: &ClusterState,
    opts: &Options<'_>,
) -> anyhow::Result<Pass> {
    let keep: Vec<String> = state.broken.iter().map(|(n, _)| n.clone()).collect();
    let (actions, report) = converge_scope(
        engine,
        Scope::Cluster,
        desired(me, nodes, state),
        images,
        &keep,
        opts,
    )
    .await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Role;
    use crate::consul::node::{CatalogNode, catalog_from};

    #[test]
    fn catalog_entries_become_nodes_with_role_and_labels() {
        let entry = |meta: &[(&str, &str)]| {
            let mut meta = meta.to_vec();
            meta.push(("underlay_ip", "192.168.8.1"));
            crate::consul::node::entry("n", &meta)
        };
        let catalog = catalog_from(
            &[
                entry(&[
                    ("arpanet_address", "0.3"),
                    ("role", "server"),
                    ("label_zone", "a"),
                ]),
                entry(&[("arpanet_address", "0.1"), ("role", "boot")]),
                entry(&[("arpanet_address", "0.1"), ("role", "boot")]),
                entry(&[("role", "client")]),
            ],
            &[],
        );
        let nodes: Vec<Node> = catalog.nodes.iter().map(Node::from).collect();
        let addresses: Vec<String> = nodes.iter().map(|n| n.address.to_string()).collect();
        assert_eq!(addresses, ["0.1", "0.3"]);
        assert_eq!(nodes[1].role, Role::Server);
        assert_eq!(nodes[1].labels["zone"], "a");
        assert!(nodes[0].labels.is_empty());
    }

    #[test]
    fn a_node_the_catalog_does_not_list_yet_counts_itself_in_once() {
        let me = Node {
            address: "0.9".parse().unwrap(),
            role: Role::Client,
            labels: Default::default(),
            capacity: None,
        };
        let nodes = cluster_nodes(&Catalog::default(), &me);
        assert_eq!(nodes, std::slice::from_ref(&me));
        let listed = Catalog {
            nodes: vec![CatalogNode {
                address: me.address,
                underlay_ip: std::net::Ipv4Addr::new(192, 168, 8, 9),
                role: Role::Client,
                labels: Default::default(),
                capacity: None,
                healthy: true,
            }],
            refused: vec![],
        };
        assert_eq!(cluster_nodes(&listed, &me), [me]);
    }
}
