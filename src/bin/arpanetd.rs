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
}

#[tokio::main]
async fn main() -> ExitCode {
    arpanet::logging::init("info");
    let opts = Opts::parse();
    let result = match Daemon::load(&opts.config) {
        Ok(daemon) => daemon.run().await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
