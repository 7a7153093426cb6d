use std::path::Path;

use anyhow::bail;
use clap::Args;

use crate::config::{Config, ServiceMode};
use crate::network::netlink::{Netlink, require_root};
use crate::pass::docker::DockerConfig;
use crate::pass::overlay::Overlay;
use crate::pass::{self, Reconciler, Snapshot};
use crate::systemd::Systemd;

/// Undo arpanet's host changes: overlay device, firewall rules, daemon.json keys.
#[derive(Debug, Args)]
pub struct UninstallNetwork {}

impl UninstallNetwork {
    pub async fn exec(&self, config_path: &Path) -> anyhow::Result<()> {
        require_root()?;
        let config = Config::load(config_path)?;
        let netlink = Netlink::connect()?;
        let mut errors = Vec::new();
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
        // The reconcilers that changed the host, undone in reverse order.
        let mut reconcilers: Vec<Box<dyn Reconciler>> = vec![
            Box::new(Overlay { netlink }),
            Box::new(DockerConfig::default()),
        ];
        let snap = Snapshot::unread(&config, systemd.as_ref());
        let outcome = pass::uninstall(&mut reconcilers, &snap).await;
        errors.extend(outcome.errors.iter().map(|e| e.to_string()));
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
