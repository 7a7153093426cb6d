use std::path::Path;

use anyhow::bail;
use clap::Args;

use crate::config::{Config, ServiceMode};
use crate::docker;
use crate::network::netlink::{Netlink, require_root};
use crate::network::reconcile;
use crate::systemd::Systemd;

/// Undo arpanet's host changes: overlay device, firewall rules, daemon.json keys.
#[derive(Debug, Args)]
pub struct UninstallNetwork {}

impl UninstallNetwork {
    pub async fn exec(&self, config_path: &Path) -> anyhow::Result<()> {
        require_root()?;
        let config = Config::load(config_path)?;
        let nl = Netlink::connect()?;
        let mut errors = reconcile::uninstall(&nl, &config).await;
        let systemd = match config.docker.mode {
            ServiceMode::Systemd => match Systemd::connect().await {
                Ok(s) => Some(s),
                Err(e) => {
                    errors.push(format!("{e:#}"));
                    None
                }
            },
            _ => None,
        };
        errors.extend(docker::uninstall(&config, systemd.as_ref()).await);
        if config.docker.mode == ServiceMode::Config {
            println!(
                "{}: arpanet's keys removed; restart dockerd to apply",
                config.docker.daemon_json.display()
            );
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
