//! The node's registry: every node serves the OCI Distribution API (v2) on
//! `127.0.0.1:PORT`, which dockerd trusts without TLS, so `docker push` and `docker run
//! 127.0.0.1:PORT/app:v2` work on any node and the name means the same image on all.
//!
//! Split by concern:
//! - [`spec`]: the wire (names, digests, references, error codes), validated before any
//!   of it becomes a path, a KV key or a URL;
//! - [`store`]: the node's blob store, content-addressed and verified on write;
//! - [`api`]: the `/v2/` routes;
//! - [`catalog`]: manifests, tags and which nodes hold which blob, in Consul KV;
//! - [`pieces`]: a blob as pieces (the piece list, bitfields, a seed's book);
//! - [`swarm`]: this node's side of the blob swarms (what it serves other nodes);
//! - [`fetch`]: getting a blob this node lacks from its swarm, piece by piece;
//! - [`manifest`]: what a manifest refers to (blobs, sizes, child manifests);
//! - [`images`]: image names as users write them, and the cluster's images as
//!   `arpanet image ls` lists them.

pub mod api;
pub mod catalog;
pub mod fetch;
pub mod gc;
pub mod images;
pub mod manifest;
pub mod pieces;
pub mod server;
pub mod spec;
pub mod store;
pub mod swarm;
pub mod sweeper;

use std::sync::Arc;

use bytes::Bytes;

use spec::{Digest, RepoName, Tag};
use store::BlobStore;

/// A manifest as pushed: its bytes are what its digest names and what a pull gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub media_type: String,
    pub digest: Digest,
    pub bytes: Bytes,
}

/// Why the cluster's view could not be read or written (Consul down, a record that
/// does not parse): the registry answers 503 and changes nothing.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("the cluster's registry records are unavailable: {0}")]
    Unavailable(String),
    #[error("the registry record {key} is not believed: {why}")]
    BadRecord { key: String, why: String },
    #[error("{0}")]
    Refused(String),
}

/// Where manifests, tags and blob holders live: Consul KV in the product
/// ([`catalog::ConsulCatalog`]).
#[async_trait::async_trait]
pub trait Catalog: Send + Sync {
    async fn manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<Manifest>, CatalogError>;
    /// Stores the manifest in `repo` and, with `tag`, points the tag at it.
    async fn put_manifest(
        &self,
        repo: &RepoName,
        manifest: &Manifest,
        tag: Option<&Tag>,
    ) -> Result<(), CatalogError>;
    /// Deletes the manifest and every tag of `repo` that points at it; false if the
    /// repository has no such manifest.
    async fn delete_manifest(&self, repo: &RepoName, digest: &Digest)
    -> Result<bool, CatalogError>;
    async fn tag(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>, CatalogError>;
    async fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<bool, CatalogError>;
    /// The repository's tags, sorted lexically; `None` if there is no such repository.
    async fn tags(&self, repo: &RepoName) -> Result<Option<Vec<String>>, CatalogError>;
    /// Every repository, sorted lexically.
    async fn repositories(&self) -> Result<Vec<String>, CatalogError>;
    /// The size of a blob some node holds, if any does.
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>, CatalogError>;
    /// Says that this node holds the blob (verified, whole) from now on.
    async fn hold(&self, digest: &Digest, size: u64) -> Result<(), CatalogError>;
}

/// Why a blob could not be fetched from the nodes that hold it.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no node that holds {0} is reachable")]
    NoHolder(String),
    #[error("{0}")]
    Store(#[from] store::StoreError),
    #[error("{0}")]
    Catalog(#[from] CatalogError),
}

/// A blob's bytes as they arrive.
pub type BlobStream = futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>>;

/// Gets a blob this node lacks from the nodes that hold it, into the store (verified).
#[async_trait::async_trait]
pub trait BlobSource: Send + Sync {
    async fn fetch(&self, digest: &Digest, size: u64, store: &BlobStore) -> Result<(), FetchError>;

    /// Starts fetching the blob into the store and gives its bytes as they arrive;
    /// `None`: this source cannot, or the blob is in the store already.
    async fn stream(&self, _digest: &Digest, _size: u64) -> Result<Option<BlobStream>, FetchError> {
        Ok(None)
    }
}

/// What the `/v2/` routes work with.
#[derive(Clone)]
pub struct Registry {
    pub store: Arc<BlobStore>,
    pub catalog: Arc<dyn Catalog>,
    /// `None`: a registry of this node's blobs alone.
    pub source: Option<Arc<dyn BlobSource>>,
    /// What this node serves the blob swarms (other nodes' pulls).
    pub swarm: Arc<swarm::Swarm>,
}

/// This node's registry as arpanetd runs it: blobs under the state dir, records in
/// Consul KV, missing blobs fetched from other nodes over the cluster API.
pub async fn open(
    config: &crate::config::Config,
    tls: crate::identity::NodeTls,
) -> Result<Registry, store::StoreError> {
    let store = Arc::new(BlobStore::open(crate::paths::registry_dir(&config.paths)).await?);
    let catalog = Arc::new(catalog::ConsulCatalog::new(
        crate::consul::client::Consul::for_node(config),
        config.node.address,
    ));
    // 3 s to connect, 30 s for an answer: an answer is one piece (1 MiB and up).
    let http = crate::identity::NodeClient::new(
        tls,
        std::time::Duration::from_secs(3),
        std::time::Duration::from_secs(30),
    );
    let swarm = Arc::new(swarm::Swarm::new(store.clone()));
    let source = fetch::PeerFetch::new(catalog.clone(), http, config.api.port, swarm.clone());
    // Pulls this node left unfinished when it stopped are no pulls: their records go
    // once Consul answers.
    let forget = catalog.clone();
    tokio::spawn(async move {
        while let Err(e) = forget.forget_my_pulls().await {
            tracing::debug!("registry: pull records wait: {e}");
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        }
    });
    Ok(Registry {
        store,
        catalog,
        source: Some(source),
        swarm,
    })
}
