//! The Docker engine's configuration (daemon.json, the systemd drop-in).

use super::{Reconciler, Snapshot};
use crate::docker;
use crate::outcome::{Outcome, Restarted};

pub struct DockerConfig;

#[async_trait::async_trait]
impl Reconciler for DockerConfig {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn converge(&mut self, snap: &Snapshot<'_>) -> Outcome {
        let mut outcome = Outcome::default();
        match docker::reconcile(snap.config, snap.systemd).await {
            Ok(changes) => {
                if changes.iter().any(|c| c.starts_with("restarted")) {
                    outcome.restarted = Some(Restarted::Docker);
                }
                outcome.changes = changes;
            }
            Err(e) => outcome.fail_with(&e),
        }
        outcome
    }

    async fn uninstall(&mut self, snap: &Snapshot<'_>) -> Outcome {
        let mut outcome = Outcome::default();
        for e in docker::uninstall(snap.config, snap.systemd).await {
            outcome.fail("", e);
        }
        outcome
    }
}
