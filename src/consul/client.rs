//! A thin typed client for the parts of Consul's HTTP API arpanet uses.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The URL path of a KV key: each segment percent-encoded, so `?`, `#`, `%` and spaces
/// stay part of the key. A key with a `.` or `..` segment or a control character is
/// refused: no name that made it into one could be meant, and HTTP stacks clean
/// `..` away, which would read or write another key.
pub fn kv_path(key: &str) -> anyhow::Result<String> {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    const SEGMENT: &percent_encoding::AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    let key = key.trim_start_matches('/');
    if key.chars().any(char::is_control) {
        bail!("KV key `{}`: holds a control character", key.escape_debug());
    }
    let mut path = String::from("/v1/kv/");
    for (i, segment) in key.split('/').enumerate() {
        if segment == "." || segment == ".." {
            bail!("KV key `{key}`: a `{segment}` segment");
        }
        if i > 0 {
            path.push('/');
        }
        path.extend(utf8_percent_encode(segment, SEGMENT));
    }
    Ok(path)
}

pub struct Consul {
    addr: SocketAddr,
    http: reqwest::Client,
    /// How many times a request is tried while the cluster has no leader.
    election_attempts: u32,
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

/// Consul's answers that mean "no leader right now", which a moment later succeed.
fn during_election(status: reqwest::StatusCode, body: &str) -> bool {
    status.is_server_error()
        && [
            "No cluster leader",
            "rpc error",
            "failed to get conn",
            "No known Consul servers",
            "leadership lost",
        ]
        .iter()
        .any(|m| body.contains(m))
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
        }
    }

    /// A client that reports "no leader" at once instead of waiting for an election:
    /// for showing the current state, as `arpanet status` does.
    pub fn impatient(addr: SocketAddr) -> Self {
        Self {
            election_attempts: 1,
            ..Self::new(addr)
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends a request; while the cluster has no leader, tries again with backoff.
    /// Every request arpanet sends is idempotent, so repeating one is safe.
    async fn send(
        &self,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::Response> {
        let mut pause = FIRST_PAUSE;
        for _ in 1..self.election_attempts {
            let resp = self.send_once(&build).await?;
            if !resp.status().is_server_error() {
                return Ok(resp);
            }
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            if !during_election(status, &body) {
                let first = body
                    .trim()
                    .lines()
                    .next()
                    .unwrap_or("no detail")
                    .to_string();
                bail!("Consul at {} answered {status}: {first}", self.addr);
            }
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
        self.send_once(&build).await
    }

    /// Sends a request, retrying only when Consul could not be reached at all.
    async fn send_once(
        &self,
        build: &impl Fn() -> reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::Response> {
        let mut pause = FIRST_PAUSE;
        let mut attempt = 1;
        loop {
            match build().send().await {
                Ok(resp) => return Ok(resp),
                Err(e) if e.is_connect() && attempt < ATTEMPTS => {
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    attempt += 1;
                }
                Err(e) => {
                    let reason = if e.is_connect() {
                        "connection refused".to_string()
                    } else if e.is_timeout() {
                        "no answer in time".to_string()
                    } else {
                        e.without_url().to_string()
                    };
                    bail!(
                        "cannot reach Consul at {}: {reason} (is the agent running? `arpanet status` tells)",
                        self.addr
                    )
                }
            }
        }
    }

    /// Turns a non-2xx answer into one line with Consul's own words.
    async fn check(&self, resp: reqwest::Response) -> anyhow::Result<reqwest::Response> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        let body = body.trim().lines().next().unwrap_or("").to_string();
        bail!(
            "Consul at {} answered {}: {}",
            self.addr,
            status,
            if body.is_empty() { "no detail" } else { &body }
        )
    }

    async fn get_json<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let resp = self.send(|| self.http.get(self.url(path))).await?;
        let resp = self.check(resp).await?;
        resp.json().await.map_err(|e| {
            anyhow!(
                "unexpected answer from Consul at {} for {path}: {e}",
                self.addr
            )
        })
    }

    /// Waits until the local agent answers at all (it was just started).
    pub async fn wait_until_up(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match self.http.get(self.url("/v1/agent/self")).send().await {
                Ok(resp) if resp.status().is_success() => return Ok(()),
                _ if tokio::time::Instant::now() >= deadline => {
                    bail!(
                        "the Consul agent at {} did not answer within {limit:?} of starting",
                        self.addr
                    )
                }
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    /// Waits until the cluster has a leader (an agent that was just started has none).
    pub async fn wait_for_leader(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Ok(Some(_)) = self.leader().await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "no Consul leader within {limit:?} of starting the agent at {}",
                    self.addr
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub async fn members(&self) -> anyhow::Result<Vec<Member>> {
        self.get_json("/v1/agent/members").await
    }

    /// The Raft leader's address, or `None` while there is none.
    pub async fn leader(&self) -> anyhow::Result<Option<String>> {
        let leader: String = self.get_json("/v1/status/leader").await?;
        Ok(Some(leader).filter(|l| !l.is_empty()))
    }

    pub async fn raft_peers(&self) -> anyhow::Result<Vec<String>> {
        self.get_json("/v1/status/peers").await
    }

    pub async fn agent_self(&self) -> anyhow::Result<serde_json::Value> {
        self.get_json("/v1/agent/self").await
    }

    pub async fn kv_get(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let path = format!("{}?raw", kv_path(key)?);
        let resp = self.send(|| self.http.get(self.url(&path))).await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = self.check(resp).await?;
        Ok(Some(resp.bytes().await?.to_vec()))
    }

    /// Keys under `prefix` (all of them, not only one level).
    pub async fn kv_keys(&self, prefix: &str) -> anyhow::Result<Vec<String>> {
        let path = format!("{}?keys", kv_path(prefix)?);
        let resp = self.send(|| self.http.get(self.url(&path))).await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        let resp = self.check(resp).await?;
        Ok(resp.json().await?)
    }

    pub async fn kv_put(&self, key: &str, value: Vec<u8>) -> anyhow::Result<()> {
        let path = kv_path(key)?;
        let resp = self
            .send(|| self.http.put(self.url(&path)).body(value.clone()))
            .await?;
        let resp = self.check(resp).await?;
        if resp.text().await?.trim() != "true" {
            bail!("Consul at {} did not store {key}", self.addr);
        }
        Ok(())
    }

    /// Stores `value` only if `key` does not exist yet; returns whether it was stored.
    pub async fn kv_put_new(&self, key: &str, value: Vec<u8>) -> anyhow::Result<bool> {
        let path = format!("{}?cas=0", kv_path(key)?);
        let resp = self
            .send(|| self.http.put(self.url(&path)).body(value.clone()))
            .await?;
        let resp = self.check(resp).await?;
        Ok(resp.text().await?.trim() == "true")
    }

    /// Every key and value under `prefix`. With `index`, blocks until something under
    /// it changes or `wait` passes; returns the index to pass next time.
    pub async fn kv_list(
        &self,
        prefix: &str,
        index: Option<u64>,
        wait: Duration,
    ) -> anyhow::Result<(Vec<(String, Vec<u8>)>, u64)> {
        #[derive(Deserialize)]
        struct Entry {
            #[serde(rename = "Key")]
            key: String,
            #[serde(rename = "Value")]
            value: Option<String>,
        }
        let mut path = format!("{}?recurse", kv_path(prefix)?);
        if let Some(i) = index {
            path.push_str(&format!("&index={i}&wait={}s", wait.as_secs().max(1)));
        }
        let resp = self.send(|| self.http.get(self.url(&path))).await?;
        let new_index = consul_index(&resp);
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok((Vec::new(), new_index));
        }
        let resp = self.check(resp).await?;
        let entries: Vec<Entry> = resp
            .json()
            .await
            .map_err(|e| anyhow!("unexpected KV answer from Consul: {e}"))?;
        use base64::Engine as _;
        let entries = entries
            .into_iter()
            .map(|e| {
                let value = e
                    .value
                    .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
                    .unwrap_or_default();
                (e.key, value)
            })
            .collect();
        Ok((entries, new_index))
    }

    pub async fn kv_delete(&self, key: &str, recurse: bool) -> anyhow::Result<()> {
        let mut path = kv_path(key)?;
        if recurse {
            path.push_str("?recurse");
        }
        let resp = self.send(|| self.http.delete(self.url(&path))).await?;
        self.check(resp).await?;
        Ok(())
    }

    pub async fn agent_services(&self) -> anyhow::Result<BTreeMap<String, AgentService>> {
        self.get_json("/v1/agent/services").await
    }

    pub async fn deregister_service(&self, id: &str) -> anyhow::Result<()> {
        let path = format!("/v1/agent/service/deregister/{id}");
        let resp = self.send(|| self.http.put(self.url(&path))).await?;
        self.check(resp).await?;
        Ok(())
    }

    /// Instances of `service` in the catalog (what other nodes and DNS see), with
    /// their meta.
    pub async fn catalog_service_meta(
        &self,
        service: &str,
    ) -> anyhow::Result<Vec<BTreeMap<String, String>>> {
        #[derive(Deserialize)]
        struct Entry {
            #[serde(rename = "ServiceMeta", default)]
            meta: BTreeMap<String, String>,
        }
        let entries: Vec<Entry> = self
            .get_json(&format!("/v1/catalog/service/{service}"))
            .await?;
        Ok(entries.into_iter().map(|e| e.meta).collect())
    }

    pub async fn register_service(&self, reg: &ServiceRegistration) -> anyhow::Result<()> {
        let resp = self
            .send(|| {
                self.http
                    .put(self.url("/v1/agent/service/register"))
                    .json(reg)
            })
            .await?;
        self.check(resp).await?;
        Ok(())
    }

    /// Instances of `service` whose checks pass (a failed node's fail with it).
    /// With `index`, blocks until the result changes or `wait` passes; returns the
    /// new index to pass next time.
    pub async fn healthy_instances(
        &self,
        service: &str,
        index: Option<u64>,
        wait: Duration,
    ) -> anyhow::Result<(Vec<HealthEntry>, u64)> {
        let mut path = format!("/v1/health/service/{service}?passing");
        if let Some(i) = index {
            path.push_str(&format!("&index={i}&wait={}s", wait.as_secs().max(1)));
        }
        let resp = self.send(|| self.http.get(self.url(&path))).await?;
        let resp = self.check(resp).await?;
        let new_index = consul_index(&resp);
        let entries = resp
            .json()
            .await
            .map_err(|e| anyhow!("unexpected health answer from Consul: {e}"))?;
        Ok((entries, new_index))
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
}
