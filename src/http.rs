//! What every HTTP side of arpanet shares (the cluster API and the image sync service,
//! and their clients): the error answer `{"error": "..."}`, a JSON body extractor whose
//! rejection names the field, unix sockets for root only, one wording for a request
//! that got no answer, and streamed answers: NDJSON out, lines of a byte stream in.

use std::future::Future;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

/// Every error an arpanet HTTP service answers: `{"error": "..."}` with a fitting status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// An error as the API and the sync service return it: a status and one line.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl ApiError {
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, m.into())
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self(StatusCode::NOT_FOUND, m.into())
    }
    /// Docker, Consul or the disk could not do what was asked.
    pub fn backend(e: impl Into<anyhow::Error>) -> Self {
        Self(StatusCode::SERVICE_UNAVAILABLE, format!("{:#}", e.into()))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_response(self.0, &ErrorBody { error: self.1 })
    }
}

pub fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(body).expect("serializable"),
    )
        .into_response()
}

/// A JSON answer passed on as it came (from another node or service).
pub fn json_bytes(status: StatusCode, body: Bytes) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// An error answer as one line: its `error`, or the bare status when it has none.
pub fn error_text(status: StatusCode, body: &[u8]) -> String {
    serde_json::from_slice::<ErrorBody>(body)
        .map(|e| e.error)
        .unwrap_or_else(|_| format!("answered {status}"))
}

/// JSON with the path of the field that is wrong (`spec.ports[0]: invalid type ...`),
/// for request bodies and KV entries alike.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(field_error)
}

/// A deserialization error as `path.to.field: why`.
pub fn field_error<E: std::fmt::Display>(e: serde_path_to_error::Error<E>) -> String {
    let path = e.path().to_string();
    let inner = e.into_inner();
    // `.` is the whole body, `?` a place serde could not name (the body ends early).
    if matches!(path.as_str(), "" | "." | "?") {
        inner.to_string()
    } else {
        format!("{path}: {inner}")
    }
}

/// A JSON request body, as axum's `Json`, but a bad one is a 400 `{"error": ...}` that
/// names the field ([`parse_json`]). The content type is not checked: the CLI and the
/// relays send JSON, and an error about a header would hide the one about the body.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError(e.status(), e.body_text()))?;
        parse_json(&bytes).map(Json).map_err(ApiError::bad_request)
    }
}

/// Why a request got no answer, in the words every client here uses.
pub fn request_error(e: reqwest::Error) -> String {
    if e.is_connect() {
        "cannot connect".to_string()
    } else if e.is_timeout() {
        "no answer in time".to_string()
    } else {
        e.without_url().to_string()
    }
}

/// An HTTP client for the service listening on the unix socket at `socket` (URLs then
/// name any host: `http://arpanetd/v1/...`).
pub fn unix_client(socket: &Path, timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .unix_socket(socket)
        .timeout(timeout)
        .build()
        .expect("a unix-socket HTTP client always builds")
}

/// An HTTP client for a unix socket whose answers may stream for as long as the user
/// watches (`logs -f`): it waits for the connection, not for the whole answer.
pub fn unix_streaming_client(socket: &Path) -> reqwest::Client {
    reqwest::Client::builder()
        .unix_socket(socket)
        .connect_timeout(Duration::from_secs(10))
        .build()
        .expect("a unix-socket HTTP client always builds")
}

/// Longest line passed on whole; a longer one (a container that writes without
/// newlines) is cut into pieces of this size, so one writer cannot fill memory.
pub const MAX_LINE: usize = 64 * 1024;

/// Splits bytes that arrive in chunks into lines: a line split across chunks comes out
/// whole once its newline arrives. Lines lose their `\n` (and a `\r` before it); bytes
/// that are not UTF-8 are replaced.
#[derive(Debug, Default)]
pub struct LineBuffer {
    partial: Vec<u8>,
}

impl LineBuffer {
    /// The lines `chunk` completes.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        let mut rest = chunk;
        while let Some(i) = rest.iter().position(|b| *b == b'\n') {
            self.partial.extend_from_slice(&rest[..i]);
            if self.partial.last() == Some(&b'\r') {
                self.partial.pop();
            }
            lines.extend(self.take_long());
            lines.push(String::from_utf8_lossy(&self.partial).into_owned());
            self.partial.clear();
            rest = &rest[i + 1..];
        }
        self.partial.extend_from_slice(rest);
        lines.extend(self.take_long());
        lines
    }

    /// Pieces of [`MAX_LINE`] bytes off the front of an overlong partial line.
    fn take_long(&mut self) -> Vec<String> {
        let mut pieces = Vec::new();
        while self.partial.len() > MAX_LINE {
            let piece: Vec<u8> = self.partial.drain(..MAX_LINE).collect();
            pieces.push(String::from_utf8_lossy(&piece).into_owned());
        }
        pieces
    }

    /// What is left when the bytes end: a last line without a newline.
    pub fn finish(&mut self) -> Option<String> {
        if self.partial.is_empty() {
            return None;
        }
        let last = String::from_utf8_lossy(&self.partial).into_owned();
        self.partial.clear();
        Some(last)
    }
}

/// The lines of a byte stream as they complete (see [`LineBuffer`]). An error ends it,
/// after the lines before it; the stream's last line needs no newline.
pub fn lines<S, E>(bytes: S) -> impl futures::Stream<Item = Result<String, E>> + Send + 'static
where
    S: futures::Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Send + 'static,
{
    use futures::StreamExt;
    use std::collections::VecDeque;
    struct State<S, E> {
        bytes: Pin<Box<S>>,
        buffer: LineBuffer,
        ready: VecDeque<Result<String, E>>,
        done: bool,
    }
    let state = State {
        bytes: Box::pin(bytes),
        buffer: LineBuffer::default(),
        ready: VecDeque::new(),
        done: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(item) = st.ready.pop_front() {
                return Some((item, st));
            }
            if st.done {
                return None;
            }
            match st.bytes.next().await {
                Some(Ok(chunk)) => st.ready.extend(st.buffer.push(&chunk).into_iter().map(Ok)),
                Some(Err(e)) => {
                    st.ready.extend(st.buffer.finish().map(Ok));
                    st.ready.push_back(Err(e));
                    st.done = true;
                }
                None => {
                    st.ready.extend(st.buffer.finish().map(Ok));
                    st.done = true;
                }
            }
        }
    })
}

/// A streamed answer of newline-delimited JSON, one record a line, each sent as it
/// comes (a follower sees a line as soon as it is written).
pub fn ndjson_response<T, S>(records: S) -> Response
where
    T: Serialize,
    S: futures::Stream<Item = T> + Send + 'static,
{
    use futures::StreamExt;
    let body = records.map(|r| {
        let mut line = serde_json::to_vec(&r).expect("serializable");
        line.push(b'\n');
        Ok::<_, std::convert::Infallible>(Bytes::from(line))
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("create {}: {source}", .path.display())]
    Dir { path: PathBuf, source: io::Error },
    #[error("listen on {}: {source}", .path.display())]
    Bind { path: PathBuf, source: io::Error },
    #[error("restrict {}: {source}", .path.display())]
    Restrict { path: PathBuf, source: io::Error },
    #[error("move {} to {}: {source}", .from.display(), .to.display())]
    Rename {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
}

/// A unix socket for root only (0600), replacing one an earlier run left: the API's
/// socket changes what runs on every node, the sync service's moves images.
///
/// The socket is bound inside a fresh 0700 directory next to `path`, made 0600 there,
/// then renamed over `path`. A socket is connectable as soon as it is bound, with the
/// mode the umask leaves; inside the private directory nobody else can reach it until
/// its mode is right, and the rename (same filesystem) puts it in place at once, so a
/// client never finds the path missing or open to it. (Binding at a temporary name
/// in the shared directory would leave that window open; the process-wide umask cannot
/// be changed safely with other threads creating files.)
pub fn bind_unix(path: &Path) -> Result<tokio::net::UnixListener, BindError> {
    bind_staged(path, |_| {})
}

/// [`bind_unix`], calling `staged_hook` with the socket's private path just before the rename
/// (so a test can see what the socket looked like while nobody else could reach it).
fn bind_staged(
    path: &Path,
    staged_hook: impl FnOnce(&Path),
) -> Result<tokio::net::UnixListener, BindError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|source| BindError::Dir {
        path: dir.to_path_buf(),
        source,
    })?;
    let name = path.file_name().unwrap_or(path.as_os_str());
    let private = dir.join(format!(".{}.bind", name.to_string_lossy()));
    // Left by a run that died between bind and rename.
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(|source| BindError::Dir {
            path: private.clone(),
            source,
        })?;
    let staged = private.join(name);
    let result = (|| {
        let listener =
            tokio::net::UnixListener::bind(&staged).map_err(|source| BindError::Bind {
                path: path.to_path_buf(),
                source,
            })?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| BindError::Restrict {
                path: path.to_path_buf(),
                source,
            },
        )?;
        staged_hook(&staged);
        std::fs::rename(&staged, path).map_err(|source| BindError::Rename {
            from: staged.clone(),
            to: path.to_path_buf(),
            source,
        })?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    result
}

/// Resolves when a connection must end (its peer's certificate was revoked).
pub type Ending = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What ends a connection, from its finished handshake.
pub type CutWhen = Arc<dyn Fn(&rustls::ServerConnection) -> Ending + Send + Sync>;

/// A stream whose reads and writes fail from the moment its [`Ending`] resolves, so
/// whatever serves it drops the connection then, also one that waits idle in a read
/// (hyper). A copy that no longer reads (its peer half-closed) is cut by its owner
/// racing the copy against the ending (see the Docker relay).
pub struct Severable<S> {
    inner: S,
    ending: Ending,
    cut: bool,
}

impl<S> Severable<S> {
    pub fn new(inner: S, ending: Ending) -> Self {
        Self {
            inner,
            ending,
            cut: false,
        }
    }

    /// Never cut.
    pub fn lasting(inner: S) -> Self {
        Self::new(inner, Box::pin(std::future::pending()))
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if !self.cut && self.ending.as_mut().poll(cx).is_ready() {
            self.cut = true;
        }
        if self.cut {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection cut: the peer's certificate was revoked",
            ));
        }
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Severable<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Severable<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How long a peer may take over its handshake.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once per listener, and per peer address: a connection
/// beyond either is closed at once, so a flood of half-open connections costs a bounded
/// number of tasks, and one peer's flood does not shut the others out.
pub const HANDSHAKES_AT_ONCE: usize = 512;
pub const HANDSHAKES_PER_PEER: usize = 16;

/// Handshakes under way per peer address.
#[derive(Default, Clone)]
struct PerPeer(Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>);

/// One handshake's place in [`PerPeer`], given back when dropped.
struct PeerSlot(PerPeer, std::net::IpAddr);

impl PerPeer {
    fn take(&self, ip: std::net::IpAddr) -> Option<PeerSlot> {
        let mut held = self.0.lock().expect("handshakes lock");
        let n = held.entry(ip).or_insert(0);
        if *n >= HANDSHAKES_PER_PEER {
            return None;
        }
        *n += 1;
        Some(PeerSlot(self.clone(), ip))
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut held = self.0.0.lock().expect("handshakes lock");
        if let Some(n) = held.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.1);
            }
        }
    }
}

/// A TCP listener that hands axum only connections whose TLS handshake succeeded.
/// Handshakes happen off the accept loop, so one slow peer holds up nobody else.
pub struct TlsListener {
    incoming: tokio::sync::mpsc::Receiver<(Severable<TlsStream<TcpStream>>, std::net::SocketAddr)>,
    local: std::net::SocketAddr,
}

impl TlsListener {
    /// Each connection uses the configuration `config` gives when it arrives (the
    /// cluster API's follows the node's identity files), so a renewed certificate or a
    /// new revocation applies to the next connection; None refuses it (the owner of
    /// the configuration has said why). `what` names the service in logs. A served
    /// connection ends when `cut` says (None: when its peer closes it).
    pub fn new(
        tcp: TcpListener,
        what: &'static str,
        cut: Option<CutWhen>,
        config: impl Fn() -> Option<std::sync::Arc<rustls::ServerConfig>> + Send + 'static,
    ) -> std::io::Result<Self> {
        Self::start(tcp, what, cut, config, false)
    }

    /// As [`TlsListener::new`], but a plain HTTP request gets the answer dockerd's Go
    /// TLS server gives ("Client sent an HTTP request to an HTTPS server."), for a
    /// listener that stands in for dockerd.
    pub fn answering_plain_http(
        tcp: TcpListener,
        what: &'static str,
        cut: Option<CutWhen>,
        config: impl Fn() -> Option<std::sync::Arc<rustls::ServerConfig>> + Send + 'static,
    ) -> std::io::Result<Self> {
        Self::start(tcp, what, cut, config, true)
    }

    fn start(
        tcp: TcpListener,
        what: &'static str,
        cut: Option<CutWhen>,
        config: impl Fn() -> Option<std::sync::Arc<rustls::ServerConfig>> + Send + 'static,
        answer_plain_http: bool,
    ) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, incoming) = tokio::sync::mpsc::channel(64);
        let handshakes = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_AT_ONCE));
        let per_peer = PerPeer::default();
        tokio::spawn(async move {
            loop {
                let (stream, addr) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!("{what}: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Some(slot) = per_peer.take(addr.ip()) else {
                    tracing::debug!(
                        "{what}: {addr} closed: {HANDSHAKES_PER_PEER} handshakes from it under way"
                    );
                    continue;
                };
                let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                    tracing::debug!(
                        "{what}: {addr} closed: {HANDSHAKES_AT_ONCE} handshakes under way"
                    );
                    continue;
                };
                let Some(server) = config() else { continue };
                let tx = tx.clone();
                let cut = cut.clone();
                tokio::spawn(async move {
                    let _held = (permit, slot);
                    let mut stream = stream;
                    if answer_plain_http && answered_plain_http(&mut stream).await {
                        return tracing::debug!("{what}: plain HTTP from {addr} refused");
                    }
                    let acceptor = tokio_rustls::TlsAcceptor::from(server);
                    match tokio::time::timeout(HANDSHAKE_LIMIT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let tls = match &cut {
                                Some(cut) => {
                                    let ending = cut(tls.get_ref().1);
                                    Severable::new(tls, ending)
                                }
                                None => Severable::lasting(tls),
                            };
                            let _ = tx.send((tls, addr)).await;
                        }
                        Ok(Err(e)) => tracing::debug!("{what}: TLS from {addr} refused: {e}"),
                        Err(_) => tracing::debug!("{what}: TLS from {addr}: no handshake in time"),
                    }
                });
            }
        });
        Ok(Self { incoming, local })
    }
}

/// What Go's TLS servers (dockerd among them) answer a plain HTTP request with, so the
/// Docker CLI and curl say what went wrong.
const PLAIN_HTTP_ANSWER: &[u8] =
    b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

/// Whether the connection opened with a plain HTTP request (Go's test: the first five
/// bytes, where a TLS record header would be), which is then answered and closed.
async fn answered_plain_http(stream: &mut TcpStream) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const HTTP: [&[u8; 5]; 5] = [b"GET /", b"HEAD ", b"POST ", b"PUT /", b"OPTIO"];
    let mut head = [0u8; 5];
    let peeked = tokio::time::timeout(HANDSHAKE_LIMIT, async {
        loop {
            match stream.peek(&mut head).await {
                // A TLS record, a closed connection or first bytes that are no method
                // name: the handshake deals with it.
                Ok(n) if n == head.len() || n == 0 || head[0] == 0x16 => return n,
                Ok(n) if !HTTP.iter().any(|m| m.starts_with(&head[..n])) => return n,
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                Err(_) => return 0,
            }
        }
    })
    .await;
    if !matches!(peeked, Ok(5)) || !HTTP.contains(&&head) {
        return false;
    }
    let _ = tokio::time::timeout(HANDSHAKE_LIMIT, async {
        stream.write_all(PLAIN_HTTP_ANSWER).await?;
        stream.shutdown().await?;
        // Closing with the request unread would reset the connection, and the client
        // could lose the answer: read until it closes (or the limit).
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        std::io::Result::Ok(())
    })
    .await;
    true
}

impl axum::serve::Listener for TlsListener {
    type Io = Severable<TlsStream<TcpStream>>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.incoming.recv().await {
            Some(c) => c,
            // The accept task ended (it does not): serve nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    #[tokio::test]
    async fn a_bound_socket_is_root_only_from_the_start_and_leaves_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/api.sock");
        // A socket (here a plain file) an earlier run left is replaced.
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "stale").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();

        // Until it is 0600 it is in a directory only root may enter; the old one still
        // answers at the path meanwhile.
        let listener = bind_staged(&path, |staged| {
            let private = std::fs::metadata(staged.parent().unwrap()).unwrap();
            assert_eq!(private.permissions().mode() & 0o7777, 0o700);
            assert_eq!(staged.parent().unwrap().parent(), path.parent());
            let socket = std::fs::symlink_metadata(staged).unwrap();
            assert!(socket.file_type().is_socket());
            assert_eq!(socket.permissions().mode() & 0o7777, 0o600);
            assert_eq!(std::fs::read_to_string(&path).unwrap(), "stale");
        })
        .unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        let names: Vec<String> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["api.sock"]);

        // It answers at its final path, and a second bind (a restart) takes it over.
        let client = tokio::net::UnixStream::connect(&path).await;
        assert!(client.is_ok(), "{client:?}");
        assert!(listener.accept().await.is_ok());
        drop(listener);
        let again = bind_unix(&path).unwrap();
        assert!(tokio::net::UnixStream::connect(&path).await.is_ok());
        assert!(again.accept().await.is_ok());
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }

    #[tokio::test]
    async fn a_leftover_private_directory_does_not_stop_the_bind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sync.sock");
        std::fs::create_dir(dir.path().join(".sync.sock.bind")).unwrap();
        std::fs::write(dir.path().join(".sync.sock.bind/sync.sock"), "").unwrap();
        let _listener = bind_unix(&path).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_bad_body_names_its_field() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Body {
            spec: Inner,
        }
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Inner {
            ports: Vec<u16>,
        }
        let e = parse_json::<Body>(br#"{"spec":{"ports":[80,"x"]}}"#).unwrap_err();
        assert!(e.starts_with("spec.ports[1]: invalid type"), "{e}");
        let e = parse_json::<Body>(b"{").unwrap_err();
        assert!(e.starts_with("EOF while parsing"), "{e}");
    }

    #[tokio::test]
    async fn the_json_extractor_rejects_with_the_field_path() {
        #[derive(Debug, Deserialize)]
        struct Scale {
            replicas: i64,
        }
        let req = |body: &'static str| {
            Request::builder()
                .method("PUT")
                .uri("/")
                .body(axum::body::Body::from(body))
                .unwrap()
        };
        let Json(ok) = Json::<Scale>::from_request(req(r#"{"replicas":3}"#), &())
            .await
            .unwrap();
        assert_eq!(ok.replicas, 3);
        let ApiError(status, message) =
            Json::<Scale>::from_request(req(r#"{"replicas":"3"}"#), &())
                .await
                .unwrap_err();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(message.starts_with("replicas: invalid type"), "{message}");
    }

    #[test]
    fn lines_come_out_whole_however_the_bytes_are_cut() {
        let mut b = LineBuffer::default();
        assert_eq!(b.push(b"one\ntw"), ["one"]);
        assert_eq!(b.push(b"o\r\nthree\n\nfo"), ["two", "three", ""]);
        assert_eq!(b.push(b"ur"), Vec::<String>::new());
        assert_eq!(b.finish().as_deref(), Some("four"));
        assert_eq!(b.finish(), None);
        // Not UTF-8: replaced, not dropped.
        assert_eq!(b.push(b"caf\xe9\n"), ["caf\u{fffd}"]);
        // A writer that never ends its line is cut into pieces of MAX_LINE.
        let long = vec![b'x'; MAX_LINE * 2 + 3];
        let pieces = b.push(&long);
        assert_eq!(pieces.len(), 2);
        assert!(pieces.iter().all(|p| p.len() == MAX_LINE));
        assert_eq!(b.push(b"\n"), ["xxx"]);
    }

    #[tokio::test]
    async fn a_byte_stream_becomes_lines_and_an_error_ends_it() {
        use futures::StreamExt;
        let chunks: Vec<Result<Bytes, String>> = vec![
            Ok(Bytes::from_static(b"a\nb")),
            Ok(Bytes::from_static(b"c\nd")),
            Err("broke off".into()),
            Ok(Bytes::from_static(b"never\n")),
        ];
        let got: Vec<Result<String, String>> = lines(futures::stream::iter(chunks)).collect().await;
        assert_eq!(
            got,
            [
                Ok("a".to_string()),
                Ok("bc".to_string()),
                Ok("d".to_string()),
                Err("broke off".to_string())
            ]
        );
    }

    #[test]
    fn error_answers_read_as_one_line() {
        assert_eq!(
            error_text(StatusCode::CONFLICT, br#"{"error":"exists"}"#),
            "exists"
        );
        assert_eq!(
            error_text(StatusCode::BAD_GATEWAY, b"<html>"),
            "answered 502 Bad Gateway"
        );
    }
}
