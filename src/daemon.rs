//! The arpanetd main loop: converge the host to its config at start, on every resync
//! tick, on SIGHUP (which re-reads the config first) and whenever Consul's catalog of
//! nodes changes; stop on SIGTERM.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::config::containers as containers_cfg;
use crate::config::{Config, ConsulMode, ServiceMode};
use crate::consul::node::CatalogPeers;
use crate::consul::{self, client::Consul};
use crate::containers;
use crate::containers::registration;
use crate::docker;
use crate::docker::engine::Engine;
use crate::network::admission::{self, Speaker};
use crate::network::netlink::Netlink;
use crate::network::{Peer, peers, reconcile};
use crate::paths;
use crate::placement;
use crate::plan::NodePlan;
use crate::sd::{self, NotifyState};
use crate::systemd::{Systemd, resolved};

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
    /// Healthy nodes as Consul's catalog last listed them; `None` until it answers.
    catalog: Option<CatalogPeers>,
    /// Nodes admitted by hello, and hellos turned away (shared with the hello task).
    admissions: admission::Shared,
    /// The running hello task and what it was started with.
    hello: Option<(Speaker, tokio::task::JoinHandle<()>)>,
    /// Signalled by the hello task when it admits a node.
    admitted_tx: tokio::sync::mpsc::Sender<()>,
    admitted_rx: Option<tokio::sync::mpsc::Receiver<()>>,
    /// The previous pass's errors: a failure is logged when it starts and when it ends,
    /// not on every pass while it lasts.
    last_errors: Vec<String>,
    /// When images were last pulled for `update.pull`; a registry is not asked every pass.
    last_pull: std::cell::Cell<Option<std::time::Instant>>,
}

/// How often arpanetd asks registries whether a tag names a newer image.
const PULL_INTERVAL: Duration = Duration::from_secs(300);

/// What one convergence pass did, for logs and `arpanetd --once`.
#[derive(Debug, Default, Serialize)]
pub struct PassReport {
    pub changes: Vec<String>,
    pub errors: Vec<String>,
}

impl Daemon {
    /// Fails, with the config's `FILE:LINE:COL` message, before anything is changed.
    pub fn load(config_path: &Path) -> anyhow::Result<Self> {
        let config = Config::load(config_path)?;
        let netlink = Netlink::connect()?;
        // Impatient: a pass must not wait out an election; what fails is retried next pass.
        let consul = Consul::impatient(config.consul.http_addr);
        let (admitted_tx, admitted_rx) = tokio::sync::mpsc::channel(1);
        Ok(Self {
            config_path: config_path.to_path_buf(),
            config,
            netlink,
            systemd: None,
            consul,
            catalog: None,
            admissions: admission::Shared::default(),
            hello: None,
            admitted_tx,
            admitted_rx: Some(admitted_rx),
            last_errors: Vec::new(),
            last_pull: std::cell::Cell::new(None),
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

    /// Brings the host to the config once. Every subsystem runs even if another failed.
    pub async fn converge(&mut self) -> PassReport {
        let mut report = PassReport::default();
        // Once `run` has taken the receiver this is a running daemon, which keeps a hello
        // task; `--once` does one exchange instead (`converge_once`).
        if self.admitted_rx.is_none() {
            self.ensure_hello(&mut report).await;
        }
        let network = self.converge_network(&mut report).await;
        match docker::reconcile(&self.config, self.systemd.as_ref()).await {
            Ok(changes) => {
                let restarted = changes.iter().any(|c| c.starts_with("restarted"));
                report
                    .changes
                    .extend(changes.into_iter().map(|c| format!("docker: {c}")));
                // Docker puts its NAT rules first again when it starts.
                if restarted {
                    self.converge_network(&mut report).await;
                }
            }
            Err(e) => report.errors.push(format!("docker: {e:#}")),
        }
        if self.config.consul.mode != ConsulMode::Disabled {
            match consul::reconcile(&self.config, &self.netlink, self.systemd.as_ref()).await {
                Ok(changes) => {
                    // Register only once the agent that was just (re)started listens and
                    // its cluster has a leader; other passes never wait.
                    if changes.iter().any(|c| c.contains(paths::CONSUL_UNIT)) {
                        let limit = Duration::from_secs(30);
                        let up = self.consul.wait_until_up(limit).await;
                        if let Err(e) = match up {
                            Ok(()) => self.consul.wait_for_leader(limit).await,
                            Err(e) => Err(e),
                        } {
                            report.errors.push(format!("consul: {e:#}"));
                        }
                    }
                    report
                        .changes
                        .extend(changes.into_iter().map(|c| format!("consul: {c}")));
                }
                Err(e) => report.errors.push(format!("consul: {e:#}")),
            }
            if let Some(underlay_ip) = network.underlay_ip {
                match consul::ensure_registered(&self.consul, &self.config, underlay_ip).await {
                    Ok(true) => report.changes.push(format!(
                        "consul: registered node {}",
                        self.config.node.address
                    )),
                    Ok(false) => {}
                    Err(e) => report
                        .errors
                        .push(format!("consul: register this node: {e:#}")),
                }
            }
        }
        self.converge_containers(&mut report).await;
        if self.config.consul.mode != ConsulMode::Disabled {
            self.converge_cluster_services(&mut report).await;
        }
        if let Some(changes) = self.sync_registrations(&mut report).await {
            report.changes.extend(changes);
        }
        if let (Some(systemd), Some(index)) = (&self.systemd, network.device_index)
            && resolved::available(systemd.connection()).await
        {
            let dns = self.config.node.address.consul_ip();
            match resolved::ensure_consul_domain(systemd.connection(), index, dns).await {
                Ok(true) => report
                    .changes
                    .push(format!("resolved: ~consul via {dns} on the overlay")),
                Ok(false) => {}
                Err(e) => report.errors.push(format!("resolved: {e:#}")),
            }
        }
        for c in &report.changes {
            info!("{c}");
        }
        for e in report
            .errors
            .iter()
            .filter(|e| !self.last_errors.contains(e))
        {
            error!("{e}");
        }
        for e in self
            .last_errors
            .iter()
            .filter(|e| !report.errors.contains(e))
        {
            info!("no longer failing: {e}");
        }
        self.last_errors = report.errors.clone();
        report
    }

    /// Whether this pass pulls images (and marks that it did).
    fn pull_due(&self) -> bool {
        let now = std::time::Instant::now();
        let due = self
            .last_pull
            .get()
            .is_none_or(|at| now.duration_since(at) >= PULL_INTERVAL);
        if due {
            self.last_pull.set(Some(now));
        }
        due
    }

    /// Running containers as Consul services. `None` when there is nothing to sync with.
    async fn sync_registrations(&self, report: &mut PassReport) -> Option<Vec<String>> {
        if self.config.consul.mode == ConsulMode::Disabled {
            return None;
        }
        let engine = Engine::connect(&self.config.docker.socket).await.ok()?;
        let result = async {
            let running = engine.running().await?;
            let node = self.config.node_name();
            let address = self.config.node.address.to_string();
            registration::sync(&self.consul, &node, &address, &running).await
        }
        .await;
        match result {
            Ok(changes) => Some(
                changes
                    .into_iter()
                    .map(|c| format!("services: {c}"))
                    .collect(),
            ),
            Err(e) => {
                report.errors.push(format!("services: {e:#}"));
                None
            }
        }
    }

    /// containers.d against the local engine. With nothing declared and no engine there
    /// is nothing to do (a host that runs the overlay only), which is not an error.
    async fn converge_containers(&self, report: &mut PassReport) {
        let dir = &self.config.paths.containers_dir;
        let engine = match Engine::connect(&self.config.docker.socket).await {
            Ok(engine) => engine,
            Err(e) => {
                let declared = containers_cfg::load_dir(dir);
                if !declared.containers.is_empty() || !declared.diagnostics.is_empty() {
                    report.errors.push(format!("containers: {e:#}"));
                }
                return;
            }
        };
        let swarm = paths::sync_socket(&self.config.paths);
        match containers::reconcile(
            &engine,
            dir,
            true,
            self.pull_due(),
            Some(&swarm),
            &|_, _, _| {},
        )
        .await
        {
            Ok(pass) => {
                report.errors.extend(
                    pass.diagnostics
                        .into_iter()
                        .map(|d| format!("containers: {d}")),
                );
                report.changes.extend(
                    pass.report
                        .done
                        .into_iter()
                        .map(|c| format!("containers: {c}")),
                );
                report.errors.extend(
                    pass.report
                        .errors
                        .into_iter()
                        .map(|e| format!("containers: {e}")),
                );
            }
            Err(e) => report.errors.push(format!("containers: {e:#}")),
        }
    }

    /// This node's share of the cluster services (placement). Without Consul or
    /// Docker nothing changes: running instances are never stopped for an outage.
    async fn converge_cluster_services(&self, report: &mut PassReport) {
        let engine = match Engine::connect(&self.config.docker.socket).await {
            Ok(engine) => engine,
            Err(e) => {
                report.errors.push(format!("cluster services: {e:#}"));
                return;
            }
        };
        let me = placement::reconcile::me(&self.config.node);
        let swarm = paths::sync_socket(&self.config.paths);
        match placement::reconcile::reconcile(&engine, &self.consul, me, true, Some(&swarm)).await {
            Ok(pass) => {
                let errors = pass.diagnostics.into_iter().chain(pass.report.errors);
                report
                    .errors
                    .extend(errors.map(|e| format!("cluster services: {e}")));
                report.changes.extend(
                    pass.report
                        .done
                        .into_iter()
                        .map(|c| format!("cluster services: {c}")),
                );
            }
            Err(e) => report.errors.push(format!("cluster services: {e:#}")),
        }
    }

    /// What this node's hellos say, from the config, the secret and the underlay.
    async fn speaker(&self) -> anyhow::Result<Speaker> {
        let secret = crate::consul::secret::read(&self.config.cluster.secret_file)?;
        let underlay = self.netlink.underlay(&self.config.node.underlay).await?;
        Ok(Speaker {
            me: self.config.node.address,
            underlay_ip: underlay.ip,
            port: self.config.overlay.hello_port,
            key: crate::consul::secret::derive_key(&secret, crate::consul::secret::ADMISSION_LABEL),
            join: reconcile::join_peers(&self.config)
                .iter()
                .map(|p| p.underlay_ip)
                .collect(),
        })
    }

    /// Keeps the hello task running with what it should say: (re)started when the
    /// secret, the underlay address or the join list changed.
    async fn ensure_hello(&mut self, report: &mut PassReport) {
        if self.lone_without_secret() {
            return;
        }
        let speaker = match self.speaker().await {
            Ok(s) => s,
            Err(e) => {
                report.errors.push(format!("admission: {e:#}"));
                return;
            }
        };
        if let Some((running, task)) = &self.hello
            && *running == speaker
            && !task.is_finished()
        {
            return;
        }
        if let Some((_, task)) = self.hello.take() {
            task.abort();
        }
        match speaker.bind().await {
            Ok(socket) => {
                let task = tokio::spawn(speaker.clone().serve(
                    socket,
                    self.admissions.clone(),
                    self.admitted_tx.clone(),
                ));
                self.hello = Some((speaker, task));
            }
            Err(e) => report.errors.push(format!(
                "admission: bind UDP {}:{}: {e}",
                speaker.underlay_ip, speaker.port
            )),
        }
    }

    /// `arpanetd --once`: one round of hellos with the join peers, so that a single pass
    /// admits them the way a running daemon would, then one pass.
    pub async fn converge_once(&mut self) -> PassReport {
        let failed = self.admit_once().await.err();
        let mut report = self.converge().await;
        if let Some(e) = failed {
            report.errors.insert(0, format!("{e:#}"));
        }
        report
    }

    /// A host with no join peers and no secret file (a lone host, Consul off) has
    /// nobody to greet and could admit nobody: it runs without hellos, and says nothing.
    fn lone_without_secret(&self) -> bool {
        self.config.node.join.is_empty() && !self.config.cluster.secret_file.exists()
    }

    async fn admit_once(&mut self) -> anyhow::Result<()> {
        if self.config.node.join.is_empty() {
            return Ok(());
        }
        let speaker = self.speaker().await?;
        let socket = speaker.bind().await.map_err(|e| {
            anyhow::anyhow!(
                "admission: bind UDP {}:{}: {e}",
                speaker.underlay_ip,
                speaker.port
            )
        })?;
        speaker
            .exchange(&socket, &self.admissions, Duration::from_secs(3))
            .await;
        Ok(())
    }

    async fn converge_network(&mut self, report: &mut PassReport) -> reconcile::Report {
        let cache = peers::load_cache(&paths::peers_cache(&self.config.paths));
        let (hello, turned_away) = {
            let mut a = self.admissions.lock().expect("admissions");
            (a.current(admission::unix_now()), a.rejected())
        };
        let catalog = self.catalog.as_ref().map(|c| c.peers.as_slice());
        let peers = peers::desired(&self.config, catalog, &cache, &hello);
        let refused = self.catalog.as_ref().map(|c| c.refused.clone());
        let status = admission::Status::new(
            &peers,
            catalog,
            &cache,
            turned_away,
            refused.unwrap_or_default(),
        );
        let path = paths::admission_status(&self.config.paths);
        if admission::load_status(&path).as_ref() != Some(&status)
            && let Err(e) = serde_json::to_string_pretty(&status)
                .map_err(anyhow::Error::from)
                .and_then(|t| crate::files::write_atomically(&path, &t))
        {
            report.errors.push(format!("admission: {e:#}"));
        }
        match reconcile::reconcile(&self.netlink, &self.config, &peers).await {
            Ok(r) => {
                report
                    .changes
                    .extend(r.changes.iter().map(|c| format!("network: {c}")));
                report
                    .errors
                    .extend(r.errors.iter().map(|e| format!("network: {e}")));
                r
            }
            Err(e) => {
                report.errors.push(format!("network: {e:#}"));
                reconcile::Report::default()
            }
        }
    }

    pub async fn run(mut self) -> anyhow::Result<()> {
        self.log_plan();
        let mut hangup = signal(SignalKind::hangup())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let (catalog_tx, mut catalog_rx) = watch::channel(None);
        let mut admitted_rx = self.admitted_rx.take().expect("run once");
        let (events_tx, mut events_rx) = tokio::sync::mpsc::channel(1);
        let (cluster_tx, mut cluster_rx) = tokio::sync::mpsc::channel(1);
        if self.config.consul.mode != ConsulMode::Disabled {
            tokio::spawn(watch_catalog(
                Consul::new(self.config.consul.http_addr),
                catalog_tx,
            ));
            tokio::spawn(watch_containers(
                self.config.docker.socket.clone(),
                events_tx,
            ));
            tokio::spawn(watch_cluster_state(
                Consul::new(self.config.consul.http_addr),
                cluster_tx,
            ));
            crate::api::server::spawn(&self.config);
        }

        let (files_tx, mut files_rx) = tokio::sync::mpsc::channel(1);
        // Kept for the loop's lifetime: dropping it stops the watch.
        let _files_watch = watch_files(&self.config.paths.containers_dir, files_tx);
        // Ready before the first pass: that pass may ask systemd to start units that
        // are ordered after arpanetd (arpanet-consul.service), whose jobs would wait
        // for this one's start job. A bad arpanet.toml has failed the start already.
        sd::notify(&[NotifyState::Ready, NotifyState::Status("converging")]);
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
                Some(()) = admitted_rx.recv() => {
                    self.converge().await;
                }
                Ok(()) = catalog_rx.changed() => {
                    let catalog: Option<CatalogPeers> = catalog_rx.borrow_and_update().clone();
                    if let Some(catalog) = &catalog {
                        info!(peers = catalog.peers.len(), "Consul's catalog of nodes changed");
                        if let Err(e) = peers::save_cache(&paths::peers_cache(&self.config.paths), &catalog.peers) {
                            warn!("cannot keep the peer cache: {e:#}");
                        }
                    }
                    self.catalog = catalog;
                    self.converge().await;
                }
                Some(()) = events_rx.recv() => {
                    let mut report = PassReport::default();
                    for c in self.sync_registrations(&mut report).await.unwrap_or_default() {
                        info!("{c}");
                    }
                    for e in report.errors {
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
                self.consul = Consul::impatient(config.consul.http_addr);
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

/// Follows the healthy `arpanet` instances with blocking queries and publishes them
/// as peers whenever they change. Errors (an agent still starting) are logged once
/// per outage and retried.
async fn watch_catalog(consul: Consul, tx: watch::Sender<Option<CatalogPeers>>) {
    let mut index = None;
    let mut failing = false;
    loop {
        match consul
            .healthy_instances(consul::node::SERVICE, index, Duration::from_secs(30))
            .await
        {
            Ok((entries, new_index)) => {
                if failing {
                    info!("Consul's catalog answers again");
                    failing = false;
                }
                // An index that goes backwards means Consul's state was reset.
                index = Some(if index.is_some_and(|i| new_index < i) {
                    0
                } else {
                    new_index
                });
                let previous: Vec<Peer> = tx
                    .borrow()
                    .as_ref()
                    .map(|c| c.peers.clone())
                    .unwrap_or_default();
                let view = consul::node::peers_from(&entries, &previous);
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
                    warn!("cannot follow Consul's catalog: {e:#}; retrying");
                    failing = true;
                }
                index = None;
                tokio::time::sleep(Duration::from_secs(2)).await;
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
    let mut index = None;
    loop {
        match consul
            .kv_list(placement::store::PREFIX, index, Duration::from_secs(30))
            .await
        {
            Ok((_, new_index)) => {
                if index.is_some_and(|i| i != new_index) {
                    let _ = tx.try_send(());
                }
                // An index that goes backwards means Consul's state was reset.
                index = Some(if index.is_some_and(|i| new_index < i) {
                    0
                } else {
                    new_index
                });
            }
            Err(_) => {
                // The catalog watcher reports Consul outages; this one only retries.
                index = None;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
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

/// Signals whenever a container starts, stops or goes away, so its Consul registration
/// follows at once rather than at the next resync. Reconnects when dockerd restarts.
async fn watch_containers(socket: std::path::PathBuf, tx: tokio::sync::mpsc::Sender<()>) {
    use futures::StreamExt;
    const RELEVANT: [&str; 7] = [
        "start", "die", "stop", "kill", "destroy", "pause", "unpause",
    ];
    loop {
        if let Ok(engine) = Engine::connect(&socket).await {
            let mut events = engine.container_events();
            while let Some(Ok(event)) = events.next().await {
                let action = event.action.unwrap_or_default();
                if RELEVANT.contains(&action.as_str()) {
                    // A full channel already has a sync pending; that one will see this too.
                    let _ = tx.try_send(());
                }
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
