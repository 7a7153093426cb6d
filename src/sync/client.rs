//! arpanetd's side of the sync service: fetch an image from the swarm before falling
//! back to a registry (containers.d and cluster services whose image is missing).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tracing::info;

use super::{ImageRequest, Transfer, TransferState};

/// Pulls `image` through the sync service at `socket`. `Ok(false)`: the cluster has no
/// such image (or no sync service runs here), so a registry is next.
pub async fn fetch_from_swarm(socket: &Path, image: &str) -> anyhow::Result<bool> {
    if !socket.exists() {
        return Ok(false);
    }
    let http = reqwest::Client::builder()
        .unix_socket(socket)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("a unix-socket HTTP client always builds");
    let started = http
        .post("http://sync/v1/pulls")
        .json(&ImageRequest {
            image: image.to_string(),
            start_at: None,
        })
        .send()
        .await
        .with_context(|| format!("ask the image sync service at {}", socket.display()))?;
    if started.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(false);
    }
    if !started.status().is_success() {
        let body: serde_json::Value = started.json().await.unwrap_or_default();
        bail!("image sync: {}", body["error"].as_str().unwrap_or("failed"));
    }
    let mut transfer: Transfer = started.json().await?;
    info!("fetching {image} from the cluster's nodes");
    while !transfer.state.finished() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        transfer = http
            .get(format!("http://sync/v1/pulls/{}", transfer.id))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
    }
    match transfer.state {
        TransferState::Done => Ok(true),
        _ => Err(anyhow!(
            "image sync: {}",
            transfer.error.unwrap_or_else(|| "failed".into())
        )),
    }
}
