//! The Consul agent (its config, and its unit under systemd) and this node's entry in
//! the catalog.

use std::time::Duration;

use super::{Reconciler, Snapshot};
use crate::consul;
use crate::network::netlink::Netlink;
use crate::outcome::{Outcome, Restarted};

pub struct ConsulAgent {
    pub netlink: Netlink,
}

#[async_trait::async_trait]
impl Reconciler for ConsulAgent {
    fn name(&self) -> &'static str {
        "consul"
    }

    async fn converge(&mut self, snap: &Snapshot<'_>) -> Outcome {
        let mut outcome = Outcome::default();
        let Some(client) = snap.consul else {
            return outcome;
        };
        match consul::reconcile(snap.config, &self.netlink, snap.systemd).await {
            Ok(changes) => {
                // Register only once the agent that was just (re)started listens and
                // its cluster has a leader; other passes never wait.
                if changes
                    .iter()
                    .any(|c| c.contains(crate::paths::CONSUL_UNIT))
                {
                    outcome.restarted = Some(Restarted::Consul);
                    let limit = Duration::from_secs(30);
                    let up = match client.wait_until_up(limit).await {
                        Ok(()) => client.wait_for_leader(limit).await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = up {
                        outcome.fail_with(&e);
                    }
                }
                outcome.changes = changes;
            }
            Err(e) => outcome.fail_with(&e),
        }
        outcome
    }
}

/// This node as the `arpanet` service in the catalog, with what peers need to reach it.
pub struct NodeRegistration;

#[async_trait::async_trait]
impl Reconciler for NodeRegistration {
    fn name(&self) -> &'static str {
        "consul"
    }

    async fn converge(&mut self, snap: &Snapshot<'_>) -> Outcome {
        let mut outcome = Outcome::default();
        let (Some(client), Ok(underlay)) = (snap.consul, &snap.underlay) else {
            return outcome;
        };
        match consul::ensure_registered(client, snap.config, underlay.ip).await {
            Ok(true) => outcome.change(format!("registered node {}", snap.plan.address)),
            Ok(false) => {}
            Err(e) => outcome.fail("register this node", format!("{e:#}")),
        }
        outcome
    }
}
