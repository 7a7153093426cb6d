//! Carrying out a containers.d plan on the local engine.

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, HostConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};

use super::{Action, Desired, EAGER_SUFFIX, LABEL_FILE, LABEL_HASH, LABEL_IMAGE_ID, LABEL_NAME};
use crate::config::containers::{NetworkMode, Protocol, RestartPolicy as Restart, Volume};
use crate::docker::engine::Container;
use crate::docker::engine::Engine;
use crate::outcome::Outcome;

/// Seconds a replaced or removed container gets to exit after SIGTERM.
const STOP_GRACE_SECS: i32 = 10;

/// Docker's create body for a declared container, with arpanet's labels.
pub fn body(d: &Desired) -> ContainerCreateBody {
    let s = &d.spec;
    let mut labels: HashMap<String, String> = s.labels.clone().into_iter().collect();
    labels.insert(d.scope.label().into(), "true".into());
    labels.insert(LABEL_NAME.into(), d.name.clone());
    labels.insert(LABEL_FILE.into(), d.file.clone());
    labels.insert(LABEL_HASH.into(), d.hash.clone());
    if let Some(id) = &d.image_id {
        labels.insert(LABEL_IMAGE_ID.into(), id.clone());
    }
    if let Some(service) = &s.service {
        use super::registration::{CheckLabel, LABEL_CHECK, LABEL_PORT, LABEL_SERVICE, LABEL_TAGS};
        labels.insert(
            LABEL_SERVICE.into(),
            service.name.clone().unwrap_or_else(|| d.name.clone()),
        );
        if !service.tags.is_empty() {
            labels.insert(LABEL_TAGS.into(), service.tags.join(","));
        }
        let port = service
            .port
            .or_else(|| (s.ports.len() == 1).then(|| s.ports[0].container));
        if let Some(port) = port {
            labels.insert(LABEL_PORT.into(), port.to_string());
        }
        if let Some(check) = &service.check {
            let json = serde_json::to_string(&CheckLabel::from(check)).expect("serializable");
            labels.insert(LABEL_CHECK.into(), json);
        }
    }

    let port_key = |container: u16, protocol: Protocol| {
        format!(
            "{container}/{}",
            if protocol == Protocol::Udp {
                "udp"
            } else {
                "tcp"
            }
        )
    };
    let exposed: Vec<String> = s
        .ports
        .iter()
        .map(|p| port_key(p.container, p.protocol))
        .collect();
    let bindings: HashMap<String, Option<Vec<PortBinding>>> = s
        .ports
        .iter()
        .filter_map(|p| {
            p.host.map(|h| {
                let binding = PortBinding {
                    host_ip: None,
                    host_port: Some(h.to_string()),
                };
                (port_key(p.container, p.protocol), Some(vec![binding]))
            })
        })
        .collect();
    let mut binds = Vec::new();
    let mut anonymous = Vec::new();
    let mut from = Vec::new();
    for v in &s.volumes {
        match v {
            Volume::Bind {
                host,
                container,
                read_only,
            } => binds.push(format!(
                "{}:{}{}",
                host.display(),
                container.display(),
                if *read_only { ":ro" } else { "" }
            )),
            Volume::Anonymous { container } => anonymous.push(container.display().to_string()),
            Volume::From {
                container,
                read_only,
            } => from.push(format!(
                "{container}{}",
                if *read_only { ":ro" } else { "" }
            )),
        }
    }
    let network_mode = match &s.network {
        NetworkMode::Bridge => "bridge".to_string(),
        NetworkMode::None => "none".to_string(),
        NetworkMode::Host => "host".to_string(),
        NetworkMode::Container(c) => format!("container:{c}"),
    };
    let restart = match s.restart {
        Restart::Always => RestartPolicyNameEnum::ALWAYS,
        Restart::OnFailure => RestartPolicyNameEnum::ON_FAILURE,
        Restart::Never => RestartPolicyNameEnum::NO,
    };
    let nonempty = |v: Vec<String>| if v.is_empty() { None } else { Some(v) };
    ContainerCreateBody {
        image: Some(s.image.as_str().to_string()),
        cmd: s.command.clone(),
        entrypoint: s.entrypoint.clone(),
        env: nonempty(s.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        labels: Some(labels),
        exposed_ports: nonempty(exposed),
        volumes: nonempty(anonymous),
        host_config: Some(HostConfig {
            cpu_shares: s.cpu.map(|c| i64::from(c.0)),
            memory: s.memory.map(|m| i64::try_from(m.0).unwrap_or(i64::MAX)),
            privileged: Some(s.privileged),
            network_mode: Some(network_mode),
            binds: nonempty(binds),
            volumes_from: nonempty(from),
            port_bindings: if bindings.is_empty() {
                None
            } else {
                Some(bindings)
            },
            restart_policy: Some(RestartPolicy {
                name: Some(restart),
                maximum_retry_count: None,
            }),
            ..HostConfig::default()
        }),
        ..ContainerCreateBody::default()
    }
}

/// Applies every action; one that fails is reported and the others still run. Then
/// removes the images that only the replaced or removed containers used. `progress`
/// hears of each action (its index and the total) before it starts.
pub async fn apply(
    engine: &Engine,
    actions: &[Action],
    desired: &[Desired],
    actual: &[Container],
    progress: &(dyn Fn(usize, usize, &Action) + Sync),
) -> Outcome {
    let mut report = Outcome::default();
    let mut released = Vec::new();
    for (i, action) in actions.iter().enumerate() {
        progress(i, actions.len(), action);
        match run(engine, action, desired).await {
            Ok(()) => {
                report.change(action.to_string());
                let old = match action {
                    Action::Replace { old, .. } => Some(old),
                    Action::Remove { id, .. } => Some(id),
                    _ => None,
                };
                // Only containers.d's images go with their containers (dockerup did
                // so); a cluster service's instances come back when placement moves.
                if let Some(image) = old
                    .and_then(|id| actual.iter().find(|c| &c.id == id))
                    .filter(|c| c.labels.contains_key(super::LABEL_MANAGED))
                    .and_then(|c| c.labels.get(LABEL_IMAGE_ID))
                {
                    released.push(image.clone());
                }
            }
            Err(e) => report.fail(action.to_string(), format!("{e:#}")),
        }
    }
    released.sort();
    released.dedup();
    for image in released {
        match engine.remove_image_if_unused(&image).await {
            Ok(true) => report.change(format!(
                "remove image {} (no longer used)",
                crate::docker::engine::short(image.trim_start_matches("sha256:"))
            )),
            Ok(false) => {}
            Err(e) => report.fail_with(&e),
        }
    }
    report
}

async fn run(engine: &Engine, action: &Action, desired: &[Desired]) -> anyhow::Result<()> {
    let spec_of = |name: &str| {
        desired
            .iter()
            .find(|d| d.name == name)
            .expect("planned from desired")
    };
    match action {
        Action::Create { name } => create_and_start(engine, spec_of(name), name).await,
        Action::Replace {
            name,
            old,
            eager: false,
            ..
        } => {
            engine.stop_and_remove(old, STOP_GRACE_SECS).await?;
            create_and_start(engine, spec_of(name), name).await
        }
        Action::Replace {
            name,
            old,
            eager: true,
            ..
        } => {
            // The new one runs before the old one stops; a crash in between leaves
            // states the next plan cleans up (duplicate, or the temporary name).
            let temporary = format!("{name}{EAGER_SUFFIX}");
            let id = create_and_start_id(engine, spec_of(name), &temporary).await?;
            engine.stop_and_remove(old, STOP_GRACE_SECS).await?;
            engine.rename(&id, name).await.map_err(Into::into)
        }
        Action::Start { id, .. } => engine.start(id).await.map_err(Into::into),
        Action::Rename { name, id } => engine.rename(id, name).await.map_err(Into::into),
        Action::Remove { id, .. } => engine
            .stop_and_remove(id, STOP_GRACE_SECS)
            .await
            .map_err(Into::into),
    }
}

async fn create_and_start(engine: &Engine, d: &Desired, docker_name: &str) -> anyhow::Result<()> {
    create_and_start_id(engine, d, docker_name)
        .await
        .map(|_| ())
}

async fn create_and_start_id(
    engine: &Engine,
    d: &Desired,
    docker_name: &str,
) -> anyhow::Result<String> {
    let image = d.spec.image.as_str();
    if d.image_id.is_none() && !engine.image_present(image).await? {
        engine.pull(image).await?;
    }
    let id = engine.create(docker_name, body(d)).await?;
    engine.start(&id).await?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::containers::load_dir;

    #[test]
    fn every_option_reaches_docker() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.toml"),
            r#"[[container]]
name = "web"
image = "busybox:1"
cpu = 512
memory = "64m"
command = ["httpd", "-f"]
privileged = true
network = "container:db"
volumes = [{ host = "/srv", container = "/www", mode = "ro" }, { container = "/cache" }, { from = "db" }]
ports = [{ container = 80, host = 8080 }, { container = 53, protocol = "udp" }]
env = { A = "1" }
restart = "on-failure"
labels = { team = "infra" }
"#,
        )
        .unwrap();
        let d = &super::super::desired(&load_dir(dir.path()))[0];
        let b = body(d);
        let h = b.host_config.as_ref().unwrap();
        assert_eq!(b.image.as_deref(), Some("busybox:1"));
        assert_eq!(b.env, Some(vec!["A=1".to_string()]));
        assert_eq!(
            b.exposed_ports,
            Some(vec!["80/tcp".to_string(), "53/udp".to_string()])
        );
        assert_eq!(b.volumes, Some(vec!["/cache".to_string()]));
        assert_eq!(h.binds, Some(vec!["/srv:/www:ro".to_string()]));
        assert_eq!(h.volumes_from, Some(vec!["db".to_string()]));
        assert_eq!(h.cpu_shares, Some(512));
        assert_eq!(h.memory, Some(64 << 20));
        assert_eq!(h.network_mode.as_deref(), Some("container:db"));
        assert_eq!(
            h.restart_policy.as_ref().unwrap().name,
            Some(RestartPolicyNameEnum::ON_FAILURE)
        );
        let bound = h.port_bindings.as_ref().unwrap();
        assert_eq!(bound.len(), 1);
        assert_eq!(
            bound["80/tcp"].as_ref().unwrap()[0].host_port.as_deref(),
            Some("8080")
        );
        let labels = b.labels.unwrap();
        assert_eq!(labels["team"], "infra");
        assert_eq!(labels[crate::containers::LABEL_MANAGED], "true");
        assert_eq!(labels[LABEL_FILE], "a.toml");
        assert_eq!(labels[LABEL_HASH], d.hash);
    }
}
