//! Version 1 of the service records in KV and of the API's service and template bodies.
//!
//! - `arpanet/cluster/services/NAME`: a [`ServiceDefV1`], or a [`ServiceDefV2`] once
//!   the service was updated (its version, previous spec and rollout); the API answers
//!   with the same ([`ServiceRecord`]).
//! - `arpanet/cluster/templates/NAME`: a [`ContainerSpecV1`] at the top level.
//! - `arpanet/cluster/drained/ADDRESS`: no body (the key's presence is the record).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::spec::DurationV1;
use super::{ContainerSpecV1, WireError};
use crate::addressing::NodeAddress;
use crate::config::Role;
use crate::config::containers::ContainerSpec;
use crate::placement::rollout::{FailureAction, Order};
use crate::placement::{
    Constraints, Previous, Rollout, RolloutState, ServiceDef, ServiceName, UpdateConfig,
};

/// The longest `delay` or `monitor` an update may ask for.
const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The newest service record version this release reads.
pub const SERVICE_READS_UP_TO: u64 = 2;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDefV1 {
    pub name: ServiceName,
    pub spec: ContainerSpecV1,
    pub replicas: u32,
    #[serde(default)]
    pub constraints: ConstraintsV1,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConstraintsV1 {
    pub roles: Vec<RoleV1>,
    pub nodes: Vec<NodeAddress>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoleV1 {
    Boot,
    Server,
    Client,
}

/// `POST /v1/services`. Exactly one of `image`, `template` and `spec` says what runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateServiceV1 {
    pub name: String,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub spec: Option<ContainerSpecV1>,
    /// With `image`: the command to run.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Signed so that a negative count gets its own clear error.
    pub replicas: i64,
    #[serde(default)]
    pub constraints: ConstraintsV1,
}

/// A service record once it has history: version 1's fields and the update's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDefV2 {
    pub name: ServiceName,
    pub spec: ContainerSpecV1,
    pub replicas: u32,
    #[serde(default)]
    pub constraints: ConstraintsV1,
    pub version: u64,
    #[serde(default)]
    pub previous: Option<PreviousV2>,
    #[serde(default)]
    pub update: UpdateConfigV2,
    #[serde(default)]
    pub rollout: Option<RolloutV2>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviousV2 {
    pub version: u64,
    pub spec: ContainerSpecV1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureActionV2 {
    Pause,
    Rollback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OrderV2 {
    StopFirst,
    StartFirst,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpdateConfigV2 {
    pub parallel: u32,
    pub delay: DurationV1,
    pub monitor: DurationV1,
    pub failure_action: FailureActionV2,
    pub order: OrderV2,
}

impl Default for UpdateConfigV2 {
    fn default() -> Self {
        Self::from(&UpdateConfig::default())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutStateV2 {
    Updating,
    RollingBack,
    Paused,
    Completed,
    RolledBack,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutV2 {
    pub state: RolloutStateV2,
    #[serde(default)]
    pub updated: BTreeSet<String>,
    #[serde(default)]
    pub batch: BTreeSet<String>,
    #[serde(default)]
    pub batch_started: u64,
    #[serde(default)]
    pub seen: BTreeMap<String, u64>,
    #[serde(default)]
    pub passed: BTreeSet<String>,
    #[serde(default)]
    pub batch_ended: u64,
    pub started: u64,
    #[serde(default)]
    pub ended: Option<u64>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub driver: Option<NodeAddress>,
    #[serde(default)]
    pub back: bool,
}

/// `PUT /v1/services/NAME/update`: what changes (nothing named stays), and how it
/// rolls out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateServiceV1 {
    #[serde(default)]
    pub image: Option<String>,
    /// Set (or, with an empty value, removed) in the spec's environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub replicas: Option<i64>,
    #[serde(default)]
    pub update: Option<UpdateConfigV2>,
}

/// `PUT /v1/services/NAME/replicas`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleV1 {
    pub replicas: i64,
}

/// A template as `GET /v1/templates` lists it and `PUT /v1/templates/NAME` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateRowV1 {
    pub name: String,
    pub spec: ContainerSpecV1,
}

impl From<Role> for RoleV1 {
    fn from(r: Role) -> Self {
        match r {
            Role::Boot => Self::Boot,
            Role::Server => Self::Server,
            Role::Client => Self::Client,
        }
    }
}

impl From<RoleV1> for Role {
    fn from(r: RoleV1) -> Self {
        match r {
            RoleV1::Boot => Self::Boot,
            RoleV1::Server => Self::Server,
            RoleV1::Client => Self::Client,
        }
    }
}

impl From<&Constraints> for ConstraintsV1 {
    fn from(c: &Constraints) -> Self {
        Self {
            roles: c.roles.iter().copied().map(RoleV1::from).collect(),
            nodes: c.nodes.clone(),
            labels: c.labels.clone(),
        }
    }
}

impl From<ConstraintsV1> for Constraints {
    fn from(c: ConstraintsV1) -> Self {
        Self {
            roles: c.roles.into_iter().map(Role::from).collect(),
            nodes: c.nodes,
            labels: c.labels,
        }
    }
}

impl From<&ServiceDef> for ServiceDefV1 {
    fn from(d: &ServiceDef) -> Self {
        Self {
            name: d.name.clone(),
            spec: ContainerSpecV1::from(&d.spec),
            replicas: d.replicas,
            constraints: ConstraintsV1::from(&d.constraints),
        }
    }
}

impl TryFrom<ServiceDefV1> for ServiceDef {
    type Error = WireError;
    fn try_from(w: ServiceDefV1) -> Result<Self, WireError> {
        Ok(Self::new(
            w.name,
            ContainerSpec::try_from(w.spec).map_err(|e| e.within("spec"))?,
            w.replicas,
            w.constraints.into(),
        ))
    }
}

impl From<&UpdateConfig> for UpdateConfigV2 {
    fn from(u: &UpdateConfig) -> Self {
        Self {
            parallel: u.parallel,
            delay: DurationV1(u.delay),
            monitor: DurationV1(u.monitor),
            failure_action: match u.failure_action {
                FailureAction::Pause => FailureActionV2::Pause,
                FailureAction::Rollback => FailureActionV2::Rollback,
            },
            order: match u.order {
                Order::StopFirst => OrderV2::StopFirst,
                Order::StartFirst => OrderV2::StartFirst,
            },
        }
    }
}

impl TryFrom<UpdateConfigV2> for UpdateConfig {
    type Error = WireError;
    fn try_from(u: UpdateConfigV2) -> Result<Self, WireError> {
        if u.parallel == 0 {
            return Err(WireError::at("parallel", "must be at least 1"));
        }
        for (field, d) in [("delay", u.delay.0), ("monitor", u.monitor.0)] {
            if d > MAX_WAIT {
                return Err(WireError::at(field, "must be at most 24h"));
            }
        }
        Ok(Self {
            parallel: u.parallel,
            delay: u.delay.0,
            monitor: u.monitor.0,
            failure_action: match u.failure_action {
                FailureActionV2::Pause => FailureAction::Pause,
                FailureActionV2::Rollback => FailureAction::Rollback,
            },
            order: match u.order {
                OrderV2::StopFirst => Order::StopFirst,
                OrderV2::StartFirst => Order::StartFirst,
            },
        })
    }
}

impl From<RolloutState> for RolloutStateV2 {
    fn from(s: RolloutState) -> Self {
        match s {
            RolloutState::Updating => Self::Updating,
            RolloutState::RollingBack => Self::RollingBack,
            RolloutState::Paused => Self::Paused,
            RolloutState::Completed => Self::Completed,
            RolloutState::RolledBack => Self::RolledBack,
        }
    }
}

impl From<RolloutStateV2> for RolloutState {
    fn from(s: RolloutStateV2) -> Self {
        match s {
            RolloutStateV2::Updating => Self::Updating,
            RolloutStateV2::RollingBack => Self::RollingBack,
            RolloutStateV2::Paused => Self::Paused,
            RolloutStateV2::Completed => Self::Completed,
            RolloutStateV2::RolledBack => Self::RolledBack,
        }
    }
}

impl From<&Rollout> for RolloutV2 {
    fn from(r: &Rollout) -> Self {
        Self {
            state: r.state.into(),
            updated: r.updated.clone(),
            batch: r.batch.clone(),
            batch_started: r.batch_started,
            seen: r.seen.clone(),
            passed: r.passed.clone(),
            batch_ended: r.batch_ended,
            started: r.started,
            ended: r.ended,
            message: r.message.clone(),
            driver: r.driver,
            back: r.back,
        }
    }
}

impl From<RolloutV2> for Rollout {
    fn from(r: RolloutV2) -> Self {
        Self {
            state: r.state.into(),
            updated: r.updated,
            batch: r.batch,
            batch_started: r.batch_started,
            seen: r.seen,
            passed: r.passed,
            batch_ended: r.batch_ended,
            started: r.started,
            ended: r.ended,
            message: r.message,
            driver: r.driver,
            back: r.back,
        }
    }
}

impl From<&ServiceDef> for ServiceDefV2 {
    fn from(d: &ServiceDef) -> Self {
        Self {
            name: d.name.clone(),
            spec: ContainerSpecV1::from(&d.spec),
            replicas: d.replicas,
            constraints: ConstraintsV1::from(&d.constraints),
            version: d.version,
            previous: d.previous.as_ref().map(|p| PreviousV2 {
                version: p.version,
                spec: ContainerSpecV1::from(&p.spec),
            }),
            update: UpdateConfigV2::from(&d.update),
            rollout: d.rollout.as_ref().map(RolloutV2::from),
        }
    }
}

impl TryFrom<ServiceDefV2> for ServiceDef {
    type Error = WireError;
    fn try_from(w: ServiceDefV2) -> Result<Self, WireError> {
        if w.version == 0 {
            return Err(WireError::at("version", "must be at least 1"));
        }
        let previous = match w.previous {
            Some(p) => Some(Previous {
                version: p.version,
                spec: ContainerSpec::try_from(p.spec).map_err(|e| e.within("previous.spec"))?,
            }),
            None => None,
        };
        Ok(Self {
            name: w.name,
            spec: ContainerSpec::try_from(w.spec).map_err(|e| e.within("spec"))?,
            replicas: w.replicas,
            constraints: w.constraints.into(),
            version: w.version,
            previous,
            update: UpdateConfig::try_from(w.update).map_err(|e| e.within("update"))?,
            rollout: w.rollout.map(Rollout::from),
            created: 0,
        })
    }
}

impl ServiceDef {
    /// A service record from KV or an API answer: version checked, then every field.
    pub fn from_json(bytes: &[u8]) -> Result<Self, WireError> {
        let (v, value) = super::versioned(bytes, SERVICE_READS_UP_TO)?;
        match v {
            1 => super::read_as::<ServiceDefV1>(value).and_then(Self::try_from),
            _ => super::read_as::<ServiceDefV2>(value).and_then(Self::try_from),
        }
    }

    /// Version 1 while the service has no history, so that nodes of the release before
    /// updates keep reading every service nobody updated.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&ServiceRecord(self.clone())).expect("a wire record always serializes")
    }

    fn has_history(&self) -> bool {
        self.version != 1
            || self.previous.is_some()
            || self.rollout.is_some()
            || self.update != UpdateConfig::default()
    }
}

/// A service as the API answers and KV holds it, in the oldest version that says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRecord(pub ServiceDef);

impl Serialize for ServiceRecord {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !self.0.has_history() {
            return ServiceDefV1::from(&self.0).serialize(s);
        }
        #[derive(Serialize)]
        struct Tagged {
            v: u64,
            #[serde(flatten)]
            def: ServiceDefV2,
        }
        Tagged {
            v: 2,
            def: ServiceDefV2::from(&self.0),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for ServiceRecord {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        let bytes = serde_json::to_vec(&value).map_err(serde::de::Error::custom)?;
        ServiceDef::from_json(&bytes)
            .map(ServiceRecord)
            .map_err(serde::de::Error::custom)
    }
}

/// A template record from KV: a container spec at the top level.
pub fn template_from_json(bytes: &[u8]) -> Result<ContainerSpec, WireError> {
    super::decode::<ContainerSpecV1>(bytes).and_then(ContainerSpec::try_from)
}

pub fn template_to_json(spec: &ContainerSpec) -> Vec<u8> {
    super::encode(&ContainerSpecV1::from(spec))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::containers::{CheckSpec, CheckType, NetworkMode, Volume};
    use std::path::Path;
    use std::time::Duration;

    fn fixture(name: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/kv")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The spec of `tests/fixtures/kv/web.toml`, which the `-v0` fixtures were written
    /// from.
    fn web_spec() -> ContainerSpec {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kv/web.toml");
        let declared = crate::config::containers::load_file(&path).unwrap();
        declared[0].spec.clone()
    }

    fn web_def() -> ServiceDef {
        ServiceDef::new(
            ServiceName::try_from("web".to_string()).unwrap(),
            web_spec(),
            3,
            Constraints {
                roles: vec![Role::Server],
                nodes: vec!["0.2".parse().unwrap(), "0.3".parse().unwrap()],
                labels: [("zone".to_string(), "a".to_string())].into(),
            },
        )
    }

    #[test]
    fn todays_service_record_reads_as_the_same_service() {
        // Written by the release before versions, which wrote volumes and checks in a
        // shape it could not read back.
        let def = ServiceDef::from_json(&fixture("service-v0.json")).unwrap();
        assert_eq!(def, web_def());
        assert_eq!(
            crate::containers::spec_hash(&def.spec),
            crate::containers::spec_hash(&web_spec()),
            "the instances' spec hash, and so what runs, is unchanged"
        );
        let check = def.spec.service.as_ref().unwrap().check.as_ref().unwrap();
        assert_eq!(check.interval, std::time::Duration::from_secs(5));
        assert_eq!(def.spec.ports.len(), 2);
        assert_eq!(def.spec.env["MODE"], "prod");
    }

    /// The hash label of every running container comes from the containers.d struct's
    /// serialization: a change to that struct (even a new optional field) replaces
    /// every container on upgrade. This pins it, so such a change is made on purpose.
    #[test]
    fn the_spec_hash_of_a_known_spec_is_unchanged() {
        assert_eq!(
            crate::containers::spec_hash(&web_spec()),
            "ace0d5f83ae734e0"
        );
    }

    #[test]
    fn todays_image_service_and_template_records_read() {
        let def = ServiceDef::from_json(&fixture("service-image-v0.json")).unwrap();
        assert_eq!(def.name.as_str(), "api");
        assert_eq!(def.replicas, 2);
        assert_eq!(def.spec.image.as_str(), "busybox:1.36");
        assert_eq!(
            def.spec.command.as_deref(),
            Some(&["sleep".to_string(), "1d".to_string()][..])
        );
        assert_eq!(def.constraints, Constraints::default());
        assert_eq!(
            template_from_json(&fixture("template-v0.json")).unwrap(),
            web_spec()
        );
    }

    #[test]
    fn internal_to_wire_to_internal_is_the_same() {
        let def = web_def();
        assert_eq!(ServiceDef::from_json(&def.to_json()).unwrap(), def);
        let spec = web_spec();
        assert_eq!(template_from_json(&template_to_json(&spec)).unwrap(), spec);
        // Each volume form and a tcp check.
        let mut other = spec.clone();
        other.volumes.push(Volume::From {
            container: "db".into(),
            read_only: true,
        });
        other.service.as_mut().unwrap().check = Some(
            CheckSpec::from_parts(
                CheckType::Tcp,
                None,
                Duration::from_secs(90),
                Duration::from_millis(1500),
            )
            .unwrap(),
        );
        other.network = NetworkMode::Container("db".into());
        assert_eq!(
            template_from_json(&template_to_json(&other)).unwrap(),
            other
        );
        let image_def = ServiceDef::from_json(&fixture("service-image-v0.json")).unwrap();
        assert_eq!(
            ServiceDef::from_json(&image_def.to_json()).unwrap(),
            image_def
        );
    }

    /// What this release writes is what the release before versions reads: its reader
    /// was serde's derive over the containers.d schema, with unknown fields denied.
    #[test]
    fn records_written_now_read_in_the_release_before_versions() {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct TodaysServiceDef {
            name: ServiceName,
            spec: ContainerSpec,
            replicas: u32,
            #[serde(default)]
            constraints: TodaysConstraints,
        }
        #[derive(Deserialize, Default)]
        #[serde(deny_unknown_fields, default)]
        #[allow(dead_code)]
        struct TodaysConstraints {
            roles: Vec<Role>,
            nodes: Vec<NodeAddress>,
            labels: BTreeMap<String, String>,
        }
        let def = web_def();
        let old: TodaysServiceDef = crate::http::parse_json(&def.to_json()).unwrap();
        assert_eq!(old.spec, def.spec);
        assert_eq!(old.replicas, 3);
        let spec: ContainerSpec = crate::http::parse_json(&template_to_json(&def.spec)).unwrap();
        assert_eq!(spec, def.spec);
    }

    #[test]
    fn a_newer_record_is_one_error_naming_its_version() {
        let mut v2: serde_json::Value =
            serde_json::from_slice(&fixture("service-v0.json")).unwrap();
        v2["v"] = 3.into();
        v2["spec"]["seccomp"] = "strict".into();
        let e = ServiceDef::from_json(&serde_json::to_vec(&v2).unwrap()).unwrap_err();
        assert_eq!(
            e,
            WireError::NewerVersion {
                found: 3,
                newest: 2
            }
        );
        let e = template_from_json(br#"{"v":3,"name":"t","image":"b:1"}"#).unwrap_err();
        assert_eq!(
            e,
            WireError::NewerVersion {
                found: 3,
                newest: 1
            }
        );
    }

    #[test]
    fn an_updated_service_is_version_two_and_reads_back_the_same() {
        use crate::placement::rollout::start_update;
        let def = web_def();
        assert!(!String::from_utf8(def.to_json()).unwrap().contains("\"v\""));
        let mut spec = def.spec.clone();
        spec.env.insert("MODE".into(), "canary".into());
        let updated = start_update(&def, spec, UpdateConfig::default(), 7);
        let json = updated.to_json();
        assert!(
            json.starts_with(br#"{"v":2,"#),
            "{}",
            String::from_utf8_lossy(&json)
        );
        assert_eq!(ServiceDef::from_json(&json).unwrap(), updated);
        let back: ServiceRecord = serde_json::from_slice(&json).unwrap();
        assert_eq!(back.0, updated);
        let e = ServiceDef::from_json(br#"{"v":2,"name":"web","replicas":1,"version":2,"spec":{"name":"web","image":"b:1"},"update":{"parallel":0}}"#).unwrap_err();
        assert_eq!(e.to_string(), "update.parallel: must be at least 1");
        let e = ServiceDef::from_json(br#"{"v":2,"name":"web","replicas":1,"version":2,"spec":{"name":"web","image":"b:1"},"update":{"monitor":"48h"}}"#).unwrap_err();
        assert_eq!(e.to_string(), "update.monitor: must be at most 24h");
    }

    #[test]
    fn bad_fields_are_named_by_path() {
        let cases: [(&str, &str); 6] = [
            (
                r#"{"name":"web","replicas":-1,"spec":{"name":"web","image":"busybox:1"}}"#,
                "replicas: ",
            ),
            (
                r#"{"name":"web","replicas":1,"spec":{"name":"web","image":"busybox"}}"#,
                "spec.image: image `busybox` has no tag",
            ),
            (
                r#"{"name":"web","replicas":1,"spec":{"name":"web","image":"b:1","volumes":[{"container":"/a"},{"container":"rel"}]}}"#,
                "spec.volumes[1]: volume `container` must be an absolute path",
            ),
            (
                r#"{"name":"web","replicas":1,"spec":{"name":"web","image":"b:1","service":{"check":{"type":"tcp","path":"/"}}}}"#,
                "spec.service.check: a tcp check takes no `path`",
            ),
            (
                r#"{"name":"web","replicas":1,"spec":{"name":"web","image":"b:1","service":{"check":{"type":"http","interval":5}}}}"#,
                "spec.service.check.interval: invalid type: integer `5`, expected a duration",
            ),
            (
                r#"{"name":"web","replicas":1,"spec":{"name":"web","image":"b:1","imagee":"x"}}"#,
                "spec.imagee: unknown field `imagee`",
            ),
        ];
        for (json, want) in cases {
            let e = ServiceDef::from_json(json.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(want), "{json}: {e}");
        }
    }
}
