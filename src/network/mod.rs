//! The VXLAN overlay: desired state from config and peers, compared with what the
//! kernel has, turned into an ordered list of changes (the only part that needs a
//! kernel is in [`netlink`]).
//!
//! Like flannel's vxlan backend, every admitted peer's entries are programmed. Each
//! node's VTEP MAC is derived from its arpanet address, so an address and an underlay
//! IP are enough to reach a peer.
//!
//! Nothing is learned on the wire: the device runs with MAC learning off, and a node
//! gets entries only once it is admitted ([`admission`]): by a signed hello that proves
//! it holds the cluster secret, or by Consul's catalog (whose members passed Consul's
//! gossip encryption, keyed from the same secret). Before, any machine that could send
//! UDP to a node taught it a "newcomer" and reached every plane.

pub mod admission;
pub mod firewall;
pub mod health;
pub mod netlink;
pub mod peers;
pub mod reconcile;

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use crate::addressing::{NodeAddress, PLANE_PREFIX};
use crate::config::Config;

/// Marks the routes arpanet owns, so it never touches anyone else's.
pub const ROUTE_PROTOCOL: u8 = 97;

/// A MAC address, printed the usual way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl From<Mac> for String {
    fn from(m: Mac) -> String {
        m.to_string()
    }
}

impl TryFrom<String> for Mac {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let parts: Vec<u8> = s
            .split(':')
            .map(|p| u8::from_str_radix(p, 16))
            .collect::<Result<_, _>>()
            .map_err(|_| format!("`{s}` is not a MAC address"))?;
        <[u8; 6]>::try_from(parts)
            .map(Mac)
            .map_err(|_| format!("`{s}` is not a MAC address"))
    }
}

impl TryFrom<&[u8]> for Mac {
    type Error = ();
    fn try_from(b: &[u8]) -> Result<Self, ()> {
        <[u8; 6]>::try_from(b).map(Mac).map_err(|_| ())
    }
}

/// The VTEP MAC of node `a.b`: locally administered (0x02), fixed by the address.
pub fn vtep_mac(address: NodeAddress) -> Mac {
    let (a, b) = address.parts();
    Mac([0x02, 0x61, 0x72, 0x70, a, b])
}

/// Another node of the cluster, as the overlay needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Peer {
    pub address: NodeAddress,
    pub underlay_ip: Ipv4Addr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct FdbEntry {
    pub mac: Mac,
    pub dst: Ipv4Addr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct NeighbourEntry {
    pub ip: Ipv4Addr,
    pub mac: Mac,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct RouteEntry {
    pub subnet: Ipv4Network,
    pub via: Ipv4Addr,
}

/// The underlay as found on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnderlayLink {
    pub index: u32,
    pub name: String,
    pub ip: Ipv4Addr,
    pub mtu: u32,
}

/// The VXLAN device as it should be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceSpec {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub local: Ipv4Addr,
    pub underlay_index: u32,
    pub mtu: u32,
    pub mac: Mac,
}

/// The VXLAN device as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceState {
    pub index: u32,
    pub is_vxlan: bool,
    pub vni: Option<u32>,
    pub port: Option<u16>,
    pub local: Option<Ipv4Addr>,
    pub underlay_index: Option<u32>,
    pub learning: bool,
    pub ageing: Option<u32>,
    pub mtu: u32,
    pub mac: Option<Mac>,
    pub up: bool,
}

/// Everything arpanet owns on one host's overlay, desired or observed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Entries {
    pub addresses: BTreeSet<Ipv4Network>,
    pub fdb: BTreeSet<FdbEntry>,
    pub neighbours: BTreeSet<NeighbourEntry>,
    pub routes: BTreeSet<RouteEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredState {
    pub device: DeviceSpec,
    pub entries: Entries,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ObservedState {
    pub device: Option<DeviceState>,
    pub entries: Entries,
}

/// The node a VTEP MAC belongs to, if it is an arpanet one.
pub fn node_of_mac(mac: Mac) -> Option<NodeAddress> {
    let m = mac.0;
    let node = NodeAddress::new(m[4], m[5]).ok()?;
    (vtep_mac(node) == mac).then_some(node)
}

impl DesiredState {
    /// `peers` are the admitted ones; they may include this node itself (catalogs do),
    /// which is skipped.
    pub fn new(config: &Config, underlay: &UnderlayLink, peers: &[Peer]) -> Self {
        let me = config.node.address;
        let mtu = config.overlay.effective_mtu(underlay.mtu);
        let device = DeviceSpec {
            name: config.overlay.device.as_str().to_string(),
            vni: config.overlay.vni.0,
            port: config.overlay.port,
            local: underlay.ip,
            underlay_index: underlay.index,
            mtu,
            mac: vtep_mac(me),
        };
        let plane = |ip| Ipv4Network::new(ip, PLANE_PREFIX).expect("valid prefix");
        let mut entries = Entries {
            addresses: [
                plane(me.overlay_ip()),
                plane(me.docker_api_ip()),
                plane(me.consul_ip()),
            ]
            .into(),
            ..Entries::default()
        };
        for peer in peers.iter().filter(|p| p.address != me) {
            let mac = vtep_mac(peer.address);
            let a = peer.address;
            entries.fdb.insert(FdbEntry {
                mac,
                dst: peer.underlay_ip,
            });
            for ip in [a.overlay_ip(), a.docker_api_ip(), a.consul_ip()] {
                entries.neighbours.insert(NeighbourEntry { ip, mac });
            }
            entries.routes.insert(RouteEntry {
                subnet: a.container_subnet(),
                via: a.overlay_ip(),
            });
        }
        Self { device, entries }
    }
}

/// One step towards the desired state. The order of a plan is the order to apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    CreateDevice,
    /// Settings that cannot change in place (VNI, port, underlay) differ.
    RecreateDevice {
        reason: String,
    },
    SetMtu {
        mtu: u32,
    },
    SetMac {
        mac: Mac,
    },
    SetUp,
    DelRoute(RouteEntry),
    DelNeighbour(NeighbourEntry),
    DelFdb(FdbEntry),
    DelAddress {
        address: Ipv4Network,
    },
    AddAddress {
        address: Ipv4Network,
    },
    AddFdb(FdbEntry),
    AddNeighbour(NeighbourEntry),
    AddRoute(RouteEntry),
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::CreateDevice => write!(f, "create device"),
            Change::RecreateDevice { reason } => write!(f, "recreate device ({reason})"),
            Change::SetMtu { mtu } => write!(f, "set mtu {mtu}"),
            Change::SetMac { mac } => write!(f, "set mac {mac}"),
            Change::SetUp => write!(f, "set up"),
            Change::DelRoute(r) => write!(f, "del route {} via {}", r.subnet, r.via),
            Change::DelNeighbour(n) => write!(f, "del neighbour {} lladdr {}", n.ip, n.mac),
            Change::DelFdb(e) => write!(f, "del fdb {} dst {}", e.mac, e.dst),
            Change::DelAddress { address } => write!(f, "del address {address}"),
            Change::AddAddress { address } => write!(f, "add address {address}"),
            Change::AddFdb(e) => write!(f, "add fdb {} dst {}", e.mac, e.dst),
            Change::AddNeighbour(n) => write!(f, "add neighbour {} lladdr {}", n.ip, n.mac),
            Change::AddRoute(r) => write!(f, "add route {} via {} onlink", r.subnet, r.via),
        }
    }
}

/// Why an existing device cannot be kept, if it cannot.
fn incompatibility(want: &DeviceSpec, have: &DeviceState) -> Option<String> {
    if !have.is_vxlan {
        return Some("it is not a VXLAN device".into());
    }
    if have.vni != Some(want.vni) {
        return Some(format!("VNI {:?} instead of {}", have.vni, want.vni));
    }
    if have.port != Some(want.port) {
        return Some(format!("UDP port {:?} instead of {}", have.port, want.port));
    }
    if have.local != Some(want.local) {
        return Some(format!(
            "local address {:?} instead of {}",
            have.local, want.local
        ));
    }
    if have.underlay_index != Some(want.underlay_index) {
        return Some("bound to another underlay interface".into());
    }
    if have.learning {
        return Some("MAC learning is on (any sender could teach it peers)".into());
    }
    None
}

/// The changes that turn `observed` into `desired`, in a safe order: removals from
/// the top down (route, neighbour, FDB), additions from the bottom up (FDB,
/// neighbour, route), so no route ever points at a peer that cannot be reached.
pub fn plan(desired: &DesiredState, observed: &ObservedState) -> Vec<Change> {
    let mut changes = Vec::new();
    let empty = Entries::default();
    let have = match &observed.device {
        None => {
            changes.push(Change::CreateDevice);
            &empty
        }
        Some(dev) => match incompatibility(&desired.device, dev) {
            Some(reason) => {
                changes.push(Change::RecreateDevice { reason });
                &empty
            }
            None => {
                if dev.mtu != desired.device.mtu {
                    changes.push(Change::SetMtu {
                        mtu: desired.device.mtu,
                    });
                }
                if dev.mac != Some(desired.device.mac) {
                    changes.push(Change::SetMac {
                        mac: desired.device.mac,
                    });
                }
                if !dev.up {
                    changes.push(Change::SetUp);
                }
                &observed.entries
            }
        },
    };
    let want = &desired.entries;
    changes.extend(
        have.routes
            .difference(&want.routes)
            .copied()
            .map(Change::DelRoute),
    );
    changes.extend(
        have.neighbours
            .difference(&want.neighbours)
            .copied()
            .map(Change::DelNeighbour),
    );
    changes.extend(have.fdb.difference(&want.fdb).copied().map(Change::DelFdb));
    changes.extend(
        have.addresses
            .difference(&want.addresses)
            .map(|a| Change::DelAddress { address: *a }),
    );
    changes.extend(
        want.addresses
            .difference(&have.addresses)
            .map(|a| Change::AddAddress { address: *a }),
    );
    changes.extend(want.fdb.difference(&have.fdb).copied().map(Change::AddFdb));
    changes.extend(
        want.neighbours
            .difference(&have.neighbours)
            .copied()
            .map(Change::AddNeighbour),
    );
    changes.extend(
        want.routes
            .difference(&have.routes)
            .copied()
            .map(Change::AddRoute),
    );
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config() -> Config {
        Config::parse(
            Path::new("t.toml"),
            "[node]\naddress = \"0.1\"\nrole = \"boot\"\nunderlay_interface = \"eth1\"\n",
        )
        .unwrap()
    }

    fn underlay() -> UnderlayLink {
        UnderlayLink {
            index: 2,
            name: "eth1".into(),
            ip: Ipv4Addr::new(192, 168, 8, 120),
            mtu: 1500,
        }
    }

    fn peer(a: &str, ip: [u8; 4]) -> Peer {
        Peer {
            address: a.parse().unwrap(),
            underlay_ip: ip.into(),
        }
    }

    /// What the kernel would report after `desired` was applied.
    fn applied(desired: &DesiredState) -> ObservedState {
        let d = &desired.device;
        ObservedState {
            device: Some(DeviceState {
                index: 7,
                is_vxlan: true,
                vni: Some(d.vni),
                port: Some(d.port),
                local: Some(d.local),
                underlay_index: Some(d.underlay_index),
                learning: false,
                ageing: None,
                mtu: d.mtu,
                mac: Some(d.mac),
                up: true,
            }),
            entries: desired.entries.clone(),
        }
    }

    #[test]
    fn a_device_that_learns_is_recreated_and_node_macs_are_recognised() {
        let d = DesiredState::new(&config(), &underlay(), &[]);
        let mut observed = applied(&d);
        observed.device.as_mut().unwrap().learning = true;
        assert!(matches!(
            &plan(&d, &observed)[0],
            Change::RecreateDevice { reason } if reason.contains("learning")
        ));
        assert_eq!(
            node_of_mac(vtep_mac("0.5".parse().unwrap())),
            Some("0.5".parse().unwrap())
        );
        assert_eq!(node_of_mac(Mac([0x02, 0, 0, 0, 0, 5])), None);
    }

    #[test]
    fn vtep_mac_is_unicast_local_and_unique() {
        let m = vtep_mac("3.4".parse().unwrap());
        assert_eq!(m.to_string(), "02:61:72:70:03:04");
        assert_eq!(m.0[0] & 0x01, 0, "unicast");
        assert_eq!(m.0[0] & 0x02, 0x02, "locally administered");
        assert_eq!(Mac::try_from(m.to_string()), Ok(m));
    }

    #[test]
    fn desired_state_has_planes_and_per_peer_entries() {
        let d = DesiredState::new(
            &config(),
            &underlay(),
            &[peer("0.1", [1, 1, 1, 1]), peer("0.2", [192, 168, 8, 121])],
        );
        assert_eq!(d.device.mtu, 1450);
        assert_eq!(d.device.mac.to_string(), "02:61:72:70:00:01");
        let addrs: Vec<String> = d.entries.addresses.iter().map(|a| a.to_string()).collect();
        assert_eq!(addrs, ["10.253.0.1/16", "10.254.0.1/16", "10.255.0.1/16"]);
        // Ourselves (0.1) is skipped; 0.2 gets one FDB, three neighbours, one route.
        assert_eq!(d.entries.fdb.len(), 1);
        assert_eq!(d.entries.neighbours.len(), 3);
        let route = d.entries.routes.iter().next().unwrap();
        assert_eq!(
            (route.subnet.to_string(), route.via.to_string()),
            ("10.0.2.0/24".into(), "10.255.0.2".into())
        );
    }

    #[test]
    fn fresh_host_gets_device_then_entries_bottom_up() {
        let d = DesiredState::new(&config(), &underlay(), &[peer("0.2", [192, 168, 8, 121])]);
        let changes = plan(&d, &ObservedState::default());
        assert_eq!(changes[0], Change::CreateDevice);
        let kinds: Vec<&str> = changes
            .iter()
            .map(|c| match c {
                Change::AddAddress { .. } => "addr",
                Change::AddFdb(_) => "fdb",
                Change::AddNeighbour(_) => "neigh",
                Change::AddRoute(_) => "route",
                _ => "device",
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "device", "addr", "addr", "addr", "fdb", "neigh", "neigh", "neigh", "route"
            ]
        );
    }

    #[test]
    fn applied_state_needs_no_change() {
        let d = DesiredState::new(
            &config(),
            &underlay(),
            &[
                peer("0.2", [192, 168, 8, 121]),
                peer("0.3", [192, 168, 8, 122]),
            ],
        );
        assert_eq!(plan(&d, &applied(&d)), []);
    }

    #[test]
    fn removed_peer_is_removed_top_down() {
        let both = DesiredState::new(
            &config(),
            &underlay(),
            &[peer("0.2", [10, 0, 0, 2]), peer("0.3", [10, 0, 0, 3])],
        );
        let one = DesiredState::new(&config(), &underlay(), &[peer("0.2", [10, 0, 0, 2])]);
        let changes = plan(&one, &applied(&both));
        assert_eq!(changes.len(), 5, "{changes:?}");
        assert!(matches!(changes[0], Change::DelRoute(r) if r.via == Ipv4Addr::new(10, 255, 0, 3)));
        assert!(matches!(changes[4], Change::DelFdb(e) if e.dst == Ipv4Addr::new(10, 0, 0, 3)));
    }

    #[test]
    fn hand_deleted_entry_comes_back() {
        let d = DesiredState::new(&config(), &underlay(), &[peer("0.2", [10, 0, 0, 2])]);
        let mut observed = applied(&d);
        let route = *observed.entries.routes.iter().next().unwrap();
        observed.entries.routes.clear();
        assert_eq!(plan(&d, &observed), [Change::AddRoute(route)]);
    }

    #[test]
    fn incompatible_device_is_recreated_and_refilled() {
        let d = DesiredState::new(&config(), &underlay(), &[peer("0.2", [10, 0, 0, 2])]);
        let mut observed = applied(&d);
        observed.device.as_mut().unwrap().vni = Some(99);
        let changes = plan(&d, &observed);
        assert!(matches!(&changes[0], Change::RecreateDevice { reason } if reason.contains("VNI")));
        assert!(changes.contains(&Change::AddRoute(*d.entries.routes.iter().next().unwrap())));
    }

    #[test]
    fn mtu_mac_and_state_are_fixed_in_place() {
        let d = DesiredState::new(&config(), &underlay(), &[]);
        let mut observed = applied(&d);
        let dev = observed.device.as_mut().unwrap();
        dev.mtu = 1400;
        dev.up = false;
        dev.mac = Some(Mac([2, 0, 0, 0, 0, 9]));
        assert_eq!(
            plan(&d, &observed),
            [
                Change::SetMtu { mtu: 1450 },
                Change::SetMac { mac: d.device.mac },
                Change::SetUp
            ]
        );
    }
}
