//! `arpanet logs ID`: one container's logs, wherever it runs in the cluster; and what
//! `arpanet service logs NAME` shares with it: the flags, and printing the records the
//! API streams.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail};
use clap::Args;
use futures::StreamExt;

use crate::api::client::ApiClient;
use crate::api::{LogOptions, LogRecord, parse_since, parse_tail};
use crate::config::Config;
use crate::config::containers::ContainerName;
use crate::http;

/// Print a container's logs (stdout and stderr merged), from whichever node runs it.
#[derive(Debug, Args)]
pub struct Logs {
    /// A container ID, ID prefix or name, on any node (as `arpanet ps --all` shows).
    pub id: String,
    #[command(flatten)]
    pub flags: LogFlags,
}

/// How much of the logs, and whether to follow them.
#[derive(Debug, Clone, Args)]
pub struct LogFlags {
    /// Keep printing lines as they are written, until interrupted.
    #[arg(long, short)]
    pub follow: bool,
    /// Only lines written this long ago or later: 10m, 1h30m, 45s.
    #[arg(long, value_name = "D", value_parser = parse_since)]
    pub since: Option<Duration>,
    /// Only the last N lines of each container: a number, or `all` (the default).
    #[arg(long, value_name = "N", value_parser = tail, allow_negative_numbers = true)]
    pub tail: Option<Tail>,
}

/// `--tail`'s value: `None` is `all`.
#[derive(Debug, Clone, Copy)]
pub struct Tail(Option<u64>);

fn tail(s: &str) -> Result<Tail, String> {
    parse_tail(s).map(Tail)
}

impl LogFlags {
    pub fn options(&self) -> LogOptions {
        LogOptions {
            follow: self.follow,
            since: self.since,
            tail: self.tail.and_then(|t| t.0),
        }
    }
}

impl Logs {
    pub async fn exec(&self, config_path: &Path) -> anyhow::Result<()> {
        // Checked here too: the ID goes into the request's path.
        ContainerName::check(&self.id).map_err(|e| anyhow!("ID: {e}"))?;
        let config = Config::load(config_path)?;
        let path = format!(
            "/v1/containers/{}/logs?{}",
            self.id,
            self.flags.options().query()
        );
        print(&config, &path, false).await
    }
}

/// A record as printed: a line (after its instance's name when `prefixed`), or, as
/// `Err`, a warning that a node's logs are missing.
pub fn render(record: &LogRecord, prefixed: bool) -> Result<String, String> {
    match record {
        LogRecord::Line { instance, line } if prefixed => Ok(format!("{instance} | {line}")),
        LogRecord::Line { line, .. } => Ok(line.clone()),
        LogRecord::Failed { node, error } => Err(format!("node {node}: {error}")),
    }
}

/// Prints the logs answer to `path` as it streams in: lines on stdout (flushed line by
/// line, so a follower sees each at once), missing nodes as warnings on stderr, which
/// also make the command fail once the rest has been printed.
pub async fn print(config: &Config, path: &str, prefixed: bool) -> anyhow::Result<()> {
    let bytes = ApiClient::from_config(config).get_stream(path).await?;
    let mut lines = std::pin::pin!(http::lines(bytes));
    let mut missing = 0;
    while let Some(line) = lines.next().await {
        let line = line.map_err(|e| anyhow!("arpanetd broke off the logs: {e}"))?;
        if line.is_empty() {
            continue;
        }
        let record: LogRecord = serde_json::from_str(&line)
            .map_err(|e| anyhow!("unexpected answer from arpanetd: {e}"))?;
        match render(&record, prefixed) {
            Ok(text) => {
                if let Err(e) = writeln!(std::io::stdout(), "{text}") {
                    // `| head` has read enough.
                    if e.kind() == std::io::ErrorKind::BrokenPipe {
                        return Ok(());
                    }
                    return Err(e.into());
                }
            }
            Err(warning) => {
                eprintln!("warning: {warning}");
                missing += 1;
            }
        }
    }
    if missing > 0 {
        bail!("some logs are missing: see the warnings above");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        logs: Logs,
    }

    #[test]
    fn service_lines_carry_their_instance_and_failures_are_warnings() {
        let line = LogRecord::Line {
            instance: "web_0.3_2".into(),
            line: "listening on :8080".into(),
        };
        assert_eq!(
            render(&line, true).unwrap(),
            "web_0.3_2 | listening on :8080"
        );
        assert_eq!(render(&line, false).unwrap(), "listening on :8080");
        let failed = LogRecord::Failed {
            node: "0.4".into(),
            error: "did not answer".into(),
        };
        assert_eq!(
            render(&failed, true).unwrap_err(),
            "node 0.4: did not answer"
        );
    }

    #[test]
    fn flags_become_the_query() {
        let cli =
            Cli::try_parse_from(["logs", "web_0.2_1", "-f", "--since", "10m", "--tail", "20"])
                .unwrap();
        assert_eq!(cli.logs.id, "web_0.2_1");
        assert_eq!(
            cli.logs.flags.options().query(),
            "follow=true&since=600s&tail=20"
        );
        let cli = Cli::try_parse_from(["logs", "x", "--tail", "all"]).unwrap();
        assert_eq!(cli.logs.flags.options().query(), "follow=false");
        for (flag, value, why) in [
            (
                "--since",
                "soon",
                "`soon` is not a duration such as 10m, 1h30m or 45s",
            ),
            ("--tail", "-3", "`-3` is not a number of lines or `all`"),
        ] {
            let e = Cli::try_parse_from(["logs", "x", flag, value])
                .unwrap_err()
                .to_string();
            assert!(e.contains(flag) && e.contains(why), "{e}");
        }
    }
}
