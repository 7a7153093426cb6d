use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use arpanet::config::DEFAULT_CONFIG_PATH;
use arpanet::daemon::Daemon;

/// arpanetd: the arpanet node daemon (run by systemd as arpanetd.service).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Opts {
    /// The node's config file.
    #[arg(long, env = "ARPANET_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Converge the host once, print what changed as JSON, and exit (non-zero on errors).
    #[arg(long)]
    once: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    arpanet::logging::init("info");
    let opts = Opts::parse();
    let mut daemon = match Daemon::load(&opts.config) {
        Ok(daemon) => daemon,
        Err(e) => {
            tracing::error!("{e:#}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = daemon.connect_systemd().await {
        tracing::error!("{e:#}");
        return ExitCode::FAILURE;
    }
    if opts.once {
        let report = daemon.converge().await;
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("serializable")
        );
        return if report.errors.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    match daemon.run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
