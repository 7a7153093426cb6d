//! One convergence pass: a [`Snapshot`] of every input, read once, then an ordered list
//! of reconcilers over it, each comparing its part of the snapshot with the real system.
//!
//! ```text
//! config ──> NodePlan ─┐
//! catalog (watch) ─────┤
//! cluster state (KV) ──┼─> Snapshot ─> hello, overlay, docker, consul agent, node,
//! local images ────────┤               containers, cluster services, services, dns
//! Docker, Consul ──────┘
//! ```

pub mod consul;
pub mod containers;
pub mod dns;
pub mod docker;
pub mod hello;
pub mod identity;
pub mod network;
pub mod overlay;
pub mod snapshot;

pub use snapshot::{Inputs, Snapshot, Unavailable};

use crate::metrics::{self, Pass};
use crate::outcome::{Failure, Outcome, Restarted};

/// One concern of the host, brought to what the snapshot says it should be.
#[async_trait::async_trait]
pub trait Reconciler: Send {
    /// Prefixes its changes and failures in logs and `arpanetd --once`.
    fn name(&self) -> &'static str;

    /// Compares the snapshot with the real system and changes what differs. Goes on
    /// past failures and returns every one.
    async fn converge(&mut self, snap: &Snapshot<'_>) -> Outcome;

    /// Takes out what `converge` put in (`arpanet uninstall-network`).
    async fn uninstall(&mut self, _snap: &Snapshot<'_>) -> Outcome {
        Outcome::default()
    }

    /// Whether a restart of a service by a later reconciler undoes this one's work, so
    /// that it runs again in the same pass (Docker puts its NAT rules first again).
    fn rerun_after(&self, _restarted: Restarted) -> bool {
        false
    }
}

const SLOW_STEP: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs `reconcilers` in order over `snap` (only those named in `only`, unless it is
/// empty). A restart (Docker, Consul) makes the snapshot read what came from that
/// service again, and re-runs the reconcilers before it that the restart disturbed.
/// Every reconciler runs even if another failed. Each step's time and failure go to
/// the metrics, under `pass`.
pub async fn run(
    pass_label: Pass,
    reconcilers: &mut [Box<dyn Reconciler>],
    snap: &mut Snapshot<'_>,
    only: &[&str],
) -> Outcome {
    let mut pass = Outcome::default();
    for i in 0..reconcilers.len() {
        if !only.is_empty() && !only.contains(&reconcilers[i].name()) {
            continue;
        }
        let started = std::time::Instant::now();
        let outcome = reconcilers[i].converge(snap).await;
        let took = started.elapsed();
        metrics::step(
            pass_label,
            reconcilers[i].name(),
            took,
            !outcome.errors.is_empty(),
        );
        // A pass is serial: one slow step holds up every other, the overlay included.
        if took > SLOW_STEP {
            tracing::warn!(
                "pass step {} took {:.1} s",
                reconcilers[i].name(),
                took.as_secs_f64()
            );
        }
        let restarted = outcome.restarted;
        absorb(&mut pass, reconcilers[i].name(), outcome);
        if let Some(service) = restarted {
            snap.refresh(service).await;
            for earlier in reconcilers[..i].iter_mut() {
                if earlier.rerun_after(service) {
                    let started = std::time::Instant::now();
                    let again = earlier.converge(snap).await;
                    metrics::step(
                        pass_label,
                        earlier.name(),
                        started.elapsed(),
                        !again.errors.is_empty(),
                    );
                    absorb(&mut pass, earlier.name(), again);
                }
            }
        }
    }
    pass
}

/// Undoes `reconcilers` in reverse order, going on past failures.
pub async fn uninstall(reconcilers: &mut [Box<dyn Reconciler>], snap: &Snapshot<'_>) -> Outcome {
    let mut pass = Outcome::default();
    for r in reconcilers.iter_mut().rev() {
        let outcome = r.uninstall(snap).await;
        absorb(&mut pass, r.name(), outcome);
    }
    pass
}

/// Adds a reconciler's outcome to the pass's, each line prefixed with its name (once:
/// the network step hands on lines its task's own steps prefixed).
fn absorb(pass: &mut Outcome, name: &str, outcome: Outcome) {
    let prefixed = |line: &str| match line {
        "" => name.to_string(),
        l if l == name || l.starts_with(&format!("{name}: ")) => l.to_string(),
        l => format!("{name}: {l}"),
    };
    pass.changes
        .extend(outcome.changes.iter().map(|c| prefixed(c)));
    for f in outcome.errors {
        pass.errors.push(Failure {
            what: prefixed(&f.what),
            why: f.why,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A reconciler that writes down when it ran, and does what it is told.
    struct Step {
        name: &'static str,
        log: Arc<Mutex<Vec<&'static str>>>,
        restarts: Option<Restarted>,
        fails: bool,
        rerun_after_docker: bool,
    }

    #[async_trait::async_trait]
    impl Reconciler for Step {
        fn name(&self) -> &'static str {
            self.name
        }
        async fn converge(&mut self, _: &Snapshot<'_>) -> Outcome {
            self.log.lock().unwrap().push(self.name);
            let mut o = Outcome::default();
            o.change("did it");
            if self.fails {
                o.fail("thing", "broke");
            }
            o.restarted = self.restarts.take();
            o
        }
        async fn uninstall(&mut self, _: &Snapshot<'_>) -> Outcome {
            self.log.lock().unwrap().push(self.name);
            Outcome::default()
        }
        fn rerun_after(&self, restarted: Restarted) -> bool {
            self.rerun_after_docker && restarted == Restarted::Docker
        }
    }

    fn steps(log: &Arc<Mutex<Vec<&'static str>>>) -> Vec<Box<dyn Reconciler>> {
        let step = |name, restarts, fails, rerun_after_docker| -> Box<dyn Reconciler> {
            Box::new(Step {
                name,
                log: log.clone(),
                restarts,
                fails,
                rerun_after_docker,
            })
        };
        vec![
            step("network", None, false, true),
            step("docker", Some(Restarted::Docker), true, false),
            step("containers", None, false, false),
        ]
    }

    fn config() -> crate::config::Config {
        crate::config::Config::parse(
            std::path::Path::new("t"),
            "[node]\naddress = \"0.1\"\nrole = \"boot\"\n[docker]\nsocket = \"/nonexistent/docker.sock\"\n",
        )
        .unwrap()
    }

    #[tokio::test]
    async fn every_reconciler_runs_in_order_and_a_restart_reruns_what_it_disturbed() {
        let log = Arc::default();
        let mut reconcilers = steps(&log);
        let config = config();
        let mut snap = Snapshot::unread(&config, None);
        let pass = run(Pass::Main, &mut reconcilers, &mut snap, &[]).await;
        // docker failed and restarted; containers still ran; network ran again.
        assert_eq!(
            *log.lock().unwrap(),
            ["network", "docker", "network", "containers"]
        );
        assert_eq!(
            pass.changes,
            [
                "network: did it",
                "docker: did it",
                "network: did it",
                "containers: did it"
            ]
        );
        assert_eq!(pass.errors.to_string(), "docker: thing: broke");
        // The restart made the snapshot read Docker again (there is none here).
        assert!(snap.docker.is_err());
    }

    #[test]
    fn a_step_names_its_lines_once() {
        // The network step hands on what its task's steps (admission, network) said.
        let mut task = Outcome::default();
        task.change("network: add fdb x");
        task.change("admission: bound");
        task.fail("network: add route y", "ENETUNREACH");
        task.fail("", "the network task has ended");
        task.fail("network", "list addresses: EBUSY");
        let mut pass = Outcome::default();
        absorb(&mut pass, "network", task);
        assert_eq!(
            pass.changes,
            ["network: add fdb x", "network: admission: bound"]
        );
        assert_eq!(
            pass.errors.to_string(),
            "network: add route y: ENETUNREACH; network: the network task has ended; network: list addresses: EBUSY"
        );
    }

    #[tokio::test]
    async fn only_the_named_reconcilers_run_and_uninstall_goes_backwards() {
        let log = Arc::default();
        let mut reconcilers = steps(&log);
        let config = config();
        let mut snap = Snapshot::unread(&config, None);
        run(Pass::Main, &mut reconcilers, &mut snap, &["containers"]).await;
        assert_eq!(*log.lock().unwrap(), ["containers"]);
        log.lock().unwrap().clear();
        uninstall(&mut reconcilers, &snap).await;
        assert_eq!(*log.lock().unwrap(), ["containers", "docker", "network"]);
    }
}
