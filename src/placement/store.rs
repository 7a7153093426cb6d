//! Cluster desired state in Consul KV, under one prefix so one blocking query sees
//! every change:
//!
//! - `arpanet/cluster/services/NAME`: a [`ServiceDef`] as JSON
//! - `arpanet/cluster/templates/NAME`: a container spec as JSON
//! - `arpanet/cluster/drained/ADDRESS`: present while the node is drained

use anyhow::Context;

use super::{ServiceDef, ServiceName, TemplateName};
use crate::addressing::NodeAddress;
use crate::config::containers::ContainerSpec;
use crate::consul::client::Consul;
use crate::http::parse_json;

pub const PREFIX: &str = "arpanet/cluster/";
const SERVICES: &str = "arpanet/cluster/services/";
const TEMPLATES: &str = "arpanet/cluster/templates/";
const DRAINED: &str = "arpanet/cluster/drained/";

/// Everything under [`PREFIX`], parsed. Entries that do not parse are named in
/// `broken` (their instances are left alone, as containers.d does with broken files).
#[derive(Debug, Default, Clone)]
pub struct ClusterState {
    pub services: Vec<ServiceDef>,
    pub templates: Vec<(String, ContainerSpec)>,
    pub drained: Vec<NodeAddress>,
    /// Service names whose entry is unreadable, with why.
    pub broken: Vec<(String, String)>,
}

pub fn service_key(name: &ServiceName) -> String {
    format!("{SERVICES}{name}")
}

pub fn template_key(name: &TemplateName) -> String {
    format!("{TEMPLATES}{name}")
}

pub fn drained_key(node: NodeAddress) -> String {
    format!("{DRAINED}{node}")
}

/// Parses the entries of a recursive read of [`PREFIX`].
pub fn parse(entries: &[(String, Vec<u8>)]) -> ClusterState {
    let mut state = ClusterState::default();
    for (key, value) in entries {
        if let Some(name) = key.strip_prefix(SERVICES) {
            match parse_json::<ServiceDef>(value) {
                Ok(def) if def.name.as_str() == name => state.services.push(def),
                Ok(def) => state.broken.push((
                    name.to_string(),
                    format!("its name field says `{}`", def.name),
                )),
                Err(e) => state.broken.push((name.to_string(), e)),
            }
        } else if let Some(name) = key.strip_prefix(TEMPLATES) {
            // A broken template only matters when a service is created from it; a key
            // no API call could have written (`..`, `/`) names none.
            if TemplateName::try_from(name.to_string()).is_ok()
                && let Ok(spec) = parse_json::<ContainerSpec>(value)
            {
                state.templates.push((name.to_string(), spec));
            }
        } else if let Some(node) = key.strip_prefix(DRAINED)
            && let Ok(node) = node.parse()
        {
            state.drained.push(node);
        }
    }
    state.services.sort_by(|a, b| a.name.cmp(&b.name));
    state
}

pub async fn load(consul: &Consul) -> anyhow::Result<ClusterState> {
    let (entries, _) = consul
        .kv_list(PREFIX, None, std::time::Duration::ZERO)
        .await
        .context("read the cluster's services from Consul KV")?;
    Ok(parse(&entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_sorted_into_services_templates_and_drains() {
        let web = br#"{"name":"web","replicas":2,"spec":{"name":"web","image":"busybox:1"}}"#;
        let state = parse(&[
            (format!("{SERVICES}web"), web.to_vec()),
            (
                format!("{SERVICES}bad"),
                b"{\"name\":\"bad\",\"replicas\":-1".to_vec(),
            ),
            (format!("{SERVICES}other"), web.to_vec()),
            (
                format!("{TEMPLATES}t"),
                br#"{"name":"t","image":"busybox:1"}"#.to_vec(),
            ),
            (
                format!("{TEMPLATES}../services/x"),
                br#"{"name":"t","image":"busybox:1"}"#.to_vec(),
            ),
            (format!("{DRAINED}0.3"), Vec::new()),
        ]);
        assert_eq!(state.templates.len(), 1);
        assert_eq!(state.services.len(), 1);
        assert_eq!(state.services[0].replicas, 2);
        assert_eq!(state.templates[0].0, "t");
        assert_eq!(state.drained, ["0.3".parse::<NodeAddress>().unwrap()]);
        let broken: Vec<_> = state.broken.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(broken, ["bad", "other"]);
    }

    #[test]
    fn json_errors_name_the_field() {
        let e = parse_json::<ServiceDef>(
            br#"{"name":"web","replicas":-1,"spec":{"name":"web","image":"busybox:1"}}"#,
        )
        .unwrap_err();
        assert!(e.starts_with("replicas: "), "{e}");
        let e = parse_json::<ServiceDef>(
            br#"{"name":"web","replicas":1,"spec":{"name":"web","image":"busybox"}}"#,
        )
        .unwrap_err();
        assert!(e.starts_with("spec.image: ") && e.contains("no tag"), "{e}");
    }
}
