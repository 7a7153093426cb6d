//! The arpanetd main loop: converge the host to its config at start, on every resync
//! tick and on SIGHUP (which re-reads the config first); stop on SIGTERM.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sd_notify::NotifyState;
use serde::Serialize;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::config::{Config, ServiceMode};
use crate::docker;
use crate::network::netlink::Netlink;
use crate::network::reconcile;
use crate::plan::NodePlan;
use crate::systemd::{Systemd, resolved};

pub struct Daemon {
    config_path: PathBuf,
    config: Config,
    netlink: Netlink,
    /// The system bus, where there is one (hosts run by systemd).
    systemd: Option<Systemd>,
}

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
        Ok(Self {
            config_path: config_path.to_path_buf(),
            config,
            netlink,
            systemd: None,
        })
    }

    /// Connects to systemd when the config needs it or a system bus exists.
    pub async fn connect_systemd(&mut self) -> anyhow::Result<()> {
        let needed = self.config.docker.mode == ServiceMode::Systemd;
        if !needed && !Path::new("/run/dbus/system_bus_socket").exists() {
            return Ok(());
        }
        match Systemd::connect().await {
            Ok(s) => self.systemd = Some(s),
            Err(e) if needed => return Err(e.context("docker.mode = \"systemd\"")),
            Err(e) => warn!("{e:#}; systemd-resolved will not be configured"),
        }
        Ok(())
    }

    /// Brings the host to the config once. Every subsystem runs even if another failed.
    pub async fn converge(&self) -> PassReport {
        let mut report = PassReport::default();
        let device_index = self.converge_network(&mut report).await;
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
        if let (Some(systemd), Some(index)) = (&self.systemd, device_index)
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
        for e in &report.errors {
            error!("{e}");
        }
        report
    }

    async fn converge_network(&self, report: &mut PassReport) -> Option<u32> {
        let peers = reconcile::join_peers(&self.config);
        match reconcile::reconcile(&self.netlink, &self.config, &peers).await {
            Ok(r) => {
                report
                    .changes
                    .extend(r.changes.into_iter().map(|c| format!("network: {c}")));
                report
                    .errors
                    .extend(r.errors.into_iter().map(|e| format!("network: {e}")));
                r.device_index
            }
            Err(e) => {
                report.errors.push(format!("network: {e:#}"));
                None
            }
        }
    }

    pub async fn run(mut self) -> anyhow::Result<()> {
        self.log_plan();
        let mut hangup = signal(SignalKind::hangup())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let watchdog = watchdog_interval();

        self.converge().await;
        notify(&[NotifyState::Ready, NotifyState::Status("running")]);
        info!("arpanetd ready");
        let mut watchdog_tick =
            tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
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
                _ = resync.tick() => {
                    self.converge().await;
                }
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
                _ = watchdog_tick.tick(), if watchdog.is_some() => notify(&[NotifyState::Watchdog]),
            }
        }
        notify(&[NotifyState::Stopping]);
        info!("arpanetd stopping; the overlay stays up (arpanet uninstall-network removes it)");
        Ok(())
    }

    /// A bad new config is reported and ignored: what runs keeps running on the old one.
    /// Returns whether a new config was taken.
    fn reload(&mut self) -> bool {
        notify(&[NotifyState::Reloading]);
        let taken = match Config::load(&self.config_path) {
            Ok(config) => {
                if config.node.address != self.config.node.address {
                    warn!("node.address changed; the new addresses replace the old ones now");
                }
                self.config = config;
                info!(config = %self.config_path.display(), "configuration reloaded");
                true
            }
            Err(e) => {
                error!("{e}; keeping the running configuration");
                false
            }
        };
        notify(&[NotifyState::Ready, NotifyState::Status("running")]);
        taken
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

/// Half the interval systemd asked for, so one late tick never kills us.
fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec / 2))
}

fn notify(state: &[NotifyState]) {
    // Outside systemd NOTIFY_SOCKET is unset and this does nothing.
    if let Err(e) = sd_notify::notify(false, state) {
        warn!("cannot notify systemd: {e}");
    }
}
