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
//!
//! The secret alone does not admit: a node removed by `arpanet node rm` still holds
//! it. So a hello (version 2) also carries the sender's node certificate and a
//! signature by the node's key, and is believed only when the certificate chains to
//! the cluster CA, is valid now, is not on the revocation list, and names the address
//! the hello names. The HMAC is checked first, so a stranger's datagram costs no
//! certificate parsing. Version 1 (the secret alone) is refused: a rolling upgrade to
//! version 2 admits nobody across old and new nodes until every node is upgraded.
//!
//! Wire format (integers big-endian; at most [`MAX_HELLO_LEN`] bytes):
//!
//! ```text
//! 0   4  "ARPH"
//! 4   1  version (2)
//! 5   1  flags (bit 0: a reply)
//! 6   2  arpanet address a, b
//! 8   4  underlay IPv4
//! 12  8  unix seconds when sent
//! 20  2  N, the certificate's length
//! 22  N  the sender's node certificate (DER)
//! +0  1  S, the signature's length
//! +1  S  ECDSA P-256 SHA-256 (ASN.1 DER) by the certificate's key over bytes 0..22+N
//! +S 32  HMAC-SHA256 under the admission key over everything before it
//! ```

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{KeyInit, Mac};
use rcgen::SigningKey;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::Serialize;
use sha2::Sha256;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::Peer;
use crate::addressing::NodeAddress;
use crate::identity::{CertInfo, LocalIdentity, NodeTls, Revoked};

/// Bytes before the certificate: magic, version, flags, address, underlay IP, time,
/// certificate length.
const HEADER_LEN: usize = 4 + 1 + 1 + 2 + 4 + 8 + 2;
const HMAC_LEN: usize = 32;
/// An ECDSA P-256 signature in DER is at most 72 bytes.
const MAX_SIGNATURE_LEN: usize = 72;
/// The largest hello: one datagram that no underlay path fragments.
pub const MAX_HELLO_LEN: usize = 1400;
/// The largest certificate a hello carries (a node certificate is about 600 bytes).
pub const MAX_CERT_LEN: usize = MAX_HELLO_LEN - HEADER_LEN - 1 - MAX_SIGNATURE_LEN - HMAC_LEN;
const MAGIC: &[u8; 4] = b"ARPH";
/// Version 2 carries the sender's certificate and a signature by its key; version 1
/// (the cluster secret alone) is refused, so a removed node cannot get back in.
const VERSION: u8 = 2;
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
    #[error(
        "hello version {0}, this node speaks only {VERSION} (a node from before node certificates: upgrade it)"
    )]
    Version(u8),
    #[error("a hello whose lengths do not add up ({0} bytes): truncated or malformed")]
    Truncated(usize),
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
    #[error("this node cannot check certificates (it has no cluster identity): {0}")]
    NoTrust(String),
    #[error("its certificate is unusable: {0}")]
    Certificate(String),
    #[error("its certificate is not from this cluster's CA")]
    ForeignCa,
    #[error("its certificate is not valid now: {0}")]
    CertificateTime(String),
    #[error("its certificate's key did not sign it (a certificate that is not its own)")]
    CertificateSignature,
    #[error(
        "its certificate (serial {0}) is revoked: the node was removed (`arpanet node rm`) and must join again with a token"
    )]
    Revoked(String),
    #[error("it names {claimed}, but its certificate is for {certified}")]
    NotItsCertificate {
        claimed: NodeAddress,
        certified: NodeAddress,
    },
}

fn mac(key: &[u8; 32]) -> hmac::Hmac<Sha256> {
    <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length")
}

/// What a node proves itself with in its hellos, and checks others' against: its
/// certificate and key, and the cluster CA.
#[derive(Clone, PartialEq, Eq)]
pub struct HelloIdentity {
    cert_der: Vec<u8>,
    key_pem: String,
    /// Every certificate of ca.pem (DER).
    ca_ders: Vec<Vec<u8>>,
}

impl std::fmt::Debug for HelloIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HelloIdentity")
            .field("cert_bytes", &self.cert_der.len())
            .finish_non_exhaustive()
    }
}

impl HelloIdentity {
    pub fn new(cert_der: Vec<u8>, key_pem: String, ca_ders: Vec<Vec<u8>>) -> Result<Self, String> {
        if cert_der.len() > MAX_CERT_LEN {
            return Err(format!(
                "the node certificate is {} bytes, a hello carries at most {MAX_CERT_LEN}",
                cert_der.len()
            ));
        }
        rcgen::KeyPair::from_pem(&key_pem).map_err(|e| format!("node key: {e}"))?;
        if ca_ders.is_empty() {
            return Err("the CA file holds no certificate".into());
        }
        Ok(Self {
            cert_der,
            key_pem,
            ca_ders,
        })
    }

    pub fn from_local(identity: &LocalIdentity) -> Result<Self, String> {
        let ders = |pem: &str| -> Result<Vec<Vec<u8>>, String> {
            use rustls_pki_types::pem::PemObject;
            CertificateDer::pem_slice_iter(pem.as_bytes())
                .map(|c| c.map(|c| c.to_vec()).map_err(|e| format!("{e:?}")))
                .collect()
        };
        let cert = ders(&identity.cert_pem)
            .map_err(|e| format!("{}: {e}", identity.files.node_cert().display()))?
            .into_iter()
            .next()
            .ok_or_else(|| format!("{}: no certificate", identity.files.node_cert().display()))?;
        let ca = ders(&identity.ca_pem)
            .map_err(|e| format!("{}: {e}", identity.files.ca_cert().display()))?;
        Self::new(cert, identity.key_pem.clone(), ca)
    }
}

/// A datagram whose HMAC verified (its sender holds the cluster secret) and whose
/// fields are sound; its certificate is not checked yet.
#[derive(Debug)]
pub struct Sealed<'a> {
    pub hello: Hello,
    signed: &'a [u8],
    cert: &'a [u8],
    signature: &'a [u8],
}

impl Hello {
    /// The datagram: this hello, the certificate of `id` and a signature by its key over
    /// both, then the HMAC under `key` over all of it (see the module's comment).
    pub fn seal(&self, key: &[u8; 32], id: &HelloIdentity) -> Result<Vec<u8>, String> {
        let (a, bb) = self.address.parts();
        let mut b = Vec::with_capacity(HEADER_LEN + id.cert_der.len() + 1 + 72 + HMAC_LEN);
        b.extend_from_slice(MAGIC);
        b.push(VERSION);
        b.push(if self.reply { FLAG_REPLY } else { 0 });
        b.extend_from_slice(&[a, bb]);
        b.extend_from_slice(&self.underlay_ip.octets());
        b.extend_from_slice(&self.sent_at.to_be_bytes());
        let cert_len = u16::try_from(id.cert_der.len()).map_err(|_| "certificate too large")?;
        b.extend_from_slice(&cert_len.to_be_bytes());
        b.extend_from_slice(&id.cert_der);
        let pair = rcgen::KeyPair::from_pem(&id.key_pem).map_err(|e| format!("node key: {e}"))?;
        let signature = pair
            .sign(&b)
            .map_err(|e| format!("signing the hello: {e}"))?;
        if signature.len() > MAX_SIGNATURE_LEN {
            return Err(format!(
                "a signature of {} bytes (the node key is not ECDSA P-256)",
                signature.len()
            ));
        }
        b.push(signature.len() as u8);
        b.extend_from_slice(&signature);
        let mut m = mac(key);
        m.update(&b);
        b.extend_from_slice(&m.finalize().into_bytes());
        Ok(b)
    }

    /// Checks a datagram from `from` at `now` (unix seconds), HMAC first: nothing from
    /// a holder of another secret is believed, not even its claimed address, and its
    /// certificate is not parsed. [`Sealed::prove`] then checks the certificate.
    pub fn open<'a>(
        bytes: &'a [u8],
        key: &[u8; 32],
        from: Ipv4Addr,
        now: u64,
        me: NodeAddress,
    ) -> Result<Sealed<'a>, Rejected> {
        if bytes.len() < 5 || bytes.len() > MAX_HELLO_LEN || &bytes[..4] != MAGIC {
            return Err(Rejected::NotAHello(bytes.len()));
        }
        if bytes[4] != VERSION {
            return Err(Rejected::Version(bytes[4]));
        }
        let truncated = || Rejected::Truncated(bytes.len());
        if bytes.len() < HEADER_LEN {
            return Err(truncated());
        }
        let cert_len = usize::from(u16::from_be_bytes([bytes[20], bytes[21]]));
        let cert_end = HEADER_LEN + cert_len;
        let sig_len = usize::from(*bytes.get(cert_end).ok_or_else(truncated)?);
        let sig_end = cert_end + 1 + sig_len;
        if bytes.len() != sig_end + HMAC_LEN {
            return Err(truncated());
        }
        let mut m = mac(key);
        m.update(&bytes[..sig_end]);
        m.verify_slice(&bytes[sig_end..])
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
        Ok(Sealed {
            hello: Hello {
                address,
                underlay_ip: claimed,
                sent_at,
                reply: bytes[5] & FLAG_REPLY != 0,
            },
            signed: &bytes[..cert_end],
            cert: &bytes[HEADER_LEN..cert_end],
            signature: &bytes[cert_end + 1..sig_end],
        })
    }
}

impl Sealed<'_> {
    /// The hello, if its certificate chains to the cluster CA (that of `trust`) and is
    /// valid at `now`, its key signed the hello, its serial is not in `revoked`, and it
    /// is for the address the hello names.
    pub fn prove(
        self,
        trust: &HelloIdentity,
        revoked: &Revoked,
        now: u64,
    ) -> Result<Hello, Rejected> {
        let cert_der = CertificateDer::from(self.cert);
        let cert = webpki::EndEntityCert::try_from(&cert_der)
            .map_err(|e| Rejected::Certificate(e.to_string()))?;
        let cas: Vec<CertificateDer<'_>> = trust
            .ca_ders
            .iter()
            .map(|d| CertificateDer::from(d.as_slice()))
            .collect();
        let anchors = cas
            .iter()
            .map(webpki::anchor_from_trusted_cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Rejected::NoTrust(format!("the cluster CA: {e}")))?;
        let algs: &[&dyn rustls_pki_types::SignatureVerificationAlgorithm] = &[
            webpki::aws_lc_rs::ECDSA_P256_SHA256,
            webpki::aws_lc_rs::ECDSA_P384_SHA384,
            webpki::aws_lc_rs::ED25519,
        ];
        let time = UnixTime::since_unix_epoch(Duration::from_secs(now));
        cert.verify_for_usage(
            algs,
            &anchors,
            &[],
            time,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| match e {
            // Another CA of the same name is found as the issuer, and its signature fails.
            webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => {
                Rejected::ForeignCa
            }
            webpki::Error::CertExpired { .. }
            | webpki::Error::CertNotValidYet { .. }
            | webpki::Error::InvalidCertValidity => Rejected::CertificateTime(e.to_string()),
            e => Rejected::Certificate(e.to_string()),
        })?;
        cert.verify_signature(
            webpki::aws_lc_rs::ECDSA_P256_SHA256,
            self.signed,
            self.signature,
        )
        .map_err(|_| Rejected::CertificateSignature)?;
        let info =
            CertInfo::from_der(self.cert).map_err(|e| Rejected::Certificate(e.to_string()))?;
        if revoked.contains(&info.serial) {
            return Err(Rejected::Revoked(info.serial));
        }
        if info.identity.address != self.hello.address {
            return Err(Rejected::NotItsCertificate {
                claimed: self.hello.address,
                certified: info.identity.address,
            });
        }
        Ok(self.hello)
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
    /// What it proves itself with; without an identity (why not), it sends no hellos
    /// and admits nobody.
    pub identity: Result<HelloIdentity, String>,
}

pub type Shared = Arc<Mutex<Admissions>>;

/// Room for the largest hello and more, so an oversized datagram is seen as such.
const RECV_BUF: usize = 2048;

impl Speaker {
    fn hello(&self, reply: bool) -> Option<Vec<u8>> {
        let id = self.identity.as_ref().ok()?;
        let hello = Hello {
            address: self.me,
            underlay_ip: self.underlay_ip,
            sent_at: unix_now(),
            reply,
        };
        match hello.seal(&self.key, id) {
            Ok(b) => Some(b),
            Err(e) => {
                warn!("admission: no hello sent: {e}");
                None
            }
        }
    }

    /// Says once, when the task starts, that this node cannot prove itself.
    fn say_why_silent(&self) {
        if let Err(e) = &self.identity {
            warn!("admission: this node sends no hellos, so no node admits it: {e}");
        }
    }

    /// Binds the hello socket on the underlay address only.
    pub async fn bind(&self) -> std::io::Result<UdpSocket> {
        UdpSocket::bind((self.underlay_ip, self.port)).await
    }

    /// Greets the join peers and `also`.
    async fn greet(&self, socket: &UdpSocket, also: &[Ipv4Addr]) {
        let Some(hello) = self.hello(false) else {
            return;
        };
        for ip in self.join.iter().chain(also) {
            if let Err(e) = socket.send_to(&hello, (*ip, self.port)).await {
                debug!("hello to {ip}: {e}");
            }
        }
    }

    /// Checks one datagram: the HMAC and fields, then (with the revocation list as
    /// `tls` has it now) the certificate.
    fn check(
        &self,
        bytes: &[u8],
        from: Ipv4Addr,
        now: u64,
        tls: &NodeTls,
    ) -> Result<Hello, Rejected> {
        let sealed = Hello::open(bytes, &self.key, from, now, self.me)?;
        let trust = self
            .identity
            .as_ref()
            .map_err(|e| Rejected::NoTrust(e.clone()))?;
        // Re-reads revoked.json if it changed; the identity's own errors are not ours.
        let _ = tls.current();
        sealed.prove(trust, tls.revoked(), now)
    }

    /// Handles one datagram; returns the node it admitted anew, if any.
    async fn receive(
        &self,
        socket: &UdpSocket,
        state: &Shared,
        tls: &NodeTls,
        bytes: &[u8],
        from: SocketAddr,
    ) -> Option<Hello> {
        let SocketAddr::V4(from) = from else {
            return None;
        };
        let now = unix_now();
        match self.check(bytes, *from.ip(), now, tls) {
            Ok(hello) => {
                if !hello.reply
                    && let Some(reply) = self.hello(true)
                    && let Err(e) = socket.send_to(&reply, from).await
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

    /// Greets the join peers, and the peers in `also` (those a node greets while the
    /// catalog does not list it: a newcomer, so that they admit
    /// it at once rather than when Consul tells them, which needs its agent, which
    /// needs the overlay to the servers), every [`HELLO_INTERVAL`]; answers and
    /// records hellos, signalling `changed` whenever a node is admitted anew. `tls`
    /// holds the process's revocation list.
    pub async fn serve(
        self,
        socket: UdpSocket,
        state: Shared,
        tls: NodeTls,
        changed: mpsc::Sender<()>,
        also: tokio::sync::watch::Receiver<Vec<Ipv4Addr>>,
    ) {
        self.say_why_silent();
        let mut tick = tokio::time::interval(HELLO_INTERVAL);
        let mut buf = vec![0u8; RECV_BUF];
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let also = also.borrow().clone();
                    self.greet(&socket, &also).await
                }
                r = socket.recv_from(&mut buf) => match r {
                    Ok((n, from)) => {
                        if let Some(h) = self.receive(&socket, &state, &tls, &buf[..n], from).await {
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
    pub async fn exchange(
        &self,
        socket: &UdpSocket,
        state: &Shared,
        tls: &NodeTls,
        wait: Duration,
    ) {
        self.say_why_silent();
        let mut answered = std::collections::BTreeSet::new();
        let mut buf = vec![0u8; RECV_BUF];
        let deadline = tokio::time::Instant::now() + wait;
        // Greeted again every second: a peer that was starting may have missed one.
        let mut again = tokio::time::interval(Duration::from_secs(1));
        while answered.len() < self.join.len() {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = again.tick() => self.greet(socket, &[]).await,
                r = socket.recv_from(&mut buf) => {
                    let Ok((n, from)) = r else { continue };
                    self.receive(socket, state, tls, &buf[..n], from).await;
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
    use crate::identity::{Ca, NodeIdentity, NodeKey, Role, first_cert_der};

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

    fn issue(ca: &Ca, key: &NodeKey, address: &str, from: SystemTime, to: SystemTime) -> Vec<u8> {
        let who = NodeIdentity {
            cluster: "apples".into(),
            address: address.parse().unwrap(),
            role: Role::Client,
        };
        let issued = ca
            .issue_between(&key.csr_pem().unwrap(), &who, from, to)
            .unwrap();
        first_cert_der(&issued.cert_pem).unwrap()
    }

    /// A node of `ca` at `address`, its certificate valid from an hour ago for an hour.
    fn node(ca: &Ca, address: &str) -> HelloIdentity {
        let key = NodeKey::generate().unwrap();
        let now = SystemTime::now();
        let hour = Duration::from_secs(3600);
        let cert = issue(ca, &key, address, now - hour, now + hour);
        HelloIdentity::new(
            cert,
            key.key_pem(),
            vec![first_cert_der(&ca.cert_pem).unwrap()],
        )
        .unwrap()
    }

    /// Puts a correct HMAC on an altered datagram, so only the alteration is wrong.
    fn remac(b: &mut [u8]) {
        let at = b.len() - HMAC_LEN;
        let mut m = mac(&KEY);
        m.update(&b[..at]);
        b[at..].copy_from_slice(&m.finalize().into_bytes());
    }

    fn live(address: &str, reply: bool) -> Hello {
        Hello {
            address: address.parse().unwrap(),
            sent_at: unix_now(),
            ..hello(reply)
        }
    }

    /// Opens and proves `b` as node 0.1 of `ca` would, with `revoked`.
    fn check(b: &[u8], receiver: &HelloIdentity, revoked: &Revoked) -> Result<Hello, Rejected> {
        Hello::open(b, &KEY, UL, unix_now(), me())?.prove(receiver, revoked, unix_now())
    }

    #[test]
    fn a_sealed_hello_opens_with_the_same_key_only() {
        let ca = Ca::generate("apples").unwrap();
        let id = node(&ca, "0.2");
        for reply in [false, true] {
            let b = hello(reply).seal(&KEY, &id).unwrap();
            assert_eq!(
                Hello::open(&b, &KEY, UL, 1_000_030, me()).map(|s| s.hello),
                Ok(hello(reply))
            );
            assert_eq!(
                Hello::open(&b, &[8; 32], UL, 1_000_030, me()).map(|s| s.hello),
                Err(Rejected::Signature)
            );
        }
    }

    #[test]
    fn a_hello_with_its_own_certificate_proves_its_sender_in_one_small_datagram() {
        let ca = Ca::generate("apples").unwrap();
        let receiver = node(&ca, "0.1");
        for reply in [false, true] {
            let b = live("0.2", reply).seal(&KEY, &node(&ca, "0.2")).unwrap();
            assert!(b.len() < 1000, "{} bytes", b.len());
            assert_eq!(
                check(&b, &receiver, &Revoked::default()),
                Ok(live("0.2", reply))
            );
        }
    }

    #[test]
    fn every_changed_byte_breaks_the_hmac() {
        let ca = Ca::generate("apples").unwrap();
        let b = hello(false).seal(&KEY, &node(&ca, "0.2")).unwrap();
        let cert_end = HEADER_LEN + usize::from(u16::from_be_bytes([b[20], b[21]]));
        for i in 5..b.len() {
            let mut bad = b.clone();
            bad[i] ^= 0x01;
            let got = Hello::open(&bad, &KEY, UL, 1_000_000, me()).map(|s| s.hello);
            let lengths = [20, 21, cert_end].contains(&i);
            assert!(
                got == Err(Rejected::Signature)
                    || (lengths && got == Err(Rejected::Truncated(b.len()))),
                "byte {i}: {got:?}"
            );
        }
    }

    #[test]
    fn garbage_stale_old_and_relayed_hellos_are_turned_away() {
        let ca = Ca::generate("apples").unwrap();
        let id = node(&ca, "0.2");
        let open = |b: &[u8], from, now| Hello::open(b, &KEY, from, now, me()).map(|s| s.hello);
        let b = hello(false).seal(&KEY, &id).unwrap();
        assert_eq!(
            open(&[0u8; 52], UL, 1_000_000),
            Err(Rejected::NotAHello(52))
        );
        assert_eq!(open(b"ARP", UL, 1_000_000), Err(Rejected::NotAHello(3)));
        let mut huge = b.clone();
        huge.resize(MAX_HELLO_LEN + 1, 0);
        assert_eq!(
            open(&huge, UL, 1_000_000),
            Err(Rejected::NotAHello(MAX_HELLO_LEN + 1))
        );
        // A hello of version 1 (the secret alone, 52 bytes) is refused whatever it holds.
        let mut v1 = b[..52].to_vec();
        v1[4] = 1;
        let e = open(&v1, UL, 1_000_000).unwrap_err();
        assert_eq!(e, Rejected::Version(1));
        assert!(e.to_string().contains("upgrade it"), "{e}");
        assert_eq!(open(&b, UL, 1_000_121), Err(Rejected::Skew(121)));
        assert!(open(&b, UL, 999_880).is_ok());
        let other = Ipv4Addr::new(192, 168, 8, 66);
        assert_eq!(
            open(&b, other, 1_000_000),
            Err(Rejected::Source {
                claimed: UL,
                from: other
            })
        );
        let mine = Hello {
            address: me(),
            ..hello(false)
        }
        .seal(&KEY, &id)
        .unwrap();
        assert_eq!(open(&mine, UL, 1_000_000), Err(Rejected::OwnAddress(me())));
        let mut b0 = b.clone();
        b0[7] = 0; // 0.0 is no node's address
        remac(&mut b0);
        assert_eq!(open(&b0, UL, 1_000_000), Err(Rejected::Address));
    }

    #[test]
    fn truncated_hellos_are_turned_away_before_the_hmac() {
        let ca = Ca::generate("apples").unwrap();
        let b = live("0.2", false).seal(&KEY, &node(&ca, "0.2")).unwrap();
        for len in [5, 21, 22, 100, b.len() - HMAC_LEN, b.len() - 1] {
            assert_eq!(
                Hello::open(&b[..len], &KEY, UL, unix_now(), me()).map(|s| s.hello),
                Err(Rejected::Truncated(len)),
                "{len} bytes"
            );
        }
        // A certificate length that runs past the end, with the HMAC made to fit.
        let mut long = b.clone();
        long[20] = 0x05;
        remac(&mut long);
        assert_eq!(
            check(&long, &node(&ca, "0.1"), &Revoked::default()),
            Err(Rejected::Truncated(b.len()))
        );
    }

    #[test]
    fn a_certificate_of_another_ca_is_refused() {
        let ca = Ca::generate("apples").unwrap();
        let other = Ca::generate("apples").unwrap();
        let b = live("0.2", false).seal(&KEY, &node(&other, "0.2")).unwrap();
        let e = check(&b, &node(&ca, "0.1"), &Revoked::default()).unwrap_err();
        assert_eq!(e, Rejected::ForeignCa);
        assert_eq!(
            e.to_string(),
            "its certificate is not from this cluster's CA"
        );
    }

    #[test]
    fn a_revoked_serial_is_refused_once_listed() {
        let ca = Ca::generate("apples").unwrap();
        let receiver = node(&ca, "0.1");
        let id = node(&ca, "0.2");
        let serial = CertInfo::from_der(&id.cert_der).unwrap().serial;
        let b = live("0.2", false).seal(&KEY, &id).unwrap();
        let revoked = Revoked::default();
        assert!(check(&b, &receiver, &revoked).is_ok());
        revoked.set([serial.clone()].into());
        let e = check(&b, &receiver, &revoked).unwrap_err();
        assert_eq!(e, Rejected::Revoked(serial.clone()));
        assert!(
            e.to_string()
                .starts_with(&format!("its certificate (serial {serial}) is revoked")),
            "{e}"
        );
    }

    #[test]
    fn a_certificate_for_another_address_is_refused() {
        let ca = Ca::generate("apples").unwrap();
        let b = live("0.2", false).seal(&KEY, &node(&ca, "0.3")).unwrap();
        let e = check(&b, &node(&ca, "0.1"), &Revoked::default()).unwrap_err();
        assert_eq!(
            e,
            Rejected::NotItsCertificate {
                claimed: "0.2".parse().unwrap(),
                certified: "0.3".parse().unwrap()
            }
        );
        assert_eq!(
            e.to_string(),
            "it names 0.2, but its certificate is for 0.3"
        );
    }

    #[test]
    fn a_signature_by_another_key_or_altered_is_refused() {
        let ca = Ca::generate("apples").unwrap();
        let receiver = node(&ca, "0.1");
        let id = node(&ca, "0.2");
        // Another node's certificate shown with one's own key (a copied certificate).
        let thief = node(&ca, "0.3");
        let copied = HelloIdentity::new(
            id.cert_der.clone(),
            thief.key_pem.clone(),
            id.ca_ders.clone(),
        )
        .unwrap();
        let b = live("0.2", false).seal(&KEY, &copied).unwrap();
        assert_eq!(
            check(&b, &receiver, &Revoked::default()),
            Err(Rejected::CertificateSignature)
        );
        // The right key, but a signed byte changed after signing (the HMAC made to fit).
        let mut b = live("0.2", false).seal(&KEY, &id).unwrap();
        b[5] ^= FLAG_REPLY;
        remac(&mut b);
        assert_eq!(
            check(&b, &receiver, &Revoked::default()),
            Err(Rejected::CertificateSignature)
        );
    }

    #[test]
    fn an_expired_certificate_is_refused() {
        let ca = Ca::generate("apples").unwrap();
        let key = NodeKey::generate().unwrap();
        let now = SystemTime::now();
        let hour = Duration::from_secs(3600);
        let cert = issue(&ca, &key, "0.2", now - 2 * hour, now - hour);
        let old = HelloIdentity::new(
            cert,
            key.key_pem(),
            vec![first_cert_der(&ca.cert_pem).unwrap()],
        )
        .unwrap();
        let b = live("0.2", false).seal(&KEY, &old).unwrap();
        let e = check(&b, &node(&ca, "0.1"), &Revoked::default()).unwrap_err();
        assert!(matches!(e, Rejected::CertificateTime(_)), "{e:?}");
    }

    #[test]
    fn a_node_without_an_identity_sends_nothing_and_admits_nobody() {
        let ca = Ca::generate("apples").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let tls = NodeTls::new(
            crate::paths::IdentityFiles::new(dir.path()),
            dir.path().join("revoked.json"),
        );
        let speaker = Speaker {
            me: me(),
            underlay_ip: UL,
            port: 7102,
            key: KEY,
            join: vec![Ipv4Addr::new(192, 168, 8, 1)],
            identity: Err("ca.pem does not exist".into()),
        };
        assert_eq!(speaker.hello(false), None);
        let b = live("0.2", false).seal(&KEY, &node(&ca, "0.2")).unwrap();
        let e = speaker.check(&b, UL, unix_now(), &tls).unwrap_err();
        assert!(matches!(e, Rejected::NoTrust(_)), "{e:?}");
    }

    #[test]
    fn the_revocation_file_is_read_when_a_hello_is_checked() {
        let ca = Ca::generate("apples").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revoked.json");
        let tls = NodeTls::new(crate::paths::IdentityFiles::new(dir.path()), path.clone());
        let speaker = Speaker {
            me: me(),
            underlay_ip: UL,
            port: 7102,
            key: KEY,
            join: vec![],
            identity: Ok(node(&ca, "0.1")),
        };
        let id = node(&ca, "0.2");
        let b = live("0.2", false).seal(&KEY, &id).unwrap();
        assert!(speaker.check(&b, UL, unix_now(), &tls).is_ok());
        let serial = CertInfo::from_der(&id.cert_der).unwrap().serial;
        std::fs::write(&path, serde_json::to_vec(&[&serial]).unwrap()).unwrap();
        assert_eq!(
            speaker.check(&b, UL, unix_now(), &tls),
            Err(Rejected::Revoked(serial))
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
