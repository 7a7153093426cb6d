//! The Docker engine's configuration (daemon.json, the systemd drop-in).

use super::{Reconciler, Snapshot};
use crate::docker;
use crate::outcome::{Outcome, Restarted};

#[derive(Default)]
pub struct DockerConfig {
    /// What was last said about the Docker API having no TLS identity, so it is said
    /// when it starts, changes and ends, not every pass.
    no_tls: Option<String>,
}

#[async_trait::async_trait]
impl Reconciler for DockerConfig {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn converge(&mut self, snap: &Snapshot<'_>) -> Outcome {
        let mut outcome = Outcome::default();
        match docker::reconcile(snap.config, snap.systemd).await {
            Ok(done) => {
                if done.changes.iter().any(|c| c.starts_with("restarted")) {
                    outcome.restarted = Some(Restarted::Docker);
                }
                outcome.changes = done.changes;
                // Not a failure of the pass: the node works, only not as a Docker host
                // for other nodes.
                let no_tls = done.no_tls.map(|e| e.to_string());
                if no_tls != self.no_tls {
                    match &no_tls {
                        Some(why) => tracing::warn!(
                            "docker api: {why}; Docker is on its unix socket only until the identity is there"
                        ),
                        None if self.no_tls.is_some() => tracing::info!(
                            "docker api: the node's identity is there; arpanetd relays {} to dockerd with TLS",
                            crate::plan::docker_api(snap.config)
                        ),
                        None => {}
                    }
                    self.no_tls = no_tls;
                }
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
