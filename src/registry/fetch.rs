//! Getting a blob this node lacks: piece by piece, from the blob's swarm over the
//! cluster API (mutual TLS, node certificates; the routes are in [`super::swarm`]).
//!
//! Consul is the tracker: `blobs/HEX/` names the seeds (nodes that hold the blob) and
//! `pulls/HEX/` the other pullers. A puller asks the seeds only for pieces no other
//! puller has or is getting, and each seed hands it one of those it sent least, so the
//! pullers start with disjoint slices and get the rest from each other: each piece
//! leaves a seed about once however many pull. Every piece is checked against the piece
//! list before it is written or passed on; a node that sends a bad one is dropped and
//! the piece fetched elsewhere, and the whole blob is checked against its digest before
//! it is stored. What arrived stays in the pull's file, so a pull that stopped (a full
//! disk, no holder left) goes on from there when run again.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt as _;
use reqwest::StatusCode;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::catalog::{ConsulCatalog, Holder};
use super::pieces::{
    Bitfield, PieceList, PieceListV1, others_have, pick_from_peers, wanted_from_seed,
};
use super::spec::Digest;
use super::store::{BlobStore, StoreError};
use super::swarm::{HaveV1, Pull, Swarm};
use super::{BlobSource, Catalog as _, FetchError};
use crate::addressing::NodeAddress;
use crate::identity::NodeClient;

/// Requests in flight to other pullers, per blob. Any one of them may have all: the
/// least busy that has a piece is asked first anyway, and where one other puller has
/// what this one lacks (two nodes), a cap of 2 left this one's downlink a fifth idle
/// (whole at 22.1 s against 19.4 s, 200 MB at 100 Mbit/s).
const PEER_SLOTS: usize = 4;
/// A puller that says it has pieces it then does not is dropped after this many.
const STRIKES: usize = 3;
/// Requests in flight to one seed from this node, whatever blobs they are for: a seed
/// hands out a piece when asked, so with more of them its answers queue on its uplink
/// past [`super::pieces::RESEND_AFTER`] and it sends pieces twice.
const SEED_SLOTS: usize = 3;
/// Of those, for one blob: another blob's pull always gets a turn, so the seed hears
/// of it (and may send it first, being smaller).
const SEED_SLOTS_PER_BLOB: usize = 2;
/// How often a puller asks the other pullers what they have, and Consul who is in.
const LOOK_EVERY: Duration = Duration::from_millis(250);
const TRACKER_EVERY: Duration = Duration::from_secs(2);
/// How long other pullers' word on what they are getting holds without a new piece.
const BUSY_TRUSTED: Duration = Duration::from_secs(2);
/// A pull that got no piece for this long, with no one left to ask, stops.
const STALLED: Duration = Duration::from_secs(5);

/// The cluster API path of a node's side of a blob's swarm.
pub fn swarm_path(digest: &Digest) -> String {
    format!("/v1/registry/swarm/{digest}")
}

pub struct PeerFetch {
    /// Itself, for the pulls [`BlobSource::stream`] starts in the background.
    me: std::sync::Weak<PeerFetch>,
    catalog: Arc<ConsulCatalog>,
    http: NodeClient,
    api_port: u16,
    swarm: Arc<Swarm>,
    /// One fetch per blob at a time: pulls that want it at once wait for the first.
    running: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    /// Seeds whose piece list of a blob turned out wrong: not asked for it again.
    bad_lists: Mutex<HashMap<Digest, BTreeSet<NodeAddress>>>,
    /// Requests in flight to each seed, from every pull of this node.
    seed_asks: Arc<Mutex<HashMap<NodeAddress, usize>>>,
}

/// One request in flight to a seed, counted in [`PeerFetch::seed_asks`] until it is
/// answered or dropped.
struct SeedAsk {
    asks: Arc<Mutex<HashMap<NodeAddress, usize>>>,
    node: NodeAddress,
}

impl Drop for SeedAsk {
    fn drop(&mut self) {
        let mut asks = self.asks.lock().unwrap();
        if let Some(n) = asks.get_mut(&self.node) {
            *n -= 1;
            if *n == 0 {
                asks.remove(&self.node);
            }
        }
    }
}

/// Ends a pull however [`PeerFetch::fetch`] leaves it (an error, a panic): streams that
/// wait on it end, and this node stops serving its pieces.
struct Ending<'a> {
    swarm: &'a Swarm,
    digest: &'a Digest,
    pull: Arc<Pull>,
}

impl Drop for Ending<'_> {
    fn drop(&mut self) {
        self.pull.end_if_open();
        self.swarm.end_pull(self.digest);
    }
}

/// What one request in flight came back with.
enum Done {
    /// A piece from a seed (`asked: None`) or a puller (`asked: Some(n)`); `Ok(None)`:
    /// nothing for now (a seed's 204, a puller that no longer has it).
    Piece {
        node: NodeAddress,
        asked: Option<usize>,
        answer: Result<Option<(usize, Bytes)>, String>,
    },
    Have {
        node: NodeAddress,
        answer: Result<Option<HaveV1>, String>,
    },
    Tracker(Result<(Vec<Holder>, Vec<Holder>), super::CatalogError>),
}

/// Another puller as this one last heard of it.
struct Peer {
    have: Bitfield,
    busy: Bitfield,
    in_flight: usize,
    asking: bool,
    /// When its `have` last grew: its word on what it is getting holds for a while.
    grew: Instant,
    /// Pieces it said it had and then did not.
    strikes: usize,
}

impl Peer {
    fn new(count: usize) -> Self {
        Self {
            have: Bitfield::new(count),
            busy: Bitfield::new(count),
            in_flight: 0,
            asking: false,
            grew: Instant::now(),
            strikes: 0,
        }
    }
}

/// Where a pull's pieces came from: a count per node, seeds and pullers apart.
#[derive(Default)]
struct Tally {
    from_seeds: u64,
    from_pullers: u64,
    per_node: HashMap<NodeAddress, usize>,
}

impl PeerFetch {
    pub fn new(
        catalog: Arc<ConsulCatalog>,
        http: NodeClient,
        api_port: u16,
        swarm: Arc<Swarm>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            catalog,
            http,
            api_port,
            swarm,
            running: Mutex::default(),
            bad_lists: Mutex::default(),
            seed_asks: Arc::default(),
        })
    }

    /// A request to `node` as a seed, if this node has fewer than [`SEED_SLOTS`] there.
    fn seed_ask(&self, node: NodeAddress) -> Option<SeedAsk> {
        let mut asks = self.seed_asks.lock().unwrap();
        let n = asks.entry(node).or_default();
        if *n >= SEED_SLOTS {
            return None;
        }
        *n += 1;
        Some(SeedAsk {
            asks: self.seed_asks.clone(),
            node,
        })
    }

    fn lock_for(&self, digest: &Digest) -> Arc<tokio::sync::Mutex<()>> {
        let mut running = self.running.lock().unwrap();
        // Locks no pull holds go, so the map does not grow with every blob ever pulled.
        running.retain(|_, lock| Arc::strong_count(lock) > 1);
        running.entry(digest.clone()).or_default().clone()
    }

    fn url(&self, node: NodeAddress, digest: &Digest, rest: &str) -> String {
        format!(
            "https://{}:{}{}{rest}",
            node.overlay_ip(),
            self.api_port,
            swarm_path(digest)
        )
    }

    /// The piece list from the first seed that gives one of the blob's shape; seeds that
    /// do not answer are dropped from `seeds`.
    async fn piece_list(
        &self,
        digest: &Digest,
        size: u64,
        seeds: &mut Vec<NodeAddress>,
    ) -> Result<(PieceList, NodeAddress), FetchError> {
        while let Some(&node) = seeds.first() {
            let answer = async {
                let url = self.url(node, digest, "/pieces");
                // 4096 hashes in base64 and a little JSON.
                let (status, body) = get_capped(self.http.get(), url, 256 << 10).await?;
                if status != StatusCode::OK {
                    return Err(crate::http::error_text(status, &body));
                }
                let wire: PieceListV1 =
                    serde_json::from_slice(&body).map_err(|e| format!("piece list: {e}"))?;
                PieceList::from_wire(&wire, size).map_err(|e| e.to_string())
            }
            .await;
            match answer {
                Ok(list) => return Ok((list, node)),
                Err(e) => {
                    warn!(
                        "registry: node {node} gave no piece list of {}: {e}; node {node} dropped",
                        short(digest)
                    );
                    seeds.remove(0);
                }
            }
        }
        Err(FetchError::NoHolder(digest.to_string()))
    }

    /// The pieces of the pull's file that are right already (an earlier pull's).
    async fn pieces_here(pull: &Pull) -> Bitfield {
        let mut have = Bitfield::new(pull.list.count());
        for n in 0..pull.list.count() {
            let (start, len) = pull.list.range(n);
            if let Ok(bytes) = super::swarm::read_at(pull.file.clone(), start, len).await
                && pull.list.check(n, &bytes)
            {
                have.set(n, true);
            }
        }
        have
    }

    /// Fetches the pull's missing pieces from the swarm; returns where they came from.
    async fn run(
        &self,
        digest: &Digest,
        pull: &Arc<Pull>,
        store: &BlobStore,
        first_seeds: Vec<NodeAddress>,
    ) -> Result<Tally, FetchError> {
        let list = pull.list.clone();
        let count = list.count();
        let me = self.catalog.me();
        let mut seeds = first_seeds;
        let mut seed_in_flight: HashMap<NodeAddress, usize> = HashMap::new();
        // A seed that had nothing for this node is asked again a look later.
        let mut seed_idle: HashMap<NodeAddress, Instant> = HashMap::new();
        let mut peers: HashMap<NodeAddress, Peer> = HashMap::new();
        let mut dropped: BTreeSet<NodeAddress> = BTreeSet::new();
        let mut tasks: JoinSet<Done> = JoinSet::new();
        let started = Instant::now();
        let mut tracker_asked = started - TRACKER_EVERY;
        let mut tracker_asking = false;
        let mut tracker_heard = false;
        let mut looked = Instant::now() - LOOK_EVERY;
        let mut progress = Instant::now();
        let mut tally = Tally::default();
        let mut rotate = 0usize;
        loop {
            let (have, mut busy) = pull.state();
            if have.count() == count {
                return Ok(tally);
            }
            let now = Instant::now();
            if !tracker_asking && now >= tracker_asked + TRACKER_EVERY {
                tracker_asking = true;
                tracker_asked = now;
                let (catalog, digest) = (self.catalog.clone(), digest.clone());
                tasks.spawn(async move {
                    let both = async {
                        Ok((
                            catalog.holders(&digest).await?,
                            catalog.pullers(&digest).await?,
                        ))
                    };
                    Done::Tracker(both.await)
                });
            }
            if now >= looked + LOOK_EVERY {
                looked = now;
                for (&node, peer) in peers.iter_mut().filter(|(_, p)| !p.asking) {
                    peer.asking = true;
                    tasks.spawn(self.ask_have(node, digest.clone()));
                }
            }
            // Other pullers first: the lowest piece one of them has, from the least busy.
            let in_flight: usize = peers.values().map(|p| p.in_flight).sum();
            for _ in in_flight..PEER_SLOTS {
                let views: Vec<(NodeAddress, &Bitfield, usize)> = peers
                    .iter()
                    .map(|(node, p)| (*node, &p.have, p.in_flight))
                    .collect();
                let Some((n, node)) = pick_from_peers(&have, &busy, &views) else {
                    break;
                };
                busy.set(n, true);
                pull.set_busy(n, true);
                peers.get_mut(&node).expect("a peer").in_flight += 1;
                tasks.spawn(self.get_piece(node, digest.clone(), n, list.range(n).1));
            }
            // Then the seeds, for what no other puller has or gets. With several seeds,
            // each is asked for its own share, so they do not hand this puller the same
            // piece (each seed's book is its own: other pullers may share out otherwise).
            // What another puller says it is getting counts only while its pieces grow:
            // one that says it gets everything and never does cannot starve this pull.
            let others = others_have(
                count,
                peers
                    .values()
                    .map(|p| (&p.have, &p.busy, now < p.grew + BUSY_TRUSTED)),
            );
            let wanted = wanted_from_seed(&have, &busy, &others);
            // The other pullers heard of first, so the seeds are not asked for theirs.
            let heard = tracker_heard || now >= started + Duration::from_secs(1);
            if heard && wanted.count() > 0 && !seeds.is_empty() {
                rotate += 1;
                for i in 0..seeds.len() {
                    let k = (rotate + i) % seeds.len();
                    let node = seeds[k];
                    let mut share = Bitfield::new(count);
                    for n in wanted.ones().filter(|n| n % seeds.len() == k) {
                        share.set(n, true);
                    }
                    if share.count() == 0 || seed_idle.get(&node).is_some_and(|t| now < *t) {
                        continue;
                    }
                    let mine = seed_in_flight.entry(node).or_default();
                    while *mine < SEED_SLOTS_PER_BLOB
                        && let Some(ask) = self.seed_ask(node)
                    {
                        *mine += 1;
                        let wanted = share.to_hex();
                        tasks.spawn(self.assign(node, digest.clone(), wanted, list.clone(), ask));
                    }
                }
            }
            if tasks.is_empty() && seeds.is_empty() && peers.is_empty() && now >= progress + STALLED
            {
                return Err(FetchError::NoHolder(digest.to_string()));
            }
            if now >= progress + STALLED * 12 {
                // Asked, and nothing came for a minute: stop; the next pull goes on.
                return Err(FetchError::NoHolder(digest.to_string()));
            }
            let done = tokio::select! {
                Some(done) = tasks.join_next() => done.expect("a request does not panic"),
                () = tokio::time::sleep(LOOK_EVERY) => continue,
            };
            match done {
                Done::Tracker(answer) => {
                    tracker_asking = false;
                    tracker_heard = true;
                    match answer {
                        Ok((holders, pullers)) => {
                            for h in holders {
                                if h.node != me
                                    && h.size == list.size()
                                    && !dropped.contains(&h.node)
                                    && !seeds.contains(&h.node)
                                {
                                    peers.remove(&h.node);
                                    seeds.push(h.node);
                                }
                            }
                            for p in pullers {
                                if p.node != me
                                    && p.size == list.size()
                                    && !dropped.contains(&p.node)
                                    && !seeds.contains(&p.node)
                                {
                                    peers.entry(p.node).or_insert_with(|| Peer::new(count));
                                }
                            }
                        }
                        Err(e) => {
                            debug!("registry: the tracker view of {}: {e}", short(digest))
                        }
                    }
                }
                Done::Have { node, answer } => {
                    let Some(peer) = peers.get_mut(&node) else {
                        continue;
                    };
                    peer.asking = false;
                    match answer.and_then(|a| match a {
                        Some(a) => Ok(Some((
                            Bitfield::from_hex(&a.have, count).map_err(|e| e.to_string())?,
                            Bitfield::from_hex(&a.busy, count).map_err(|e| e.to_string())?,
                        ))),
                        None => Ok(None),
                    }) {
                        Ok(Some((have, busy))) => {
                            if have.count() > peer.have.count() {
                                peer.grew = Instant::now();
                            }
                            peer.have = have;
                            peer.busy = busy;
                        }
                        // Done (it is a seed now: the tracker says so) or gone.
                        Ok(None) => {
                            peer.have = Bitfield::new(count);
                            peer.busy = Bitfield::new(count);
                        }
                        Err(e) => {
                            self.drop_node(digest, node, &e, &mut dropped, &mut seeds, &mut peers);
                        }
                    }
                }
                Done::Piece {
                    node,
                    asked,
                    answer,
                } => {
                    if let Some(n) = asked {
                        pull.set_busy(n, false);
                        if let Some(peer) = peers.get_mut(&node) {
                            peer.in_flight -= 1;
                        }
                    } else if let Some(k) = seed_in_flight.get_mut(&node) {
                        *k -= 1;
                    }
                    match answer {
                        Ok(Some((n, bytes))) if list.check(n, &bytes) => {
                            if pull.state().0.get(n) {
                                continue;
                            }
                            let (start, _) = list.range(n);
                            store.write_at(pull.file.clone(), start, bytes).await?;
                            pull.set_have(n);
                            progress = Instant::now();
                            *tally.per_node.entry(node).or_default() += 1;
                            let len = list.range(n).1;
                            if asked.is_some() {
                                tally.from_pullers += len;
                            } else {
                                tally.from_seeds += len;
                            }
                        }
                        Ok(Some((n, _))) => {
                            let why = format!("piece {n} does not match its hash");
                            self.drop_node(
                                digest,
                                node,
                                &why,
                                &mut dropped,
                                &mut seeds,
                                &mut peers,
                            );
                        }
                        Ok(None) => match asked {
                            // The seeds have nothing for this node now: wait a look.
                            None => {
                                seed_idle.insert(node, Instant::now() + LOOK_EVERY);
                            }
                            // It said it had the piece: not again, and not for long.
                            Some(n) => {
                                if let Some(peer) = peers.get_mut(&node) {
                                    peer.have.set(n, false);
                                    peer.strikes += 1;
                                    if peer.strikes >= STRIKES {
                                        let why =
                                            format!("it lacked {STRIKES} pieces it said it had");
                                        self.drop_node(
                                            digest,
                                            node,
                                            &why,
                                            &mut dropped,
                                            &mut seeds,
                                            &mut peers,
                                        );
                                    }
                                }
                            }
                        },
                        Err(e) => {
                            self.drop_node(digest, node, &e, &mut dropped, &mut seeds, &mut peers);
                        }
                    }
                }
            }
        }
    }

    async fn not_pulling(&self, digest: &Digest) {
        if let Err(e) = self.catalog.done_pulling(digest).await {
            warn!(
                "registry: this node's pull record of {} stays until it restarts: {e}",
                short(digest)
            );
        }
    }

    fn drop_node(
        &self,
        digest: &Digest,
        node: NodeAddress,
        why: &str,
        dropped: &mut BTreeSet<NodeAddress>,
        seeds: &mut Vec<NodeAddress>,
        peers: &mut HashMap<NodeAddress, Peer>,
    ) {
        if dropped.insert(node) {
            warn!(
                "registry: fetching {} from node {node} stopped: {why}; node {node} dropped",
                short(digest)
            );
        }
        seeds.retain(|s| *s != node);
        peers.remove(&node);
    }

    fn ask_have(&self, node: NodeAddress, digest: Digest) -> impl Future<Output = Done> + use<> {
        let url = self.url(node, &digest, "/have");
        let http = self.http.get();
        async move {
            let answer = async {
                let (status, body) = get_capped(http, url, 64 << 10).await?;
                match status {
                    StatusCode::OK => serde_json::from_slice(&body)
                        .map(Some)
                        .map_err(|e| format!("its pieces: {e}")),
                    StatusCode::NOT_FOUND => Ok(None),
                    _ => Err(crate::http::error_text(status, &body)),
                }
            };
            Done::Have {
                node,
                answer: answer.await,
            }
        }
    }

    fn get_piece(
        &self,
        node: NodeAddress,
        digest: Digest,
        n: usize,
        len: u64,
    ) -> impl Future<Output = Done> + use<> {
        let url = self.url(node, &digest, &format!("/pieces/{n}"));
        let http = self.http.get();
        async move {
            let answer = async {
                let (status, body) = get_capped(http, url, len as usize).await?;
                match status {
                    StatusCode::OK => Ok(Some((n, body))),
                    StatusCode::NOT_FOUND => Ok(None),
                    _ => Err(crate::http::error_text(status, &body)),
                }
            };
            Done::Piece {
                node,
                asked: Some(n),
                answer: answer.await,
            }
        }
    }

    fn assign(
        &self,
        node: NodeAddress,
        digest: Digest,
        wanted: String,
        list: Arc<PieceList>,
        ask: SeedAsk,
    ) -> impl Future<Output = Done> + use<> {
        let url = self.url(node, &digest, "/assign");
        let http = self.http.get();
        async move {
            let answer = async {
                let http = http.map_err(|e| e.to_string())?;
                let res = http
                    .post(url)
                    .body(wanted)
                    .send()
                    .await
                    .map_err(crate::http::request_error)?;
                let status = res.status();
                let piece: Option<usize> = res
                    .headers()
                    .get("arpanet-piece")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok());
                match (status, piece) {
                    (StatusCode::OK, Some(n)) if n < list.count() => {
                        let body = read_capped(res, list.range(n).1 as usize).await?;
                        Ok(Some((n, body)))
                    }
                    (StatusCode::NO_CONTENT, _) => Ok(None),
                    (StatusCode::OK, _) => Err("its answer names no piece of the blob".to_string()),
                    _ => {
                        let body = read_capped(res, 64 << 10).await?;
                        Err(crate::http::error_text(status, &body))
                    }
                }
            };
            let answer = answer.await;
            drop(ask);
            Done::Piece {
                node,
                asked: None,
                answer,
            }
        }
    }
}

/// A GET to another node: the status and the body, up to `cap` bytes.
async fn get_capped(
    http: Result<reqwest::Client, crate::identity::IdentityError>,
    url: String,
    cap: usize,
) -> Result<(StatusCode, Bytes), String> {
    let http = http.map_err(|e| e.to_string())?;
    let res = http
        .get(url)
        .send()
        .await
        .map_err(crate::http::request_error)?;
    let status = res.status();
    Ok((status, read_capped(res, cap).await?))
}

/// An answer's body, up to `cap` bytes (a piece's length): a node cannot make this one
/// buffer more. Counted as received as it comes.
async fn read_capped(res: reqwest::Response, cap: usize) -> Result<Bytes, String> {
    let mut body = Vec::with_capacity(cap.min(4 << 20));
    let mut stream = res.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(crate::http::request_error)?;
        crate::metrics::registry_blob_bytes("received", chunk.len() as u64);
        if body.len() + chunk.len() > cap {
            return Err(format!(
                "its answer is longer than the {cap} bytes asked for"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.into())
}

#[async_trait::async_trait]
impl BlobSource for PeerFetch {
    async fn stream(
        &self,
        digest: &Digest,
        size: u64,
    ) -> Result<Option<super::BlobStream>, FetchError> {
        use futures::StreamExt as _;
        let task = self
            .swarm
            .pull(digest)
            .is_none()
            .then(|| self.spawn_pull(digest, size));
        let pull = loop {
            if let Some(pull) = self.swarm.pull(digest) {
                break Some(pull);
            }
            if task.as_ref().is_none_or(|t| t.is_finished()) {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        // The answer's status waits for the first bytes: a pull that fails before them
        // (no good holder, a full disk) is an error answer, not a short body.
        if let Some(pull) = pull
            && pull.started().await != Some(false)
        {
            return Ok(Some(pull.stream().boxed()));
        }
        match task {
            Some(task) => task.await.expect("a pull does not panic").map(|()| None),
            // Another request's pull, done or stopped: a fetch of this one's says which.
            None => Ok(None),
        }
    }

    /// Into the swarm's store, which is the registry's.
    async fn fetch(&self, digest: &Digest, size: u64, _: &BlobStore) -> Result<(), FetchError> {
        self.spawn_pull(digest, size)
            .await
            .expect("a pull does not panic")
    }
}

impl PeerFetch {
    /// The pull on a task of its own: a client that goes away must not stop it, least of
    /// all between a piece's write and its record (a write landing after the next pull
    /// of the blob began would change bytes that pull counted as checked).
    fn spawn_pull(
        &self,
        digest: &Digest,
        size: u64,
    ) -> tokio::task::JoinHandle<Result<(), FetchError>> {
        let this = self
            .me
            .upgrade()
            .expect("the fetcher is alive while it is called");
        let d = digest.clone();
        tokio::spawn(async move { this.pull_blob(&d, size).await })
    }

    async fn pull_blob(&self, digest: &Digest, size: u64) -> Result<(), FetchError> {
        let store = self.swarm.store().clone();
        let store = &*store;
        let lock = self.lock_for(digest);
        let _held = lock.lock().await;
        if store.size(digest).await.is_some() {
            return Ok(());
        }
        let me = self.catalog.me();
        let mut holders: Vec<Holder> = self
            .catalog
            .holders(digest)
            .await?
            .into_iter()
            .filter(|h| h.node != me && h.size == size)
            .collect();
        order_holders(me, &mut holders, digest);
        let bad = self.bad_lists.lock().unwrap().get(digest).cloned();
        let mut seeds: Vec<NodeAddress> = holders
            .iter()
            .map(|h| h.node)
            .filter(|n| bad.as_ref().is_none_or(|bad| !bad.contains(n)))
            .collect();
        let (list, lister) = self.piece_list(digest, size, &mut seeds).await?;
        let list = Arc::new(list);
        let (upload, file, had) = store.pull_file(digest, size).await?;
        let pull = Arc::new(Pull::new(list.clone(), file, Bitfield::new(list.count())));
        let here = if had {
            let here = Self::pieces_here(&pull).await;
            for n in here.ones() {
                pull.set_have(n);
            }
            here.count()
        } else {
            0
        };
        info!(
            "registry: fetching {} ({}, {} pieces, {here} here already) from node {}",
            short(digest),
            crate::human::bytes(size),
            list.count(),
            seeds
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", node ")
        );
        self.swarm.start_pull(digest, pull.clone());
        let _ending = Ending {
            swarm: &self.swarm,
            digest,
            pull: pull.clone(),
        };
        if let Err(e) = self.catalog.pulling(digest, size).await {
            // The pull goes on; only other pullers do not find this one.
            warn!(
                "registry: other pullers of {} will not find this node: {e}",
                short(digest)
            );
        }
        let started = Instant::now();
        let hashing = tokio::spawn(pull.clone().digest());
        let ran = self.run(digest, &pull, store, seeds).await;
        let tally = match ran {
            Ok(tally) => tally,
            Err(FetchError::Store(e @ StoreError::DiskFull { .. })) => {
                pull.end(false);
                self.not_pulling(digest).await;
                // What arrived is kept: the next pull goes on from there.
                let (have, _) = pull.state();
                let left: u64 = (0..list.count())
                    .filter(|n| !have.get(*n))
                    .map(|n| list.range(n).1)
                    .sum();
                warn!(
                    "registry: {e}: {} of {} still to fetch; the pull resumes when run again",
                    crate::human::bytes(left),
                    short(digest)
                );
                return Err(e.into());
            }
            Err(e) => {
                pull.end(false);
                self.not_pulling(digest).await;
                return Err(e);
            }
        };
        // A client streaming the blob gets its last piece once the digest matched.
        let hashed = hashing.await.ok().flatten();
        let mut took = started.elapsed();
        let committed = store
            .commit_hashed(&upload, digest, hashed, || {
                took = started.elapsed();
                pull.end(true);
            })
            .await;
        if committed.is_err() {
            pull.end(false);
        }
        let held = match &committed {
            Ok(_) => {
                self.swarm.remember(digest, list);
                self.catalog.hold(digest, size).await
            }
            Err(_) => Ok(()),
        };
        // A holder now (or not): no longer a puller.
        self.not_pulling(digest).await;
        held?;
        match committed {
            Ok(_) => {
                let mut from: Vec<(NodeAddress, usize)> = tally.per_node.into_iter().collect();
                from.sort();
                info!(
                    "registry: {} fetched in {:.1} s: {} from seeds, {} from other pullers ({})",
                    short(digest),
                    took.as_secs_f64(),
                    crate::human::bytes(tally.from_seeds),
                    crate::human::bytes(tally.from_pullers),
                    from.iter()
                        .map(|(node, n)| format!("node {node}: {n} pieces"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                Ok(())
            }
            Err(StoreError::DigestMismatch { actual, .. }) => {
                // Every piece matched the list, so the list was wrong: its seed lied.
                self.bad_lists
                    .lock()
                    .unwrap()
                    .entry(digest.clone())
                    .or_default()
                    .insert(lister);
                warn!(
                    "registry: the pieces of {} hash to {actual}, so node {lister}'s piece list is wrong; node {lister} is not asked for it again",
                    short(digest)
                );
                Err(FetchError::NoHolder(digest.to_string()))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// The order in which `me` asks the holders of `digest`: one of its own per puller and
/// blob, so pullers start at different holders and one holder is not asked by all.
pub fn order_holders(me: NodeAddress, holders: &mut [Holder], digest: &Digest) {
    holders.sort_by_key(|h| spread(me, h.node, digest));
}

fn spread(me: NodeAddress, holder: NodeAddress, digest: &Digest) -> [u8; 8] {
    use sha2::Digest as _;
    let h = sha2::Sha256::digest(format!("{me}\0{holder}\0{digest}"));
    h[..8].try_into().expect("8 bytes")
}

fn short(digest: &Digest) -> &str {
    &digest.hex()[..12]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pullers_start_at_different_holders() {
        let d = Digest::of(b"layer");
        let holders: Vec<NodeAddress> =
            (1..=4).map(|i| format!("0.{i}").parse().unwrap()).collect();
        let first: std::collections::BTreeSet<NodeAddress> = (10..=30)
            .map(|i| {
                let me: NodeAddress = format!("0.{i}").parse().unwrap();
                *holders.iter().min_by_key(|h| spread(me, **h, &d)).unwrap()
            })
            .collect();
        assert!(first.len() > 1, "every puller starts at {first:?}");
    }
}
