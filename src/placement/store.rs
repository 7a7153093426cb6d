//! Cluster desired state in Consul KV, under one prefix so one blocking query sees
//! every change:
//!
//! - `arpanet/cluster/services/NAME`: a service (`wire::ServiceDefV1`)
//! - `arpanet/cluster/templates/NAME`: a container spec (`wire::ContainerSpecV1`)
//! - `arpanet/cluster/drained/ADDRESS`: present while the node is drained
//!
//! The records' format, and how one of another release reads, is [`super::wire`]'s.

use anyhow::Context;

use super::{ServiceDef, ServiceName, TemplateName};
use crate::addressing::NodeAddress;
use crate::config::containers::ContainerSpec;
use crate::consul::client::Consul;

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
    /// Service names whose entry is unreadable, with why (naming the key).
    pub broken: Vec<(String, String)>,
    /// Template names whose entry is unreadable, with why (naming the key): a service
    /// made from one says so rather than that no such template exists.
    pub broken_templates: Vec<(String, String)>,
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
            match ServiceDef::from_json(value) {
                Ok(def) if def.name.as_str() == name => state.services.push(def),
                Ok(def) => state.broken.push((
                    name.to_string(),
                    format!("{key}: its name field says `{}`", def.name),
                )),
                Err(e) => state.broken.push((name.to_string(), format!("{key}: {e}"))),
            }
        } else if let Some(name) = key.strip_prefix(TEMPLATES) {
            // A broken template only matters when a service is created from it; a key
            // no API call could have written (`..`, `/`) names none.
            if TemplateName::try_from(name.to_string()).is_ok() {
                match super::wire::records::template_from_json(value) {
                    Ok(spec) => state.templates.push((name.to_string(), spec)),
                    Err(e) => state
                        .broken_templates
                        .push((name.to_string(), format!("{key}: {e}"))),
                }
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
        .kv_list_created(PREFIX, None, std::time::Duration::ZERO)
        .await
        .context("read the cluster's services from Consul KV")?;
    let created: std::collections::BTreeMap<&str, u64> =
        entries.iter().map(|(k, _, c)| (k.as_str(), *c)).collect();
    let pairs: Vec<(String, Vec<u8>)> = entries
        .iter()
        .map(|(k, v, _)| (k.clone(), v.clone()))
        .collect();
    let mut state = parse(&pairs);
    for s in &mut state.services {
        s.created = created
            .get(service_key(&s.name).as_str())
            .copied()
            .unwrap_or(0);
    }
    Ok(state)
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
            (
                format!("{SERVICES}next"),
                br#"{"v":3,"name":"next","replicas":1,"spec":{"name":"next","image":"busybox:1"},"surge":1}"#.to_vec(),
            ),
            (
                format!("{TEMPLATES}next"),
                br#"{"v":2,"name":"next","image":"busybox:1"}"#.to_vec(),
            ),
        ]);
        assert_eq!(state.templates.len(), 1);
        assert_eq!(state.services.len(), 1);
        assert_eq!(state.services[0].replicas, 2);
        assert_eq!(state.templates[0].0, "t");
        assert_eq!(state.drained, ["0.3".parse::<NodeAddress>().unwrap()]);
        let broken: Vec<_> = state.broken.iter().map(|(n, _)| n.as_str()).collect();
        // A record of a newer release is skipped like any unreadable one (its
        // instances stay), with one error naming its key and version.
        assert_eq!(broken, ["bad", "other", "next"]);
        assert_eq!(
            state.broken[2].1,
            "arpanet/cluster/services/next: record version 3 is newer than this arpanet reads (up to 2); upgrade this node"
        );
        assert_eq!(state.broken_templates.len(), 1);
        assert!(
            state.broken_templates[0]
                .1
                .starts_with("arpanet/cluster/templates/next: record version 2 is newer"),
            "{:?}",
            state.broken_templates
        );
    }

    #[test]
    fn json_errors_name_the_field() {
        let e = ServiceDef::from_json(
            br#"{"name":"web","replicas":-1,"spec":{"name":"web","image":"busybox:1"}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("replicas: "), "{e}");
        let e = ServiceDef::from_json(
            br#"{"name":"web","replicas":1,"spec":{"name":"web","image":"busybox"}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("spec.image: ") && e.contains("no tag"), "{e}");
    }
}
