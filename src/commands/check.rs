use std::path::Path;

use clap::Args;

use crate::config::{Config, Diagnostics, containers};

/// Validate arpanet.toml and every containers.d file; print each problem as FILE:LINE:COL.
#[derive(Debug, Args)]
pub struct Check {}

impl Check {
    pub fn exec(&self, config_path: &Path) -> anyhow::Result<()> {
        let config = Config::load(config_path).map_err(Diagnostics::from)?;
        let dir = &config.paths.containers_dir;
        let loaded = containers::load_dir(dir);
        if !loaded.diagnostics.is_empty() {
            return Err(Diagnostics(loaded.diagnostics).into());
        }
        println!(
            "{}: ok; {}: {} container(s) ok",
            config_path.display(),
            dir.display(),
            loaded.containers.len()
        );
        Ok(())
    }
}
