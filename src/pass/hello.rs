//! The hello service (admission): a task that greets the join peers and answers
//! hellos, kept running with what it should say.

use super::{Reconciler, Snapshot};
use crate::consul::secret;
use crate::identity::{LocalIdentity, NodeTls};
use crate::network::admission::{self, HelloIdentity, Speaker};
use crate::network::reconcile::join_peers;
use crate::outcome::Outcome;

pub struct Hello {
    pub admissions: admission::Shared,
    /// Signalled when a hello admits a node, so a pass programs it at once.
    pub admitted_tx: tokio::sync::mpsc::Sender<()>,
    /// The node's TLS: where its identity lives, and the process's revocation list.
    pub tls: NodeTls,
    /// Whom the task greets besides the join peers; changing it restarts nothing.
    also: tokio::sync::watch::Sender<Vec<std::net::Ipv4Addr>>,
    running: Option<(Speaker, tokio::task::JoinHandle<()>)>,
}

impl Hello {
    pub fn new(
        admissions: admission::Shared,
        admitted_tx: tokio::sync::mpsc::Sender<()>,
        tls: NodeTls,
    ) -> Self {
        Self {
            admissions,
            admitted_tx,
            tls,
            also: tokio::sync::watch::Sender::new(Vec::new()),
            running: None,
        }
    }
}

/// A host with no join peers and no secret file (a lone host, Consul off) has nobody
/// to greet and could admit nobody: it runs without hellos, and says nothing.
pub fn lone_without_secret(config: &crate::config::Config) -> bool {
    config.node.join.is_empty() && !config.cluster.secret_file.exists()
}

/// What this node's hellos say, from the config, the secret, the underlay and the
/// node's identity (as `tls` finds it).
pub fn speaker(snap: &Snapshot<'_>, tls: &NodeTls) -> anyhow::Result<Speaker> {
    let secret = secret::read(&snap.config.cluster.secret_file)?;
    let underlay = snap.underlay.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
    let join: Vec<_> = join_peers(snap.config)
        .iter()
        .map(|p| p.underlay_ip)
        .collect();
    Ok(Speaker {
        me: snap.plan.address,
        underlay_ip: underlay.ip,
        port: snap.config.overlay.hello_port,
        key: secret::derive_key(&secret, secret::ADMISSION_LABEL),
        join,
        identity: LocalIdentity::load(tls.files())
            .map_err(|e| e.to_string())
            .and_then(|id| HelloIdentity::from_local(&id)),
    })
}

/// Whom a node greets besides its join peers: every node in `known` (the catalog's,
/// or before it answers the cache, which a join fills from the join peer), for as long
/// as the catalog does not list the node itself. Once it does, Consul tells everyone.
fn greeted_also(
    me: crate::addressing::NodeAddress,
    catalog: Option<&crate::consul::node::Catalog>,
    peers: &[crate::network::Peer],
    join: &[std::net::Ipv4Addr],
) -> Vec<std::net::Ipv4Addr> {
    if catalog.is_some_and(|c| c.nodes.iter().any(|n| n.address == me)) {
        return Vec::new();
    }
    // The daemon's cache holds this node too (it keeps the catalog's answer whole).
    peers
        .iter()
        .filter(|p| p.address != me)
        .map(|p| p.underlay_ip)
        .filter(|ip| !join.contains(ip))
        .collect()
}

#[async_trait::async_trait]
impl Reconciler for Hello {
    fn name(&self) -> &'static str {
        "admission"
    }

    /// (Re)starts the task when the secret, the underlay address, the join list or the
    /// node's identity (a renewed certificate, one that appeared) changed, or it ended.
    async fn converge(&mut self, snap: &Snapshot<'_>) -> Outcome {
        let mut outcome = Outcome::default();
        if lone_without_secret(snap.config) {
            return outcome;
        }
        let speaker = match speaker(snap, &self.tls) {
            Ok(s) => s,
            Err(e) => {
                outcome.fail_with(&e);
                return outcome;
            }
        };
        // The catalog's nodes, or the cache's before it answers; not those admitted by
        // hello (greeting them back would keep each other admitted for ever). Without
        // Consul there is no catalog to wait for: join peers only.
        let known = match (&snap.catalog, snap.consul) {
            (_, None) => Vec::new(),
            (Some(c), _) => c.peers(),
            (None, _) => snap.cached_peers.clone(),
        };
        let also = greeted_also(
            snap.plan.address,
            snap.catalog.as_ref(),
            &known,
            &speaker.join,
        );
        self.also.send_if_modified(|current| {
            let changed = *current != also;
            *current = also;
            changed
        });
        if let Some((running, task)) = &self.running
            && *running == speaker
            && !task.is_finished()
        {
            return outcome;
        }
        if let Some((_, task)) = self.running.take() {
            task.abort();
            // Until the old task is gone its socket holds the port: binding sooner
            // fails with "address in use", and no hello is answered until a pass later.
            let _ = task.await;
        }
        match speaker.bind().await {
            Ok(socket) => {
                let task = tokio::spawn(speaker.clone().serve(
                    socket,
                    self.admissions.clone(),
                    self.tls.clone(),
                    self.admitted_tx.clone(),
                    self.also.subscribe(),
                ));
                self.running = Some((speaker, task));
            }
            Err(e) => outcome.fail(
                format!("bind UDP {}:{}", speaker.underlay_ip, speaker.port),
                e,
            ),
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consul::node::{Catalog, CatalogNode};
    use crate::network::Peer;
    use std::net::Ipv4Addr;

    fn peer(a: &str, last: u8) -> Peer {
        Peer {
            address: a.parse().unwrap(),
            underlay_ip: Ipv4Addr::new(192, 168, 8, last),
        }
    }

    #[test]
    fn a_node_the_catalog_does_not_list_greets_every_peer_it_knows() {
        let me = "0.4".parse().unwrap();
        let join = [Ipv4Addr::new(192, 168, 8, 1)];
        let peers = [
            peer("0.1", 1),
            peer("0.2", 2),
            peer("0.3", 3),
            peer("0.4", 4),
        ];
        let others = [Ipv4Addr::new(192, 168, 8, 2), Ipv4Addr::new(192, 168, 8, 3)];
        // Before the catalog answers (a newcomer with the join's list in its cache, or
        // a node restarted with the catalog's last answer, itself included).
        assert_eq!(greeted_also(me, None, &peers, &join), others);
        // The catalog answers without this node: still everyone.
        let mut catalog = Catalog {
            nodes: peers[..3]
                .iter()
                .map(|p| CatalogNode {
                    address: p.address,
                    underlay_ip: p.underlay_ip,
                    role: crate::config::Role::Client,
                    labels: Default::default(),
                    capacity: None,
                    healthy: true,
                })
                .collect(),
            refused: vec![],
        };
        assert_eq!(greeted_also(me, Some(&catalog), &peers, &join), others);
        // Listed: the join peers alone, as before.
        catalog.nodes.push(CatalogNode {
            address: me,
            underlay_ip: Ipv4Addr::new(192, 168, 8, 4),
            role: crate::config::Role::Client,
            labels: Default::default(),
            capacity: None,
            healthy: true,
        });
        assert!(greeted_also(me, Some(&catalog), &peers, &join).is_empty());
    }
}
