//! One pass of the overlay reconcile loop, and its inverse.

use super::netlink::Netlink;
use super::{Change, DesiredState, Peer, UnderlayLink, firewall, plan};
use crate::config::Config;
use crate::outcome::Outcome;

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

/// Brings the firewall, the device and its entries to `peers` (the admitted ones).
/// Entries that fail are reported and the rest still applied; without the device
/// nothing else can be, so a failure to create it ends the pass.
pub async fn reconcile(
    nl: &Netlink,
    config: &Config,
    underlay: &UnderlayLink,
    peers: &[Peer],
) -> Outcome {
    let mut report = Outcome::default();
    // The firewall first: a peer's entries never exist before its rules admit it, so
    // a peer the device reaches (what `arpanet status` calls ok) is one whose traffic
    // gets in, and a peer that goes is shut out before its entries are removed.
    // iptables runs processes and waits for them: off the async runtime.
    let rules = firewall_plan(
        config,
        config.overlay.device.as_str(),
        &underlay.name,
        peers,
    );
    let firewall = tokio::task::spawn_blocking(move || {
        let forward = firewall::ensure_ip_forward();
        (forward, firewall::ensure(&rules))
    })
    .await;
    match firewall {
        Ok((forward, rules)) => {
            match forward {
                Ok(true) => report.change("enable IP forwarding"),
                Ok(false) => {}
                Err(e) => report.fail("IP forwarding", format!("{e:#}")),
            }
            match rules {
                Ok(changes) => report.changes.extend(changes),
                Err(e) => report.fail("firewall", format!("{e:#}")),
            }
        }
        Err(e) => report.fail("firewall", e),
    }
    let observed = match nl.observe(config.overlay.device.as_str()).await {
        Ok(o) => o,
        Err(e) => {
            report.fail_with(&e);
            return report;
        }
    };
    let desired = DesiredState::new(config, underlay, peers);
    let mut index = observed.device.as_ref().map(|d| d.index);
    for change in plan(&desired, &observed) {
        match nl.apply(&desired.device, &change, &mut index).await {
            Ok(()) => report.change(change.to_string()),
            Err(e) if matches!(change, Change::CreateDevice | Change::RecreateDevice { .. }) => {
                report.fail(
                    format!("{change} {}", desired.device.name),
                    format!("{e:#}"),
                );
                return report;
            }
            Err(e) => report.fail(change.to_string(), format!("{e:#}")),
        }
    }
    report
}

/// What the firewall needs to know of this node: its ports from the config.
pub fn firewall_plan(
    config: &Config,
    device: &str,
    underlay: &str,
    peers: &[Peer],
) -> firewall::Plan {
    let mut tcp_ports = vec![
        config.docker.api_port,
        config.api.port,
        config.sync.peer_port,
        config.consul.http_addr.port(),
        config.cluster.join_port,
    ];
    tcp_ports.extend(firewall::Plan::CONSUL_TCP);
    firewall::Plan {
        address: config.node.address,
        device: device.to_string(),
        underlay: underlay.to_string(),
        vxlan_port: config.overlay.port,
        hello_port: config.overlay.hello_port,
        join_port: config.cluster.join_port,
        dns_port: config.consul.dns_port,
        tcp_ports,
        udp_ports: firewall::Plan::CONSUL_UDP.to_vec(),
        peers: peers.to_vec(),
    }
}

/// Removes the device (and with it every address, neighbour, FDB entry and route on
/// it) and the firewall rules. Goes on past failures and returns them all.
pub async fn uninstall(nl: &Netlink, config: &Config) -> Outcome {
    let mut report = Outcome::default();
    let device = config.overlay.device.as_str();
    match nl.delete_link(device).await {
        Ok(true) => report.change(format!("removed {device}")),
        Ok(false) => {}
        Err(e) => report.fail(format!("remove {device}"), format!("{e:#}")),
    }
    match tokio::task::spawn_blocking(firewall::remove).await {
        Ok(errors) => {
            for e in errors {
                report.fail("firewall", e);
            }
        }
        Err(e) => report.fail("firewall", e),
    }
    report
}
