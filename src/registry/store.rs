//! The node's blob store: a directory of blobs named by their sha256, each checked
//! against its digest before it lands, so a blob read from here is what its name says.
//!
//! `blobs/sha256/<hex>` holds finished blobs (files 0600, directories 0700);
//! `uploads/<id>` the uploads in progress. An upload becomes a blob by one rename after
//! its hash matched: a reader never sees half a blob or bytes that are not its digest's.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest as _, Sha256};
use tokio::fs;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::spec::Digest;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// One line naming the directory, as the image sync service says it (HTTP 507).
    #[error("{} is full", dir.display())]
    DiskFull { dir: PathBuf },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("no such upload")]
    UnknownUpload,
    /// A chunk that does not start where the upload ends (HTTP 416).
    #[error("the upload has {size} bytes, so the next chunk starts at {size}, not at {at}")]
    RangeMismatch { size: u64, at: u64 },
    /// The upload is deleted: its bytes are not what the client said.
    #[error("the uploaded bytes are {actual}, not {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
    /// The request body broke off; what arrived before stays in the upload.
    #[error("the request body broke off: {0}")]
    Body(String),
}

/// An upload's name, a file name in `uploads/`: 32 lowercase hex digits for a client's
/// upload, `fetch-<hex>` for a fetch from peers. Only the first kind ever comes from a
/// URL ([`UploadId::parse`]), so a client can neither name a path nor a fetch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UploadId(String);

impl UploadId {
    /// A client's upload ID as [`BlobStore::start_upload`] makes them; anything else is
    /// none (the API answers `BLOB_UPLOAD_UNKNOWN`).
    pub fn parse(s: &str) -> Option<Self> {
        let ok = s.len() == 32 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A file's last write; a file system without mtimes makes every file new (kept).
fn modified(meta: &std::fs::Metadata) -> SystemTime {
    meta.modified().unwrap_or_else(|_| SystemTime::now())
}

/// The hash of an upload's first `len` bytes, kept while appending so a commit need not
/// read the upload again. `None`, or a `len` that is not the file's, after a restart or
/// a failed write: then the commit hashes the file.
#[derive(Default)]
struct Hashing {
    len: u64,
    sha: Sha256,
}

type UploadLock = Arc<tokio::sync::Mutex<Option<Hashing>>>;

pub struct BlobStore {
    dir: PathBuf,
    /// One lock per upload, so two requests on one upload (a retried PATCH) take turns.
    uploads: Mutex<HashMap<UploadId, UploadLock>>,
}

impl BlobStore {
    pub async fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let store = Self {
            dir: dir.into(),
            uploads: Mutex::default(),
        };
        for sub in [store.blob_dir(), store.dir.join("uploads")] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&sub)
                .await
                .map_err(store.io_error(format!("create {}", sub.display())))?;
        }
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The size of a stored blob: one that is here was verified when it was committed.
    pub async fn size(&self, digest: &Digest) -> Option<u64> {
        fs::metadata(self.blob_path(digest))
            .await
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    }

    /// A stored blob for reading, and its size; `None` if it is not here.
    pub async fn open_blob(&self, digest: &Digest) -> Result<Option<(fs::File, u64)>, StoreError> {
        let path = self.blob_path(digest);
        let file = match fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io_error(format!("open {}", path.display()))(e)),
        };
        let len = file
            .metadata()
            .await
            .map_err(self.io_error(format!("stat {}", path.display())))?
            .len();
        Ok(Some((file, len)))
    }

    /// Hashes a stored blob again: false if it is not here or its bytes are not its
    /// digest's (a file someone put there by hand; [`BlobStore::remove`] it).
    pub async fn verify(&self, digest: &Digest) -> Result<bool, StoreError> {
        match self.hash_file(&self.blob_path(digest)).await? {
            Some((actual, _)) => Ok(actual == *digest),
            None => Ok(false),
        }
    }

    /// Deletes a stored blob; false if it was not here.
    pub async fn remove(&self, digest: &Digest) -> Result<bool, StoreError> {
        let path = self.blob_path(digest);
        match fs::remove_file(&path).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.io_error(format!("delete {}", path.display()))(e)),
        }
    }

    /// Every stored blob, its size and when it was last written (a committed upload
    /// keeps its last write's time); files whose name is no digest are left out.
    pub async fn blobs(&self) -> Result<Vec<(Digest, u64, SystemTime)>, StoreError> {
        let mut blobs = Vec::new();
        for (name, meta) in self.files(&self.blob_dir()).await? {
            if let Ok(digest) = Digest::parse(&format!("sha256:{name}")) {
                blobs.push((digest, meta.len(), modified(&meta)));
            }
        }
        Ok(blobs)
    }

    /// Every upload in progress (client and fetch uploads) and its last write.
    pub async fn uploads(&self) -> Result<Vec<(String, SystemTime)>, StoreError> {
        Ok(self
            .files(&self.dir.join("uploads"))
            .await?
            .into_iter()
            .map(|(name, meta)| (name, modified(&meta)))
            .collect())
    }

    /// Deletes an upload by the name [`BlobStore::uploads`] gave; false if it was not
    /// there or the name is no upload's.
    pub async fn remove_upload(&self, name: &str) -> Result<bool, StoreError> {
        let fetch = name
            .strip_prefix("fetch-")
            .is_some_and(|hex| Digest::parse(&format!("sha256:{hex}")).is_ok());
        if !fetch && UploadId::parse(name).is_none() {
            return Ok(false);
        }
        self.cancel(&UploadId(name.to_string())).await
    }

    /// The regular files in `dir` with their metadata.
    async fn files(&self, dir: &Path) -> Result<Vec<(String, std::fs::Metadata)>, StoreError> {
        let mut entries = fs::read_dir(dir)
            .await
            .map_err(self.io_error(format!("list {}", dir.display())))?;
        let mut files = Vec::new();
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(self.io_error(format!("list {}", dir.display())))?
        {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            // Gone since the listing (committed, removed): nothing to report.
            let Ok(meta) = entry.metadata().await else {
                continue;
            };
            if meta.is_file() {
                files.push((name, meta));
            }
        }
        Ok(files)
    }

    /// A new, empty client upload.
    pub async fn start_upload(&self) -> Result<UploadId, StoreError> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|e| StoreError::Io {
            what: "make an upload ID".to_string(),
            source: io::Error::other(e.to_string()),
        })?;
        let id = UploadId(bytes.iter().map(|b| format!("{b:02x}")).collect());
        self.create_upload(&id, true).await?;
        Ok(id)
    }

    /// The upload that fetches `digest` from peers: always the same one, so a fetch
    /// that broke off goes on from [`BlobStore::upload_size`] bytes. Its name is no
    /// client upload ID, so no client can write into it.
    pub async fn fetch_upload(&self, digest: &Digest) -> Result<UploadId, StoreError> {
        let id = UploadId(format!("fetch-{}", digest.hex()));
        self.create_upload(&id, false).await?;
        Ok(id)
    }

    /// The file a fetch from peers writes `digest`'s pieces into, wherever they go:
    /// [`BlobStore::fetch_upload`]'s, made `size` bytes long (sparse). Also says
    /// whether it had bytes already (an earlier fetch's, kept for this one).
    pub async fn pull_file(
        &self,
        digest: &Digest,
        size: u64,
    ) -> Result<(UploadId, std::fs::File, bool), StoreError> {
        let id = self.fetch_upload(digest).await?;
        let path = self.upload_path(&id);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(self.io_error(format!("open {}", path.display())))?;
        let had = file
            .metadata()
            .map_err(self.io_error(format!("stat {}", path.display())))?
            .len();
        if had != size {
            file.set_len(size)
                .map_err(self.io_error(format!("size {}", path.display())))?;
        }
        Ok((id, file, had > 0))
    }

    /// Writes a piece at `at` into a [`BlobStore::pull_file`].
    pub async fn write_at(
        &self,
        file: Arc<std::fs::File>,
        at: u64,
        bytes: Bytes,
    ) -> Result<(), StoreError> {
        use std::os::unix::fs::FileExt as _;
        tokio::task::spawn_blocking(move || file.write_all_at(&bytes, at))
            .await
            .expect("writing does not panic")
            .map_err(self.io_error(format!("write a piece into {}", self.dir.display())))
    }

    /// How many bytes the upload has; `None` if there is no such upload.
    pub async fn upload_size(&self, id: &UploadId) -> Result<Option<u64>, StoreError> {
        let path = self.upload_path(id);
        match fs::metadata(&path).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io_error(format!("stat {}", path.display()))(e)),
        }
    }

    /// Appends `body` to the upload and returns its new size. `at` is where the client
    /// says the chunk starts (its Content-Range): anything but the upload's end is
    /// [`StoreError::RangeMismatch`] and changes nothing.
    pub async fn append<E: fmt::Display>(
        &self,
        id: &UploadId,
        at: Option<u64>,
        body: impl Stream<Item = Result<Bytes, E>>,
    ) -> Result<u64, StoreError> {
        let lock = self.lock(id);
        let mut hashing = lock.lock().await;
        let path = self.upload_path(id);
        let start = self.existing_upload(id).await?;
        if let Some(at) = at
            && at != start
        {
            return Err(StoreError::RangeMismatch { size: start, at });
        }
        if hashing.as_ref().is_some_and(|h| h.len != start) {
            *hashing = None;
        }
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .await
            .map_err(self.io_error(format!("open {}", path.display())))?;
        let written = self
            .write_stream(&mut file, &path, body, &mut hashing)
            .await;
        if written.is_err() {
            // What reached the file is unknown: the commit hashes the file instead.
            *hashing = None;
        }
        written.map(|n| start + n)
    }

    /// Checks the upload against `digest` and, if its bytes are that, makes it the
    /// blob; returns its size. On a mismatch the upload is deleted.
    pub async fn commit(&self, id: &UploadId, digest: &Digest) -> Result<u64, StoreError> {
        self.commit_then(id, digest, || {}).await
    }

    /// [`BlobStore::commit`], calling `matched` as soon as the bytes matched the digest,
    /// before they are made durable (a reader of the upload may go on then).
    pub async fn commit_then(
        &self,
        id: &UploadId,
        digest: &Digest,
        matched: impl FnOnce(),
    ) -> Result<u64, StoreError> {
        self.commit_hashed(id, digest, None, matched).await
    }

    /// [`BlobStore::commit_then`], taking `hashed` (the digest of the upload's first
    /// `len` bytes, as its writer hashed them while writing them out of order) instead
    /// of reading it all again, if `len` is the upload's length.
    pub(super) async fn commit_hashed(
        &self,
        id: &UploadId,
        digest: &Digest,
        hashed: Option<(Digest, u64)>,
        matched: impl FnOnce(),
    ) -> Result<u64, StoreError> {
        let lock = self.lock(id);
        let hashing = lock.lock().await;
        let path = self.upload_path(id);
        let len = self.existing_upload(id).await?;
        let actual = match (hashed, hashing.as_ref()) {
            (Some((hashed, hashed_len)), _) if hashed_len == len => hashed,
            (None, Some(h)) if h.len == len => Digest::from_sha256(&h.sha.clone().finalize()),
            _ => {
                let (actual, _) = self
                    .hash_file(&path)
                    .await?
                    .ok_or(StoreError::UnknownUpload)?;
                actual
            }
        };
        if actual != *digest {
            let _ = fs::remove_file(&path).await;
            self.forget(id);
            return Err(StoreError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        matched();
        // Durable before it is named: a crash leaves the old name or the whole blob.
        let file = fs::File::open(&path)
            .await
            .map_err(self.io_error(format!("open {}", path.display())))?;
        file.sync_all()
            .await
            .map_err(self.io_error(format!("sync {}", path.display())))?;
        let blob = self.blob_path(digest);
        fs::rename(&path, &blob)
            .await
            .map_err(self.io_error(format!("rename to {}", blob.display())))?;
        let dir = fs::File::open(self.blob_dir())
            .await
            .map_err(self.io_error(format!("open {}", self.blob_dir().display())))?;
        dir.sync_all()
            .await
            .map_err(self.io_error(format!("sync {}", self.blob_dir().display())))?;
        self.forget(id);
        Ok(len)
    }

    /// Deletes the upload; false if there was none.
    pub async fn cancel(&self, id: &UploadId) -> Result<bool, StoreError> {
        let lock = self.lock(id);
        let _turn = lock.lock().await;
        let path = self.upload_path(id);
        let removed = match fs::remove_file(&path).await {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(self.io_error(format!("delete {}", path.display()))(e)),
        };
        self.forget(id);
        Ok(removed)
    }

    fn blob_dir(&self) -> PathBuf {
        self.dir.join("blobs").join("sha256")
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        // `Digest` is 64 lowercase hex digits: a file name, never a path.
        self.blob_dir().join(digest.hex())
    }

    fn upload_path(&self, id: &UploadId) -> PathBuf {
        self.dir.join("uploads").join(&id.0)
    }

    fn lock(&self, id: &UploadId) -> UploadLock {
        self.uploads
            .lock()
            .unwrap()
            .entry(id.clone())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(Some(Hashing::default()))))
            .clone()
    }

    /// The size of an upload that must be there; the lock taken for one that is not
    /// goes again, so made-up IDs leave nothing behind.
    async fn existing_upload(&self, id: &UploadId) -> Result<u64, StoreError> {
        match self.upload_size(id).await? {
            Some(size) => Ok(size),
            None => {
                self.forget(id);
                Err(StoreError::UnknownUpload)
            }
        }
    }

    fn forget(&self, id: &UploadId) {
        self.uploads.lock().unwrap().remove(id);
    }

    async fn create_upload(&self, id: &UploadId, new: bool) -> Result<(), StoreError> {
        let path = self.upload_path(id);
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .create_new(new)
            // A fetch's upload keeps what an earlier fetch got.
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .await
            .map_err(self.io_error(format!("create {}", path.display())))?;
        Ok(())
    }

    async fn write_stream<E: fmt::Display>(
        &self,
        file: &mut fs::File,
        path: &Path,
        body: impl Stream<Item = Result<Bytes, E>>,
        hashing: &mut Option<Hashing>,
    ) -> Result<u64, StoreError> {
        let mut body = std::pin::pin!(body);
        let mut n = 0u64;
        let mut broke = None;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    broke = Some(e.to_string());
                    break;
                }
            };
            file.write_all(&chunk)
                .await
                .map_err(self.io_error(format!("write {}", path.display())))?;
            if let Some(h) = hashing.as_mut() {
                h.sha.update(&chunk);
                h.len += chunk.len() as u64;
            }
            n += chunk.len() as u64;
        }
        // tokio's File writes in the background: errors show here.
        file.flush()
            .await
            .map_err(self.io_error(format!("write {}", path.display())))?;
        match broke {
            Some(why) => Err(StoreError::Body(why)),
            None => Ok(n),
        }
    }

    /// The digest and size of a file; `None` if there is none.
    async fn hash_file(&self, path: &Path) -> Result<Option<(Digest, u64)>, StoreError> {
        let mut file = match fs::File::open(path).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io_error(format!("open {}", path.display()))(e)),
        };
        let mut sha = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut len = 0u64;
        loop {
            let n = file
                .read(&mut buf)
                .await
                .map_err(self.io_error(format!("read {}", path.display())))?;
            if n == 0 {
                break;
            }
            sha.update(&buf[..n]);
            len += n as u64;
        }
        Ok(Some((Digest::from_sha256(&sha.finalize()), len)))
    }

    /// An I/O error as a [`StoreError`]: a full disk (or quota) is its own one line.
    fn io_error(&self, what: String) -> impl FnOnce(io::Error) -> StoreError + '_ {
        move |e| {
            if matches!(
                e.raw_os_error(),
                Some(nix::libc::ENOSPC | nix::libc::EDQUOT)
            ) {
                StoreError::DiskFull {
                    dir: self.dir.clone(),
                }
            } else {
                StoreError::Io { what, source: e }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&[u8]]) -> impl Stream<Item = Result<Bytes, io::Error>> {
        futures::stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::copy_from_slice(p)))
                .collect::<Vec<_>>(),
        )
    }

    async fn store() -> (tempfile::TempDir, BlobStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().join("registry")).await.unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn a_commit_checks_the_bytes_against_the_digest() {
        let (_dir, store) = store().await;
        let id = store.start_upload().await.unwrap();
        assert_eq!(
            store
                .append(&id, Some(0), chunks(&[b"hel", b"lo"]))
                .await
                .unwrap(),
            5
        );
        assert_eq!(
            store.append(&id, None, chunks(&[b" world"])).await.unwrap(),
            11
        );
        let digest = Digest::of(b"hello world");
        assert_eq!(store.commit(&id, &digest).await.unwrap(), 11);
        assert_eq!(store.size(&digest).await, Some(11));
        assert!(store.verify(&digest).await.unwrap());
        let (mut file, len) = store.open_blob(&digest).await.unwrap().unwrap();
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).await.unwrap();
        assert_eq!((bytes.as_slice(), len), (&b"hello world"[..], 11));
        assert_eq!(store.upload_size(&id).await.unwrap(), None);

        use std::os::unix::fs::PermissionsExt;
        let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(store.blob_path(&digest)), 0o600);
        assert_eq!(mode(store.blob_dir()), 0o700);
    }

    #[tokio::test]
    async fn a_mismatch_never_lands_and_deletes_the_upload() {
        let (_dir, store) = store().await;
        let id = store.start_upload().await.unwrap();
        store.append(&id, None, chunks(&[b"evil"])).await.unwrap();
        let claimed = Digest::of(b"good");
        match store.commit(&id, &claimed).await {
            Err(StoreError::DigestMismatch { expected, actual }) => {
                assert_eq!((expected, actual), (claimed.clone(), Digest::of(b"evil")));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(store.size(&claimed).await, None);
        assert!(store.open_blob(&claimed).await.unwrap().is_none());
        assert_eq!(store.upload_size(&id).await.unwrap(), None);
        assert!(matches!(
            store.commit(&id, &claimed).await,
            Err(StoreError::UnknownUpload)
        ));
    }

    #[tokio::test]
    async fn a_chunk_must_start_where_the_upload_ends() {
        let (_dir, store) = store().await;
        let id = store.start_upload().await.unwrap();
        store.append(&id, Some(0), chunks(&[b"abc"])).await.unwrap();
        assert!(matches!(
            store.append(&id, Some(5), chunks(&[b"x"])).await,
            Err(StoreError::RangeMismatch { size: 3, at: 5 })
        ));
        assert_eq!(store.upload_size(&id).await.unwrap(), Some(3));
        store.append(&id, Some(3), chunks(&[b"d"])).await.unwrap();
        store.commit(&id, &Digest::of(b"abcd")).await.unwrap();
    }

    #[tokio::test]
    async fn a_broken_body_keeps_what_arrived_and_the_commit_rehashes() {
        let (_dir, store) = store().await;
        let id = store.start_upload().await.unwrap();
        let body = futures::stream::iter(vec![
            Ok(Bytes::from_static(b"abc")),
            Err(io::Error::other("reset")),
        ]);
        assert!(matches!(
            store.append(&id, None, body).await,
            Err(StoreError::Body(_))
        ));
        assert_eq!(store.upload_size(&id).await.unwrap(), Some(3));
        store.append(&id, Some(3), chunks(&[b"def"])).await.unwrap();
        store.commit(&id, &Digest::of(b"abcdef")).await.unwrap();
    }

    #[tokio::test]
    async fn a_fetch_resumes_where_it_broke_off() {
        let (dir, store) = store().await;
        let digest = Digest::of(b"layer bytes");
        let id = store.fetch_upload(&digest).await.unwrap();
        assert_eq!(store.upload_size(&id).await.unwrap(), Some(0));
        store
            .append(&id, Some(0), chunks(&[b"layer"]))
            .await
            .unwrap();
        drop(store);

        // A restart: the same upload, its bytes still there, no hash in memory.
        let store = BlobStore::open(dir.path().join("registry")).await.unwrap();
        let again = store.fetch_upload(&digest).await.unwrap();
        assert_eq!(again, id);
        assert_eq!(store.upload_size(&again).await.unwrap(), Some(5));
        store
            .append(&again, Some(5), chunks(&[b" bytes"]))
            .await
            .unwrap();
        assert_eq!(store.commit(&again, &digest).await.unwrap(), 11);
        assert!(store.verify(&digest).await.unwrap());
        // Not a client's upload ID.
        assert_eq!(UploadId::parse(id.as_str()), None);
    }

    #[tokio::test]
    async fn upload_ids_cannot_name_anything_but_an_upload() {
        let (_dir, store) = store().await;
        let id = store.start_upload().await.unwrap();
        assert_eq!(UploadId::parse(id.as_str()), Some(id.clone()));
        for bad in [
            "../x",
            "..",
            "",
            "/etc/passwd",
            &"A".repeat(32),
            &"a".repeat(31),
            &format!("{}/", "a".repeat(31)),
            &format!("fetch-{}", "a".repeat(64)),
            &format!("../{}", "a".repeat(29)),
        ] {
            assert_eq!(UploadId::parse(bad), None, "{bad}");
        }
        let names: Vec<_> = std::fs::read_dir(store.dir().join("uploads"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec![id.to_string()]);
    }

    #[tokio::test]
    async fn a_planted_blob_fails_verification_and_can_be_removed() {
        let (_dir, store) = store().await;
        let digest = Digest::of(b"real");
        std::fs::write(store.blob_path(&digest), b"planted").unwrap();
        assert!(!store.verify(&digest).await.unwrap());
        assert!(store.remove(&digest).await.unwrap());
        assert!(!store.remove(&digest).await.unwrap());
        assert!(!store.verify(&digest).await.unwrap());
    }

    #[tokio::test]
    async fn cancel_deletes_the_upload() {
        let (_dir, store) = store().await;
        let id = store.start_upload().await.unwrap();
        store.append(&id, None, chunks(&[b"x"])).await.unwrap();
        assert!(store.cancel(&id).await.unwrap());
        assert!(!store.cancel(&id).await.unwrap());
        assert!(matches!(
            store.append(&id, None, chunks(&[b"y"])).await,
            Err(StoreError::UnknownUpload)
        ));
        let made_up = UploadId::parse(&"0".repeat(32)).unwrap();
        assert!(matches!(
            store.commit(&made_up, &Digest::of(b"")).await,
            Err(StoreError::UnknownUpload)
        ));
        assert!(store.uploads.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn blobs_and_uploads_are_listed_and_uploads_removed_by_name() {
        let (_dir, store) = store().await;
        let id = store.start_upload().await.unwrap();
        store.append(&id, None, chunks(&[b"blob"])).await.unwrap();
        let digest = Digest::of(b"blob");
        store.commit(&id, &digest).await.unwrap();
        std::fs::write(store.blob_dir().join("not-a-digest"), b"x").unwrap();
        let blobs = store.blobs().await.unwrap();
        assert_eq!(blobs.len(), 1);
        assert_eq!((&blobs[0].0, blobs[0].1), (&digest, 4));

        let client = store.start_upload().await.unwrap();
        let fetch = store.fetch_upload(&Digest::of(b"other")).await.unwrap();
        let mut names: Vec<String> = store
            .uploads()
            .await
            .unwrap()
            .into_iter()
            .map(|u| u.0)
            .collect();
        names.sort();
        let mut want = vec![client.to_string(), fetch.to_string()];
        want.sort();
        assert_eq!(names, want);
        assert!(!store.remove_upload("../blobs").await.unwrap());
        assert!(store.remove_upload(client.as_str()).await.unwrap());
        assert!(store.remove_upload(fetch.as_str()).await.unwrap());
        assert!(store.uploads().await.unwrap().is_empty());
    }

    #[test]
    fn a_full_disk_is_one_line_naming_the_directory() {
        let e = StoreError::DiskFull {
            dir: PathBuf::from("/var/lib/arpanet/registry"),
        };
        assert_eq!(e.to_string(), "/var/lib/arpanet/registry is full");
    }
}
