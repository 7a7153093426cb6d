//! This node's side of the blob swarms: what it tells other nodes and sends them. A
//! node in a blob's swarm is a seed (it holds the blob: verified, whole) or a puller
//! (it is fetching it, [`super::fetch`]); both serve the pieces they have.
//!
//! - `GET /v1/registry/swarm/DIGEST/pieces`: the piece list (a seed computes it from
//!   its own blob, checking the blob against its digest as it reads);
//! - `GET /v1/registry/swarm/DIGEST/have`: the pieces this node has and is getting;
//! - `GET /v1/registry/swarm/DIGEST/pieces/N`: piece N, if this node has it;
//! - `POST /v1/registry/swarm/DIGEST/assign` (a seed): the body says which pieces the
//!   puller wants from a seed; the answer is one of them, chosen by the blob's
//!   [`SeedBook`], with its number in `arpanet-piece`, or 204 for none now.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::pieces::{Bitfield, PieceHasher, PieceList, SeedBook};
use super::spec::Digest;
use super::store::{BlobStore, StoreError};

/// How many piece lists and seed books a node keeps in memory (the blobs it served
/// last); past that it starts afresh, computing lists again as asked.
const KEPT: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    #[error("{0}")]
    Store(#[from] StoreError),
    /// This node's own copy does not hash to its digest: it is removed, not served.
    #[error("this node's copy of {digest} is {actual}: removed")]
    Damaged { digest: Digest, actual: Digest },
    #[error("{0}")]
    Invalid(#[from] super::pieces::PiecesError),
}

/// What a node has of a blob, on the wire (`GET .../have`), in [`Bitfield::to_hex`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HaveV1 {
    pub have: String,
    pub busy: String,
}

/// A blob this node is fetching: its list, the file the pieces go to, and which of
/// them are here (checked) and on their way.
pub struct Pull {
    pub list: Arc<PieceList>,
    pub file: Arc<File>,
    state: Mutex<(Bitfield, Bitfield)>,
    /// How it ended: stored (checked against the digest) or stopped.
    ended: Mutex<Option<bool>>,
    /// Told of every new piece and of the end, for [`Pull::stream`].
    changed: tokio::sync::watch::Sender<()>,
}

impl Pull {
    pub fn new(list: Arc<PieceList>, file: File, have: Bitfield) -> Self {
        let busy = Bitfield::new(list.count());
        Self {
            list,
            file: Arc::new(file),
            state: Mutex::new((have, busy)),
            ended: Mutex::new(None),
            changed: tokio::sync::watch::Sender::new(()),
        }
    }

    /// (have, busy).
    pub fn state(&self) -> (Bitfield, Bitfield) {
        self.state.lock().unwrap().clone()
    }

    pub fn set_busy(&self, n: usize, busy: bool) {
        self.state.lock().unwrap().1.set(n, busy);
    }

    pub fn set_have(&self, n: usize) {
        let mut state = self.state.lock().unwrap();
        state.0.set(n, true);
        state.1.set(n, false);
        drop(state);
        self.changed.send_replace(());
    }

    /// Waits until the first piece is here or the pull ended, and says how it ended.
    pub async fn started(&self) -> Option<bool> {
        loop {
            let mut changed = self.changed.subscribe();
            let ended = *self.ended.lock().unwrap();
            if ended.is_some() || self.state().0.get(0) {
                return ended;
            }
            if changed.changed().await.is_err() {
                return None;
            }
        }
    }

    /// Ends the pull as stopped, unless it ended already.
    pub fn end_if_open(&self) {
        let mut ended = self.ended.lock().unwrap();
        if ended.is_none() {
            *ended = Some(false);
            drop(ended);
            self.changed.send_replace(());
        }
    }

    /// The pull ended: `stored` if the blob is in the store now.
    pub fn end(&self, stored: bool) {
        *self.ended.lock().unwrap() = Some(stored);
        self.changed.send_replace(());
    }

    /// How many bytes from the start are here: the pieces before the first missing one.
    fn front(&self, have: &Bitfield) -> u64 {
        let count = self.list.count();
        match (0..count).find(|n| !have.get(*n)) {
            Some(missing) => self.list.range(missing).0,
            None => self.list.size(),
        }
    }

    /// The blob's sha256 digest and the bytes it covers (all of them), hashed front to
    /// back as its pieces arrive, so the check at the end does not read the whole blob
    /// again. `None` if the pull ended before every byte was here or the file could not
    /// be read (the store then hashes the file itself).
    pub async fn digest(self: Arc<Self>) -> Option<(Digest, u64)> {
        let size = self.list.size();
        let mut sha = Sha256::new();
        let mut hashed = 0u64;
        loop {
            let mut changed = self.changed.subscribe();
            let (have, _) = self.state();
            let front = self.front(&have);
            while hashed < front {
                let len = (front - hashed).min(1 << 20);
                let (file, at) = (self.file.clone(), hashed);
                let mut moved = sha;
                sha = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; len as usize];
                    file.read_exact_at(&mut buf, at)?;
                    moved.update(&buf);
                    Ok::<_, std::io::Error>(moved)
                })
                .await
                .expect("hashing does not panic")
                .inspect_err(|e| tracing::debug!("registry: hashing a pull's file: {e}"))
                .ok()?;
                hashed += len;
            }
            if hashed == size {
                return Some((Digest::from_sha256(&sha.finalize()), size));
            }
            if self.ended.lock().unwrap().is_some() {
                return None;
            }
            changed.changed().await.ok()?;
        }
    }

    /// The blob's bytes front to back as its pieces arrive, so dockerd extracts a layer
    /// while it is still being fetched. Each piece was checked against the list when it
    /// came; the last is held back until the whole blob matched its digest, so a client
    /// never gets all of a blob that is not its digest's (a wrong list from a seed ends
    /// the answer short instead).
    pub fn stream(self: Arc<Self>) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
        futures::stream::unfold((self, 0u64), |(pull, sent)| async move {
            let size = pull.list.size();
            loop {
                if sent >= size {
                    return None;
                }
                let mut changed = pull.changed.subscribe();
                let (have, _) = pull.state();
                let ended = *pull.ended.lock().unwrap();
                let ready = if ended == Some(true) {
                    size
                } else {
                    pull.front(&have)
                        .min(pull.list.range(pull.list.count() - 1).0)
                };
                if sent < ready {
                    let len = (ready - sent).min(1 << 20);
                    return Some(match read_at(pull.file.clone(), sent, len).await {
                        Ok(bytes) => (Ok(bytes), (pull, sent + len)),
                        Err(e) => (Err(e), (pull, size)),
                    });
                }
                if ended == Some(false) {
                    let stopped = std::io::Error::other("the pull of this blob stopped");
                    return Some((Err(stopped), (pull, size)));
                }
                if changed.changed().await.is_err() {
                    return None;
                }
            }
        })
    }
}

pub struct Swarm {
    store: Arc<BlobStore>,
    lists: Mutex<HashMap<Digest, Arc<PieceList>>>,
    /// One computation of a blob's list at a time (a pull's first requests come at once).
    computing: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    pulls: Mutex<HashMap<Digest, Arc<Pull>>>,
    books: Mutex<HashMap<Digest, SeedBook>>,
}

impl Swarm {
    pub fn new(store: Arc<BlobStore>) -> Self {
        Self {
            store,
            lists: Mutex::default(),
            computing: Mutex::default(),
            pulls: Mutex::default(),
            books: Mutex::default(),
        }
    }

    pub fn store(&self) -> &Arc<BlobStore> {
        &self.store
    }

    /// Keeps the list of a blob this node holds (one a pull checked, or computed).
    pub fn remember(&self, digest: &Digest, list: Arc<PieceList>) {
        let mut lists = self.lists.lock().unwrap();
        if lists.len() >= KEPT {
            lists.clear();
        }
        lists.insert(digest.clone(), list);
    }

    /// The list of a blob this node holds; `None` if it holds none. Computed from the
    /// blob once, checking it against its digest as it goes: a copy that does not
    /// match is removed ([`SwarmError::Damaged`]) and never seeded.
    pub async fn list(&self, digest: &Digest) -> Result<Option<Arc<PieceList>>, SwarmError> {
        if let Some(list) = self.lists.lock().unwrap().get(digest) {
            return Ok(Some(list.clone()));
        }
        let turn = {
            let mut computing = self.computing.lock().unwrap();
            computing.retain(|_, lock| Arc::strong_count(lock) > 1);
            computing.entry(digest.clone()).or_default().clone()
        };
        let _turn = turn.lock().await;
        if let Some(list) = self.lists.lock().unwrap().get(digest) {
            return Ok(Some(list.clone()));
        }
        let Some((file, size)) = self.store.open_blob(digest).await? else {
            return Ok(None);
        };
        let mut file = file.into_std().await;
        let hashed = tokio::task::spawn_blocking(move || {
            let mut hasher = PieceHasher::new(size);
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = std::io::Read::read(&mut file, &mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            Ok::<_, std::io::Error>(hasher.finish())
        })
        .await
        .expect("hashing does not panic")
        .map_err(|e| StoreError::Io {
            what: format!("read {digest}"),
            source: e,
        })?;
        match hashed {
            (actual, Some(list)) if actual == *digest => {
                let list = Arc::new(list);
                self.remember(digest, list.clone());
                Ok(Some(list))
            }
            (actual, _) => {
                self.store.remove(digest).await?;
                Err(SwarmError::Damaged {
                    digest: digest.clone(),
                    actual,
                })
            }
        }
    }

    pub fn start_pull(&self, digest: &Digest, pull: Arc<Pull>) {
        self.pulls.lock().unwrap().insert(digest.clone(), pull);
    }

    pub fn end_pull(&self, digest: &Digest) {
        self.pulls.lock().unwrap().remove(digest);
    }

    pub fn pull(&self, digest: &Digest) -> Option<Arc<Pull>> {
        self.pulls.lock().unwrap().get(digest).cloned()
    }

    /// What this node has of the blob: all of it (a seed), some (a puller), or none.
    pub async fn have(&self, digest: &Digest) -> Result<Option<HaveV1>, SwarmError> {
        if let Some(pull) = self.pull(digest) {
            let (have, busy) = pull.state();
            return Ok(Some(HaveV1 {
                have: have.to_hex(),
                busy: busy.to_hex(),
            }));
        }
        Ok(self.list(digest).await?.map(|list| HaveV1 {
            have: Bitfield::full(list.count()).to_hex(),
            busy: Bitfield::new(list.count()).to_hex(),
        }))
    }

    /// Piece `n`, if this node has it (checked when it came, or part of a whole blob).
    pub async fn piece(&self, digest: &Digest, n: usize) -> Result<Option<Bytes>, SwarmError> {
        if let Some(pull) = self.pull(digest) {
            if !pull.state().0.get(n) {
                return Ok(None);
            }
            return read_piece(pull.file.clone(), &pull.list, n).await.map(Some);
        }
        let Some(list) = self.list(digest).await? else {
            return Ok(None);
        };
        if n >= list.count() {
            return Ok(None);
        }
        self.blob_piece(digest, &list, n).await
    }

    /// A seed's answer to a puller that wants the pieces `wanted` (hex): one of them
    /// and its number, or none now. `None` outside: this node does not hold the blob.
    pub async fn assign(
        &self,
        digest: &Digest,
        wanted: &str,
    ) -> Result<Option<Option<(usize, Bytes)>>, SwarmError> {
        let Some(list) = self.list(digest).await? else {
            return Ok(None);
        };
        let wanted = Bitfield::from_hex(wanted, list.count())?;
        // One piece (a config, a small layer) is no swarm: everyone gets it at once.
        if list.count() == 1 && wanted.get(0) {
            return Ok(Some(
                self.blob_piece(digest, &list, 0).await?.map(|b| (0, b)),
            ));
        }
        let n = {
            let mut books = self.books.lock().unwrap();
            if books.len() >= KEPT && !books.contains_key(digest) {
                books.clear();
            }
            let now = Instant::now();
            books
                .entry(digest.clone())
                .or_insert_with(|| SeedBook::new(list.count(), now))
                .asked(now);
            let waits = books
                .iter()
                .any(|(other, theirs)| other != digest && theirs.goes_before(&books[digest], now));
            if waits {
                None
            } else {
                books
                    .get_mut(digest)
                    .expect("its book")
                    .assign(&wanted, now)
            }
        };
        let Some(n) = n else {
            return Ok(Some(None));
        };
        Ok(Some(
            self.blob_piece(digest, &list, n).await?.map(|b| (n, b)),
        ))
    }

    async fn blob_piece(
        &self,
        digest: &Digest,
        list: &PieceList,
        n: usize,
    ) -> Result<Option<Bytes>, SwarmError> {
        let Some((file, _)) = self.store.open_blob(digest).await? else {
            return Ok(None);
        };
        let file = Arc::new(file.into_std().await);
        read_piece(file, list, n).await.map(Some)
    }
}

/// `len` bytes of `file` from `start`, read off the runtime's threads.
pub async fn read_at(file: Arc<File>, start: u64, len: u64) -> std::io::Result<Bytes> {
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, start)
            .map(|()| Bytes::from(buf))
    })
    .await
    .expect("reading does not panic")
}

async fn read_piece(file: Arc<File>, list: &PieceList, n: usize) -> Result<Bytes, SwarmError> {
    let (start, len) = list.range(n);
    read_at(file, start, len).await.map_err(|e| {
        SwarmError::Store(StoreError::Io {
            what: format!("read piece {n}"),
            source: e,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn swarm_with(bytes: &[u8]) -> (tempfile::TempDir, Swarm, Digest) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(BlobStore::open(dir.path()).await.unwrap());
        let id = store.start_upload().await.unwrap();
        let body = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::copy_from_slice(bytes))]);
        store.append(&id, None, body).await.unwrap();
        let digest = Digest::of(bytes);
        store.commit(&id, &digest).await.unwrap();
        (dir, Swarm::new(store), digest)
    }

    #[tokio::test]
    async fn a_seed_serves_checked_pieces_and_hands_each_out_once() {
        let bytes: Vec<u8> = (0..(2 << 20) + 5).map(|i| (i % 253) as u8).collect();
        let (_dir, swarm, digest) = swarm_with(&bytes).await;
        let list = swarm.list(&digest).await.unwrap().unwrap();
        assert_eq!(list.count(), 3);
        let piece = swarm.piece(&digest, 2).await.unwrap().unwrap();
        assert_eq!(&piece[..], &bytes[2 << 20..]);
        assert!(swarm.piece(&digest, 3).await.unwrap().is_none());
        let have = swarm.have(&digest).await.unwrap().unwrap();
        assert_eq!(have.have, "e0");
        let all = Bitfield::full(3).to_hex();
        let mut got = Vec::new();
        while let Some(Some((n, bytes))) = swarm.assign(&digest, &all).await.unwrap() {
            assert!(list.check(n, &bytes));
            got.push(n);
        }
        assert_eq!(got, vec![0, 1, 2]);
        assert!(swarm.assign(&digest, "zz").await.is_err());
        let other = Digest::of(b"other");
        assert!(swarm.assign(&other, &all).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_damaged_copy_is_removed_not_seeded() {
        let bytes = vec![7u8; 3000];
        let (dir, swarm, digest) = swarm_with(&bytes).await;
        let path = dir.path().join("blobs/sha256").join(digest.hex());
        std::fs::write(&path, vec![8u8; 3000]).unwrap();
        let err = swarm.list(&digest).await.unwrap_err().to_string();
        assert!(err.contains("removed"), "{err}");
        assert!(!path.exists());
        assert!(swarm.have(&digest).await.unwrap().is_none());
    }

    /// A pull of `bytes` into a new file, with the list a seed would give.
    async fn pull_of(bytes: &[u8]) -> (tempfile::TempDir, Arc<Pull>) {
        let (dir, swarm, digest) = swarm_with(bytes).await;
        let list = swarm.list(&digest).await.unwrap().unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("pulling"))
            .unwrap();
        file.set_len(bytes.len() as u64).unwrap();
        let count = list.count();
        (dir, Arc::new(Pull::new(list, file, Bitfield::new(count))))
    }

    fn arrive(pull: &Pull, bytes: &[u8], n: usize) {
        let (start, len) = pull.list.range(n);
        let piece = &bytes[start as usize..(start + len) as usize];
        pull.file.write_all_at(piece, start).unwrap();
        pull.set_have(n);
    }

    #[tokio::test]
    async fn the_digest_is_hashed_as_pieces_arrive_in_any_order() {
        let bytes: Vec<u8> = (0..(3 << 20) + 17).map(|i| (i % 251) as u8).collect();
        let (_dir, pull) = pull_of(&bytes).await;
        let hashing = tokio::spawn(pull.clone().digest());
        for n in [2, 0, 3, 1] {
            arrive(&pull, &bytes, n);
            tokio::task::yield_now().await;
        }
        let len = bytes.len() as u64;
        assert_eq!(hashing.await.unwrap(), Some((Digest::of(&bytes), len)));
    }

    #[tokio::test]
    async fn a_pull_that_ends_short_has_no_digest() {
        let bytes: Vec<u8> = (0..(2 << 20) + 1).map(|i| (i % 7) as u8).collect();
        let (_dir, pull) = pull_of(&bytes).await;
        let hashing = tokio::spawn(pull.clone().digest());
        arrive(&pull, &bytes, 0);
        pull.end_if_open();
        assert_eq!(hashing.await.unwrap(), None);
    }
}
