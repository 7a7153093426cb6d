//! A thin typed client for the parts of Consul's HTTP API arpanet uses.
//!
//! Every request says how it may be repeated ([`Repeat`]): reads and plain writes are
//! retried while Consul cannot be reached or has no leader; a check-and-set write is
//! re-sent only when the failed attempt surely did not take effect, and one whose
//! outcome is unknown is settled by reading the key back.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// What can go wrong talking to Consul. Each message names the agent's address and
/// carries Consul's own words where it gave any.
#[derive(Debug, thiserror::Error)]
pub enum ConsulError {
    #[error("KV key `{key}`: {reason}")]
    InvalidKey { key: String, reason: String },
    /// A service name or ID that cannot be one URL path segment.
    #[error("{what} `{name}`: {reason}")]
    InvalidName {
        what: &'static str,
        name: String,
        reason: &'static str,
    },
    #[error(
        "cannot reach Consul at {addr}: {reason} (is the agent running? `arpanet status` tells)"
    )]
    Unreachable { addr: SocketAddr, reason: String },
    #[error(
        "cannot reach Consul at {addr}: no answer in time (is the agent running? `arpanet status` tells)"
    )]
    Timeout { addr: SocketAddr },
    /// The cluster had no leader through every retry (an election, or too few servers).
    #[error("Consul at {addr} answered {code}: {body}")]
    NoLeader {
        addr: SocketAddr,
        code: StatusCode,
        body: String,
    },
    #[error("Consul at {addr} answered {code}: {body}")]
    Status {
        addr: SocketAddr,
        code: StatusCode,
        body: String,
    },
    #[error("unexpected answer from Consul at {addr} for {what}: {reason}")]
    Decode {
        addr: SocketAddr,
        what: String,
        reason: String,
    },
    #[error("Consul at {addr} did not store {key}")]
    NotStored { addr: SocketAddr, key: String },
    /// A check-and-set write may or may not have taken effect, and reading the key
    /// back did not tell: writing again blindly could undo or misreport it.
    #[error(
        "Consul at {addr} may or may not have stored {key} ({cause}); read it back before writing again"
    )]
    UnknownOutcome {
        addr: SocketAddr,
        key: String,
        cause: String,
    },
    /// A 403: the token sent (or none) lacks the right. Names the token file, as that is
    /// what the reader can check or replace.
    #[error("Consul at {addr} refused {what} (ACL: {body}): {}", token_hint(token_file.as_deref(), *sent, body))]
    Forbidden {
        addr: SocketAddr,
        what: String,
        body: String,
        token_file: Option<PathBuf>,
        /// Whether the request carried a token.
        sent: bool,
    },
    #[error("Consul token file {}: {reason}", path.display())]
    TokenFile { path: PathBuf, reason: String },
    #[error("the Consul agent at {addr} did not answer within {limit:?} of starting")]
    NotUp { addr: SocketAddr, limit: Duration },
    #[error("no Consul leader within {limit:?} of starting the agent at {addr}")]
    NoLeaderInTime { addr: SocketAddr, limit: Duration },
}

fn token_hint(file: Option<&Path>, sent: bool, body: &str) -> String {
    match (file, sent) {
        // Consul does not know the token: not made yet (a node's is made once there is
        // a leader), or deleted.
        (Some(f), true) if body.contains("ACL not found") => format!(
            "Consul does not know the token in {} (not made yet, or deleted)",
            f.display()
        ),
        (Some(f), true) => format!("the token in {} lacks the right", f.display()),
        (Some(f), false) => format!("no token was sent ({} does not exist)", f.display()),
        (None, _) => "no token was sent".to_string(),
    }
}

/// Reads a token file: `None` when it does not exist (Consul without ACLs, or a node
/// that has no token yet), its first line otherwise.
pub fn read_token_file(path: &Path) -> Result<Option<String>, ConsulError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let token = text.trim();
            if token.is_empty() || token.contains(char::is_whitespace) {
                return Err(ConsulError::TokenFile {
                    path: path.to_path_buf(),
                    reason: "does not hold one token (a single line)".into(),
                });
            }
            Ok(Some(token.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ConsulError::TokenFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters, `/` included.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The URL path of a KV key: each segment percent-encoded, so `?`, `#`, `%` and spaces
/// stay part of the key. A key with a `.` or `..` segment or a control character is
/// refused: no name that made it into one could be meant, and HTTP stacks clean
/// `..` away, which would read or write another key.
pub fn kv_path(key: &str) -> Result<String, ConsulError> {
    let key = key.trim_start_matches('/');
    let invalid = |reason: String| ConsulError::InvalidKey {
        key: key.escape_debug().to_string(),
        reason,
    };
    if key.chars().any(char::is_control) {
        return Err(invalid("holds a control character".into()));
    }
    let mut path = String::from("/v1/kv/");
    for (i, segment) in key.split('/').enumerate() {
        if segment == "." || segment == ".." {
            return Err(invalid(format!("a `{segment}` segment")));
        }
        if i > 0 {
            path.push('/');
        }
        path.extend(percent_encoding::utf8_percent_encode(segment, SEGMENT));
    }
    Ok(path)
}

/// A service name or ID as one URL path segment (a `/` in it is encoded too). Empty,
/// `.`, `..` and control characters are refused, as in [`kv_path`].
pub fn path_segment(what: &'static str, name: &str) -> Result<String, ConsulError> {
    let invalid = |reason| ConsulError::InvalidName {
        what,
        name: name.escape_debug().to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("is empty"));
    }
    if name == "." || name == ".." {
        return Err(invalid("is a `.` or `..` path segment"));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid("holds a control character"));
    }
    Ok(percent_encoding::utf8_percent_encode(name, SEGMENT).to_string())
}

/// How a request may be repeated after an attempt fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeat {
    /// Reads and plain writes (a whole value, a registration, a delete): sending one
    /// twice leaves Consul as sending it once.
    Safe,
    /// Check-and-set writes: a second copy of one that took effect fails its check,
    /// so it is re-sent only when the first surely did not take effect.
    IfNotApplied,
}

/// What a failed attempt says about its effect on Consul.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    /// It never reached Consul's state: no connection, or refused for want of a leader.
    NotApplied,
    /// It may have been applied: the answer was lost, or the leader lost leadership
    /// while committing it.
    Unknown,
}

/// The retry policy: whether an attempt that failed with `effect` may be sent again.
fn may_resend(repeat: Repeat, effect: Effect) -> bool {
    match (repeat, effect) {
        (_, Effect::NotApplied) => true,
        (Repeat::Safe, Effect::Unknown) => true,
        (Repeat::IfNotApplied, Effect::Unknown) => false,
    }
}

/// A 5xx answer that means "no leader right now", which a moment later succeeds, and
/// what it says about the request's effect; `None` for any other answer.
fn during_election(status: StatusCode, body: &str) -> Option<Effect> {
    if !status.is_server_error() {
        return None;
    }
    // Refused before anything was proposed to Raft (checked first: these often come
    // wrapped as "rpc error making call: ...").
    const NOT_APPLIED: [&str; 3] = [
        "No cluster leader",
        "No known Consul servers",
        "failed to get conn",
    ];
    // The request was forwarded, or proposed, and then the answer or the leader was lost.
    const UNKNOWN: [&str; 2] = ["leadership lost", "rpc error"];
    if NOT_APPLIED.iter().any(|m| body.contains(m)) {
        Some(Effect::NotApplied)
    } else if UNKNOWN.iter().any(|m| body.contains(m)) {
        Some(Effect::Unknown)
    } else {
        None
    }
}

/// A token Consul does not know yet, outside the ACL API: a node's own token is made
/// once its cluster has a leader (seconds after the agent starts), so this is waited
/// out like an election. In the ACL API "ACL not found" may be about the token read.
fn token_not_made_yet(e: &ConsulError) -> bool {
    matches!(e, ConsulError::Forbidden { body, sent: true, what, .. }
        if body.contains("ACL not found") && !what.starts_with("/v1/acl/"))
}

/// What reading a key back says about a create (`cas=0`) whose outcome was unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    /// The key holds what the create wrote: it took effect.
    Stored,
    /// The key holds something else: another writer created it first.
    Taken,
    /// No such key: the create did not take effect and may be sent again.
    Absent,
}

fn settle_create(read_back: Option<&[u8]>, written: &[u8]) -> Settled {
    match read_back {
        Some(v) if v == written => Settled::Stored,
        Some(_) => Settled::Taken,
        None => Settled::Absent,
    }
}

/// A failed attempt: the error for the caller, and what it says about the effect.
struct Failed {
    error: ConsulError,
    effect: Effect,
}

impl From<ConsulError> for Failed {
    fn from(error: ConsulError) -> Self {
        Failed {
            error,
            effect: Effect::NotApplied,
        }
    }
}

/// The first line of an answer's body, for an error message.
fn first_line(body: &str) -> String {
    let line = body.trim().lines().next().unwrap_or("").trim();
    if line.is_empty() {
        "no detail".to_string()
    } else {
        line.to_string()
    }
}

/// A KV entry as a listing gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    pub key: String,
    pub value: Vec<u8>,
    pub created: u64,
    pub modified: u64,
}

#[derive(Clone)]
pub struct Consul {
    addr: SocketAddr,
    http: reqwest::Client,
    /// How many times a request is tried while the cluster has no leader.
    election_attempts: u32,
    /// How many times a request is tried while the agent cannot be reached.
    connect_attempts: u32,
    /// The ACL token every request carries (`X-Consul-Token`), read at each request so
    /// a token installed or replaced later is used at once; none while it is missing.
    token_file: Option<PathBuf>,
}

/// A member as the local agent's gossip pool sees it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Member {
    pub name: String,
    pub addr: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    pub status: u8,
}

impl Member {
    /// Serf's member states.
    pub fn status_name(&self) -> &'static str {
        match self.status {
            1 => "alive",
            2 => "leaving",
            3 => "left",
            4 => "failed",
            _ => "none",
        }
    }

    pub fn role(&self) -> &'static str {
        if self.tags.get("role").is_some_and(|r| r == "consul") {
            "server"
        } else {
            "client"
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceRegistration {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub tags: Vec<String>,
    pub address: String,
    pub port: u16,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub check: Option<AgentCheck>,
}

/// A check Consul's agent runs for a service.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct AgentCheck {
    #[serde(rename = "HTTP", skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    #[serde(rename = "TCP", skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    #[serde(rename = "Interval")]
    pub interval: String,
    #[serde(rename = "Timeout")]
    pub timeout: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthEntry {
    pub node: HealthNode,
    pub service: AgentService,
    /// The node's checks (serfHealth) and the service's, each with its status.
    #[serde(default)]
    pub checks: Vec<CheckStatus>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CheckStatus {
    #[serde(rename = "CheckID", default)]
    pub check_id: String,
    /// `passing`, `warning` or `critical`.
    pub status: String,
}

impl HealthEntry {
    /// Every check passes (what `?passing` filters on).
    pub fn passing(&self) -> bool {
        self.checks.iter().all(|c| c.status == "passing")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthNode {
    pub node: String,
    pub address: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct AgentService {
    #[serde(rename = "ID")]
    pub id: String,
    pub service: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub port: u16,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
}

/// Connection failures are retried this many times, with doubling pauses.
const ATTEMPTS: u32 = 4;
const FIRST_PAUSE: Duration = Duration::from_millis(200);
/// While the servers elect a new leader (seconds), requests are retried up to this
/// many times with doubling pauses from FIRST_PAUSE: about 12 s in all.
const ELECTION_ATTEMPTS: u32 = 7;

/// Doubling pauses from FIRST_PAUSE, for `attempts` tries in all.
fn doubling(attempts: u32) -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(FIRST_PAUSE)
        .with_factor(2.0)
        .without_max_delay()
        .with_max_times(attempts.saturating_sub(1) as usize)
}

impl Consul {
    pub fn new(addr: SocketAddr) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            // Blocking queries wait up to a minute on the server side.
            .timeout(Duration::from_secs(75))
            .build()
            .expect("a plain HTTP client always builds");
        Self {
            addr,
            http,
            election_attempts: ELECTION_ATTEMPTS,
            connect_attempts: ATTEMPTS,
            token_file: None,
        }
    }

    /// Requests carry the token in `path` (when the file exists).
    pub fn with_token_file(self, path: impl Into<PathBuf>) -> Self {
        Self {
            token_file: Some(path.into()),
            ..self
        }
    }

    /// The client for this node's own requests: its agent, with its agent token.
    pub fn for_node(config: &crate::config::Config) -> Self {
        Self::new(config.consul.http_addr).with_token_file(node_token_file(config))
    }

    /// A client with the management token (servers only): for what node tokens may
    /// not do (join tokens, certificate records, revocations, node tokens).
    pub fn for_management(config: &crate::config::Config) -> Self {
        Self::new(config.consul.http_addr).with_token_file(
            crate::paths::IdentityFiles::new(&config.cluster.identity_dir)
                .consul_management_token(),
        )
    }

    /// [`Self::for_node`], [`Self::impatient`].
    pub fn impatient_for_node(config: &crate::config::Config) -> Self {
        Self::impatient(config.consul.http_addr).with_token_file(node_token_file(config))
    }

    /// Retries connection failures as [`Self::new`] does (an agent restarting), while
    /// staying impatient about elections: for requests a user waits on.
    pub fn retrying_connects(self) -> Self {
        Self {
            connect_attempts: ATTEMPTS,
            ..self
        }
    }

    pub fn token_file(&self) -> Option<&Path> {
        self.token_file.as_deref()
    }

    /// A request to `path` with the token, if there is one. An unreadable token file
    /// fails here, before anything is sent.
    fn build(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> Result<reqwest::RequestBuilder, ConsulError> {
        let req = self.http.request(method, self.url(path));
        match &self.token_file {
            Some(f) => Ok(match read_token_file(f)? {
                Some(token) => req.header("X-Consul-Token", token),
                None => req,
            }),
            None => Ok(req),
        }
    }

    /// Whether a request now would carry a token.
    fn sends_token(&self) -> bool {
        self.token_file
            .as_deref()
            .is_some_and(|f| matches!(read_token_file(f), Ok(Some(_))))
    }

    /// A client that reports "no leader" and an agent that is not running at once
    /// instead of waiting: for showing the current state, as `arpanet status` does, and
    /// for arpanetd's passes, which must not hold up Docker and the overlay while the
    /// agent starts (its catalog watch's first answer starts the next pass).
    pub fn impatient(addr: SocketAddr) -> Self {
        Self {
            election_attempts: 1,
            connect_attempts: 1,
            ..Self::new(addr)
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A transport error, and whether the request can have reached Consul.
    fn transport(&self, e: reqwest::Error) -> Failed {
        let addr = self.addr;
        if e.is_connect() {
            return Failed {
                error: ConsulError::Unreachable {
                    addr,
                    reason: "connection refused".into(),
                },
                effect: Effect::NotApplied,
            };
        }
        let error = if e.is_timeout() {
            ConsulError::Timeout { addr }
        } else {
            ConsulError::Unreachable {
                addr,
                reason: e.without_url().to_string(),
            }
        };
        Failed {
            error,
            effect: Effect::Unknown,
        }
    }

    /// Sends a request. Connection failures and "no leader" answers are retried with
    /// backoff as far as `repeat` allows; any other 5xx answer is an error. A 2xx or
    /// 4xx answer is returned for the caller to read.
    async fn send(
        &self,
        repeat: Repeat,
        build: impl Fn() -> Result<reqwest::RequestBuilder, ConsulError>,
    ) -> Result<reqwest::Response, Failed> {
        let attempt = || async {
            let resp = self.send_once(&build).await?;
            let code = resp.status();
            if code == StatusCode::FORBIDDEN {
                // Refused before anything was done.
                return Err(Failed {
                    error: self.forbidden(resp).await,
                    effect: Effect::NotApplied,
                });
            }
            if !code.is_server_error() {
                return Ok(resp);
            }
            let body = first_line(&resp.text().await.unwrap_or_default());
            let addr = self.addr;
            Err(match during_election(code, &body) {
                Some(effect) => Failed {
                    error: ConsulError::NoLeader { addr, code, body },
                    effect,
                },
                // A server error may come after the write was applied.
                None => Failed {
                    error: ConsulError::Status { addr, code, body },
                    effect: Effect::Unknown,
                },
            })
        };
        attempt
            .retry(doubling(self.election_attempts))
            .sleep(tokio::time::sleep)
            .when(|f: &Failed| {
                (matches!(f.error, ConsulError::NoLeader { .. }) || token_not_made_yet(&f.error))
                    && may_resend(repeat, f.effect)
            })
            .await
    }

    /// A 403 as one line naming the token file.
    async fn forbidden(&self, resp: reqwest::Response) -> ConsulError {
        let what = resp.url().path().to_string();
        ConsulError::Forbidden {
            addr: self.addr,
            what,
            body: first_line(&resp.text().await.unwrap_or_default()),
            token_file: self.token_file.clone(),
            sent: self.sends_token(),
        }
    }

    /// Sends a request, retrying only when Consul could not be reached at all (the
    /// request was not sent, so this is safe for every request).
    async fn send_once(
        &self,
        build: &impl Fn() -> Result<reqwest::RequestBuilder, ConsulError>,
    ) -> Result<reqwest::Response, Failed> {
        let req = build()?;
        (|| {
            req.try_clone()
                .expect("arpanet's bodies are in memory")
                .send()
        })
        .retry(doubling(self.connect_attempts))
        .sleep(tokio::time::sleep)
        .when(reqwest::Error::is_connect)
        .await
        .map_err(|e| self.transport(e))
    }

    /// Turns a non-2xx answer into one line with Consul's own words.
    async fn check(&self, resp: reqwest::Response) -> Result<reqwest::Response, ConsulError> {
        let code = resp.status();
        if code.is_success() {
            return Ok(resp);
        }
        if code == StatusCode::FORBIDDEN {
            return Err(self.forbidden(resp).await);
        }
        let body = first_line(&resp.text().await.unwrap_or_default());
        Err(ConsulError::Status {
            addr: self.addr,
            code,
            body,
        })
    }

    /// A safe request whose answer must be 2xx.
    async fn request(
        &self,
        build: impl Fn() -> Result<reqwest::RequestBuilder, ConsulError>,
    ) -> Result<reqwest::Response, ConsulError> {
        let resp = self.send(Repeat::Safe, build).await.map_err(|f| f.error)?;
        self.check(resp).await
    }

    async fn decode<T: DeserializeOwned>(
        &self,
        resp: reqwest::Response,
        what: &str,
    ) -> Result<T, ConsulError> {
        let bytes = resp.bytes().await.map_err(|e| self.transport(e).error)?;
        serde_json::from_slice(&bytes).map_err(|e| ConsulError::Decode {
            addr: self.addr,
            what: what.to_string(),
            reason: e.to_string(),
        })
    }

    async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ConsulError> {
        let resp = self
            .request(|| self.build(reqwest::Method::GET, path))
            .await?;
        self.decode(resp, path).await
    }

    /// A GET whose 404 means "nothing there".
    async fn get_optional(&self, path: &str) -> Result<Option<reqwest::Response>, ConsulError> {
        let resp = self
            .send(Repeat::Safe, || self.build(reqwest::Method::GET, path))
            .await
            .map_err(|f| f.error)?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        self.check(resp).await.map(Some)
    }

    /// Waits until the local agent answers at all (it was just started).
    pub async fn wait_until_up(&self, limit: Duration) -> Result<(), ConsulError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            // Status needs no ACL: an agent whose own token the leader has not made yet is up.
            match self.http.get(self.url("/v1/status/leader")).send().await {
                Ok(resp) if resp.status().is_success() => return Ok(()),
                _ if tokio::time::Instant::now() >= deadline => {
                    return Err(ConsulError::NotUp {
                        addr: self.addr,
                        limit,
                    });
                }
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    /// Waits until the cluster has a leader (an agent that was just started has none).
    pub async fn wait_for_leader(&self, limit: Duration) -> Result<(), ConsulError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Ok(Some(_)) = self.leader().await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ConsulError::NoLeaderInTime {
                    addr: self.addr,
                    limit,
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub async fn members(&self) -> Result<Vec<Member>, ConsulError> {
        self.get_json("/v1/agent/members").await
    }

    /// The Raft leader's address, or `None` while there is none.
    pub async fn leader(&self) -> Result<Option<String>, ConsulError> {
        let leader: String = self.get_json("/v1/status/leader").await?;
        Ok(Some(leader).filter(|l| !l.is_empty()))
    }

    pub async fn raft_peers(&self) -> Result<Vec<String>, ConsulError> {
        self.get_json("/v1/status/peers").await
    }

    pub async fn agent_self(&self) -> Result<serde_json::Value, ConsulError> {
        self.get_json("/v1/agent/self").await
    }

    pub async fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>, ConsulError> {
        self.kv_get_at(key, "raw").await
    }

    /// `kv_get` with `query` (`raw`, or `raw&consistent`).
    async fn kv_get_at(&self, key: &str, query: &str) -> Result<Option<Vec<u8>>, ConsulError> {
        let path = format!("{}?{query}", kv_path(key)?);
        match self.get_optional(&path).await? {
            None => Ok(None),
            Some(resp) => Ok(Some(
                resp.bytes()
                    .await
                    .map_err(|e| self.transport(e).error)?
                    .to_vec(),
            )),
        }
    }

    /// Keys under `prefix` (all of them, not only one level).
    pub async fn kv_keys(&self, prefix: &str) -> Result<Vec<String>, ConsulError> {
        let path = format!("{}?keys", kv_path(prefix)?);
        match self.get_optional(&path).await? {
            None => Ok(Vec::new()),
            Some(resp) => self.decode(resp, &path).await,
        }
    }

    pub async fn kv_put(&self, key: &str, value: Vec<u8>) -> Result<(), ConsulError> {
        let path = kv_path(key)?;
        let resp = self
            .request(|| Ok(self.build(reqwest::Method::PUT, &path)?.body(value.clone())))
            .await?;
        if self.answer_text(resp).await? != "true" {
            return Err(ConsulError::NotStored {
                addr: self.addr,
                key: key.to_string(),
            });
        }
        Ok(())
    }

    async fn answer_text(&self, resp: reqwest::Response) -> Result<String, ConsulError> {
        let text = resp.text().await.map_err(|e| self.transport(e).error)?;
        Ok(text.trim().to_string())
    }

    /// Stores `value` only if `key` does not exist yet; returns whether it was stored.
    ///
    /// A create whose outcome is unknown (its answer lost, or the leader lost while
    /// committing it) is not re-sent blindly, which would find the key it created and
    /// answer "exists": the key is read back from the leader and settles it.
    pub async fn kv_put_new(&self, key: &str, value: Vec<u8>) -> Result<bool, ConsulError> {
        let cause = match self.kv_create(key, &value).await {
            Ok(stored) => return Ok(stored),
            Err(Failed {
                error,
                effect: Effect::Unknown,
            }) => error,
            Err(f) => return Err(f.error),
        };
        let unknown = |cause: &ConsulError| ConsulError::UnknownOutcome {
            addr: self.addr,
            key: key.to_string(),
            cause: cause.to_string(),
        };
        // `consistent` makes the leader confirm it still leads first, so a write the
        // old leader was committing is settled one way or the other.
        let read_back = self
            .kv_get_at(key, "raw&consistent")
            .await
            .map_err(|_| unknown(&cause))?;
        match settle_create(read_back.as_deref(), &value) {
            Settled::Stored => Ok(true),
            Settled::Taken => Ok(false),
            Settled::Absent => match self.kv_create(key, &value).await {
                Ok(stored) => Ok(stored),
                Err(f) if f.effect == Effect::Unknown => Err(unknown(&f.error)),
                Err(f) => Err(f.error),
            },
        }
    }

    /// One `cas=0` write, re-sent only while it surely did not take effect.
    async fn kv_create(&self, key: &str, value: &[u8]) -> Result<bool, Failed> {
        let path = format!("{}?cas=0", kv_path(key)?);
        let resp = self
            .send(Repeat::IfNotApplied, || {
                Ok(self
                    .build(reqwest::Method::PUT, &path)?
                    .body(value.to_vec()))
            })
            .await?;
        let code = resp.status();
        let resp = self.check(resp).await.map_err(|error| Failed {
            error,
            // A 4xx answer refused the write; nothing else gets here but 2xx.
            effect: if code.is_client_error() {
                Effect::NotApplied
            } else {
                Effect::Unknown
            },
        })?;
        let text = resp.text().await.map_err(|e| Failed {
            // The answer was lost after Consul began sending it.
            effect: Effect::Unknown,
            ..self.transport(e)
        })?;
        Ok(text.trim() == "true")
    }

    /// A key's value and its ModifyIndex, for a [`Self::kv_put_cas`] that follows.
    pub async fn kv_get_indexed(&self, key: &str) -> Result<Option<(Vec<u8>, u64)>, ConsulError> {
        #[derive(Deserialize)]
        struct Entry {
            #[serde(rename = "ModifyIndex")]
            index: u64,
            #[serde(rename = "Value")]
            value: Option<String>,
        }
        let path = kv_path(key)?;
        let Some(resp) = self.get_optional(&path).await? else {
            return Ok(None);
        };
        let entries: Vec<Entry> = self.decode(resp, &path).await?;
        use base64::Engine as _;
        Ok(entries.into_iter().next().map(|e| {
            let value = e
                .value
                .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
                .unwrap_or_default();
            (value, e.index)
        }))
    }

    /// Stores `value` only if `key` is still at `index` (from [`Self::kv_get_indexed`]);
    /// returns whether it was stored. A write whose outcome is unknown is an error, not
    /// re-sent: the caller reads the key again and sees which it was.
    pub async fn kv_put_cas(
        &self,
        key: &str,
        value: Vec<u8>,
        index: u64,
    ) -> Result<bool, ConsulError> {
        let path = format!("{}?cas={index}", kv_path(key)?);
        let resp = self
            .send(Repeat::IfNotApplied, || {
                Ok(self.build(reqwest::Method::PUT, &path)?.body(value.clone()))
            })
            .await
            .map_err(|f| f.error)?;
        let resp = self.check(resp).await?;
        Ok(self.answer_text(resp).await? == "true")
    }

    /// Every key and value under `prefix`. With `index`, blocks until something under
    /// it changes or `wait` passes; returns the index to pass next time. Follow it
    /// with [`super::watch::BlockingQuery`].
    pub async fn kv_list(
        &self,
        prefix: &str,
        index: Option<u64>,
        wait: Duration,
    ) -> Result<(Vec<(String, Vec<u8>)>, u64), ConsulError> {
        let (entries, index) = self.kv_list_created(prefix, index, wait).await?;
        Ok((entries.into_iter().map(|(k, v, _)| (k, v)).collect(), index))
    }

    /// [`Self::kv_list`] with each key's CreateIndex: the order in which keys were
    /// made, the same on every node.
    #[allow(clippy::type_complexity)]
    pub async fn kv_list_created(
        &self,
        prefix: &str,
        index: Option<u64>,
        wait: Duration,
    ) -> Result<(Vec<(String, Vec<u8>, u64)>, u64), ConsulError> {
        let (entries, index) = self.kv_list_indexed(prefix, index, wait).await?;
        let entries = entries
            .into_iter()
            .map(|e| (e.key, e.value, e.created))
            .collect();
        Ok((entries, index))
    }

    /// [`Self::kv_list`] with each key's CreateIndex and ModifyIndex (every write of
    /// a key, even of the same bytes, raises its ModifyIndex).
    pub async fn kv_list_indexed(
        &self,
        prefix: &str,
        index: Option<u64>,
        wait: Duration,
    ) -> Result<(Vec<KvEntry>, u64), ConsulError> {
        #[derive(Deserialize)]
        struct Entry {
            #[serde(rename = "Key")]
            key: String,
            #[serde(rename = "Value")]
            value: Option<String>,
            #[serde(rename = "CreateIndex", default)]
            created: u64,
            #[serde(rename = "ModifyIndex", default)]
            modified: u64,
        }
        let path = format!("{}?recurse{}", kv_path(prefix)?, blocking(index, wait));
        let resp = self
            .send(Repeat::Safe, || self.build(reqwest::Method::GET, &path))
            .await
            .map_err(|f| f.error)?;
        let new_index = consul_index(&resp);
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok((Vec::new(), new_index));
        }
        let resp = self.check(resp).await?;
        let entries: Vec<Entry> = self.decode(resp, "a KV listing").await?;
        use base64::Engine as _;
        let entries = entries
            .into_iter()
            .map(|e| KvEntry {
                value: e
                    .value
                    .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
                    .unwrap_or_default(),
                key: e.key,
                created: e.created,
                modified: e.modified,
            })
            .collect();
        Ok((entries, new_index))
    }

    pub async fn kv_delete(&self, key: &str, recurse: bool) -> Result<(), ConsulError> {
        let mut path = kv_path(key)?;
        if recurse {
            path.push_str("?recurse");
        }
        self.request(|| self.build(reqwest::Method::DELETE, &path))
            .await?;
        Ok(())
    }

    /// Removes `node` from the gossip pool and the member list (`prune`). One the pool
    /// does not know (it never joined, or is gone already) is no error: it is not a
    /// member, as asked.
    pub async fn force_leave(&self, node: &str) -> Result<(), ConsulError> {
        let path = format!(
            "/v1/agent/force-leave/{}?prune",
            path_segment("node name", node)?
        );
        match self
            .request(|| self.build(reqwest::Method::PUT, &path))
            .await
        {
            Err(ConsulError::Status { body, .. }) if body.contains("No node found") => Ok(()),
            r => r.map(drop),
        }
    }

    /// Removes a node, its services and checks from the catalog.
    pub async fn catalog_deregister_node(&self, node: &str) -> Result<(), ConsulError> {
        let body = serde_json::json!({ "Node": node });
        self.request(|| {
            self.build(reqwest::Method::PUT, "/v1/catalog/deregister")
                .map(|b| b.json(&body))
        })
        .await?;
        Ok(())
    }

    pub async fn agent_services(&self) -> Result<BTreeMap<String, AgentService>, ConsulError> {
        self.get_json("/v1/agent/services").await
    }

    pub async fn deregister_service(&self, id: &str) -> Result<(), ConsulError> {
        let path = format!(
            "/v1/agent/service/deregister/{}",
            path_segment("service ID", id)?
        );
        self.request(|| self.build(reqwest::Method::PUT, &path))
            .await?;
        Ok(())
    }

    /// The meta of service `id` on Consul node `node` as the catalog has it (what
    /// other nodes and DNS see): one node's entry, not the whole service's.
    pub async fn catalog_node_service_meta(
        &self,
        node: &str,
        id: &str,
    ) -> Result<Option<BTreeMap<String, String>>, ConsulError> {
        #[derive(Deserialize)]
        struct NodeServices {
            #[serde(rename = "Services", default)]
            services: BTreeMap<String, Service>,
        }
        #[derive(Deserialize)]
        struct Service {
            #[serde(rename = "Meta", default)]
            meta: BTreeMap<String, String>,
        }
        let path = format!("/v1/catalog/node/{}", path_segment("node name", node)?);
        // An unknown node is a 404, or `null` from some releases.
        let found: Option<Option<NodeServices>> = self.get_json_optional(&path).await?;
        Ok(found
            .flatten()
            .and_then(|mut n| n.services.remove(id))
            .map(|s| s.meta))
    }

    pub async fn register_service(&self, reg: &ServiceRegistration) -> Result<(), ConsulError> {
        self.request(|| {
            Ok(self
                .build(reqwest::Method::PUT, "/v1/agent/service/register")?
                .json(reg))
        })
        .await?;
        Ok(())
    }

    /// A GET of a JSON document whose 404 means "no such thing" (the ACL API's).
    pub(crate) async fn get_json_optional<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Option<T>, ConsulError> {
        match self.get_optional(path).await? {
            None => Ok(None),
            Some(resp) => self.decode(resp, path).await.map(Some),
        }
    }

    /// A PUT of a JSON body (a whole document: safe to send twice) and its JSON answer.
    pub(crate) async fn put_json<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ConsulError> {
        let resp = self
            .request(|| Ok(self.build(reqwest::Method::PUT, path)?.json(body)))
            .await?;
        self.decode(resp, path).await
    }

    /// A DELETE whose 404 is no error (the thing is gone either way).
    pub(crate) async fn delete_path(&self, path: &str) -> Result<(), ConsulError> {
        let resp = self
            .send(Repeat::Safe, || self.build(reqwest::Method::DELETE, path))
            .await
            .map_err(|f| f.error)?;
        if resp.status() != StatusCode::NOT_FOUND {
            self.check(resp).await?;
        }
        Ok(())
    }

    /// Instances of `service` whose checks pass (a failed node's fail with it).
    /// With `index`, blocks until the result changes or `wait` passes; returns the
    /// new index to pass next time. Follow it with [`super::watch::BlockingQuery`].
    pub async fn healthy_instances(
        &self,
        service: &str,
        index: Option<u64>,
        wait: Duration,
    ) -> Result<(Vec<HealthEntry>, u64), ConsulError> {
        self.health_service(service, true, index, wait).await
    }

    /// Every registered instance of `service`, each with its checks: a failed node's
    /// too, until it is deregistered (`node rm`, or Consul reaping it).
    pub async fn all_instances(
        &self,
        service: &str,
        index: Option<u64>,
        wait: Duration,
    ) -> Result<(Vec<HealthEntry>, u64), ConsulError> {
        self.health_service(service, false, index, wait).await
    }

    async fn health_service(
        &self,
        service: &str,
        passing: bool,
        index: Option<u64>,
        wait: Duration,
    ) -> Result<(Vec<HealthEntry>, u64), ConsulError> {
        let mut query = if passing { "&passing" } else { "" }.to_string();
        query.push_str(&blocking(index, wait));
        let path = format!(
            "/v1/health/service/{}{}",
            path_segment("service name", service)?,
            query.replacen('&', "?", 1)
        );
        let resp = self
            .request(|| self.build(reqwest::Method::GET, &path))
            .await?;
        let new_index = consul_index(&resp);
        let entries = self.decode(resp, "a health listing").await?;
        Ok((entries, new_index))
    }
}

/// This node's agent token file (`cluster.identity_dir`).
pub fn node_token_file(config: &crate::config::Config) -> PathBuf {
    crate::paths::IdentityFiles::new(&config.cluster.identity_dir).consul_agent_token()
}

/// The query parameters of a blocking query (none without an index).
fn blocking(index: Option<u64>, wait: Duration) -> String {
    match index {
        Some(i) => format!("&index={i}&wait={}s", wait.as_secs().max(1)),
        None => String::new(),
    }
}

fn consul_index(resp: &reqwest::Response) -> u64 {
    resp.headers()
        .get("X-Consul-Index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_keys_are_encoded_and_traversal_refused() {
        assert_eq!(
            kv_path("arpanet/cluster/services/web").unwrap(),
            "/v1/kv/arpanet/cluster/services/web"
        );
        assert_eq!(kv_path("/a/b/").unwrap(), "/v1/kv/a/b/");
        assert_eq!(kv_path("").unwrap(), "/v1/kv/");
        assert_eq!(
            kv_path("a/x?raw#y z%").unwrap(),
            "/v1/kv/a/x%3Fraw%23y%20z%25"
        );
        assert_eq!(kv_path("a/..x/b.c").unwrap(), "/v1/kv/a/..x/b.c");
        for bad in [
            "arpanet/cluster/templates/../services/web",
            "a/..",
            "./a",
            "a/./b",
            "a\nb",
            "a\0",
        ] {
            let e = kv_path(bad).unwrap_err().to_string();
            assert!(e.starts_with("KV key `"), "{bad}: {e}");
        }
    }

    #[test]
    fn names_and_ids_are_one_encoded_segment() {
        assert_eq!(path_segment("service ID", "web-1").unwrap(), "web-1");
        assert_eq!(
            path_segment("service ID", "a/b?c#d e%").unwrap(),
            "a%2Fb%3Fc%23d%20e%25"
        );
        for bad in ["", ".", "..", "a\nb"] {
            let e = path_segment("service ID", bad).unwrap_err().to_string();
            assert!(e.starts_with("service ID `"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn only_safe_requests_are_resent_when_the_outcome_is_unknown() {
        for repeat in [Repeat::Safe, Repeat::IfNotApplied] {
            assert!(may_resend(repeat, Effect::NotApplied), "{repeat:?}");
        }
        assert!(may_resend(Repeat::Safe, Effect::Unknown));
        assert!(!may_resend(Repeat::IfNotApplied, Effect::Unknown));
    }

    #[test]
    fn election_answers_say_whether_the_write_can_have_landed() {
        let e500 = StatusCode::INTERNAL_SERVER_ERROR;
        for (body, effect) in [
            ("No cluster leader", Some(Effect::NotApplied)),
            (
                "rpc error making call: No cluster leader",
                Some(Effect::NotApplied),
            ),
            ("No known Consul servers", Some(Effect::NotApplied)),
            (
                "rpc error making call: failed to get conn: dial tcp: connection refused",
                Some(Effect::NotApplied),
            ),
            (
                "leadership lost while committing log",
                Some(Effect::Unknown),
            ),
            ("rpc error making call: EOF", Some(Effect::Unknown)),
            ("Invalid request", None),
        ] {
            assert_eq!(during_election(e500, body), effect, "{body}");
        }
        // Only a server error is an election's.
        assert_eq!(
            during_election(StatusCode::BAD_REQUEST, "No cluster leader"),
            None
        );
    }

    #[test]
    fn a_create_of_unknown_outcome_is_settled_by_what_the_key_holds() {
        assert_eq!(settle_create(Some(b"mine"), b"mine"), Settled::Stored);
        assert_eq!(settle_create(Some(b"theirs"), b"mine"), Settled::Taken);
        assert_eq!(settle_create(Some(b""), b"mine"), Settled::Taken);
        assert_eq!(settle_create(None, b"mine"), Settled::Absent);
    }
}
