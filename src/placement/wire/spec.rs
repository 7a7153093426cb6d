//! A container spec as KV records and API bodies carry it (version 1). Its fields read
//! as containers.d's do, but it is its own struct: the TOML schema may change without
//! changing what other nodes read.
//!
//! Leaf values that parse text (names, image references, CPU shares, memory, network
//! mode) use their one validating type, so a bad value is refused where it is parsed,
//! with its field's path.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::WireError;
use crate::config::containers::{
    CheckKind, CheckSpec, CheckType, ContainerName, ContainerSpec, CpuShares, ImageRef,
    MemoryLimit, NetworkMode, PortMapping, Protocol, RestartPolicy, ServiceSpec, UpdatePolicy,
    Volume,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpecV1 {
    pub name: ContainerName,
    pub image: ImageRef,
    #[serde(default)]
    pub cpu: Option<CpuShares>,
    #[serde(default)]
    pub memory: Option<MemoryLimit>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub privileged: bool,
    #[serde(default)]
    pub network: NetworkMode,
    #[serde(default)]
    pub volumes: Vec<VolumeV1>,
    #[serde(default)]
    pub ports: Vec<PortV1>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub restart: RestartV1,
    #[serde(default)]
    pub update: UpdateV1,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub service: Option<ServiceV1>,
}

/// `{container, host?, mode?}`, `{from, mode?}`, or one of the forms arpanet wrote
/// before records had versions: `{"Bind": {host, container, read_only}}`,
/// `{"Anonymous": {container}}`, `{"From": {container, read_only}}` (the internal enum
/// as serde derives it, which that release could not read back).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeV1 {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<VolumeModeV1>,
    #[serde(rename = "Bind", default, skip_serializing)]
    legacy_bind: Option<LegacyBind>,
    #[serde(rename = "Anonymous", default, skip_serializing)]
    legacy_anonymous: Option<LegacyAnonymous>,
    #[serde(rename = "From", default, skip_serializing)]
    legacy_from: Option<LegacyFrom>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeModeV1 {
    Rw,
    Ro,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct LegacyBind {
    host: PathBuf,
    container: PathBuf,
    read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct LegacyAnonymous {
    container: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct LegacyFrom {
    container: String,
    read_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortV1 {
    pub container: u16,
    #[serde(default)]
    pub host: Option<u16>,
    #[serde(default)]
    pub protocol: ProtocolV1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProtocolV1 {
    #[default]
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartV1 {
    #[default]
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpdateV1 {
    pub pull: bool,
    pub eager: bool,
}

impl Default for UpdateV1 {
    fn default() -> Self {
        Self {
            pull: true,
            eager: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceV1 {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub check: Option<CheckV1>,
}

/// `{type, path?, interval?, timeout?}` with durations as text ("5s"), or the form
/// arpanet wrote before records had versions: `{"kind": {"http": {"path": P}}}` or
/// `{"kind": "tcp"}`, with durations as `{secs, nanos}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckV1 {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<CheckTypeV1>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<DurationV1>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationV1>,
    #[serde(rename = "kind", default, skip_serializing)]
    legacy_kind: Option<LegacyCheckKind>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckTypeV1 {
    Http,
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
enum LegacyCheckKind {
    Http { path: String },
    Tcp,
}

/// Written as text ("1m 30s"); read from text or from `{secs, nanos}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationV1(pub Duration);

impl Serialize for DurationV1 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for DurationV1 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = DurationV1;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as \"5s\"")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<DurationV1, E> {
                humantime::parse_duration(text)
                    .map(DurationV1)
                    .map_err(|e| {
                        E::custom(format!(
                            "`{text}` is not a duration ({e}); write e.g. \"30s\" or \"5m\""
                        ))
                    })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<DurationV1, A::Error> {
                let (mut secs, mut nanos) = (None, None);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "secs" => secs = Some(map.next_value::<u64>()?),
                        "nanos" => nanos = Some(map.next_value::<u32>()?),
                        other => {
                            return Err(serde::de::Error::unknown_field(other, &["secs", "nanos"]));
                        }
                    }
                }
                let secs = secs.ok_or_else(|| serde::de::Error::missing_field("secs"))?;
                let nanos = nanos.unwrap_or(0);
                if nanos >= 1_000_000_000 {
                    return Err(serde::de::Error::custom("nanos must be below 1000000000"));
                }
                Ok(DurationV1(Duration::new(secs, nanos)))
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl From<&ContainerSpec> for ContainerSpecV1 {
    fn from(s: &ContainerSpec) -> Self {
        Self {
            name: s.name.clone(),
            image: s.image.clone(),
            cpu: s.cpu,
            memory: s.memory,
            entrypoint: s.entrypoint.clone(),
            command: s.command.clone(),
            privileged: s.privileged,
            network: s.network.clone(),
            volumes: s.volumes.iter().map(VolumeV1::from).collect(),
            ports: s.ports.iter().map(PortV1::from).collect(),
            env: s.env.clone(),
            restart: match s.restart {
                RestartPolicy::Always => RestartV1::Always,
                RestartPolicy::OnFailure => RestartV1::OnFailure,
                RestartPolicy::Never => RestartV1::Never,
            },
            update: UpdateV1 {
                pull: s.update.pull,
                eager: s.update.eager,
            },
            labels: s.labels.clone(),
            service: s.service.as_ref().map(|svc| ServiceV1 {
                name: svc.name.clone(),
                tags: svc.tags.clone(),
                port: svc.port,
                check: svc.check.as_ref().map(CheckV1::from),
            }),
        }
    }
}

impl TryFrom<ContainerSpecV1> for ContainerSpec {
    type Error = WireError;
    fn try_from(w: ContainerSpecV1) -> Result<Self, WireError> {
        let volumes = w
            .volumes
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                Volume::try_from(v).map_err(|e| WireError::at(format!("volumes[{i}]"), e))
            })
            .collect::<Result<_, _>>()?;
        let service = match w.service {
            None => None,
            Some(svc) => Some(ServiceSpec {
                name: svc.name,
                tags: svc.tags,
                port: svc.port,
                check: svc
                    .check
                    .map(CheckSpec::try_from)
                    .transpose()
                    .map_err(|e| WireError::at("service.check", e))?,
            }),
        };
        Ok(Self {
            name: w.name,
            image: w.image,
            cpu: w.cpu,
            memory: w.memory,
            entrypoint: w.entrypoint,
            command: w.command,
            privileged: w.privileged,
            network: w.network,
            volumes,
            ports: w.ports.into_iter().map(PortMapping::from).collect(),
            env: w.env,
            restart: match w.restart {
                RestartV1::Always => RestartPolicy::Always,
                RestartV1::OnFailure => RestartPolicy::OnFailure,
                RestartV1::Never => RestartPolicy::Never,
            },
            update: UpdatePolicy {
                pull: w.update.pull,
                eager: w.update.eager,
            },
            labels: w.labels,
            service,
        })
    }
}

impl From<&Volume> for VolumeV1 {
    fn from(v: &Volume) -> Self {
        let mode = |ro: bool| ro.then_some(VolumeModeV1::Ro);
        match v {
            Volume::Bind {
                host,
                container,
                read_only,
            } => Self {
                host: Some(host.clone()),
                container: Some(container.clone()),
                mode: mode(*read_only),
                ..Self::default()
            },
            Volume::Anonymous { container } => Self {
                container: Some(container.clone()),
                ..Self::default()
            },
            Volume::From {
                container,
                read_only,
            } => Self {
                from: Some(container.clone()),
                mode: mode(*read_only),
                ..Self::default()
            },
        }
    }
}

impl TryFrom<VolumeV1> for Volume {
    type Error = String;
    fn try_from(w: VolumeV1) -> Result<Self, String> {
        let plain =
            w.host.is_some() || w.container.is_some() || w.from.is_some() || w.mode.is_some();
        match (plain, w.legacy_bind, w.legacy_anonymous, w.legacy_from) {
            (_, None, None, None) => Volume::from_parts(
                w.host,
                w.container,
                w.from,
                w.mode == Some(VolumeModeV1::Ro),
            ),
            (false, Some(b), None, None) => {
                Volume::from_parts(Some(b.host), Some(b.container), None, b.read_only)
            }
            (false, None, Some(a), None) => {
                Volume::from_parts(None, Some(a.container), None, false)
            }
            (false, None, None, Some(f)) => {
                Volume::from_parts(None, None, Some(f.container), f.read_only)
            }
            _ => Err("a volume is either {container, host?, mode?} or {from, mode?}".into()),
        }
    }
}

impl From<&PortMapping> for PortV1 {
    fn from(p: &PortMapping) -> Self {
        Self {
            container: p.container,
            host: p.host,
            protocol: match p.protocol {
                Protocol::Tcp => ProtocolV1::Tcp,
                Protocol::Udp => ProtocolV1::Udp,
            },
        }
    }
}

impl From<PortV1> for PortMapping {
    fn from(p: PortV1) -> Self {
        Self {
            container: p.container,
            host: p.host,
            protocol: match p.protocol {
                ProtocolV1::Tcp => Protocol::Tcp,
                ProtocolV1::Udp => Protocol::Udp,
            },
        }
    }
}

impl From<&CheckSpec> for CheckV1 {
    fn from(c: &CheckSpec) -> Self {
        let (kind, path) = match &c.kind {
            CheckKind::Http { path } => (CheckTypeV1::Http, Some(path.clone())),
            CheckKind::Tcp => (CheckTypeV1::Tcp, None),
        };
        Self {
            kind: Some(kind),
            path,
            interval: Some(DurationV1(c.interval)),
            timeout: Some(DurationV1(c.timeout)),
            legacy_kind: None,
        }
    }
}

impl TryFrom<CheckV1> for CheckSpec {
    type Error = String;
    fn try_from(w: CheckV1) -> Result<Self, String> {
        let (kind, path) = match (w.kind, w.legacy_kind) {
            (Some(CheckTypeV1::Http), None) => (CheckType::Http, w.path),
            (Some(CheckTypeV1::Tcp), None) => (CheckType::Tcp, w.path),
            (None, Some(LegacyCheckKind::Http { path })) if w.path.is_none() => {
                (CheckType::Http, Some(path))
            }
            (None, Some(LegacyCheckKind::Tcp)) if w.path.is_none() => (CheckType::Tcp, None),
            (None, None) => return Err("missing field `type` (http or tcp)".into()),
            _ => return Err("a check names its kind once: `type` (with `path`) or `kind`".into()),
        };
        CheckSpec::from_parts(
            kind,
            path,
            w.interval.map_or(CheckSpec::DEFAULT_INTERVAL, |d| d.0),
            w.timeout.map_or(CheckSpec::DEFAULT_TIMEOUT, |d| d.0),
        )
    }
}
