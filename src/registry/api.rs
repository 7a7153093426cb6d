//! The OCI Distribution API (v2) routes, as `spec.md` of opencontainers/distribution-spec
//! has them.
//!
//! Repository names hold slashes, so one wildcard route takes every `/v2/...` path and
//! [`parse_route`] splits it; the name, the reference or digest and the upload ID are
//! checked before anything else, so a bad one is a 400 (or a 404 for an upload ID) and
//! never a path, a KV key or a URL. The path is read undecoded: `%2F` stays in the name
//! and makes it invalid.
//!
//! Blobs are the node's, not a repository's: any repository's URL serves any blob this
//! registry knows (Docker's registry links blobs per repository; here a blob is named
//! by its content and the catalog knows which nodes hold it).

use std::io::SeekFrom;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use super::manifest::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use super::spec::{Digest, ErrorCode, Reference, ReferenceError, RegistryError, RepoName, Tag};
use super::store::{StoreError, UploadId};
use super::{CatalogError, FetchError, Manifest, Registry};

/// The largest manifest accepted; the spec asks registries to take at least 4 MB.
pub const MAX_MANIFEST: usize = 4 << 20;

const DIGEST_HEADER: &str = "Docker-Content-Digest";
const UPLOAD_HEADER: &str = "Docker-Upload-UUID";

type ApiResult = Result<Response, RegistryError>;

pub fn router(reg: Registry) -> Router {
    Router::new()
        .route("/v2", any(base))
        .route("/v2/", any(base))
        .route("/v2/{*rest}", any(dispatch))
        .fallback(unknown_route)
        .layer(axum::middleware::map_response(api_version))
        .with_state(reg)
}

/// Every answer says which API this is; clients check it on `/v2/`.
async fn api_version(mut r: Response) -> Response {
    r.headers_mut().insert(
        "Docker-Distribution-API-Version",
        header::HeaderValue::from_static("registry/2.0"),
    );
    r
}

async fn base(method: Method) -> ApiResult {
    match method {
        Method::GET | Method::HEAD => Ok(json(StatusCode::OK, &serde_json::json!({}))),
        _ => Err(unsupported(&method)),
    }
}

async fn unknown_route(method: Method, uri: axum::http::Uri) -> RegistryError {
    RegistryError::new(
        ErrorCode::Unsupported,
        format!("no such endpoint: {method} {}", uri.path()),
    )
    .with_status(StatusCode::NOT_FOUND)
}

/// What a `/v2/<tail>` path names, its parts not yet checked.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Catalog,
    Tags(&'a str),
    Manifest(&'a str, &'a str),
    Blob(&'a str, &'a str),
    Uploads(&'a str),
    Upload(&'a str, &'a str),
}

/// Splits at the last `/manifests/` or `/blobs/`: a name may hold those words as
/// components (`a/blobs/b`), a reference, digest or upload ID cannot.
fn parse_route(tail: &str) -> Option<Route<'_>> {
    if tail == "_catalog" {
        return Some(Route::Catalog);
    }
    if let Some(name) = tail.strip_suffix("/tags/list") {
        return Some(Route::Tags(name));
    }
    let manifests = tail.rfind("/manifests/");
    let blobs = tail.rfind("/blobs/");
    match (manifests, blobs) {
        (Some(m), b) if b.is_none_or(|b| m > b) => Some(Route::Manifest(
            &tail[..m],
            &tail[m + "/manifests/".len()..],
        )),
        (_, Some(b)) => {
            let (name, rest) = (&tail[..b], &tail[b + "/blobs/".len()..]);
            match rest.strip_prefix("uploads") {
                Some("" | "/") => Some(Route::Uploads(name)),
                Some(id) if id.starts_with('/') => Some(Route::Upload(name, &id[1..])),
                _ => Some(Route::Blob(name, rest)),
            }
        }
        _ => None,
    }
}

async fn dispatch(State(reg): State<Registry>, req: Request) -> Response {
    handle(&reg, req)
        .await
        .unwrap_or_else(|e| e.into_response())
}

async fn handle(reg: &Registry, req: Request) -> ApiResult {
    let (parts, body) = req.into_parts();
    let method = parts.method;
    let tail = parts.uri.path().strip_prefix("/v2/").unwrap_or_default();
    let Some(route) = parse_route(tail) else {
        return Err(unknown_route(method, parts.uri).await);
    };
    let query = Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
        .map(|q| q.0)
        .map_err(|e| {
            RegistryError::new(ErrorCode::Unsupported, e.body_text())
                .with_status(StatusCode::BAD_REQUEST)
        })?;
    let q = Params(&query);
    let headers = parts.headers;
    match route {
        Route::Catalog => match method {
            Method::GET => catalog(reg, q).await,
            _ => Err(unsupported(&method)),
        },
        Route::Tags(name) => {
            let name = repo(name)?;
            match method {
                Method::GET => tags(reg, &name, q).await,
                _ => Err(unsupported(&method)),
            }
        }
        Route::Manifest(name, reference) => {
            let name = repo(name)?;
            let reference = Reference::parse(reference).map_err(|e| match e {
                // TAG_INVALID is Docker's code, not the spec's: MANIFEST_INVALID is its nearest.
                ReferenceError::Tag(m) => RegistryError::new(ErrorCode::ManifestInvalid, m),
                ReferenceError::Digest(e) => e.into(),
            })?;
            match method {
                Method::GET => get_manifest(reg, &name, &reference, false).await,
                Method::HEAD => get_manifest(reg, &name, &reference, true).await,
                Method::PUT => put_manifest(reg, &name, &reference, q, &headers, body).await,
                Method::DELETE => delete_manifest(reg, &name, &reference).await,
                _ => Err(unsupported(&method)),
            }
        }
        Route::Blob(name, digest) => {
            let _name = repo(name)?;
            let digest = Digest::parse(digest)?;
            match method {
                Method::GET => get_blob(reg, &digest, &headers, false).await,
                Method::HEAD => get_blob(reg, &digest, &headers, true).await,
                // The catalog has no way to say this node stopped holding a blob, and
                // the other holders would still serve it: deleting here would delete
                // nothing. Unreferenced blobs go by GC.
                Method::DELETE => Err(RegistryError::new(
                    ErrorCode::Unsupported,
                    "blobs are not deleted through the API: delete the manifests, and unreferenced blobs are collected",
                )),
                _ => Err(unsupported(&method)),
            }
        }
        Route::Uploads(name) => {
            let name = repo(name)?;
            match method {
                Method::POST => post_upload(reg, &name, q, body).await,
                _ => Err(unsupported(&method)),
            }
        }
        Route::Upload(name, id) => {
            let name = repo(name)?;
            let id = UploadId::parse(id).ok_or_else(|| upload_unknown(id))?;
            match method {
                Method::GET => upload_status(reg, &name, &id).await,
                Method::PATCH => patch_upload(reg, &name, &id, &headers, body).await,
                Method::PUT => put_upload(reg, &name, &id, q, &headers, body).await,
                Method::DELETE => match reg.store.cancel(&id).await.map_err(store_error)? {
                    true => Ok(answer(StatusCode::NO_CONTENT, &[]).body(Body::empty())?),
                    false => Err(upload_unknown(id.as_str())),
                },
                _ => Err(unsupported(&method)),
            }
        }
    }
}

// --- blobs -------------------------------------------------------------------------

/// A blob from the store; one this node lacks but some node holds is fetched first
/// (HEAD answers from the catalog's size and fetches nothing).
async fn get_blob(reg: &Registry, digest: &Digest, headers: &HeaderMap, head: bool) -> ApiResult {
    let (file, size) = match reg.store.open_blob(digest).await.map_err(store_error)? {
        Some(found) => found,
        None => {
            // Without a source this node serves only its own blobs.
            let Some(source) = &reg.source else {
                return Err(blob_unknown(digest));
            };
            let Some(size) = reg.catalog.blob_size(digest).await.map_err(catalog_error)? else {
                return Err(blob_unknown(digest));
            };
            if head {
                return Ok(blob_answer(StatusCode::OK, digest, size).body(Body::empty())?);
            }
            // A whole blob streams as it arrives; a range waits for the whole blob.
            if !headers.contains_key(header::RANGE)
                && let Some(body) = source.stream(digest, size).await.map_err(fetch_error)?
            {
                return Ok(blob_answer(StatusCode::OK, digest, size).body(Body::from_stream(body))?);
            }
            source
                .fetch(digest, size, &reg.store)
                .await
                .map_err(fetch_error)?;
            reg.store
                .open_blob(digest)
                .await
                .map_err(store_error)?
                .ok_or_else(|| {
                    RegistryError::unavailable(format!("{digest} was fetched but is gone"))
                })?
        }
    };
    serve_blob(file, size, digest, headers, head).await
}

/// The blob's bytes, or the `Range` of them asked for.
async fn serve_blob(
    mut file: tokio::fs::File,
    size: u64,
    digest: &Digest,
    headers: &HeaderMap,
    head: bool,
) -> ApiResult {
    if head {
        return Ok(blob_answer(StatusCode::OK, digest, size).body(Body::empty())?);
    }
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(r) => byte_range(r, size),
        None => Ok(None),
    };
    match range {
        Ok(None) => Ok(blob_answer(StatusCode::OK, digest, size)
            .body(Body::from_stream(ReaderStream::new(file)))?),
        Ok(Some((start, end))) => {
            file.seek(SeekFrom::Start(start))
                .await
                .map_err(|e| RegistryError::unavailable(format!("read {digest}: {e}")))?;
            let len = end - start + 1;
            Ok(blob_answer(StatusCode::PARTIAL_CONTENT, digest, len)
                .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"))
                .body(Body::from_stream(ReaderStream::new(file.take(len))))?)
        }
        Err(()) => {
            let mut r = RegistryError::new(
                ErrorCode::SizeInvalid,
                format!("range not satisfiable: {digest} has {size} bytes"),
            )
            .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
            .into_response();
            r.headers_mut().insert(
                header::CONTENT_RANGE,
                format!("bytes */{size}").parse().expect("ASCII"),
            );
            Ok(r)
        }
    }
}

/// One `bytes=` range (RFC 9110 14.1.2) as inclusive offsets; `Ok(None)` serves the
/// whole blob (no range, several, or one that does not parse: the RFC lets a server
/// ignore those), `Err` is a 416.
fn byte_range(value: &str, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let (start, end) = match (first.parse::<u64>(), last.parse::<u64>()) {
        (Ok(a), Ok(b)) if a <= b => (a, b.min(size.saturating_sub(1))),
        (Ok(a), Err(_)) if last.is_empty() => (a, size.saturating_sub(1)),
        (Err(_), Ok(n)) if first.is_empty() => {
            if n == 0 || size == 0 {
                return Err(());
            }
            (size.saturating_sub(n), size - 1)
        }
        _ => return Ok(None),
    };
    if start >= size {
        return Err(());
    }
    Ok(Some((start, end)))
}

fn blob_answer(status: StatusCode, digest: &Digest, len: u64) -> axum::http::response::Builder {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(DIGEST_HEADER, digest.as_str())
}

/// Whether some node (this one included) has the blob: its size. A blob here that the
/// catalog does not list (its `hold` failed after the commit) is listed now.
async fn blob_known(reg: &Registry, digest: &Digest) -> Result<Option<u64>, RegistryError> {
    if let Some(size) = reg.catalog.blob_size(digest).await.map_err(catalog_error)? {
        return Ok(Some(size));
    }
    let Some(size) = reg.store.size(digest).await else {
        return Ok(None);
    };
    reg.catalog
        .hold(digest, size)
        .await
        .map_err(catalog_error)?;
    Ok(Some(size))
}

// --- uploads -----------------------------------------------------------------------

/// A new upload (202), a mount of a known blob (201), or a whole blob in one request
/// with `?digest=` (201).
async fn post_upload(reg: &Registry, name: &RepoName, q: Params<'_>, body: Body) -> ApiResult {
    if let Some(mount) = q.get("mount") {
        let digest = Digest::parse(mount)?;
        if let Some(from) = q.get("from") {
            repo(from)?;
        }
        // Any repository's blob may be mounted: blobs are the registry's, not a
        // repository's. An unknown one starts an upload, as the spec asks.
        if blob_known(reg, &digest).await?.is_some() {
            return blob_created(name, &digest);
        }
    } else if let Some(digest) = q.get("digest") {
        let digest = Digest::parse(digest)?;
        let id = reg.store.start_upload().await.map_err(store_error)?;
        let stored = async {
            reg.store.append(&id, None, body.into_data_stream()).await?;
            reg.store.commit(&id, &digest).await
        }
        .await;
        let size = match stored {
            Ok(size) => size,
            Err(e) => {
                let _ = reg.store.cancel(&id).await;
                return Err(store_error(e));
            }
        };
        reg.catalog
            .hold(&digest, size)
            .await
            .map_err(catalog_error)?;
        list_soon(reg, &digest);
        return blob_created(name, &digest);
    }
    let id = reg.store.start_upload().await.map_err(store_error)?;
    upload_answer(StatusCode::ACCEPTED, name, &id, 0)
}

async fn upload_status(reg: &Registry, name: &RepoName, id: &UploadId) -> ApiResult {
    let size = reg
        .store
        .upload_size(id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| upload_unknown(id.as_str()))?;
    upload_answer(StatusCode::NO_CONTENT, name, id, size)
}

async fn patch_upload(
    reg: &Registry,
    name: &RepoName,
    id: &UploadId,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult {
    let at = content_range(headers)?;
    let size = reg
        .store
        .append(id, at, body.into_data_stream())
        .await
        .map_err(store_error)?;
    upload_answer(StatusCode::ACCEPTED, name, id, size)
}

/// Closes an upload: its last chunk, if the body has one, then the digest check.
async fn put_upload(
    reg: &Registry,
    name: &RepoName,
    id: &UploadId,
    q: Params<'_>,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult {
    let digest = q.get("digest").ok_or_else(|| {
        RegistryError::new(ErrorCode::DigestInvalid, "closing an upload needs ?digest=")
    })?;
    let digest = Digest::parse(digest)?;
    let at = content_range(headers)?;
    reg.store
        .append(id, at, body.into_data_stream())
        .await
        .map_err(store_error)?;
    let size = reg.store.commit(id, &digest).await.map_err(store_error)?;
    reg.catalog
        .hold(&digest, size)
        .await
        .map_err(catalog_error)?;
    list_soon(reg, &digest);
    blob_created(name, &digest)
}

/// A pushed blob's piece list, made now while its bytes are in the page cache, so the
/// first pullers do not wait for it: a second read of the blob on the node it was
/// pushed to (200 MB: about 0.2 s of one core), which the first pull would make anyway.
fn list_soon(reg: &Registry, digest: &Digest) {
    let (swarm, digest) = (reg.swarm.clone(), digest.clone());
    tokio::spawn(async move {
        if let Err(e) = swarm.list(&digest).await {
            tracing::warn!("registry: the piece list of {digest}: {e}");
        }
    });
}

/// A chunk's start from its `Content-Range: <start>-<end>` (the spec's form; `bytes `
/// before it and `/<total>` after it, as some clients send, are taken too). The
/// length is not checked against the end: the body is streamed, not counted first.
fn content_range(headers: &HeaderMap) -> Result<Option<u64>, RegistryError> {
    let Some(value) = headers.get(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let bad = || {
        RegistryError::new(
            ErrorCode::BlobUploadInvalid,
            "Content-Range is not <start>-<end>",
        )
        .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
    };
    let s = value.to_str().map_err(|_| bad())?;
    let s = s
        .strip_prefix("bytes")
        .unwrap_or(s)
        .trim_start_matches([' ', '=']);
    let s = s.split_once('/').map_or(s, |(range, _)| range);
    let (start, end) = s.split_once('-').ok_or_else(bad)?;
    match (start.parse::<u64>(), end.parse::<u64>()) {
        (Ok(start), Ok(end)) if start <= end => Ok(Some(start)),
        _ => Err(bad()),
    }
}

fn upload_answer(status: StatusCode, name: &RepoName, id: &UploadId, size: u64) -> ApiResult {
    Ok(answer(
        status,
        &[
            (
                header::LOCATION.as_str(),
                format!("/v2/{name}/blobs/uploads/{id}"),
            ),
            // The last byte's offset; an empty upload says 0-0 as Docker's does.
            ("Range", format!("0-{}", size.saturating_sub(1))),
            (UPLOAD_HEADER, id.to_string()),
        ],
    )
    .header(header::CONTENT_LENGTH, 0)
    .body(Body::empty())?)
}

fn blob_created(name: &RepoName, digest: &Digest) -> ApiResult {
    Ok(answer(
        StatusCode::CREATED,
        &[
            (
                header::LOCATION.as_str(),
                format!("/v2/{name}/blobs/{digest}"),
            ),
            (DIGEST_HEADER, digest.to_string()),
        ],
    )
    .header(header::CONTENT_LENGTH, 0)
    .body(Body::empty())?)
}

// --- manifests ---------------------------------------------------------------------

async fn get_manifest(
    reg: &Registry,
    name: &RepoName,
    reference: &Reference,
    head: bool,
) -> ApiResult {
    let digest = match reference {
        Reference::Digest(d) => Some(d.clone()),
        Reference::Tag(t) => reg.catalog.tag(name, t).await.map_err(catalog_error)?,
    };
    let manifest = match digest {
        Some(d) => reg
            .catalog
            .manifest(name, &d)
            .await
            .map_err(catalog_error)?,
        None => None,
    };
    let Some(m) = manifest else {
        return Err(manifest_unknown(reg, name, reference).await);
    };
    let body = if head {
        Body::empty()
    } else {
        Body::from(m.bytes.clone())
    };
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, &m.media_type)
        .header(header::CONTENT_LENGTH, m.bytes.len())
        .header(DIGEST_HEADER, m.digest.as_str())
        .body(body)?)
}

/// No such manifest: `NAME_UNKNOWN` if the repository is not there at all.
async fn manifest_unknown(reg: &Registry, name: &RepoName, reference: &Reference) -> RegistryError {
    match reg.catalog.tags(name).await {
        Ok(None) => name_unknown(name),
        Ok(Some(_)) => {
            let r = match reference {
                Reference::Tag(t) => t.to_string(),
                Reference::Digest(d) => d.to_string(),
            };
            RegistryError::new(
                ErrorCode::ManifestUnknown,
                format!("{name} has no manifest {r}"),
            )
        }
        Err(e) => catalog_error(e),
    }
}

/// Stores a manifest whose blobs (an image) or manifests (an index) are known; a
/// manifest of another type (an artifact) is stored as it is. A `subject` is not
/// checked (the spec: accept it before its subject) and no `OCI-Subject` is answered:
/// that header says the referrers API is served, and it is not (clients then keep the
/// referrers tag themselves).
async fn put_manifest(
    reg: &Registry,
    name: &RepoName,
    reference: &Reference,
    q: Params<'_>,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult {
    // `?tag=` (spec 1.1, end-7b): more tags for the same manifest, checked first.
    let extra: Vec<Tag> = q
        .all("tag")
        .map(|t| Tag::parse(t).map_err(|m| RegistryError::new(ErrorCode::ManifestInvalid, m)))
        .collect::<Result<_, _>>()?;
    let bytes = read_manifest(headers, body).await?;
    let invalid = |m: String| RegistryError::new(ErrorCode::ManifestInvalid, m);
    let json: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| invalid(format!("the manifest is not JSON: {e}")))?;
    if !json.is_object() {
        return Err(invalid("the manifest is not a JSON object".to_string()));
    }
    let declared = json.get("mediaType").and_then(|t| t.as_str());
    let sent = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim())
        .filter(|v| !v.is_empty());
    let media_type = match (sent, declared) {
        (Some(s), Some(d)) if s != d => {
            return Err(invalid(format!(
                "Content-Type is {s} but the manifest's mediaType is {d}"
            )));
        }
        (Some(t), _) | (None, Some(t)) => t.to_string(),
        (None, None) => {
            return Err(invalid(
                "the manifest has no media type (Content-Type or mediaType)".to_string(),
            ));
        }
    };
    let digest = Digest::of(&bytes);
    let tag = match reference {
        Reference::Digest(d) if *d != digest => {
            return Err(RegistryError::new(
                ErrorCode::DigestInvalid,
                format!("the manifest's bytes are {digest}, not {d}"),
            ));
        }
        Reference::Digest(_) => None,
        Reference::Tag(t) => Some(t),
    };
    check_references(reg, name, &media_type, &json).await?;
    let manifest = Manifest {
        media_type,
        digest: digest.clone(),
        bytes,
    };
    let tags: Vec<&Tag> = tag.into_iter().chain(&extra).collect();
    if tags.is_empty() {
        reg.catalog
            .put_manifest(name, &manifest, None)
            .await
            .map_err(catalog_error)?;
    }
    for t in &tags {
        reg.catalog
            .put_manifest(name, &manifest, Some(t))
            .await
            .map_err(catalog_error)?;
    }
    let mut answer = answer(
        StatusCode::CREATED,
        &[
            (
                header::LOCATION.as_str(),
                format!("/v2/{name}/manifests/{digest}"),
            ),
            (DIGEST_HEADER, digest.to_string()),
        ],
    )
    .header(header::CONTENT_LENGTH, 0);
    // One OCI-Tag per tag, as the spec asks when `?tag=` was given.
    if !extra.is_empty() {
        for t in tags {
            answer = answer.header("OCI-Tag", t.as_str());
        }
    }
    Ok(answer.body(Body::empty())?)
}

/// The body, up to [`MAX_MANIFEST`]; more is 413 (`SIZE_INVALID`).
async fn read_manifest(headers: &HeaderMap, body: Body) -> Result<Bytes, RegistryError> {
    let too_large = || {
        RegistryError::new(
            ErrorCode::SizeInvalid,
            format!("a manifest is at most {MAX_MANIFEST} bytes"),
        )
        .with_status(StatusCode::PAYLOAD_TOO_LARGE)
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_MANIFEST as u64) {
        return Err(too_large());
    }
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            RegistryError::new(
                ErrorCode::ManifestInvalid,
                format!("the manifest's body broke off: {e}"),
            )
        })?;
        if buf.len() + chunk.len() > MAX_MANIFEST {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// An image's config and layers must be blobs some node has; an index's manifests
/// must be in the repository.
async fn check_references(
    reg: &Registry,
    name: &RepoName,
    media_type: &str,
    json: &serde_json::Value,
) -> Result<(), RegistryError> {
    let invalid = |m: &str| RegistryError::new(ErrorCode::ManifestInvalid, m);
    let missing = |d: &Digest, what: &str| {
        RegistryError::new(
            ErrorCode::ManifestBlobUnknown,
            format!("the manifest names {what} {d}, which this registry does not have"),
        )
        .with_detail(serde_json::json!({ "digest": d.as_str() }))
    };
    if [OCI_MANIFEST, DOCKER_MANIFEST].contains(&media_type) {
        let config = json
            .get("config")
            .ok_or_else(|| invalid("an image manifest needs a config"))?;
        let layers = json
            .get("layers")
            .and_then(|l| l.as_array())
            .ok_or_else(|| invalid("an image manifest needs a layers array"))?;
        for descriptor in std::iter::once(config).chain(layers) {
            let digest = descriptor_digest(descriptor)?;
            if blob_known(reg, &digest).await?.is_none() {
                return Err(missing(&digest, "blob"));
            }
        }
    } else if [OCI_INDEX, DOCKER_LIST].contains(&media_type) {
        let manifests = json
            .get("manifests")
            .and_then(|l| l.as_array())
            .ok_or_else(|| invalid("an index needs a manifests array"))?;
        for descriptor in manifests {
            let digest = descriptor_digest(descriptor)?;
            let known = reg
                .catalog
                .manifest(name, &digest)
                .await
                .map_err(catalog_error)?;
            if known.is_none() {
                return Err(missing(&digest, "manifest"));
            }
        }
    }
    Ok(())
}

fn descriptor_digest(descriptor: &serde_json::Value) -> Result<Digest, RegistryError> {
    super::manifest::descriptor_digest(descriptor)
        .map_err(|m| RegistryError::new(ErrorCode::ManifestInvalid, m))
}

/// By digest: the manifest and its tags; by tag: the tag alone (spec 1.1).
async fn delete_manifest(reg: &Registry, name: &RepoName, reference: &Reference) -> ApiResult {
    let deleted = match reference {
        Reference::Digest(d) => reg.catalog.delete_manifest(name, d).await,
        Reference::Tag(t) => reg.catalog.delete_tag(name, t).await,
    }
    .map_err(catalog_error)?;
    if !deleted {
        return Err(manifest_unknown(reg, name, reference).await);
    }
    Ok(answer(StatusCode::ACCEPTED, &[])
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())?)
}

// --- lists -------------------------------------------------------------------------

async fn tags(reg: &Registry, name: &RepoName, q: Params<'_>) -> ApiResult {
    let tags = reg
        .catalog
        .tags(name)
        .await
        .map_err(catalog_error)?
        .ok_or_else(|| name_unknown(name))?;
    let (page, next) = paginate(tags, q)?;
    let body = serde_json::json!({ "name": name.as_str(), "tags": page });
    Ok(with_link(
        json(StatusCode::OK, &body),
        next.map(|(n, last)| format!("/v2/{name}/tags/list?n={n}&last={last}")),
    ))
}

async fn catalog(reg: &Registry, q: Params<'_>) -> ApiResult {
    let repos = reg.catalog.repositories().await.map_err(catalog_error)?;
    let (page, next) = paginate(repos, q)?;
    let body = serde_json::json!({ "repositories": page });
    Ok(with_link(
        json(StatusCode::OK, &body),
        next.map(|(n, last)| format!("/v2/_catalog?n={n}&last={last}")),
    ))
}

/// The `n` and `last` of the next page.
type NextPage = (usize, String);

/// `?n=` and `?last=`: up to `n` items after `last`, in ASCII order, and the `n` and
/// `last` of the next page if there is one. Tags and repository names need no
/// escaping in a query.
fn paginate(
    mut items: Vec<String>,
    q: Params<'_>,
) -> Result<(Vec<String>, Option<NextPage>), RegistryError> {
    items.sort();
    if let Some(last) = q.get("last") {
        items.retain(|i| i.as_str() > last);
    }
    let Some(n) = q.get("n") else {
        return Ok((items, None));
    };
    let n: usize = n.parse().map_err(|_| {
        RegistryError::new(ErrorCode::Unsupported, format!("n={n} is not a count"))
            .with_status(StatusCode::BAD_REQUEST)
    })?;
    if items.len() <= n {
        return Ok((items, None));
    }
    items.truncate(n);
    // n=0: an empty list and no Link (the spec).
    let next = items.last().map(|last| (n, last.clone()));
    Ok((items, next))
}

fn with_link(mut r: Response, next: Option<String>) -> Response {
    if let Some(url) = next {
        r.headers_mut().insert(
            header::LINK,
            format!("<{url}>; rel=\"next\"").parse().expect("ASCII"),
        );
    }
    r
}

// --- helpers -------------------------------------------------------------------------

/// The query's parameters; a repeated one counts once (its first value).
#[derive(Clone, Copy)]
struct Params<'a>(&'a [(String, String)]);

impl<'a> Params<'a> {
    fn get(self, key: &str) -> Option<&'a str> {
        self.all(key).next()
    }

    fn all(self, key: &str) -> impl Iterator<Item = &'a str> {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn repo(name: &str) -> Result<RepoName, RegistryError> {
    RepoName::parse(name).map_err(|m| RegistryError::new(ErrorCode::NameInvalid, m))
}

fn answer(status: StatusCode, headers: &[(&str, String)]) -> axum::http::response::Builder {
    headers
        .iter()
        .fold(Response::builder().status(status), |b, (k, v)| {
            b.header(*k, v)
        })
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(body).expect("serializable"),
    )
        .into_response()
}

fn unsupported(method: &Method) -> RegistryError {
    RegistryError::new(
        ErrorCode::Unsupported,
        format!("{method} is not served here"),
    )
}

fn blob_unknown(digest: &Digest) -> RegistryError {
    RegistryError::new(ErrorCode::BlobUnknown, format!("no blob {digest}"))
        .with_detail(serde_json::json!({ "digest": digest.as_str() }))
}

fn upload_unknown(id: &str) -> RegistryError {
    RegistryError::new(
        ErrorCode::BlobUploadUnknown,
        format!("no upload {}", id.escape_debug()),
    )
}

fn name_unknown(name: &RepoName) -> RegistryError {
    RegistryError::new(ErrorCode::NameUnknown, format!("no repository {name}"))
}

/// The catalog could not be read or written: 503, the client may try again.
fn catalog_error(e: CatalogError) -> RegistryError {
    RegistryError::unavailable(e.to_string())
}

fn store_error(e: StoreError) -> RegistryError {
    let message = e.to_string();
    match e {
        StoreError::DiskFull { .. } => RegistryError::disk_full(message),
        StoreError::Io { .. } => RegistryError::unavailable(message),
        StoreError::UnknownUpload => RegistryError::new(ErrorCode::BlobUploadUnknown, message),
        StoreError::RangeMismatch { .. } => {
            RegistryError::new(ErrorCode::BlobUploadInvalid, message)
                .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
        }
        StoreError::DigestMismatch { .. } => RegistryError::new(ErrorCode::DigestInvalid, message),
        StoreError::Body(_) => RegistryError::new(ErrorCode::BlobUploadInvalid, message),
    }
}

/// A blob this node could not get from its holders: their trouble, not the client's,
/// so 503 (507 if it is this node's disk).
fn fetch_error(e: FetchError) -> RegistryError {
    match e {
        FetchError::Store(e @ StoreError::DiskFull { .. }) => store_error(e),
        e => RegistryError::unavailable(e.to_string()),
    }
}

impl From<axum::http::Error> for RegistryError {
    fn from(e: axum::http::Error) -> Self {
        RegistryError::unavailable(format!("cannot make the answer: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use axum::http::{HeaderValue, Request};
    use tower::ServiceExt;

    use super::*;
    use crate::registry::store::BlobStore;
    use crate::registry::{BlobSource, Catalog};

    /// The catalog in memory; `down` makes every call fail as Consul being away would.
    #[derive(Default)]
    struct MemCatalog {
        state: Mutex<MemState>,
        down: AtomicBool,
    }

    #[derive(Default)]
    struct MemState {
        repos: BTreeSet<String>,
        manifests: BTreeMap<(String, Digest), Manifest>,
        tags: BTreeMap<(String, String), Digest>,
        blobs: BTreeMap<Digest, u64>,
    }

    impl MemCatalog {
        fn state(&self) -> Result<std::sync::MutexGuard<'_, MemState>, CatalogError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(CatalogError::Unavailable("Consul is down".to_string()));
            }
            Ok(self.state.lock().unwrap())
        }
    }

    #[async_trait::async_trait]
    impl Catalog for MemCatalog {
        async fn manifest(
            &self,
            repo: &RepoName,
            digest: &Digest,
        ) -> Result<Option<Manifest>, CatalogError> {
            let s = self.state()?;
            Ok(s.manifests
                .get(&(repo.to_string(), digest.clone()))
                .cloned())
        }
        async fn put_manifest(
            &self,
            repo: &RepoName,
            manifest: &Manifest,
            tag: Option<&Tag>,
        ) -> Result<(), CatalogError> {
            let mut s = self.state()?;
            s.repos.insert(repo.to_string());
            s.manifests.insert(
                (repo.to_string(), manifest.digest.clone()),
                manifest.clone(),
            );
            if let Some(t) = tag {
                s.tags
                    .insert((repo.to_string(), t.to_string()), manifest.digest.clone());
            }
            Ok(())
        }
        async fn delete_manifest(
            &self,
            repo: &RepoName,
            digest: &Digest,
        ) -> Result<bool, CatalogError> {
            let mut s = self.state()?;
            let found = s
                .manifests
                .remove(&(repo.to_string(), digest.clone()))
                .is_some();
            s.tags
                .retain(|(r, _), d| !(r == repo.as_str() && d == digest));
            Ok(found)
        }
        async fn tag(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>, CatalogError> {
            let s = self.state()?;
            Ok(s.tags.get(&(repo.to_string(), tag.to_string())).cloned())
        }
        async fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<bool, CatalogError> {
            let mut s = self.state()?;
            Ok(s.tags
                .remove(&(repo.to_string(), tag.to_string()))
                .is_some())
        }
        async fn tags(&self, repo: &RepoName) -> Result<Option<Vec<String>>, CatalogError> {
            let s = self.state()?;
            if !s.repos.contains(repo.as_str()) {
                return Ok(None);
            }
            Ok(Some(
                s.tags
                    .keys()
                    .filter(|(r, _)| r == repo.as_str())
                    .map(|(_, t)| t.clone())
                    .collect(),
            ))
        }
        async fn repositories(&self) -> Result<Vec<String>, CatalogError> {
            Ok(self.state()?.repos.iter().cloned().collect())
        }
        async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>, CatalogError> {
            Ok(self.state()?.blobs.get(digest).copied())
        }
        async fn hold(&self, digest: &Digest, size: u64) -> Result<(), CatalogError> {
            self.state()?.blobs.insert(digest.clone(), size);
            Ok(())
        }
    }

    /// Other nodes' blobs: fetched into the store the way `fetch.rs` does it.
    #[derive(Default)]
    struct Peers {
        blobs: BTreeMap<Digest, Bytes>,
        fetches: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl BlobSource for Peers {
        async fn fetch(
            &self,
            digest: &Digest,
            _size: u64,
            store: &BlobStore,
        ) -> Result<(), FetchError> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            let bytes = self
                .blobs
                .get(digest)
                .ok_or_else(|| FetchError::NoHolder(digest.to_string()))?;
            let id = store.fetch_upload(digest).await?;
            let at = store.upload_size(&id).await?.unwrap_or(0);
            let rest = bytes.slice(at as usize..);
            store
                .append(
                    &id,
                    Some(at),
                    futures::stream::iter([Ok::<_, std::io::Error>(rest)]),
                )
                .await?;
            store.commit(&id, digest).await?;
            Ok(())
        }
    }

    struct Lab {
        _dir: tempfile::TempDir,
        app: Router,
        catalog: Arc<MemCatalog>,
        store: Arc<BlobStore>,
        peers: Arc<Peers>,
    }

    struct Answer {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    }

    impl Answer {
        fn header(&self, name: &str) -> &str {
            self.headers
                .get(name)
                .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
                .to_str()
                .unwrap()
        }
        fn json(&self) -> serde_json::Value {
            serde_json::from_slice(&self.body).unwrap()
        }
        /// The spec's error body's (only) code.
        fn code(&self) -> String {
            assert_eq!(self.header("content-type"), "application/json");
            self.json()["errors"][0]["code"]
                .as_str()
                .unwrap()
                .to_string()
        }
    }

    async fn lab_with(peers: Peers) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(BlobStore::open(dir.path().join("registry")).await.unwrap());
        let catalog = Arc::new(MemCatalog::default());
        let peers = Arc::new(peers);
        let app = router(Registry {
            store: store.clone(),
            catalog: catalog.clone(),
            source: Some(peers.clone()),
            swarm: Arc::new(crate::registry::swarm::Swarm::new(store.clone())),
        });
        Lab {
            _dir: dir,
            app,
            catalog,
            store,
            peers,
        }
    }

    async fn lab() -> Lab {
        lab_with(Peers::default()).await
    }

    /// A registry of this node's blobs alone (`source: None`).
    async fn lab_alone() -> Lab {
        let mut lab = lab().await;
        lab.app = router(Registry {
            store: lab.store.clone(),
            catalog: lab.catalog.clone(),
            source: None,
            swarm: Arc::new(crate::registry::swarm::Swarm::new(lab.store.clone())),
        });
        lab
    }

    impl Lab {
        async fn send(
            &self,
            method: &str,
            uri: &str,
            headers: &[(&str, &str)],
            body: impl Into<Body>,
        ) -> Answer {
            let mut req = Request::builder().method(method).uri(uri);
            for (k, v) in headers {
                req = req.header(*k, HeaderValue::from_str(v).unwrap());
            }
            let resp = self
                .app
                .clone()
                .oneshot(req.body(body.into()).unwrap())
                .await
                .unwrap();
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap();
            Answer {
                status,
                headers,
                body,
            }
        }

        async fn get(&self, uri: &str) -> Answer {
            self.send("GET", uri, &[], Body::empty()).await
        }

        /// A blob pushed in one POST.
        async fn push_blob(&self, repo: &str, bytes: &[u8]) -> Digest {
            let digest = Digest::of(bytes);
            let a = self
                .send(
                    "POST",
                    &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
                    &[],
                    bytes.to_vec(),
                )
                .await;
            assert_eq!(a.status, StatusCode::CREATED);
            digest
        }

        async fn put_manifest(
            &self,
            repo: &str,
            reference: &str,
            media_type: &str,
            bytes: &[u8],
        ) -> Answer {
            self.send(
                "PUT",
                &format!("/v2/{repo}/manifests/{reference}"),
                &[("content-type", media_type)],
                bytes.to_vec(),
            )
            .await
        }

        /// An image manifest of a config and one layer, both pushed.
        async fn push_image(&self, repo: &str, tag: &str, layer: &[u8]) -> (Digest, Vec<u8>) {
            let config = self.push_blob(repo, b"{}").await;
            let layer = self.push_blob(repo, layer).await;
            let bytes = image_manifest(&config, &layer);
            let a = self.put_manifest(repo, tag, OCI_MANIFEST, &bytes).await;
            assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
            (Digest::of(&bytes), bytes)
        }
    }

    fn image_manifest(config: &Digest, layer: &Digest) -> Vec<u8> {
        serde_json::to_vec_pretty(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.as_str(), "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.as_str(), "size": 5}],
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn the_base_answers_the_api_version() {
        let lab = lab().await;
        let a = lab.get("/v2/").await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.header("docker-distribution-api-version"), "registry/2.0");
        assert_eq!(a.json(), serde_json::json!({}));
    }

    #[tokio::test]
    async fn a_monolithic_push_is_served_and_held() {
        let lab = lab().await;
        let digest = Digest::of(b"layer");
        let a = lab
            .send(
                "POST",
                &format!("/v2/library/app/blobs/uploads/?digest={digest}"),
                &[("content-type", "application/octet-stream")],
                &b"layer"[..],
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED);
        assert_eq!(
            a.header("location"),
            format!("/v2/library/app/blobs/{digest}")
        );
        assert_eq!(a.header("docker-content-digest"), digest.as_str());
        assert_eq!(
            lab.catalog.state.lock().unwrap().blobs.get(&digest),
            Some(&5)
        );

        let a = lab.get(&format!("/v2/library/app/blobs/{digest}")).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(&a.body[..], b"layer");
        assert_eq!(a.header("content-length"), "5");
        assert_eq!(a.header("content-type"), "application/octet-stream");
        assert_eq!(a.header("docker-content-digest"), digest.as_str());

        // Any repository's URL serves it: blobs are the registry's.
        let a = lab
            .send(
                "HEAD",
                &format!("/v2/other/blobs/{digest}"),
                &[],
                Body::empty(),
            )
            .await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.header("content-length"), "5");
        assert!(a.body.is_empty());
    }

    #[tokio::test]
    async fn a_post_then_put_push() {
        let lab = lab().await;
        let a = lab
            .send("POST", "/v2/app/blobs/uploads/", &[], Body::empty())
            .await;
        assert_eq!(a.status, StatusCode::ACCEPTED);
        let id = a.header("docker-upload-uuid").to_string();
        assert_eq!(a.header("location"), format!("/v2/app/blobs/uploads/{id}"));
        assert_eq!(a.header("range"), "0-0");
        let digest = Digest::of(b"whole");
        let a = lab
            .send(
                "PUT",
                &format!("/v2/app/blobs/uploads/{id}?digest={digest}"),
                &[],
                &b"whole"[..],
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED);
        assert_eq!(a.header("location"), format!("/v2/app/blobs/{digest}"));
        assert_eq!(a.header("docker-content-digest"), digest.as_str());
        assert_eq!(lab.store.size(&digest).await, Some(5));
    }

    #[tokio::test]
    async fn a_chunked_push_with_content_ranges() {
        let lab = lab().await;
        let a = lab
            .send("POST", "/v2/app/blobs/uploads/", &[], Body::empty())
            .await;
        let location = a.header("location").to_string();
        let a = lab
            .send("PATCH", &location, &[("content-range", "0-2")], &b"abc"[..])
            .await;
        assert_eq!(a.status, StatusCode::ACCEPTED);
        assert_eq!(a.header("range"), "0-2");
        assert_eq!(a.header("location"), location);
        let a = lab
            .send("PATCH", &location, &[("content-range", "3-5")], &b"def"[..])
            .await;
        assert_eq!(a.status, StatusCode::ACCEPTED);
        assert_eq!(a.header("range"), "0-5");
        // Without Content-Range a chunk goes at the end.
        let a = lab.send("PATCH", &location, &[], &b"g"[..]).await;
        assert_eq!(a.header("range"), "0-6");

        let a = lab.get(&location).await;
        assert_eq!(a.status, StatusCode::NO_CONTENT);
        assert_eq!(a.header("range"), "0-6");
        assert_eq!(a.header("location"), location);

        let digest = Digest::of(b"abcdefg");
        let a = lab
            .send(
                "PUT",
                &format!("{location}?digest={digest}"),
                &[],
                Body::empty(),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED);
        assert_eq!(a.header("docker-content-digest"), digest.as_str());
        let a = lab.get(&format!("/v2/app/blobs/{digest}")).await;
        assert_eq!(&a.body[..], b"abcdefg");
        // The upload is gone once committed.
        assert_eq!(lab.get(&location).await.code(), "BLOB_UPLOAD_UNKNOWN");
    }

    #[tokio::test]
    async fn an_out_of_order_chunk_is_416_and_changes_nothing() {
        let lab = lab().await;
        let location = lab
            .send("POST", "/v2/app/blobs/uploads/", &[], Body::empty())
            .await
            .header("location")
            .to_string();
        lab.send("PATCH", &location, &[("content-range", "0-2")], &b"abc"[..])
            .await;
        let a = lab
            .send("PATCH", &location, &[("content-range", "5-7")], &b"xyz"[..])
            .await;
        assert_eq!(a.status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(a.code(), "BLOB_UPLOAD_INVALID");
        let a = lab
            .send(
                "PATCH",
                &location,
                &[("content-range", "nonsense")],
                &b"xyz"[..],
            )
            .await;
        assert_eq!(a.status, StatusCode::RANGE_NOT_SATISFIABLE);
        // The final chunk out of order too.
        let digest = Digest::of(b"abcxyz");
        let a = lab
            .send(
                "PUT",
                &format!("{location}?digest={digest}"),
                &[("content-range", "0-2")],
                &b"xyz"[..],
            )
            .await;
        assert_eq!(a.status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(lab.get(&location).await.header("range"), "0-2");
    }

    #[tokio::test]
    async fn a_wrong_digest_is_digest_invalid_and_never_served() {
        let lab = lab().await;
        let location = lab
            .send("POST", "/v2/app/blobs/uploads/", &[], Body::empty())
            .await
            .header("location")
            .to_string();
        let claimed = Digest::of(b"good");
        let a = lab
            .send(
                "PUT",
                &format!("{location}?digest={claimed}"),
                &[],
                &b"evil"[..],
            )
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        assert_eq!(a.code(), "DIGEST_INVALID");
        for method in ["GET", "HEAD"] {
            let a = lab
                .send(
                    method,
                    &format!("/v2/app/blobs/{claimed}"),
                    &[],
                    Body::empty(),
                )
                .await;
            assert_eq!(a.status, StatusCode::NOT_FOUND, "{method}");
        }
        assert_eq!(
            lab.get(&format!("/v2/app/blobs/{claimed}")).await.code(),
            "BLOB_UNKNOWN"
        );
        assert!(lab.catalog.state.lock().unwrap().blobs.is_empty());
        // The upload went with it.
        assert_eq!(lab.get(&location).await.code(), "BLOB_UPLOAD_UNKNOWN");

        // In one POST as well.
        let a = lab
            .send(
                "POST",
                &format!("/v2/app/blobs/uploads/?digest={claimed}"),
                &[],
                &b"evil"[..],
            )
            .await;
        assert_eq!(a.code(), "DIGEST_INVALID");
        assert_eq!(lab.store.size(&claimed).await, None);
        // No digest at all.
        let location = lab
            .send("POST", "/v2/app/blobs/uploads/", &[], Body::empty())
            .await
            .header("location")
            .to_string();
        let a = lab.send("PUT", &location, &[], Body::empty()).await;
        assert_eq!(
            (a.status, a.code().as_str()),
            (StatusCode::BAD_REQUEST, "DIGEST_INVALID")
        );
    }

    #[tokio::test]
    async fn unknown_and_malformed_upload_ids_are_upload_unknown() {
        let lab = lab().await;
        let digest = Digest::of(b"x");
        let fetch_id = lab.store.fetch_upload(&digest).await.unwrap();
        for id in [
            "0123456789abcdef0123456789abcdef".to_string(),
            "../x".to_string(),
            "..%2Fx".to_string(),
            "..".to_string(),
            fetch_id.to_string(),
        ] {
            let uri = format!("/v2/app/blobs/uploads/{id}");
            for (method, uri) in [
                ("GET", uri.clone()),
                ("PATCH", uri.clone()),
                ("PUT", format!("{uri}?digest={digest}")),
                ("DELETE", uri.clone()),
            ] {
                let a = lab.send(method, &uri, &[], &b"x"[..]).await;
                assert_eq!(a.status, StatusCode::NOT_FOUND, "{method} {uri}");
                assert_eq!(a.code(), "BLOB_UPLOAD_UNKNOWN", "{method} {uri}");
            }
        }
        // A client cannot write into a fetch.
        assert_eq!(lab.store.upload_size(&fetch_id).await.unwrap(), Some(0));
        assert_eq!(lab.store.size(&digest).await, None);
    }

    #[tokio::test]
    async fn a_cancelled_upload_is_gone() {
        let lab = lab().await;
        let location = lab
            .send("POST", "/v2/app/blobs/uploads/", &[], Body::empty())
            .await
            .header("location")
            .to_string();
        let a = lab.send("DELETE", &location, &[], Body::empty()).await;
        assert_eq!(a.status, StatusCode::NO_CONTENT);
        assert_eq!(lab.get(&location).await.status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn bad_names_are_name_invalid() {
        let lab = lab().await;
        let digest = Digest::of(b"x");
        for name in ["../etc", "Bad", "a//b", "a%2Fb", "-a"] {
            for (method, uri) in [
                ("GET", format!("/v2/{name}/tags/list")),
                ("GET", format!("/v2/{name}/manifests/latest")),
                ("PUT", format!("/v2/{name}/manifests/latest")),
                ("GET", format!("/v2/{name}/blobs/{digest}")),
                ("POST", format!("/v2/{name}/blobs/uploads/")),
                ("PATCH", format!("/v2/{name}/blobs/uploads/../x")),
            ] {
                let a = lab.send(method, &uri, &[], Body::empty()).await;
                assert_eq!(a.status, StatusCode::BAD_REQUEST, "{method} {uri}");
                assert_eq!(a.code(), "NAME_INVALID", "{method} {uri}");
            }
        }
        let a = lab
            .send(
                "POST",
                &format!("/v2/app/blobs/uploads/?mount={digest}&from=../etc"),
                &[],
                Body::empty(),
            )
            .await;
        assert_eq!(a.code(), "NAME_INVALID");
    }

    #[tokio::test]
    async fn bad_digests_and_tags_are_refused_before_anything_else() {
        let lab = lab().await;
        let a = lab.get("/v2/app/blobs/sha256:zz").await;
        assert_eq!(
            (a.status, a.code().as_str()),
            (StatusCode::BAD_REQUEST, "DIGEST_INVALID")
        );
        let a = lab
            .get(&format!("/v2/app/blobs/sha512:{}", "a".repeat(128)))
            .await;
        assert_eq!(
            (a.status, a.code().as_str()),
            (StatusCode::BAD_REQUEST, "UNSUPPORTED")
        );
        let a = lab.get("/v2/app/manifests/.bad").await;
        assert_eq!(
            (a.status, a.code().as_str()),
            (StatusCode::BAD_REQUEST, "MANIFEST_INVALID")
        );
        let a = lab.get("/v2/app/manifests/sha256:zz").await;
        assert_eq!(a.code(), "DIGEST_INVALID");
        let a = lab
            .send(
                "POST",
                "/v2/app/blobs/uploads/?digest=sha256:zz",
                &[],
                &b"x"[..],
            )
            .await;
        assert_eq!(a.code(), "DIGEST_INVALID");
    }

    #[tokio::test]
    async fn a_known_blob_mounts_and_an_unknown_one_starts_an_upload() {
        let lab = lab().await;
        let digest = lab.push_blob("one", b"shared").await;
        let a = lab
            .send(
                "POST",
                &format!("/v2/two/blobs/uploads/?mount={digest}&from=one"),
                &[],
                Body::empty(),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED);
        assert_eq!(a.header("location"), format!("/v2/two/blobs/{digest}"));
        assert_eq!(a.header("docker-content-digest"), digest.as_str());

        // One only the catalog knows (another node holds it) mounts too.
        let elsewhere = Digest::of(b"elsewhere");
        lab.catalog
            .state
            .lock()
            .unwrap()
            .blobs
            .insert(elsewhere.clone(), 9);
        let a = lab
            .send(
                "POST",
                &format!("/v2/two/blobs/uploads/?mount={elsewhere}&from=one"),
                &[],
                Body::empty(),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED);

        let unknown = Digest::of(b"nowhere");
        let a = lab
            .send(
                "POST",
                &format!("/v2/two/blobs/uploads/?mount={unknown}&from=one"),
                &[],
                Body::empty(),
            )
            .await;
        assert_eq!(a.status, StatusCode::ACCEPTED);
        assert!(a.header("location").starts_with("/v2/two/blobs/uploads/"));
        assert_eq!(a.header("range"), "0-0");
    }

    #[tokio::test]
    async fn a_manifest_naming_a_missing_blob_is_manifest_blob_unknown() {
        let lab = lab().await;
        let config = lab.push_blob("app", b"{}").await;
        let missing = Digest::of(b"never pushed");
        let bytes = image_manifest(&config, &missing);
        let a = lab.put_manifest("app", "v1", OCI_MANIFEST, &bytes).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        assert_eq!(a.code(), "MANIFEST_BLOB_UNKNOWN");
        assert_eq!(a.json()["errors"][0]["detail"]["digest"], missing.as_str());
        assert_eq!(lab.get("/v2/app/manifests/v1").await.code(), "NAME_UNKNOWN");
    }

    #[tokio::test]
    async fn a_manifest_round_trips_by_tag_and_digest() {
        let lab = lab().await;
        let config = lab.push_blob("library/app", b"{}").await;
        let layer = lab.push_blob("library/app", b"layer").await;
        // Docker's type, and bytes whose whitespace a re-serialization would lose.
        let bytes = format!(
            "{{\n   \"schemaVersion\": 2,\n   \"mediaType\": \"{DOCKER_MANIFEST}\",\n   \"config\": {{\"digest\": \"{config}\"}},\n   \"layers\": [{{\"digest\": \"{layer}\"}}]\n}}"
        )
        .into_bytes();
        let digest = Digest::of(&bytes);
        let a = lab
            .put_manifest("library/app", "v2", DOCKER_MANIFEST, &bytes)
            .await;
        assert_eq!(a.status, StatusCode::CREATED);
        assert_eq!(
            a.header("location"),
            format!("/v2/library/app/manifests/{digest}")
        );
        assert_eq!(a.header("docker-content-digest"), digest.as_str());

        for uri in [
            "/v2/library/app/manifests/v2".to_string(),
            format!("/v2/library/app/manifests/{digest}"),
        ] {
            let a = lab.get(&uri).await;
            assert_eq!(a.status, StatusCode::OK, "{uri}");
            assert_eq!(&a.body[..], &bytes[..]);
            assert_eq!(a.header("content-type"), DOCKER_MANIFEST);
            assert_eq!(a.header("docker-content-digest"), digest.as_str());
            assert_eq!(a.header("content-length"), bytes.len().to_string());

            let a = lab.send("HEAD", &uri, &[], Body::empty()).await;
            assert_eq!(a.status, StatusCode::OK);
            assert!(a.body.is_empty());
            assert_eq!(a.header("content-length"), bytes.len().to_string());
            assert_eq!(a.header("docker-content-digest"), digest.as_str());
            assert_eq!(a.header("content-type"), DOCKER_MANIFEST);
        }
        let a = lab.get("/v2/library/app/manifests/v3").await;
        assert_eq!(
            (a.status, a.code().as_str()),
            (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN")
        );
        let a = lab
            .send("HEAD", "/v2/library/app/manifests/v3", &[], Body::empty())
            .await;
        assert_eq!(a.status, StatusCode::NOT_FOUND);

        // By digest, no tag: it needs no Content-Type when the manifest says its type.
        let (other, _) = {
            let bytes = image_manifest(&config, &layer);
            let d = Digest::of(&bytes);
            let a = lab
                .send(
                    "PUT",
                    &format!("/v2/library/app/manifests/{d}"),
                    &[],
                    bytes.clone(),
                )
                .await;
            assert_eq!(a.status, StatusCode::CREATED);
            (d, bytes)
        };
        assert_eq!(
            lab.get(&format!("/v2/library/app/manifests/{other}"))
                .await
                .header("content-type"),
            OCI_MANIFEST
        );
    }

    #[tokio::test]
    async fn a_manifest_pushed_by_digest_takes_tags_from_the_query() {
        let lab = lab().await;
        let (_, bytes) = lab.push_image("app", "v1", b"layer").await;
        let digest = Digest::of(&bytes);
        let a = lab
            .put_manifest(
                "app",
                &format!("{digest}?tag=1.2&tag=latest"),
                OCI_MANIFEST,
                &bytes,
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED);
        let oci_tags: Vec<_> = a
            .headers
            .get_all("oci-tag")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(oci_tags, ["1.2", "latest"]);
        let a = lab.get("/v2/app/tags/list").await;
        assert_eq!(a.json()["tags"], serde_json::json!(["1.2", "latest", "v1"]));
        let a = lab
            .put_manifest("app", &format!("{digest}?tag=.bad"), OCI_MANIFEST, &bytes)
            .await;
        assert_eq!(a.code(), "MANIFEST_INVALID");
    }

    #[tokio::test]
    async fn bad_manifests_are_refused() {
        let lab = lab().await;
        let a = lab
            .put_manifest("app", "v1", OCI_MANIFEST, b"{not json")
            .await;
        assert_eq!(
            (a.status, a.code().as_str()),
            (StatusCode::BAD_REQUEST, "MANIFEST_INVALID")
        );
        let a = lab
            .put_manifest("app", "v1", OCI_MANIFEST, br#"{"schemaVersion":2}"#)
            .await;
        assert_eq!(a.code(), "MANIFEST_INVALID");
        let a = lab
            .put_manifest(
                "app",
                "v1",
                DOCKER_MANIFEST,
                format!(r#"{{"mediaType":"{OCI_MANIFEST}"}}"#).as_bytes(),
            )
            .await;
        assert_eq!(a.code(), "MANIFEST_INVALID");
        let a = lab
            .send(
                "PUT",
                "/v2/app/manifests/v1",
                &[],
                &br#"{"schemaVersion":2}"#[..],
            )
            .await;
        assert_eq!(a.code(), "MANIFEST_INVALID");

        let (_, bytes) = lab.push_image("app", "v1", b"layer").await;
        let wrong = Digest::of(b"other");
        let a = lab
            .put_manifest("app", wrong.as_str(), OCI_MANIFEST, &bytes)
            .await;
        assert_eq!(
            (a.status, a.code().as_str()),
            (StatusCode::BAD_REQUEST, "DIGEST_INVALID")
        );
        assert_eq!(
            lab.get(&format!("/v2/app/manifests/{wrong}")).await.status,
            StatusCode::NOT_FOUND
        );

        let huge = vec![b' '; MAX_MANIFEST + 1];
        let a = lab.put_manifest("app", "v1", OCI_MANIFEST, &huge).await;
        assert_eq!(
            (a.status, a.code().as_str()),
            (StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID")
        );
    }

    #[tokio::test]
    async fn an_index_needs_its_manifests_in_the_repository() {
        let lab = lab().await;
        let (image, _) = lab.push_image("app", "amd64", b"layer").await;
        let missing = Digest::of(b"arm64 manifest");
        let index = |digests: &[&Digest]| {
            serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": digests.iter().map(|d| serde_json::json!({"mediaType": OCI_MANIFEST, "digest": d.as_str(), "size": 1})).collect::<Vec<_>>(),
            }))
            .unwrap()
        };
        let a = lab
            .put_manifest("app", "multi", OCI_INDEX, &index(&[&image, &missing]))
            .await;
        assert_eq!(a.code(), "MANIFEST_BLOB_UNKNOWN");
        assert_eq!(a.json()["errors"][0]["detail"]["digest"], missing.as_str());
        // Another repository's manifest is not this one's.
        let a = lab
            .put_manifest("other", "multi", OCI_INDEX, &index(&[&image]))
            .await;
        assert_eq!(a.code(), "MANIFEST_BLOB_UNKNOWN");
        let a = lab
            .put_manifest("app", "multi", OCI_INDEX, &index(&[&image]))
            .await;
        assert_eq!(a.status, StatusCode::CREATED);
        assert_eq!(
            lab.get("/v2/app/manifests/multi")
                .await
                .header("content-type"),
            OCI_INDEX
        );
    }

    #[tokio::test]
    async fn deleting_a_manifest_deletes_its_tags_and_deleting_a_tag_only_the_tag() {
        let lab = lab().await;
        let (digest, _) = lab.push_image("app", "v1", b"layer").await;
        let a = lab
            .put_manifest(
                "app",
                "v2",
                OCI_MANIFEST,
                &image_manifest(&Digest::of(b"{}"), &Digest::of(b"layer")),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED);

        let a = lab
            .send("DELETE", "/v2/app/manifests/v2", &[], Body::empty())
            .await;
        assert_eq!(a.status, StatusCode::ACCEPTED);
        assert_eq!(
            lab.get("/v2/app/manifests/v2").await.code(),
            "MANIFEST_UNKNOWN"
        );
        assert_eq!(lab.get("/v2/app/manifests/v1").await.status, StatusCode::OK);

        let a = lab
            .send(
                "DELETE",
                &format!("/v2/app/manifests/{digest}"),
                &[],
                Body::empty(),
            )
            .await;
        assert_eq!(a.status, StatusCode::ACCEPTED);
        for uri in [
            "/v2/app/manifests/v1".to_string(),
            format!("/v2/app/manifests/{digest}"),
        ] {
            let a = lab.get(&uri).await;
            assert_eq!(
                (a.status, a.code().as_str()),
                (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
                "{uri}"
            );
        }
        let a = lab
            .send(
                "DELETE",
                &format!("/v2/app/manifests/{digest}"),
                &[],
                Body::empty(),
            )
            .await;
        assert_eq!(
            (a.status, a.code().as_str()),
            (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN")
        );
        let a = lab
            .send("DELETE", "/v2/app/manifests/v9", &[], Body::empty())
            .await;
        assert_eq!(a.code(), "MANIFEST_UNKNOWN");
    }

    #[tokio::test]
    async fn tags_are_listed_in_order_and_paginated_with_a_link() {
        let lab = lab().await;
        let (digest, bytes) = lab.push_image("library/app", "v1", b"layer").await;
        for tag in ["latest", "v2", "A", "v10"] {
            let a = lab
                .put_manifest("library/app", tag, OCI_MANIFEST, &bytes)
                .await;
            assert_eq!(a.status, StatusCode::CREATED);
        }
        assert_eq!(Digest::of(&bytes), digest);
        let a = lab.get("/v2/library/app/tags/list").await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(
            a.json(),
            serde_json::json!({"name": "library/app", "tags": ["A", "latest", "v1", "v10", "v2"]})
        );
        assert!(a.headers.get("link").is_none());

        let a = lab.get("/v2/library/app/tags/list?n=2").await;
        assert_eq!(a.json()["tags"], serde_json::json!(["A", "latest"]));
        assert_eq!(
            a.header("link"),
            r#"</v2/library/app/tags/list?n=2&last=latest>; rel="next""#
        );
        let a = lab.get("/v2/library/app/tags/list?n=2&last=latest").await;
        assert_eq!(a.json()["tags"], serde_json::json!(["v1", "v10"]));
        assert_eq!(
            a.header("link"),
            r#"</v2/library/app/tags/list?n=2&last=v10>; rel="next""#
        );
        let a = lab.get("/v2/library/app/tags/list?n=2&last=v10").await;
        assert_eq!(a.json()["tags"], serde_json::json!(["v2"]));
        assert!(a.headers.get("link").is_none());
        let a = lab.get("/v2/library/app/tags/list?last=v1").await;
        assert_eq!(a.json()["tags"], serde_json::json!(["v10", "v2"]));
        let a = lab.get("/v2/library/app/tags/list?n=0").await;
        assert_eq!(a.json()["tags"], serde_json::json!([]));
        assert!(a.headers.get("link").is_none());
        let a = lab.get("/v2/library/app/tags/list?n=x").await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);

        let a = lab.get("/v2/nothing/tags/list").await;
        assert_eq!(
            (a.status, a.code().as_str()),
            (StatusCode::NOT_FOUND, "NAME_UNKNOWN")
        );
    }

    #[tokio::test]
    async fn the_catalog_lists_repositories_paginated() {
        let lab = lab().await;
        for repo in ["b", "a/x", "c"] {
            lab.push_image(repo, "v1", b"layer").await;
        }
        let a = lab.get("/v2/_catalog").await;
        assert_eq!(
            a.json(),
            serde_json::json!({"repositories": ["a/x", "b", "c"]})
        );
        let a = lab.get("/v2/_catalog?n=1").await;
        assert_eq!(a.json(), serde_json::json!({"repositories": ["a/x"]}));
        assert_eq!(
            a.header("link"),
            r#"</v2/_catalog?n=1&last=a/x>; rel="next""#
        );
        let a = lab.get("/v2/_catalog?n=5&last=a/x").await;
        assert_eq!(a.json(), serde_json::json!({"repositories": ["b", "c"]}));
        assert!(a.headers.get("link").is_none());
    }

    #[tokio::test]
    async fn a_blob_range_is_206_and_an_unsatisfiable_one_416() {
        let lab = lab().await;
        let digest = lab.push_blob("app", b"0123456789").await;
        let uri = format!("/v2/app/blobs/{digest}");
        for (range, want, content_range) in [
            ("bytes=2-4", &b"234"[..], "bytes 2-4/10"),
            ("bytes=7-", b"789", "bytes 7-9/10"),
            ("bytes=-3", b"789", "bytes 7-9/10"),
            ("bytes=8-100", b"89", "bytes 8-9/10"),
        ] {
            let a = lab
                .send("GET", &uri, &[("range", range)], Body::empty())
                .await;
            assert_eq!(a.status, StatusCode::PARTIAL_CONTENT, "{range}");
            assert_eq!(&a.body[..], want, "{range}");
            assert_eq!(a.header("content-range"), content_range);
            assert_eq!(a.header("content-length"), want.len().to_string());
            assert_eq!(a.header("docker-content-digest"), digest.as_str());
        }
        let a = lab
            .send("GET", &uri, &[("range", "bytes=10-12")], Body::empty())
            .await;
        assert_eq!(a.status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(a.header("content-range"), "bytes */10");
        // Several ranges, or none that parses: the whole blob.
        let a = lab
            .send("GET", &uri, &[("range", "bytes=0-1,4-5")], Body::empty())
            .await;
        assert_eq!(
            (a.status, &a.body[..]),
            (StatusCode::OK, &b"0123456789"[..])
        );
    }

    #[tokio::test]
    async fn a_blob_another_node_holds_is_fetched_then_served() {
        let bytes = Bytes::from_static(b"from a peer");
        let digest = Digest::of(&bytes);
        let mut peers = Peers::default();
        peers.blobs.insert(digest.clone(), bytes.clone());
        let lab = lab_with(peers).await;
        lab.catalog
            .state
            .lock()
            .unwrap()
            .blobs
            .insert(digest.clone(), 11);
        let uri = format!("/v2/app/blobs/{digest}");

        let a = lab.send("HEAD", &uri, &[], Body::empty()).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.header("content-length"), "11");
        assert_eq!(a.header("docker-content-digest"), digest.as_str());
        assert_eq!(lab.peers.fetches.load(Ordering::SeqCst), 0);

        let a = lab.get(&uri).await;
        assert_eq!((a.status, &a.body[..]), (StatusCode::OK, &bytes[..]));
        assert_eq!(lab.peers.fetches.load(Ordering::SeqCst), 1);
        assert_eq!(lab.store.size(&digest).await, Some(11));

        // Known to the catalog but no holder answers: 503, not 404.
        let gone = Digest::of(b"holder is down");
        lab.catalog
            .state
            .lock()
            .unwrap()
            .blobs
            .insert(gone.clone(), 3);
        let a = lab.get(&format!("/v2/app/blobs/{gone}")).await;
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
        let a = lab
            .get(&format!("/v2/app/blobs/{}", Digest::of(b"unknown")))
            .await;
        assert_eq!(
            (a.status, a.code().as_str()),
            (StatusCode::NOT_FOUND, "BLOB_UNKNOWN")
        );
    }

    #[tokio::test]
    async fn without_a_source_only_this_nodes_blobs_are_served() {
        let lab = lab_alone().await;
        let elsewhere = Digest::of(b"elsewhere");
        lab.catalog
            .state
            .lock()
            .unwrap()
            .blobs
            .insert(elsewhere.clone(), 9);
        for method in ["GET", "HEAD"] {
            let a = lab
                .send(
                    method,
                    &format!("/v2/app/blobs/{elsewhere}"),
                    &[],
                    Body::empty(),
                )
                .await;
            assert_eq!(a.status, StatusCode::NOT_FOUND, "{method}");
        }
        let here = lab.push_blob("app", b"here").await;
        assert_eq!(
            lab.get(&format!("/v2/app/blobs/{here}")).await.status,
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn a_large_blob_is_streamed_in_and_out() {
        let lab = lab().await;
        // Over axum's 2 MB default body limit, which applies to buffered bodies only.
        let bytes: Vec<u8> = (0..5 * 1024 * 1024 + 7).map(|i| (i % 251) as u8).collect();
        let digest = lab.push_blob("app", &bytes).await;
        let location = lab
            .send("POST", "/v2/app/blobs/uploads/", &[], Body::empty())
            .await
            .header("location")
            .to_string();
        let (first, second) = bytes.split_at(3 * 1024 * 1024);
        let a = lab
            .send(
                "PATCH",
                &location,
                &[("content-range", &format!("0-{}", first.len() - 1))],
                first.to_vec(),
            )
            .await;
        assert_eq!(a.header("range"), format!("0-{}", first.len() - 1));
        let a = lab
            .send(
                "PUT",
                &format!("{location}?digest={digest}"),
                &[],
                second.to_vec(),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED);
        let a = lab.get(&format!("/v2/app/blobs/{digest}")).await;
        assert_eq!(a.body.len(), bytes.len());
        assert!(a.body == bytes);
    }

    #[tokio::test]
    async fn blobs_are_not_deleted_through_the_api() {
        let lab = lab().await;
        let digest = lab.push_blob("app", b"keep").await;
        let a = lab
            .send(
                "DELETE",
                &format!("/v2/app/blobs/{digest}"),
                &[],
                Body::empty(),
            )
            .await;
        assert_eq!(
            (a.status, a.code().as_str()),
            (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED")
        );
        assert_eq!(lab.store.size(&digest).await, Some(4));
    }

    #[tokio::test]
    async fn unknown_routes_and_methods_are_json_errors() {
        let lab = lab().await;
        for uri in ["/v2/app/nothing", "/v1/", "/v2/app/referrers/x", "/"] {
            let a = lab.get(uri).await;
            assert_eq!(a.status, StatusCode::NOT_FOUND, "{uri}");
            assert_eq!(a.code(), "UNSUPPORTED");
        }
        let a = lab
            .send("POST", "/v2/app/manifests/v1", &[], Body::empty())
            .await;
        assert_eq!(
            (a.status, a.code().as_str()),
            (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED")
        );
        assert_eq!(a.header("docker-distribution-api-version"), "registry/2.0");
    }

    #[tokio::test]
    async fn a_catalog_failure_is_503_with_its_message() {
        let lab = lab().await;
        let (digest, bytes) = lab.push_image("app", "v1", b"layer").await;
        lab.catalog.down.store(true, Ordering::SeqCst);
        for a in [
            lab.get("/v2/app/manifests/v1").await,
            lab.get("/v2/app/tags/list").await,
            lab.get("/v2/_catalog").await,
            lab.put_manifest("app", "v2", OCI_MANIFEST, &bytes).await,
            lab.send(
                "DELETE",
                &format!("/v2/app/manifests/{digest}"),
                &[],
                Body::empty(),
            )
            .await,
        ] {
            assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(a.code(), "UNAVAILABLE");
            assert!(
                a.json()["errors"][0]["message"]
                    .as_str()
                    .unwrap()
                    .contains("Consul is down")
            );
        }
    }

    #[test]
    fn a_full_disk_is_507_naming_the_directory() {
        let e = store_error(StoreError::DiskFull {
            dir: "/var/lib/arpanet/registry".into(),
        });
        assert_eq!(e.status, StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(e.message, "/var/lib/arpanet/registry is full");
        let e = fetch_error(FetchError::Store(StoreError::DiskFull { dir: "/x".into() }));
        assert_eq!(e.status, StatusCode::INSUFFICIENT_STORAGE);
    }

    #[test]
    fn routes_split_at_the_last_marker() {
        assert_eq!(
            parse_route("a/blobs/b/manifests/v1"),
            Some(Route::Manifest("a/blobs/b", "v1"))
        );
        assert_eq!(
            parse_route("a/manifests/b/blobs/x"),
            Some(Route::Blob("a/manifests/b", "x"))
        );
        assert_eq!(parse_route("a/blobs/uploads/"), Some(Route::Uploads("a")));
        assert_eq!(parse_route("a/blobs/uploads"), Some(Route::Uploads("a")));
        assert_eq!(
            parse_route("a/blobs/uploads/../x"),
            Some(Route::Upload("a", "../x"))
        );
        assert_eq!(parse_route("a/tags/list"), Some(Route::Tags("a")));
        assert_eq!(parse_route("_catalog"), Some(Route::Catalog));
        assert_eq!(parse_route("a/other"), None);
    }
}
