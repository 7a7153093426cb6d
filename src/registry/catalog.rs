//! The cluster's registry records in Consul KV, and which nodes hold which blob (Consul
//! as the tracker):
//!
//! - `arpanet/registry/repos/NAME/_manifests/HEX` — a [`ManifestRecord`];
//! - `arpanet/registry/repos/NAME/_tags/TAG` — the digest the tag points at;
//! - `arpanet/registry/blobs/HEX/A.B` — a [`HolderRecord`]: node A.B holds the blob;
//! - `arpanet/registry/pulls/HEX/A.B` — a [`HolderRecord`]: node A.B is fetching it,
//!   and serves the pieces it has to the blob's other pullers.
//!
//! `_manifests` and `_tags` cannot be a repository name's component (those start with
//! a letter or digit), so one repository's keys never read as another's. Anyone who can
//! write KV can write a record: each is believed only when it parses, its key's parts
//! are valid names and a manifest's bytes hash to its key.

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::spec::{Digest, RepoName, Tag};
use super::{Catalog, CatalogError, Manifest};
use crate::addressing::NodeAddress;
use crate::consul::client::{Consul, ConsulError};

pub const KV_REGISTRY: &str = "arpanet/registry/";
pub const KV_REPOS: &str = "arpanet/registry/repos/";
pub const KV_BLOBS: &str = "arpanet/registry/blobs/";
pub const KV_PULLS: &str = "arpanet/registry/pulls/";
pub const MANIFESTS: &str = "/_manifests/";
pub const TAGS: &str = "/_tags/";

/// A manifest as KV keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestRecord {
    pub media_type: String,
    /// The manifest's bytes, base64.
    pub manifest: String,
}

/// A node that holds a blob, whole and verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderRecord {
    pub size: u64,
}

/// A node that holds a blob, read from KV.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    pub node: NodeAddress,
    pub size: u64,
}

pub fn manifest_key(repo: &RepoName, digest: &Digest) -> String {
    format!("{KV_REPOS}{repo}{MANIFESTS}{}", digest.hex())
}

pub fn tag_key(repo: &RepoName, tag: &Tag) -> String {
    format!("{KV_REPOS}{repo}{TAGS}{tag}")
}

pub fn holder_key(digest: &Digest, node: NodeAddress) -> String {
    format!("{KV_BLOBS}{}/{node}", digest.hex())
}

/// The manifest in a record read from `key`; refused unless its bytes are what the
/// key's digest names.
pub fn parse_manifest(key: &str, value: &[u8]) -> Result<Manifest, CatalogError> {
    let bad = |why: String| CatalogError::BadRecord {
        key: key.to_string(),
        why,
    };
    let hex = key.rsplit('/').next().unwrap_or_default();
    let digest = Digest::parse(&format!("sha256:{hex}")).map_err(|e| bad(e.to_string()))?;
    let record: ManifestRecord =
        serde_json::from_slice(value).map_err(|e| bad(format!("not a manifest record: {e}")))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&record.manifest)
        .map_err(|e| bad(format!("manifest: not base64: {e}")))?;
    let actual = Digest::of(&bytes);
    if actual != digest {
        return Err(bad(format!("its bytes are {actual}, not {digest}")));
    }
    Ok(Manifest {
        media_type: record.media_type,
        digest,
        bytes: bytes.into(),
    })
}

/// The repository a key under `repos/` belongs to, if the key is one of a manifest or a
/// tag with valid names.
pub fn repository_of(key: &str) -> Option<RepoName> {
    let rest = key.strip_prefix(KV_REPOS)?;
    let (repo, tail) = rest
        .split_once(MANIFESTS)
        .or_else(|| rest.split_once(TAGS))?;
    if tail.is_empty() || tail.contains('/') {
        return None;
    }
    RepoName::parse(repo).ok()
}

/// The blob and node a holder key names, if both parse.
pub fn parse_holder_key(key: &str) -> Option<(Digest, NodeAddress)> {
    let (hex, node) = key.strip_prefix(KV_BLOBS)?.split_once('/')?;
    Some((
        Digest::parse(&format!("sha256:{hex}")).ok()?,
        node.parse().ok()?,
    ))
}

/// Holders of one blob from the entries under its prefix; entries whose node or record
/// does not parse are left out.
pub fn parse_holders(entries: &[(String, Vec<u8>)]) -> Vec<Holder> {
    entries
        .iter()
        .filter_map(|(key, value)| {
            let node = key.rsplit('/').next()?.parse().ok()?;
            let record: HolderRecord = serde_json::from_slice(value).ok()?;
            Some(Holder {
                node,
                size: record.size,
            })
        })
        .collect()
}

/// The catalog in Consul KV, as this node sees it.
pub struct ConsulCatalog {
    consul: Consul,
    me: NodeAddress,
}

impl ConsulCatalog {
    pub fn new(consul: Consul, me: NodeAddress) -> Self {
        Self { consul, me }
    }

    pub fn me(&self) -> NodeAddress {
        self.me
    }

    /// The nodes that hold the blob and that Consul lists as healthy (this one too).
    pub async fn holders(&self, digest: &Digest) -> Result<Vec<Holder>, CatalogError> {
        self.healthy_under(&format!("{KV_BLOBS}{}/", digest.hex()))
            .await
    }

    /// The nodes fetching the blob now, as [`ConsulCatalog::holders`].
    pub async fn pullers(&self, digest: &Digest) -> Result<Vec<Holder>, CatalogError> {
        self.healthy_under(&format!("{KV_PULLS}{}/", digest.hex()))
            .await
    }

    /// Says that this node is fetching the blob, so its other pullers find it.
    pub async fn pulling(&self, digest: &Digest, size: u64) -> Result<(), CatalogError> {
        let value = serde_json::to_vec(&HolderRecord { size }).expect("a holder serializes");
        let key = format!("{KV_PULLS}{}/{}", digest.hex(), self.me);
        self.consul.kv_put(&key, value).await.map_err(unavailable)
    }

    pub async fn done_pulling(&self, digest: &Digest) -> Result<(), CatalogError> {
        self.delete(&format!("{KV_PULLS}{}/{}", digest.hex(), self.me))
            .await
    }

    /// Drops the records of pulls this node left unfinished (it stopped mid-pull).
    pub async fn forget_my_pulls(&self) -> Result<(), CatalogError> {
        let mine = format!("/{}", self.me);
        for key in self.consul.kv_keys(KV_PULLS).await.map_err(unavailable)? {
            if key.ends_with(&mine) {
                self.delete(&key).await?;
            }
        }
        Ok(())
    }

    async fn healthy_under(&self, prefix: &str) -> Result<Vec<Holder>, CatalogError> {
        let (entries, _) = self
            .consul
            .kv_list(prefix, None, Duration::ZERO)
            .await
            .map_err(unavailable)?;
        let holders = parse_holders(&entries);
        if holders.is_empty() {
            return Ok(holders);
        }
        let healthy: BTreeSet<NodeAddress> = crate::consul::node::read_catalog(&self.consul)
            .await
            .map_err(|e| CatalogError::Unavailable(format!("{e:#}")))?
            .healthy()
            .map(|n| n.address)
            .chain([self.me])
            .collect();
        Ok(holders
            .into_iter()
            .filter(|h| healthy.contains(&h.node))
            .collect())
    }

    async fn exists(&self, key: &str) -> Result<bool, CatalogError> {
        Ok(self
            .consul
            .kv_get(key)
            .await
            .map_err(unavailable)?
            .is_some())
    }

    async fn delete(&self, key: &str) -> Result<(), CatalogError> {
        self.consul.kv_delete(key, false).await.map_err(unavailable)
    }

    /// Drops this node from a blob's holders (it no longer has it, or had a bad copy).
    pub async fn release(&self, digest: &Digest) -> Result<(), CatalogError> {
        self.delete(&holder_key(digest, self.me)).await
    }
}

fn unavailable(e: ConsulError) -> CatalogError {
    CatalogError::Unavailable(e.to_string())
}

#[async_trait::async_trait]
impl Catalog for ConsulCatalog {
    async fn manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<Manifest>, CatalogError> {
        let key = manifest_key(repo, digest);
        match self.consul.kv_get(&key).await.map_err(unavailable)? {
            None => Ok(None),
            Some(value) => parse_manifest(&key, &value).map(Some),
        }
    }

    async fn put_manifest(
        &self,
        repo: &RepoName,
        manifest: &Manifest,
        tag: Option<&Tag>,
    ) -> Result<(), CatalogError> {
        let record = ManifestRecord {
            media_type: manifest.media_type.clone(),
            manifest: base64::engine::general_purpose::STANDARD.encode(&manifest.bytes),
        };
        let value = serde_json::to_vec(&record).expect("a manifest record serializes");
        self.consul
            .kv_put(&manifest_key(repo, &manifest.digest), value)
            .await
            .map_err(unavailable)?;
        // The manifest first: a tag never points at a manifest KV lacks.
        if let Some(tag) = tag {
            self.consul
                .kv_put(
                    &tag_key(repo, tag),
                    manifest.digest.as_str().as_bytes().to_vec(),
                )
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    async fn delete_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<bool, CatalogError> {
        let key = manifest_key(repo, digest);
        if !self.exists(&key).await? {
            return Ok(false);
        }
        // Its tags first: a tag never points at a manifest KV lacks.
        let prefix = format!("{KV_REPOS}{repo}{TAGS}");
        let (tags, _) = self
            .consul
            .kv_list(&prefix, None, Duration::ZERO)
            .await
            .map_err(unavailable)?;
        for (tag_key, value) in tags {
            if value == digest.as_str().as_bytes() {
                self.delete(&tag_key).await?;
            }
        }
        self.delete(&key).await?;
        Ok(true)
    }

    async fn tag(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>, CatalogError> {
        let key = tag_key(repo, tag);
        let Some(value) = self.consul.kv_get(&key).await.map_err(unavailable)? else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&value);
        Digest::parse(text.trim())
            .map(Some)
            .map_err(|e| CatalogError::BadRecord {
                key,
                why: e.to_string(),
            })
    }

    async fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<bool, CatalogError> {
        let key = tag_key(repo, tag);
        if !self.exists(&key).await? {
            return Ok(false);
        }
        self.delete(&key).await?;
        Ok(true)
    }

    async fn tags(&self, repo: &RepoName) -> Result<Option<Vec<String>>, CatalogError> {
        let prefix = format!("{KV_REPOS}{repo}/");
        let keys = self.consul.kv_keys(&prefix).await.map_err(unavailable)?;
        let mine: Vec<&String> = keys
            .iter()
            .filter(|k| repository_of(k).as_ref() == Some(repo))
            .collect();
        if mine.is_empty() {
            return Ok(None);
        }
        let tag_prefix = format!("{KV_REPOS}{repo}{TAGS}");
        let mut tags: Vec<String> = mine
            .iter()
            .filter_map(|k| k.strip_prefix(&tag_prefix))
            .filter(|t| Tag::parse(t).is_ok())
            .map(str::to_string)
            .collect();
        tags.sort();
        Ok(Some(tags))
    }

    async fn repositories(&self) -> Result<Vec<String>, CatalogError> {
        let keys = self.consul.kv_keys(KV_REPOS).await.map_err(unavailable)?;
        let repos: BTreeSet<String> = keys
            .iter()
            .filter_map(|k| repository_of(k))
            .map(|r| r.to_string())
            .collect();
        Ok(repos.into_iter().collect())
    }

    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>, CatalogError> {
        Ok(self.holders(digest).await?.first().map(|h| h.size))
    }

    async fn hold(&self, digest: &Digest, size: u64) -> Result<(), CatalogError> {
        let value = serde_json::to_vec(&HolderRecord { size }).expect("a holder serializes");
        self.consul
            .kv_put(&holder_key(digest, self.me), value)
            .await
            .map_err(unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(bytes: &[u8]) -> Vec<u8> {
        serde_json::to_vec(&ManifestRecord {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            manifest: base64::engine::general_purpose::STANDARD.encode(bytes),
        })
        .unwrap()
    }

    #[test]
    fn a_manifest_is_believed_only_when_its_bytes_hash_to_its_key() {
        let repo = RepoName::parse("team/app").unwrap();
        let bytes = br#"{"schemaVersion":2}"#;
        let digest = Digest::of(bytes);
        let key = manifest_key(&repo, &digest);
        assert_eq!(
            key,
            format!(
                "arpanet/registry/repos/team/app/_manifests/{}",
                digest.hex()
            )
        );
        let m = parse_manifest(&key, &record(bytes)).unwrap();
        assert_eq!((m.digest, &m.bytes[..]), (digest.clone(), &bytes[..]));
        // A poisoned record: other bytes under the same key.
        let e = parse_manifest(&key, &record(br#"{"schemaVersion":2,"evil":1}"#)).unwrap_err();
        assert!(e.to_string().contains("not sha256:"), "{e}");
        assert!(parse_manifest("arpanet/registry/repos/a/_manifests/..", &record(bytes)).is_err());
        assert!(parse_manifest(&key, b"garbage").is_err());
    }

    #[test]
    fn keys_name_their_repository_unambiguously() {
        let d = Digest::of(b"x");
        let nested = RepoName::parse("x/manifests").unwrap();
        assert_eq!(
            repository_of(&manifest_key(&nested, &d)),
            Some(nested.clone())
        );
        let tag = Tag::parse("v1").unwrap();
        assert_eq!(repository_of(&tag_key(&nested, &tag)), Some(nested));
        assert_eq!(repository_of("arpanet/registry/repos/Bad/_tags/v1"), None);
        assert_eq!(repository_of("arpanet/registry/repos/a/_tags/"), None);
        assert_eq!(repository_of("arpanet/registry/repos/a/_tags/x/y"), None);
    }

    #[test]
    fn holder_keys_name_a_blob_and_a_node() {
        let d = Digest::of(b"x");
        let node: NodeAddress = "0.2".parse().unwrap();
        assert_eq!(
            parse_holder_key(&holder_key(&d, node)),
            Some((d.clone(), node))
        );
        assert_eq!(
            parse_holder_key(&format!("{KV_BLOBS}{}/evil", d.hex())),
            None
        );
        assert_eq!(parse_holder_key(&format!("{KV_BLOBS}abc/0.2")), None);
    }

    #[test]
    fn holders_with_a_bad_node_or_record_are_left_out() {
        let d = Digest::of(b"x");
        let entries = vec![
            (
                holder_key(&d, "0.2".parse().unwrap()),
                br#"{"size":5}"#.to_vec(),
            ),
            (
                format!("{KV_BLOBS}{}/evil", d.hex()),
                br#"{"size":5}"#.to_vec(),
            ),
            (holder_key(&d, "0.3".parse().unwrap()), b"nonsense".to_vec()),
        ];
        assert_eq!(
            parse_holders(&entries),
            vec![Holder {
                node: "0.2".parse().unwrap(),
                size: 5
            }]
        );
    }
}
