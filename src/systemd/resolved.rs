//! systemd-resolved: send `*.consul` queries from the host itself to Consul, by giving
//! the overlay device a DNS server and the routing-only domain `~consul`.

use std::net::Ipv4Addr;

use anyhow::Context;
use zbus::zvariant::OwnedObjectPath;
use zbus::{Connection, proxy};

#[proxy(
    interface = "org.freedesktop.resolve1.Manager",
    default_service = "org.freedesktop.resolve1",
    default_path = "/org/freedesktop/resolve1"
)]
trait Resolve1 {
    #[zbus(name = "SetLinkDNS")]
    fn set_link_dns(&self, ifindex: i32, addresses: &[(i32, Vec<u8>)]) -> zbus::Result<()>;
    fn set_link_domains(&self, ifindex: i32, domains: &[(&str, bool)]) -> zbus::Result<()>;
    fn revert_link(&self, ifindex: i32) -> zbus::Result<()>;
    fn get_link(&self, ifindex: i32) -> zbus::Result<OwnedObjectPath>;
}

#[proxy(
    interface = "org.freedesktop.resolve1.Link",
    default_service = "org.freedesktop.resolve1"
)]
trait Link {
    #[zbus(property, name = "DNS")]
    fn dns(&self) -> zbus::Result<Vec<(i32, Vec<u8>)>>;
    #[zbus(property)]
    fn domains(&self) -> zbus::Result<Vec<(String, bool)>>;
}

const AF_INET: i32 = 2;

/// Whether systemd-resolved runs here (its bus name has an owner).
pub async fn available(connection: &Connection) -> bool {
    let Ok(dbus) = zbus::fdo::DBusProxy::new(connection).await else {
        return false;
    };
    let Ok(name) = zbus::names::BusName::try_from("org.freedesktop.resolve1") else {
        return false;
    };
    dbus.name_has_owner(name).await.unwrap_or(false)
}

/// Points `~consul` at `dns` on link `ifindex`. Returns whether anything changed.
pub async fn ensure_consul_domain(
    connection: &Connection,
    ifindex: u32,
    dns: Ipv4Addr,
) -> anyhow::Result<bool> {
    let manager = Resolve1Proxy::new(connection).await?;
    let index = i32::try_from(ifindex).context("interface index")?;
    let want_dns = vec![(AF_INET, dns.octets().to_vec())];
    let want_domains = vec![("consul".to_string(), true)];
    let path = manager
        .get_link(index)
        .await
        .context("resolved: find the overlay link")?;
    let link = LinkProxy::builder(connection).path(path)?.build().await?;
    if link.dns().await? == want_dns && link.domains().await? == want_domains {
        return Ok(false);
    }
    manager
        .set_link_dns(index, &want_dns)
        .await
        .context("resolved: SetLinkDNS")?;
    manager
        .set_link_domains(index, &[("consul", true)])
        .await
        .context("resolved: SetLinkDomains")?;
    Ok(true)
}
