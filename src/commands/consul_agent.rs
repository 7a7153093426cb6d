use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::signal::unix::{SignalKind, signal};

use crate::config::Config;
use crate::network::netlink::Netlink;

/// Run the Consul agent with the configuration arpanetd rendered (arpanet-consul.service).
#[derive(Debug, Args)]
pub struct ConsulAgent {}

pub const MISSING_CONSUL: &str = "Consul is not installed: arpanet runs HashiCorp's Consul agent; install the `consul` package from HashiCorp's apt or rpm repository (https://developer.hashicorp.com/consul/install), or set consul.binary";

/// How much a recognised problem says; a vaguer one never hides a more precise one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Precision {
    JoinFailed,
    ClusterNameMismatch,
    SecretMismatch,
}

/// What an agent's log line means for an operator, when it is one we know.
pub fn explain(line: &str, secret_file: &Path) -> Option<(Precision, String)> {
    if line.contains("No installed keys could decrypt the message") {
        let from = line
            .split("from=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())?;
        return Some((
            Precision::SecretMismatch,
            format!(
                "gossip from {from} could not be decrypted: the two nodes have different cluster secrets ({})",
                secret_file.display()
            ),
        ));
    }
    // "Member 'n1' part of wrong datacenter 'apples'": the names differ.
    if let Some(rest) = line.split("part of wrong datacenter '").nth(1) {
        let theirs = rest.split('\'').next().unwrap_or(rest);
        return Some((
            Precision::ClusterNameMismatch,
            format!(
                "the cluster you join is named `{theirs}` and this node's cluster.name differs; set `--cluster {theirs}` (arpanet server|client) or cluster.name"
            ),
        ));
    }
    if line.contains("* Failed to join") {
        let reason = line.trim().trim_start_matches("* ").trim_end_matches('"');
        return Some((
            Precision::JoinFailed,
            format!("cannot join the cluster: {reason}"),
        ));
    }
    None
}

fn find_binary(config: &Config) -> anyhow::Result<std::path::PathBuf> {
    let b = &config.consul.binary;
    if b.components().count() > 1 {
        return if b.is_file() {
            Ok(b.clone())
        } else {
            bail!("{} does not exist. {MISSING_CONSUL}", b.display())
        };
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(b))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow::anyhow!("{MISSING_CONSUL}"))
}

async fn wait_for(
    what: &str,
    limit: Duration,
    mut ready: impl AsyncFnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !ready().await {
        if Instant::now() > deadline {
            bail!("{what} (waited {limit:?}; is arpanetd running?)");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

impl ConsulAgent {
    pub async fn exec(&self, config_path: &Path) -> anyhow::Result<()> {
        let config = Config::load(config_path)?;
        let binary = find_binary(&config)?;
        let file = crate::paths::consul_config(&config.paths);
        wait_for(
            &format!("arpanetd has not written {}", file.display()),
            Duration::from_secs(60),
            async || file.exists(),
        )
        .await?;
        // The agent binds the Consul plane address, which arpanetd puts on the overlay.
        let ip = config.node.address.consul_ip();
        let netlink = Netlink::connect()?;
        wait_for(
            &format!("the Consul address {ip} is not on this host"),
            Duration::from_secs(60),
            async || netlink.has_address(ip).await.unwrap_or(false),
        )
        .await?;
        std::fs::create_dir_all(crate::paths::consul_data(&config.paths))?;
        let problem_file = crate::paths::consul_problem(&config.paths);
        let _ = std::fs::remove_file(&problem_file);

        let mut child = tokio::process::Command::new(&binary)
            .arg("agent")
            .arg(format!("-config-file={}", file.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?;
        let pid =
            nix::unistd::Pid::from_raw(child.id().context("the agent exited at once")? as i32);
        let secret_file = config.cluster.secret_file.clone();
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let mut errs = BufReader::new(child.stderr.take().expect("piped")).lines();
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let mut recorded: Option<Precision> = None;
        let status = loop {
            let line = tokio::select! {
                Ok(Some(l)) = lines.next_line() => l,
                Ok(Some(l)) = errs.next_line() => l,
                _ = term.recv() => { let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM); continue }
                _ = int.recv() => { let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT); continue }
                _ = hup.recv() => { let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP); continue }
                status = child.wait() => break status?,
            };
            eprintln!("{line}");
            if let Some((precision, problem)) = explain(&line, &secret_file)
                && recorded.is_none_or(|r| precision >= r)
            {
                eprintln!("arpanet: {problem}");
                recorded = Some(precision);
                if let Some(dir) = problem_file.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                let _ = std::fs::write(&problem_file, format!("{problem}\n"));
            }
        };
        if !status.success() {
            bail!("the Consul agent exited with {status}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_agent_lines_are_explained() {
        let secret = Path::new("/etc/arpanet/secret");
        let line = "2026-11-21T06:00:00Z [ERROR] agent.server.memberlist.lan: memberlist: failed to receive: No installed keys could decrypt the message from=10.253.0.5:41234";
        let (p, e) = explain(line, secret).unwrap();
        assert_eq!(p, Precision::SecretMismatch);
        assert!(
            e.contains("10.253.0.5:41234") && e.contains("different cluster secrets"),
            "{e}"
        );
        let join =
            "  * Failed to join 10.253.0.1: dial tcp 10.253.0.1:8301: connect: no route to host\"";
        let (p, e) = explain(join, secret).unwrap();
        assert!(p < Precision::SecretMismatch);
        assert_eq!(
            e,
            "cannot join the cluster: Failed to join 10.253.0.1: dial tcp 10.253.0.1:8301: connect: no route to host"
        );
        assert_eq!(
            explain(
                "[WARN]  agent: Join cluster failed, will retry: error=<nil>",
                secret
            ),
            None
        );
        assert_eq!(explain("[INFO] agent: Synced node info", secret), None);
        let dc =
            "        * Failed to join 10.253.0.1: Member 'h0' part of wrong datacenter 'apples'";
        let (p, e) = explain(dc, secret).unwrap();
        assert_eq!(p, Precision::ClusterNameMismatch);
        assert!(e.contains("named `apples`"), "{e}");
    }
}
