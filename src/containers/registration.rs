//! Running containers as Consul services (registrator's job), with their routable
//! container address. Every ID starts with `arpanet:<node>:`, so a resync removes
//! this node's stale entries (no ghosts) and never another node's.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::containers::{CheckKind, CheckSpec};
use crate::consul::client::{AgentCheck, Consul, ServiceRegistration};
use crate::docker::engine::Running;

pub const LABEL_SERVICE: &str = "arpanet.service";
pub const LABEL_TAGS: &str = "arpanet.service.tags";
pub const LABEL_PORT: &str = "arpanet.service.port";
pub const LABEL_CHECK: &str = "arpanet.service.check";
/// The cluster service version an instance runs, from version 2 on.
pub const LABEL_VERSION: &str = "arpanet.service.version";
/// Its registration's meta key: what a rollout watches for.
pub const META_VERSION: &str = "version";

/// The check of a containers.d `service`, as it travels in a label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckLabel {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub path: String,
    pub interval: String,
    pub timeout: String,
}

impl From<&CheckSpec> for CheckLabel {
    fn from(c: &CheckSpec) -> Self {
        let (kind, path) = match &c.kind {
            CheckKind::Http { path } => ("http".to_string(), path.clone()),
            CheckKind::Tcp => ("tcp".to_string(), String::new()),
        };
        Self {
            kind,
            path,
            interval: format!("{}s", c.interval.as_secs().max(1)),
            timeout: format!("{}s", c.timeout.as_secs().max(1)),
        }
    }
}

pub fn id_prefix(node: &str) -> String {
    format!("arpanet:{node}:")
}

/// Ports a container exposes, TCP ones first.
fn exposed_ports(c: &Running) -> Vec<u16> {
    let mut ports: Vec<(bool, u16)> = c
        .exposed
        .iter()
        .filter_map(|p| {
            let (port, proto) = p.split_once('/').unwrap_or((p, "tcp"));
            port.parse().ok().map(|n| (proto != "tcp", n))
        })
        .collect();
    ports.sort();
    ports.into_iter().map(|(_, p)| p).collect()
}

/// A setting from a label, else from the environment (registrator reads both).
fn setting<'a>(c: &'a Running, key: &str) -> Option<&'a str> {
    c.labels
        .get(key)
        .or_else(|| c.env.get(key))
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

fn tags(text: Option<&str>) -> Vec<String> {
    text.map(|t| {
        t.split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(String::from)
            .collect()
    })
    .unwrap_or_default()
}

/// The services a running container asks for: arpanet's labels (containers.d's
/// `service`, or `arpanet.service=NAME`), else registrator's SERVICE_* settings.
pub fn services(node: &str, node_address: &str, c: &Running) -> Vec<ServiceRegistration> {
    // A host-network container answers on its host's addresses: it registers at the
    // node's overlay address, which every node routes to (as registrator uses the
    // host's address for one).
    let ip = match (c.ip, c.host_network) {
        (Some(ip), _) => ip,
        (None, true) => match node_address.parse::<crate::addressing::NodeAddress>() {
            Ok(a) => a.overlay_ip(),
            Err(_) => return Vec::new(),
        },
        (None, false) => return Vec::new(),
    };
    let ports = exposed_ports(c);
    let mut wanted: Vec<(String, u16, Vec<String>, Option<CheckLabel>)> = Vec::new();
    if let Some(name) = c.labels.get(LABEL_SERVICE) {
        let port = c
            .labels
            .get(LABEL_PORT)
            .and_then(|p| p.parse().ok())
            .or(ports.first().copied())
            .unwrap_or(0);
        let check = c
            .labels
            .get(LABEL_CHECK)
            .and_then(|j| serde_json::from_str(j).ok());
        wanted.push((
            name.clone(),
            port,
            tags(c.labels.get(LABEL_TAGS).map(String::as_str)),
            check,
        ));
    } else {
        for port in &ports {
            if let Some(name) = setting(c, &format!("SERVICE_{port}_NAME")) {
                let t = setting(c, &format!("SERVICE_{port}_TAGS")).or(setting(c, "SERVICE_TAGS"));
                wanted.push((name.to_string(), *port, tags(t), None));
            }
        }
        if wanted.is_empty()
            && let Some(name) = setting(c, "SERVICE_NAME")
        {
            wanted.push((
                name.to_string(),
                ports.first().copied().unwrap_or(0),
                tags(setting(c, "SERVICE_TAGS")),
                None,
            ));
        }
    }
    wanted
        .into_iter()
        .map(|(name, port, tags, check)| {
            let check = check.map(|ch| AgentCheck {
                http: (ch.kind == "http").then(|| format!("http://{ip}:{port}{}", ch.path)),
                tcp: (ch.kind == "tcp").then(|| format!("{ip}:{port}")),
                interval: ch.interval,
                timeout: ch.timeout,
            });
            ServiceRegistration {
                id: format!("{}{}:{port}", id_prefix(node), c.name),
                name,
                tags,
                address: ip.to_string(),
                port,
                meta: {
                    let mut meta = BTreeMap::from([
                        ("arpanet_node".to_string(), node_address.to_string()),
                        ("container_id".to_string(), c.id.clone()),
                    ]);
                    // Only from version 2: an upgrade re-registers nothing.
                    if let Some(v) = c.labels.get(LABEL_VERSION) {
                        meta.insert(META_VERSION.to_string(), v.clone());
                    }
                    meta
                },
                check,
            }
        })
        .collect()
}

/// Registers what runs and is missing or different, deregisters this node's entries
/// for what no longer runs. Returns a line per change.
pub async fn sync(
    consul: &Consul,
    node: &str,
    node_address: &str,
    running: &[Running],
) -> anyhow::Result<Vec<String>> {
    let desired: Vec<ServiceRegistration> = running
        .iter()
        .flat_map(|c| services(node, node_address, c))
        .collect();
    let prefix = id_prefix(node);
    let current = consul.agent_services().await?;
    let mut changes = Vec::new();
    for (id, s) in current.iter().filter(|(id, _)| id.starts_with(&prefix)) {
        if !desired.iter().any(|d| &d.id == id) {
            consul.deregister_service(id).await?;
            changes.push(format!("deregistered {} ({id})", s.service));
        }
    }
    for d in &desired {
        // A new container under an old registration (an instance replaced between two
        // syncs) is registered afresh: Consul keeps a re-registered check's status, and
        // the old container's `passing` would vouch for the new one until its first
        // check, to DNS and to a rollout waiting for it to pass.
        if let Some(s) = current.get(&d.id)
            && s.meta.get("container_id") != d.meta.get("container_id")
        {
            consul.deregister_service(&d.id).await?;
        }
        let same = current.get(&d.id).is_some_and(|s| {
            s.service == d.name
                && s.address == d.address
                && s.port == d.port
                && s.tags == d.tags
                && s.meta == d.meta
        });
        if !same {
            consul.register_service(d).await?;
            changes.push(format!(
                "registered {} at {}:{} ({})",
                d.name, d.address, d.port, d.id
            ));
        }
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(labels: &[(&str, &str)], env: &[(&str, &str)], exposed: &[&str]) -> Running {
        Running {
            id: "c0ffee".into(),
            name: "web".into(),
            ip: Some("10.0.1.5".parse().unwrap()),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            exposed: exposed.iter().map(|s| s.to_string()).collect(),
            host_network: false,
        }
    }

    #[test]
    fn arpanet_label_with_its_only_port() {
        let s = services(
            "h1",
            "0.1",
            &container(
                &[(LABEL_SERVICE, "www"), (LABEL_TAGS, "a, b")],
                &[],
                &["8080/tcp"],
            ),
        );
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].id, "arpanet:h1:web:8080");
        assert_eq!(
            (s[0].name.as_str(), s[0].address.as_str(), s[0].port),
            ("www", "10.0.1.5", 8080)
        );
        assert_eq!(s[0].tags, ["a", "b"]);
        assert_eq!(s[0].meta["arpanet_node"], "0.1");
    }

    #[test]
    fn check_from_containers_d_becomes_a_consul_check() {
        let check = r#"{"type":"http","path":"/health","interval":"5s","timeout":"1s"}"#;
        let s = services(
            "h1",
            "0.1",
            &container(
                &[
                    (LABEL_SERVICE, "www"),
                    (LABEL_PORT, "80"),
                    (LABEL_CHECK, check),
                ],
                &[],
                &[],
            ),
        );
        let c = s[0].check.as_ref().unwrap();
        assert_eq!(c.http.as_deref(), Some("http://10.0.1.5:80/health"));
        assert_eq!((c.interval.as_str(), c.timeout.as_str()), ("5s", "1s"));
    }

    #[test]
    fn registrator_settings_from_env_and_per_port() {
        let s = services(
            "h1",
            "0.1",
            &container(
                &[],
                &[("SERVICE_NAME", "legacy"), ("SERVICE_TAGS", "v1")],
                &["6379/tcp"],
            ),
        );
        assert_eq!(
            (s[0].name.as_str(), s[0].port, s[0].tags.clone()),
            ("legacy", 6379, vec!["v1".to_string()])
        );
        let s = services(
            "h1",
            "0.1",
            &container(
                &[("SERVICE_80_NAME", "http"), ("SERVICE_443_NAME", "https")],
                &[],
                &["80/tcp", "443/tcp"],
            ),
        );
        let names: Vec<(&str, u16)> = s.iter().map(|r| (r.name.as_str(), r.port)).collect();
        assert_eq!(names, [("http", 80), ("https", 443)]);
    }

    #[test]
    fn no_service_no_ip_no_registration() {
        assert!(services("h1", "0.1", &container(&[], &[], &["80/tcp"])).is_empty());
        let mut c = container(&[(LABEL_SERVICE, "x")], &[], &[]);
        c.ip = None;
        assert!(services("h1", "0.1", &c).is_empty());
    }

    #[test]
    fn a_host_network_container_registers_at_its_nodes_overlay_address() {
        let check = r#"{"type":"http","path":"/health","interval":"5s","timeout":"1s"}"#;
        let mut c = container(
            &[
                (LABEL_SERVICE, "agent"),
                (LABEL_PORT, "9100"),
                (LABEL_CHECK, check),
            ],
            &[],
            &[],
        );
        c.ip = None;
        c.host_network = true;
        let s = services("h1", "0.2", &c);
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].address.as_str(), s[0].port), ("10.255.0.2", 9100));
        let http = s[0].check.as_ref().unwrap().http.as_deref();
        assert_eq!(http, Some("http://10.255.0.2:9100/health"));
    }
}
