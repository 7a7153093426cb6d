//! The arpanetd main loop: converge the host to its config at start, on every resync
//! tick, on SIGHUP (which re-reads the config first) and whenever Consul's catalog of
//! nodes changes; stop on SIGTERM.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::config::{Config, ConsulMode, ServiceMode};
use crate::consul::node::Catalog;
use crate::consul::watch::{Answer, BlockingQuery};
use crate::consul::{self, client::Consul};
use crate::docker::engine::Engine;
use crate::identity::NodeTls;
use crate::network::admission;
use crate::network::netlink::Netlink;
use crate::outcome::{FailureLog, Outcome};
use crate::pass::{self, Inputs, Reconciler, Snapshot};
use crate::paths;
use crate::placement;
use crate::plan::NodePlan;
use crate::sd::{self, NotifyState};
use crate::systemd::Systemd;

/// arpanetd: the arpanet node daemon (run by systemd as arpanetd.service).
#[derive(Debug, clap::Parser)]
#[command(name = "arpanetd", version)]
pub struct Opts {
    /// The node's config file.
    #[arg(long, env = "ARPANET_CONFIG", default_value = crate::config::DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Converge the host once, print what changed as JSON, and exit (non-zero on errors).
    #[arg(long, conflicts_with = "sync")]
    pub once: bool,
    /// Run the image sync service instead (arpanet-sync.service, socket-activated): it
    /// exits after `sync.idle_timeout` with nothing to do.
    #[arg(long)]
    pub sync: bool,
}

pub struct Daemon {
    config_path: PathBuf,
    config: Config,
    netlink: Netlink,
    /// The system bus, where there is one (hosts run by systemd).
    systemd: Option<Systemd>,
    consul: Consul,
    /// Healthy nodes as Consul's catalog last listed them (`None` until it answers),
    /// read when a pass starts: a pass that starts before the loop has taken a change
    /// (it was busy in the pass before) must not place services on the old nodes.
    /// No watch with `--once`.
    catalog_feed: Option<watch::Receiver<Option<Catalog>>>,
    /// Nodes admitted by hello, and hellos turned away (shared with the hello task).
    admissions: admission::Shared,
    /// Signalled by the hello task when it admits a node.
    admitted_tx: tokio::sync::mpsc::Sender<()>,
    admitted_rx: Option<tokio::sync::mpsc::Receiver<()>>,
    /// In the order they run; a running daemon puts the hello service first.
    reconcilers: Vec<Box<dyn Reconciler>>,
    /// The node's TLS (its certificate, and the process's one revocation list,
    /// `tls.revoked()`), shared with the cluster API's listener and clients.
    pub tls: NodeTls,
    /// Logs each failure when it starts, changes or ends, not on every pass.
    log: FailureLog,
    /// After a pass that failed: the pause before the next try, and when it is due
    /// (none once the pause is the resync's, which runs a pass anyway).
    retry: Option<Duration>,
    retry_at: Option<tokio::time::Instant>,
}

/// What `arpanetd --once` prints: one line per change and per failure.
#[derive(Debug, Default, Serialize)]
pub struct PassReport {
    pub changes: Vec<String>,
    pub errors: Vec<String>,
}

impl From<&Outcome> for PassReport {
    fn from(o: &Outcome) -> Self {
        Self {
            changes: o.changes.clone(),
            errors: o.errors.iter().map(|e| e.to_string()).collect(),
        }
    }
}

/// The reconcilers of a pass, in order: the overlay first (everything else travels on
/// it), then the engines, then what runs on them.
fn reconcilers(netlink: &Netlink, tls: &NodeTls) -> Vec<Box<dyn Reconciler>> {
    vec![
        Box::new(pass::overlay::Overlay {
            netlink: netlink.clone(),
        }),
        Box::new(pass::docker::DockerConfig::default()),
        Box::new(pass::consul::ConsulAgent {
            netlink: netlink.clone(),
        }),
        Box::new(pass::consul::ConsulAcl),
        Box::new(pass::consul::NodeRegistration),
        Box::new(pass::containers::DeclaredContainers::default()),
        Box::new(pass::containers::ClusterServices),
        Box::new(pass::containers::ServiceRegistrations),
        Box::new(pass::dns::Resolved {
            netlink: netlink.clone(),
        }),
        // Last: a client asks a server over the overlay the passes before brought up.
        Box::new(pass::identity::Renewal::new(tls.clone())),
    ]
}

impl Daemon {
    /// Fails, with the config's `FILE:LINE:COL` message, before anything is changed.
    pub fn load(config_path: &Path) -> anyhow::Result<Self> {
        let config = Config::load(config_path)?;
        let netlink = Netlink::connect()?;
        // Impatient: a pass must not wait out an election; what fails is retried next pass.
        let consul = Consul::impatient_for_node(&config);
        let (admitted_tx, admitted_rx) = tokio::sync::mpsc::channel(1);
        let tls = NodeTls::from_config(&config);
        Ok(Self {
            config_path: config_path.to_path_buf(),
            config,
            reconcilers: reconcilers(&netlink, &tls),
            netlink,
            systemd: None,
            consul,
            catalog_feed: None,
            admissions: admission::Shared::default(),
            admitted_tx,
            admitted_rx: Some(admitted_rx),
            tls,
            log: FailureLog::default(),
            retry: None,
            retry_at: None,
        })
    }

    /// Connects to systemd when the config needs it or a system bus exists.
    pub async fn connect_systemd(&mut self) -> anyhow::Result<()> {
        let needed = self.config.docker.mode == ServiceMode::Systemd
            || self.config.consul.mode == ConsulMode::Systemd;
        if !needed && !Path::new("/run/dbus/system_bus_socket").exists() {
            return Ok(());
        }
        match Systemd::connect().await {
            Ok(s) => self.systemd = Some(s),
            Err(e) if needed => return Err(e.context("docker.mode or consul.mode = \"systemd\"")),
            Err(e) => warn!("{e:#}; systemd-resolved will not be configured"),
        }
        Ok(())
    }

    fn inputs(&self) -> Inputs {
        let (admitted, turned_away) = {
            let mut a = self.admissions.lock().expect("admissions");
            (a.current(admission::unix_now()), a.rejected())
        };
        let catalog = self
            .catalog_feed
            .as_ref()
            .and_then(|rx| rx.borrow().clone());
        Inputs {
            // Without a catalog watch (`--once`), or before the watch has answered (the
            // first pass, or Consul just started), the pass reads the catalog itself.
            read_catalog: self.admitted_rx.is_some() || catalog.is_none(),
            catalog,
            admitted,
            turned_away,
        }
    }

    /// Runs the reconcilers named `only` (all when empty) over a fresh snapshot.
    async fn pass(&mut self, only: &[&str]) -> Outcome {
        let inputs = self.inputs();
        let mut snap = Snapshot::read(
            &self.config,
            self.systemd.as_ref(),
            &self.consul,
            &self.netlink,
            inputs,
        )
        .await;
        pass::run(
            crate::metrics::Pass::Main,
            &mut self.reconcilers,
            &mut snap,
            only,
        )
        .await
    }

    /// Brings the host to the config once. Every reconciler runs even if another failed.
    pub async fn converge(&mut self) -> Outcome {
        let outcome = self.pass(&[]).await;
        self.log.log(&outcome);
        let resync = self.config.overlay.resync;
        self.retry = next_retry(self.retry, !outcome.errors.is_empty(), resync);
        self.retry_at = self
            .retry
            .filter(|d| *d < resync)
            .map(|d| tokio::time::Instant::now() + d);
        outcome
    }

    /// `arpanetd --once`: one round of hellos with the join peers, so that a single pass
    /// admits them the way a running daemon would, then one pass.
    pub async fn converge_once(&mut self) -> PassReport {
        let failed = self.admit_once().await.err();
        let outcome = self.converge().await;
        let mut report = PassReport::from(&outcome);
        if let Some(e) = failed {
            report.errors.insert(0, format!("{e:#}"));
        }
        report
    }

    async fn admit_once(&mut self) -> anyhow::Result<()> {
        if self.config.node.join.is_empty() {
            return Ok(());
        }
        let snap = Snapshot::read(
            &self.config,
            self.systemd.as_ref(),
            &self.consul,
            &self.netlink,
            Inputs::default(),
        )
        .await;
        let speaker = pass::hello::speaker(&snap, &self.tls)?;
        let socket = speaker.bind().await.map_err(|e| {
            anyhow::anyhow!(
                "admission: bind UDP {}:{}: {e}",
                speaker.underlay_ip,
                speaker.port
            )
        })?;
        speaker
            .exchange(&socket, &self.admissions, &self.tls, Duration::from_secs(3))
            .await;
        Ok(())
    }

    pub async fn run(mut self) -> anyhow::Result<()> {
        self.log_plan();
        let mut hangup = signal(SignalKind::hangup())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let (catalog_tx, mut catalog_rx) = watch::channel(None);
        self.catalog_feed = Some(catalog_rx.clone());
        self.tls.follow_revocations();
        // A running daemon keeps a hello task, and runs it and the overlay in a task of
        // their own; `--once` does one exchange, then the overlay in its one pass.
        assert_eq!(self.reconcilers[0].name(), "network");
        let (network, mut network_task) = pass::network::Task {
            config: self.config.clone(),
            // A socket of its own: the kernel runs one dump at a time per netlink
            // socket and fails a second with EBUSY, and this task dumps while the
            // main pass's steps do.
            netlink: Netlink::connect()?,
            consul: self.consul.clone(),
            tls: self.tls.clone(),
            admissions: self.admissions.clone(),
            admitted_tx: self.admitted_tx.clone(),
            admitted_rx: self.admitted_rx.take().expect("run once"),
            catalog: catalog_rx.clone(),
        }
        .spawn();
        self.reconcilers[0] = Box::new(network);
        let (events_tx, mut events_rx) = tokio::sync::mpsc::channel(1);
        let (docker_up_tx, mut docker_up_rx) = tokio::sync::mpsc::channel(1);
        let (cluster_tx, mut cluster_rx) = tokio::sync::mpsc::channel(1);
        if self.config.consul.mode != ConsulMode::Disabled {
            tokio::spawn(watch_catalog(Consul::for_node(&self.config), catalog_tx));
            tokio::spawn(watch_containers(
                self.config.docker.socket.clone(),
                events_tx,
                docker_up_tx,
            ));
            tokio::spawn(watch_cluster_state(
                Consul::for_node(&self.config),
                cluster_tx,
            ));
            // A store that cannot be opened (the state dir) leaves the node without a
            // registry, said once; everything else runs.
            let registry = match crate::registry::open(&self.config, self.tls.clone()).await {
                Ok(r) => {
                    crate::registry::server::spawn_loopback(self.config.registry.port, r.clone());
                    crate::registry::sweeper::spawn(&self.config, r.store.clone());
                    Some(r)
                }
                Err(e) => {
                    warn!("no node registry: {e}");
                    None
                }
            };
            crate::api::server::spawn(&self.config, self.tls.clone(), registry);
            tokio::spawn(crate::placement::driver::run(
                Consul::for_node(&self.config),
                crate::placement::reconcile::me(&self.config.node),
            ));
            crate::join::server::spawn(&self.config, self.admissions.clone());
            tokio::spawn(crate::join::revocations::watch(
                Consul::for_node(&self.config),
                paths::revoked_serials(&self.config.paths),
            ));
        }
        // An external engine keeps its own listeners; arpanet's daemon.json, the
        // unix socket only, needs the relay for Docker's API on the Docker plane.
        if self.config.docker.mode != ServiceMode::External {
            crate::docker::api_relay::spawn(&self.config, self.tls.clone());
        }

        let (files_tx, mut files_rx) = tokio::sync::mpsc::channel(1);
        // Kept for the loop's lifetime: dropping it stops the watch.
        let _files_watch = watch_files(&self.config.paths.containers_dir, files_tx);
        // Ready before the first pass: that pass may ask systemd to start units that
        // are ordered after arpanetd (arpanet-consul.service), whose jobs would wait
        // for this one's start job. A bad arpanet.toml has failed the start already.
        sd::notify(&[NotifyState::Ready, NotifyState::Status("converging")]);
        // The watchdog is fed by its own task: one pass can legitimately take longer
        // than WatchdogSec (a Docker restart, stopping containers with a grace period).
        sd::spawn_watchdog();
        self.converge().await;
        sd::notify(&[NotifyState::Status("running")]);
        info!("arpanetd ready");
        let mut resync = tokio::time::interval(self.config.overlay.resync);
        resync.reset();
        loop {
            tokio::select! {
                _ = hangup.recv() => {
                    if self.reload() {
                        resync = tokio::time::interval(self.config.overlay.resync);
                    }
                    self.converge().await;
                }
                Ok(()) = catalog_rx.changed() => {
                    let catalog: Option<Catalog> = catalog_rx.borrow_and_update().clone();
                    if let Some(catalog) = &catalog {
                        info!(
                            peers = catalog.nodes.len(),
                            healthy = catalog.healthy().count(),
                            "Consul's catalog of nodes changed"
                        );
                    }
                    self.converge().await;
                }
                Some(()) = docker_up_rx.recv() => {
                    // dockerd is (back) up: its bridge exists for Consul's DNS, and this
                    // node's containers can run.
                    self.converge().await;
                }
                Some(()) = events_rx.recv() => {
                    // A container started or stopped: only its registration follows.
                    let outcome = self.pass(&["services"]).await;
                    for c in &outcome.changes {
                        info!("{c}");
                    }
                    for e in outcome.errors.iter() {
                        warn!("{e}");
                    }
                }
                Some(()) = cluster_rx.recv() => {
                    info!("the cluster's services changed in Consul KV");
                    self.converge().await;
                }
                Some(()) = files_rx.recv() => {
                    // Editors write in several steps; apply the settled file.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    while files_rx.try_recv().is_ok() {}
                    self.converge().await;
                }
                _ = resync.tick() => {
                    self.converge().await;
                }
                _ = tokio::time::sleep_until(self.retry_at.unwrap_or_else(tokio::time::Instant::now)), if self.retry_at.is_some() => {
                    self.converge().await;
                }
                ended = &mut network_task => {
                    // Without it nothing programs the overlay: exit, and let systemd
                    // start a whole daemon again.
                    anyhow::bail!("the network task ended: {}", match ended {
                        Err(e) => e.to_string(),
                        Ok(()) => "without an error".into(),
                    });
                }
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
            }
        }
        sd::notify(&[NotifyState::Stopping]);
        info!("arpanetd stopping; the overlay stays up (arpanet uninstall-network removes it)");
        Ok(())
    }

    /// A bad new config is reported and ignored: what runs keeps running on the old one.
    /// Returns whether a new config was taken.
    fn reload(&mut self) -> bool {
        // No RELOADING=1/READY=1 here: systemd's reload job ends when ExecReload's kill
        // returns, and a RELOADING=1 arriving after that put the unit back in
        // "reloading" for a moment (seen as a not-active arpanetd right after a reload).
        match Config::load(&self.config_path) {
            Ok(config) => {
                if config.node.address != self.config.node.address {
                    warn!("node.address changed; the new addresses replace the old ones now");
                }
                self.consul = Consul::impatient_for_node(&config);
                self.config = config;
                info!(config = %self.config_path.display(), "configuration reloaded");
                true
            }
            Err(e) => {
                error!("{e}; keeping the running configuration");
                false
            }
        }
    }

    fn log_plan(&self) {
        let p = NodePlan::from_config(&self.config);
        info!(
            address = %p.address, role = %p.role, cluster = %p.cluster,
            overlay_ip = %p.overlay_ip, docker_ip = %p.docker_ip, consul_ip = %p.consul_ip,
            container_subnet = %p.container_subnet,
            "loaded {}", self.config_path.display()
        );
    }
}

/// Follows the registered `arpanet` instances (with their health) with blocking queries and publishes them
/// as peers whenever they change. Errors (an agent still starting) are logged once
/// per outage and retried.
async fn watch_catalog(consul: Consul, tx: watch::Sender<Option<Catalog>>) {
    let mut query = BlockingQuery::new(Duration::from_secs(30));
    let mut failing = false;
    loop {
        let answer = query
            .next(|index, wait| consul.all_instances(consul::node::SERVICE, index, wait))
            .await;
        match answer {
            Ok(Answer { value: entries, .. }) => {
                if failing {
                    info!("Consul's catalog answers again");
                    failing = false;
                }
                let previous = tx
                    .borrow()
                    .as_ref()
                    .map(|c| c.nodes.clone())
                    .unwrap_or_default();
                let view = consul::node::catalog_from(&entries, &previous);
                tx.send_if_modified(|current| {
                    let changed = current.as_ref() != Some(&view);
                    if changed {
                        let before = current
                            .as_ref()
                            .map(|c| c.refused.clone())
                            .unwrap_or_default();
                        for r in view.refused.iter().filter(|r| !before.contains(r)) {
                            warn!(
                                "not believing node {}'s claim {}: {}",
                                r.node, r.claims, r.reason
                            );
                        }
                        *current = Some(view);
                    }
                    changed
                });
            }
            Err(e) => {
                if !failing {
                    warn!("cannot follow Consul's catalog: {e}; retrying");
                    failing = true;
                }
            }
        }
        if tx.is_closed() {
            return;
        }
    }
}

/// Follows the cluster's desired state in KV (services, templates, drains) with blocking
/// queries and signals each change, so a new service is placed at once.
async fn watch_cluster_state(consul: Consul, tx: tokio::sync::mpsc::Sender<()>) {
    let mut query = BlockingQuery::new(Duration::from_secs(30));
    loop {
        // The catalog watcher reports Consul outages; this one only retries.
        if let Ok(Answer { changed: true, .. }) = query
            .next(|index, wait| consul.kv_list(placement::store::PREFIX, index, wait))
            .await
        {
            let _ = tx.try_send(());
        }
        if tx.is_closed() {
            return;
        }
    }
}

/// Watches containers.d (inotify), so a changed file is applied at once instead of at
/// the next resync. A directory that does not exist is not watched; resync covers it.
fn watch_files(
    dir: &Path,
    tx: tokio::sync::mpsc::Sender<()>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| warn!("cannot watch {}: {e}", dir.display()))
    .ok()?;
    match watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
        Ok(()) => Some(watcher),
        Err(e) => {
            info!(
                "not watching {} ({e}); changes there apply at the next resync",
                dir.display()
            );
            None
        }
    }
}

/// Signals `tx` whenever a container starts, stops or goes away, so its Consul
/// registration follows at once rather than at the next resync. Reconnects when dockerd
/// restarts, and signals `up` when it connects after dockerd was not there: a whole
/// pass then renders what needs Docker's bridge (Consul's DNS on it) and runs this
/// node's containers, instead of at the next resync.
async fn watch_containers(
    socket: std::path::PathBuf,
    tx: tokio::sync::mpsc::Sender<()>,
    up: tokio::sync::mpsc::Sender<()>,
) {
    use futures::StreamExt;
    const RELEVANT: [&str; 7] = [
        "start", "die", "stop", "kill", "destroy", "pause", "unpause",
    ];
    let mut was_down = false;
    loop {
        if let Ok(engine) = Engine::connect(&socket).await {
            let mut events = engine.container_events();
            if std::mem::take(&mut was_down) {
                let _ = up.try_send(());
            }
            while let Some(Ok(event)) = events.next().await {
                let action = event.action.unwrap_or_default();
                if RELEVANT.contains(&action.as_str()) {
                    // A full channel already has a sync pending; that one will see this too.
                    let _ = tx.try_send(());
                }
            }
        } else {
            was_down = true;
        }
        if tx.is_closed() {
            return;
        }
        // A connect to a missing unix socket costs nothing; dockerd is followed closely.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A failed pass is retried soon (what failed is often a moment early: an election,
/// a token not made yet), then less often, never less often than the resync; a pass
/// that succeeds ends the retries.
fn next_retry(last: Option<Duration>, failed: bool, resync: Duration) -> Option<Duration> {
    const FIRST: Duration = Duration::from_secs(1);
    failed.then(|| last.map_or(FIRST, |d| d * 2).min(resync))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_pass_is_retried_after_1_2_4_s_up_to_the_resync() {
        let resync = Duration::from_secs(10);
        let mut retry = None;
        let mut seen = Vec::new();
        for _ in 0..6 {
            retry = next_retry(retry, true, resync);
            seen.push(retry.unwrap().as_secs());
        }
        assert_eq!(seen, [1, 2, 4, 8, 10, 10]);
        assert_eq!(next_retry(retry, false, resync), None);
        // A resync shorter than a second bounds the first retry too.
        let fast = Duration::from_millis(200);
        assert_eq!(next_retry(None, true, fast), Some(fast));
    }
}
