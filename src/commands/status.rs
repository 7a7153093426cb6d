use std::net::Ipv4Addr;
use std::path::Path;

use clap::Args;
use ipnetwork::Ipv4Network;
use serde::Serialize;

use crate::addressing::NodeAddress;
use crate::config::{Config, ConsulMode};
use crate::consul::client::Consul;
use crate::network::netlink::Netlink;
use crate::network::{DeviceState, ObservedState, admission, health, reconcile};

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
    /// Absent when consul.mode is `disabled`.
    pub consul: Option<ConsulStatus>,
    /// Who was admitted and how, and what was turned away, as arpanetd last wrote it.
    pub admission: Option<admission::Status>,
}

#[derive(Debug, Default, Serialize)]
pub struct ConsulStatus {
    pub leader: Option<String>,
    pub servers: Vec<String>,
    /// This node's state in the gossip pool (alive, failed, ...).
    pub node_status: Option<String>,
    pub members_alive: usize,
    /// The last problem the agent wrapper recognised in the agent's log.
    pub problem: Option<String>,
    /// Why Consul could not be asked, when it could not.
    pub error: Option<String>,
}

async fn consul_status(config: &Config) -> Option<ConsulStatus> {
    if config.consul.mode == ConsulMode::Disabled {
        return None;
    }
    let mut s = ConsulStatus {
        problem: std::fs::read_to_string(crate::paths::consul_problem(&config.paths))
            .ok()
            .map(|p| p.trim().to_string()),
        ..ConsulStatus::default()
    };
    let consul = Consul::impatient_for_node(config);
    let me = config.node.address.consul_ip().to_string();
    match consul.members().await {
        Ok(members) => {
            s.members_alive = members.iter().filter(|m| m.status == 1).count();
            s.node_status = members
                .iter()
                .find(|m| m.addr == me)
                .map(|m| m.status_name().to_string());
            s.leader = consul.leader().await.unwrap_or(None);
            s.servers = consul.raft_peers().await.unwrap_or_default();
        }
        Err(e) => s.error = Some(format!("{e:#}")),
    }
    Some(s)
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
    /// How it was admitted (`catalog`, `cache`, `hello`), when it was.
    pub admitted_by: Option<String>,
    /// `ok` when every entry is in place.
    pub state: String,
}

pub fn report(
    config: &Config,
    observed: &ObservedState,
    consul: Option<ConsulStatus>,
    admission: Option<admission::Status>,
) -> StatusReport {
    let join: Vec<NodeAddress> = reconcile::join_peers(config)
        .iter()
        .map(|p| p.address)
        .collect();
    let peers = health::peers(&join, observed, admission.as_ref())
        .into_iter()
        .map(|p| PeerStatus {
            address: p.address,
            underlay_ip: p.underlay_ip,
            overlay_ip: p.address.overlay_ip(),
            container_subnet: p.address.container_subnet(),
            fdb: p.fdb,
            neighbours: p.neighbours,
            route: p.route,
            admitted_by: p.admitted_by,
            state: p.state.to_string(),
        })
        .collect();
    let e = &observed.entries;
    StatusReport {
        address: config.node.address,
        device_name: config.overlay.device.as_str().to_string(),
        device: observed.device.clone(),
        addresses: e.addresses.iter().copied().collect(),
        peers,
        consul,
        admission,
    }
}

impl Status {
    pub async fn exec(&self, config_path: &Path) -> anyhow::Result<()> {
        let config = Config::load(config_path)?;
        let nl = Netlink::connect()?;
        let observed = nl.observe(config.overlay.device.as_str()).await?;
        let admission = admission::load_status(&crate::paths::admission_status(&config.paths));
        let r = report(&config, &observed, consul_status(&config).await, admission);
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
        if let Some(c) = &r.consul {
            match &c.error {
                Some(e) => println!("consul       {e}"),
                None => println!(
                    "consul       this node {}, leader {}, {} server(s), {} member(s) alive",
                    c.node_status.as_deref().unwrap_or("not a member"),
                    c.leader.as_deref().unwrap_or("none"),
                    c.servers.len(),
                    c.members_alive
                ),
            }
            if let Some(p) = &c.problem {
                println!("problem      {p}");
            }
        }
        if let Some(a) = &r.admission {
            for t in &a.turned_away {
                println!("turned away  hello from {}: {}", t.from, t.reason);
            }
            for c in &a.refused_claims {
                println!(
                    "not believed node {} claims {}: {}",
                    c.node, c.claims, c.reason
                );
            }
        }
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
