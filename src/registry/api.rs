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

use super::spec::{Digest, ErrorCode, Reference, ReferenceError, RegistryError, RepoName};
use super::store::{StoreError, UploadId};
use super::{CatalogError, FetchError, Manifest, Registry};

/// The largest manifest accepted; the spec asks registries to take at least 4 MB.
pub const MAX_MANIFEST: usize = 4 << 20;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

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
        .map_err(|e| RegistryError::new(ErrorCode::Unsupported, e.body_text()))
        .map_err(|e| e.with_status(StatusCode::BAD_REQUEST))?;
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
                // The spec has no TAG_INVALID; Docker's registry answers this.
                ReferenceError::Tag(m) => RegistryError::new(ErrorCode::ManifestInvalid, m),
                ReferenceError::Digest(e) => e.into(),
            })?;
            match method {
                Method::GET => get_manifest(reg, &name, &reference, false).await,
                Method::HEAD => get_manifest(reg, &name, &reference, true).await,
                Method::PUT => put_manifest(reg, &name, &reference, &headers, body).await,
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
    let (mut file, size) = match reg.store.open_blob(digest).await.map_err(store_error)? {
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
    blob_created(name, &digest)
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
    headers: &HeaderMap,
    body: Body,
) -> ApiResult {
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
    reg.catalog
        .put_manifest(name, &manifest, tag)
        .await
        .map_err(catalog_error)?;
    Ok(answer(
        StatusCode::CREATED,
        &[
            (
                header::LOCATION.as_str(),
                format!("/v2/{name}/manifests/{digest}"),
            ),
            (DIGEST_HEADER, digest.to_string()),
        ],
    )
    .header(header::CONTENT_LENGTH, 0)
    .body(Body::empty())?)
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
    let digest = descriptor
        .get("digest")
        .and_then(|d| d.as_str())
        .ok_or_else(|| {
            RegistryError::new(ErrorCode::ManifestInvalid, "a descriptor has no digest")
        })?;
    Digest::parse(digest).map_err(|e| RegistryError::new(ErrorCode::ManifestInvalid, e.to_string()))
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
        self.0
            .iter()
            .find(|(k, _)| k == key)
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
