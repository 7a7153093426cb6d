//! Garbage collection of the node registry, the plan (pure): which of this node's
//! blobs and uploads, and which untagged manifest records in KV, can go.
//!
//! A blob stays while a tag reaches it: a tag names a manifest; an image manifest
//! reaches its config and layers, an index (manifest list) its `manifests[]`, which
//! are manifests in the same repository, and so on. Every descriptor is followed
//! (`config`, `layers`, `manifests`, `blobs`, `subject`, schema 1's `fsLayers`), so an
//! unfamiliar manifest keeps more, never less. Also kept:
//! - what a manifest reaches whose config is the image of a container on this node
//!   (Docker's image ID is the config's digest): dockerd runs its own extracted copy,
//!   but the node keeps what it runs so it can serve it to others;
//! - anything younger than the grace: a push uploads blobs before its manifest exists,
//!   and writes a manifest before its tag.
//!
//! An untagged manifest record goes once it is older than the grace and no node holds
//! a blob only it reaches: a node whose container runs the image keeps its blobs and
//! holder records, so the record that says which blobs those are stays with them.
//!
//! Anyone who can write KV can write a record. One that cannot be read (a manifest
//! whose bytes are not its key's digest, a tag that is no digest or names a manifest KV
//! lacks, a key that is no record's) might be what reaches a blob, so then the plan
//! deletes nothing at all: a poisoned KV must never cost data.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::CatalogError;
use super::catalog::{KV_REPOS, MANIFESTS, parse_manifest, repository_of};
use super::spec::{Digest, RepoName};

/// A KV entry under `arpanet/registry/repos/`, and how long it has been as it is
/// (since its last write, as far as the caller knows).
#[derive(Debug, Clone)]
pub struct Record {
    pub key: String,
    pub value: Vec<u8>,
    pub age: Duration,
}

/// A blob in this node's store and how long ago it was written.
#[derive(Debug, Clone)]
pub struct LocalBlob {
    pub digest: Digest,
    pub size: u64,
    pub age: Duration,
}

/// An upload in this node's store (a client's or a fetch's) and its last write.
#[derive(Debug, Clone)]
pub struct Upload {
    pub name: String,
    pub age: Duration,
}

pub struct Inputs<'a> {
    /// Everything under `arpanet/registry/repos/`.
    pub records: &'a [Record],
    pub blobs: &'a [LocalBlob],
    pub uploads: &'a [Upload],
    /// The image IDs of this node's containers, running or not.
    pub in_use: &'a BTreeSet<String>,
    /// The blobs some other node holds (holder records in KV).
    pub held_elsewhere: &'a BTreeSet<Digest>,
    pub grace: Duration,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// This node's blobs to delete, with their sizes.
    pub blobs: Vec<(Digest, u64)>,
    /// Manifest records' KV keys to delete.
    pub manifests: Vec<String>,
    pub uploads: Vec<String>,
    /// The records that could not be read (key, why): when there are any, the plan
    /// deletes nothing.
    pub unreadable: Vec<(String, String)>,
}

impl Plan {
    pub fn bytes(&self) -> u64 {
        self.blobs.iter().map(|(_, size)| size).sum()
    }
}

/// A manifest record as the plan needs it.
struct Node {
    key: String,
    age: Duration,
    config: Option<Digest>,
    refs: Vec<Digest>,
}

type ManifestId = (RepoName, Digest);

pub fn plan(inputs: &Inputs) -> Plan {
    let mut unreadable = Vec::new();
    let mut manifests: BTreeMap<ManifestId, Node> = BTreeMap::new();
    let mut tags: Vec<(String, ManifestId)> = Vec::new();
    for r in inputs.records {
        let Some(repo) = repository_of(&r.key) else {
            unreadable.push((
                r.key.clone(),
                "not a manifest or tag key of a valid repository".to_string(),
            ));
            continue;
        };
        if r.key.starts_with(&format!("{KV_REPOS}{repo}{MANIFESTS}")) {
            let parsed = parse_manifest(&r.key, &r.value)
                .map_err(|e| match e {
                    // The key is said once, beside the reason.
                    CatalogError::BadRecord { why, .. } => why,
                    e => e.to_string(),
                })
                .and_then(|m| Ok((m.digest, super::manifest::all_references(&m.bytes)?)));
            match parsed {
                Ok((digest, (config, refs))) => {
                    let node = Node {
                        key: r.key.clone(),
                        age: r.age,
                        config,
                        refs,
                    };
                    manifests.insert((repo, digest), node);
                }
                Err(why) => unreadable.push((r.key.clone(), why)),
            }
        } else {
            let text = String::from_utf8_lossy(&r.value);
            match Digest::parse(text.trim()) {
                Ok(d) => tags.push((r.key.clone(), (repo, d))),
                Err(e) => unreadable.push((r.key.clone(), e.to_string())),
            }
        }
    }
    for (key, id) in &tags {
        if !manifests.contains_key(id) {
            unreadable.push((
                key.clone(),
                format!("the tag names {}, which has no manifest record", id.1),
            ));
        }
    }
    if !unreadable.is_empty() {
        return Plan {
            unreadable,
            ..Plan::default()
        };
    }

    let roots = manifests.iter().filter_map(|(id, m)| {
        let used = m
            .config
            .as_ref()
            .is_some_and(|c| inputs.in_use.contains(c.as_str()));
        (used || m.age < inputs.grace).then_some(id)
    });
    let roots: Vec<&ManifestId> = tags.iter().map(|(_, id)| id).chain(roots).collect();
    let mut reached: BTreeSet<&ManifestId> = BTreeSet::new();
    let mut kept: BTreeSet<&Digest> = BTreeSet::new();
    let mut todo = roots;
    while let Some(id) = todo.pop() {
        if !reached.insert(id) {
            continue;
        }
        for r in &manifests[id].refs {
            kept.insert(r);
            if let Some((child, _)) = manifests.get_key_value(&(id.0.clone(), r.clone())) {
                todo.push(child);
            }
        }
    }

    let blobs: Vec<(Digest, u64)> = inputs
        .blobs
        .iter()
        .filter(|b| !kept.contains(&b.digest) && b.age >= inputs.grace)
        .map(|b| (b.digest.clone(), b.size))
        .collect();
    let going: BTreeSet<&Digest> = blobs.iter().map(|(d, _)| d).collect();
    let local: BTreeSet<&Digest> = inputs.blobs.iter().map(|b| &b.digest).collect();
    let held =
        |d: &Digest| inputs.held_elsewhere.contains(d) || (local.contains(d) && !going.contains(d));
    // An unreached manifest goes when nothing it alone reaches is held anywhere.
    let unreached_holds = |start: &ManifestId| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![start.clone()];
        while let Some(id) = todo.pop() {
            if !seen.insert(id.clone()) {
                continue;
            }
            for r in &manifests[&id].refs {
                let child = (id.0.clone(), r.clone());
                if manifests.contains_key(&child) {
                    if !reached.contains(&child) {
                        todo.push(child);
                    }
                } else if !kept.contains(r) && held(r) {
                    return true;
                }
            }
        }
        false
    };
    let records = manifests
        .iter()
        .filter(|(id, _)| !reached.contains(id) && !unreached_holds(id))
        .map(|(_, m)| m.key.clone())
        .collect();
    let uploads = inputs
        .uploads
        .iter()
        .filter(|u| u.age >= inputs.grace)
        .map(|u| u.name.clone())
        .collect();
    Plan {
        blobs,
        manifests: records,
        uploads,
        unreadable,
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;
    use crate::registry::catalog::{ManifestRecord, manifest_key, tag_key};
    use crate::registry::spec::Tag;

    const HOUR: Duration = Duration::from_secs(3600);
    const OLD: Duration = Duration::from_secs(2 * 3600);
    const NEW: Duration = Duration::from_secs(60);

    fn d(name: &str) -> Digest {
        Digest::of(name.as_bytes())
    }

    fn repo(name: &str) -> RepoName {
        RepoName::parse(name).unwrap()
    }

    fn image(config: &str, layers: &[&str]) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d(config).as_str(), "size": 1},
            "layers": layers.iter().map(|l| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d(l).as_str(), "size": 1})).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    fn index(children: &[&Digest]) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": children.iter().map(|c| serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": c.as_str(), "size": 1})).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    /// KV and a store, built up by the tests.
    #[derive(Default)]
    struct World {
        records: Vec<Record>,
        blobs: Vec<LocalBlob>,
        uploads: Vec<Upload>,
        in_use: BTreeSet<String>,
        held_elsewhere: BTreeSet<Digest>,
    }

    impl World {
        /// Stores the manifest in `repo` (written `age` ago) and returns its digest.
        fn manifest(&mut self, repo_name: &str, bytes: &[u8], age: Duration) -> Digest {
            let digest = Digest::of(bytes);
            let value = serde_json::to_vec(&ManifestRecord {
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                manifest: base64::engine::general_purpose::STANDARD.encode(bytes),
            })
            .unwrap();
            self.records.push(Record {
                key: manifest_key(&repo(repo_name), &digest),
                value,
                age,
            });
            digest
        }

        fn tag(&mut self, repo_name: &str, tag: &str, digest: &Digest) {
            self.records.push(Record {
                key: tag_key(&repo(repo_name), &Tag::parse(tag).unwrap()),
                value: digest.as_str().as_bytes().to_vec(),
                age: OLD,
            });
        }

        fn blobs(&mut self, names: &[&str], age: Duration) {
            for n in names {
                self.blobs.push(LocalBlob {
                    digest: d(n),
                    size: n.len() as u64,
                    age,
                });
            }
        }

        fn plan(&self) -> Plan {
            plan(&Inputs {
                records: &self.records,
                blobs: &self.blobs,
                uploads: &self.uploads,
                in_use: &self.in_use,
                held_elsewhere: &self.held_elsewhere,
                grace: HOUR,
            })
        }
    }

    fn names(plan: &Plan) -> Vec<Digest> {
        let mut v: Vec<Digest> = plan.blobs.iter().map(|(d, _)| d.clone()).collect();
        v.sort();
        v
    }

    fn sorted(names: &[&str]) -> Vec<Digest> {
        let mut v: Vec<Digest> = names.iter().map(|n| d(n)).collect();
        v.sort();
        v
    }

    #[test]
    fn blobs_no_tag_reaches_go_once_older_than_the_grace() {
        let mut w = World::default();
        let v1 = w.manifest("app", &image("c1", &["base", "top1"]), OLD);
        w.tag("app", "v1", &v1);
        // v2 lost its tag: its own blobs go, the base it shares with v1 stays.
        let v2 = w.manifest("app", &image("c2", &["base", "top2"]), OLD);
        w.blobs(&["c1", "base", "top1", "c2", "top2", "stray"], OLD);
        // Uploaded a minute ago, its manifest not yet pushed.
        w.blobs(&["pushing"], NEW);
        let plan = w.plan();
        assert_eq!(names(&plan), sorted(&["c2", "top2", "stray"]));
        assert_eq!(plan.bytes(), 2 + 4 + 5);
        // Nothing else holds v2's blobs once they go here: its record goes too.
        assert_eq!(plan.manifests, vec![manifest_key(&repo("app"), &v2)]);
        assert!(plan.unreadable.is_empty());
    }

    #[test]
    fn an_index_keeps_its_manifests_and_their_blobs() {
        let mut w = World::default();
        let amd = w.manifest("app", &image("c-amd", &["l-amd"]), OLD);
        let arm = w.manifest("app", &image("c-arm", &["l-arm"]), OLD);
        let list = w.manifest("app", &index(&[&amd, &arm]), OLD);
        w.tag("app", "multi", &list);
        // The same child digest in another repository is another record: unreached.
        let other = w.manifest("other", &image("c-amd", &["l-amd"]), OLD);
        assert_eq!(other, amd);
        w.blobs(&["c-amd", "l-amd", "c-arm", "l-arm"], OLD);
        let plan = w.plan();
        assert_eq!(plan.blobs, vec![]);
        // Its blobs stay for app's index, whose records say which they are.
        assert_eq!(plan.manifests, vec![manifest_key(&repo("other"), &other)]);

        // Untagged, the index and its children go.
        w.records.retain(|r| !r.key.contains("/_tags/"));
        let plan = w.plan();
        assert_eq!(names(&plan), sorted(&["c-amd", "l-amd", "c-arm", "l-arm"]));
        let mut want = vec![
            manifest_key(&repo("app"), &amd),
            manifest_key(&repo("app"), &arm),
            manifest_key(&repo("app"), &list),
            manifest_key(&repo("other"), &other),
        ];
        want.sort();
        assert_eq!(plan.manifests, want);
    }

    #[test]
    fn an_untagged_index_goes_though_a_child_is_tagged() {
        let mut w = World::default();
        let child = w.manifest("app", &image("c", &["l"]), OLD);
        let list = w.manifest("app", &index(&[&child]), OLD);
        w.tag("app", "v1", &child);
        w.blobs(&["c", "l"], OLD);
        let plan = w.plan();
        assert_eq!(plan.blobs, vec![]);
        assert_eq!(plan.manifests, vec![manifest_key(&repo("app"), &list)]);
    }

    #[test]
    fn a_young_manifest_keeps_its_record_and_blobs() {
        let mut w = World::default();
        // Pushed by digest, or its tag not yet written.
        w.manifest("app", &image("c", &["l"]), NEW);
        w.blobs(&["c", "l"], OLD);
        let plan = w.plan();
        assert_eq!(plan, Plan::default());
    }

    #[test]
    fn a_containers_image_keeps_its_blobs_and_record() {
        let mut w = World::default();
        w.manifest("app", &image("c-run", &["l-run"]), OLD);
        w.blobs(&["c-run", "l-run"], OLD);
        w.in_use.insert(d("c-run").to_string());
        assert_eq!(w.plan(), Plan::default());
        w.in_use.clear();
        assert_eq!(names(&w.plan()), sorted(&["c-run", "l-run"]));
    }

    #[test]
    fn an_untagged_record_stays_while_another_node_holds_its_blobs() {
        let mut w = World::default();
        let m = w.manifest("app", &image("c", &["l"]), OLD);
        w.blobs(&["c", "l"], OLD);
        // Another node runs the image, so it keeps the blobs and needs the record.
        w.held_elsewhere.insert(d("l"));
        let plan = w.plan();
        assert_eq!(names(&plan), sorted(&["c", "l"]));
        assert_eq!(plan.manifests, Vec::<String>::new());
        w.held_elsewhere.clear();
        assert_eq!(w.plan().manifests, vec![manifest_key(&repo("app"), &m)]);
    }

    #[test]
    fn an_unreadable_record_deletes_nothing() {
        let base = || {
            let mut w = World::default();
            let v1 = w.manifest("app", &image("c1", &["l1"]), OLD);
            w.tag("app", "v1", &v1);
            w.manifest("app", &image("c2", &["l2"]), OLD);
            w.blobs(&["c1", "l1", "c2", "l2"], OLD);
            w.uploads.push(Upload {
                name: "0".repeat(32),
                age: OLD,
            });
            w
        };
        let clean = base().plan();
        assert_eq!(names(&clean), sorted(&["c2", "l2"]));
        assert_eq!(clean.uploads, vec!["0".repeat(32)]);

        let poisoned = format!("arpanet/registry/repos/x/_manifests/{}", d("p").hex());
        let not_json = Digest::of(b"not json");
        let cases: Vec<(String, Vec<u8>, &str)> = vec![
            (
                poisoned.clone(),
                b"garbage".to_vec(),
                "not a manifest record",
            ),
            // Bytes that are not the key's digest.
            (
                poisoned.clone(),
                serde_json::to_vec(&ManifestRecord {
                    media_type: "x".into(),
                    manifest: base64::engine::general_purpose::STANDARD.encode(b"{}"),
                })
                .unwrap(),
                "not sha256:",
            ),
            (
                manifest_key(&repo("x"), &not_json),
                serde_json::to_vec(&ManifestRecord {
                    media_type: "x".into(),
                    manifest: base64::engine::general_purpose::STANDARD.encode(b"not json"),
                })
                .unwrap(),
                "not JSON",
            ),
            (
                "arpanet/registry/repos/app/_tags/v2".into(),
                b"latest".to_vec(),
                "not a digest",
            ),
            (
                "arpanet/registry/repos/app/_tags/v3".into(),
                d("nothing").as_str().as_bytes().to_vec(),
                "has no manifest record",
            ),
            (
                "arpanet/registry/repos/Bad/_tags/v1".into(),
                d("c1").as_str().as_bytes().to_vec(),
                "not a manifest or tag key",
            ),
        ];
        for (key, value, why) in cases {
            let mut w = base();
            w.records.push(Record {
                key: key.clone(),
                value,
                age: OLD,
            });
            let plan = w.plan();
            assert_eq!(plan.unreadable.len(), 1, "{key}");
            assert_eq!(plan.unreadable[0].0, key);
            assert!(plan.unreadable[0].1.contains(why), "{plan:?}");
            assert_eq!(
                (plan.blobs, plan.manifests, plan.uploads),
                (vec![], vec![], vec![]),
                "{key}"
            );
        }
    }

    #[test]
    fn a_descriptor_without_a_good_digest_is_unreadable() {
        let mut w = World::default();
        let bad = br#"{"schemaVersion":2,"config":{"digest":"sha256:zz"},"layers":[]}"#;
        w.manifest("app", bad, OLD);
        w.blobs(&["stray"], OLD);
        let plan = w.plan();
        assert_eq!(plan.blobs, vec![]);
        assert_eq!(plan.unreadable.len(), 1);
    }

    #[test]
    fn every_kind_of_descriptor_is_followed() {
        let mut w = World::default();
        let artifact = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "artifactType": "application/x-thing",
            "blobs": [{"digest": d("art").as_str(), "size": 3}],
            "subject": {"digest": d("subj").as_str(), "size": 4},
        }))
        .unwrap();
        let a = w.manifest("app", &artifact, OLD);
        w.tag("app", "sig", &a);
        let v1 = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 1,
            "fsLayers": [{"blobSum": d("s1").as_str()}],
        }))
        .unwrap();
        let v1 = w.manifest("app", &v1, OLD);
        w.tag("app", "old", &v1);
        w.blobs(&["art", "subj", "s1", "stray"], OLD);
        assert_eq!(names(&w.plan()), sorted(&["stray"]));
    }

    #[test]
    fn uploads_untouched_for_the_grace_go() {
        let mut w = World::default();
        let fetch = format!("fetch-{}", d("x").hex());
        w.uploads = vec![
            Upload {
                name: "a".repeat(32),
                age: NEW,
            },
            Upload {
                name: fetch.clone(),
                age: OLD,
            },
        ];
        assert_eq!(w.plan().uploads, vec![fetch]);
    }
}
