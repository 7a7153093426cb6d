use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use crate::config::Config;
use crate::consul::secret;

/// Create the cluster secret (on the boot node) or install the one it printed.
#[derive(Debug, Args)]
pub struct Secret {
    /// Install this secret instead of making a new one (on every other node); `-` reads
    /// it from stdin, which keeps it out of `ps` and the shell's history.
    #[arg(long, value_name = "SECRET", conflicts_with = "set_file")]
    pub set: Option<String>,
    /// Install the secret in this file (a copy of the boot node's), instead of making one.
    #[arg(long, value_name = "PATH")]
    pub set_file: Option<PathBuf>,
    /// Replace an existing secret file.
    #[arg(long)]
    pub force: bool,
}

/// A secret given as `FLAG SECRET`, `FLAG -` (stdin) or `FILE_FLAG PATH`, refused when
/// weaker than 128 bits with an error naming the flag. None when neither flag is given.
pub fn from_flags(
    flag: &str,
    value: Option<&str>,
    file_flag: &str,
    file: Option<&Path>,
) -> anyhow::Result<Option<String>> {
    let (text, origin) = match (value, file) {
        (None, None) => return Ok(None),
        (Some("-"), _) => {
            let text = std::io::read_to_string(std::io::stdin())
                .with_context(|| format!("{flag} -: read the cluster secret from stdin"))?;
            (text, format!("{flag} -: the cluster secret on stdin"))
        }
        (Some(s), _) => (s.to_string(), format!("{flag}: the cluster secret")),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("{file_flag}: read {}", path.display()))?;
            (
                text,
                format!("{file_flag}: the cluster secret in {}", path.display()),
            )
        }
    };
    secret::validated(&text, &origin).map(Some)
}

impl Secret {
    pub fn exec(&self, config_path: &Path) -> anyhow::Result<()> {
        let given = from_flags(
            "--set",
            self.set.as_deref(),
            "--set-file",
            self.set_file.as_deref(),
        )?;
        // Before `arpanet boot` there may be no arpanet.toml yet: use the default path.
        let path: PathBuf = if config_path.exists() {
            Config::load(config_path)?.cluster.secret_file
        } else {
            crate::config::ClusterConfig::default().secret_file
        };
        match given {
            Some(value) => {
                secret::write(&path, &value, self.force)?;
                // Not echoed: it came in by a way chosen to keep it off screens and logs.
                println!("installed the cluster secret in {}", path.display());
            }
            None => {
                let value = secret::generate()?;
                secret::write(&path, &value, self.force)?;
                println!("{value}");
                eprintln!(
                    "wrote {}; on every other node run: arpanet secret --set {value}\n\
                     (or `arpanet secret --set -` to type or pipe it in, `--set-file PATH` for a copy of the file)",
                    path.display()
                );
            }
        }
        Ok(())
    }
}
