//! systemd-resolved: `~consul` names are asked of this node's Consul on the overlay.

use super::{Reconciler, Snapshot};
use crate::network::netlink::Netlink;
use crate::outcome::Outcome;
use crate::systemd::resolved;

pub struct Resolved {
    pub netlink: Netlink,
}

#[async_trait::async_trait]
impl Reconciler for Resolved {
    fn name(&self) -> &'static str {
        "resolved"
    }

    async fn converge(&mut self, snap: &Snapshot<'_>) -> Outcome {
        let mut outcome = Outcome::default();
        let Some(systemd) = snap.systemd else {
            return outcome;
        };
        // The device the overlay reconciler made (or none yet: nothing to point at).
        let index = match self.netlink.link_by_name(&snap.plan.overlay.device).await {
            Ok(Some(link)) => link.header.index,
            Ok(None) => return outcome,
            Err(e) => {
                outcome.fail_with(&e);
                return outcome;
            }
        };
        if !resolved::available(systemd.connection()).await {
            return outcome;
        }
        let dns = snap.plan.consul_ip;
        match resolved::ensure_consul_domain(systemd.connection(), index, dns).await {
            Ok(true) => outcome.change(format!("~consul via {dns} on the overlay")),
            Ok(false) => {}
            Err(e) => outcome.fail_with(&e),
        }
        outcome
    }
}
