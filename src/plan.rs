//! What this node should look like, derived from its config alone: the first step of
//! config -> desired state -> reconcile. No daemon or network is needed to compute it.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::Serialize;

use crate::addressing::NodeAddress;
use crate::config::{Config, JoinPeer, Mtu, Role, Underlay};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodePlan {
    pub address: NodeAddress,
    pub role: Role,
    pub cluster: String,
    pub datacenter: String,
    pub overlay_ip: Ipv4Addr,
    pub docker_ip: Ipv4Addr,
    pub consul_ip: Ipv4Addr,
    pub container_subnet: Ipv4Network,
    /// Docker's bridge address; Consul answers containers' DNS here.
    pub bridge_ip: Ipv4Addr,
    pub docker_api: String,
    pub consul_dns: String,
    /// The node registry, for `docker push/run 127.0.0.1:PORT/NAME:TAG`.
    pub registry: String,
    pub overlay: OverlayPlan,
    pub underlay: Underlay,
    pub join: Vec<JoinPeer>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OverlayPlan {
    pub device: String,
    pub vni: u32,
    pub port: u16,
    pub mtu: Mtu,
}

impl NodePlan {
    pub fn from_config(config: &Config) -> Self {
        let a = config.node.address;
        Self {
            address: a,
            role: config.node.role,
            cluster: config.cluster.name.clone(),
            datacenter: config.datacenter(),
            overlay_ip: a.overlay_ip(),
            docker_ip: a.docker_api_ip(),
            consul_ip: a.consul_ip(),
            container_subnet: a.container_subnet(),
            bridge_ip: a.bridge_ip(),
            docker_api: docker_api(config),
            consul_dns: format!("{}:{}", a.bridge_ip(), config.consul.dns_port),
            registry: format!("127.0.0.1:{}", config.registry.port),
            overlay: OverlayPlan {
                device: config.overlay.device.as_str().to_string(),
                vni: config.overlay.vni.0,
                port: config.overlay.port,
                mtu: config.overlay.mtu,
            },
            underlay: config.node.underlay.clone(),
            join: config.node.join.clone(),
        }
    }
}

/// Where other nodes reach this node's Docker API (also published in its catalog entry).
pub fn docker_api(config: &Config) -> String {
    format!(
        "tcp://{}:{}",
        config.node.address.docker_api_ip(),
        config.docker.api_port
    )
}
