//! `arpanet stop` (no container ID): stop this node's arpanet services and keep them
//! from starting at boot. Containers keep running; `arpanet uninstall-network` then
//! removes the host's network changes.

use crate::paths;
use crate::systemd::Systemd;

pub async fn exec() -> anyhow::Result<()> {
    let systemd = Systemd::connect().await?;
    let mut errors = Vec::new();
    for unit in [
        paths::ARPANETD_UNIT,
        paths::CONSUL_UNIT,
        paths::SYNC_SOCKET_UNIT,
        paths::SYNC_SERVICE_UNIT,
    ] {
        if let Err(e) = systemd.disable(unit).await {
            errors.push(format!("{e:#}"));
        }
        match systemd.stop(unit).await {
            Ok(()) => println!("stopped and disabled {unit}"),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if !errors.is_empty() {
        anyhow::bail!("{}", errors.join("; "));
    }
    println!(
        "containers keep running; `arpanet uninstall-network` removes the overlay and Docker settings"
    );
    Ok(())
}
