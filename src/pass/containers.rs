//! Containers: containers.d's, this node's share of the cluster services, and the
//! running ones' Consul registrations.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{Reconciler, Snapshot};
use crate::config::containers as containers_cfg;
use crate::containers::converge::{self, Options, Pass};
use crate::containers::registration;
use crate::containers::{LABEL_CLUSTER, LABEL_FILE};
use crate::outcome::{Failure, Outcome};
use crate::placement;

/// How often arpanetd asks registries whether a tag names a newer image.
const PULL_INTERVAL: Duration = Duration::from_secs(300);

fn outcome_of(pass: anyhow::Result<Pass>) -> Outcome {
    match pass {
        Ok(pass) => {
            let mut outcome = pass.report;
            // Unreadable declarations first, as a pass reads them before it acts.
            let mut errors: crate::outcome::ErrorList = pass
                .diagnostics
                .iter()
                .map(|d| Failure::new("", d))
                .collect();
            errors.extend(outcome.errors);
            outcome.errors = errors;
            outcome
        }
        Err(e) => {
            let mut outcome = Outcome::default();
            outcome.fail_with(&e);
            outcome
        }
    }
}

/// containers.d against the local engine.
#[derive(Default)]
pub struct DeclaredContainers {
    /// When images were last pulled for `update.pull`; a registry is not asked every pass.
    last_pull: Option<Instant>,
}

impl DeclaredContainers {
    /// Whether this pass pulls images (and marks that it did).
    fn pull_due(&mut self) -> bool {
        let now = Instant::now();
        let due = self
            .last_pull
            .is_none_or(|at| now.duration_since(at) >= PULL_INTERVAL);
        if due {
            self.last_pull = Some(now);
        }
        due
    }
}

#[async_trait::async_trait]
impl Reconciler for DeclaredContainers {
    fn name(&self) -> &'static str {
        "containers"
    }

    async fn converge(&mut self, snap: &Snapshot<'_>) -> Outcome {
        let dir = &snap.config.paths.containers_dir;
        let (engine, images) = match (&snap.docker, &snap.images) {
            (Ok(engine), Ok(images)) => (engine, images),
            (Err(e), _) | (_, Err(e)) => {
                // With nothing declared and no engine there is nothing to do (a host
                // that runs the overlay only), which is not an error.
                let mut outcome = Outcome::default();
                let declared = containers_cfg::load_dir(dir);
                if !declared.containers.is_empty() || !declared.diagnostics.is_empty() {
                    outcome.fail("", e);
                }
                return outcome;
            }
        };
        let swarm = crate::paths::sync_socket(&snap.config.paths);
        let pull = self.pull_due();
        let opts = Options {
            apply: true,
            swarm: Some(&swarm),
            progress: &|_, _, _| {},
        };
        outcome_of(converge::converge_files(engine, images, dir, pull, &opts).await)
    }
}

/// This node's share of the cluster services (placement). Without Consul or Docker
/// nothing changes: running instances are never stopped for an outage.
pub struct ClusterServices;

#[async_trait::async_trait]
impl Reconciler for ClusterServices {
    fn name(&self) -> &'static str {
        "cluster services"
    }

    async fn converge(&mut self, snap: &Snapshot<'_>) -> Outcome {
        let mut outcome = Outcome::default();
        if snap.consul.is_none() {
            return outcome;
        }
        let (engine, images, state) = match (&snap.docker, &snap.images, &snap.cluster) {
            (Ok(engine), Ok(images), Ok(state)) => (engine, images, state),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                outcome.fail("", e);
                return outcome;
            }
        };
        // Counting only itself, a node would take every service's instances.
        let Some(catalog) = &snap.catalog else {
            outcome.fail("", "Consul's catalog has not answered yet");
            return outcome;
        };
        let me = placement::reconcile::me(&snap.config.node);
        let nodes = placement::reconcile::cluster_nodes(catalog, &me);
        let swarm = crate::paths::sync_socket(&snap.config.paths);
        let opts = Options {
            apply: true,
            swarm: Some(&swarm),
            progress: &|_, _, _| {},
        };
        let pass = placement::reconcile::converge(engine, images, &me, &nodes, state, &opts).await;
        // After the pass, so that what it started counts as running.
        match engine.list_all().await {
            Ok(list) => {
                let desired = placement::reconcile::desired_counts(&me, &nodes, state);
                crate::metrics::service_instances(&instance_counts(desired, &list));
            }
            Err(e) => tracing::debug!("metrics: no instance counts this pass: {e:#}"),
        }
        outcome_of(pass)
    }
}

/// `(desired, running)` by service: placement's counts, and the running containers of
/// the cluster scope. A service that runs here but is in KV no more counts until it is
/// stopped.
fn instance_counts(
    desired: BTreeMap<String, u32>,
    containers: &[bollard::models::ContainerSummary],
) -> BTreeMap<String, (u32, u32)> {
    let mut counts: BTreeMap<String, (u32, u32)> =
        desired.into_iter().map(|(s, n)| (s, (n, 0))).collect();
    for c in containers {
        let running = c.state.is_some_and(|s| s.to_string() == "running");
        let labels = c.labels.as_ref();
        let service = labels
            .filter(|l| l.contains_key(LABEL_CLUSTER))
            .and_then(|l| l.get(LABEL_FILE));
        if let (true, Some(service)) = (running, service) {
            counts.entry(service.clone()).or_default().1 += 1;
        }
    }
    counts
}

/// Running containers as Consul services.
pub struct ServiceRegistrations;

#[async_trait::async_trait]
impl Reconciler for ServiceRegistrations {
    fn name(&self) -> &'static str {
        "services"
    }

    async fn converge(&mut self, snap: &Snapshot<'_>) -> Outcome {
        let mut outcome = Outcome::default();
        let (Some(consul), Ok(engine)) = (snap.consul, &snap.docker) else {
            return outcome;
        };
        let result = async {
            let running = engine.running().await?;
            let node = snap.config.node_name();
            let address = snap.plan.address.to_string();
            registration::sync(consul, &node, &address, &running).await
        }
        .await;
        match result {
            Ok(changes) => outcome.changes = changes,
            Err(e) => outcome.fail_with(&e),
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ContainerSummary, ContainerSummaryStateEnum};

    fn container(labels: &[(&str, &str)], state: ContainerSummaryStateEnum) -> ContainerSummary {
        ContainerSummary {
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            state: Some(state),
            ..Default::default()
        }
    }

    #[test]
    fn running_instances_are_counted_by_service_beside_the_desired_ones() {
        use ContainerSummaryStateEnum::{EXITED, RUNNING};
        let cluster = |service| [(LABEL_CLUSTER, "1"), (LABEL_FILE, service)];
        let desired = BTreeMap::from([("web".to_string(), 2), ("db".to_string(), 0)]);
        let list = [
            container(&cluster("web"), RUNNING),
            container(&cluster("web"), EXITED),
            container(&cluster("old"), RUNNING),
            // containers.d's: a file label, no cluster one.
            container(&[(LABEL_FILE, "web")], RUNNING),
        ];
        let counts = instance_counts(desired, &list);
        assert_eq!(
            counts.into_iter().collect::<Vec<_>>(),
            [
                ("db".to_string(), (0, 0)),
                ("old".to_string(), (0, 1)),
                ("web".to_string(), (2, 1)),
            ]
        );
    }
}
