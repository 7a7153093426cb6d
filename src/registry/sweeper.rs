//! The registry's garbage collection as arpanetd runs it: every `[registry]
//! gc_interval`, read KV, this node's store and its containers, plan ([`super::gc`]),
//! then delete: untagged manifest records, this node's blobs (its holder record
//! first, so no node is sent here for a blob it no longer has) and stale uploads.
//!
//! A push on a node reads "the blob is here" and then writes its manifest; a pass that
//! planned before that write could delete such a blob, if it is older than the grace
//! and nothing reached it. So a pass reads the records again just before deleting and
//! deletes nothing when they changed; what is left is the moment between that read and
//! the deletion.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tracing::{info, warn};

use super::catalog::{ConsulCatalog, KV_BLOBS, KV_REPOS, parse_holder_key};
use super::gc::{self, LocalBlob, Plan, Record, Upload};
use super::store::BlobStore;
use crate::addressing::NodeAddress;
use crate::consul::client::Consul;

/// Why a pass deleted nothing.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("cannot read {what}: {why}")]
    Read { what: &'static str, why: String },
    #[error("the registry records changed while it planned; it plans again next time")]
    Changed,
}

/// What one pass did.
#[derive(Debug, Default)]
pub struct Swept {
    pub blobs: usize,
    pub bytes: u64,
    pub manifests: usize,
    pub uploads: usize,
    /// Deletions that failed; the others went ahead.
    pub errors: Vec<String>,
    /// The unreadable records that stopped the pass (it deleted nothing).
    pub unreadable: Vec<(String, String)>,
}

pub struct Sweeper {
    store: Arc<BlobStore>,
    consul: Consul,
    catalog: ConsulCatalog,
    docker_socket: PathBuf,
    grace: Duration,
    /// Each record's ModifyIndex when this process first saw it so, and when: its age
    /// for the grace. A rewrite (a push again) starts its clock again; so does a
    /// restart, which makes a record go later, never sooner.
    seen: HashMap<String, (u64, Instant)>,
    /// The unreadable records last logged: a poisoned record is said once.
    reported: BTreeSet<String>,
}

impl Sweeper {
    pub fn new(
        store: Arc<BlobStore>,
        consul: Consul,
        me: NodeAddress,
        docker_socket: PathBuf,
        grace: Duration,
    ) -> Self {
        Self {
            store,
            catalog: ConsulCatalog::new(consul.clone(), me),
            consul,
            docker_socket,
            grace,
            seen: HashMap::new(),
            reported: BTreeSet::new(),
        }
    }

    /// One pass: plan, then delete what the plan says, every deletion tried.
    pub async fn pass(&mut self) -> Result<Swept, SweepError> {
        let read = |what| {
            move |e: &dyn std::fmt::Display| SweepError::Read {
                what,
                why: e.to_string(),
            }
        };
        let (entries, index) = self
            .consul
            .kv_list_indexed(KV_REPOS, None, Duration::ZERO)
            .await
            .map_err(|e| read("the registry records in KV")(&e))?;
        let me = self.catalog.me();
        let held_elsewhere: BTreeSet<_> = self
            .consul
            .kv_keys(KV_BLOBS)
            .await
            .map_err(|e| read("the blob holders in KV")(&e))?
            .iter()
            .filter_map(|k| parse_holder_key(k))
            .filter(|(_, node)| *node != me)
            .map(|(digest, _)| digest)
            .collect();
        let in_use = self.images_in_use().await?;
        let now = SystemTime::now();
        let age = |t: SystemTime| now.duration_since(t).unwrap_or_default();
        let blobs: Vec<LocalBlob> = self
            .store
            .blobs()
            .await
            .map_err(|e| read("the blob store")(&e))?
            .into_iter()
            .map(|(digest, size, written)| LocalBlob {
                digest,
                size,
                age: age(written),
            })
            .collect();
        let uploads: Vec<Upload> = self
            .store
            .uploads()
            .await
            .map_err(|e| read("the uploads")(&e))?
            .into_iter()
            .map(|(name, written)| Upload {
                name,
                age: age(written),
            })
            .collect();

        let clock = Instant::now();
        self.seen
            .retain(|key, _| entries.iter().any(|e| e.key == *key));
        let records: Vec<Record> = entries
            .into_iter()
            .map(|e| {
                let first = self
                    .seen
                    .entry(e.key.clone())
                    .or_insert((e.modified, clock));
                if first.0 != e.modified {
                    *first = (e.modified, clock);
                }
                Record {
                    age: clock - first.1,
                    key: e.key,
                    value: e.value,
                }
            })
            .collect();
        let plan = gc::plan(&gc::Inputs {
            records: &records,
            blobs: &blobs,
            uploads: &uploads,
            in_use: &in_use,
            held_elsewhere: &held_elsewhere,
            grace: self.grace,
        });
        if !plan.unreadable.is_empty() {
            let keys: BTreeSet<String> = plan.unreadable.iter().map(|(k, _)| k.clone()).collect();
            if keys != self.reported {
                let list: Vec<String> = plan
                    .unreadable
                    .iter()
                    .map(|(k, why)| format!("{k}: {why}"))
                    .collect();
                warn!(
                    "registry GC deletes nothing while a record cannot be read: {}",
                    list.join("; ")
                );
                self.reported = keys;
            }
            return Ok(Swept {
                unreadable: plan.unreadable,
                ..Swept::default()
            });
        }
        self.reported.clear();
        if plan.blobs.is_empty() && plan.manifests.is_empty() && plan.uploads.is_empty() {
            return Ok(Swept::default());
        }
        if !plan.blobs.is_empty() || !plan.manifests.is_empty() {
            let (_, again) = self
                .consul
                .kv_list_indexed(KV_REPOS, None, Duration::ZERO)
                .await
                .map_err(|e| read("the registry records in KV")(&e))?;
            if again != index {
                return Err(SweepError::Changed);
            }
        }
        Ok(self.delete(plan).await)
    }

    /// The image IDs of this node's containers, running or not.
    async fn images_in_use(&self) -> Result<BTreeSet<String>, SweepError> {
        let fail = |e: &dyn std::fmt::Display| SweepError::Read {
            what: "this node's containers",
            why: e.to_string(),
        };
        let engine = crate::docker::engine::Engine::connect(&self.docker_socket)
            .await
            .map_err(|e| fail(&e))?;
        let containers = engine.list_all().await.map_err(|e| fail(&e))?;
        Ok(containers.into_iter().filter_map(|c| c.image_id).collect())
    }

    async fn delete(&mut self, plan: Plan) -> Swept {
        let mut swept = Swept::default();
        // Records first: a record whose blobs are gone is worse than blobs whose
        // record is gone, which the next pass takes.
        for key in &plan.manifests {
            match self.consul.kv_delete(key, false).await {
                Ok(()) => swept.manifests += 1,
                Err(e) => swept.errors.push(format!("delete {key}: {e}")),
            }
        }
        for (digest, size) in &plan.blobs {
            if let Err(e) = self.catalog.release(digest).await {
                swept.errors.push(format!("release {digest}: {e}"));
                continue;
            }
            match self.store.remove(digest).await {
                Ok(true) => {
                    swept.blobs += 1;
                    swept.bytes += size;
                }
                Ok(false) => {}
                Err(e) => swept.errors.push(e.to_string()),
            }
        }
        for name in &plan.uploads {
            match self.store.remove_upload(name).await {
                Ok(true) => swept.uploads += 1,
                Ok(false) => {}
                Err(e) => swept.errors.push(e.to_string()),
            }
        }
        swept
    }
}

/// Runs the registry's GC every `interval`, the first pass one interval after start.
pub fn spawn(config: &crate::config::Config, store: Arc<BlobStore>) {
    let interval = config.registry.gc_interval;
    let mut sweeper = Sweeper::new(
        store,
        Consul::for_node(config),
        config.node.address,
        config.docker.socket.clone(),
        config.registry.gc_grace,
    );
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match sweeper.pass().await {
                Ok(s) if !s.unreadable.is_empty() => {}
                Ok(s) => {
                    let line = format!(
                        "registry GC: {} blobs deleted ({} freed), {} manifest records, {} uploads",
                        s.blobs,
                        crate::human::bytes(s.bytes),
                        s.manifests,
                        s.uploads
                    );
                    if s.errors.is_empty() {
                        info!("{line}");
                    } else {
                        warn!("{line}; {} failed: {}", s.errors.len(), s.errors.join("; "));
                    }
                }
                Err(e) => warn!("registry GC deleted nothing: {e}"),
            }
        }
    });
}
