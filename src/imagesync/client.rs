//! arpanetd's side of the sync service: fetch an image from the swarm before falling
//! back to a registry (containers.d and cluster services whose image is missing).

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail};
use tracing::info;

use super::{ImageRequest, Transfer, TransferState};
use crate::http;

/// Pulls `image` through the sync service at `socket`. `Ok(false)`: the cluster has no
/// such image (or no sync service runs here), so a registry is next.
pub async fn fetch_from_swarm(socket: &Path, image: &str) -> anyhow::Result<bool> {
    if !socket.exists() {
        return Ok(false);
    }
    let client = http::unix_client(socket, Duration::from_secs(30));
    let started = client
        .post("http://sync/v1/pulls")
        .json(&ImageRequest {
            image: image.to_string(),
            start_at: None,
        })
        .send()
        .await
        .map_err(|e| unreachable(socket, e))?;
    let status = started.status();
    if status == reqwest::StatusCode::NOT_FOUND {
        return Ok(false);
    }
    let body = started.bytes().await.map_err(|e| unreachable(socket, e))?;
    if !status.is_success() {
        bail!("image sync: {}", http::error_text(status, &body));
    }
    let mut transfer: Transfer =
        serde_json::from_slice(&body).map_err(|e| anyhow!("image sync: unexpected answer: {e}"))?;
    info!("fetching {image} from the cluster's nodes");
    while !transfer.state.finished() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let resp = client
            .get(format!("http://sync/v1/pulls/{}", transfer.id))
            .send()
            .await
            .map_err(|e| unreachable(socket, e))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| unreachable(socket, e))?;
        if !status.is_success() {
            bail!("image sync: {}", http::error_text(status, &body));
        }
        transfer = serde_json::from_slice(&body)
            .map_err(|e| anyhow!("image sync: unexpected answer: {e}"))?;
    }
    match transfer.state {
        TransferState::Done => Ok(true),
        _ => Err(anyhow!(
            "image sync: {}",
            transfer.error.unwrap_or_else(|| "failed".into())
        )),
    }
}

fn unreachable(socket: &Path, e: reqwest::Error) -> anyhow::Error {
    anyhow!(
        "ask the image sync service at {}: {}",
        socket.display(),
        http::request_error(e)
    )
}
