//! The cluster API (DockerMod's idea, without a master): JSON over HTTP, served by every
//! arpanetd on its overlay address and on a root-only unix socket. Any node answers any
//! request: listings fan out to every healthy node, container operations go to the
//! node that owns the container, and services are desired state in Consul KV that
//! every node places the same way.
//!
//! The bodies that carry a service or a container spec are the versioned types of
//! `placement::wire`; the rows here are listings only the CLI reads.

pub mod client;
pub mod server;
pub mod tls;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::placement::wire::ConstraintsV1;

/// A container as `arpanet ps` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRow {
    /// The arpanet address of the node that runs it.
    pub node: String,
    pub id: String,
    pub name: String,
    pub image: String,
    pub state: String,
    pub status: String,
    /// The cluster service it is an instance of.
    pub service: Option<String>,
    /// The service version it runs (instances only).
    #[serde(default)]
    pub version: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRow {
    pub node: String,
    pub id: String,
    pub tags: Vec<String>,
    pub size: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRow {
    pub name: String,
    pub image: String,
    pub replicas: u32,
    /// Instances running cluster-wide (on the nodes that answered).
    pub running: u32,
    pub constraints: ConstraintsV1,
    /// Instances that fit on no node, and why.
    #[serde(default)]
    pub unplaced: u32,
    #[serde(default)]
    pub why: Option<String>,
    #[serde(default)]
    pub version: u64,
    /// The last rollout's state (`updating`, `completed`, ...).
    #[serde(default)]
    pub rollout: Option<String>,
}

/// One instance of a service as `service ps` lists it: a desired one (placed or not)
/// or a container of the service that runs though no longer desired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRow {
    /// `web_0.2_1`; `-` for an instance that fits on no node.
    pub instance: String,
    pub node: String,
    /// The container's ID, when one exists.
    pub container: Option<String>,
    /// The version it runs, and the one it should run.
    pub version: Option<u64>,
    pub desired_version: u64,
    /// Docker's state (`running`, `exited`, ...), `missing` for a placed instance
    /// with no container yet, `unplaced`, or `leaving` for one no longer desired.
    pub state: String,
    /// Consul's view: `passing`, `warning`, `critical`, or empty when not registered.
    pub health: String,
    /// Docker's status with since when (`Up 3 minutes`).
    pub status: String,
    /// Why a desired instance runs nowhere.
    pub why: Option<String>,
}

/// `service ps`: the instances (in the `items` shape of every listing) and the last
/// rollout's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceListing {
    pub items: Vec<InstanceRow>,
    #[serde(default)]
    pub unreachable: Vec<Unreachable>,
    pub version: u64,
    pub rollout: Option<String>,
    /// Why the last rollout paused or rolled back.
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRow {
    pub address: String,
    pub role: String,
    pub drained: bool,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A fan-out's answer: what the nodes said, and which nodes did not answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Listing<T> {
    pub items: Vec<T>,
    #[serde(default)]
    pub unreachable: Vec<Unreachable>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Unreachable {
    pub node: String,
    pub error: String,
}

/// What a container operation did, and where.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Done {
    pub node: String,
    pub id: String,
    pub action: String,
}
