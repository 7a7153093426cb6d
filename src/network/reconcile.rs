//! One pass of the overlay reconcile loop, and its inverse.

use anyhow::Context;
use serde::Serialize;

use super::netlink::Netlink;
use super::{Change, DesiredState, Peer, firewall, plan};
use crate::config::Config;

/// What a pass did. An empty `changes` means the host already matched the plan.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// The overlay device's interface index once it exists.
    pub device_index: Option<u32>,
    /// This host's address on the underlay, as found.
    pub underlay_ip: Option<std::net::Ipv4Addr>,
    /// Nodes known only from their traffic (see the module docs of `network`).
    pub learned: Vec<Peer>,
    pub changes: Vec<String>,
    /// Entries that failed; the rest were still applied and the next pass retries.
    pub errors: Vec<String>,
}

/// The peers a node knows from its own config, before Consul says more.
pub fn join_peers(config: &Config) -> Vec<Peer> {
    config
        .node
        .join
        .iter()
        .map(|j| Peer {
            address: j.address,
            underlay_ip: j.ip,
        })
        .collect()
}

pub async fn reconcile(nl: &Netlink, config: &Config, peers: &[Peer]) -> anyhow::Result<Report> {
    let underlay = nl.underlay(&config.node.underlay).await?;
    let observed = nl.observe(config.overlay.device.as_str()).await?;
    let learned = super::learned_only(peers, &observed.learned);
    let desired = DesiredState::new(config, underlay, peers, &learned);
    let mut index = observed.device.as_ref().map(|d| d.index);
    let mut report = Report {
        underlay_ip: Some(underlay.ip),
        learned,
        ..Report::default()
    };
    for change in plan(&desired, &observed) {
        match nl.apply(&desired.device, &change, &mut index).await {
            Ok(()) => report.changes.push(change.to_string()),
            // Nothing else can be applied without the device.
            Err(e) if matches!(change, Change::CreateDevice | Change::RecreateDevice { .. }) => {
                return Err(e).with_context(|| format!("{} {}", change, desired.device.name));
            }
            Err(e) => report.errors.push(format!("{change}: {e:#}")),
        }
    }
    report.device_index = index;
    match firewall::ensure_ip_forward() {
        Ok(true) => report.changes.push("enable IP forwarding".into()),
        Ok(false) => {}
        Err(e) => report.errors.push(format!("{e:#}")),
    }
    let guarded = firewall::Guarded {
        address: config.node.address,
        docker_api_port: config.docker.api_port,
        cluster_api_port: config.api.port,
        sync_peer_port: config.sync.peer_port,
    };
    match firewall::ensure(
        &desired.device.name,
        config.node.address.container_subnet(),
        guarded,
    ) {
        Ok(changes) => report.changes.extend(changes),
        Err(e) => report.errors.push(format!("{e:#}")),
    }
    Ok(report)
}

/// Removes the device (and with it every address, neighbour, FDB entry and route on
/// it) and the firewall rules. Goes on past failures and returns them all.
pub async fn uninstall(nl: &Netlink, config: &Config) -> Vec<String> {
    let mut errors = Vec::new();
    if let Err(e) = nl.delete_link(config.overlay.device.as_str()).await {
        errors.push(format!("{e:#}"));
    }
    errors.extend(firewall::remove());
    errors
}
