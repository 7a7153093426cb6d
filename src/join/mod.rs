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

/// `POST /v1/join/peers`: a current join token buys the list of the cluster's nodes,
/// so a node that just joined reaches every peer from its first pass (and greets them,
/// so they admit it) instead of only its join peers until its Consul agent answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeersRequestV1 {
    pub token: String,
}

/// Unknown fields are ignored: a later release may say more of each node.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PeersV1 {
    pub peers: Vec<PeerV1>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerV1 {
    pub address: String,
    pub underlay_ip: String,
}

impl PeersV1 {
    /// The entries that can be a peer, and one line per entry that cannot (naming it):
    /// an address that does not parse or is listed twice, an underlay IP that is not
    /// one host's unicast address.
    pub fn validated(&self) -> (Vec<crate::network::Peer>, Vec<String>) {
        let mut ok: Vec<crate::network::Peer> = Vec::new();
        let mut bad = Vec::new();
        for (i, p) in self.peers.iter().enumerate() {
            let ip: Result<std::net::Ipv4Addr, String> =
                p.underlay_ip.parse().map_err(|e| format!("{e}")).and_then(
                    |ip: std::net::Ipv4Addr| {
                        if ip.is_unspecified()
                            || ip.is_loopback()
                            || ip.is_multicast()
                            || ip.is_broadcast()
                        {
                            Err(format!("{ip} is not a host's unicast address"))
                        } else {
                            Ok(ip)
                        }
                    },
                );
            match (p.address.parse::<crate::addressing::NodeAddress>(), ip) {
                (Ok(address), _) if ok.iter().any(|o| o.address == address) => {
                    bad.push(format!("peers[{i}].address: {address} is listed twice"))
                }
                (Ok(address), Ok(underlay_ip)) => ok.push(crate::network::Peer {
                    address,
                    underlay_ip,
                }),
                (Err(e), _) => bad.push(format!("peers[{i}].address: {e}")),
                (_, Err(e)) => bad.push(format!("peers[{i}].underlay_ip: {e}")),
            }
        }
        (ok, bad)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_list_keeps_what_parses_and_names_what_does_not() {
        let list: PeersV1 = serde_json::from_str(
            r#"{"peers":[{"address":"0.2","underlay_ip":"192.168.8.2","later":1},{"address":"../x","underlay_ip":"192.168.8.3"},{"address":"0.4","underlay_ip":"host"},{"address":"0.5","underlay_ip":"127.0.0.1"},{"address":"0.2","underlay_ip":"192.168.8.9"}]}"#,
        )
        .unwrap();
        let (ok, bad) = list.validated();
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].address.to_string(), "0.2");
        assert_eq!(ok[0].underlay_ip.to_string(), "192.168.8.2");
        assert_eq!(bad.len(), 4);
        assert!(bad[0].starts_with("peers[1].address: "), "{bad:?}");
        assert!(bad[1].starts_with("peers[2].underlay_ip: "), "{bad:?}");
        assert_eq!(
            bad[2],
            "peers[3].underlay_ip: 127.0.0.1 is not a host's unicast address"
        );
        assert_eq!(bad[3], "peers[4].address: 0.2 is listed twice");
    }
}
