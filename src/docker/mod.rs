//! Docker: the engine's configuration (daemon.json and, under systemd, a drop-in),
//! applied in the order that keeps the engine reachable.

pub mod api_relay;
pub mod daemon_json;
pub mod dropin;
pub mod engine;
pub mod images;

use std::path::Path;

use anyhow::{Context, anyhow};

use crate::config::{Config, ServiceMode};
use crate::paths::DOCKER_UNIT;
use crate::systemd::Systemd;

/// What [`reconcile`] did.
#[derive(Debug, Default)]
pub struct Reconciled {
    /// A line per change.
    pub changes: Vec<String>,
    /// Why the Docker API listens on the unix socket only (no usable identity).
    pub no_tls: Option<crate::identity::IdentityError>,
}

/// Brings the engine's configuration to the plan; under systemd, restarts
/// docker.service (and waits for it) only when something changed.
pub async fn reconcile(config: &Config, systemd: Option<&Systemd>) -> anyhow::Result<Reconciled> {
    let mut done = Reconciled::default();
    if config.docker.mode == ServiceMode::External {
        return Ok(done);
    }
    let applied = daemon_json::apply(config)?;
    done.no_tls = applied.no_tls;
    let changes = &mut done.changes;
    let json_changed = applied.changed;
    if json_changed {
        changes.push(format!("updated {}", config.docker.daemon_json.display()));
    }
    if config.docker.mode == ServiceMode::Config {
        if json_changed {
            tracing::warn!(
                "daemon.json changed; restart dockerd to apply it (docker.mode = \"config\")"
            );
        }
        return Ok(done);
    }
    let systemd =
        systemd.ok_or_else(|| anyhow!("docker.mode = \"systemd\" needs systemd's D-Bus API"))?;
    let argv = systemd
        .exec_start(DOCKER_UNIT)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("{} has no ExecStart; is Docker installed?", DOCKER_UNIT))?;
    let dropin_changed = dropin::apply(Path::new(dropin::DROPIN), &dropin::render(&argv))?;
    if dropin_changed {
        systemd.daemon_reload().await?;
        changes.push(format!("wrote {}", dropin::DROPIN));
    }
    if json_changed || dropin_changed {
        systemd
            .restart(DOCKER_UNIT)
            .await
            .context("restart Docker with its new configuration")?;
        changes.push(format!("restarted {}", DOCKER_UNIT));
    }
    Ok(done)
}

/// Takes arpanet's configuration out of the engine again; carries on past failures.
pub async fn uninstall(config: &Config, systemd: Option<&Systemd>) -> Vec<String> {
    let mut errors = Vec::new();
    if config.docker.mode == ServiceMode::External {
        return errors;
    }
    let mut changed = match daemon_json::remove(config) {
        Ok(c) => c,
        Err(e) => {
            errors.push(format!("{e:#}"));
            false
        }
    };
    if config.docker.mode == ServiceMode::Systemd {
        match std::fs::remove_file(dropin::DROPIN) {
            Ok(()) => changed = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(format!("remove {}: {e}", dropin::DROPIN)),
        }
        if changed {
            match systemd {
                Some(s) => {
                    if let Err(e) = s.daemon_reload().await {
                        errors.push(format!("{e:#}"));
                    }
                    if let Err(e) = s.restart(DOCKER_UNIT).await {
                        errors.push(format!("{e:#}"));
                    }
                }
                None => errors.push("cannot restart docker.service: no systemd D-Bus".into()),
            }
        }
    }
    errors
}
