//! The image sync service (`arpanetd --sync`, run by arpanet-sync.service when something
//! connects to arpanet-sync.socket). It owns a librqbit session: no DHT, no local
//! discovery, and one tracker, on loopback, that answers from Consul KV (holders and
//! the nodes pulling the same image); peers listen on the overlay address only.
//! It answers on the control socket, which systemd passes in (LISTEN_FDS) or which it
//! binds itself when run by hand:
//!
//! - `GET /v1/images` — the cluster's images and their healthy holders;
//! - `POST /v1/push` `{"image": ...}` — export, make the torrent, publish, seed;
//! - `POST /v1/pulls` `{"image": ...}` — start a pull; `GET /v1/pulls/ID` — its progress;
//! - `POST /v1/seeds/ID` — seed an image this node holds (other nodes' pulls ask);
//! - `GET /v1/status` — what it is doing.
//!
//! It exits after `sync.idle_timeout` with no request, no pull and nothing uploaded; the
//! socket stays with systemd, so the next request starts it again.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use futures::TryStreamExt;
use librqbit::{
    AddTorrent, AddTorrentOptions, AddTorrentResponse, CreateTorrentOptions, ListenerOptions,
    ManagedTorrent, Session, SessionOptions, TorrentStatsState,
};
use serde::Serialize;
use tracing::{info, warn};

use super::short_id as short;
use super::{
    ClusterImage, ImageRecord, ImageRequest, KV_IMAGES, KV_PEERS, PeerEntry, SwarmPeer, Transfer,
    TransferState, TransferTally, TransferTotals, image_key, normal_tag, parse_peers,
    parse_records, peer_key, resolve, tarball_name,
};
use crate::addressing::NodeAddress;
use crate::config::Config;
use crate::consul::client::Consul;
use crate::docker::engine::Engine;
use crate::http::{ApiError, Json, json_response};
use crate::{paths, sd};

/// How often a torrent asks the loopback tracker (that is, Consul) for its swarm.
const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(2);

/// A pull that gets no byte for this long from the peers it has fails, naming them.
const STALL_LIMIT: Duration = Duration::from_secs(30);
/// How long the tracker answers from what it last read from Consul.
const TRACKER_VIEW_AGE: Duration = Duration::from_secs(1);

/// How often a pull whose tarball passed every piece check but not the image check
/// fetches the pieces a fresh check of the disk finds bad. librqbit (9.1) gives a stream's
/// next piece to another peer while the piece's hash is being checked, then writes that
/// peer's chunks although the piece is done: a bad seeder's bytes land in a verified
/// piece. Repairs fetch without a stream, so that cannot happen there.
const REPAIR_ROUNDS: u32 = 2;

struct SyncState {
    me: NodeAddress,
    peer_addr: SocketAddr,
    api_port: u16,
    docker_socket: PathBuf,
    images_dir: PathBuf,
    consul: Consul,
    session: Arc<Session>,
    transfers: Mutex<BTreeMap<u64, Transfer>>,
    next_transfer: AtomicU64,
    /// Requests or pulls under way; the service does not exit while any is.
    busy: AtomicU64,
    last_activity: Mutex<Instant>,
    /// Loopback ends of the TLS tunnels to other nodes' peer fronts: the peers librqbit
    /// is told of.
    forwarders: super::tunnel::Forwarders,
    /// For asking holders' arpanetd to wake their sync service (their cluster API,
    /// mutual TLS with this node's certificate).
    http: crate::identity::NodeClient,
    /// The announce URL of the tracker this service runs on loopback, which answers
    /// from Consul: every torrent learns of nodes that join its swarm while it runs.
    tracker: String,
    /// What the tracker last read. librqbit announces every torrent every
    /// `ANNOUNCE_INTERVAL`, so a node seeding many images would otherwise read the
    /// images and swarms from Consul many times a second. An async lock: announces
    /// that arrive during a read wait for it rather than each reading too.
    tracker_view: tokio::sync::Mutex<Option<Arc<TrackerView>>>,
    /// Bad image records already warned about (key and reason), so the tracker's many
    /// reads warn once.
    warned: Mutex<BTreeSet<(String, String)>>,
    /// Bytes sent and received, kept in `transfer_file` for arpanetd's `/metrics`: this
    /// process exits when idle, and another one serves the metrics.
    tally: Mutex<TransferTally>,
    transfer_file: PathBuf,
}

/// The cluster's swarms as the tracker answers from them.
struct TrackerView {
    read_at: Instant,
    /// Image ID (hex) and tarball size by info hash.
    images: BTreeMap<String, (String, u64)>,
    swarms: Vec<(String, SwarmPeer)>,
}

type Shared = Arc<SyncState>;

/// Runs the service until it has been idle for `sync.idle_timeout`.
pub async fn run(config: &Config) -> anyhow::Result<()> {
    let listener = control_listener(&paths::sync_socket(&config.paths))?;
    let images_dir = paths::images_dir(&config.paths);
    std::fs::create_dir_all(&images_dir)
        .with_context(|| format!("create {}", images_dir.display()))?;
    let peer_addr = SocketAddr::from((config.node.address.overlay_ip(), config.sync.peer_port));
    // librqbit speaks the peer wire in clear: it listens on loopback, behind the TLS
    // front on the peer address (see `tunnel`).
    let session_addr = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, config.sync.peer_port));
    let tls = crate::identity::NodeTls::from_config(config);
    tls.follow_revocations();
    let tracker_listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .await
        .context("listen for the session's tracker on loopback")?;
    let tracker = format!("http://{}/announce", tracker_listener.local_addr()?);
    let session = Session::new_with_opts(
        images_dir.clone(),
        SessionOptions {
            dht: None,
            // Only the loopback tracker each torrent names; the session has no others.
            disable_trackers: false,
            disable_local_service_discovery: true,
            persistence: None,
            fastresume: false,
            ipv4_only: true,
            listen: Some(ListenerOptions {
                listen_addr: session_addr,
                ipv4_only: true,
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await
    .with_context(|| format!("start the BitTorrent session on {session_addr}"))?;
    // Without an identity no node could be told from a stranger: no front at all.
    match tls.current() {
        Ok(_) => {
            let front = tokio::net::TcpListener::bind(peer_addr)
                .await
                .with_context(|| format!("listen for peers on {peer_addr} (is the overlay up?)"))?;
            super::tunnel::spawn_front(front, session_addr, tls.clone());
            info!(
                "image sync: peers on {peer_addr} (mutual TLS), tarballs in {}",
                images_dir.display()
            );
        }
        Err(e) => warn!("image sync: no peer listens on {peer_addr}: {e}"),
    }
    let state: Shared = Arc::new(SyncState {
        me: config.node.address,
        peer_addr,
        api_port: config.api.port,
        docker_socket: config.docker.socket.clone(),
        images_dir,
        consul: Consul::for_node(config),
        session,
        transfers: Mutex::new(BTreeMap::new()),
        next_transfer: AtomicU64::new(1),
        busy: AtomicU64::new(0),
        last_activity: Mutex::new(Instant::now()),
        forwarders: super::tunnel::Forwarders::new(tls.clone()),
        http: crate::identity::NodeClient::new(
            tls,
            Duration::from_secs(3),
            Duration::from_secs(30),
        ),
        tracker,
        tracker_view: tokio::sync::Mutex::new(None),
        warned: Mutex::new(BTreeSet::new()),
        tally: Mutex::new(TransferTally::new(
            TransferTotals::load(&paths::image_transfer(&config.paths)).unwrap_or_default(),
        )),
        transfer_file: paths::image_transfer(&config.paths),
    });
    let app = router(state.clone());
    let tracker_app = Router::new()
        .route("/announce", get(announce))
        .with_state(state.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(tracker_listener, tracker_app).await {
            warn!("image sync: the loopback tracker stopped: {e}");
        }
    });
    sd::notify(&[sd::NotifyState::Ready]);
    let idle = config.sync.idle_timeout;
    tokio::select! {
        r = axum::serve(listener, app) => r.context("serve the sync control socket")?,
        () = wait_until_idle(&state, idle) => {
            info!("image sync: idle for {}, exiting", humantime::format_duration(idle));
        }
    }
    state.record_transfers();
    state.session.stop().await;
    Ok(())
}

/// The control socket: systemd's (socket activation) or one bound here (0600).
fn control_listener(path: &FsPath) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(listener) = sd::listen_unix().context("take the socket systemd passed")? {
        info!("image sync: control socket from systemd");
        return Ok(listener);
    }
    let listener = crate::http::bind_unix(path)?;
    info!("image sync: control socket {}", path.display());
    Ok(listener)
}

async fn wait_until_idle(state: &SyncState, idle: Duration) {
    let mut uploaded = 0u64;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        state.record_transfers();
        let now_uploaded = state
            .session
            .with_torrents(|torrents| torrents.map(|(_, t)| t.stats().uploaded_bytes).sum::<u64>());
        if now_uploaded != uploaded || state.busy.load(Ordering::SeqCst) > 0 {
            uploaded = now_uploaded;
            state.touch();
            continue;
        }
        if state.last_activity.lock().unwrap().elapsed() >= idle {
            return;
        }
    }
}

impl SyncState {
    fn touch(&self) {
        *self.last_activity.lock().unwrap() = Instant::now();
    }

    /// Adds what the torrents moved since the last reading to the totals on disk.
    fn record_transfers(&self) {
        let readings: Vec<(String, u64, u64)> = self.session.with_torrents(|torrents| {
            torrents
                .filter_map(|(_, t)| {
                    let stats = t.stats();
                    let live = stats.live.as_ref()?;
                    Some((
                        t.info_hash().as_string(),
                        live.snapshot.uploaded_bytes,
                        live.snapshot.fetched_bytes,
                    ))
                })
                .collect()
        });
        let mut tally = self.tally.lock().unwrap();
        if tally.observe(readings)
            && let Err(e) = serde_json::to_string(&tally.totals)
                .map_err(anyhow::Error::from)
                .and_then(|t| crate::files::write_atomically(&self.transfer_file, &t))
        {
            warn!("image sync: cannot keep the transfer totals: {e:#}");
        }
    }
}

/// Held while a request or pull runs, so the service does not exit under it.
struct Busy(Shared);

impl Busy {
    fn new(state: &Shared) -> Self {
        state.busy.fetch_add(1, Ordering::SeqCst);
        state.touch();
        Self(state.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Errors are the cluster API's (`{"error": "..."}`); Docker, Consul or the disk
/// failing is a 503 ([`ApiError::backend`]), as the API answers.
type SyncResult = Result<Response, ApiError>;

fn router(state: Shared) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/images", get(list_images))
        .route("/v1/push", post(push))
        .route("/v1/pulls", post(start_pull))
        .route("/v1/pulls/{id}", get(get_pull))
        .route("/v1/seeds/{id}", post(seed))
        .fallback(|| async {
            ApiError(
                StatusCode::NOT_FOUND,
                "no such endpoint in the sync service".into(),
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            |State(s): State<Shared>, req: axum::extract::Request, next: axum::middleware::Next| async move {
                let _busy = Busy::new(&s);
                next.run(req).await
            },
        ))
        .with_state(state)
}

fn image_request(req: ImageRequest) -> Result<ImageRequest, ApiError> {
    if req.start_at.is_some_and(|f| !(0.0..=1.0).contains(&f)) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "start_at: must be a fraction from 0 to 1".into(),
        ));
    }
    if req.image.trim().is_empty() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "image: must name an image".into(),
        ));
    }
    Ok(req)
}

#[derive(Serialize)]
struct Status {
    node: String,
    peer: SocketAddr,
    torrents: Vec<TorrentRow>,
    transfers: Vec<Transfer>,
}

/// A torrent in the session: the tarball's name, whether it is whole, bytes sent.
#[derive(Serialize)]
struct TorrentRow {
    name: String,
    complete: bool,
    uploaded_bytes: u64,
}

async fn status(State(s): State<Shared>) -> SyncResult {
    let torrents = s.session.with_torrents(|torrents| {
        torrents
            .map(|(_, t)| {
                let stats = t.stats();
                TorrentRow {
                    name: t.name().unwrap_or_default(),
                    complete: stats.finished,
                    uploaded_bytes: stats.uploaded_bytes,
                }
            })
            .collect()
    });
    let transfers = s.transfers.lock().unwrap().values().cloned().collect();
    Ok(json_response(
        StatusCode::OK,
        &Status {
            node: s.me.to_string(),
            peer: s.peer_addr,
            torrents,
            transfers,
        },
    ))
}

impl SyncState {
    /// The image records in KV that can be believed (see [`parse_records`]); each bad
    /// one is warned about once, naming its key and field.
    async fn records(&self) -> anyhow::Result<Vec<ImageRecord>> {
        let (entries, _) = self
            .consul
            .kv_list(KV_IMAGES, None, Duration::ZERO)
            .await
            .context("read the cluster's images from Consul")?;
        let (records, bad) = parse_records(&entries);
        let mut warned = self.warned.lock().unwrap();
        for (key, why) in bad {
            if warned.insert((key.clone(), why.clone())) {
                warn!("image record {key} in Consul KV ignored: {why}");
            }
        }
        Ok(records)
    }

    /// Every image's swarm, keeping the nodes Consul lists as healthy (and this one).
    async fn swarms(&self) -> anyhow::Result<Vec<(String, SwarmPeer)>> {
        let (entries, _) = self
            .consul
            .kv_list(KV_PEERS, None, Duration::ZERO)
            .await
            .context("read the image swarms from Consul")?;
        let healthy: BTreeSet<NodeAddress> = crate::consul::node::read_catalog(&self.consul)
            .await
            .context("list the cluster's nodes")?
            .healthy()
            .map(|n| n.address)
            .chain([self.me])
            .collect();
        Ok(parse_peers(&entries)
            .into_iter()
            .filter(|(_, p)| healthy.contains(&p.node))
            .collect())
    }

    /// The tracker's view, read again once it is `TRACKER_VIEW_AGE` old.
    async fn tracker_view(&self) -> anyhow::Result<Arc<TrackerView>> {
        let mut cached = self.tracker_view.lock().await;
        if let Some(view) = cached.as_ref()
            && view.read_at.elapsed() < TRACKER_VIEW_AGE
        {
            return Ok(view.clone());
        }
        let images = self
            .records()
            .await?
            .into_iter()
            .map(|r| (r.info_hash.clone(), (r.hex().to_string(), r.size)))
            .collect();
        let view = Arc::new(TrackerView {
            read_at: Instant::now(),
            images,
            swarms: self.swarms().await?,
        });
        *cached = Some(view.clone());
        Ok(view)
    }

    async fn announce(&self, id: &str, complete: bool) -> anyhow::Result<()> {
        let entry = PeerEntry {
            peer: self.peer_addr,
            complete,
        };
        self.consul
            .kv_put(&peer_key(id, self.me), serde_json::to_vec(&entry)?)
            .await
            .context("record this node in the image's swarm")
    }

    fn tarball(&self, id: &str) -> PathBuf {
        self.images_dir.join(tarball_name(id))
    }

    /// Adds the torrent (seeding what is on disk, fetching what is not). A torrent the
    /// session has already is returned as it is.
    async fn add(
        &self,
        record: &ImageRecord,
        peers: Vec<SocketAddr>,
    ) -> anyhow::Result<Arc<ManagedTorrent>> {
        self.add_with(record, peers, false).await
    }

    /// `paused`: added after checking what is on disk, but not started (a new torrent).
    async fn add_with(
        &self,
        record: &ImageRecord,
        peers: Vec<SocketAddr>,
        paused: bool,
    ) -> anyhow::Result<Arc<ManagedTorrent>> {
        let torrent = base64::engine::general_purpose::STANDARD
            .decode(&record.torrent)
            .context("the image's torrent in Consul is not base64")?;
        // A torrent of an earlier push of the image (the tarball made again, with more
        // tags) would share the file with this one: dropped, the file kept.
        let name = tarball_name(&record.id);
        let stale: Vec<librqbit::api::TorrentIdOrHash> = self.session.with_torrents(|ts| {
            ts.filter(|(_, t)| {
                t.name().as_deref() == Some(name.as_str())
                    && t.info_hash().as_string() != record.info_hash
            })
            .map(|(id, _)| id.into())
            .collect()
        });
        for id in stale {
            if let Err(e) = self.session.delete(id, false).await {
                warn!(
                    "image sync: drop an earlier torrent of {}: {e:#}",
                    short(&record.id)
                );
            }
        }
        let added = self
            .session
            .add_torrent(
                AddTorrent::from_bytes(torrent),
                Some(AddTorrentOptions {
                    paused,
                    overwrite: true,
                    output_folder: Some(self.images_dir.display().to_string()),
                    initial_peers: Some(peers),
                    trackers: Some(vec![self.tracker.clone()]),
                    force_tracker_interval: Some(ANNOUNCE_INTERVAL),
                    ..Default::default()
                }),
            )
            .await
            .context("add the image's torrent")?;
        match added {
            AddTorrentResponse::Added(_, handle)
            | AddTorrentResponse::AlreadyManaged(_, handle) => Ok(handle),
            AddTorrentResponse::ListOnly(_) => bail!("the torrent was only listed"),
        }
    }
}

/// The tracker librqbit asks: the image's swarm from Consul KV (healthy nodes, this one
/// left out), so nodes that start pulling later are found by the ones already at it.
async fn announce(
    State(s): State<Shared>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let query = query.unwrap_or_default();
    let peers = async {
        let hash = super::announced_info_hash(&query)?;
        let view = s.tracker_view().await.ok()?;
        let (image, size) = view.images.get(&hash)?;
        // No `left`: treated as empty-handed, which still finds the holders.
        let left = super::announced_left(&query).unwrap_or(*size);
        Some(super::tracker_peers(&view.swarms, image, *size, s.me, left))
    }
    .await
    .unwrap_or_default();
    let peers = s.forwarders.locals(&peers);
    super::tracker_response(ANNOUNCE_INTERVAL.as_secs(), &peers).into_response()
}

async fn list_images(State(s): State<Shared>) -> SyncResult {
    let records = s.records().await.map_err(ApiError::backend)?;
    let swarms = s.swarms().await.map_err(ApiError::backend)?;
    let images: Vec<ClusterImage> = records
        .iter()
        .map(|r| ClusterImage {
            id: r.id.clone(),
            tags: r.tags.clone(),
            size: r.size,
            holders: swarms
                .iter()
                .filter(|(hex, p)| hex == r.hex() && p.complete)
                .map(|(_, p)| p.node.to_string())
                .collect(),
        })
        .collect();
    Ok(json_response(StatusCode::OK, &images))
}

async fn push(State(s): State<Shared>, Json(req): Json<ImageRequest>) -> SyncResult {
    let req = image_request(req)?;
    let record = push_image(&s, &req.image).await?;
    Ok(json_response(
        StatusCode::OK,
        &ClusterImage {
            id: record.id.clone(),
            tags: record.tags.clone(),
            size: record.size,
            holders: if s.tarball(&record.id).exists() {
                vec![s.me.to_string()]
            } else {
                Vec::new()
            },
        },
    ))
}

async fn push_image(s: &SyncState, image: &str) -> Result<ImageRecord, ApiError> {
    let engine = Engine::connect(&s.docker_socket)
        .await
        .map_err(ApiError::backend)?;
    let inspect = engine
        .inspect_image(image)
        .await
        .map_err(ApiError::backend)?;
    let Some(inspect) = inspect else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no image `{image}` in this node's Docker (`docker images` lists them)"),
        ));
    };
    let id = inspect.id.clone().unwrap_or_default();
    super::image_id(&id)
        .map_err(|e| ApiError::backend(anyhow!("Docker answered an odd ID: {e}")))?;
    let mut tags: Vec<String> = inspect.repo_tags.clone().unwrap_or_default();
    let existing = s
        .records()
        .await
        .map_err(ApiError::backend)?
        .into_iter()
        .find(|r| r.id == id);
    let path = s.tarball(&id);
    // Pushed before (here or elsewhere): the torrent stays as it is, since the holders
    // seed that one; only new tags are published, and a holder seeds again. Unless this
    // node's tarball lacks some of the image's tags here (it was made before a tag was
    // added, or before tarballs carried tags): pulls apply only the tags a tarball
    // carries, so it is exported again, with a torrent of its own.
    let holds = path.exists();
    let stale = if existing.is_some() && holds {
        let p = path.clone();
        let carried = tokio::task::spawn_blocking(move || super::tarball::repo_tags(&p))
            .await
            .map_err(ApiError::backend)?
            .unwrap_or_default();
        tags.iter().any(|t| !carries(&carried, t))
    } else {
        false
    };
    if stale && let Some(old) = &existing {
        forget(s, old, false).await;
    }
    let record = match existing.filter(|_| !stale) {
        Some(mut record) => {
            for t in record.tags.drain(..) {
                if !tags.contains(&t) {
                    tags.push(t);
                }
            }
            record.tags = tags;
            if holds {
                s.add(&record, Vec::new())
                    .await
                    .map_err(ApiError::backend)?;
            }
            record
        }
        None => {
            info!("image sync: exporting {image} ({})", short(&id));
            std::fs::create_dir_all(&s.images_dir).map_err(ApiError::backend)?;
            let part = path.with_extension("tar.part");
            // Under its tags, so the tarball's manifest carries them (see `tag`).
            let names: Vec<&str> = if tags.is_empty() {
                vec![id.as_str()]
            } else {
                tags.iter().map(String::as_str).collect()
            };
            if let Err(e) = export(&engine, &names, &part).await {
                let _ = std::fs::remove_file(&part);
                return Err(disk_error(e, &s.images_dir));
            }
            std::fs::rename(&part, &path).map_err(ApiError::backend)?;
            let size = std::fs::metadata(&path).map_err(ApiError::backend)?.len();
            let piece_length = super::piece_length(size);
            let (made, _handle) = s
                .session
                .create_and_serve_torrent(
                    &path,
                    CreateTorrentOptions {
                        name: None,
                        trackers: Vec::new(),
                        piece_length: Some(piece_length),
                    },
                )
                .await
                .map_err(|e| ApiError::backend(anyhow!("make the torrent: {e}")))?;
            let torrent = made.as_bytes().map_err(ApiError::backend)?;
            ImageRecord {
                id: id.clone(),
                tags,
                size,
                piece_length,
                info_hash: made.info_hash().as_string(),
                torrent: base64::engine::general_purpose::STANDARD.encode(&torrent),
                pushed_by: s.me.to_string(),
            }
        }
    };
    s.consul
        .kv_put(
            &image_key(&id),
            serde_json::to_vec(&record).expect("serializable"),
        )
        .await
        .map_err(ApiError::backend)?;
    if path.exists() {
        s.announce(&id, true).await.map_err(ApiError::backend)?;
    }
    info!(
        "image sync: published {image} ({}, {} bytes)",
        short(&id),
        record.size
    );
    Ok(record)
}

/// `docker save NAMES...` of one image into `path`.
async fn export(engine: &Engine, names: &[&str], path: &FsPath) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut file = tokio::fs::File::create(path)
        .await
        .with_context(|| format!("create {}", path.display()))?;
    let mut stream = engine.export_image(names);
    while let Some(chunk) = stream
        .try_next()
        .await
        .context("export the image from Docker")?
    {
        file.write_all(&chunk)
            .await
            .with_context(|| format!("write {}", path.display()))?;
    }
    file.flush().await?;
    file.sync_all().await?;
    Ok(())
}

/// A full disk is its own one-line error; anything else keeps its chain.
fn disk_error(e: anyhow::Error, dir: &FsPath) -> ApiError {
    let full = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(nix::libc::ENOSPC))
    });
    if full {
        ApiError(
            StatusCode::INSUFFICIENT_STORAGE,
            format!("{} is full", dir.display()),
        )
    } else {
        ApiError::backend(e)
    }
}

async fn seed(State(s): State<Shared>, Path(id): Path<String>) -> SyncResult {
    let records = s.records().await.map_err(ApiError::backend)?;
    let record = records
        .iter()
        .find(|r| r.hex() == super::id_hex(&id))
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no cluster image {id}")))?;
    if !s.tarball(&record.id).exists() {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("node {} holds no tarball of {}", s.me, short(&record.id)),
        ));
    }
    let torrent = s.add(record, Vec::new()).await.map_err(ApiError::backend)?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "node": s.me.to_string(), "seeding": torrent.stats().finished }),
    ))
}

async fn get_pull(State(s): State<Shared>, Path(id): Path<u64>) -> SyncResult {
    s.transfers
        .lock()
        .unwrap()
        .get(&id)
        .map(|t| json_response(StatusCode::OK, t))
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no pull {id} here")))
}

async fn start_pull(State(s): State<Shared>, Json(req): Json<ImageRequest>) -> SyncResult {
    let req = image_request(req)?;
    let records = s.records().await.map_err(ApiError::backend)?;
    let record = resolve(&records, &req.image)
        .map_err(|e| ApiError(StatusCode::NOT_FOUND, e.to_string()))?
        .clone();
    // Found by its tag (resolve tries tags first): the image must carry that tag itself.
    let wanted = Some(normal_tag(&req.image)).filter(|t| record.tags.contains(t));
    let path = s.tarball(&record.id);
    // Blocks on disk, not the length: a pull that stopped leaves a sparse file.
    let have = std::fs::metadata(&path)
        .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
        .unwrap_or(0);
    let need = record.size.saturating_sub(have);
    // Made again if someone cleaned it up while the service ran.
    std::fs::create_dir_all(&s.images_dir).map_err(ApiError::backend)?;
    let free = free_bytes(&s.images_dir).map_err(ApiError::backend)?;
    // The tarball, then Docker's copy of the layers (usually on the same disk).
    if free < need {
        return Err(ApiError(
            StatusCode::INSUFFICIENT_STORAGE,
            format!(
                "not enough space in {} to pull {}: it needs {}, {} is free",
                s.images_dir.display(),
                req.image,
                crate::human::bytes(need),
                crate::human::bytes(free)
            ),
        ));
    }
    let id = s.next_transfer.fetch_add(1, Ordering::SeqCst);
    let transfer = Transfer {
        id,
        image: req.image.clone(),
        image_id: record.id.clone(),
        node: s.me.to_string(),
        state: TransferState::Checking,
        done_bytes: 0,
        resumed_bytes: 0,
        fetched_bytes: 0,
        total_bytes: record.size,
        download_rate: 0.0,
        peers: 0,
        eta_secs: None,
        error: None,
    };
    s.transfers.lock().unwrap().insert(id, transfer.clone());
    let busy = Busy::new(&s);
    let state = s.clone();
    tokio::spawn(async move {
        let _busy = busy;
        let result = pull(&state, id, &record, wanted.as_deref(), req.start_at).await;
        let mut transfers = state.transfers.lock().unwrap();
        let t = transfers.get_mut(&id).expect("transfers are kept");
        match result {
            Ok(()) => {
                t.state = TransferState::Done;
                t.done_bytes = t.total_bytes;
                t.eta_secs = None;
                info!("image sync: pulled {} ({})", t.image, short(&t.image_id));
            }
            Err(e) => {
                t.state = TransferState::Failed;
                t.error = Some(format!("{e:#}"));
                warn!("image sync: pull of {} failed: {e:#}", t.image);
            }
        }
    });
    Ok(json_response(StatusCode::ACCEPTED, &transfer))
}

impl SyncState {
    fn update(&self, id: u64, f: impl FnOnce(&mut Transfer)) {
        if let Some(t) = self.transfers.lock().unwrap().get_mut(&id) {
            f(t);
        }
    }
}

/// Pulls `record`'s image; `wanted` is the tag the request named it by, which the
/// image's own tarball must carry.
async fn pull(
    s: &Shared,
    transfer: u64,
    record: &ImageRecord,
    wanted: Option<&str>,
    start_at: Option<f64>,
) -> anyhow::Result<()> {
    let engine = Engine::connect(&s.docker_socket).await?;
    let path = s.tarball(&record.id);
    let in_docker = engine.image_id(&record.id).await?.is_some();
    if in_docker {
        // Docker has it (pushed or pulled here before, or from a registry). Its tags
        // come from the record's tarball: the one here when it is whole.
        if path.exists() && seed_if_whole(s, record).await? {
            let p = path.clone();
            let carried = tokio::task::spawn_blocking(move || super::tarball::repo_tags(&p))
                .await?
                .unwrap_or_default();
            return tag(&engine, record, &carried, wanted).await;
        }
        if wanted.is_none() {
            // Asked for by ID, which Docker has: nothing to fetch, no tag to learn.
            return Ok(());
        }
        // Asked for by a tag Docker lacks: only the record's tarball can say whether
        // the image carries it (a tarball from an earlier push, missing a tag added
        // since, is only fetched where it differs).
    }
    let started = Instant::now();
    let mut repairs = 0;
    let (carried, downloaded) = loop {
        let fetched = download(s, transfer, record, start_at, repairs > 0).await?;
        let downloaded = started.elapsed();
        // Out of the session before it is checked and loaded: librqbit writes a chunk
        // that arrives for a piece it verified meanwhile (see `REPAIR_ROUNDS`), so the
        // file must have no writer while it is read.
        forget(s, record, false).await;
        s.update(transfer, |t| t.state = TransferState::Verifying);
        let (check_path, id) = (path.clone(), record.id.clone());
        let verified =
            tokio::task::spawn_blocking(move || super::tarball::verify(&check_path, &id)).await?;
        match verified {
            Ok(tags) => break (tags, downloaded),
            // Bytes written after their piece was verified: the torrent's check of the
            // disk finds those pieces, and they are fetched again.
            Err(e) if fetched && repairs < REPAIR_ROUNDS => {
                repairs += 1;
                warn!(
                    "image sync: the download of {} does not match the image ({e:#}); checking its pieces again",
                    short(&record.id)
                );
            }
            Err(e) => {
                // Never loaded, and not kept: the next pull fetches it again.
                forget(s, record, true).await;
                bail!(
                    "the downloaded image does not match {}: {e:#}; nothing was loaded",
                    short(&record.id)
                );
            }
        }
    };
    if let Some(w) = wanted
        && !carries(&carried, w)
    {
        // The image is intact but is not `w`: a KV writer's claim. Not loaded, not kept.
        forget(s, record, true).await;
        bail!("{}; nothing was loaded", not_carried(record, w));
    }
    let checked = started.elapsed();
    s.update(transfer, |t| t.state = TransferState::Loading);
    if !in_docker {
        engine
            .load(&path)
            .await
            .map_err(|e| disk_error_any(e.into(), &s.images_dir))?;
    }
    if engine.image_id(&record.id).await?.is_none() {
        bail!(
            "docker load finished but Docker has no image {}",
            short(&record.id)
        );
    }
    tag(&engine, record, &carried, wanted).await?;
    // Seeded again, from the checked file.
    s.add(record, Vec::new()).await?;
    s.announce(&record.id, true).await?;
    info!(
        "image sync: {} downloaded in {:.1} s, checked in {:.1} s, loaded in {:.1} s",
        short(&record.id),
        downloaded.as_secs_f64(),
        (checked - downloaded).as_secs_f64(),
        (started.elapsed() - checked).as_secs_f64()
    );
    Ok(())
}

/// Seeds the tarball on disk once librqbit's check finds it whole, and says so in KV.
/// Returns whether the tarball is whole.
async fn seed_if_whole(s: &SyncState, record: &ImageRecord) -> anyhow::Result<bool> {
    let torrent = s.add(record, Vec::new()).await?;
    while matches!(
        torrent.stats().state,
        TorrentStatsState::Initializing { .. }
    ) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let whole = torrent.stats().finished;
    if whole {
        s.announce(&record.id, true).await?;
    }
    Ok(whole)
}

/// Tags the image with those of the record's tags that its tarball carries (`carried`,
/// its manifest's RepoTags); the others are a KV writer's word alone, and a tag like
/// `nginx:1` would make every node run whatever it names in place of the registry's.
/// `wanted`, the tag asked for, must be carried or already be the image's in Docker.
async fn tag(
    engine: &Engine,
    record: &ImageRecord,
    carried: &[String],
    wanted: Option<&str>,
) -> anyhow::Result<()> {
    for t in record.tags.iter().filter(|t| carries(carried, t)) {
        engine.tag(&record.id, t).await?;
    }
    if let Some(w) = wanted
        && !carries(carried, w)
        && engine.image_id(w).await?.as_deref() != Some(record.id.as_str())
    {
        bail!("{}", not_carried(record, w));
    }
    Ok(())
}

fn carries(carried: &[String], tag: &str) -> bool {
    let tag = normal_tag(tag);
    carried.iter().any(|c| normal_tag(c) == tag)
}

fn not_carried(record: &ImageRecord, tag: &str) -> String {
    format!(
        "the cluster's record of {} tags it `{tag}`, but the image's own tarball does not; the tag is not applied",
        short(&record.id)
    )
}

fn disk_error_any(e: anyhow::Error, dir: &FsPath) -> anyhow::Error {
    let ApiError(status, message) = disk_error(e, dir);
    if status == StatusCode::INSUFFICIENT_STORAGE {
        anyhow!("{message}; Docker could not store the image")
    } else {
        anyhow!(message)
    }
}

/// Drops the torrent from the session and, with `delete`, the tarball.
async fn forget(s: &SyncState, record: &ImageRecord, delete: bool) {
    // What it moved since the last reading goes with it otherwise.
    s.record_transfers();
    if let Ok(hash) = record.info_hash.parse::<librqbit::dht::Id20>()
        && let Err(e) = s.session.delete(hash.into(), delete).await
    {
        warn!(
            "image sync: drop the torrent of {}: {e:#}",
            short(&record.id)
        );
    }
    if delete {
        let _ = std::fs::remove_file(s.tarball(&record.id));
    }
}

/// Fetches the tarball from the image's swarm, reporting progress into the transfer.
/// `repair`: a later round of the same pull, after the image check failed: it fetches
/// what the check of the disk finds bad, unsteered. Returns whether anything was fetched.
async fn download(
    s: &Shared,
    transfer: u64,
    record: &ImageRecord,
    start_at: Option<f64>,
    repair: bool,
) -> anyhow::Result<bool> {
    let swarm: Vec<SwarmPeer> = s
        .swarms()
        .await?
        .into_iter()
        .filter(|(hex, p)| hex == record.hex() && p.node != s.me)
        .map(|(_, p)| p)
        .collect();
    if !swarm.iter().any(|p| p.complete) {
        bail!(
            "no node that holds {} is up (`arpanet image ls` shows the holders)",
            short(&record.id)
        );
    }
    // Pullers list themselves too, so nodes pulling at once trade pieces with each other.
    s.announce(&record.id, false).await?;
    wake_holders(s, record, &swarm).await;
    // Holders first; other pullers come from the loopback tracker (see `announce`).
    let peers: Vec<SocketAddr> = swarm
        .iter()
        .filter(|p| p.complete)
        .map(|p| p.peer)
        .collect();
    // Paused until the check of the disk is done, so what a resumed pull already had
    // is known exactly before any byte arrives.
    let torrent = s
        .add_with(record, s.forwarders.locals(&peers), true)
        .await?;
    while matches!(
        torrent.stats().state,
        TorrentStatsState::Initializing { .. }
    ) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let checked = torrent.stats();
    let on_disk = checked.progress_bytes;
    let needed = on_disk < checked.total_bytes;
    // What earlier rounds of this pull fetched counts too; what it resumed from is the
    // first round's.
    let mut fetched_before = 0;
    s.update(transfer, |t| {
        if !repair {
            t.resumed_bytes = on_disk;
        }
        fetched_before = t.fetched_bytes;
    });
    if matches!(torrent.stats().state, TorrentStatsState::Paused) {
        s.session
            .unpause(&torrent)
            .await
            .context("start the image's torrent")?;
    }
    // No steering in a repair: a stream is what lets a verified piece be fetched
    // again (see `REPAIR_ROUNDS`).
    let _rotation = (!repair).then(|| {
        AbortOnDrop(tokio::spawn(fetch_from(
            torrent.clone(),
            start_offset(record, s.me, start_at),
        )))
    });
    let mut last_progress = (0u64, Instant::now());
    loop {
        let stats = torrent.stats();
        if let Some(e) = &stats.error {
            forget(s, record, false).await;
            // librqbit reports a failed write as text; the disk says whether it filled.
            // Progress as last seen: a failed torrent reports none.
            let left = record
                .size
                .saturating_sub(stats.progress_bytes.max(last_progress.0));
            if let Ok(free) = free_bytes(&s.images_dir)
                && free < left
            {
                bail!(
                    "{} is full: {} of {} still to fetch, {} free; the pull resumes when run again",
                    s.images_dir.display(),
                    crate::human::bytes(left),
                    short(&record.id),
                    crate::human::bytes(free)
                );
            }
            bail!("transfer failed: {e}");
        }
        let live = stats.live.as_ref();
        let rate = live
            .map(|l| l.download_speed.as_bytes() as f64)
            .unwrap_or(0.0);
        let left = stats.total_bytes.saturating_sub(stats.progress_bytes);
        s.update(transfer, |t| {
            t.state = match stats.state {
                TorrentStatsState::Initializing { .. } => TransferState::Checking,
                _ => TransferState::Downloading,
            };
            t.done_bytes = stats.progress_bytes;
            t.total_bytes = stats.total_bytes;
            t.download_rate = rate;
            t.peers = live
                .map(|l| l.snapshot.peer_stats.live as usize)
                .unwrap_or(0);
            // From peers, in this pull: a resumed pull fetches only what it lacked.
            if let Some(l) = live {
                t.fetched_bytes = t
                    .fetched_bytes
                    .max(fetched_before + l.snapshot.fetched_bytes);
            }
            t.eta_secs = (rate > 0.0).then(|| (left as f64 / rate).ceil() as u64);
        });
        if stats.finished {
            return Ok(needed);
        }
        if stats.progress_bytes != last_progress.0 {
            last_progress = (stats.progress_bytes, Instant::now());
        } else if last_progress.1.elapsed() > STALL_LIMIT
            && !matches!(stats.state, TorrentStatsState::Initializing { .. })
        {
            forget(s, record, false).await;
            let peers: Vec<String> = peers.iter().map(ToString::to_string).collect();
            bail!(
                "no data for {} s from the swarm ({}); the pull can be run again and resumes",
                STALL_LIMIT.as_secs(),
                peers.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// librqbit fetches pieces in file order, so nodes pulling at once would all want the
/// same piece from the holder at the same moment and have nothing to trade. A stream
/// read from a point of its own makes each node fetch that part first (librqbit puts a
/// stream's next pieces ahead of the rest); the rest follows in order. The bytes read
/// are dropped: the stream is only there to steer.
async fn fetch_from(torrent: Arc<ManagedTorrent>, offset: u64) {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let Ok(mut stream) = torrent.stream(0).await else {
        return;
    };
    if stream.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
        return;
    }
    let mut sink = vec![0u8; 1 << 20];
    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
}

/// Where this node starts fetching `record`, on a piece boundary: at `start_at` of the
/// image when given, else at a point that depends on the node and the image, so nodes
/// pulling the same image start apart.
fn start_offset(record: &ImageRecord, me: NodeAddress, start_at: Option<f64>) -> u64 {
    use sha2::Digest;
    let pieces = record
        .size
        .div_ceil(record.piece_length.max(1) as u64)
        .max(1);
    let piece = match start_at {
        Some(f) => ((f * pieces as f64) as u64).min(pieces - 1),
        None => {
            let digest = sha2::Sha256::digest(format!("{}\0{me}", record.info_hash));
            u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")) % pieces
        }
    };
    piece * record.piece_length as u64
}

/// Stops a helper task when the pull it helps ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Asks every holder's arpanetd to wake its sync service (socket activation) and seed.
async fn wake_holders(s: &SyncState, record: &ImageRecord, swarm: &[SwarmPeer]) {
    let http = match s.http.get() {
        Ok(c) => c,
        Err(e) => return warn!("image sync: cannot ask holders to seed: {e}"),
    };
    let http = &http;
    let asks = swarm.iter().filter(|p| p.complete).map(|p| async move {
        let url = format!(
            "https://{}:{}/v1/sync/seeds/{}",
            p.node.overlay_ip(),
            s.api_port,
            record.hex()
        );
        match http.post(&url).send().await {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => {
                let status = r.status();
                let body = r.bytes().await.unwrap_or_default();
                warn!(
                    "image sync: node {} will not seed {}: {}",
                    p.node,
                    short(&record.id),
                    crate::http::error_text(status, &body)
                )
            }
            Err(e) => warn!(
                "image sync: cannot ask node {} to seed: {}",
                p.node,
                crate::http::request_error(e)
            ),
        }
    });
    futures::future::join_all(asks).await;
}

fn free_bytes(dir: &FsPath) -> anyhow::Result<u64> {
    let st =
        nix::sys::statvfs::statvfs(dir).with_context(|| format!("statvfs {}", dir.display()))?;
    Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
}
