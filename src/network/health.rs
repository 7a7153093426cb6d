//! How each peer stands on this node's overlay: what `arpanet status` shows per peer
//! and arpanetd counts in `arpanet_peers`. Pure: the kernel's entries are read by
//! [`super::netlink`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use super::admission::Status;
use super::{ObservedState, node_of_mac, vtep_mac};
use crate::addressing::NodeAddress;

/// A peer's entries on the overlay device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerHealth {
    pub address: NodeAddress,
    /// Where its forwarding entry sends it, when it has one.
    pub underlay_ip: Option<Ipv4Addr>,
    pub fdb: bool,
    pub neighbours: usize,
    pub route: bool,
    /// How it was admitted (`catalog`, `cache`, `hello`), when it was.
    pub admitted_by: Option<String>,
    pub state: PeerState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerState {
    /// Every entry is in place.
    Ok,
    /// A join peer that has not proved the secret: nothing is programmed for it.
    NotAdmitted,
    /// Admitted (or partly programmed), but these entries are not there.
    Missing(Vec<&'static str>),
}

impl PeerState {
    /// Every state's metric label, in [`PeerState::label`]'s words.
    pub const LABELS: [&'static str; 3] = ["ok", "not_admitted", "missing"];

    pub fn label(&self) -> &'static str {
        match self {
            PeerState::Ok => "ok",
            PeerState::NotAdmitted => "not_admitted",
            PeerState::Missing(_) => "missing",
        }
    }
}

impl fmt::Display for PeerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerState::Ok => f.write_str("ok"),
            PeerState::NotAdmitted => f.write_str("not admitted (no valid hello from it yet)"),
            PeerState::Missing(what) => write!(f, "missing {}", what.join(", ")),
        }
    }
}

/// Every peer this node knows of: its join peers and the nodes its device forwards
/// to, each with its entries in `observed` and how `admission` admitted it.
pub fn peers(
    join: &[NodeAddress],
    observed: &ObservedState,
    admission: Option<&Status>,
) -> Vec<PeerHealth> {
    let mut peers: BTreeMap<NodeAddress, Option<Ipv4Addr>> =
        join.iter().map(|a| (*a, None)).collect();
    let e = &observed.entries;
    for f in &e.fdb {
        if let Some(node) = node_of_mac(f.mac) {
            peers.insert(node, Some(f.dst));
        }
    }
    peers
        .into_iter()
        .map(|(address, underlay_ip)| {
            let mac = vtep_mac(address);
            let fdb = underlay_ip.is_some();
            let neighbours = e.neighbours.iter().filter(|n| n.mac == mac).count();
            let route = e.routes.iter().any(|r| r.via == address.overlay_ip());
            let admitted_by = admission.and_then(|s| {
                s.admitted
                    .iter()
                    .find(|p| p.address == address)
                    .map(|p| p.by.clone())
            });
            let mut missing = Vec::new();
            if !fdb {
                missing.push("fdb");
            }
            // One per plane: overlay, Docker API, Consul.
            if neighbours < 3 {
                missing.push("neighbours");
            }
            if !route {
                missing.push("route");
            }
            let state = if missing.is_empty() {
                PeerState::Ok
            } else if !fdb && admitted_by.is_none() {
                PeerState::NotAdmitted
            } else {
                PeerState::Missing(missing)
            };
            PeerHealth {
                address,
                underlay_ip,
                fdb,
                neighbours,
                route,
                admitted_by,
                state,
            }
        })
        .collect()
}

/// How many peers are in each state; every state is there, 0 when none is in it.
pub fn count_by_state(peers: &[PeerHealth]) -> BTreeMap<&'static str, usize> {
    let mut counts: BTreeMap<&'static str, usize> =
        PeerState::LABELS.iter().map(|s| (*s, 0)).collect();
    for p in peers {
        *counts.entry(p.state.label()).or_default() += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::admission::AdmittedPeer;
    use crate::network::{FdbEntry, NeighbourEntry, RouteEntry};

    fn addr(a: &str) -> NodeAddress {
        a.parse().unwrap()
    }

    /// Every entry the overlay programs for `a`.
    fn program(observed: &mut ObservedState, a: NodeAddress, underlay: Ipv4Addr) {
        let mac = vtep_mac(a);
        let e = &mut observed.entries;
        e.fdb.insert(FdbEntry { mac, dst: underlay });
        for ip in [a.overlay_ip(), a.docker_api_ip(), a.consul_ip()] {
            e.neighbours.insert(NeighbourEntry { ip, mac });
        }
        e.routes.insert(RouteEntry {
            subnet: a.container_subnet(),
            via: a.overlay_ip(),
        });
    }

    #[test]
    fn peers_are_ok_missing_entries_or_not_admitted() {
        let mut observed = ObservedState::default();
        let ip = Ipv4Addr::new(192, 168, 1, 2);
        program(&mut observed, addr("0.2"), ip);
        program(&mut observed, addr("0.3"), ip);
        observed
            .entries
            .routes
            .retain(|r| r.via != addr("0.3").overlay_ip());
        let admission = Status {
            admitted: vec![AdmittedPeer {
                address: addr("0.4"),
                underlay_ip: ip,
                by: "hello".into(),
            }],
            ..Status::default()
        };
        // 0.5 is a join peer with no hello yet; 0.4 was admitted, nothing programmed.
        let join = [addr("0.2"), addr("0.4"), addr("0.5")];
        let peers = peers(&join, &observed, Some(&admission));
        let states: Vec<(String, String)> = peers
            .iter()
            .map(|p| (p.address.to_string(), p.state.to_string()))
            .collect();
        assert_eq!(
            states,
            [
                ("0.2", "ok"),
                ("0.3", "missing route"),
                ("0.4", "missing fdb, neighbours, route"),
                ("0.5", "not admitted (no valid hello from it yet)"),
            ]
            .map(|(a, s)| (a.to_string(), s.to_string()))
        );
        assert_eq!(peers[0].underlay_ip, Some(ip));
        assert_eq!(peers[2].admitted_by.as_deref(), Some("hello"));
        let counts = count_by_state(&peers);
        assert_eq!(
            counts.into_iter().collect::<Vec<_>>(),
            [("missing", 2), ("not_admitted", 1), ("ok", 1)]
        );
        assert_eq!(
            count_by_state(&[]).into_values().collect::<Vec<_>>(),
            [0, 0, 0]
        );
    }
}
