//! The cluster API (DockerMod's idea, without a master): JSON over HTTP, served by every
//! arpanetd on its overlay address and on a root-only unix socket. Any node answers any
//! request: listings fan out to every healthy node, container operations go to the
//! node that owns the container, and services are desired state in Consul KV that
//! every node places the same way.

pub mod client;
pub mod server;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::containers::ContainerSpec;
use crate::placement::Constraints;

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
    pub constraints: Constraints,
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

/// `POST /v1/services`. Exactly one of `image`, `template` and `spec` says what runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateService {
    pub name: String,
    pub image: Option<String>,
    pub template: Option<String>,
    pub spec: Option<ContainerSpec>,
    /// With `image`: the command to run.
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Signed so that a negative count gets its own clear error.
    pub replicas: i64,
    #[serde(default)]
    pub constraints: Constraints,
}

/// `PUT /v1/services/NAME/replicas`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scale {
    pub replicas: i64,
}

/// What a container operation did, and where.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Done {
    pub node: String,
    pub id: String,
    pub action: String,
}
