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
    pub changes: Vec<String>,
    /// Entries that failed; the rest were still applied and the next pass retries.
    pub errors: Vec<String>,
}

/// The peers a node names in its own config: whom it sends its hello to. They are
/// programmed only once admitted, like any other node.
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
    let desired = DesiredState::new(config, &underlay, peers);
    let mut index = observed.device.as_ref().map(|d| d.index);
    let mut report = Report {
        underlay_ip: Some(underlay.ip),
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
    match firewall::ensure(&firewall_plan(
        config,
        &desired.device.name,
        &underlay.name,
        peers,
    )) {
        Ok(changes) => report.changes.extend(changes),
        Err(e) => report.errors.push(format!("{e:#}")),
    }
    Ok(report)
}

/// What the firewall needs to know of this node: its ports from the config.
pub fn firewall_plan<'a>(
    config: &Config,
    device: &'a str,
    underlay: &'a str,
    peers: &'a [Peer],
) -> firewall::Plan<'a> {
    let mut tcp_ports = vec![
        config.docker.api_port,
        config.api.port,
        config.sync.peer_port,
        config.consul.http_addr.port(),
    ];
    tcp_ports.extend(firewall::Plan::CONSUL_TCP);
    firewall::Plan {
        address: config.node.address,
        device,
        underlay,
        vxlan_port: config.overlay.port,
        hello_port: config.overlay.hello_port,
        dns_port: config.consul.dns_port,
        tcp_ports,
        udp_ports: firewall::Plan::CONSUL_UDP.to_vec(),
        peers,
    }
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
