use std::path::Path;

use anyhow::bail;
use clap::Args;

use crate::config::Config;
use crate::containers;
use crate::docker::engine::Engine;

/// Apply containers.d now (create, replace, remove), or print the plan with --dry-run.
#[derive(Debug, Args)]
pub struct Up {
    /// Print what would change, one line each, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

impl Up {
    pub async fn exec(&self, config_path: &Path) -> anyhow::Result<()> {
        let config = Config::load(config_path)?;
        let engine = Engine::connect(&config.docker.socket).await?;
        let pass =
            containers::reconcile(&engine, &config.paths.containers_dir, !self.dry_run, true)
                .await?;
        for d in &pass.diagnostics {
            eprintln!("{d}");
        }
        if self.dry_run {
            if pass.actions.is_empty() {
                println!("nothing to do");
            }
            for a in &pass.actions {
                println!("{a}");
            }
        } else {
            for done in &pass.report.done {
                println!("{done}");
            }
            for e in &pass.report.errors {
                eprintln!("error: {e}");
            }
        }
        let failed = pass.report.errors.len() + pass.diagnostics.len();
        if failed > 0 {
            bail!("{failed} problem(s); the rest of containers.d was applied");
        }
        Ok(())
    }
}
