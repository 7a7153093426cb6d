//! Takes the steps of rolling updates ([`super::rollout`]). Every Consul server node
//! looks once a second while a rollout is active; a step is a compare-and-set write of
//! the service record, so of two nodes that look at once one writes and the other
//! reads the new record next time, and when the node that took the last step dies the
//! next step is simply another node's. There is nothing to elect and no lock to expire.
//!
//! Servers only: they are few (3 or 5), and a cluster of a thousand clients would
//! otherwise read every active service's health a thousand times a second.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tracing::{info, warn};

use super::rollout::{self, Health, Observation};
use super::{ServiceDef, placed_instances, plan, store};
use crate::config::Role;
use crate::consul::client::{Consul, HealthEntry};
use crate::consul::node::Node;

const LOOK_EVERY: Duration = Duration::from_secs(1);

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whether this node takes rollout steps.
pub fn drives(me: &Node) -> bool {
    matches!(me.role, Role::Boot | Role::Server)
}

pub async fn run(consul: Consul, me: Node) {
    let mut ticker = tokio::time::interval(LOOK_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error = String::new();
    loop {
        ticker.tick().await;
        match look(&consul, &me).await {
            Ok(()) => last_error.clear(),
            Err(e) => {
                // Once per distinct failure: Consul being away says so every second.
                let text = format!("{e:#}");
                if text != last_error {
                    warn!("rollouts: {text}");
                    last_error = text;
                }
            }
        }
    }
}

/// The Consul service name a service's instances register under.
pub fn consul_name(def: &ServiceDef) -> String {
    def.spec
        .service
        .as_ref()
        .and_then(|s| s.name.clone())
        .unwrap_or_else(|| def.name.to_string())
}

/// Each instance's version and health, by instance (container) name, from the
/// registrations `arpanet:NODE:CONTAINER:PORT`.
pub fn health_of(entries: &[HealthEntry]) -> BTreeMap<String, Health> {
    let mut out: BTreeMap<String, Health> = BTreeMap::new();
    for e in entries {
        let mut parts = e.service.id.splitn(4, ':');
        let (Some("arpanet"), Some(_), Some(container)) =
            (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let version = e
            .service
            .meta
            .get(crate::containers::registration::META_VERSION)
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let h = Health {
            version,
            passing: e.passing(),
        };
        // An instance with several ports passes when every registration does.
        out.entry(container.to_string())
            .and_modify(|o| o.passing &= h.passing)
            .or_insert(h);
    }
    out
}

async fn look(consul: &Consul, me: &Node) -> anyhow::Result<()> {
    if !drives(me) {
        return Ok(());
    }
    let state = store::load(consul).await?;
    let active: Vec<&ServiceDef> = state
        .services
        .iter()
        .filter(|s| s.rollout.as_ref().is_some_and(|r| r.state.active()))
        .collect();
    if active.is_empty() {
        return Ok(());
    }
    let nodes = super::reconcile::healthy_nodes(consul, me).await?;
    let plan = plan(&state.services, &nodes, &state.drained);
    // One service's failure (its health unreadable, say) holds up no other's rollout.
    let mut failed = Vec::new();
    for def in active {
        let placed: Vec<String> = placed_instances(&def.name, &plan)
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        if let Err(e) = step(consul, me, def, &placed).await {
            failed.push(format!("service {}: {e:#}", def.name));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{}", failed.join("; "))
    }
}

async fn step(
    consul: &Consul,
    me: &Node,
    seen: &ServiceDef,
    placed: &[String],
) -> anyhow::Result<()> {
    let key = store::service_key(&seen.name);
    let (entries, _) = consul
        .all_instances(&consul_name(seen), None, Duration::ZERO)
        .await?;
    let health = health_of(&entries);
    // The record again, with its index: the step is written only over what it read.
    let Some((bytes, index)) = consul.kv_get_indexed(&key).await? else {
        return Ok(());
    };
    let def = ServiceDef::from_json(&bytes).with_context(|| key.clone())?;
    let check_interval = def
        .spec
        .service
        .as_ref()
        .and_then(|s| s.check.as_ref())
        .map(|c| c.interval);
    let o = Observation {
        placed,
        health: &health,
        check_interval,
        now: now_ms(),
        me: me.address,
    };
    let Some(next) = rollout::step(&def, &o) else {
        return Ok(());
    };
    if consul.kv_put_cas(&key, next.to_json(), index).await? {
        log_step(&def, &next);
    }
    Ok(())
}

fn log_step(before: &ServiceDef, after: &ServiceDef) {
    let (Some(b), Some(a)) = (&before.rollout, &after.rollout) else {
        return;
    };
    let name = &after.name;
    if a.state != b.state {
        match &a.message {
            Some(m) => info!(service = %name, state = a.state.as_str(), "rollout: {m}"),
            None => {
                info!(service = %name, state = a.state.as_str(), version = after.version, "rollout {}", a.state.as_str())
            }
        }
    } else if a.batch != b.batch && !a.batch.is_empty() {
        let batch: Vec<&str> = a.batch.iter().map(String::as_str).collect();
        info!(service = %name, version = after.version, "rollout: replacing {}", batch.join(", "));
    }
}
