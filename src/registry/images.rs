//! The registry's images as users name and list them: `team/app:v1` (or the name dockerd
//! pulls, `127.0.0.1:PORT/team/app:v1`), the Docker reference `arpanet image push`
//! publishes under such a name, and the rows of `arpanet image ls`, computed from the
//! catalog's KV records in one read (manifests and tags, holders, healthy nodes) rather
//! than a Consul round trip per blob.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::Manifest;
use super::catalog::{self, KV_BLOBS, KV_REPOS, MANIFESTS, TAGS};
use super::manifest::{self, Contents};
use super::spec::{Digest, RepoName, Tag};
use crate::addressing::NodeAddress;

/// A tag of a repository in the node registry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ImageName {
    pub repo: RepoName,
    pub tag: Tag,
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.repo, self.tag)
    }
}

impl ImageName {
    /// The name dockerd pulls it by from the node registry on `port`.
    pub fn pull_name(&self, port: u16) -> String {
        format!("127.0.0.1:{port}/{self}")
    }
}

/// `NAME[:TAG]` into name and tag (`latest` when none is given), split at the last `:`
/// after the last `/` (a `:` before it is a host's port).
fn split_tag(s: &str) -> (&str, &str) {
    let slash = s.rfind('/').map_or(0, |i| i + 1);
    match s[slash..].rfind(':') {
        Some(i) => (&s[..slash + i], &s[slash + i + 1..]),
        None => (s, "latest"),
    }
}

/// Docker's rule: a first component with a `.` or a `:`, or `localhost`, is a host.
fn split_host(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

fn checked(name: &str, tag: &str) -> Result<ImageName, String> {
    Ok(ImageName {
        repo: RepoName::parse(name).map_err(|e| format!("name: {e}"))?,
        tag: Tag::parse(tag).map_err(|e| format!("tag: {e}"))?,
    })
}

/// An image of the node registry as a user names it: `team/app:v1`, or the name dockerd
/// pulls, `127.0.0.1:PORT/team/app:v1` (`localhost:PORT` too). Anything else (another
/// registry's host, a digest, a bad name or tag) is one error naming the field.
pub fn parse_name(s: &str, port: u16) -> Result<ImageName, String> {
    if s.contains('@') {
        return Err(format!(
            "image: `{}` names a digest; give NAME:TAG",
            s.escape_debug()
        ));
    }
    let (name, tag) = split_tag(s);
    let name = match split_host(name) {
        (None, name) => name,
        (Some(host), rest)
            if host == format!("127.0.0.1:{port}") || host == format!("localhost:{port}") =>
        {
            rest
        }
        (Some(host), _) => {
            return Err(format!(
                "image: `{}` is another registry's; the node registry is 127.0.0.1:{port}",
                host.escape_debug()
            ));
        }
    };
    checked(name, tag)
}

/// The registry name `arpanet image push` gives a local Docker image: its repository
/// without any registry host (and without Docker Hub's `library/`), and its tag
/// (`latest` when none): `nginx:1` and `docker.io/library/nginx:1` become `nginx:1`,
/// `registry.example:5000/team/app:v2` becomes `team/app:v2`.
pub fn push_name(image: &str) -> Result<ImageName, String> {
    let bad = |why: &str| format!("image: `{}` {why}", image.escape_debug());
    let without_digest = match image.split_once('@') {
        Some((name, _)) if name.rfind(':') > name.rfind('/') => name,
        Some(_) => return Err(bad("names a digest only; tag it first (docker tag)")),
        None => image,
    };
    if image.starts_with("sha256:") {
        return Err(bad("is an image ID; tag it first (docker tag)"));
    }
    let (name, tag) = split_tag(without_digest);
    let name = match split_host(name) {
        (Some("docker.io" | "index.docker.io"), rest) => {
            rest.strip_prefix("library/").unwrap_or(rest)
        }
        (_, rest) => rest,
    };
    checked(name, tag)
}

/// One tag of the registry as `arpanet image ls` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryImage {
    /// `team/app:v1`
    pub name: String,
    /// The manifest the tag points at.
    pub digest: String,
    /// `image`, `index` (several platforms) or `other` (a media type naming no blobs
    /// this registry knows).
    pub manifest: String,
    /// Bytes of the blobs (config and layers, compressed, as stored): an image's own;
    /// an index's, those of every platform's manifest it lists.
    pub size: u64,
    /// Healthy nodes that hold every one of those blobs.
    pub holders: Vec<String>,
    /// Why the row is incomplete (a record missing or not believed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// The KV records `arpanet image ls` reads: everything under `repos/` and `blobs/`.
pub struct Records<'a> {
    pub repos: &'a [(String, Vec<u8>)],
    pub blobs: &'a [(String, Vec<u8>)],
}

/// The `repos/` records by kind: tags (name -> the digest text) and manifests that
/// are believed (bytes that hash to their key).
type Tags = BTreeMap<ImageName, String>;
type Manifests = BTreeMap<(RepoName, Digest), Manifest>;

fn read_repos(entries: &[(String, Vec<u8>)]) -> (Tags, Manifests) {
    let mut tags = BTreeMap::new();
    let mut manifests = BTreeMap::new();
    for (key, value) in entries {
        let Some(repo) = catalog::repository_of(key) else {
            continue;
        };
        let tail = &key[KV_REPOS.len() + repo.as_str().len()..];
        if let Some(tag) = tail.strip_prefix(TAGS) {
            if let Ok(tag) = Tag::parse(tag) {
                let text = String::from_utf8_lossy(value).trim().to_string();
                tags.insert(ImageName { repo, tag }, text);
            }
        } else if tail.starts_with(MANIFESTS)
            && let Ok(m) = catalog::parse_manifest(key, value)
        {
            manifests.insert((repo, m.digest.clone()), m);
        }
    }
    (tags, manifests)
}

/// Which healthy nodes hold each blob, by the blob's hex.
fn read_holders(
    entries: &[(String, Vec<u8>)],
    healthy: &BTreeSet<NodeAddress>,
) -> BTreeMap<String, BTreeSet<NodeAddress>> {
    let mut by_blob: BTreeMap<String, Vec<(String, Vec<u8>)>> = BTreeMap::new();
    for (key, value) in entries {
        if let Some((hex, _node)) = key
            .strip_prefix(KV_BLOBS)
            .and_then(|rest| rest.split_once('/'))
        {
            by_blob
                .entry(hex.to_string())
                .or_default()
                .push((key.clone(), value.clone()));
        }
    }
    by_blob
        .into_iter()
        .map(|(hex, entries)| {
            let nodes = catalog::parse_holders(&entries)
                .into_iter()
                .map(|h| h.node)
                .filter(|n| healthy.contains(n))
                .collect();
            (hex, nodes)
        })
        .collect()
}

/// Every tag of the registry, sorted by name, with its size and the healthy nodes that
/// hold all of its blobs.
pub fn list(records: &Records<'_>, healthy: &BTreeSet<NodeAddress>) -> Vec<RegistryImage> {
    let (tags, manifests) = read_repos(records.repos);
    let holders = read_holders(records.blobs, healthy);
    tags.into_iter()
        .map(|(name, digest)| row(&name, &digest, &manifests, &holders))
        .collect()
}

fn row(
    name: &ImageName,
    digest: &str,
    manifests: &Manifests,
    holders: &BTreeMap<String, BTreeSet<NodeAddress>>,
) -> RegistryImage {
    let mut out = RegistryImage {
        name: name.to_string(),
        digest: digest.to_string(),
        manifest: "other".into(),
        size: 0,
        holders: Vec::new(),
        problem: None,
    };
    let found = Digest::parse(digest)
        .ok()
        .and_then(|d| manifests.get(&(name.repo.clone(), d)));
    let Some(m) = found else {
        out.problem = Some("its manifest record is missing or not believed".into());
        return out;
    };
    // The blobs: an image's own, or those of each platform's manifest an index lists.
    let mut blobs = Vec::new();
    match manifest::contents_of(&m.media_type, &m.bytes) {
        Ok(None) => return out,
        Ok(Some(c @ Contents::Image { .. })) => {
            out.manifest = "image".into();
            blobs.extend(c.blobs().into_iter().cloned());
        }
        Ok(Some(Contents::Index {
            manifests: children,
        })) => {
            out.manifest = "index".into();
            for child in children {
                let contents = manifests
                    .get(&(name.repo.clone(), child.digest.clone()))
                    .and_then(|c| manifest::contents_of(&c.media_type, &c.bytes).ok()?);
                match contents {
                    Some(c) => blobs.extend(c.blobs().into_iter().cloned()),
                    None => {
                        out.problem = Some(format!(
                            "its manifest {} is missing or unreadable",
                            child.digest
                        ));
                    }
                }
            }
        }
        Err(e) => {
            out.problem = Some(e);
            return out;
        }
    }
    out.size = blobs.iter().map(|b| b.size).sum();
    let mut all: Option<BTreeSet<NodeAddress>> = None;
    for blob in &blobs {
        let these = holders.get(blob.digest.hex()).cloned().unwrap_or_default();
        all = Some(match all {
            None => these,
            Some(so_far) => so_far.intersection(&these).copied().collect(),
        });
    }
    out.holders = all
        .unwrap_or_default()
        .iter()
        .map(|n| n.to_string())
        .collect();
    out
}

/// Whether a tag other than `except` of the repository still points at `digest`, from
/// the entries under the repository's `_tags/`.
pub fn still_tagged(tags: &[(String, Vec<u8>)], except: &str, digest: &Digest) -> bool {
    tags.iter().any(|(key, value)| {
        key != except && String::from_utf8_lossy(value).trim() == digest.as_str()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::catalog::{
        HolderRecord, ManifestRecord, holder_key, manifest_key, tag_key,
    };
    use crate::registry::manifest::{OCI_INDEX, OCI_MANIFEST};
    use base64::Engine as _;

    const PORT: u16 = 7102;

    fn name(s: &str) -> String {
        parse_name(s, PORT)
            .map(|n| n.to_string())
            .unwrap_or_else(|e| e)
    }

    #[test]
    fn registry_names_with_or_without_this_registry_s_host() {
        assert_eq!(name("team/app:v1"), "team/app:v1");
        assert_eq!(name("127.0.0.1:7102/team/app:v1"), "team/app:v1");
        assert_eq!(name("localhost:7102/app"), "app:latest");
        assert_eq!(name("app"), "app:latest");
        assert_eq!(
            parse_name("team/app:v1", PORT).unwrap().pull_name(PORT),
            "127.0.0.1:7102/team/app:v1"
        );
    }

    #[test]
    fn bad_registry_names_are_one_error_naming_the_field() {
        assert!(name("Bad/../x:v1").starts_with("name: `Bad/../x` is not a repository name"));
        assert!(name("../x:v1").starts_with("image: `..` is another registry's"));
        assert!(name("x:.v1").starts_with("tag: `.v1` is not a tag"));
        assert!(name("x:").starts_with("tag: `` is not a tag"));
        assert!(name(":v1").starts_with("name: `` is not a repository name"));
        assert_eq!(
            name("127.0.0.1:5000/app:v1"),
            "image: `127.0.0.1:5000` is another registry's; the node registry is 127.0.0.1:7102"
        );
        assert!(name("registry.example/app:v1").starts_with("image: `registry.example`"));
        assert!(name(&format!("app@{}", Digest::of(b"x"))).contains("names a digest"));
        assert!(name("a/b:c/d").starts_with("name: "));
    }

    fn pushed(s: &str) -> String {
        push_name(s).map(|n| n.to_string()).unwrap_or_else(|e| e)
    }

    #[test]
    fn push_names_drop_the_registry_host() {
        assert_eq!(pushed("nginx:1"), "nginx:1");
        assert_eq!(pushed("busybox"), "busybox:latest");
        assert_eq!(pushed("docker.io/library/nginx:1"), "nginx:1");
        assert_eq!(pushed("docker.io/team/app"), "team/app:latest");
        assert_eq!(pushed("registry.example:5000/team/app:v2"), "team/app:v2");
        assert_eq!(pushed("localhost:5000/app:v2"), "app:v2");
        assert_eq!(pushed("127.0.0.1:7102/team/app:v1"), "team/app:v1");
        let d = Digest::of(b"x");
        assert_eq!(pushed(&format!("nginx:1@{d}")), "nginx:1");
        assert!(pushed(&format!("nginx@{d}")).contains("names a digest only"));
        assert!(pushed(&d.to_string()).contains("is an image ID"));
        assert!(pushed("Team/App:v1").starts_with("name: "));
    }

    fn manifest_entry(
        repo: &RepoName,
        media_type: &str,
        json: serde_json::Value,
    ) -> (String, Vec<u8>, Digest) {
        let bytes = serde_json::to_vec(&json).unwrap();
        let digest = Digest::of(&bytes);
        let record = ManifestRecord {
            media_type: media_type.into(),
            manifest: base64::engine::general_purpose::STANDARD.encode(&bytes),
        };
        (
            manifest_key(repo, &digest),
            serde_json::to_vec(&record).unwrap(),
            digest,
        )
    }

    fn image(config: &Digest, layers: &[(&Digest, u64)]) -> serde_json::Value {
        serde_json::json!({
            "schemaVersion": 2,
            "config": {"digest": config.as_str(), "size": 10},
            "layers": layers.iter().map(|(d, s)| serde_json::json!({"digest": d.as_str(), "size": s})).collect::<Vec<_>>(),
        })
    }

    fn holder(d: &Digest, node: &str) -> (String, Vec<u8>) {
        (
            holder_key(d, node.parse().unwrap()),
            serde_json::to_vec(&HolderRecord { size: 1 }).unwrap(),
        )
    }

    #[test]
    fn rows_sum_blob_sizes_and_name_the_healthy_nodes_that_hold_every_blob() {
        let repo = RepoName::parse("team/app").unwrap();
        let (config, l1, l2) = (Digest::of(b"c"), Digest::of(b"1"), Digest::of(b"2"));
        let (mkey, mval, digest) = manifest_entry(
            &repo,
            OCI_MANIFEST,
            image(&config, &[(&l1, 100), (&l2, 1000)]),
        );
        let v1 = Tag::parse("v1").unwrap();
        let repos = vec![
            (mkey, mval),
            (tag_key(&repo, &v1), digest.as_str().as_bytes().to_vec()),
            // A tag whose manifest KV lacks is listed, with why it is incomplete.
            (
                tag_key(&repo, &Tag::parse("gone").unwrap()),
                Digest::of(b"nothing").as_str().as_bytes().to_vec(),
            ),
            // Not a record of any repository: ignored.
            (
                "arpanet/registry/repos/Bad/_tags/v1".into(),
                digest.as_str().as_bytes().to_vec(),
            ),
        ];
        let mut blobs = vec![];
        for node in ["0.2", "0.3", "0.4"] {
            blobs.push(holder(&config, node));
            blobs.push(holder(&l1, node));
        }
        // 0.3 lacks the second layer; 0.4 is not healthy.
        blobs.push(holder(&l2, "0.2"));
        blobs.push(holder(&l2, "0.4"));
        let healthy: BTreeSet<NodeAddress> =
            ["0.2", "0.3"].iter().map(|n| n.parse().unwrap()).collect();
        let rows = list(
            &Records {
                repos: &repos,
                blobs: &blobs,
            },
            &healthy,
        );
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(rows[0].name, "team/app:gone");
        assert!(rows[0].problem.is_some());
        assert_eq!(
            rows[1],
            RegistryImage {
                name: "team/app:v1".into(),
                digest: digest.to_string(),
                manifest: "image".into(),
                size: 1110,
                holders: vec!["0.2".into()],
                problem: None,
            }
        );
    }

    #[test]
    fn an_index_sums_the_blobs_of_its_platforms() {
        let repo = RepoName::parse("multi").unwrap();
        let (c1, c2, l1, l2) = (
            Digest::of(b"c1"),
            Digest::of(b"c2"),
            Digest::of(b"l1"),
            Digest::of(b"l2"),
        );
        let (k1, v1, d1) = manifest_entry(&repo, OCI_MANIFEST, image(&c1, &[(&l1, 100)]));
        let (k2, v2, d2) = manifest_entry(&repo, OCI_MANIFEST, image(&c2, &[(&l2, 200)]));
        let (ki, vi, di) = manifest_entry(
            &repo,
            OCI_INDEX,
            serde_json::json!({"schemaVersion": 2, "manifests": [
                {"digest": d1.as_str(), "size": 300},
                {"digest": d2.as_str(), "size": 300},
            ]}),
        );
        let repos = vec![
            (k1, v1),
            (k2, v2),
            (ki, vi),
            (
                tag_key(&repo, &Tag::parse("latest").unwrap()),
                di.as_str().as_bytes().to_vec(),
            ),
        ];
        let blobs: Vec<_> = [&c1, &c2, &l1, &l2]
            .iter()
            .map(|d| holder(d, "0.2"))
            .collect();
        let healthy = BTreeSet::from(["0.2".parse().unwrap()]);
        let rows = list(
            &Records {
                repos: &repos,
                blobs: &blobs,
            },
            &healthy,
        );
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (
                rows[0].manifest.as_str(),
                rows[0].size,
                rows[0].holders.clone()
            ),
            ("index", 320, vec!["0.2".to_string()])
        );
        assert_eq!(rows[0].problem, None);
    }

    #[test]
    fn a_manifest_stays_while_another_tag_points_at_it() {
        let repo = RepoName::parse("app").unwrap();
        let d = Digest::of(b"m");
        let (v1, v2) = (
            tag_key(&repo, &Tag::parse("v1").unwrap()),
            tag_key(&repo, &Tag::parse("v2").unwrap()),
        );
        let tags = vec![
            (v1.clone(), d.as_str().as_bytes().to_vec()),
            (
                v2.clone(),
                Digest::of(b"other").as_str().as_bytes().to_vec(),
            ),
        ];
        assert!(!still_tagged(&tags, &v1, &d));
        assert!(still_tagged(&tags, &v2, &d));
    }
}
