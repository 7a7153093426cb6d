//! Image sync: Docker images moved between nodes with BitTorrent (librqbit), Consul
//! standing in for the tracker. An image is the tarball `docker save` makes, one file
//! per torrent, named by the image ID; its metainfo and who holds it live in KV:
//!
//! - `arpanet/sync/images/ID` — [`ImageRecord`]: tags, size, the torrent;
//! - `arpanet/sync/peers/ID/A.B` — [`PeerEntry`]: the peer address of a node in the
//!   image's swarm and whether it has the whole tarball (a holder, which seeds). Nodes
//!   that Consul no longer lists as healthy are ignored.
//!
//! This module is the pure part (records, names, piece sizes, progress); [`service`]
//! is the socket-activated service that moves bytes, [`tarball`] checks an image before
//! it is loaded.

pub mod client;
pub mod service;
pub mod tarball;
pub mod tunnel;

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::addressing::NodeAddress;

pub const KV_IMAGES: &str = "arpanet/sync/images/";
pub const KV_PEERS: &str = "arpanet/sync/peers/";

/// What a node published about an image it pushed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// `sha256:...`, as Docker names the image.
    pub id: String,
    pub tags: Vec<String>,
    /// Bytes of the tarball.
    pub size: u64,
    pub piece_length: u32,
    /// Hex, 40 characters.
    pub info_hash: String,
    /// The .torrent file, base64.
    pub torrent: String,
    pub pushed_by: String,
}

impl ImageRecord {
    pub fn hex(&self) -> &str {
        id_hex(&self.id)
    }

    /// Whether the record can be believed at all: anyone who can write KV can write one,
    /// and its ID becomes a file name, a KV key and a peer's URL. The ID must be an image
    /// ID, and the torrent must be one file named after it (`HEX.tar`, `size` bytes, in
    /// pieces of `piece_length`) whose info hash is the record's.
    pub fn check(&self) -> Result<(), RecordError> {
        let bad = |field: &'static str, why: String| RecordError { field, why };
        image_id(&self.id).map_err(|why| bad("id", why))?;
        if !is_lower_hex(&self.info_hash, 40) {
            return Err(bad(
                "info_hash",
                format!("`{}` is not 40 lowercase hex digits", self.info_hash),
            ));
        }
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&self.torrent)
            .map_err(|e| bad("torrent", format!("not base64: {e}")))?;
        let meta = librqbit::torrent_from_bytes(&bytes)
            .map_err(|e| bad("torrent", format!("not a torrent: {e}")))?;
        let info = &meta.info.data;
        let name = info
            .name
            .as_ref()
            .map(|n| String::from_utf8_lossy(n.as_ref()).into_owned())
            .unwrap_or_default();
        let want = tarball_name(&self.id);
        if name != want || info.files.is_some() {
            return Err(bad(
                "torrent",
                format!("names `{name}`, not the one file `{want}`"),
            ));
        }
        if info.length != Some(self.size) || info.piece_length != self.piece_length {
            return Err(bad(
                "torrent",
                format!(
                    "holds {:?} bytes in pieces of {}, not the record's {} in pieces of {}",
                    info.length, info.piece_length, self.size, self.piece_length
                ),
            ));
        }
        let hash = meta.info_hash.as_string();
        if hash != self.info_hash {
            return Err(bad(
                "info_hash",
                format!("the torrent's info hash is {hash}, not {}", self.info_hash),
            ));
        }
        Ok(())
    }
}

/// Why an image record read from Consul is not believed: the field and what is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {why}")]
pub struct RecordError {
    pub field: &'static str,
    pub why: String,
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// An image ID as Docker writes it, `sha256:` and 64 lowercase hex digits; returns the
/// hex. Nothing else may become a tarball's file name or a KV key.
pub fn image_id(id: &str) -> Result<&str, String> {
    match id.strip_prefix("sha256:") {
        Some(hex) if is_lower_hex(hex, 64) => Ok(hex),
        _ => Err(format!(
            "`{}` is not an image ID (`sha256:` and 64 lowercase hex digits)",
            id.escape_debug()
        )),
    }
}

/// The image records among the entries of a read of [`KV_IMAGES`]: those that parse,
/// sit under the key their ID names and pass [`ImageRecord::check`]. The others come
/// back as `(key, why)`, for the caller to warn about; they never become a path.
pub fn parse_records(entries: &[(String, Vec<u8>)]) -> (Vec<ImageRecord>, Vec<(String, String)>) {
    let mut records = Vec::new();
    let mut bad = Vec::new();
    for (key, value) in entries {
        let record: ImageRecord = match crate::http::parse_json(value) {
            Ok(r) => r,
            Err(e) => {
                bad.push((key.clone(), e));
                continue;
            }
        };
        if let Err(e) = record.check() {
            bad.push((key.clone(), e.to_string()));
        } else if *key != image_key(&record.id) {
            bad.push((
                key.clone(),
                format!("id: `{}` belongs under another key", record.id),
            ));
        } else {
            records.push(record);
        }
    }
    (records, bad)
}

pub fn id_hex(id: &str) -> &str {
    id.trim_start_matches("sha256:")
}

/// An image ID as people read it: 12 hex digits, no `sha256:`.
pub fn short_id(id: &str) -> &str {
    crate::docker::engine::short(id_hex(id))
}

pub fn image_key(id: &str) -> String {
    format!("{KV_IMAGES}{}", id_hex(id))
}

pub fn peer_key(id: &str, node: NodeAddress) -> String {
    format!("{KV_PEERS}{}/{node}", id_hex(id))
}

/// The tarball's file name, which is also the torrent's name.
pub fn tarball_name(id: &str) -> String {
    format!("{}.tar", id_hex(id))
}

/// Piece size for a tarball of `size` bytes: about 1000 pieces, so the metainfo stays
/// small (20 bytes a piece) and a bad piece costs little to fetch again, between
/// 256 KiB (images of 10 MB and less) and 16 MiB (16 GB and more), a power of two.
pub fn piece_length(size: u64) -> u32 {
    const MIN: u64 = 256 << 10;
    const MAX: u64 = 16 << 20;
    let target = (size / 1000).clamp(MIN, MAX);
    let pow = target.next_power_of_two();
    // Round to the nearer power of two rather than always up.
    let len = if pow - target > target - pow / 2 {
        pow / 2
    } else {
        pow
    };
    len.clamp(MIN, MAX) as u32
}

/// Why an image reference matched no record, or more than one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    #[error(
        "no image `{0}` in the cluster; `arpanet image push {0}` on a node that has it publishes it (`arpanet image ls` lists the cluster's images)"
    )]
    Unknown(String),
    #[error("`{0}` matches {1} cluster images; use more of the ID")]
    Ambiguous(String, usize),
}

/// The record a user's reference names: a tag (`busybox` means `busybox:latest`), the
/// full ID, or an ID prefix of at least 4 hex digits.
pub fn resolve<'a>(
    records: &'a [ImageRecord],
    wanted: &str,
) -> Result<&'a ImageRecord, ResolveError> {
    let tag = normal_tag(wanted);
    if let Some(r) = records.iter().find(|r| r.tags.contains(&tag)) {
        return Ok(r);
    }
    let hex = id_hex(wanted);
    if hex.len() >= 4 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        let hits: Vec<&ImageRecord> = records
            .iter()
            .filter(|r| r.hex().starts_with(&hex.to_ascii_lowercase()))
            .collect();
        match hits.len() {
            0 => {}
            1 => return Ok(hits[0]),
            n => return Err(ResolveError::Ambiguous(wanted.to_string(), n)),
        }
    }
    Err(ResolveError::Unknown(wanted.to_string()))
}

/// `name` with Docker's implicit `:latest` when it has no tag or digest.
pub fn normal_tag(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') || name.contains('@') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

/// A node taking part in an image's swarm, as KV lists it: its peer address and
/// whether it has the whole tarball (a holder) or is still pulling.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmPeer {
    pub node: NodeAddress,
    pub peer: SocketAddr,
    pub complete: bool,
}

/// What a `KV_PEERS` entry holds (the node is in the key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerEntry {
    pub peer: SocketAddr,
    pub complete: bool,
}

/// The swarm of each image from the `KV_PEERS` entries: (image hex, peer). Entries
/// that do not parse are skipped (a newer version may write more).
pub fn parse_peers(entries: &[(String, Vec<u8>)]) -> Vec<(String, SwarmPeer)> {
    entries
        .iter()
        .filter_map(|(key, value)| {
            let rest = key.strip_prefix(KV_PEERS)?;
            let (hex, node) = rest.split_once('/')?;
            let node: NodeAddress = node.parse().ok()?;
            let entry: PeerEntry = serde_json::from_slice(value).ok()?;
            // A node trades images at its own overlay address only: an entry naming
            // any other peer would send pulls (and their bytes) wherever a KV writer says.
            if !is_lower_hex(hex, 64) || entry.peer.ip() != std::net::IpAddr::V4(node.overlay_ip())
            {
                return None;
            }
            Some((
                hex.to_string(),
                SwarmPeer {
                    node,
                    peer: entry.peer,
                    complete: entry.complete,
                },
            ))
        })
        .collect()
}

/// The info hash (hex) of a BitTorrent announce's query string, where it is
/// percent-encoded binary.
pub fn announced_info_hash(query: &str) -> Option<String> {
    let raw = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("info_hash="))?;
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(raw).collect();
    (bytes.len() == 20).then(|| bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The `left` of a BitTorrent announce: bytes the announcing torrent still lacks.
pub fn announced_left(query: &str) -> Option<u64> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("left="))?
        .parse()
        .ok()
}

/// Whom the tracker names to `me`, announcing image `image` (`size` bytes) with `left`
/// bytes still to fetch:
/// - holding it all: nobody; it waits to be asked (every puller connects to it, and
///   connecting back would only double the connections);
/// - holding nothing yet: the holders only. librqbit tells a peer of new pieces only
///   after that peer showed it has some, so two nodes that meet empty-handed never
///   trade; meeting with pieces, they send bitfields at once;
/// - holding some: every other node in the swarm, holders and pullers.
pub fn tracker_peers(
    swarms: &[(String, SwarmPeer)],
    image: &str,
    size: u64,
    me: NodeAddress,
    left: u64,
) -> Vec<SocketAddr> {
    if left == 0 {
        return Vec::new();
    }
    let has_pieces = left < size;
    swarms
        .iter()
        .filter(|(hex, p)| hex == image && p.node != me && (p.complete || has_pieces))
        .map(|(_, p)| p.peer)
        .collect()
}

/// A tracker's answer in the compact form (BEP 23): announce again after `interval`
/// seconds, and these IPv4 peers.
pub fn tracker_response(interval: u64, peers: &[SocketAddr]) -> Vec<u8> {
    let compact: Vec<u8> = peers
        .iter()
        .filter_map(|p| match p {
            SocketAddr::V4(v4) => Some(v4),
            SocketAddr::V6(_) => None,
        })
        .flat_map(|p| {
            let mut six = p.ip().octets().to_vec();
            six.extend_from_slice(&p.port().to_be_bytes());
            six
        })
        .collect();
    let mut out = format!("d8:intervali{interval}e5:peers{}:", compact.len()).into_bytes();
    out.extend_from_slice(&compact);
    out.push(b'e');
    out
}

/// One pull as the sync service reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transfer {
    pub id: u64,
    pub image: String,
    pub image_id: String,
    pub node: String,
    pub state: TransferState,
    /// Bytes of the tarball this node has and checked (a resumed pull starts above 0).
    pub done_bytes: u64,
    /// Bytes of the tarball found on disk and checked before fetching began: what an
    /// earlier, interrupted pull left.
    pub resumed_bytes: u64,
    /// Bytes this pull received from peers (pieces fetched twice or rejected count).
    pub fetched_bytes: u64,
    pub total_bytes: u64,
    /// Bytes per second, as librqbit estimates it.
    pub download_rate: f64,
    pub peers: usize,
    pub eta_secs: Option<u64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransferState {
    /// Checking what is already on disk (a resumed pull).
    Checking,
    Downloading,
    /// Checking the tarball's contents against the image ID.
    Verifying,
    Loading,
    Done,
    Failed,
}

impl TransferState {
    pub fn finished(self) -> bool {
        matches!(self, Self::Done | Self::Failed)
    }
}

/// A request to push or pull an image.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRequest {
    pub image: String,
    /// Where in the image a pull starts fetching, as a fraction from 0 to 1. Nodes
    /// pulling together start apart (`--all-nodes` spreads them evenly), so each has
    /// pieces the others lack. Without it the point comes from the node and image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<f64>,
}

/// `arpanet image ls`: an image in the cluster and the healthy nodes that hold it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterImage {
    pub id: String,
    pub tags: Vec<String>,
    pub size: u64,
    pub holders: Vec<String>,
}

/// Image bytes this node's sync service has sent to and received from peers, over all
/// its runs: it exits when idle, so it keeps them in the state dir
/// ([`crate::paths::image_transfer`]), where arpanetd's `/metrics` reads them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferTotals {
    pub sent: u64,
    pub received: u64,
}

impl TransferTotals {
    /// The totals last written; none when the service never moved a byte here (or the
    /// file is unreadable).
    pub fn load(path: &std::path::Path) -> Option<Self> {
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
    }
}

/// Turns the session's per-torrent byte counts into running totals. A torrent's counts
/// start over when it is added again or restarts, and go when it is removed.
#[derive(Debug, Default)]
pub struct TransferTally {
    /// By torrent: the (sent, received) it had at the last reading.
    last: std::collections::BTreeMap<String, (u64, u64)>,
    pub totals: TransferTotals,
}

impl TransferTally {
    pub fn new(totals: TransferTotals) -> Self {
        Self {
            last: Default::default(),
            totals,
        }
    }

    /// One reading of every running torrent: `(key, sent, received)`. Returns whether
    /// the totals grew.
    pub fn observe(&mut self, torrents: impl IntoIterator<Item = (String, u64, u64)>) -> bool {
        let before = self.totals;
        let mut seen = std::collections::BTreeMap::new();
        for (key, sent, received) in torrents {
            let (last_sent, last_received) = self.last.get(&key).copied().unwrap_or((0, 0));
            // Below the last reading: the torrent started over from 0.
            let grew = |now: u64, last: u64| if now >= last { now - last } else { now };
            self.totals.sent += grew(sent, last_sent);
            self.totals.received += grew(received, last_received);
            seen.insert(key, (sent, received));
        }
        self.last = seen;
        self.totals != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tracker_names_holders_first_pullers_once_there_is_something_to_trade() {
        let peer = |node: &str, complete: bool| {
            let node: NodeAddress = node.parse().unwrap();
            let peer = SocketAddr::from((node.overlay_ip(), 7101));
            SwarmPeer {
                node,
                peer,
                complete,
            }
        };
        let swarms: Vec<(String, SwarmPeer)> = vec![
            ("aa".into(), peer("0.1", true)),
            ("aa".into(), peer("0.2", false)),
            ("aa".into(), peer("0.3", false)),
            ("bb".into(), peer("0.4", true)),
        ];
        let me: NodeAddress = "0.3".parse().unwrap();
        let addr = |node: &str| peer(node, true).peer;
        assert_eq!(
            tracker_peers(&swarms, "aa", 100, me, 100),
            vec![addr("0.1")]
        );
        assert_eq!(
            tracker_peers(&swarms, "aa", 100, me, 40),
            vec![addr("0.1"), addr("0.2")]
        );
        assert!(tracker_peers(&swarms, "aa", 100, me, 0).is_empty());
        assert_eq!(
            tracker_peers(&swarms, "bb", 100, me, 100),
            vec![addr("0.4")]
        );
        assert!(tracker_peers(&swarms, "cc", 100, me, 100).is_empty());
    }

    fn record(id: &str, tags: &[&str]) -> ImageRecord {
        ImageRecord {
            id: format!("sha256:{id}"),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            size: 1,
            piece_length: 1,
            info_hash: String::new(),
            torrent: String::new(),
            pushed_by: "0.1".into(),
        }
    }

    #[test]
    fn pieces_stay_near_a_thousand_within_bounds() {
        assert_eq!(piece_length(1), 256 << 10);
        assert_eq!(piece_length(10_000_000), 256 << 10);
        assert_eq!(piece_length(200 << 20), 256 << 10);
        assert_eq!(piece_length(800 << 20), 1 << 20);
        assert_eq!(piece_length(1 << 30), 1 << 20);
        assert_eq!(piece_length(10 << 30), 8 << 20);
        assert_eq!(piece_length(u64::MAX), 16 << 20);
        for size in [10u64 << 20, 100 << 20, 1 << 30, 10 << 30] {
            let len = piece_length(size);
            assert!(len.is_power_of_two());
            let pieces = size.div_ceil(len as u64);
            assert!(pieces <= 2000, "{size}: {pieces} pieces");
        }
    }

    #[test]
    fn references_resolve_by_tag_id_or_prefix() {
        let records = [
            record("abcdef0123", &["web:1", "web:latest"]),
            record("abcd990000", &["busybox:latest"]),
        ];
        assert_eq!(resolve(&records, "web:1").unwrap().tags[0], "web:1");
        assert_eq!(resolve(&records, "busybox").unwrap().hex(), "abcd990000");
        assert_eq!(
            resolve(&records, "sha256:abcdef").unwrap().hex(),
            "abcdef0123"
        );
        assert_eq!(
            resolve(&records, "abcd"),
            Err(ResolveError::Ambiguous("abcd".into(), 2))
        );
        assert_eq!(
            resolve(&records, "nginx"),
            Err(ResolveError::Unknown("nginx".into()))
        );
        // Too short to be taken for an ID.
        assert!(resolve(&records, "abc").is_err());
    }

    #[test]
    fn tags_get_docker_default() {
        assert_eq!(normal_tag("busybox"), "busybox:latest");
        assert_eq!(
            normal_tag("localhost:5000/web"),
            "localhost:5000/web:latest"
        );
        assert_eq!(normal_tag("localhost:5000/web:2"), "localhost:5000/web:2");
    }

    #[test]
    fn announces_name_their_torrent_and_answers_are_compact() {
        let query =
            "info_hash=%12%34V%78%9A%BC%DE%F0%12%34V%78%9A%BC%DE%F0%12%34V%78&peer_id=x&port=1";
        assert_eq!(
            announced_info_hash(query).as_deref(),
            Some("123456789abcdef0123456789abcdef012345678")
        );
        assert_eq!(announced_info_hash("info_hash=%12"), None);
        assert_eq!(announced_info_hash("port=1"), None);
        assert_eq!(announced_left("info_hash=x&left=42&port=1"), Some(42));
        assert_eq!(announced_left("port=1"), None);
        let peers = ["10.255.0.2:7101".parse().unwrap()];
        assert_eq!(
            tracker_response(3, &peers),
            b"d8:intervali3e5:peers6:\x0a\xff\x00\x02\x1b\xbde".to_vec()
        );
    }

    #[test]
    fn peers_parse_from_kv_and_odd_entries_are_skipped() {
        let entry = |ip: &str, complete| {
            serde_json::to_vec(&PeerEntry {
                peer: format!("{ip}:7101").parse().unwrap(),
                complete,
            })
            .unwrap()
        };
        let hex = "ab".repeat(32);
        let entries = vec![
            (format!("{KV_PEERS}{hex}/0.2"), entry("10.255.0.2", true)),
            (format!("{KV_PEERS}{hex}/0.3"), entry("10.255.0.3", false)),
            (format!("{KV_PEERS}{hex}/bad"), entry("10.255.0.2", true)),
            (format!("{KV_PEERS}{hex}/0.4"), b"nonsense".to_vec()),
            (format!("{KV_PEERS}abc/0.2"), entry("10.255.0.2", true)),
            (format!("{KV_PEERS}../x/0.2"), entry("10.255.0.2", true)),
        ];
        let peers = parse_peers(&entries);
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0].0, hex);
        assert_eq!(peers[0].1.node.to_string(), "0.2");
        assert_eq!(peers[0].1.peer.to_string(), "10.255.0.2:7101");
        assert!(peers[0].1.complete);
        assert!(!peers[1].1.complete);
        // Node 0.3 saying its peer is 0.2's address, or one off the overlay: not believed.
        let claims_other = vec![(
            format!("{KV_PEERS}{hex}/0.3"),
            serde_json::to_vec(&PeerEntry {
                peer: "10.255.0.2:7101".parse().unwrap(),
                complete: true,
            })
            .unwrap(),
        )];
        assert!(parse_peers(&claims_other).is_empty());
        let elsewhere = vec![(
            format!("{KV_PEERS}{hex}/0.2"),
            serde_json::to_vec(&PeerEntry {
                peer: "192.0.2.1:7101".parse().unwrap(),
                complete: true,
            })
            .unwrap(),
        )];
        assert!(parse_peers(&elsewhere).is_empty());
    }

    #[test]
    fn image_ids_are_sha256_and_64_lowercase_hex_digits() {
        let hex = "0123456789abcdef".repeat(4);
        assert_eq!(image_id(&format!("sha256:{hex}")), Ok(hex.as_str()));
        let bad = [
            String::new(),
            "sha256:".into(),
            hex.clone(),
            format!("sha256:{}", &hex[..63]),
            format!("sha256:{hex}0"),
            format!("sha256:{}", hex.to_ascii_uppercase()),
            format!("sha512:{hex}"),
            format!("sha256:{}/..", &hex[..61]),
            "sha256:/x/y".into(),
            "sha256:../../x".into(),
            format!("sha256:{}\n", &hex[..62]),
            format!("sha256:{hex}\0"),
        ];
        for id in bad {
            let e = image_id(&id).unwrap_err();
            assert!(e.contains("is not an image ID"), "{id}: {e}");
        }
    }

    /// A single-file torrent as bencode, and a record that matches it.
    fn torrent_record(name: &str, size: u64) -> ImageRecord {
        use base64::Engine as _;
        let hex = "ab".repeat(32);
        let info = format!(
            "d6:lengthi{size}e4:name{}:{name}12:piece lengthi262144e6:pieces20:{}e",
            name.len(),
            "x".repeat(20)
        );
        let bytes = format!("d4:info{info}e").into_bytes();
        let meta = librqbit::torrent_from_bytes(&bytes).unwrap();
        ImageRecord {
            id: format!("sha256:{hex}"),
            tags: vec!["web:1".into()],
            size: 1000,
            piece_length: 262144,
            info_hash: meta.info_hash.as_string(),
            torrent: base64::engine::general_purpose::STANDARD.encode(&bytes),
            pushed_by: "0.1".into(),
        }
    }

    #[test]
    fn a_record_is_believed_only_when_its_torrent_is_the_tarball_its_id_names() {
        let hex = "ab".repeat(32);
        let good = torrent_record(&format!("{hex}.tar"), 1000);
        good.check().unwrap();

        let field = |r: &ImageRecord| r.check().unwrap_err().field;
        let mut r = good.clone();
        r.id = "sha256:/x/y".into();
        assert_eq!(field(&r), "id");
        let r = torrent_record("other.tar", 1000);
        assert_eq!(field(&r), "torrent");
        let r = torrent_record("../../etc/passwd", 1000);
        assert_eq!(field(&r), "torrent");
        let r = torrent_record(&format!("{hex}.tar"), 999);
        assert_eq!(field(&r), "torrent");
        let mut r = good.clone();
        r.info_hash = "0".repeat(40);
        assert_eq!(field(&r), "info_hash");
        let mut r = good.clone();
        r.info_hash = good.info_hash.to_ascii_uppercase();
        assert_eq!(field(&r), "info_hash");
        let mut r = good.clone();
        r.torrent = "not base64!".into();
        assert_eq!(field(&r), "torrent");
        let mut r = good.clone();
        r.torrent = "aGVsbG8=".into();
        assert_eq!(field(&r), "torrent");
    }

    #[test]
    fn records_read_from_kv_are_checked_and_bad_ones_named_by_key() {
        let hex = "ab".repeat(32);
        let good = torrent_record(&format!("{hex}.tar"), 1000);
        let mut poisoned = good.clone();
        poisoned.id = "sha256:/x/y".into();
        let json = |r: &ImageRecord| serde_json::to_vec(r).unwrap();
        let entries = vec![
            (format!("{KV_IMAGES}{hex}"), json(&good)),
            (format!("{KV_IMAGES}x"), json(&poisoned)),
            (format!("{KV_IMAGES}{}", "cd".repeat(32)), json(&good)),
            (format!("{KV_IMAGES}junk"), b"{".to_vec()),
        ];
        let (records, bad) = parse_records(&entries);
        assert_eq!(records, vec![good]);
        let keys: Vec<&str> = bad.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                format!("{KV_IMAGES}x"),
                format!("{KV_IMAGES}{}", "cd".repeat(32)),
                format!("{KV_IMAGES}junk")
            ]
        );
        assert!(
            bad[0].1.starts_with("id: `sha256:/x/y` is not an image ID"),
            "{}",
            bad[0].1
        );
        assert!(
            bad[1].1.contains("belongs under another key"),
            "{}",
            bad[1].1
        );
    }

    #[test]
    fn transfer_totals_add_what_each_torrent_moved_across_restarts() {
        let mut tally = TransferTally::new(TransferTotals {
            sent: 10,
            received: 20,
        });
        let t = |k: &str, s, r| (k.to_string(), s, r);
        assert!(tally.observe([t("a", 5, 100)]));
        assert!(!tally.observe([t("a", 5, 100)]));
        assert!(tally.observe([t("a", 7, 150), t("b", 0, 30)]));
        // a restarted (its counts start over); b was removed.
        assert!(tally.observe([t("a", 1, 10)]));
        // b is back: counted from 0.
        tally.observe([t("a", 1, 10), t("b", 0, 5)]);
        assert_eq!(
            tally.totals,
            TransferTotals {
                sent: 10 + 7 + 1,
                received: 20 + 150 + 30 + 10 + 5
            }
        );
    }
}
