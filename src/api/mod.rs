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
