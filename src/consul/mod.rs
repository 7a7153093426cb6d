//! Consul: the cluster engine (membership, KV, catalog, DNS). arpanet configures
//! and runs the agent, registers its node, and reads the catalog; it never
//! re-implements any of these.

pub mod acl;
pub mod agent;
pub mod client;
pub mod node;
pub mod secret;
pub mod watch;

use std::net::Ipv4Addr;

use anyhow::anyhow;

use crate::config::{Config, ConsulMode};
use crate::network::netlink::Netlink;
use crate::paths::{self, CONSUL_UNIT};
use crate::systemd::Systemd;

/// Renders the agent's config; under systemd, (re)starts the agent's unit when the
/// config changed or the unit is not running. Returns a line per change.
pub async fn reconcile(
    config: &Config,
    netlink: &Netlink,
    systemd: Option<&Systemd>,
) -> anyhow::Result<Vec<String>> {
    let mut changes = Vec::new();
    if matches!(
        config.consul.mode,
        ConsulMode::External | ConsulMode::Disabled
    ) {
        return Ok(changes);
    }
    let key = secret::gossip_key(&secret::read(&config.cluster.secret_file)?);
    let a = config.node.address;
    // Before the config that names them, so a (re)started agent finds them.
    let tls = agent::install_tls_files(config)?;
    let facts = agent::HostFacts {
        recursors: agent::host_recursors(&[a.bridge_ip(), a.consul_ip()]),
        bridge_ip_present: netlink.has_address(a.bridge_ip()).await?,
        gossip_key: key,
        tls: tls.is_some(),
        tokens: agent::AgentTokens::read(config)?,
    };
    let path = paths::consul_config(&config.paths);
    let existed = path.exists();
    let changed = agent::write(&path, &agent::render(config, &facts))?;
    // arpanet-consul.service runs the agent as its own user, which must read it.
    agent::give_to_agent_user(&path)?;
    if changed {
        changes.push(format!("wrote {}", path.display()));
    }
    // A renewed certificate with the same config: Consul re-reads its TLS files on
    // SIGHUP, so no restart (turning TLS on changes the config, which restarts).
    let tls_renewed = tls == Some(true) && !changed && existed;
    match config.consul.mode {
        ConsulMode::Systemd => {
            let systemd = systemd
                .ok_or_else(|| anyhow!("consul.mode = \"systemd\" needs systemd's D-Bus API"))?;
            if changed {
                systemd.restart(CONSUL_UNIT).await?;
                changes.push(format!("restarted {CONSUL_UNIT}"));
            } else if tls_renewed && systemd.active_state(CONSUL_UNIT).await? == "active" {
                systemd.reload_unit(CONSUL_UNIT).await?;
                changes.push(format!("reloaded {CONSUL_UNIT}: new TLS files"));
            } else if systemd.active_state(CONSUL_UNIT).await? != "active" {
                systemd.start(CONSUL_UNIT).await?;
                changes.push(format!("started {CONSUL_UNIT}"));
            }
        }
        ConsulMode::Config if changed && existed => {
            tracing::warn!(
                "{} changed; restart the Consul agent to apply it",
                path.display()
            );
        }
        ConsulMode::Config if tls_renewed => {
            tracing::warn!("the Consul agent's TLS files changed; reload it (consul reload)");
        }
        _ => {}
    }
    Ok(changes)
}

/// Registers this node (service `arpanet`) unless the catalog already lists it as it
/// should be. The catalog, not the local agent, is what matters: an agent that
/// registered before a leader existed syncs only on its next anti-entropy run,
/// while registering again makes it sync now. Returns whether it registered.
pub async fn ensure_registered(
    consul: &client::Consul,
    config: &Config,
    underlay_ip: Ipv4Addr,
) -> anyhow::Result<bool> {
    let want = node::registration(config, underlay_ip);
    // This node's entry alone: every node's pass runs on every catalog change, and
    // reading the whole service each time made that N x N entries per change.
    let in_catalog = consul
        .catalog_node_service_meta(&config.node_name(), &want.id)
        .await?
        .is_some_and(|meta| meta == want.meta);
    let services = consul.agent_services().await?;
    let current = services.get(node::SERVICE);
    let same = current.is_some_and(|s| {
        s.meta == want.meta
            && s.address == want.address
            && s.port == want.port
            && s.tags == want.tags
    });
    if same && in_catalog {
        return Ok(false);
    }
    consul.register_service(&want).await?;
    Ok(true)
}
