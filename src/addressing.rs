//! The addressing plan (the seed design of the first arpanet): a host's arpanet
//! address `a.b` fixes every address it uses, so no IPAM state is ever shared.
//!
//! | plane            | address / network      |
//! |------------------|------------------------|
//! | containers       | 10.a.b.0/24 (a <= 240) |
//! | plugins          | 10.241.0.0 - 10.252.255.255 (reserved) |
//! | Consul           | 10.253.a.b             |
//! | Docker API       | 10.254.a.b             |
//! | overlay (VTEP)   | 10.255.a.b             |

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Highest first octet a node may use: above it, `10.a.b.0/24` would run into the
/// plugin range and the cluster planes.
pub const MAX_FIRST_PART: u8 = 240;
pub const CONSUL_PLANE: u8 = 253;
pub const DOCKER_API_PLANE: u8 = 254;
pub const OVERLAY_PLANE: u8 = 255;
/// Every plane is a /16 on the overlay device: one host route per node would not scale.
pub const PLANE_PREFIX: u8 = 16;

/// A node's arpanet address `a.b`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeAddress {
    a: u8,
    b: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error(
        "`{0}` is not an arpanet address: expected `a.b` with a and b from 0 to 255, e.g. `0.1`"
    )]
    Syntax(String),
    #[error("`{0}` is out of range: each part of `a.b` is a number from 0 to 255")]
    OutOfRange(String),
    #[error(
        "`{0}` cannot be used: the first part must be at most 240, because 10.241-10.252 are reserved for plugins and 10.253-10.255 are the cluster planes"
    )]
    ReservedFirstPart(String),
    #[error("`0.0` cannot be used: it is the network address of every plane")]
    Zero,
}

impl NodeAddress {
    pub fn new(a: u8, b: u8) -> Result<Self, AddressError> {
        if a > MAX_FIRST_PART {
            return Err(AddressError::ReservedFirstPart(format!("{a}.{b}")));
        }
        if a == 0 && b == 0 {
            return Err(AddressError::Zero);
        }
        Ok(Self { a, b })
    }

    pub fn parts(self) -> (u8, u8) {
        (self.a, self.b)
    }

    fn on_plane(self, plane: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, plane, self.a, self.b)
    }

    /// The VXLAN endpoint address other hosts route container subnets through.
    pub fn overlay_ip(self) -> Ipv4Addr {
        self.on_plane(OVERLAY_PLANE)
    }

    /// Where this host's Docker API listens (overlay only, never the underlay).
    pub fn docker_api_ip(self) -> Ipv4Addr {
        self.on_plane(DOCKER_API_PLANE)
    }

    pub fn consul_ip(self) -> Ipv4Addr {
        self.on_plane(CONSUL_PLANE)
    }

    pub fn container_subnet(self) -> Ipv4Network {
        Ipv4Network::new(Ipv4Addr::new(10, self.a, self.b, 0), 24)
            .expect("a /24 prefix is always valid")
    }

    /// Docker's bridge (`bip`): the first host of the container subnet.
    pub fn bridge_ip(self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.a, self.b, 1)
    }
}

impl FromStr for NodeAddress {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || AddressError::Syntax(s.to_string());
        let (a, b) = s.split_once('.').ok_or_else(syntax)?;
        let part = |p: &str| -> Result<u8, AddressError> {
            // u8::from_str accepts "+1"; an address never has a sign.
            if p.is_empty() || p.len() > 3 || !p.bytes().all(|c| c.is_ascii_digit()) {
                return Err(syntax());
            }
            let n: u16 = p.parse().map_err(|_| syntax())?;
            u8::try_from(n).map_err(|_| AddressError::OutOfRange(s.to_string()))
        };
        Self::new(part(a)?, part(b)?)
    }
}

impl fmt::Display for NodeAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.a, self.b)
    }
}

impl Serialize for NodeAddress {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for NodeAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn seed_plan_for_0_1() {
        let n: NodeAddress = "0.1".parse().unwrap();
        assert_eq!(n.overlay_ip(), Ipv4Addr::new(10, 255, 0, 1));
        assert_eq!(n.docker_api_ip(), Ipv4Addr::new(10, 254, 0, 1));
        assert_eq!(n.consul_ip(), Ipv4Addr::new(10, 253, 0, 1));
        assert_eq!(n.container_subnet().to_string(), "10.0.1.0/24");
        assert_eq!(n.bridge_ip(), Ipv4Addr::new(10, 0, 1, 1));
    }

    #[test]
    fn rejects_malformed_and_out_of_range() {
        for bad in [
            "", "1", "1.", ".1", "1.2.3", "a.b", "+1.2", "1.-2", " 1.2", "0001.2",
        ] {
            assert!(
                matches!(bad.parse::<NodeAddress>(), Err(AddressError::Syntax(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            "0.300".parse::<NodeAddress>(),
            Err(AddressError::OutOfRange("0.300".into()))
        );
        assert_eq!(
            "241.0".parse::<NodeAddress>(),
            Err(AddressError::ReservedFirstPart("241.0".into()))
        );
        assert_eq!("0.0".parse::<NodeAddress>(), Err(AddressError::Zero));
        assert!("240.255".parse::<NodeAddress>().is_ok());
    }

    fn any_node() -> impl Strategy<Value = NodeAddress> {
        (0..=MAX_FIRST_PART, any::<u8>())
            .prop_filter("0.0 is reserved", |(a, b)| (*a, *b) != (0, 0))
            .prop_map(|(a, b)| NodeAddress::new(a, b).unwrap())
    }

    fn all_addresses(n: NodeAddress) -> Vec<Ipv4Addr> {
        let mut v = vec![n.overlay_ip(), n.docker_api_ip(), n.consul_ip()];
        v.extend(n.container_subnet().iter());
        v
    }

    proptest! {
        #[test]
        fn parse_format_round_trip(n in any_node()) {
            prop_assert_eq!(n.to_string().parse::<NodeAddress>(), Ok(n));
        }

        #[test]
        fn any_valid_text_round_trips(a in 0u8..=MAX_FIRST_PART, b in any::<u8>()) {
            let text = format!("{a}.{b}");
            if let Ok(n) = text.parse::<NodeAddress>() {
                prop_assert_eq!(n.to_string(), text);
            }
        }

        #[test]
        fn distinct_nodes_never_overlap_on_any_plane(x in any_node(), y in any_node()) {
            prop_assume!(x != y);
            let ys = all_addresses(y);
            for addr in all_addresses(x) {
                prop_assert!(!ys.contains(&addr), "{} and {} share {}", x, y, addr);
            }
        }

        #[test]
        fn planes_never_meet_containers_or_plugins(n in any_node()) {
            let subnet = n.container_subnet();
            prop_assert!(subnet.ip().octets()[1] <= MAX_FIRST_PART);
            for ip in [n.overlay_ip(), n.docker_api_ip(), n.consul_ip()] {
                prop_assert!(!subnet.contains(ip));
                prop_assert!(ip.octets()[1] > 252);
            }
        }
    }
}
