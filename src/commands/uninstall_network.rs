use std::path::Path;

use anyhow::bail;
use clap::Args;

use crate::config::{Config, ServiceMode};
use crate::docker::daemon_json;
use crate::network::netlink::{Netlink, require_root};
use crate::network::reconcile;

/// Undo arpanet's host changes: overlay device, firewall rules, daemon.json keys.
#[derive(Debug, Args)]
pub struct UninstallNetwork {}

impl UninstallNetwork {
    pub async fn exec(&self, config_path: &Path) -> anyhow::Result<()> {
        require_root()?;
        let config = Config::load(config_path)?;
        let nl = Netlink::connect()?;
        let mut errors = reconcile::uninstall(&nl, &config).await;
        if config.docker.mode != ServiceMode::External {
            match daemon_json::remove(&config) {
                Ok(true) => println!(
                    "{}: arpanet's keys removed; restart dockerd to apply",
                    config.docker.daemon_json.display()
                ),
                Ok(false) => {}
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        if !errors.is_empty() {
            bail!("{}", errors.join("; "));
        }
        println!(
            "removed {} and arpanet's firewall rules",
            config.overlay.device.as_str()
        );
        Ok(())
    }
}
