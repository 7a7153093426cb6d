use std::process::ExitCode;

use clap::Parser;

use arpanet::daemon::{Daemon, Opts};

#[tokio::main]
async fn main() -> ExitCode {
    arpanet::logging::init("info");
    let opts = Opts::parse();
    if opts.sync {
        let result = match arpanet::config::Config::load(&opts.config) {
            Ok(config) => arpanet::imagesync::service::run(&config).await,
            Err(e) => Err(anyhow::anyhow!("{e}")),
        };
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e:#}");
                ExitCode::FAILURE
            }
        };
    }
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
        let report = daemon.converge_once().await;
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
