//! Getting a blob this node lacks from the nodes that hold it: over the cluster API on
//! their overlay address (mutual TLS, node certificates), resuming with `Range` from
//! what an earlier try or another holder already sent, and verified against the digest
//! before it is stored. A holder that dies mid-transfer is replaced by the next; one
//! whose bytes do not match the digest is dropped and the blob fetched again elsewhere.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt as _;
use reqwest::StatusCode;
use tracing::{info, warn};

use super::catalog::{ConsulCatalog, Holder};
use super::spec::Digest;
use super::store::{BlobStore, StoreError};
use super::{BlobSource, Catalog as _, FetchError};
use crate::addressing::NodeAddress;
use crate::identity::NodeClient;

/// The cluster API path a node serves its own blobs at (nodes only, read only).
pub fn blob_path(digest: &Digest) -> String {
    format!("/v1/registry/blobs/{digest}")
}

pub struct PeerFetch {
    catalog: Arc<ConsulCatalog>,
    http: NodeClient,
    api_port: u16,
    /// One fetch per blob at a time: pulls that want it at once wait for the first.
    running: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
}

impl PeerFetch {
    pub fn new(catalog: Arc<ConsulCatalog>, http: NodeClient, api_port: u16) -> Self {
        Self {
            catalog,
            http,
            api_port,
            running: Mutex::default(),
        }
    }

    fn lock_for(&self, digest: &Digest) -> Arc<tokio::sync::Mutex<()>> {
        self.running
            .lock()
            .unwrap()
            .entry(digest.clone())
            .or_default()
            .clone()
    }

    /// Fetches from one holder into the blob's fetch upload, from what it has on.
    async fn fetch_from_holder(
        &self,
        holder: Holder,
        digest: &Digest,
        size: u64,
        store: &BlobStore,
    ) -> Result<(), Stopped> {
        let mut upload = store.fetch_upload(digest).await?;
        let mut offset = store.upload_size(&upload).await?.unwrap_or(0);
        if offset > size {
            store.cancel(&upload).await?;
            upload = store.fetch_upload(digest).await?;
            offset = 0;
        }
        if offset < size {
            info!(
                "registry: fetching {} from node {} at byte {offset} of {size}",
                short(digest),
                holder.node
            );
            let http = self
                .http
                .streaming()
                .map_err(|e| Stopped::Peer(e.to_string()))?;
            let url = format!(
                "https://{}:{}{}",
                holder.node.overlay_ip(),
                self.api_port,
                blob_path(digest)
            );
            let answer = http
                .get(&url)
                .header(reqwest::header::RANGE, format!("bytes={offset}-"))
                .send()
                .await
                .map_err(|e| Stopped::Peer(crate::http::request_error(e)))?;
            let status = answer.status();
            match status {
                StatusCode::PARTIAL_CONTENT => {}
                // A whole answer is good only when nothing was had yet.
                StatusCode::OK if offset == 0 => {}
                _ => {
                    let body = answer.bytes().await.unwrap_or_default();
                    return Err(Stopped::Peer(crate::http::error_text(status, &body)));
                }
            }
            // Never more than the blob's size: a holder cannot fill the disk.
            let left = size - offset;
            let mut taken = 0u64;
            let body = answer.bytes_stream().map(move |chunk| {
                let mut chunk = chunk?;
                if taken + chunk.len() as u64 > left {
                    chunk.truncate((left - taken) as usize);
                }
                taken += chunk.len() as u64;
                crate::metrics::registry_blob_bytes("received", chunk.len() as u64);
                Ok::<_, reqwest::Error>(chunk)
            });
            let have = store.append(&upload, Some(offset), body).await?;
            if have < size {
                // The holder ended its answer early (it stopped): the next one goes on.
                return Err(Stopped::Peer(format!(
                    "its answer ended at byte {have} of {size}"
                )));
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl BlobSource for PeerFetch {
    async fn fetch(&self, digest: &Digest, size: u64, store: &BlobStore) -> Result<(), FetchError> {
        let lock = self.lock_for(digest);
        let _held = lock.lock().await;
        if store.size(digest).await.is_some() {
            return Ok(());
        }
        let me = self.catalog.me();
        let mut holders: Vec<Holder> = self
            .catalog
            .holders(digest)
            .await?
            .into_iter()
            .filter(|h| h.node != me && h.size == size)
            .collect();
        order_holders(me, &mut holders, digest);
        let upload = store.fetch_upload(digest).await?;
        for holder in holders {
            if let Err(e) = self.fetch_from_holder(holder, digest, size, store).await {
                if let Stopped::Store(e @ StoreError::DiskFull { .. }) = e {
                    // What arrived is kept: the next pull goes on from there.
                    let have = store.upload_size(&upload).await.ok().flatten().unwrap_or(0);
                    warn!(
                        "registry: {e}: {} of {} still to fetch; the pull resumes when run again",
                        crate::human::bytes(size.saturating_sub(have)),
                        short(digest)
                    );
                    return Err(e.into());
                }
                // What arrived is kept: the next holder goes on from there.
                warn!(
                    "registry: fetching {} from node {} stopped: {e}",
                    short(digest),
                    holder.node
                );
                continue;
            }
            match store.commit(&upload, digest).await {
                Ok(_) => {
                    self.catalog.hold(digest, size).await?;
                    info!(
                        "registry: {} fetched from node {}",
                        short(digest),
                        holder.node
                    );
                    return Ok(());
                }
                Err(StoreError::DigestMismatch { .. }) => {
                    // The store dropped the bytes; the blob is fetched whole elsewhere.
                    warn!(
                        "registry: the bytes of {} from node {} do not match its digest; dropped",
                        short(digest),
                        holder.node
                    );
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(FetchError::NoHolder(digest.to_string()))
    }
}

/// Why a fetch from one holder stopped: this node's store, or the holder.
#[derive(Debug, thiserror::Error)]
enum Stopped {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Peer(String),
}

/// The order in which `me` asks the holders of `digest`: one of its own per puller and
/// blob, so pullers start at different holders and one holder is not asked by all.
pub fn order_holders(me: NodeAddress, holders: &mut [Holder], digest: &Digest) {
    holders.sort_by_key(|h| spread(me, h.node, digest));
}

fn spread(me: NodeAddress, holder: NodeAddress, digest: &Digest) -> [u8; 8] {
    use sha2::Digest as _;
    let h = sha2::Sha256::digest(format!("{me}\0{holder}\0{digest}"));
    h[..8].try_into().expect("8 bytes")
}

fn short(digest: &Digest) -> &str {
    &digest.hex()[..12]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pullers_start_at_different_holders() {
        let d = Digest::of(b"layer");
        let holders: Vec<NodeAddress> =
            (1..=4).map(|i| format!("0.{i}").parse().unwrap()).collect();
        let first: std::collections::BTreeSet<NodeAddress> = (10..=30)
            .map(|i| {
                let me: NodeAddress = format!("0.{i}").parse().unwrap();
                *holders.iter().min_by_key(|h| spread(me, **h, &d)).unwrap()
            })
            .collect();
        assert!(first.len() > 1, "every puller starts at {first:?}");
    }
}
