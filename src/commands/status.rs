use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use clap::Args;
use ipnetwork::Ipv4Network;
use serde::Serialize;

use crate::addressing::NodeAddress;
use crate::config::Config;
use crate::network::netlink::Netlink;
use crate::network::{DeviceState, Mac, ObservedState, reconcile, vtep_mac};

/// Show this node's overlay device, addresses and peers, as the kernel has them.
#[derive(Debug, Args)]
pub struct Status {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub address: NodeAddress,
    pub device_name: String,
    pub device: Option<DeviceState>,
    pub addresses: Vec<Ipv4Network>,
    pub peers: Vec<PeerStatus>,
}

#[derive(Debug, Serialize)]
pub struct PeerStatus {
    pub address: NodeAddress,
    pub underlay_ip: Option<Ipv4Addr>,
    pub overlay_ip: Ipv4Addr,
    pub container_subnet: Ipv4Network,
    pub fdb: bool,
    pub neighbours: usize,
    pub route: bool,
    /// `ok` when every entry is in place.
    pub state: String,
}

/// The node a VTEP MAC belongs to, if it is one of ours.
fn node_of(mac: Mac) -> Option<NodeAddress> {
    let m = mac.0;
    let node = NodeAddress::new(m[4], m[5]).ok()?;
    (vtep_mac(node) == mac).then_some(node)
}

pub fn report(config: &Config, observed: &ObservedState) -> StatusReport {
    let mut peers: BTreeMap<NodeAddress, Option<Ipv4Addr>> = BTreeMap::new();
    for p in reconcile::join_peers(config) {
        peers.insert(p.address, None);
    }
    let e = &observed.entries;
    for f in &e.fdb {
        if let Some(node) = node_of(f.mac) {
            peers.insert(node, Some(f.dst));
        }
    }
    let peers = peers
        .into_iter()
        .map(|(address, underlay_ip)| {
            let mac = vtep_mac(address);
            let fdb = underlay_ip.is_some();
            let neighbours = e.neighbours.iter().filter(|n| n.mac == mac).count();
            let route = e.routes.iter().any(|r| r.via == address.overlay_ip());
            let mut missing = Vec::new();
            if !fdb {
                missing.push("fdb");
            }
            if neighbours < 3 {
                missing.push("neighbours");
            }
            if !route {
                missing.push("route");
            }
            let state = if missing.is_empty() {
                "ok".to_string()
            } else {
                format!("missing {}", missing.join(", "))
            };
            PeerStatus {
                address,
                underlay_ip,
                overlay_ip: address.overlay_ip(),
                container_subnet: address.container_subnet(),
                fdb,
                neighbours,
                route,
                state,
            }
        })
        .collect();
    StatusReport {
        address: config.node.address,
        device_name: config.overlay.device.as_str().to_string(),
        device: observed.device.clone(),
        addresses: e.addresses.iter().copied().collect(),
        peers,
    }
}

impl Status {
    pub async fn exec(&self, config_path: &Path) -> anyhow::Result<()> {
        let config = Config::load(config_path)?;
        let nl = Netlink::connect()?;
        let observed = nl.observe(config.overlay.device.as_str()).await?;
        let r = report(&config, &observed);
        if self.json {
            println!("{}", serde_json::to_string_pretty(&r)?);
            return Ok(());
        }
        println!("node {}", r.address);
        match &r.device {
            None => println!(
                "overlay      {}: not created (is arpanetd running?)",
                r.device_name
            ),
            Some(d) => println!(
                "overlay      {} {} (VNI {}, UDP {}, MTU {}, MAC {})",
                r.device_name,
                if d.up { "up" } else { "DOWN" },
                d.vni.map_or("?".into(), |v| v.to_string()),
                d.port.map_or("?".into(), |p| p.to_string()),
                d.mtu,
                d.mac.map_or("?".into(), |m| m.to_string()),
            ),
        }
        let addrs: Vec<String> = r.addresses.iter().map(|a| a.to_string()).collect();
        println!(
            "addresses    {}",
            if addrs.is_empty() {
                "-".into()
            } else {
                addrs.join(" ")
            }
        );
        println!("peers        {}", r.peers.len());
        if !r.peers.is_empty() {
            println!(
                "  {:<8} {:<16} {:<14} {:<15} STATE",
                "NODE", "UNDERLAY", "OVERLAY", "CONTAINERS"
            );
            for p in &r.peers {
                println!(
                    "  {:<8} {:<16} {:<14} {:<15} {}",
                    p.address.to_string(),
                    p.underlay_ip.map_or("-".into(), |ip| ip.to_string()),
                    p.overlay_ip.to_string(),
                    p.container_subnet.to_string(),
                    p.state
                );
            }
        }
        Ok(())
    }
}
