//! Version 1 of the service records in KV and of the API's service and template bodies.
//!
//! - `arpanet/cluster/services/NAME`: a [`ServiceDefV1`]; the API answers with it too.
//! - `arpanet/cluster/templates/NAME`: a [`ContainerSpecV1`] at the top level.
//! - `arpanet/cluster/drained/ADDRESS`: no body (the key's presence is the record).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{ContainerSpecV1, WireError};
use crate::addressing::NodeAddress;
use crate::config::Role;
use crate::config::containers::ContainerSpec;
use crate::placement::{Constraints, ServiceDef, ServiceName};

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
        Ok(Self {
            name: w.name,
            spec: ContainerSpec::try_from(w.spec).map_err(|e| e.within("spec"))?,
            replicas: w.replicas,
            constraints: w.constraints.into(),
        })
    }
}

impl ServiceDef {
    /// A service record from KV or an API answer: version checked, then every field.
    pub fn from_json(bytes: &[u8]) -> Result<Self, WireError> {
        super::decode::<ServiceDefV1>(bytes).and_then(Self::try_from)
    }

    pub fn to_json(&self) -> Vec<u8> {
        super::encode(&ServiceDefV1::from(self))
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
        ServiceDef {
            name: ServiceName::try_from("web".to_string()).unwrap(),
            spec: web_spec(),
            replicas: 3,
            constraints: Constraints {
                roles: vec![Role::Server],
                nodes: vec!["0.2".parse().unwrap(), "0.3".parse().unwrap()],
                labels: [("zone".to_string(), "a".to_string())].into(),
            },
        }
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
        v2["v"] = 2.into();
        v2["spec"]["seccomp"] = "strict".into();
        let e = ServiceDef::from_json(&serde_json::to_vec(&v2).unwrap()).unwrap_err();
        assert_eq!(e, WireError::NewerVersion { found: 2 });
        let e = template_from_json(br#"{"v":3,"name":"t","image":"b:1"}"#).unwrap_err();
        assert_eq!(e, WireError::NewerVersion { found: 3 });
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
