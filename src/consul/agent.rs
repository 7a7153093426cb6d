//! The Consul agent's configuration, rendered from arpanet.toml. arpanet never
//! re-implements membership, KV, catalog or DNS: it configures Consul and uses it.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use anyhow::Context;
use serde_json::{Value, json};

use crate::config::{Config, Role};

/// What the rendering needs besides the config, read from the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// The host's own upstream resolvers, for names outside `.consul`.
    pub recursors: Vec<IpAddr>,
    /// Whether Docker's bridge carries its planned address yet (Consul refuses to
    /// start when told to listen on an address that does not exist).
    pub bridge_ip_present: bool,
    pub gossip_key: String,
    pub tokens: AgentTokens,
}

/// The ACL tokens the agent's config names, from the identity files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentTokens {
    /// This node's token, for the agent's own work (its catalog entry).
    pub agent: Option<String>,
    /// The management token, on servers that hold it: the leader creates it.
    pub management: Option<String>,
}

impl AgentTokens {
    /// The tokens in `config`'s identity files; a client never names the management one.
    pub fn read(config: &Config) -> Result<Self, super::client::ConsulError> {
        let files = crate::paths::IdentityFiles::new(&config.cluster.identity_dir);
        let read = super::client::read_token_file;
        Ok(Self {
            agent: read(&files.consul_agent_token())?,
            management: match config.node.role {
                Role::Client => None,
                Role::Boot | Role::Server => read(&files.consul_management_token())?,
            },
        })
    }
}

/// The unprivileged user arpanet-consul.service runs the agent as (the packages
/// create it, /usr/lib/sysusers.d/arpanet.conf).
pub const AGENT_USER: &str = "arpanet-consul";

pub fn render(config: &Config, facts: &HostFacts) -> Value {
    let a = config.node.address;
    let consul_ip = a.consul_ip();
    let mut dns = vec![consul_ip.to_string()];
    if facts.bridge_ip_present {
        dns.push(a.bridge_ip().to_string());
    }
    let retry_join: Vec<String> = config
        .node
        .join
        .iter()
        .map(|j| j.address.consul_ip().to_string())
        .collect();
    let mut v = json!({
        "datacenter": config.datacenter(),
        "node_name": config.node_name(),
        "data_dir": crate::paths::consul_data(&config.paths),
        "bind_addr": consul_ip.to_string(),
        "advertise_addr": consul_ip.to_string(),
        "client_addr": format!("127.0.0.1 {consul_ip}"),
        "addresses": { "dns": dns.join(" ") },
        "ports": { "dns": config.consul.dns_port, "http": config.consul.http_addr.port() },
        "recursors": facts.recursors.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
        "retry_join": retry_join,
        // Consul's 30 s default leaves a node out for long after the overlay reaches its seeds.
        "retry_interval": "5s",
        "encrypt": facts.gossip_key,
        "encrypt_verify_incoming": true,
        "encrypt_verify_outgoing": true,
        "server": config.node.role != Role::Client,
        "disable_update_check": true,
        "disable_host_node_id": true,
        "node_meta": { "arpanet_address": a.to_string() },
        "log_level": "INFO",
    });
    // With several expected servers, every server gets the same expectation, as Consul
    // recommends. With one, only the boot node may bootstrap: a second server that
    // expected 1 would elect itself and split the cluster in two.
    let bootstraps = match config.node.role {
        Role::Client => false,
        Role::Boot => true,
        Role::Server => config.cluster.expect > 1,
    };
    if bootstraps {
        v["bootstrap_expect"] = json!(config.cluster.expect);
    }
    v["primary_datacenter"] = json!(config.datacenter());
    v["acl"] = acl(config.node.role, &facts.tokens);
    v
}

/// Deny by default; no `default` token, so requests without one are anonymous (see
/// `consul::acl`). While the servers cannot be reached, tokens already resolved keep
/// working (`extend-cache`).
fn acl(role: Role, tokens: &AgentTokens) -> Value {
    let mut named = serde_json::Map::new();
    if let Some(agent) = &tokens.agent {
        named.insert("agent".into(), json!(agent));
    }
    if role != Role::Client
        && let Some(management) = &tokens.management
    {
        // Consul 1.8's name; 1.11 and later call it initial_management and still read this.
        named.insert("master".into(), json!(management));
    }
    json!({
        "enabled": true,
        "default_policy": "deny",
        "down_policy": "extend-cache",
        "enable_token_persistence": true,
        "tokens": named,
    })
}

/// Upstream resolvers from resolv.conf, skipping loopback stubs (systemd-resolved's
/// 127.0.0.53 is replaced by the servers it forwards to) and our own addresses.
pub fn host_recursors(own: &[Ipv4Addr]) -> Vec<IpAddr> {
    let parse = |path: &str| -> Vec<IpAddr> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().strip_prefix("nameserver"))
            .filter_map(|ip| ip.trim().parse().ok())
            .collect()
    };
    let mut servers = parse("/etc/resolv.conf");
    if servers.iter().any(|s| s.is_loopback()) {
        servers.extend(parse("/run/systemd/resolve/resolv.conf"));
    }
    servers.retain(|s| !s.is_loopback() && !matches!(s, IpAddr::V4(v4) if own.contains(v4)));
    servers.dedup();
    servers
}

/// The config holds the gossip key (`encrypt`): owner only.
pub const CONFIG_MODE: u32 = 0o600;

/// Writes the rendered config when it differs, always with [`CONFIG_MODE`] (a config an
/// older arpanet left world-readable is narrowed too). Returns whether the content changed.
pub fn write(path: &Path, rendered: &Value) -> anyhow::Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    let mut text = serde_json::to_string_pretty(rendered)?;
    text.push('\n');
    if std::fs::read_to_string(path).is_ok_and(|t| t == text) {
        let mode = std::fs::metadata(path)
            .with_context(|| format!("stat {}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o7777 != CONFIG_MODE {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(CONFIG_MODE))
                .with_context(|| format!("chmod {CONFIG_MODE:o} {}", path.display()))?;
        }
        return Ok(false);
    }
    crate::files::write_atomically_with_mode(path, &text, CONFIG_MODE)?;
    Ok(true)
}

/// Hands the rendered config (it holds the gossip key) to the agent's user, readable
/// by it alone, when that user exists. Where it does not (the agent runs as root, as
/// in the namespace lab), nothing changes. Returns whether anything changed.
pub fn give_to_agent_user(path: &Path) -> anyhow::Result<bool> {
    give_to(path, AGENT_USER)
}

fn give_to(path: &Path, name: &str) -> anyhow::Result<bool> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Some(user) =
        nix::unistd::User::from_name(name).with_context(|| format!("look up user {name}"))?
    else {
        return Ok(false);
    };
    let meta = std::fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
    let mut changed = false;
    if (meta.uid(), meta.gid()) != (user.uid.as_raw(), user.gid.as_raw()) {
        std::os::unix::fs::chown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
            .with_context(|| format!("chown {} to {name}", path.display()))?;
        changed = true;
    }
    if meta.mode() & 0o7777 != 0o600 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 0600 {}", path.display()))?;
        changed = true;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(role: &str, extra: &str) -> Config {
        let join = if role == "boot" {
            ""
        } else {
            "join = [{ address = \"0.1\", ip = \"192.168.8.120\" }]\n"
        };
        let text = format!(
            "[node]\naddress = \"0.2\"\nrole = \"{role}\"\nname = \"n2\"\n{join}[cluster]\nname = \"Apples\"\nexpect = 3\n{extra}"
        );
        Config::parse(Path::new("t.toml"), &text).unwrap()
    }

    fn facts(bridge: bool) -> HostFacts {
        HostFacts {
            recursors: vec!["192.168.8.1".parse().unwrap()],
            bridge_ip_present: bridge,
            gossip_key: "k".into(),
            tokens: AgentTokens {
                agent: Some("agent-secret".into()),
                management: Some("management-secret".into()),
            },
        }
    }

    #[test]
    fn acls_deny_by_default_and_the_management_token_is_on_servers_only() {
        for role in ["boot", "server"] {
            let v = render(&config(role, ""), &facts(true));
            assert_eq!(v["primary_datacenter"], "apples");
            assert_eq!(
                v["acl"],
                json!({
                    "enabled": true,
                    "default_policy": "deny",
                    "down_policy": "extend-cache",
                    "enable_token_persistence": true,
                    "tokens": { "agent": "agent-secret", "master": "management-secret" },
                }),
                "{role}"
            );
        }
        let client = render(&config("client", ""), &facts(true));
        assert_eq!(client["acl"]["tokens"], json!({ "agent": "agent-secret" }));
        assert_eq!(client["acl"]["default_policy"], "deny");
        // No token files yet: ACLs are still on, and nothing is named.
        let mut none = facts(true);
        none.tokens = AgentTokens::default();
        let v = render(&config("server", ""), &none);
        assert_eq!(v["acl"]["enabled"], true);
        assert_eq!(v["acl"]["tokens"], json!({}));
        assert!(v["acl"].get("default").is_none() && v["acl"]["tokens"].get("default").is_none());
    }

    #[test]
    fn a_client_never_reads_the_management_token_file() {
        let dir = tempfile::tempdir().unwrap();
        let files = crate::paths::IdentityFiles::new(dir.path());
        std::fs::write(files.consul_agent_token(), "a-1\n").unwrap();
        std::fs::write(files.consul_management_token(), "m-1\n").unwrap();
        let with_dir = |role: &str| {
            let mut c = config(role, "");
            c.cluster.identity_dir = dir.path().to_path_buf();
            c
        };
        let server = AgentTokens::read(&with_dir("server")).unwrap();
        assert_eq!(server.agent.as_deref(), Some("a-1"));
        assert_eq!(server.management.as_deref(), Some("m-1"));
        let client = AgentTokens::read(&with_dir("client")).unwrap();
        assert_eq!(client.management, None);
        std::fs::remove_file(files.consul_agent_token()).unwrap();
        assert_eq!(AgentTokens::read(&with_dir("client")).unwrap().agent, None);
    }

    #[test]
    fn server_binds_the_consul_plane_and_joins_peers_there() {
        let v = render(&config("server", ""), &facts(true));
        assert_eq!(v["datacenter"], "apples");
        assert_eq!(v["node_name"], "n2");
        assert_eq!(v["bind_addr"], "10.253.0.2");
        assert_eq!(v["advertise_addr"], "10.253.0.2");
        assert_eq!(v["client_addr"], "127.0.0.1 10.253.0.2");
        assert_eq!(v["addresses"]["dns"], "10.253.0.2 10.0.2.1");
        assert_eq!(v["ports"]["dns"], 53);
        assert_eq!(v["ports"]["http"], 8500);
        assert_eq!(v["retry_join"], json!(["10.253.0.1"]));
        assert_eq!(v["server"], true);
        assert_eq!(v["bootstrap_expect"], 3);
        assert_eq!(v["recursors"], json!(["192.168.8.1"]));
    }

    #[test]
    fn client_is_not_a_server_and_dns_waits_for_the_bridge() {
        let v = render(&config("client", ""), &facts(false));
        assert_eq!(v["server"], false);
        assert!(v.get("bootstrap_expect").is_none());
        assert_eq!(v["addresses"]["dns"], "10.253.0.2");
    }

    #[test]
    fn with_one_expected_server_only_the_boot_node_bootstraps() {
        let one = |role: &str| {
            let mut c = config(role, "");
            c.cluster.expect = 1;
            render(&c, &facts(false))
        };
        assert_eq!(one("boot")["bootstrap_expect"], 1);
        assert!(one("server").get("bootstrap_expect").is_none());
        assert_eq!(one("server")["server"], true);
    }

    #[test]
    fn the_config_holding_the_gossip_key_is_0600_also_when_unchanged() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("consul/config.json");
        let v = render(&config("server", ""), &facts(true));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert!(write(&path, &v).unwrap());
        assert_eq!(mode(&path), 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(!write(&path, &v).unwrap(), "same content: no restart");
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn boot_alone_expects_the_configured_servers() {
        let v = render(&config("boot", ""), &facts(false));
        assert_eq!(v["bootstrap_expect"], 3);
        assert_eq!(v["retry_join"], json!([]));
    }

    #[test]
    fn the_config_goes_to_the_agent_user_only_when_it_exists() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, "{}").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mode = || std::fs::metadata(&path).unwrap().mode() & 0o7777;
        assert!(!give_to(&path, "arpanet-no-such-user").unwrap());
        assert_eq!(mode(), 0o644, "no user, no change");
        // This test's own user stands in for the agent's: chown to oneself is allowed.
        let me = nix::unistd::User::from_uid(nix::unistd::getuid())
            .unwrap()
            .unwrap();
        assert!(give_to(&path, &me.name).unwrap());
        assert_eq!(mode(), 0o600);
        assert_eq!(std::fs::metadata(&path).unwrap().uid(), me.uid.as_raw());
        assert!(
            !give_to(&path, &me.name).unwrap(),
            "a second pass changes nothing"
        );
    }
}
