//! Admission to the overlay: a node proves it holds the cluster secret before any
//! FDB, neighbour, route or firewall entry is made for it.
//!
//! The proof is a signed hello: one UDP datagram to each join peer's underlay address,
//! naming the sender's arpanet address and underlay IP, stamped with the time and
//! signed with HMAC-SHA256 under a key derived from the secret. A valid hello is
//! answered with the receiver's own (marked as a reply, so answers never echo), so a
//! newcomer that names only the boot node and the boot node admit each other at once;
//! Consul, reached over the overlay from then on, tells everyone else.
//!
//! Chosen over Consul's encrypted gossip on the underlay because Consul then stays on
//! the node plane (10.253.a.b), where the catalog's node address proves which arpanet
//! address an entry belongs to, and nothing of Consul (RPC, HTTP, serf) listens on the
//! underlay. What listens there is this socket, which answers only valid hellos.
//!
//! A hello is believed only from the underlay IP it names, within [`MAX_SKEW`] of
//! this host's clock. A replayed hello can only re-admit its sender at its own
//! address, which is harmless; a hello cannot name somebody else's underlay IP.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{KeyInit, Mac};
use serde::Serialize;
use sha2::Sha256;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::Peer;
use crate::addressing::NodeAddress;

/// Bytes in a hello: magic, version, flags, address, underlay IP, time, HMAC.
pub const HELLO_LEN: usize = 4 + 1 + 1 + 2 + 4 + 8 + 32;
const MAGIC: &[u8; 4] = b"ARPH";
const VERSION: u8 = 1;
const FLAG_REPLY: u8 = 1;
/// How far a hello's time may be from ours (clocks of a cluster's hosts are kept by NTP).
pub const MAX_SKEW: Duration = Duration::from_secs(120);
/// How often a node sends its hello to its join peers.
pub const HELLO_INTERVAL: Duration = Duration::from_secs(5);
/// How long a node admitted by hello alone stays admitted after its last hello.
pub const ADMITTED_FOR: Duration = Duration::from_secs(20);

/// What a hello says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    pub address: NodeAddress,
    pub underlay_ip: Ipv4Addr,
    /// Unix seconds when it was sent.
    pub sent_at: u64,
    pub reply: bool,
}

/// Why a datagram did not admit its sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("not an arpanet hello ({0} bytes)")]
    NotAHello(usize),
    #[error("hello version {0}, this node speaks {VERSION}")]
    Version(u8),
    #[error("its signature does not verify: it holds another cluster secret, or none")]
    Signature,
    #[error("its clock is {0} s away from ours (at most {max} s)", max = MAX_SKEW.as_secs())]
    Skew(u64),
    #[error("it names underlay IP {claimed} but came from {from}")]
    Source { claimed: Ipv4Addr, from: Ipv4Addr },
    #[error("it names no valid arpanet address")]
    Address,
    #[error("it claims this node's own address {0}")]
    OwnAddress(NodeAddress),
}

fn mac(key: &[u8; 32]) -> hmac::Hmac<Sha256> {
    <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length")
}

impl Hello {
    pub fn seal(&self, key: &[u8; 32]) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        let (a, bb) = self.address.parts();
        b[..4].copy_from_slice(MAGIC);
        b[4] = VERSION;
        b[5] = if self.reply { FLAG_REPLY } else { 0 };
        b[6] = a;
        b[7] = bb;
        b[8..12].copy_from_slice(&self.underlay_ip.octets());
        b[12..20].copy_from_slice(&self.sent_at.to_be_bytes());
        let mut m = mac(key);
        m.update(&b[..20]);
        b[20..].copy_from_slice(&m.finalize().into_bytes());
        b
    }

    /// Checks a datagram from `from` at `now` (unix seconds), signature first: nothing
    /// unsigned is believed, not even its claimed address.
    pub fn open(
        bytes: &[u8],
        key: &[u8; 32],
        from: Ipv4Addr,
        now: u64,
        me: NodeAddress,
    ) -> Result<Hello, Rejected> {
        if bytes.len() != HELLO_LEN || &bytes[..4] != MAGIC {
            return Err(Rejected::NotAHello(bytes.len()));
        }
        if bytes[4] != VERSION {
            return Err(Rejected::Version(bytes[4]));
        }
        let mut m = mac(key);
        m.update(&bytes[..20]);
        m.verify_slice(&bytes[20..])
            .map_err(|_| Rejected::Signature)?;
        let sent_at = u64::from_be_bytes(bytes[12..20].try_into().expect("8 bytes"));
        let skew = now.abs_diff(sent_at);
        if skew > MAX_SKEW.as_secs() {
            return Err(Rejected::Skew(skew));
        }
        let claimed = Ipv4Addr::new(bytes[8], bytes[9], bytes[10], bytes[11]);
        if claimed != from {
            return Err(Rejected::Source { claimed, from });
        }
        let address = NodeAddress::new(bytes[6], bytes[7]).map_err(|_| Rejected::Address)?;
        if address == me {
            return Err(Rejected::OwnAddress(address));
        }
        Ok(Hello {
            address,
            underlay_ip: claimed,
            sent_at,
            reply: bytes[5] & FLAG_REPLY != 0,
        })
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Nodes admitted by hello, and the hellos turned away (for `arpanet status`).
#[derive(Debug, Default)]
pub struct Admissions {
    /// Address -> (underlay IP, unix seconds of its last hello).
    admitted: BTreeMap<NodeAddress, (Ipv4Addr, u64)>,
    /// Underlay IP -> why its last datagram was turned away, and when.
    rejected: BTreeMap<Ipv4Addr, (String, u64)>,
}

/// At most this many sources of rejected datagrams are remembered.
const REJECTED_KEPT: usize = 32;

impl Admissions {
    /// Records a valid hello. Returns whether the set of admitted peers changed.
    pub fn admit(&mut self, hello: &Hello, now: u64) -> bool {
        self.rejected.remove(&hello.underlay_ip);
        let before = self
            .admitted
            .insert(hello.address, (hello.underlay_ip, now));
        before.map(|(ip, _)| ip) != Some(hello.underlay_ip)
    }

    /// Records a turned-away datagram. Returns whether this is news (a new source or a
    /// new reason), so callers log once per source rather than once per datagram.
    pub fn reject(&mut self, from: Ipv4Addr, why: &Rejected, now: u64) -> bool {
        let why = why.to_string();
        let news = self.rejected.get(&from).is_none_or(|(w, _)| *w != why);
        if news && !self.rejected.contains_key(&from) && self.rejected.len() >= REJECTED_KEPT {
            let oldest = self
                .rejected
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(ip, _)| *ip);
            if let Some(ip) = oldest {
                self.rejected.remove(&ip);
            }
        }
        self.rejected.insert(from, (why, now));
        news
    }

    /// The peers admitted by a hello no older than [`ADMITTED_FOR`]; older ones are forgotten.
    pub fn current(&mut self, now: u64) -> Vec<Peer> {
        let limit = ADMITTED_FOR.as_secs();
        self.admitted
            .retain(|_, (_, at)| now.saturating_sub(*at) <= limit);
        self.admitted
            .iter()
            .map(|(address, (underlay_ip, _))| Peer {
                address: *address,
                underlay_ip: *underlay_ip,
            })
            .collect()
    }

    pub fn rejected(&self) -> Vec<RejectedHello> {
        self.rejected
            .iter()
            .map(|(from, (reason, at))| RejectedHello {
                from: *from,
                reason: reason.clone(),
                at: *at,
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RejectedHello {
    pub from: Ipv4Addr,
    pub reason: String,
    /// Unix seconds.
    pub at: u64,
}

/// What this node says in its hellos, and to whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Speaker {
    pub me: NodeAddress,
    pub underlay_ip: Ipv4Addr,
    pub port: u16,
    pub key: [u8; 32],
    /// The join peers' underlay IPs.
    pub join: Vec<Ipv4Addr>,
}

pub type Shared = Arc<Mutex<Admissions>>;

impl Speaker {
    fn hello(&self, reply: bool) -> [u8; HELLO_LEN] {
        Hello {
            address: self.me,
            underlay_ip: self.underlay_ip,
            sent_at: unix_now(),
            reply,
        }
        .seal(&self.key)
    }

    /// Binds the hello socket on the underlay address only.
    pub async fn bind(&self) -> std::io::Result<UdpSocket> {
        UdpSocket::bind((self.underlay_ip, self.port)).await
    }

    async fn greet(&self, socket: &UdpSocket) {
        let hello = self.hello(false);
        for ip in &self.join {
            if let Err(e) = socket.send_to(&hello, (*ip, self.port)).await {
                debug!("hello to {ip}: {e}");
            }
        }
    }

    /// Handles one datagram; returns the node it admitted anew, if any.
    async fn receive(
        &self,
        socket: &UdpSocket,
        state: &Shared,
        bytes: &[u8],
        from: SocketAddr,
    ) -> Option<Hello> {
        let SocketAddr::V4(from) = from else {
            return None;
        };
        let now = unix_now();
        match Hello::open(bytes, &self.key, *from.ip(), now, self.me) {
            Ok(hello) => {
                if !hello.reply
                    && let Err(e) = socket.send_to(&self.hello(true), from).await
                {
                    debug!("hello reply to {from}: {e}");
                }
                let new = state.lock().expect("admissions").admit(&hello, now);
                new.then_some(hello)
            }
            Err(why) => {
                if state
                    .lock()
                    .expect("admissions")
                    .reject(*from.ip(), &why, now)
                {
                    warn!("turned away a hello from {from}: {why}");
                }
                None
            }
        }
    }

    /// Greets the join peers every [`HELLO_INTERVAL`] and answers and records hellos,
    /// signalling `changed` whenever a node is admitted anew.
    pub async fn serve(self, socket: UdpSocket, state: Shared, changed: mpsc::Sender<()>) {
        let mut tick = tokio::time::interval(HELLO_INTERVAL);
        let mut buf = [0u8; 512];
        loop {
            tokio::select! {
                _ = tick.tick() => self.greet(&socket).await,
                r = socket.recv_from(&mut buf) => match r {
                    Ok((n, from)) => {
                        if let Some(h) = self.receive(&socket, &state, &buf[..n], from).await {
                            info!("admitted node {} at {} (a valid hello)", h.address, h.underlay_ip);
                            let _ = changed.try_send(());
                        }
                    }
                    Err(e) => {
                        warn!("hello socket: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
            }
        }
    }

    /// One round for `arpanetd --once`: greets the join peers and takes what comes back
    /// until every one of them answered or `wait` is over.
    pub async fn exchange(&self, socket: &UdpSocket, state: &Shared, wait: Duration) {
        let mut answered = std::collections::BTreeSet::new();
        let mut buf = [0u8; 512];
        let deadline = tokio::time::Instant::now() + wait;
        // Greeted again every second: a peer that was starting may have missed one.
        let mut again = tokio::time::interval(Duration::from_secs(1));
        while answered.len() < self.join.len() {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = again.tick() => self.greet(socket).await,
                r = socket.recv_from(&mut buf) => {
                    let Ok((n, from)) = r else { continue };
                    self.receive(socket, state, &buf[..n], from).await;
                    if let SocketAddr::V4(v4) = from
                        && self.join.contains(v4.ip())
                    {
                        answered.insert(*v4.ip());
                    }
                }
            }
        }
    }
}

/// An `arpanet` catalog entry that is not believed, and why (shown by `arpanet status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RefusedClaim {
    /// The Consul node the entry is registered on.
    pub node: String,
    /// What it claims, as `a.b at UNDERLAY_IP` (or the raw meta when that is unusable).
    pub claims: String,
    pub reason: String,
}

/// Where each admitted peer came from, and what was turned away: written by arpanetd
/// into the state dir, read by `arpanet status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Status {
    pub admitted: Vec<AdmittedPeer>,
    /// Hellos that did not verify, by source.
    pub turned_away: Vec<RejectedHello>,
    /// Catalog entries not believed (another node's address, conflicting claims).
    pub refused_claims: Vec<RefusedClaim>,
}

impl Status {
    /// `peers` are the ones programmed; each is put down to the catalog when it names
    /// the peer so, to the cache when the catalog has not answered, else to a hello.
    pub fn new(
        peers: &[Peer],
        catalog: Option<&[Peer]>,
        cache: &[Peer],
        turned_away: Vec<RejectedHello>,
        refused_claims: Vec<RefusedClaim>,
    ) -> Self {
        let by = |p: &Peer| match catalog {
            Some(c) if c.contains(p) => "catalog",
            None if cache.contains(p) => "cache",
            _ => "hello",
        };
        Status {
            admitted: peers
                .iter()
                .map(|p| AdmittedPeer {
                    address: p.address,
                    underlay_ip: p.underlay_ip,
                    by: by(p).to_string(),
                })
                .collect(),
            turned_away,
            refused_claims,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct AdmittedPeer {
    pub address: NodeAddress,
    pub underlay_ip: Ipv4Addr,
    /// `catalog`, `cache` (the catalog's last answer) or `hello`.
    pub by: String,
}

/// The last status arpanetd wrote; none when it never ran (or the file is unreadable).
pub fn load_status(path: &std::path::Path) -> Option<Status> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];
    const UL: Ipv4Addr = Ipv4Addr::new(192, 168, 8, 121);

    fn me() -> NodeAddress {
        "0.1".parse().unwrap()
    }

    fn hello(reply: bool) -> Hello {
        Hello {
            address: "0.2".parse().unwrap(),
            underlay_ip: UL,
            sent_at: 1_000_000,
            reply,
        }
    }

    #[test]
    fn a_sealed_hello_opens_with_the_same_key_only() {
        for reply in [false, true] {
            let b = hello(reply).seal(&KEY);
            assert_eq!(Hello::open(&b, &KEY, UL, 1_000_030, me()), Ok(hello(reply)));
            assert_eq!(
                Hello::open(&b, &[8; 32], UL, 1_000_030, me()),
                Err(Rejected::Signature)
            );
        }
    }

    #[test]
    fn every_changed_byte_breaks_the_signature() {
        let b = hello(false).seal(&KEY);
        for i in 5..HELLO_LEN {
            let mut bad = b;
            bad[i] ^= 0x01;
            assert_eq!(
                Hello::open(&bad, &KEY, UL, 1_000_000, me()),
                Err(Rejected::Signature),
                "byte {i}"
            );
        }
    }

    #[test]
    fn garbage_stale_and_relayed_hellos_are_turned_away() {
        let b = hello(false).seal(&KEY);
        assert_eq!(
            Hello::open(&b[..40], &KEY, UL, 1_000_000, me()),
            Err(Rejected::NotAHello(40))
        );
        assert_eq!(
            Hello::open(&[0u8; HELLO_LEN], &KEY, UL, 1_000_000, me()),
            Err(Rejected::NotAHello(HELLO_LEN))
        );
        let mut v2 = b;
        v2[4] = 2;
        assert_eq!(
            Hello::open(&v2, &KEY, UL, 1_000_000, me()),
            Err(Rejected::Version(2))
        );
        assert_eq!(
            Hello::open(&b, &KEY, UL, 1_000_121, me()),
            Err(Rejected::Skew(121))
        );
        assert!(Hello::open(&b, &KEY, UL, 999_880, me()).is_ok());
        let other = Ipv4Addr::new(192, 168, 8, 66);
        assert_eq!(
            Hello::open(&b, &KEY, other, 1_000_000, me()),
            Err(Rejected::Source {
                claimed: UL,
                from: other
            })
        );
        let mine = Hello {
            address: me(),
            ..hello(false)
        }
        .seal(&KEY);
        assert_eq!(
            Hello::open(&mine, &KEY, UL, 1_000_000, me()),
            Err(Rejected::OwnAddress(me()))
        );
        let zero = Hello {
            address: "0.2".parse().unwrap(),
            ..hello(false)
        };
        let mut b0 = zero.seal(&KEY);
        b0[7] = 0; // 0.0 is no node's address; re-sign so only the address is wrong
        let mut m = mac(&KEY);
        m.update(&b0[..20]);
        b0[20..].copy_from_slice(&m.finalize().into_bytes());
        assert_eq!(
            Hello::open(&b0, &KEY, UL, 1_000_000, me()),
            Err(Rejected::Address)
        );
    }

    #[test]
    fn status_says_how_each_peer_was_admitted() {
        let p = |a: &str, last| Peer {
            address: a.parse().unwrap(),
            underlay_ip: Ipv4Addr::new(192, 168, 8, last),
        };
        let by = |s: Status| -> Vec<String> { s.admitted.into_iter().map(|a| a.by).collect() };
        let peers = [p("0.2", 2), p("0.5", 5)];
        assert_eq!(
            by(Status::new(
                &peers,
                Some(&[p("0.2", 2)]),
                &[],
                vec![],
                vec![]
            )),
            ["catalog", "hello"]
        );
        assert_eq!(
            by(Status::new(&peers, None, &[p("0.2", 2)], vec![], vec![])),
            ["cache", "hello"]
        );
        // Once the catalog answers, the cache says nothing.
        assert_eq!(
            by(Status::new(
                &peers,
                Some(&[]),
                &[p("0.2", 2)],
                vec![],
                vec![]
            )),
            ["hello", "hello"]
        );
    }

    #[test]
    fn admissions_expire_and_rejections_are_news_once() {
        let mut a = Admissions::default();
        assert!(a.admit(&hello(false), 100));
        assert!(!a.admit(&hello(true), 105), "same node, same IP: no change");
        assert_eq!(a.current(105 + ADMITTED_FOR.as_secs()).len(), 1);
        assert!(a.current(106 + ADMITTED_FOR.as_secs()).is_empty());
        let from = Ipv4Addr::new(192, 168, 8, 200);
        assert!(a.reject(from, &Rejected::Signature, 1));
        assert!(!a.reject(from, &Rejected::Signature, 2));
        assert!(a.reject(from, &Rejected::Skew(500), 3));
        assert_eq!(a.rejected().len(), 1);
        for i in 0..100u8 {
            a.reject(
                Ipv4Addr::new(10, 9, 9, i),
                &Rejected::Signature,
                10 + u64::from(i),
            );
        }
        assert_eq!(a.rejected().len(), REJECTED_KEPT);
    }
}
