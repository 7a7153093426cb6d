//! The cluster API (DockerMod's idea, without a master): JSON over HTTP, served by every
//! arpanetd on its overlay address and on a root-only unix socket. Any node answers any
//! request: listings fan out to every healthy node, container operations go to the
//! node that owns the container, and services are desired state in Consul KV that
//! every node places the same way.
//!
//! The bodies that carry a service or a container spec are the versioned types of
//! `placement::wire`; the rows here are listings only the CLI reads.

pub mod client;
pub mod server;
pub mod tls;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::placement::wire::ConstraintsV1;

/// A container as `arpanet ps` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRow {
    /// The arpanet address of the node that runs it.
    pub node: String,
    pub id: String,
    pub name: String,
    pub image: String,
    pub state: String,
    pub status: String,
    /// The cluster service it is an instance of.
    pub service: Option<String>,
    /// The service version it runs (instances only).
    #[serde(default)]
    pub version: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRow {
    pub node: String,
    pub id: String,
    pub tags: Vec<String>,
    pub size: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRow {
    pub name: String,
    pub image: String,
    pub replicas: u32,
    /// Instances running cluster-wide (on the nodes that answered).
    pub running: u32,
    pub constraints: ConstraintsV1,
    /// Instances that fit on no node, and why.
    #[serde(default)]
    pub unplaced: u32,
    #[serde(default)]
    pub why: Option<String>,
    #[serde(default)]
    pub version: u64,
    /// The last rollout's state (`updating`, `completed`, ...).
    #[serde(default)]
    pub rollout: Option<String>,
}

/// One instance of a service as `service ps` lists it: a desired one (placed or not)
/// or a container of the service that runs though no longer desired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRow {
    /// `web_0.2_1`; `-` for an instance that fits on no node.
    pub instance: String,
    pub node: String,
    /// The container's ID, when one exists.
    pub container: Option<String>,
    /// The version it runs, and the one it should run.
    pub version: Option<u64>,
    pub desired_version: u64,
    /// Docker's state (`running`, `exited`, ...), `missing` for a placed instance
    /// with no container yet, `unplaced`, or `leaving` for one no longer desired.
    pub state: String,
    /// Consul's view: `passing`, `warning`, `critical`, or empty when not registered.
    pub health: String,
    /// Docker's status with since when (`Up 3 minutes`).
    pub status: String,
    /// Why a desired instance runs nowhere.
    pub why: Option<String>,
}

/// `service ps`: the instances (in the `items` shape of every listing) and the last
/// rollout's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceListing {
    pub items: Vec<InstanceRow>,
    #[serde(default)]
    pub unreachable: Vec<Unreachable>,
    pub version: u64,
    pub rollout: Option<String>,
    /// Why the last rollout paused or rolled back.
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRow {
    pub address: String,
    pub role: String,
    pub drained: bool,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A fan-out's answer: what the nodes said, and which nodes did not answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Listing<T> {
    pub items: Vec<T>,
    #[serde(default)]
    pub unreachable: Vec<Unreachable>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Unreachable {
    pub node: String,
    pub error: String,
}

/// What `arpanet image rm` did to the node registry's records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedImage {
    /// `team/app:v1`
    pub name: String,
    /// The manifest the tag pointed at.
    pub digest: String,
    /// Whether the manifest record went too (no other tag of the repository pointed at
    /// it); its blobs stay until garbage collection.
    pub manifest_removed: bool,
}

/// One node's pull of a registry image (`arpanet image pull NAME --all-nodes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRow {
    pub node: String,
    /// The name dockerd pulled, `127.0.0.1:PORT/team/app:v1`.
    pub image: String,
    /// The image ID the node has now.
    pub id: Option<String>,
    pub error: Option<String>,
}

/// What a container operation did, and where.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Done {
    pub node: String,
    pub id: String,
    pub action: String,
}

/// One record of a logs answer (`application/x-ndjson`, one record a line): a line an
/// instance wrote (stdout and stderr merged, as Docker interleaves them), or a node whose
/// logs could not be had or broke off. The failure travels in the stream because by
/// then the status line has long gone out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LogRecord {
    Line { instance: String, line: String },
    Failed { node: String, error: String },
}

/// What a logs request asks for, from its query (`follow`, `since`, `tail`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogOptions {
    /// Keep the answer open and pass on lines as they are written.
    pub follow: bool,
    /// Only lines written this long ago or later.
    pub since: Option<std::time::Duration>,
    /// Only the last N lines of each container; `None` for all.
    pub tail: Option<u64>,
}

impl LogOptions {
    /// Reads the query; a bad value is one error naming its parameter.
    pub fn from_query(q: &BTreeMap<String, String>) -> Result<Self, String> {
        let follow = match q.get("follow").map(String::as_str) {
            None | Some("false" | "0") => false,
            Some("" | "true" | "1") => true,
            Some(other) => {
                return Err(format!(
                    "follow: `{}` is not true or false",
                    other.escape_debug()
                ));
            }
        };
        let since = q
            .get("since")
            .map(|s| parse_since(s).map_err(|e| format!("since: {e}")))
            .transpose()?;
        let tail = match q.get("tail") {
            Some(t) => parse_tail(t).map_err(|e| format!("tail: {e}"))?,
            None => None,
        };
        Ok(Self {
            follow,
            since,
            tail,
        })
    }

    /// The query that asks for these options (what [`LogOptions::from_query`] reads).
    pub fn query(&self) -> String {
        let mut parts = vec![format!("follow={}", self.follow)];
        if let Some(since) = self.since {
            parts.push(format!("since={}s", since.as_secs()));
        }
        if let Some(tail) = self.tail {
            parts.push(format!("tail={tail}"));
        }
        parts.join("&")
    }
}

/// `--since`: a duration back from now, as `10m`, `1h30m` or `45s` (whole seconds).
pub fn parse_since(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|_| {
        format!(
            "`{}` is not a duration such as 10m, 1h30m or 45s",
            s.escape_debug()
        )
    })?;
    // Docker takes `since` as a 32-bit Unix time: reaching back past 1970 means nothing.
    if d.as_secs() > i32::MAX as u64 / 2 {
        return Err(format!("`{}` reaches back too far", s.escape_debug()));
    }
    Ok(d)
}

/// `--tail`: how many lines from the end of each container's log, or `all`.
pub fn parse_tail(s: &str) -> Result<Option<u64>, String> {
    if s == "all" {
        return Ok(None);
    }
    s.parse::<u64>()
        .map(Some)
        .map_err(|_| format!("`{}` is not a number of lines or `all`", s.escape_debug()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn query(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn log_options_read_durations_line_counts_and_all() {
        assert_eq!(parse_since("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_since("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_since("45s"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_tail("all"), Ok(None));
        assert_eq!(parse_tail("0"), Ok(Some(0)));
        assert_eq!(parse_tail("25"), Ok(Some(25)));
        let opts = LogOptions::from_query(&query(&[
            ("follow", "true"),
            ("since", "10m"),
            ("tail", "5"),
        ]))
        .unwrap();
        assert_eq!(
            opts,
            LogOptions {
                follow: true,
                since: Some(Duration::from_secs(600)),
                tail: Some(5),
            }
        );
        assert_eq!(opts.query(), "follow=true&since=600s&tail=5");
        // What one node forwards, the next reads back the same.
        let forwarded: BTreeMap<String, String> = opts
            .query()
            .split('&')
            .map(|kv| kv.split_once('=').unwrap())
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(LogOptions::from_query(&forwarded).unwrap(), opts);
        assert_eq!(
            LogOptions::from_query(&BTreeMap::new()).unwrap(),
            LogOptions::default()
        );
        assert_eq!(LogOptions::default().query(), "follow=false");
    }

    #[test]
    fn a_bad_log_option_is_one_error_naming_it() {
        for (pairs, want) in [
            (
                [("since", "ten")],
                "since: `ten` is not a duration such as 10m, 1h30m or 45s",
            ),
            (
                [("since", "-5m")],
                "since: `-5m` is not a duration such as 10m, 1h30m or 45s",
            ),
            ([("since", "100y")], "since: `100y` reaches back too far"),
            (
                [("tail", "-1")],
                "tail: `-1` is not a number of lines or `all`",
            ),
            (
                [("tail", "some")],
                "tail: `some` is not a number of lines or `all`",
            ),
            ([("follow", "yes")], "follow: `yes` is not true or false"),
        ] {
            assert_eq!(
                LogOptions::from_query(&query(&pairs)),
                Err(want.to_string())
            );
        }
    }

    #[test]
    fn log_records_are_lines_or_failures() {
        let line = LogRecord::Line {
            instance: "web_0.2_1".into(),
            line: "hello".into(),
        };
        let json = serde_json::to_string(&line).unwrap();
        assert_eq!(json, r#"{"instance":"web_0.2_1","line":"hello"}"#);
        assert_eq!(serde_json::from_str::<LogRecord>(&json).unwrap(), line);
        let failed: LogRecord =
            serde_json::from_str(r#"{"node":"0.3","error":"cannot connect"}"#).unwrap();
        assert_eq!(
            failed,
            LogRecord::Failed {
                node: "0.3".into(),
                error: "cannot connect".into()
            }
        );
    }
}
