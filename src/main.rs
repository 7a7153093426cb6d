use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use arpanet::commands::lifecycle::{ContainerId, StopArgs, Verb};
use arpanet::commands::{
    check, completions, consul_agent, consul_token, docker_env, image, images, info, is_configured,
    kv, logs, man, members, node, ps, secret, seed, service, status, template, token,
    uninstall_network, up,
};
use arpanet::config::DEFAULT_CONFIG_PATH;
use arpanet::config::Role;

/// arpanet: one cluster out of a set of Docker hosts.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Opts {
    /// The node's config file.
    #[arg(long, global = true, env = "ARPANET_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Set up the cluster's first node: config, secret, CA, join tokens; arpanetd
    /// enabled and started.
    Boot(seed::Seed),
    /// Set up a Consul server node that joins the cluster with a server token.
    Server(seed::Seed),
    /// Set up a client node that joins the cluster with a client token.
    Client(seed::Seed),
    Info(info::Info),
    Check(check::Check),
    Status(status::Status),
    Up(up::Up),
    Members(members::Members),
    Kv(kv::Kv),
    Secret(secret::Secret),
    /// The join tokens (`show`, `rotate`), on a server.
    Token(token::Token),
    ConsulAgent(consul_agent::ConsulAgent),
    ConsulToken(consul_token::ConsulToken),
    Service(service::Service),
    Template(template::Template),
    Ps(ps::Ps),
    /// Start a stopped container, on whichever node has it.
    Start(ContainerId),
    /// Stop a container, on whichever node has it; without an ID, stop this node.
    Stop(StopArgs),
    /// Restart a container, on whichever node has it.
    Restart(ContainerId),
    /// Remove a container, on whichever node has it.
    Rm(ContainerId),
    /// Show a container's details as JSON, from whichever node has it.
    Inspect(ContainerId),
    Logs(logs::Logs),
    Node(node::NodeCmd),
    DockerEnv(docker_env::DockerEnv),
    Images(images::Images),
    Image(image::Image),
    Completions(completions::Completions),
    #[command(hide = true)]
    IsConfigured(is_configured::IsConfigured),
    #[command(hide = true)]
    Man(man::Man),
    UninstallNetwork(uninstall_network::UninstallNetwork),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    arpanet::logging::init("warn");
    let opts = Opts::parse();
    let result = match &opts.command {
        Command::Boot(c) => c.exec(&opts.config, Role::Boot).await,
        Command::Server(c) => c.exec(&opts.config, Role::Server).await,
        Command::Client(c) => c.exec(&opts.config, Role::Client).await,
        Command::Info(c) => c.exec(&opts.config),
        Command::Check(c) => c.exec(&opts.config),
        Command::Status(c) => c.exec(&opts.config).await,
        Command::Up(c) => c.exec(&opts.config).await,
        Command::Members(c) => c.exec(&opts.config).await,
        Command::Kv(c) => c.exec(&opts.config).await,
        Command::Secret(c) => c.exec(&opts.config),
        Command::Token(c) => c.exec(&opts.config).await,
        Command::ConsulAgent(c) => c.exec(&opts.config).await,
        Command::ConsulToken(c) => c.exec(&opts.config).await,
        Command::Service(c) => c.exec(&opts.config).await,
        Command::Template(c) => c.exec(&opts.config).await,
        Command::Ps(c) => c.exec(&opts.config).await,
        Command::Start(c) => c.exec(&opts.config, Verb::Start).await,
        Command::Stop(c) => c.exec(&opts.config).await,
        Command::Restart(c) => c.exec(&opts.config, Verb::Restart).await,
        Command::Rm(c) => c.exec(&opts.config, Verb::Rm).await,
        Command::Inspect(c) => c.exec(&opts.config, Verb::Inspect).await,
        Command::Logs(c) => c.exec(&opts.config).await,
        Command::Node(c) => c.exec(&opts.config).await,
        Command::DockerEnv(c) => c.exec(&opts.config),
        Command::Images(c) => c.exec(&opts.config).await,
        Command::Image(c) => c.exec(&opts.config).await,
        Command::Completions(c) => c.exec::<Opts>(),
        Command::IsConfigured(c) => c.exec(&opts.config),
        Command::Man(c) => c.exec::<Opts>(),
        Command::UninstallNetwork(c) => c.exec(&opts.config).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Config diagnostics are already `FILE:LINE:COL: message`, one per line.
            if e.downcast_ref::<arpanet::config::Diagnostics>().is_some()
                || e.downcast_ref::<arpanet::config::Diagnostic>().is_some()
            {
                eprintln!("{e}");
            } else {
                eprintln!("error: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}
