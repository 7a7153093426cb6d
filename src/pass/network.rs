//! The network pass (hello and the overlay) in a task of its own. A running daemon's
//! main pass is serial, and a Docker restart or a placement step can hold it for
//! seconds; a node that a hello admits or Consul's catalog lists must be programmed
//! at once, or the others' Consul agents fail to probe it, mark it dead and wait out
//! Serf's 30 s reconnect. The task is the only writer of the overlay: the main pass's
//! network step asks it for a pass and waits for it, so the order of a pass (the
//! overlay before what travels on it, again after a Docker restart) is kept.

use tokio::sync::{mpsc, oneshot, watch};
use tracing::warn;

use super::{Inputs, Reconciler, Snapshot};
use crate::config::Config;
use crate::consul::client::Consul;
use crate::consul::node::Catalog;
use crate::identity::NodeTls;
use crate::network::admission;
use crate::network::netlink::Netlink;
use crate::network::peers;
use crate::outcome::{FailureLog, Outcome, Restarted};

/// What the network task is started with.
pub struct Task {
    pub config: Config,
    pub netlink: Netlink,
    pub consul: Consul,
    pub tls: NodeTls,
    pub admissions: admission::Shared,
    /// Signalled by the hello task when it admits a node.
    pub admitted_tx: mpsc::Sender<()>,
    pub admitted_rx: mpsc::Receiver<()>,
    /// The catalog watch's answers (`None` until it answers).
    pub catalog: watch::Receiver<Option<Catalog>>,
}

/// A pass the main loop asks for, with the config it runs on (a SIGHUP changes it).
struct Request {
    config: Config,
    /// What the pass did, for the main pass to log and to retry on failure.
    done: oneshot::Sender<Outcome>,
}

/// The main pass's network step: a pass of the network task, waited for.
pub struct Network {
    requests: mpsc::Sender<Request>,
}

impl Task {
    /// Starts the task; it ends when the returned step is dropped. The handle ends
    /// early only if the task panicked: the daemon must not run on without it.
    pub fn spawn(self) -> (Network, tokio::task::JoinHandle<()>) {
        let (requests, rx) = mpsc::channel(1);
        let task = tokio::spawn(self.run(rx));
        (Network { requests }, task)
    }

    async fn run(mut self, mut requests: mpsc::Receiver<Request>) {
        let mut steps: Vec<Box<dyn Reconciler>> = vec![
            Box::new(super::hello::Hello::new(
                self.admissions.clone(),
                self.admitted_tx.clone(),
                self.tls.clone(),
            )),
            Box::new(super::overlay::Overlay {
                netlink: self.netlink.clone(),
            }),
        ];
        let mut log = FailureLog::default();
        loop {
            let done = tokio::select! {
                request = requests.recv() => match request {
                    Some(Request { config, done }) => {
                        self.config = config;
                        Some(done)
                    }
                    None => return,
                },
                Some(()) = self.admitted_rx.recv() => None,
                Ok(()) = self.catalog.changed() => {
                    self.keep_cache();
                    None
                }
            };
            let outcome = self.pass(&mut steps).await;
            // A pass the main pass asked for is logged with it; the task's own here.
            match done {
                Some(done) => {
                    log.note(&outcome);
                    let _ = done.send(outcome);
                }
                None => log.log(&outcome),
            }
        }
    }

    /// The catalog's last answer, on disk for the next start (before Consul answers).
    fn keep_cache(&mut self) {
        if let Some(catalog) = self.catalog.borrow_and_update().as_ref()
            && let Err(e) = peers::save_cache(
                &crate::paths::peers_cache(&self.config.paths),
                &catalog.peers(),
            )
        {
            warn!("cannot keep the peer cache: {e:#}");
        }
    }

    async fn pass(&self, steps: &mut [Box<dyn Reconciler>]) -> Outcome {
        let (admitted, turned_away) = {
            let mut a = self.admissions.lock().expect("admissions");
            (a.current(admission::unix_now()), a.rejected())
        };
        let inputs = Inputs {
            catalog: self.catalog.borrow().clone(),
            read_catalog: false,
            admitted,
            turned_away,
        };
        let mut snap = Snapshot::network(&self.config, &self.consul, &self.netlink, inputs).await;
        super::run(crate::metrics::Pass::Network, steps, &mut snap, &[]).await
    }
}

#[async_trait::async_trait]
impl Reconciler for Network {
    fn name(&self) -> &'static str {
        "network"
    }

    async fn converge(&mut self, snap: &Snapshot<'_>) -> Outcome {
        let (done, wait) = oneshot::channel();
        let request = Request {
            config: snap.config.clone(),
            done,
        };
        let ended = || {
            let mut o = Outcome::default();
            o.fail("", "the network task has ended");
            o
        };
        if self.requests.send(request).await.is_err() {
            return ended();
        }
        wait.await.unwrap_or_else(|_| ended())
    }

    fn rerun_after(&self, restarted: Restarted) -> bool {
        // Docker puts its NAT rules first again when it starts.
        restarted == Restarted::Docker
    }
}
