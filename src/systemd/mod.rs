//! systemd over D-Bus (org.freedesktop.systemd1): daemon-reload, unit jobs that wait
//! for their result, unit properties. `resolved` configures systemd-resolved links.

pub mod resolved;

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures::StreamExt;
use zbus::zvariant::OwnedObjectPath;
use zbus::{Connection, proxy};

#[proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn reload_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn reload(&self) -> zbus::Result<()>;
    fn enable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
        force: bool,
    ) -> zbus::Result<(bool, Vec<(String, String, String)>)>;
    fn disable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
    ) -> zbus::Result<Vec<(String, String, String)>>;
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn subscribe(&self) -> zbus::Result<()>;
    #[zbus(signal)]
    fn job_removed(
        &self,
        id: u32,
        job: OwnedObjectPath,
        unit: String,
        result: String,
    ) -> zbus::Result<()>;
}

/// ExecStart entries: (path, argv, ignore-failure, timestamps..., pid, code, status).
type ExecCommand = (String, Vec<String>, bool, u64, u64, u64, u64, u32, i32, i32);

#[proxy(
    interface = "org.freedesktop.systemd1.Service",
    default_service = "org.freedesktop.systemd1"
)]
trait Service {
    #[zbus(property)]
    fn exec_start(&self) -> zbus::Result<Vec<ExecCommand>>;
    #[zbus(property, name = "MainPID")]
    fn main_pid(&self) -> zbus::Result<u32>;
}

#[proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1"
)]
trait Unit {
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;
}

/// How long a start/stop/restart job may take before we report it as stuck.
const JOB_TIMEOUT: Duration = Duration::from_secs(120);

pub struct Systemd {
    connection: Connection,
    manager: ManagerProxy<'static>,
}

impl Systemd {
    pub async fn connect() -> anyhow::Result<Self> {
        let connection = Connection::system()
            .await
            .context("connect to the system D-Bus (is this host running systemd?)")?;
        let manager = ManagerProxy::new(&connection)
            .await
            .context("reach systemd over D-Bus")?;
        // Once per connection: systemd refuses a second Subscribe from the same client.
        manager
            .subscribe()
            .await
            .context("subscribe to systemd's signals")?;
        Ok(Self {
            connection,
            manager,
        })
    }

    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// `systemctl daemon-reload`: needed after a unit file or drop-in changed.
    pub async fn daemon_reload(&self) -> anyhow::Result<()> {
        self.manager.reload().await.context("systemd daemon-reload")
    }

    /// `systemctl enable`: the unit starts at boot from now on.
    pub async fn enable(&self, unit: &str) -> anyhow::Result<()> {
        self.manager
            .enable_unit_files(&[unit], false, false)
            .await
            .with_context(|| format!("enable {unit}"))?;
        self.daemon_reload().await
    }

    pub async fn disable(&self, unit: &str) -> anyhow::Result<()> {
        self.manager
            .disable_unit_files(&[unit], false)
            .await
            .with_context(|| format!("disable {unit}"))?;
        self.daemon_reload().await
    }

    pub async fn restart(&self, unit: &str) -> anyhow::Result<()> {
        self.job(unit, "restart").await
    }

    pub async fn start(&self, unit: &str) -> anyhow::Result<()> {
        self.job(unit, "start").await
    }

    /// `systemctl reload`: the unit's ExecReload.
    pub async fn reload_unit(&self, unit: &str) -> anyhow::Result<()> {
        self.job(unit, "reload").await
    }

    pub async fn stop(&self, unit: &str) -> anyhow::Result<()> {
        self.job(unit, "stop").await
    }

    /// Queues a job and waits for systemd to report its result.
    async fn job(&self, unit: &str, verb: &str) -> anyhow::Result<()> {
        // Listen before queuing, so a job that finishes at once is not missed.
        let mut removed = self
            .manager
            .receive_job_removed()
            .await
            .context("watch systemd's jobs")?;
        let job = match verb {
            "restart" => self.manager.restart_unit(unit, "replace").await,
            "start" => self.manager.start_unit(unit, "replace").await,
            "reload" => self.manager.reload_unit(unit, "replace").await,
            _ => self.manager.stop_unit(unit, "replace").await,
        }
        .with_context(|| format!("{verb} {unit}"))?;
        let wait = async {
            while let Some(signal) = removed.next().await {
                let args = signal.args().context("read a JobRemoved signal")?;
                if *args.job() == job {
                    return Ok(args.result().clone());
                }
            }
            Err(anyhow!("systemd's signal stream ended"))
        };
        let result = tokio::time::timeout(JOB_TIMEOUT, wait)
            .await
            .map_err(|_| anyhow!("{verb} {unit}: no result after {JOB_TIMEOUT:?}"))??;
        if result != "done" {
            bail!("{verb} {unit} ended with `{result}`; see `journalctl -u {unit}`");
        }
        Ok(())
    }

    async fn service(&self, unit: &str) -> anyhow::Result<ServiceProxy<'static>> {
        let path = self
            .manager
            .load_unit(unit)
            .await
            .with_context(|| format!("load {unit}"))?;
        Ok(ServiceProxy::builder(&self.connection)
            .path(path)?
            .build()
            .await?)
    }

    /// The argv of each ExecStart= line of a service, as systemd has it loaded.
    pub async fn exec_start(&self, unit: &str) -> anyhow::Result<Vec<Vec<String>>> {
        let commands = self
            .service(unit)
            .await?
            .exec_start()
            .await
            .with_context(|| format!("read {unit}'s ExecStart"))?;
        Ok(commands.into_iter().map(|c| c.1).collect())
    }

    pub async fn main_pid(&self, unit: &str) -> anyhow::Result<u32> {
        Ok(self.service(unit).await?.main_pid().await?)
    }

    pub async fn active_state(&self, unit: &str) -> anyhow::Result<String> {
        let path = self
            .manager
            .load_unit(unit)
            .await
            .with_context(|| format!("load {unit}"))?;
        let unit_proxy = UnitProxy::builder(&self.connection)
            .path(path)?
            .build()
            .await?;
        Ok(unit_proxy.active_state().await?)
    }
}
