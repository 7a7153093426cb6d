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
pub mod overlay;
pub mod snapshot;

pub use snapshot::{Inputs, Snapshot, Unavailable};

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

/// Runs `reconcilers` in order over `snap` (only those named in `only`, unless it is
/// empty). A restart (Docker, Consul) makes the snapshot read what came from that
/// service again, and re-runs the reconcilers before it that the restart disturbed.
/// Every reconciler runs even if another failed.
pub async fn run(
    reconcilers: &mut [Box<dyn Reconciler>],
    snap: &mut Snapshot<'_>,
    only: &[&str],
) -> Outcome {
    let mut pass = Outcome::default();
    for i in 0..reconcilers.len() {
        if !only.is_empty() && !only.contains(&reconcilers[i].name()) {
            continue;
        }
        let outcome = reconcilers[i].converge(snap).await;
        let restarted = outcome.restarted;
        absorb(&mut pass, reconcilers[i].name(), outcome);
        if let Some(service) = restarted {
            snap.refresh(service).await;
            for earlier in reconcilers[..i].iter_mut() {
                if earlier.rerun_after(service) {
                    let again = earlier.converge(snap).await;
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

/// Adds a reconciler's outcome to the pass's, each line prefixed with its name.
fn absorb(pass: &mut Outcome, name: &str, outcome: Outcome) {
    pass.changes
        .extend(outcome.changes.into_iter().map(|c| format!("{name}: {c}")));
    for f in outcome.errors {
        pass.errors.push(Failure {
            what: match f.what.as_str() {
                "" => name.to_string(),
                what => format!("{name}: {what}"),
            },
            why: f.why,
        });
    }
}
