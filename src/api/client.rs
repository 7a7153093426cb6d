//! The CLI's side of the API: requests to the local arpanetd over its unix socket.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::http::{self, ErrorBody};

pub struct ApiClient {
    http: reqwest::Client,
    socket: PathBuf,
}

impl ApiClient {
    pub fn new(socket: &Path) -> Self {
        // Listings wait for every node; a routed stop waits out a grace period.
        Self::with_timeout(socket, std::time::Duration::from_secs(60))
    }

    /// For requests that do long work before they answer (an image push).
    pub fn with_timeout(socket: &Path, timeout: std::time::Duration) -> Self {
        Self {
            http: http::unix_client(socket, timeout),
            socket: socket.to_path_buf(),
        }
    }

    pub fn from_config(config: &crate::config::Config) -> Self {
        Self::new(&crate::paths::api_socket(&config.paths))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(reqwest::Method::GET, path, None::<&()>).await
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<T> {
        self.send(reqwest::Method::POST, path, body).await
    }

    pub async fn put<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> anyhow::Result<T> {
        self.send(reqwest::Method::PUT, path, Some(body)).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(reqwest::Method::DELETE, path, None::<&()>).await
    }

    /// A GET whose answer streams ([`LogRecord`](super::LogRecord)s, for as long as the
    /// user follows them): the body as it arrives, chunk by chunk. A refusal is an error
    /// as with [`ApiClient::get`].
    pub async fn get_stream(
        &self,
        path: &str,
    ) -> anyhow::Result<impl futures::Stream<Item = Result<bytes::Bytes, String>> + use<>> {
        use futures::TryStreamExt;
        let resp = http::unix_streaming_client(&self.socket)
            .get(format!("http://arpanetd{path}"))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = resp.bytes().await.unwrap_or_default();
            bail!("{}", http::error_text(status, &bytes));
        }
        Ok(resp.bytes_stream().map_err(http::request_error))
    }

    fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        anyhow!(
            "cannot reach arpanetd at {}: {} (is arpanetd running? are you root?)",
            self.socket.display(),
            http::request_error(e)
        )
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<T> {
        let mut req = self.http.request(method, format!("http://arpanetd{path}"));
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| {
            anyhow!(
                "arpanetd at {} broke off its answer: {}",
                self.socket.display(),
                http::request_error(e)
            )
        })?;
        if !status.is_success() {
            match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(e) => bail!("{}", e.error),
                Err(_) => bail!("arpanetd answered {status}"),
            }
        }
        serde_json::from_slice(&bytes).map_err(|e| anyhow!("unexpected answer from arpanetd: {e}"))
    }
}
