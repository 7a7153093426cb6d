use std::path::{Path, PathBuf};

use clap::Args;

use crate::config::Config;
use crate::consul::secret;

/// Create the cluster secret (on the boot node) or install the one it printed.
#[derive(Debug, Args)]
pub struct Secret {
    /// Install this secret instead of making a new one (on every other node).
    #[arg(long, value_name = "SECRET")]
    pub set: Option<String>,
    /// Replace an existing secret file.
    #[arg(long)]
    pub force: bool,
}

impl Secret {
    pub fn exec(&self, config_path: &Path) -> anyhow::Result<()> {
        // Before `arpanet boot` there may be no arpanet.toml yet: use the default path.
        let path: PathBuf = if config_path.exists() {
            Config::load(config_path)?.cluster.secret_file
        } else {
            crate::config::ClusterConfig::default().secret_file
        };
        let value = match &self.set {
            Some(s) => {
                let s = s.trim().to_string();
                anyhow::ensure!(
                    s.len() >= 16,
                    "--set: a cluster secret has at least 16 characters"
                );
                s
            }
            None => secret::generate()?,
        };
        secret::write(&path, &value, self.force)?;
        println!("{value}");
        eprintln!(
            "wrote {}; on every other node run: arpanet secret --set {value}",
            path.display()
        );
        Ok(())
    }
}
