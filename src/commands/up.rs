use std::path::Path;

use anyhow::bail;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::Config;
use crate::containers;
use crate::docker::engine::Engine;

/// Apply containers.d now (create, replace, remove), or print the plan with --dry-run.
#[derive(Debug, Args)]
pub struct Up {
    /// Print what would change, one line each, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the plan, what was done and every problem as JSON.
    #[arg(long)]
    pub json: bool,
}

impl Up {
    pub async fn exec(&self, config_path: &Path) -> anyhow::Result<()> {
        let config = Config::load(config_path)?;
        let engine = Engine::connect(&config.docker.socket).await?;
        // Drawn on a terminal only; hidden when stderr is a pipe or a file.
        let bar = ProgressBar::new(0).with_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}").expect("a valid template"),
        );
        let progress = |i: usize, total: usize, action: &containers::Action| {
            bar.set_length(total as u64);
            bar.set_position(i as u64);
            bar.set_message(action.to_string());
        };
        let dir = &config.paths.containers_dir;
        let swarm = crate::paths::sync_socket(&config.paths);
        let images = engine.local_images().await?;
        let opts = containers::converge::Options {
            apply: !self.dry_run,
            swarm: Some(&swarm),
            progress: &progress,
        };
        let pass = containers::converge::converge_files(&engine, &images, dir, true, &opts).await?;
        bar.finish_and_clear();
        let failed = pass.report.errors.len() + pass.diagnostics.len();
        if self.json {
            println!("{}", serde_json::to_string_pretty(&pass)?);
        } else {
            for d in &pass.diagnostics {
                eprintln!("{d}");
            }
            let lines = if self.dry_run {
                pass.actions.iter().map(|a| a.to_string()).collect()
            } else {
                pass.report.changes.clone()
            };
            if lines.is_empty() {
                println!("nothing to do");
            }
            for line in lines {
                println!("{line}");
            }
            for e in &pass.report.errors {
                eprintln!("error: {e}");
            }
        }
        if failed > 0 {
            bail!("{failed} problem(s); the rest of containers.d was applied");
        }
        Ok(())
    }
}
