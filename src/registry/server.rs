//! Where the node registry listens: `127.0.0.1:PORT` for this node's root (dockerd,
//! `skopeo` run by root), and, for other nodes, its side of the blob swarms on the
//! cluster API (mutual TLS, node certificates; see [`peer_routes`]).
//!
//! Loopback is not a boundary of its own: every local user can connect to it, and one
//! who could push `app:v2` would have it run as root on every node. So a connection is
//! answered only when the socket on the other end belongs to uid 0, which the kernel
//! says in `/proc/net/tcp`.

use std::net::SocketAddr;
use std::path::Path;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path as UrlPath, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use tracing::{info, warn};

use super::Registry;
use super::spec::{Digest, ErrorCode, RegistryError};
use super::store::StoreError;
use super::swarm::{Swarm, SwarmError};

/// The local user on the other end of a loopback connection.
#[derive(Debug, Clone, Copy)]
pub struct LocalPeer {
    pub addr: SocketAddr,
    pub uid: Option<u32>,
}

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>>
    for LocalPeer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        let addr = *stream.remote_addr();
        let uid = stream
            .io()
            .local_addr()
            .ok()
            .and_then(|local| socket_uid(Path::new("/proc/net/tcp"), addr, local));
        Self { addr, uid }
    }
}

/// The uid owning the TCP socket `from` -> `to` in this network namespace, read from a
/// `/proc/net/tcp` table (hand-parsed: one fixed format, where a crate such as
/// `procfs` would bring all of /proc).
pub fn socket_uid(table: &Path, from: SocketAddr, to: SocketAddr) -> Option<u32> {
    let text = std::fs::read_to_string(table).ok()?;
    uid_in(&text, from, to)
}

fn uid_in(table: &str, from: SocketAddr, to: SocketAddr) -> Option<u32> {
    let (from, to) = (proc_addr(from)?, proc_addr(to)?);
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.len() > 7 && fields[1] == from && fields[2] == to)
            .then(|| fields[7].parse().ok())
            .flatten()
    })
}

/// An IPv4 socket address as the kernel prints it: the address as a host-order word.
fn proc_addr(addr: SocketAddr) -> Option<String> {
    match addr {
        SocketAddr::V4(a) => Some(format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(a.ip().octets()),
            a.port()
        )),
        SocketAddr::V6(_) => None,
    }
}

async fn only_root(
    ConnectInfo(peer): ConnectInfo<LocalPeer>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if peer.uid == Some(0) {
        return next.run(request).await;
    }
    let who = peer
        .uid
        .map_or_else(|| "an unknown user".to_string(), |u| format!("uid {u}"));
    RegistryError::new(
        ErrorCode::Denied,
        format!("the node registry answers root only (dockerd, or a tool run as root); this connection is {who}'s"),
    )
    .into_response()
}

/// The `/v2/` API on `127.0.0.1:port`, root's connections only. Retries the bind, so a
/// port held for a moment (a restart) does not leave the node without its registry.
pub fn spawn_loopback(port: u16, registry: Registry) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let app: Router = super::api::router(registry).layer(axum::middleware::from_fn(only_root));
    tokio::spawn(async move {
        let mut reported = false;
        let listener = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) => {
                    if !reported {
                        warn!("the node registry waits for {addr}: {e}");
                        reported = true;
                    }
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        };
        info!("node registry on {addr} (root only)");
        let service = app.into_make_service_with_connect_info::<LocalPeer>();
        if let Err(e) = axum::serve(listener, service).await {
            warn!("the node registry on {addr} stopped: {e}");
        }
    });
}

/// This node's side of the blob swarms for other nodes (see [`super::swarm`]), merged
/// into the cluster API, whose overlay side answers nodes only. Pieces of blobs this
/// node holds or is fetching, never anything fetched on another's behalf.
pub fn peer_routes(swarm: Arc<Swarm>) -> Router {
    Router::new()
        .route("/v1/registry/swarm/{digest}/pieces", get(piece_list))
        .route("/v1/registry/swarm/{digest}/have", get(have))
        .route("/v1/registry/swarm/{digest}/pieces/{n}", get(piece))
        .route("/v1/registry/swarm/{digest}/assign", post(assign))
        .with_state(swarm)
}

type Answer = Result<Response, RegistryError>;

fn digest_of(digest: &str) -> Result<Digest, RegistryError> {
    Digest::parse(digest).map_err(|e| RegistryError::new(ErrorCode::DigestInvalid, e.to_string()))
}

fn not_here(digest: &Digest) -> RegistryError {
    RegistryError::new(
        ErrorCode::BlobUnknown,
        format!("this node has no pieces of {digest}"),
    )
}

fn swarm_error(digest: &Digest, e: SwarmError) -> RegistryError {
    match e {
        SwarmError::Store(e @ StoreError::DiskFull { .. }) => {
            RegistryError::disk_full(e.to_string())
        }
        SwarmError::Invalid(e) => RegistryError::new(ErrorCode::SizeInvalid, e.to_string()),
        e @ SwarmError::Damaged { .. } => {
            warn!("registry: {e}");
            not_here(digest)
        }
        e => RegistryError::unavailable(e.to_string()),
    }
}

async fn piece_list(State(swarm): State<Arc<Swarm>>, UrlPath(digest): UrlPath<String>) -> Answer {
    let digest = digest_of(&digest)?;
    match swarm.list(&digest).await {
        Ok(Some(list)) => Ok(axum::Json(list.to_wire()).into_response()),
        Ok(None) => Err(not_here(&digest)),
        Err(e) => Err(swarm_error(&digest, e)),
    }
}

async fn have(State(swarm): State<Arc<Swarm>>, UrlPath(digest): UrlPath<String>) -> Answer {
    let digest = digest_of(&digest)?;
    match swarm.have(&digest).await {
        Ok(Some(have)) => Ok(axum::Json(have).into_response()),
        Ok(None) => Err(not_here(&digest)),
        Err(e) => Err(swarm_error(&digest, e)),
    }
}

async fn piece(
    State(swarm): State<Arc<Swarm>>,
    UrlPath((digest, n)): UrlPath<(String, String)>,
) -> Answer {
    let digest = digest_of(&digest)?;
    let n: usize = n.parse().map_err(|_| {
        RegistryError::new(
            ErrorCode::SizeInvalid,
            format!("path segment {{n}}: {n:?} is no piece number"),
        )
    })?;
    match swarm.piece(&digest, n).await {
        Ok(Some(bytes)) => Ok(piece_answer(None, bytes)),
        Ok(None) => Err(not_here(&digest)),
        Err(e) => Err(swarm_error(&digest, e)),
    }
}

/// The body is the hex bitfield of the pieces the puller wants from a seed.
async fn assign(
    State(swarm): State<Arc<Swarm>>,
    UrlPath(digest): UrlPath<String>,
    body: Bytes,
) -> Answer {
    let digest = digest_of(&digest)?;
    let Ok(wanted) = std::str::from_utf8(&body) else {
        return Err(RegistryError::new(
            ErrorCode::SizeInvalid,
            "the wanted pieces: the body is not UTF-8 (it is a hex bitfield)",
        ));
    };
    match swarm.assign(&digest, wanted.trim()).await {
        Ok(Some(Some((n, bytes)))) => Ok(piece_answer(Some(n), bytes)),
        Ok(Some(None)) => Ok(StatusCode::NO_CONTENT.into_response()),
        Ok(None) => Err(not_here(&digest)),
        Err(e) => Err(swarm_error(&digest, e)),
    }
}

/// A piece's bytes, counted as sent (`arpanet_registry_blob_bytes`).
fn piece_answer(n: Option<usize>, bytes: Bytes) -> Response {
    crate::metrics::registry_blob_bytes("sent", bytes.len() as u64);
    let mut answer = Response::new(Body::from(bytes));
    if let Some(n) = n {
        answer
            .headers_mut()
            .insert("arpanet-piece", HeaderValue::from(n as u64));
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1BBE 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:9C40 0100007F:1BBE 01 00000000:00000000 00:00000000 00000000  1000        0 2 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:9C41 0100007F:1BBE 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn the_uid_is_the_one_of_the_clients_socket() {
        let server: SocketAddr = "127.0.0.1:7102".parse().unwrap();
        assert_eq!(
            uid_in(TABLE, "127.0.0.1:40000".parse().unwrap(), server),
            Some(1000)
        );
        assert_eq!(
            uid_in(TABLE, "127.0.0.1:40001".parse().unwrap(), server),
            Some(0)
        );
        // The listening socket's own line never matches a client.
        assert_eq!(
            uid_in(TABLE, "127.0.0.1:40002".parse().unwrap(), server),
            None
        );
    }

    /// Against the kernel: this test's own connection is found, with this process's uid.
    #[tokio::test]
    async fn the_kernel_names_this_processs_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(server).await.unwrap();
        let (_accepted, from) = listener.accept().await.unwrap();
        assert_eq!(from, client.local_addr().unwrap());
        let uid = socket_uid(Path::new("/proc/net/tcp"), from, server);
        assert_eq!(uid, Some(nix::unistd::getuid().as_raw()));
    }
}
