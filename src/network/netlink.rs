//! A thin typed layer over rtnetlink: read the overlay's state, apply one change.
//! It works in whatever network namespace the process is in.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnetwork::Ipv4Network;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol,
};
use rtnetlink::{Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder};

use super::{
    Change, DeviceSpec, DeviceState, Entries, FdbEntry, Mac, NeighbourEntry, ObservedState,
    ROUTE_PROTOCOL, RouteEntry, UnderlayLink,
};
use crate::config::Underlay;

const ENODEV: i32 = 19;

/// What the netlink layer fails with: the kernel refused a request, or something
/// the config names is not there.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("open a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("{what}: {source}")]
    Request {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error(transparent)]
    Kernel(#[from] rtnetlink::Error),
    /// A link, address or route the config or the plan relies on is not there.
    #[error("{0}")]
    Missing(String),
    #[error("this needs root (it changes network devices)")]
    NotRoot,
}

type Result<T> = std::result::Result<T, NetlinkError>;

/// Names a failed request.
fn req(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |source| NetlinkError::Request { what, source }
}

fn missing(what: impl Into<String>) -> NetlinkError {
    NetlinkError::Missing(what.into())
}

#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a netlink socket in the current network namespace (needs a tokio runtime).
    pub fn connect() -> Result<Self> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkMessage>> {
        match self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute()
            .try_next()
            .await
        {
            Ok(link) => Ok(link),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -ENODEV => Ok(None),
            Err(e) => Err(req(format!("look up link {name}"))(e)),
        }
    }

    async fn link_by_index(&self, index: u32) -> Result<LinkMessage> {
        self.handle
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_next()
            .await
            .map_err(req(format!("look up link {index}")))?
            .ok_or_else(|| missing(format!("no link with index {index}")))
    }

    async fn ipv4_addresses(&self, index: Option<u32>) -> Result<Vec<(u32, Ipv4Network)>> {
        let mut request = self.handle.address().get();
        if let Some(index) = index {
            request = request.set_link_index_filter(index);
        }
        let messages: Vec<AddressMessage> = request
            .execute()
            .try_collect()
            .await
            .map_err(req("list addresses"))?;
        Ok(messages
            .iter()
            .filter(|m| m.header.family == AddressFamily::Inet)
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(IpAddr::V4(ip)) => {
                        Ipv4Network::new(*ip, m.header.prefix_len)
                            .ok()
                            .map(|n| (m.header.index, n))
                    }
                    _ => None,
                })
            })
            .collect())
    }

    /// Whether any interface here carries `ip`.
    pub async fn has_address(&self, ip: Ipv4Addr) -> Result<bool> {
        Ok(self
            .ipv4_addresses(None)
            .await?
            .iter()
            .any(|(_, n)| n.ip() == ip))
    }

    /// Finds the underlay the way the config says: by name, by address, or by default route.
    pub async fn underlay(&self, underlay: &Underlay) -> Result<UnderlayLink> {
        let (index, ip) = match underlay {
            Underlay::Interface(name) => {
                let link = self.link_by_name(name).await?.ok_or_else(|| {
                    missing(format!(
                        "underlay interface `{name}` does not exist (node.underlay_interface)"
                    ))
                })?;
                let index = link.header.index;
                let ip = self.ipv4_addresses(Some(index)).await?.first().map(|(_, n)| n.ip()).ok_or_else(|| {
                    missing(format!("underlay interface `{name}` has no IPv4 address (node.underlay_interface)"))
                })?;
                (index, ip)
            }
            Underlay::Ip(ip) => {
                let index = self
                    .ipv4_addresses(None)
                    .await?
                    .into_iter()
                    .find(|(_, n)| n.ip() == *ip)
                    .map(|(i, _)| i)
                    .ok_or_else(|| {
                        missing(format!(
                            "no interface has the underlay address {ip} (node.underlay_ip)"
                        ))
                    })?;
                (index, *ip)
            }
            Underlay::DefaultRoute => {
                let routes: Vec<RouteMessage> = self
                    .handle
                    .route()
                    .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
                    .execute()
                    .try_collect()
                    .await
                    .map_err(req("list routes"))?;
                let index = routes
                    .iter()
                    .filter(|r| {
                        r.header.destination_prefix_length == 0
                            && r.header.table == RouteHeader::RT_TABLE_MAIN
                    })
                    .find_map(|r| {
                        r.attributes.iter().find_map(|a| {
                            if let RouteAttribute::Oif(i) = a {
                                Some(*i)
                            } else {
                                None
                            }
                        })
                    })
                    .ok_or_else(|| {
                        missing(
                            "no default route to find the underlay by; set node.underlay_interface",
                        )
                    })?;
                let ip = self
                    .ipv4_addresses(Some(index))
                    .await?
                    .first()
                    .map(|(_, n)| n.ip())
                    .ok_or_else(|| missing("the default route's interface has no IPv4 address; set node.underlay_interface"))?;
                (index, ip)
            }
        };
        let link = self.link_by_index(index).await?;
        let mut mtu = 1500;
        let mut name = String::new();
        for a in &link.attributes {
            match a {
                LinkAttribute::Mtu(m) => mtu = *m,
                LinkAttribute::IfName(n) => name = n.clone(),
                _ => {}
            }
        }
        if name.is_empty() {
            return Err(missing(format!("the underlay link {index} has no name")));
        }
        Ok(UnderlayLink {
            index,
            name,
            ip,
            mtu,
        })
    }

    /// Reads the device and every entry arpanet owns on it.
    pub async fn observe(&self, device: &str) -> Result<ObservedState> {
        let Some(link) = self.link_by_name(device).await? else {
            return Ok(ObservedState::default());
        };
        let state = device_state(&link);
        let index = state.index;
        let mut entries = Entries {
            addresses: self
                .ipv4_addresses(Some(index))
                .await?
                .into_iter()
                .map(|(_, n)| n)
                .collect(),
            ..Entries::default()
        };

        let fdb: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute()
            .try_collect()
            .await
            .map_err(req("list FDB entries"))?;
        // Only permanent entries are arpanet's; with learning off there are no others.
        for m in fdb.iter().filter(|m| m.header.ifindex == index) {
            if let (Some(mac), Some(dst)) = (neighbour_mac(m), neighbour_ip(m))
                && m.header.state == NeighbourState::Permanent
            {
                entries.fdb.insert(FdbEntry { mac, dst });
            }
        }

        let neighbours: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Inet)
            .execute()
            .try_collect()
            .await
            .map_err(req("list neighbours"))?;
        // Only permanent entries are ours; the kernel's own (failed lookups) are not.
        for m in neighbours
            .iter()
            .filter(|m| m.header.ifindex == index && m.header.state == NeighbourState::Permanent)
        {
            if let (Some(mac), Some(ip)) = (neighbour_mac(m), neighbour_ip(m)) {
                entries.neighbours.insert(NeighbourEntry { ip, mac });
            }
        }

        let routes: Vec<RouteMessage> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(req("list routes"))?;
        for r in routes
            .iter()
            .filter(|r| r.header.protocol == RouteProtocol::Other(ROUTE_PROTOCOL))
        {
            let mut oif = None;
            let mut dst = None;
            let mut via = None;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = Some(*ip),
                    RouteAttribute::Gateway(RouteAddress::Inet(ip)) => via = Some(*ip),
                    _ => {}
                }
            }
            if let (Some(i), Some(dst), Some(via)) = (oif, dst, via)
                && i == index
                && let Ok(subnet) = Ipv4Network::new(dst, r.header.destination_prefix_length)
            {
                entries.routes.insert(RouteEntry { subnet, via });
            }
        }
        Ok(ObservedState {
            device: Some(state),
            entries,
        })
    }

    /// Applies one change. `index` is the device's, updated when the device is (re)created.
    pub async fn apply(
        &self,
        spec: &DeviceSpec,
        change: &Change,
        index: &mut Option<u32>,
    ) -> Result<()> {
        let dev = || index.ok_or_else(|| missing(format!("device {} does not exist", spec.name)));
        match change {
            Change::CreateDevice | Change::RecreateDevice { .. } => {
                if let Some(old) = self.link_by_name(&spec.name).await? {
                    self.handle
                        .link()
                        .del(old.header.index)
                        .execute()
                        .await
                        .map_err(req("delete the old device"))?;
                }
                let msg = LinkVxlan::new(&spec.name, spec.vni)
                    .dev(spec.underlay_index)
                    .local(spec.local)
                    .port(spec.port)
                    // Nothing is taught by traffic: peers are admitted ones only.
                    .learning(false)
                    .mtu(spec.mtu)
                    .address(spec.mac.0.to_vec())
                    .up()
                    .build();
                self.handle
                    .link()
                    .add(msg)
                    .execute()
                    .await
                    .map_err(req("create the VXLAN device"))?;
                let link = self.link_by_name(&spec.name).await?.ok_or_else(|| {
                    missing(format!("device {} vanished after creation", spec.name))
                })?;
                *index = Some(link.header.index);
            }
            Change::SetMtu { mtu } => {
                let msg = LinkUnspec::new_with_index(dev()?).mtu(*mtu).build();
                self.handle.link().set(msg).execute().await?;
            }
            Change::SetMac { mac } => {
                let msg = LinkUnspec::new_with_index(dev()?)
                    .address(mac.0.to_vec())
                    .build();
                self.handle.link().set(msg).execute().await?;
            }
            Change::SetUp => {
                let msg = LinkUnspec::new_with_index(dev()?).up().build();
                self.handle.link().set(msg).execute().await?;
            }
            Change::AddAddress { address } => {
                self.handle
                    .address()
                    .add(dev()?, IpAddr::V4(address.ip()), address.prefix())
                    .execute()
                    .await?;
            }
            Change::DelAddress { address } => {
                let mut msg = AddressMessage::default();
                msg.header.family = AddressFamily::Inet;
                msg.header.prefix_len = address.prefix();
                msg.header.index = dev()?;
                msg.attributes
                    .push(AddressAttribute::Local(IpAddr::V4(address.ip())));
                msg.attributes
                    .push(AddressAttribute::Address(IpAddr::V4(address.ip())));
                self.handle.address().del(msg).execute().await?;
            }
            Change::AddFdb(e) => {
                self.handle
                    .neighbours()
                    .add_bridge(dev()?, &e.mac.0)
                    .destination(IpAddr::V4(e.dst))
                    .flags(NeighbourFlags::Own)
                    .replace()
                    .execute()
                    .await?;
            }
            Change::DelFdb(e) => {
                let msg = neighbour_message(
                    AddressFamily::Bridge,
                    dev()?,
                    e.mac,
                    e.dst,
                    NeighbourFlags::Own,
                );
                self.handle.neighbours().del(msg).execute().await?;
            }
            Change::AddNeighbour(n) => {
                self.handle
                    .neighbours()
                    .add(dev()?, IpAddr::V4(n.ip))
                    .link_layer_address(&n.mac.0)
                    .replace()
                    .execute()
                    .await?;
            }
            Change::DelNeighbour(n) => {
                let msg = neighbour_message(
                    AddressFamily::Inet,
                    dev()?,
                    n.mac,
                    n.ip,
                    NeighbourFlags::empty(),
                );
                self.handle.neighbours().del(msg).execute().await?;
            }
            Change::AddRoute(r) => {
                self.handle
                    .route()
                    .add(route_message(dev()?, r))
                    .replace()
                    .execute()
                    .await?;
            }
            Change::DelRoute(r) => {
                self.handle
                    .route()
                    .del(route_message(dev()?, r))
                    .execute()
                    .await?;
            }
        }
        Ok(())
    }

    /// Deletes a link by name; the kernel removes its addresses, neighbours, FDB and routes.
    /// Returns whether there was one.
    pub async fn delete_link(&self, name: &str) -> Result<bool> {
        match self.link_by_name(name).await? {
            Some(link) => {
                self.handle
                    .link()
                    .del(link.header.index)
                    .execute()
                    .await
                    .map_err(req(format!("delete {name}")))?;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

pub fn device_state(link: &LinkMessage) -> DeviceState {
    let mut s = DeviceState {
        index: link.header.index,
        is_vxlan: false,
        vni: None,
        port: None,
        local: None,
        underlay_index: None,
        // The kernel's default for a VXLAN device without the attribute.
        learning: true,
        ageing: None,
        mtu: 0,
        mac: None,
        up: link.header.flags.contains(LinkFlags::Up),
    };
    for attr in &link.attributes {
        match attr {
            LinkAttribute::Mtu(m) => s.mtu = *m,
            LinkAttribute::Address(a) => s.mac = Mac::try_from(a.as_slice()).ok(),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(InfoKind::Vxlan) => s.is_vxlan = true,
                        LinkInfo::Data(InfoData::Vxlan(data)) => {
                            for d in data {
                                match d {
                                    InfoVxlan::Id(v) => s.vni = Some(*v),
                                    InfoVxlan::Port(p) => s.port = Some(*p),
                                    InfoVxlan::Local(ip) => s.local = Some(*ip),
                                    InfoVxlan::Link(i) => s.underlay_index = Some(*i),
                                    InfoVxlan::Learning(l) => s.learning = *l,
                                    InfoVxlan::Ageing(a) => s.ageing = Some(*a),
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    s
}

fn neighbour_mac(m: &NeighbourMessage) -> Option<Mac> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(l) => Mac::try_from(l.as_slice()).ok(),
        _ => None,
    })
}

fn neighbour_ip(m: &NeighbourMessage) -> Option<Ipv4Addr> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
        // FDB entries are AF_BRIDGE messages, whose NDA_DST the crate leaves as bytes.
        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
            <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from)
        }
        _ => None,
    })
}

fn neighbour_message(
    family: AddressFamily,
    index: u32,
    mac: Mac,
    ip: Ipv4Addr,
    flags: NeighbourFlags,
) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family;
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    msg.header.flags = flags;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
    msg.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
    msg
}

fn route_message(index: u32, r: &RouteEntry) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(r.subnet.network(), r.subnet.prefix())
        .gateway(r.via)
        .output_interface(index)
        .onlink()
        .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
        .build()
}

/// Refuses to run where netlink changes would hit the wrong host by surprise.
pub fn require_root() -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
        != 0
    {
        return Err(NetlinkError::NotRoot);
    }
    Ok(())
}
