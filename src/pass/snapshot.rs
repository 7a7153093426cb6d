//! Everything one pass reads, read once at its start: the reconcilers all see the
//! same catalog, cluster state and images, and none fetches its own.

use crate::config::{Config, ConsulMode};
use crate::consul::client::Consul;
use crate::consul::node::Catalog;
use crate::docker::engine::Engine;
use crate::docker::images::LocalImages;
use crate::network::admission::RejectedHello;
use crate::network::netlink::Netlink;
use crate::network::{Peer, UnderlayLink, peers};
use crate::outcome::Restarted;
use crate::placement::store::{self, ClusterState};
use crate::plan::NodePlan;
use crate::systemd::Systemd;

/// Why an input is missing from a snapshot (the service did not answer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

impl Unavailable {
    fn of(e: &(impl std::fmt::Display + ?Sized)) -> Self {
        Self(format!("{e:#}"))
    }
}

/// What the daemon knows that a pass cannot read for itself.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// The catalog watch's last answer; `None` until it answers, or with Consul off.
    /// A pass reads the catalog itself when `read_catalog` (`arpanetd --once`).
    pub catalog: Option<Catalog>,
    pub read_catalog: bool,
    /// Nodes admitted by hello, and hellos turned away.
    pub admitted: Vec<Peer>,
    pub turned_away: Vec<RejectedHello>,
}

pub struct Snapshot<'a> {
    pub config: &'a Config,
    /// What this node should look like, from its config alone.
    pub plan: NodePlan,
    pub systemd: Option<&'a Systemd>,
    /// `None` with `consul.mode = "disabled"`.
    pub consul: Option<&'a Consul>,
    /// The agent named a leader when the pass began. Without one Consul holds every
    /// catalog and KV request for seconds (`rpc_hold_timeout`) before failing it, and a
    /// pass that waited would hold up the overlay the election needs.
    pub consul_leader: bool,
    /// This host's underlay interface as found.
    pub underlay: Result<UnderlayLink, Unavailable>,
    pub catalog: Option<Catalog>,
    read_catalog: bool,
    /// The catalog's last answer kept on disk, used until the catalog answers.
    pub cached_peers: Vec<Peer>,
    pub admitted: Vec<Peer>,
    pub turned_away: Vec<RejectedHello>,
    /// The cluster's services, templates and drains from Consul KV.
    pub cluster: Result<ClusterState, Unavailable>,
    /// One handle on the local engine for the whole pass.
    pub docker: Result<Engine, Unavailable>,
    pub images: Result<LocalImages, Unavailable>,
}

impl<'a> Snapshot<'a> {
    pub async fn read(
        config: &'a Config,
        systemd: Option<&'a Systemd>,
        consul: &'a Consul,
        netlink: &Netlink,
        inputs: Inputs,
    ) -> Snapshot<'a> {
        let consul = (config.consul.mode != ConsulMode::Disabled).then_some(consul);
        let underlay = netlink
            .underlay(&config.node.underlay)
            .await
            .map_err(|e| Unavailable::of(&e));
        let mut snap = Snapshot {
            config,
            plan: NodePlan::from_config(config),
            systemd,
            consul,
            consul_leader: false,
            underlay,
            catalog: inputs.catalog,
            read_catalog: inputs.read_catalog,
            cached_peers: peers::load_cache(&crate::paths::peers_cache(&config.paths)),
            admitted: inputs.admitted,
            turned_away: inputs.turned_away,
            cluster: Err(Unavailable("Consul is not used on this node".into())),
            docker: Err(Unavailable("not connected".into())),
            images: Err(Unavailable("not listed".into())),
        };
        snap.read_consul().await;
        snap.read_docker().await;
        snap
    }

    /// What the network pass (hello and the overlay) reads: the underlay and the peer
    /// cache, with the catalog and the admissions handed in. It asks Consul and Docker
    /// nothing, so it is never held up by either.
    pub async fn network(
        config: &'a Config,
        consul: &'a Consul,
        netlink: &Netlink,
        inputs: Inputs,
    ) -> Snapshot<'a> {
        let mut snap = Snapshot::unread(config, None);
        snap.consul = (config.consul.mode != ConsulMode::Disabled).then_some(consul);
        snap.underlay = netlink
            .underlay(&config.node.underlay)
            .await
            .map_err(|e| Unavailable::of(&e));
        snap.catalog = inputs.catalog;
        snap.cached_peers = peers::load_cache(&crate::paths::peers_cache(&config.paths));
        snap.admitted = inputs.admitted;
        snap.turned_away = inputs.turned_away;
        snap
    }

    /// Reads again what came from a service a reconciler just restarted.
    pub async fn refresh(&mut self, restarted: Restarted) {
        match restarted {
            Restarted::Docker => self.read_docker().await,
            Restarted::Consul => self.read_consul().await,
        }
    }

    async fn read_consul(&mut self) {
        let Some(consul) = self.consul else {
            return;
        };
        self.consul_leader = matches!(consul.leader().await, Ok(Some(_)));
        if !self.consul_leader {
            self.cluster = Err(Unavailable(
                "Consul has no leader yet (or its agent does not answer)".into(),
            ));
            return;
        }
        if self.read_catalog {
            // Unanswered, the catalog stays as it was: the peer cache stands in for it.
            if let Ok(c) = crate::consul::node::read_catalog(consul).await {
                self.catalog = Some(c);
            }
        }
        self.cluster = store::load(consul).await.map_err(|e| Unavailable::of(&e));
    }

    async fn read_docker(&mut self) {
        match Engine::connect(&self.config.docker.socket).await {
            Ok(engine) => {
                self.images = engine.local_images().await.map_err(|e| Unavailable::of(&e));
                self.docker = Ok(engine);
            }
            Err(e) => {
                self.docker = Err(Unavailable::of(&e));
                self.images = Err(Unavailable::of(&e));
            }
        }
    }

    /// The peers to program: the catalog's (or the cache's before it answered) and
    /// the nodes admitted by hello.
    pub fn peers(&self) -> Vec<Peer> {
        let catalog = self.catalog.as_ref().map(Catalog::peers);
        peers::desired(
            self.config,
            catalog.as_deref(),
            &self.cached_peers,
            &self.admitted,
        )
    }

    /// A snapshot of the config alone, with nothing read: what uninstalling needs, and
    /// what reconcilers' unit tests fill in by hand.
    pub fn unread(config: &'a Config, systemd: Option<&'a Systemd>) -> Snapshot<'a> {
        Snapshot {
            config,
            plan: NodePlan::from_config(config),
            systemd,
            consul: None,
            consul_leader: false,
            underlay: Err(Unavailable("not read".into())),
            catalog: None,
            read_catalog: false,
            cached_peers: Vec::new(),
            admitted: Vec::new(),
            turned_away: Vec::new(),
            cluster: Err(Unavailable("not read".into())),
            docker: Err(Unavailable("not read".into())),
            images: Err(Unavailable("not read".into())),
        }
    }
}
