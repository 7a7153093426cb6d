//! A blob as pieces, for moving it between nodes: the piece list (metainfo), which
//! pieces a node has, and how a seed hands pieces out so it sends each about once.
//!
//! The piece list is deterministic from the blob: pieces of [`piece_size`] bytes (from
//! the size alone), each named by its sha256. Any node that holds the blob computes
//! the same list from its bytes, so every holder can seed with no coordination, and a
//! puller checks every piece against it before it writes or passes the piece on. All
//! of it is pure: the transport is in [`super::swarm`].

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::spec::Digest;

/// Pieces are at least 1 MiB (a piece is one HTTP request: smaller ones cost more in
/// round trips than they win in spread) and at most [`MAX_PIECES`] per blob (so the
/// list stays small: 4096 hashes are 128 KiB).
pub const MIN_PIECE: u64 = 1 << 20;
pub const MAX_PIECES: u64 = 4096;

/// The piece size of a blob of `size` bytes: the smallest power of two from
/// [`MIN_PIECE`] up that needs no more than [`MAX_PIECES`] pieces.
pub fn piece_size(size: u64) -> u64 {
    let mut piece = MIN_PIECE;
    while size.div_ceil(piece) > MAX_PIECES {
        piece *= 2;
    }
    piece
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PiecesError {
    #[error("piece list: {0}")]
    Invalid(String),
}

/// A blob's pieces: its size, the piece size and one sha256 per piece.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PieceList {
    size: u64,
    piece_size: u64,
    hashes: Vec<[u8; 32]>,
}

/// The piece list on the wire (`GET /v1/registry/swarm/DIGEST/pieces`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PieceListV1 {
    pub size: u64,
    pub piece_size: u64,
    /// The pieces' sha256 digests, 32 bytes each, one after the other, base64.
    pub hashes: String,
}

impl PieceList {
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn count(&self) -> usize {
        self.hashes.len()
    }

    /// Where piece `n` starts and how long it is.
    pub fn range(&self, n: usize) -> (u64, u64) {
        let start = n as u64 * self.piece_size;
        (start, self.piece_size.min(self.size - start))
    }

    /// Whether `bytes` are piece `n`.
    pub fn check(&self, n: usize, bytes: &[u8]) -> bool {
        n < self.count()
            && bytes.len() as u64 == self.range(n).1
            && Sha256::digest(bytes).as_slice() == self.hashes[n]
    }

    pub fn to_wire(&self) -> PieceListV1 {
        PieceListV1 {
            size: self.size,
            piece_size: self.piece_size,
            hashes: base64::engine::general_purpose::STANDARD.encode(self.hashes.concat()),
        }
    }

    /// A list from another node, believed only if it is the shape a list of a blob of
    /// `size` bytes must have. (Whether its hashes are right shows when the pieces
    /// they admit hash to the blob's digest: see [`super::swarm`].)
    pub fn from_wire(wire: &PieceListV1, size: u64) -> Result<Self, PiecesError> {
        let bad = |why: String| PiecesError::Invalid(why);
        if wire.size != size {
            return Err(bad(format!("size {} for a blob of {size}", wire.size)));
        }
        if wire.piece_size != piece_size(size) {
            return Err(bad(format!(
                "piece size {} where a blob of {size} bytes has {}",
                wire.piece_size,
                piece_size(size)
            )));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&wire.hashes)
            .map_err(|e| bad(format!("hashes: not base64: {e}")))?;
        let count = size.div_ceil(wire.piece_size) as usize;
        if bytes.len() != count * 32 {
            return Err(bad(format!(
                "{} bytes of hashes where {count} pieces need {}",
                bytes.len(),
                count * 32
            )));
        }
        Ok(Self {
            size,
            piece_size: wire.piece_size,
            hashes: bytes
                .chunks_exact(32)
                .map(|c| c.try_into().expect("32 bytes"))
                .collect(),
        })
    }
}

/// Hashes a blob read front to back: its digest and its piece list in one read.
pub struct PieceHasher {
    piece_size: u64,
    size: u64,
    whole: Sha256,
    piece: Sha256,
    in_piece: u64,
    seen: u64,
    hashes: Vec<[u8; 32]>,
}

impl PieceHasher {
    pub fn new(size: u64) -> Self {
        Self {
            piece_size: piece_size(size),
            size,
            whole: Sha256::new(),
            piece: Sha256::new(),
            in_piece: 0,
            seen: 0,
            hashes: Vec::new(),
        }
    }

    pub fn update(&mut self, mut bytes: &[u8]) {
        self.whole.update(bytes);
        self.seen += bytes.len() as u64;
        while !bytes.is_empty() {
            let take = ((self.piece_size - self.in_piece) as usize).min(bytes.len());
            self.piece.update(&bytes[..take]);
            self.in_piece += take as u64;
            bytes = &bytes[take..];
            if self.in_piece == self.piece_size {
                self.hashes.push(self.piece.finalize_reset().into());
                self.in_piece = 0;
            }
        }
    }

    /// The digest of what was read and, if that was `size` bytes, its piece list.
    pub fn finish(mut self) -> (Digest, Option<PieceList>) {
        let digest = Digest::from_sha256(&self.whole.finalize());
        if self.seen != self.size {
            return (digest, None);
        }
        if self.in_piece > 0 {
            self.hashes.push(self.piece.finalize().into());
        }
        let list = PieceList {
            size: self.size,
            piece_size: self.piece_size,
            hashes: self.hashes,
        };
        (digest, Some(list))
    }
}

/// Which of a blob's pieces a node has (or is getting): one bit per piece.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitfield {
    bits: Vec<u8>,
    len: usize,
}

impl Bitfield {
    pub fn new(len: usize) -> Self {
        Self {
            bits: vec![0; len.div_ceil(8)],
            len,
        }
    }

    pub fn full(len: usize) -> Self {
        let mut all = Self::new(len);
        (0..len).for_each(|n| all.set(n, true));
        all
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, n: usize) -> bool {
        n < self.len && self.bits[n / 8] & (0x80 >> (n % 8)) != 0
    }

    pub fn set(&mut self, n: usize, on: bool) {
        if n >= self.len {
            return;
        }
        if on {
            self.bits[n / 8] |= 0x80 >> (n % 8);
        } else {
            self.bits[n / 8] &= !(0x80 >> (n % 8));
        }
    }

    pub fn count(&self) -> usize {
        self.bits.iter().map(|b| b.count_ones() as usize).sum()
    }

    pub fn ones(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.len).filter(|n| self.get(*n))
    }

    /// Bits set in `self` or `other` (the same length).
    pub fn or(&mut self, other: &Bitfield) {
        for (a, b) in self.bits.iter_mut().zip(&other.bits) {
            *a |= b;
        }
    }

    pub fn to_hex(&self) -> String {
        self.bits.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A bitfield of `len` pieces in hex, as [`Bitfield::to_hex`] writes it; anything
    /// else (another length, bits past the end) is refused.
    pub fn from_hex(hex: &str, len: usize) -> Result<Self, PiecesError> {
        let bad = |why: &str| PiecesError::Invalid(format!("bitfield: {why}"));
        if hex.len() != len.div_ceil(8) * 2 {
            return Err(bad(&format!(
                "{} hex digits for {len} pieces, not {}",
                hex.len(),
                len.div_ceil(8) * 2
            )));
        }
        if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad("not hex"));
        }
        let bits = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("x"), 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| bad("not hex"))?;
        let field = Self { bits, len };
        if field.count() != field.ones().count() {
            return Err(bad("bits set past the last piece"));
        }
        Ok(field)
    }
}

/// A seed's record of what it handed out for one blob. It hands each puller a piece
/// the puller asks for (one no other puller has or is getting) that it sent least
/// often, lowest first, so the pullers get disjoint slices and pass them on to each
/// other: each piece leaves the seed about once (BEP 16's super-seeding, told by the
/// pullers rather than guessed from their `have` messages).
#[derive(Debug, Clone)]
pub struct SeedBook {
    sent: Vec<u32>,
    last: Vec<Option<Instant>>,
    /// When the first puller asked, and when one last asked.
    opened: Instant,
    busy_at: Instant,
    unsent: usize,
}

/// How long a seed waits before it sends a piece again that it sent already: the
/// puller it went to has it by then and says so, unless that puller is gone.
pub const RESEND_AFTER: Duration = Duration::from_secs(3);

impl SeedBook {
    pub fn new(count: usize, now: Instant) -> Self {
        Self {
            sent: vec![0; count],
            last: vec![None; count],
            opened: now,
            busy_at: now,
            unsent: count,
        }
    }

    /// Whether this blob goes before `other`'s at the seed: it has fewer pieces never
    /// sent (or as many, and was asked for first), some, and its pullers are still
    /// asking. A seed sends one blob at a time this way, the nearest to whole first, so
    /// a layer lands whole early and frees one of dockerd's three downloads (a small
    /// base layer is not stuck behind big ones), and dockerd extracts it while the next
    /// layer moves. Blobs asked for later and smaller still go first: a big blob waits
    /// for them, as it waits for any blob that is nearer to whole.
    pub fn goes_before(&self, other: &SeedBook, now: Instant) -> bool {
        self.unsent > 0
            && now < self.busy_at + RESEND_AFTER
            && (self.unsent, self.opened) < (other.unsent, other.opened)
    }

    /// A puller asked (whether or not it gets a piece now).
    pub fn asked(&mut self, now: Instant) {
        self.busy_at = now;
    }

    /// The piece to send a puller that wants `wanted`, or none for now.
    pub fn assign(&mut self, wanted: &Bitfield, now: Instant) -> Option<usize> {
        self.asked(now);
        let n = wanted
            .ones()
            .filter(|&n| n < self.sent.len())
            .filter(|&n| {
                // A piece sent k times waits k times as long again (up to 4): a puller
                // that keeps asking for one cannot make the seed send it over and over.
                self.last[n].is_none_or(|at| now >= at + RESEND_AFTER * self.sent[n].min(4))
            })
            .min_by_key(|&n| (self.sent[n], n))?;
        if self.sent[n] == 0 {
            self.unsent -= 1;
        }
        self.sent[n] += 1;
        self.last[n] = Some(now);
        Some(n)
    }

    /// Pieces sent, counted with repeats.
    pub fn sent(&self) -> u64 {
        self.sent.iter().map(|&s| u64::from(s)).sum()
    }
}

/// What a puller asks for next from the other pullers: the lowest piece it lacks and
/// is not getting that one of them has (lowest first, so the blob fills front to back),
/// from the one with the fewest of its requests in flight. `peers` are each puller's
/// pieces and the requests this node has in flight to it.
pub fn pick_from_peers<K: Copy>(
    have: &Bitfield,
    busy: &Bitfield,
    peers: &[(K, &Bitfield, usize)],
) -> Option<(usize, K)> {
    (0..have.len())
        .filter(|&n| !have.get(n) && !busy.get(n))
        .find_map(|n| {
            peers
                .iter()
                .filter(|(_, theirs, _)| theirs.get(n))
                .min_by_key(|(_, _, in_flight)| *in_flight)
                .map(|(k, _, _)| (n, *k))
        })
}

/// The pieces the other pullers have and, where their word is trusted (the bool: it
/// lapses when a puller's pieces stop growing), say they are getting: what a puller
/// does not ask the seeds for.
pub fn others_have<'a>(
    count: usize,
    peers: impl IntoIterator<Item = (&'a Bitfield, &'a Bitfield, bool)>,
) -> Bitfield {
    let mut others = Bitfield::new(count);
    for (have, busy, trusted) in peers {
        others.or(have);
        if trusted {
            others.or(busy);
        }
    }
    others
}

/// What a puller asks a seed for: the pieces it lacks and is not getting that no other
/// puller has or is getting (`others`: the union of theirs).
pub fn wanted_from_seed(have: &Bitfield, busy: &Bitfield, others: &Bitfield) -> Bitfield {
    let mut wanted = Bitfield::new(have.len());
    for n in 0..have.len() {
        wanted.set(n, !have.get(n) && !busy.get(n) && !others.get(n));
    }
    wanted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn piece_sizes_keep_the_list_small() {
        assert_eq!(piece_size(0), MIN_PIECE);
        assert_eq!(piece_size(200 << 20), MIN_PIECE);
        assert_eq!(piece_size(4 << 30), MIN_PIECE);
        assert_eq!(piece_size((4 << 30) + 1), 2 * MIN_PIECE);
        for size in [1u64, 5 << 20, 17 << 30, 1 << 40] {
            assert!(size.div_ceil(piece_size(size)) <= MAX_PIECES, "{size}");
        }
    }

    fn blob(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn the_list_is_the_same_however_the_blob_is_read() {
        let bytes = blob((2 << 20) + 12345);
        let mut one = PieceHasher::new(bytes.len() as u64);
        one.update(&bytes);
        let mut many = PieceHasher::new(bytes.len() as u64);
        for chunk in bytes.chunks(77_777) {
            many.update(chunk);
        }
        let (d1, l1) = one.finish();
        let (d2, l2) = many.finish();
        assert_eq!(d1, Digest::of(&bytes));
        assert_eq!((d1, l1.clone()), (d2, l2));
        let list = l1.unwrap();
        assert_eq!(list.count(), 3);
        assert_eq!(list.range(2), (2 << 20, 12345));
        assert!(list.check(2, &bytes[2 << 20..]));
        assert!(!list.check(1, &bytes[2 << 20..]), "another piece's bytes");
        assert!(!list.check(3, &bytes[2 << 20..]), "no such piece");
        let mut bad = bytes[..1 << 20].to_vec();
        bad[9] ^= 1;
        assert!(!list.check(0, &bad));
        // A short read has a digest but no list.
        let mut short = PieceHasher::new(bytes.len() as u64 + 1);
        short.update(&bytes);
        assert!(short.finish().1.is_none());
    }

    #[test]
    fn a_list_from_a_peer_must_have_its_blobs_shape() {
        let bytes = blob(3 << 20);
        let mut h = PieceHasher::new(bytes.len() as u64);
        h.update(&bytes);
        let list = h.finish().1.unwrap();
        let wire = list.to_wire();
        let size = bytes.len() as u64;
        assert_eq!(PieceList::from_wire(&wire, size).unwrap(), list);
        let err = |w: &PieceListV1, s| PieceList::from_wire(w, s).unwrap_err().to_string();
        assert!(err(&wire, size + 1).contains("size"));
        let mut w = wire.clone();
        w.piece_size = 4096;
        assert!(err(&w, size).contains("piece size 4096"));
        let mut w = wire.clone();
        w.hashes = base64::engine::general_purpose::STANDARD.encode([0u8; 64]);
        assert!(err(&w, size).contains("3 pieces need 96"));
        w.hashes = "!!".into();
        assert!(err(&w, size).contains("not base64"));
    }

    #[test]
    fn bitfields_round_trip_and_refuse_junk() {
        let mut b = Bitfield::new(10);
        b.set(0, true);
        b.set(9, true);
        b.set(10, true);
        assert_eq!(b.count(), 2);
        assert_eq!(b.to_hex(), "8040");
        assert_eq!(Bitfield::from_hex("8040", 10).unwrap(), b);
        assert!(Bitfield::from_hex("8040", 20).is_err());
        assert!(Bitfield::from_hex("80zz", 10).is_err());
        assert!(Bitfield::from_hex("+8+0", 10).is_err());
        assert!(Bitfield::from_hex("é0", 1).is_err());
        let err = Bitfield::from_hex("8060", 10).unwrap_err().to_string();
        assert!(err.contains("past the last piece"), "{err}");
        assert_eq!(Bitfield::full(10).count(), 10);
    }

    #[test]
    fn a_seed_hands_pullers_disjoint_pieces_and_sends_each_once() {
        let count = 100;
        let mut book = SeedBook::new(count, Instant::now());
        let now = Instant::now();
        // Five pullers keep asking for everything no other puller has or gets.
        let mut haves = vec![Bitfield::new(count); 5];
        let mut given = Bitfield::new(count);
        for round in 0.. {
            let mut progress = false;
            for have in haves.iter_mut() {
                let wanted = wanted_from_seed(have, &Bitfield::new(count), &given);
                if let Some(n) = book.assign(&wanted, now) {
                    assert!(!given.get(n), "piece {n} handed out twice");
                    given.set(n, true);
                    have.set(n, true);
                    progress = true;
                }
            }
            if !progress {
                assert!(round >= 20);
                break;
            }
        }
        assert_eq!(given.count(), count);
        assert_eq!(book.sent(), count as u64);
        let spread: Vec<usize> = haves.iter().map(Bitfield::count).collect();
        assert_eq!(spread, vec![20; 5]);
    }

    #[test]
    fn a_seed_sends_the_blob_nearest_to_whole_before_the_next() {
        let t0 = Instant::now();
        let mut first = SeedBook::new(2, t0);
        let second = SeedBook::new(2, t0 + Duration::from_millis(5));
        // As many pieces left: the one asked for first.
        assert!(first.goes_before(&second, t0));
        assert!(!second.goes_before(&first, t0));
        // A small blob asked for later goes before a big one that has barely begun.
        let mut small = SeedBook::new(1, t0 + Duration::from_millis(9));
        small.asked(t0);
        let big = SeedBook::new(3, t0);
        assert!(small.goes_before(&big, t0));
        assert!(!big.goes_before(&small, t0));
        assert_eq!(first.assign(&Bitfield::full(2), t0), Some(0));
        assert!(first.goes_before(&second, t0));
        assert!(!second.goes_before(&first, t0));
        // Its pullers went quiet: the next blob goes on.
        assert!(!first.goes_before(&second, t0 + RESEND_AFTER));
        // Every piece of it sent: the next blob goes on.
        assert_eq!(first.assign(&Bitfield::full(2), t0), Some(1));
        assert!(!first.goes_before(&second, t0));
    }

    #[test]
    fn a_seed_sends_a_piece_again_only_after_a_while() {
        let now = Instant::now();
        let mut book = SeedBook::new(2, now);
        let mut first = Bitfield::new(2);
        first.set(1, true);
        assert_eq!(book.assign(&first, now), Some(1));
        // Its puller went away: someone asks again at once, then later.
        assert_eq!(book.assign(&first, now + Duration::from_millis(100)), None);
        assert_eq!(book.assign(&first, now + RESEND_AFTER), Some(1));
        assert_eq!(book.assign(&first, now + RESEND_AFTER * 2), None);
        assert_eq!(book.assign(&first, now + RESEND_AFTER * 3), Some(1));
        assert_eq!(
            book.assign(&Bitfield::full(2), now + RESEND_AFTER * 3),
            Some(0)
        );
    }

    #[test]
    fn pullers_take_the_lowest_piece_a_peer_has_from_the_least_busy_peer() {
        let mut have = Bitfield::new(6);
        have.set(0, true);
        let mut busy = Bitfield::new(6);
        busy.set(1, true);
        let mut a = Bitfield::new(6);
        let mut b = Bitfield::new(6);
        for n in [0, 1, 3, 4] {
            a.set(n, true);
        }
        for n in [3, 5] {
            b.set(n, true);
        }
        let peers = [("a", &a, 2), ("b", &b, 1)];
        assert_eq!(pick_from_peers(&have, &busy, &peers), Some((3, "b")));
        let peers = [("a", &a, 0), ("b", &b, 1)];
        assert_eq!(pick_from_peers(&have, &busy, &peers), Some((3, "a")));
        assert_eq!(
            pick_from_peers(&have, &busy, &[("a", &a, 0)][..1]),
            Some((3, "a"))
        );
        let none = Bitfield::new(6);
        let others = others_have(6, [(&a, &none, true), (&b, &none, true)]);
        let wanted = wanted_from_seed(&have, &busy, &others);
        assert_eq!(wanted.ones().collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn a_puller_that_claims_to_get_everything_cannot_starve_the_others() {
        let (have, busy) = (Bitfield::new(4), Bitfield::new(4));
        let liar = (Bitfield::new(4), Bitfield::full(4));
        let trusted = others_have(4, [(&liar.0, &liar.1, true)]);
        assert_eq!(wanted_from_seed(&have, &busy, &trusted).count(), 0);
        // Its pieces did not grow for a while: its word no longer counts.
        let doubted = others_have(4, [(&liar.0, &liar.1, false)]);
        assert_eq!(wanted_from_seed(&have, &busy, &doubted).count(), 4);
    }
}
