//! The overlay: device, entries and firewall for the admitted peers, and the record of
//! who was admitted how (admission.json, for `arpanet status`).

use super::{Reconciler, Snapshot};
use crate::consul::node::Catalog;
use crate::network::admission::{self, Status};
use crate::network::netlink::Netlink;
use crate::network::reconcile;
use crate::outcome::{Outcome, Restarted};

pub struct Overlay {
    pub netlink: Netlink,
}

/// Who is admitted and why, as this pass programs it.
pub fn status(snap: &Snapshot<'_>, peers: &[crate::network::Peer]) -> Status {
    let catalog = snap.catalog.as_ref().map(Catalog::peers);
    Status::new(
        peers,
        catalog.as_deref(),
        &snap.cached_peers,
        snap.turned_away.clone(),
        snap.catalog
            .as_ref()
            .map(|c| c.refused.clone())
            .unwrap_or_default(),
    )
}

#[async_trait::async_trait]
impl Reconciler for Overlay {
    fn name(&self) -> &'static str {
        "network"
    }

    async fn converge(&mut self, snap: &Snapshot<'_>) -> Outcome {
        let mut outcome = Outcome::default();
        let peers = snap.peers();
        let status = status(snap, &peers);
        let path = crate::paths::admission_status(&snap.config.paths);
        if admission::load_status(&path).as_ref() != Some(&status)
            && let Err(e) = serde_json::to_string_pretty(&status)
                .map_err(anyhow::Error::from)
                .and_then(|t| crate::files::write_atomically(&path, &t))
        {
            outcome.fail(path.display().to_string(), format!("{e:#}"));
        }
        match &snap.underlay {
            Ok(underlay) => outcome
                .merge(reconcile::reconcile(&self.netlink, snap.config, underlay, &peers).await),
            Err(e) => outcome.fail("underlay", e),
        }
        outcome
    }

    async fn uninstall(&mut self, snap: &Snapshot<'_>) -> Outcome {
        reconcile::uninstall(&self.netlink, snap.config).await
    }

    fn rerun_after(&self, restarted: Restarted) -> bool {
        // Docker puts its NAT rules first again when it starts.
        restarted == Restarted::Docker
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::consul::node::CatalogNode;
    use crate::network::Peer;
    use std::net::Ipv4Addr;

    fn peer(a: &str, last: u8) -> Peer {
        Peer {
            address: a.parse().unwrap(),
            underlay_ip: Ipv4Addr::new(192, 168, 1, last),
        }
    }

    fn node(p: Peer) -> CatalogNode {
        CatalogNode {
            address: p.address,
            underlay_ip: p.underlay_ip,
            role: crate::config::Role::Client,
            labels: Default::default(),
            capacity: None,
            healthy: true,
        }
    }

    #[test]
    fn admitted_peers_are_put_down_to_where_they_came_from() {
        let config = Config::parse(
            std::path::Path::new("t"),
            "[node]\naddress = \"0.3\"\nrole = \"client\"\njoin = [{ address = \"0.1\", ip = \"192.168.1.1\" }]\n",
        )
        .unwrap();
        let mut snap = Snapshot::unread(&config, None);
        // Before the catalog answers: the cache, and a newcomer by hello.
        snap.cached_peers = vec![peer("0.1", 1)];
        snap.admitted = vec![peer("0.5", 5)];
        // Each programmed peer, and what admitted it.
        let admitted = |snap: &Snapshot<'_>| -> Vec<(Peer, String)> {
            let peers = snap.peers();
            let by = status(snap, &peers).admitted.into_iter().map(|a| a.by);
            peers.iter().copied().zip(by).collect()
        };
        assert_eq!(
            admitted(&snap),
            [
                (peer("0.1", 1), "cache".into()),
                (peer("0.5", 5), "hello".into())
            ]
        );
        // Once it answers, the catalog replaces the cache; this node is never a peer.
        snap.catalog = Some(Catalog {
            nodes: vec![node(peer("0.2", 2)), node(peer("0.3", 3))],
            refused: vec![],
        });
        assert_eq!(
            admitted(&snap),
            [
                (peer("0.2", 2), "catalog".into()),
                (peer("0.5", 5), "hello".into())
            ]
        );
    }
}
