//! Joining a cluster with a token: the join service every server runs on its underlay
//! address (TCP `cluster.join_port`), and the joiner's side of it.
//!
//! A joiner makes its key, pins the CA by the digest in its token, and sends the token,
//! the address and role it wants, and a CSR. The server checks the token against the
//! cluster's current secrets (Consul KV, management token only), issues a certificate
//! for that address and role, makes the node's Consul token, and answers with what a
//! node of that role needs: the CA certificate, its certificate, the cluster secret
//! (gossip and hello keys), its Consul token, and for servers the CA key and the
//! management token. Nothing is written on the joiner before the answer is complete.

pub mod client;
pub mod pending;
pub mod renew;
pub mod revocations;
pub mod server;

use serde::{Deserialize, Serialize};

/// Where the cluster's join secrets live: outside `arpanet/`, which node tokens may
/// read, so that only the management token reads or rotates them.
pub const SECRETS_KEY: &str = "arpanet-secret/join-tokens";
/// Per node address: the certificate last issued to it (for `node rm`).
pub const ISSUED_PREFIX: &str = "arpanet/identity/nodes/";
/// Per revoked serial: who it was, and when.
pub const REVOKED_PREFIX: &str = "arpanet/identity/revoked/";

/// `POST /v1/join`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequestV1 {
    pub token: String,
    pub address: String,
    pub role: String,
    /// The node's name in Consul.
    pub name: String,
    pub csr: String,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinResponseV1 {
    pub ca: String,
    pub cert: String,
    pub cluster_secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consul_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerSecretsV1>,
}

impl std::fmt::Debug for JoinResponseV1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinResponseV1")
            .field("server", &self.server.is_some())
            .finish_non_exhaustive()
    }
}

/// What only servers get.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSecretsV1 {
    pub ca_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consul_management_token: Option<String>,
}

/// The record of a certificate issued to a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedV1 {
    pub serial: String,
    pub name: String,
    pub role: String,
    /// Unix seconds.
    pub not_after: u64,
    /// Serials issued to the node before this one (renewals), which may not have
    /// expired yet: `node rm` revokes them too. The last few are kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier: Vec<String>,
}

/// How many earlier serials a record keeps: renewals come at most every 60 days and a
/// certificate lives 90, so two are ever valid; the rest is slack.
pub const EARLIER_KEPT: usize = 4;

/// A revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedV1 {
    pub address: String,
    pub name: String,
    /// Unix seconds.
    pub at: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("{0}")]
    Refused(String),
    /// The server cannot answer yet (its Consul has no leader, its tokens are not
    /// published): worth asking again.
    #[error("{0}")]
    NotReady(String),
    #[error("cannot reach the join service at {at}: {why}")]
    Unreachable { at: String, why: String },
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
}
