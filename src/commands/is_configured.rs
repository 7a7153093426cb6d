use std::path::Path;

use clap::Args;

/// Exit 0 once this node has an address in its config (arpanetd.service's
/// ExecCondition: a freshly installed, unconfigured host does not start arpanetd).
#[derive(Debug, Args)]
pub struct IsConfigured {}

impl IsConfigured {
    /// Only whether `node.address` is set: a config with other errors counts as
    /// configured, so arpanetd starts and names them.
    pub fn exec(&self, config_path: &Path) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(config_path).unwrap_or_default();
        let configured = text
            .parse::<toml_edit::DocumentMut>()
            .map(|doc| doc.get("node").and_then(|n| n.get("address")).is_some())
            .unwrap_or(true);
        if !configured {
            anyhow::bail!(
                "{} names no node yet; set it up with `arpanet boot|server|client ADDRESS`",
                config_path.display()
            );
        }
        Ok(())
    }
}
