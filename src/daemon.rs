//! The arpanetd main loop: load config, tell systemd we are ready, re-read config on
//! SIGHUP, stop on SIGTERM. Reconcilers of later subsystems run inside this loop.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::config::Config;
use crate::plan::NodePlan;

pub struct Daemon {
    config_path: PathBuf,
    config: Config,
}

impl Daemon {
    /// Fails, with the config's `FILE:LINE:COL` message, before anything is started.
    pub fn load(config_path: &Path) -> anyhow::Result<Self> {
        let config = Config::load(config_path)?;
        Ok(Self {
            config_path: config_path.to_path_buf(),
            config,
        })
    }

    pub async fn run(mut self) -> anyhow::Result<()> {
        self.log_plan();
        let mut hangup = signal(SignalKind::hangup())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let watchdog = watchdog_interval();

        notify(&[NotifyState::Ready, NotifyState::Status("running")]);
        info!("arpanetd ready");
        let mut watchdog_tick =
            tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
        loop {
            tokio::select! {
                _ = hangup.recv() => self.reload(),
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
                _ = watchdog_tick.tick(), if watchdog.is_some() => notify(&[NotifyState::Watchdog]),
            }
        }
        notify(&[NotifyState::Stopping]);
        info!("arpanetd stopping");
        Ok(())
    }

    /// A bad new config is reported and ignored: what runs keeps running on the old one.
    fn reload(&mut self) {
        notify(&[NotifyState::Reloading]);
        match Config::load(&self.config_path) {
            Ok(config) => {
                if NodePlan::from_config(&config) != NodePlan::from_config(&self.config) {
                    warn!(
                        "the node's addresses changed in the config; they take effect on restart"
                    );
                }
                self.config = config;
                info!(config = %self.config_path.display(), "configuration reloaded");
                notify(&[NotifyState::Ready, NotifyState::Status("running")]);
            }
            Err(e) => {
                error!("{e}; keeping the running configuration");
                notify(&[
                    NotifyState::Ready,
                    NotifyState::Status("reload failed; see the journal"),
                ]);
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
