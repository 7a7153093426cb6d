//! The Consul agent's configuration, rendered from arpanet.toml. arpanet never
//! re-implements membership, KV, catalog or DNS: it configures Consul and uses it.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use serde_json::{Value, json};

use crate::config::{Config, Role};
use crate::identity::LocalIdentity;
use crate::paths::IdentityFiles;

/// What the rendering needs besides the config, read from the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// The host's own upstream resolvers, for names outside `.consul`.
    pub recursors: Vec<IpAddr>,
    /// Whether Docker's bridge carries its planned address yet (Consul refuses to
    /// start when told to listen on an address that does not exist).
    pub bridge_ip_present: bool,
    pub gossip_key: String,
    /// Whether [`install_tls_files`] put this node's identity where the agent reads it.
    pub tls: bool,
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
    if facts.tls {
        tls(&mut v, config);
    }
    v
}

/// RPC (agents to servers, raft between servers) with the cluster CA's certificates,
/// in Consul 1.8's top-level keys (1.12 and later read them too, as deprecated aliases
/// of `tls.defaults`/`tls.internal_rpc`). A server's certificate names
/// `server.<datacenter>.consul`, which `verify_server_hostname` wants, so a client
/// certificate cannot pose as a server. Only RPC verifies incoming connections: the
/// HTTP API stays plain on 127.0.0.1 and the Consul address (ACLs guard it), and no
/// HTTPS or gRPC port is opened. DNS and gossip are not TLS (gossip has `encrypt`).
fn tls(v: &mut Value, config: &Config) {
    let files = agent_tls_files(config);
    v["ca_file"] = json!(files.ca_cert());
    v["cert_file"] = json!(files.node_cert());
    v["key_file"] = json!(files.node_key());
    v["verify_incoming_rpc"] = json!(true);
    v["verify_outgoing"] = json!(true);
    v["verify_server_hostname"] = json!(true);
    v["tls_min_version"] = json!("tls12");
}

/// The agent's copies of this node's CA, certificate and key (the same file names as
/// the identity's): the agent's user cannot read the originals (root's, 0600).
pub fn agent_tls_files(config: &Config) -> IdentityFiles {
    IdentityFiles::new(&crate::paths::consul_tls_dir(&config.paths))
}

static NO_IDENTITY_SAID: AtomicBool = AtomicBool::new(false);

/// Copies this node's identity for the agent: each file written only when it differs
/// (a renewed certificate), 0600, then handed to the agent's user with the directory.
/// `Ok(None)`: the node has no identity yet (not joined), said once; the agent then
/// runs without TLS. `Ok(Some(changed))` otherwise.
pub fn install_tls_files(config: &Config) -> anyhow::Result<Option<bool>> {
    let source = IdentityFiles::new(&config.cluster.identity_dir);
    if !LocalIdentity::present(&source) {
        if !NO_IDENTITY_SAID.swap(true, Ordering::Relaxed) {
            tracing::info!(
                "no node identity in {}: Consul RPC runs without TLS until this node joins",
                source.dir.display()
            );
        }
        return Ok(None);
    }
    let id = LocalIdentity::load(&source)?;
    let dest = agent_tls_files(config);
    install_into(&id, &dest, AGENT_USER).map(Some)
}

fn install_into(id: &LocalIdentity, dest: &IdentityFiles, user: &str) -> anyhow::Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(&dest.dir).with_context(|| format!("create {}", dest.dir.display()))?;
    std::fs::set_permissions(&dest.dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("chmod 0700 {}", dest.dir.display()))?;
    let mut changed = false;
    for (path, text) in [
        (dest.ca_cert(), &id.ca_pem),
        (dest.node_cert(), &id.cert_pem),
        (dest.node_key(), &id.key_pem),
    ] {
        if std::fs::read_to_string(&path).ok().as_ref() != Some(text) {
            crate::files::write_private(&path, text)?;
            changed = true;
        }
        give_to(&path, user)?;
    }
    give_dir_to(&dest.dir, user)?;
    Ok(changed)
}

fn give_dir_to(dir: &Path, name: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Some(user) =
        nix::unistd::User::from_name(name).with_context(|| format!("look up user {name}"))?
    else {
        return Ok(());
    };
    let meta = std::fs::metadata(dir).with_context(|| format!("stat {}", dir.display()))?;
    if (meta.uid(), meta.gid()) != (user.uid.as_raw(), user.gid.as_raw()) {
        std::os::unix::fs::chown(dir, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
            .with_context(|| format!("chown {} to {name}", dir.display()))?;
    }
    Ok(())
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
        // A client agent caches a token it could not find (a join taken before the
        // election, whose token is made just after it) for this long: Consul's 30 s
        // held a new cluster's first clients out that long. Each agent re-reads the
        // tokens it uses this often: about 0.2 requests a second per node, to any server.
        "token_ttl": ACL_TOKEN_TTL,
        "tokens": named,
    })
}

/// How long agents cache a token (Consul's `acl.token_ttl`; its default is 30 s).
pub const ACL_TOKEN_TTL: &str = "10s";

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
            tls: false,
            tokens: AgentTokens {
                agent: Some("agent-secret".into()),
                management: Some("management-secret".into()),
            },
        }
    }

    #[test]
    fn with_an_identity_rpc_is_mutual_tls_and_http_stays_plain() {
        for role in ["boot", "server", "client"] {
            let mut f = facts(true);
            f.tls = true;
            let v = render(&config(role, ""), &f);
            let dir = "/var/lib/arpanet/consul/tls";
            assert_eq!(v["ca_file"], format!("{dir}/ca.pem"), "{role}");
            assert_eq!(v["cert_file"], format!("{dir}/cert.pem"));
            assert_eq!(v["key_file"], format!("{dir}/key.pem"));
            assert_eq!(v["verify_incoming_rpc"], true);
            assert_eq!(v["verify_outgoing"], true);
            assert_eq!(v["verify_server_hostname"], true);
            assert_eq!(v["tls_min_version"], "tls12");
            // verify_incoming would cover HTTPS too; there is none, and HTTP is plain.
            assert!(v.get("verify_incoming").is_none());
            assert!(v["ports"].get("https").is_none() && v["ports"].get("grpc").is_none());
            assert_eq!(v["ports"]["http"], 8500);
        }
    }

    #[test]
    fn without_an_identity_nothing_names_tls() {
        let v = render(&config("server", ""), &facts(true));
        for key in [
            "ca_file",
            "cert_file",
            "key_file",
            "verify_incoming_rpc",
            "verify_outgoing",
            "verify_server_hostname",
        ] {
            assert!(v.get(key).is_none(), "{key}");
        }
        let dir = tempfile::tempdir().unwrap();
        let mut c = config("server", "");
        c.cluster.identity_dir = dir.path().join("identity");
        c.paths.state_dir = dir.path().join("state");
        assert_eq!(install_tls_files(&c).unwrap(), None);
        assert!(!crate::paths::consul_tls_dir(&c.paths).exists());
    }

    #[test]
    fn the_agent_gets_its_own_copies_rewritten_only_on_renewal() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mut c = config("server", "");
        c.cluster.identity_dir = dir.path().join("identity");
        c.paths.state_dir = dir.path().join("state");
        let ca = crate::identity::Ca::generate("apples").unwrap();
        let source = IdentityFiles::new(&c.cluster.identity_dir);
        let id = crate::identity::NodeIdentity {
            cluster: "apples".into(),
            address: c.node.address,
            role: crate::identity::Role::Server,
        };
        crate::identity::enroll_locally(&ca, &source, &id).unwrap();
        assert_eq!(install_tls_files(&c).unwrap(), Some(true));
        let copies = agent_tls_files(&c);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        for (copy, original) in [
            (copies.ca_cert(), source.ca_cert()),
            (copies.node_cert(), source.node_cert()),
            (copies.node_key(), source.node_key()),
        ] {
            assert_eq!(
                std::fs::read(&copy).unwrap(),
                std::fs::read(&original).unwrap()
            );
            assert_eq!(mode(&copy), 0o600, "{}", copy.display());
        }
        assert_eq!(mode(&copies.dir), 0o700);
        assert_eq!(install_tls_files(&c).unwrap(), Some(false), "nothing new");
        // A renewal: a new key and certificate in the identity directory.
        crate::identity::enroll_locally(&ca, &source, &id).unwrap();
        assert_eq!(install_tls_files(&c).unwrap(), Some(true));
        assert_eq!(
            std::fs::read(copies.node_key()).unwrap(),
            std::fs::read(source.node_key()).unwrap()
        );
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
                    "token_ttl": "10s",
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
