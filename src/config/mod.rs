//! `/etc/arpanet/arpanet.toml`: what this node is and how it joins the cluster.
//!
//! Every key has a default except `node.address`. Unknown keys, wrong types and
//! values out of range are refused with `FILE:LINE:COL: key: message`.

pub mod containers;
pub mod diagnostic;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use diagnostic::{Diagnostic, Diagnostics};

use crate::addressing::NodeAddress;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/arpanet/arpanet.toml";
/// Linux's VXLAN header plus outer IPv4/UDP/Ethernet headers.
pub const VXLAN_OVERHEAD: u16 = 50;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub node: NodeConfig,
    #[serde(default)]
    pub cluster: ClusterConfig,
    #[serde(default)]
    pub paths: PathsConfig,
    #[serde(default)]
    pub overlay: OverlayConfig,
    #[serde(default)]
    pub docker: DockerConfig,
    #[serde(default)]
    pub consul: ConsulConfig,
    #[serde(default)]
    pub sync: SyncConfig,
    #[serde(default)]
    pub registry: RegistryConfig,
    #[serde(default)]
    pub api: ApiConfig,
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, Diagnostic> {
        let source = std::fs::read_to_string(path)
            .map_err(|e| Diagnostic::whole_file(path, format!("cannot read: {e}")))?;
        Self::parse(path, &source)
    }

    pub fn parse(path: &Path, source: &str) -> Result<Self, Diagnostic> {
        diagnostic::parse_toml(path, source)
    }

    /// Consul's datacenter: the cluster name, which Consul wants in lower case.
    pub fn datacenter(&self) -> String {
        self.cluster.name.to_ascii_lowercase()
    }

    /// The node name in Consul: configured, else the host name.
    pub fn node_name(&self) -> String {
        self.node.name.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| format!("node-{}", self.node.address))
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The first Consul server; bootstraps the cluster.
    Boot,
    Server,
    Client,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Boot => "boot",
            Role::Server => "server",
            Role::Client => "client",
        })
    }
}

/// A peer to contact at first start: its arpanet address and its underlay IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JoinPeer {
    pub address: NodeAddress,
    pub ip: Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawNodeConfig")]
pub struct NodeConfig {
    pub address: NodeAddress,
    pub role: Role,
    pub name: Option<String>,
    pub underlay: Underlay,
    pub join: Vec<JoinPeer>,
    /// Free-form `key = "value"` pairs that cluster services can be constrained to.
    pub labels: BTreeMap<String, String>,
    /// What cluster services may reserve here; what is not set is the host's own.
    pub capacity: CapacityOverride,
}

/// CPU in Docker's shares, 1024 to a CPU (as a spec's `cpu` reserves), and memory in
/// bytes: what a node offers cluster services, or what one instance reserves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Capacity {
    pub cpu: u64,
    pub memory: u64,
}

/// CPU shares per CPU: a spec's `cpu = 1024` reserves one CPU.
pub const SHARES_PER_CPU: u64 = 1024;

/// `node.capacity`: `{ cpus = 1.5, memory = "4g" }`, either part optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityOverride {
    #[serde(default)]
    pub cpus: Option<f64>,
    #[serde(default)]
    pub memory: Option<containers::MemoryLimit>,
}

impl CapacityOverride {
    fn validate(&self) -> Result<(), String> {
        match self.cpus {
            Some(c) if !(c.is_finite() && c > 0.0 && c <= 4096.0) => Err(format!(
                "capacity.cpus = {c}: a number of CPUs above 0 (e.g. 1 or 0.5)"
            )),
            _ => Ok(()),
        }
    }

    /// This host's capacity with the overrides applied: the CPUs this process may use
    /// and the memory the kernel reports.
    pub fn resolve(&self) -> Capacity {
        let cpu = match self.cpus {
            Some(c) => (c * SHARES_PER_CPU as f64).round() as u64,
            None => {
                std::thread::available_parallelism().map_or(1, |n| n.get() as u64) * SHARES_PER_CPU
            }
        };
        let memory = match self.memory {
            Some(m) => m.0,
            None => host_memory().unwrap_or(0),
        };
        Capacity { cpu, memory }
    }
}

/// `MemTotal` of /proc/meminfo, in bytes.
fn host_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// How the underlay (the network the hosts already share) is found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Underlay {
    Interface(String),
    Ip(Ipv4Addr),
    /// The interface of the default route, as flannel does.
    DefaultRoute,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNodeConfig {
    address: NodeAddress,
    #[serde(default = "default_role")]
    role: Role,
    name: Option<String>,
    underlay_interface: Option<String>,
    underlay_ip: Option<Ipv4Addr>,
    #[serde(default)]
    join: JoinList,
    #[serde(default)]
    labels: NodeLabels,
    #[serde(default)]
    capacity: CapacityOverride,
}

/// Validated on its own so that its errors point at `node.labels`. They travel as
/// Consul service meta (`label_KEY`), whose keys allow letters, digits, `_` and `-`.
#[derive(Default, Deserialize)]
#[serde(try_from = "BTreeMap<String, String>")]
struct NodeLabels(BTreeMap<String, String>);

impl TryFrom<BTreeMap<String, String>> for NodeLabels {
    type Error = String;

    fn try_from(labels: BTreeMap<String, String>) -> Result<Self, String> {
        if labels.len() > 32 {
            return Err(format!("{} labels; a node has at most 32", labels.len()));
        }
        for (key, value) in &labels {
            let ok = !key.is_empty()
                && key.len() <= 64
                && key
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-');
            if !ok {
                return Err(format!(
                    "label `{key}`: keys are 1-64 letters, digits, `_` or `-`"
                ));
            }
            if value.len() > 256 {
                return Err(format!("label `{key}`: a value has at most 256 bytes"));
            }
        }
        Ok(Self(labels))
    }
}

/// Validated on its own so that its errors point at the `join` array.
#[derive(Default, Deserialize)]
#[serde(try_from = "Vec<JoinPeer>")]
struct JoinList(Vec<JoinPeer>);

impl TryFrom<Vec<JoinPeer>> for JoinList {
    type Error = String;

    fn try_from(peers: Vec<JoinPeer>) -> Result<Self, String> {
        let mut addresses = BTreeSet::new();
        let mut ips = BTreeSet::new();
        for peer in &peers {
            if !addresses.insert(peer.address) {
                return Err(format!("address `{}` is listed twice", peer.address));
            }
            if !ips.insert(peer.ip) {
                return Err(format!("underlay IP `{}` is listed twice", peer.ip));
            }
        }
        Ok(Self(peers))
    }
}

fn default_role() -> Role {
    Role::Client
}

impl TryFrom<RawNodeConfig> for NodeConfig {
    type Error = String;

    fn try_from(raw: RawNodeConfig) -> Result<Self, String> {
        let underlay = match (raw.underlay_interface, raw.underlay_ip) {
            (Some(_), Some(_)) => {
                return Err("set either `underlay_interface` or `underlay_ip`, not both".into());
            }
            (Some(name), None) => {
                if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
                    return Err(format!(
                        "`underlay_interface = {name:?}` is not a Linux interface name (1-15 characters, no `/` or space)"
                    ));
                }
                Underlay::Interface(name)
            }
            (None, Some(ip)) => Underlay::Ip(ip),
            (None, None) => Underlay::DefaultRoute,
        };
        let join = raw.join.0;
        if join.iter().any(|peer| peer.address == raw.address) {
            return Err(format!(
                "`join` lists this node's own address `{}`",
                raw.address
            ));
        }
        if raw.role != Role::Boot && join.is_empty() {
            return Err(format!(
                "role `{}` needs at least one `join` peer (only the `boot` node starts a cluster alone), e.g. join = [{{ address = \"0.1\", ip = \"192.168.8.120\" }}]",
                raw.role
            ));
        }
        if let Some(name) = &raw.name {
            validate_name("name", name)?;
        }
        raw.capacity.validate()?;
        Ok(Self {
            address: raw.address,
            role: raw.role,
            name: raw.name,
            underlay,
            join,
            labels: raw.labels.0,
            capacity: raw.capacity,
        })
    }
}

/// Names that end up as Consul node names and datacenters.
fn validate_name(key: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{key} = {name:?}` must be 1-63 letters, digits, `-` or `_`, not starting with `-`"
        ))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawClusterConfig")]
pub struct ClusterConfig {
    pub name: String,
    pub secret_file: PathBuf,
    /// The cluster CA's certificate, this node's certificate and key, and (servers) the
    /// CA key and Consul management token. Docker's names (ca.pem, cert.pem, key.pem),
    /// so the directory is also a DOCKER_CERT_PATH.
    pub identity_dir: PathBuf,
    /// TCP port of the join service on servers' underlay addresses.
    pub join_port: u16,
    /// Consul servers expected before the first leader election (`bootstrap_expect`).
    pub expect: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClusterConfig {
    #[serde(default = "default_cluster_name")]
    name: String,
    #[serde(default = "default_secret_file")]
    secret_file: PathBuf,
    #[serde(default = "default_identity_dir")]
    identity_dir: PathBuf,
    #[serde(default = "default_join_port")]
    join_port: u16,
    #[serde(default = "default_expect")]
    expect: u32,
}

fn default_cluster_name() -> String {
    "arpanet".into()
}
fn default_secret_file() -> PathBuf {
    "/etc/arpanet/secret".into()
}
fn default_identity_dir() -> PathBuf {
    "/etc/arpanet/identity".into()
}
fn default_join_port() -> u16 {
    7103
}
fn default_expect() -> u32 {
    1
}

impl TryFrom<RawClusterConfig> for ClusterConfig {
    type Error = String;

    fn try_from(raw: RawClusterConfig) -> Result<Self, String> {
        validate_name("name", &raw.name)?;
        if raw.expect == 0 {
            return Err(
                "`expect` is the number of Consul servers to wait for; it must be at least 1"
                    .into(),
            );
        }
        Ok(Self {
            name: raw.name,
            secret_file: raw.secret_file,
            identity_dir: raw.identity_dir,
            join_port: raw.join_port,
            expect: raw.expect,
        })
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            name: default_cluster_name(),
            secret_file: default_secret_file(),
            identity_dir: default_identity_dir(),
            join_port: default_join_port(),
            expect: default_expect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PathsConfig {
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub containers_dir: PathBuf,
}

impl Default for PathsConfig {
    fn default() -> Self {
        Self {
            state_dir: "/var/lib/arpanet".into(),
            run_dir: "/run/arpanet".into(),
            containers_dir: "/etc/arpanet/containers.d".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OverlayConfig {
    pub device: DeviceName,
    pub vni: Vni,
    /// VXLAN's UDP port on the underlay (IANA's 4789; flannel uses Linux's old 8472).
    pub port: u16,
    /// UDP port on the underlay address where nodes prove they hold the cluster secret
    /// (signed hellos); the only thing arpanet answers on the underlay.
    pub hello_port: u16,
    pub mtu: Mtu,
    /// How often the device and peer entries are checked and repaired.
    #[serde(with = "duration_text")]
    pub resync: Duration,
}

impl Default for OverlayConfig {
    fn default() -> Self {
        Self {
            device: DeviceName::default(),
            vni: Vni(1),
            port: 4789,
            hello_port: 7102,
            mtu: Mtu::Auto,
            resync: Duration::from_secs(10),
        }
    }
}

impl OverlayConfig {
    /// The overlay MTU given the underlay's.
    pub fn effective_mtu(&self, underlay_mtu: u32) -> u32 {
        match self.mtu {
            Mtu::Auto => underlay_mtu.saturating_sub(u32::from(VXLAN_OVERHEAD)),
            Mtu::Fixed(m) => u32::from(m),
        }
    }
}

/// The overlay device's name, checked against Linux's rules for interface names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceName(String);

impl DeviceName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for DeviceName {
    fn default() -> Self {
        Self("arpanet0".into())
    }
}

impl TryFrom<String> for DeviceName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.is_empty() || s.len() > 15 || !s.bytes().all(|c| c.is_ascii_graphic() && c != b'/') {
            return Err(format!(
                "`{s}` is not a Linux interface name (1-15 printable characters, no `/`)"
            ));
        }
        Ok(Self(s))
    }
}

impl From<DeviceName> for String {
    fn from(d: DeviceName) -> String {
        d.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Vni(pub u32);

impl TryFrom<u32> for Vni {
    type Error = String;
    fn try_from(v: u32) -> Result<Self, String> {
        if (1..=0xFF_FFFF).contains(&v) {
            Ok(Self(v))
        } else {
            Err(format!(
                "VNI {v} is out of range: VXLAN network identifiers are 1 to 16777215"
            ))
        }
    }
}

impl From<Vni> for u32 {
    fn from(v: Vni) -> u32 {
        v.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mtu {
    /// Underlay MTU minus the VXLAN overhead.
    Auto,
    Fixed(u16),
}

impl Serialize for Mtu {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Mtu::Auto => s.serialize_str("auto"),
            Mtu::Fixed(m) => s.serialize_u16(*m),
        }
    }
}

impl<'de> Deserialize<'de> for Mtu {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Number(i64),
        }
        let expected = "expected \"auto\" or a number from 1280 to 65535";
        match Raw::deserialize(d).map_err(|_| serde::de::Error::custom(expected))? {
            Raw::Text(t) if t == "auto" => Ok(Mtu::Auto),
            Raw::Number(n) if (1280..=65535).contains(&n) => Ok(Mtu::Fixed(n as u16)),
            Raw::Text(t) => Err(serde::de::Error::custom(format!("`{t}`: {expected}"))),
            Raw::Number(n) => Err(serde::de::Error::custom(format!("{n}: {expected}"))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceMode {
    /// arpanet writes the service's configuration and (re)starts its systemd unit.
    Systemd,
    /// arpanet writes the configuration; starting and restarting is left to you
    /// (hosts without systemd, or another supervisor).
    Config,
    /// Use what already runs, as it is: arpanet writes nothing.
    External,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DockerConfig {
    pub mode: ServiceMode,
    pub socket: PathBuf,
    /// Docker API port on the Docker plane address (never on the underlay), with TLS:
    /// a client needs a certificate from the cluster CA.
    pub api_port: u16,
    pub daemon_json: PathBuf,
}

impl Default for DockerConfig {
    fn default() -> Self {
        Self {
            mode: ServiceMode::Systemd,
            socket: "/var/run/docker.sock".into(),
            api_port: 2376,
            daemon_json: "/etc/docker/daemon.json".into(),
        }
    }
}

/// How the Consul agent is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsulMode {
    /// arpanet renders the agent's config and runs arpanet-consul.service.
    Systemd,
    /// arpanet renders the config; you run `arpanet consul-agent` (or consul) yourself.
    Config,
    /// An agent that already runs at `http_addr`; arpanet renders nothing.
    External,
    /// No Consul: the overlay only, with peers from the join list.
    Disabled,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsulConfig {
    pub mode: ConsulMode,
    /// Where arpanet talks to the local agent's HTTP API.
    pub http_addr: SocketAddr,
    /// The consul binary (systemd mode); a bare name is looked up on PATH.
    pub binary: PathBuf,
    /// Consul's DNS port on the Docker bridge IP, where containers send queries.
    pub dns_port: u16,
}

impl Default for ConsulConfig {
    fn default() -> Self {
        Self {
            mode: ConsulMode::Systemd,
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8500)),
            binary: "consul".into(),
            dns_port: 53,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    /// BitTorrent peer port, on the overlay address only.
    pub peer_port: u16,
    /// The socket-activated service exits after this long with no transfer.
    #[serde(with = "duration_text")]
    pub idle_timeout: Duration,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            peer_port: 7101,
            idle_timeout: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// The node registry's port on 127.0.0.1 (Docker trusts loopback registries
    /// without TLS): `docker push 127.0.0.1:PORT/app:v2`.
    pub port: u16,
    /// How often the registry's garbage collection runs on this node.
    #[serde(
        serialize_with = "duration_text::serialize",
        deserialize_with = "positive_duration"
    )]
    pub gc_interval: Duration,
    /// How old an unreferenced blob, upload or untagged manifest must be before it
    /// goes: a push uploads its blobs before its manifest exists.
    #[serde(with = "duration_text")]
    pub gc_grace: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            port: 7102,
            gc_interval: Duration::from_secs(3600),
            gc_grace: Duration::from_secs(3600),
        }
    }
}

/// A [`duration_text`] above zero (an interval: zero would spin).
fn positive_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let duration = duration_text::deserialize(d)?;
    if duration.is_zero() {
        return Err(serde::de::Error::custom(
            "must be more than zero, e.g. \"1h\"",
        ));
    }
    Ok(duration)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// The cluster API's port on the overlay address.
    pub port: u16,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self { port: 7100 }
    }
}

/// Durations written as people write them: "30s", "5m", "1h 30m".
pub mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{text}` is not a duration ({e}); write e.g. \"30s\" or \"5m\""
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTRACT: &str = r#"
[node]
address = "0.1"
role = "boot"
underlay_interface = "eth1"
join = [{ address = "0.2", ip = "192.168.8.121" }]
[cluster]
name = "apples"
secret_file = "/etc/arpanet/secret"
expect = 3
[paths]
state_dir = "/var/lib/arpanet"
run_dir = "/run/arpanet"
containers_dir = "/etc/arpanet/containers.d"
[docker]
mode = "systemd"
socket = "/var/run/docker.sock"
[consul]
mode = "systemd"
http_addr = "127.0.0.1:8500"
"#;

    fn parse(s: &str) -> Result<Config, String> {
        Config::parse(Path::new("arpanet.toml"), s).map_err(|d| d.to_string())
    }

    #[test]
    fn contract_keys_parse() {
        let c = parse(CONTRACT).unwrap();
        assert_eq!(c.node.address.to_string(), "0.1");
        assert_eq!(c.node.role, Role::Boot);
        assert_eq!(c.node.underlay, Underlay::Interface("eth1".into()));
        assert_eq!(c.node.join.len(), 1);
        assert_eq!(c.cluster.expect, 3);
        assert_eq!(c.docker.mode, ServiceMode::Systemd);
        assert_eq!(c.consul.http_addr.to_string(), "127.0.0.1:8500");
        assert_eq!(c.datacenter(), "apples");
    }

    #[test]
    fn minimal_config_takes_documented_defaults() {
        let c = parse("[node]\naddress = \"0.1\"\nrole = \"boot\"\n").unwrap();
        assert_eq!(c.node.underlay, Underlay::DefaultRoute);
        assert_eq!(c.paths, PathsConfig::default());
        assert_eq!(c.overlay.device.as_str(), "arpanet0");
        assert_eq!(c.overlay.port, 4789);
        assert_eq!(c.overlay.effective_mtu(1500), 1450);
        assert_eq!(c.docker.api_port, 2376);
        assert_eq!(c.sync.idle_timeout, Duration::from_secs(300));
        assert_eq!(c.registry.port, 7102);
        assert_eq!(c.registry.gc_interval, Duration::from_secs(3600));
        assert_eq!(c.registry.gc_grace, Duration::from_secs(3600));
        assert_eq!(c.overlay.resync, Duration::from_secs(10));
    }

    #[test]
    fn registry_gc_durations_are_written_as_people_write_them() {
        let base = "[node]\naddress = \"0.1\"\nrole = \"boot\"\n[registry]\n";
        let c = parse(&format!("{base}gc_interval = \"2s\"\ngc_grace = \"0s\"\n")).unwrap();
        assert_eq!(c.registry.gc_interval, Duration::from_secs(2));
        assert_eq!(c.registry.gc_grace, Duration::ZERO);
        let c = parse(&format!("{base}gc_grace = \"1h 30m\"\n")).unwrap();
        assert_eq!(c.registry.gc_grace, Duration::from_secs(5400));
        let err = parse(&format!("{base}gc_interval = \"0s\"\n")).unwrap_err();
        assert!(err.starts_with("arpanet.toml:5:"), "{err}");
        assert!(err.contains("more than zero"), "{err}");
        let err = parse(&format!("{base}gc_grace = \"soon\"\n")).unwrap_err();
        assert!(err.contains("not a duration"), "{err}");
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err =
            parse("[node]\naddress = \"0.1\"\nrole = \"boot\"\nadress = \"0.2\"\n").unwrap_err();
        assert!(
            err.starts_with("arpanet.toml:4:1: unknown field `adress`"),
            "{err}"
        );
        assert!(
            err.contains("`address`"),
            "the hint lists the known keys: {err}"
        );
    }

    #[test]
    fn unknown_section_is_refused() {
        let err =
            parse("[node]\naddress = \"0.1\"\nrole = \"boot\"\n[overlai]\nvni = 2\n").unwrap_err();
        assert!(err.starts_with("arpanet.toml:4:"), "{err}");
        assert!(err.contains("unknown field `overlai`"), "{err}");
    }

    #[test]
    fn out_of_range_address_names_key_and_position() {
        let err = parse("[node]\nrole = \"boot\"\naddress = \"0.300\"\n").unwrap_err();
        assert!(
            err.starts_with("arpanet.toml:3:11: node.address: `0.300` is out of range"),
            "{err}"
        );
    }

    #[test]
    fn join_entry_errors_name_the_entry() {
        let err = parse(
            "[node]\naddress = \"0.1\"\nrole = \"boot\"\njoin = [{ address = \"0.2\", ip = \"1.2.3.4\" }, { address = \"1.999\", ip = \"1.2.3.5\" }]\n",
        )
        .unwrap_err();
        assert!(err.starts_with("arpanet.toml:4:"), "{err}");
        assert!(
            err.contains("node.join[1].address: `1.999` is out of range"),
            "{err}"
        );
    }

    #[test]
    fn wrong_type_names_key() {
        let err =
            parse("[node]\naddress = \"0.1\"\nrole = \"boot\"\n[cluster]\nexpect = \"three\"\n")
                .unwrap_err();
        assert!(
            err.starts_with("arpanet.toml:5:10: cluster.expect:"),
            "{err}"
        );
    }

    #[test]
    fn node_labels_are_kept_and_bad_keys_named() {
        let c = parse("[node]\naddress = \"0.1\"\nrole = \"boot\"\nlabels = { zone = \"a\", ssd = \"yes\" }\n")
            .unwrap();
        assert_eq!(c.node.labels["zone"], "a");
        let err =
            parse("[node]\naddress = \"0.1\"\nrole = \"boot\"\nlabels = { \"rack 1\" = \"a\" }\n")
                .unwrap_err();
        assert!(
            err.starts_with("arpanet.toml:4:10: node.labels: label `rack 1`: keys are"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_join_addresses_are_refused() {
        let err = parse(
            "[node]\naddress = \"0.1\"\nrole = \"boot\"\njoin = [{ address = \"0.2\", ip = \"1.2.3.4\" }, { address = \"0.2\", ip = \"1.2.3.5\" }]\n",
        )
        .unwrap_err();
        assert!(
            err.starts_with("arpanet.toml:4:8: node.join: address `0.2` is listed twice"),
            "{err}"
        );
    }

    #[test]
    fn cross_field_rules() {
        let both = parse(
            "[node]\naddress = \"0.1\"\nrole = \"boot\"\nunderlay_interface = \"eth0\"\nunderlay_ip = \"1.2.3.4\"\n",
        );
        assert!(both.unwrap_err().contains("not both"));
        let lonely_server = parse("[node]\naddress = \"0.2\"\nrole = \"server\"\n");
        assert!(
            lonely_server
                .unwrap_err()
                .contains("role `server` needs at least one `join` peer")
        );
        let own = parse(
            "[node]\naddress = \"0.1\"\nrole = \"boot\"\njoin = [{ address = \"0.1\", ip = \"1.2.3.4\" }]\n",
        );
        assert!(own.unwrap_err().contains("own address"));
    }

    #[test]
    fn overlay_values_are_checked() {
        let base = "[node]\naddress = \"0.1\"\nrole = \"boot\"\n[overlay]\n";
        assert!(
            parse(&format!("{base}vni = 0\n"))
                .unwrap_err()
                .contains("overlay.vni: VNI 0 is out of range")
        );
        assert!(
            parse(&format!("{base}mtu = 100\n"))
                .unwrap_err()
                .contains("overlay.mtu: 100: expected")
        );
        assert!(
            parse(&format!("{base}mtu = \"big\"\n"))
                .unwrap_err()
                .contains("overlay.mtu: `big`")
        );
        assert_eq!(
            parse(&format!("{base}mtu = 1400\n"))
                .unwrap()
                .overlay
                .effective_mtu(1500),
            1400
        );
        assert!(parse(&format!("{base}device = \"a-very-long-device-name\"\n")).is_err());
    }

    #[test]
    fn syntax_error_has_position() {
        let err = parse("[node]\naddress = \"0.1\nrole = \"boot\"\n").unwrap_err();
        assert!(err.starts_with("arpanet.toml:2:"), "{err}");
    }

    #[test]
    fn example_config_in_repo_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/arpanet/arpanet.toml");
        let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.node.address.to_string(), "0.1");
    }
}
