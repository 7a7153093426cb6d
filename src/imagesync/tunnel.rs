//! Mutual TLS around the BitTorrent peer wire, which librqbit speaks in clear only.
//! librqbit listens on loopback; the node's peer address (`10.255.a.b:7101`) is a TLS
//! front that accepts only a certificate from the cluster CA (not expired, not revoked)
//! and passes the stream on to it. The other way, every peer librqbit is told about
//! (by the loopback tracker or when a pull starts) is a loopback port of a forwarder
//! here that dials the peer's front with this node's certificate and checks the peer's
//! against the CA and the IP dialled. librqbit itself is unchanged: it only ever talks
//! to loopback.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::identity::NodeTls;

/// How long a peer may take to connect and finish its handshake.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

/// The TLS front on the node's peer address, passing verified streams to librqbit's
/// loopback listener `to`.
pub fn spawn_front(listener: TcpListener, to: SocketAddr, tls: NodeTls) {
    tokio::spawn(async move {
        loop {
            let (stream, from) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    debug!("image sync: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(configs) = tls.current() else { continue };
            let revoked = tls.revoked().clone();
            tokio::spawn(async move {
                let acceptor = tokio_rustls::TlsAcceptor::from(configs.server);
                let mut tls = match tokio::time::timeout(HANDSHAKE_LIMIT, acceptor.accept(stream))
                    .await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return debug!("image sync: TLS from {from} refused: {e}"),
                    Err(_) => return debug!("image sync: TLS from {from}: no handshake in time"),
                };
                // Raced, not wrapped: a half-closed peer is no longer read.
                let ending = revoked.until_peer_revoked(tls.get_ref().1);
                match TcpStream::connect(to).await {
                    Ok(mut plain) => {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut tls, &mut plain) => {}
                            () = ending => debug!("image sync: {from} cut, its certificate was revoked"),
                        }
                    }
                    Err(e) => warn!("image sync: the BitTorrent session at {to}: {e}"),
                }
            });
        }
    });
}

/// Loopback forwarders, one per peer, made when librqbit is first told of the peer.
pub struct Forwarders {
    tls: NodeTls,
    by_peer: Mutex<BTreeMap<SocketAddr, SocketAddr>>,
}

impl Forwarders {
    pub fn new(tls: NodeTls) -> Self {
        Self {
            tls,
            by_peer: Mutex::new(BTreeMap::new()),
        }
    }

    /// The loopback address that reaches `peer` (a node's TLS front) over mutual TLS.
    /// `None` if no loopback port could be had (logged).
    pub fn local_for(&self, peer: SocketAddr) -> Option<SocketAddr> {
        let mut by_peer = self.by_peer.lock().expect("forwarders lock");
        if let Some(local) = by_peer.get(&peer) {
            return Some(*local);
        }
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(TcpListener::from_std);
        let listener = match listener {
            Ok(l) => l,
            Err(e) => {
                warn!("image sync: no loopback port for peer {peer}: {e}");
                return None;
            }
        };
        let local = listener.local_addr().ok()?;
        by_peer.insert(peer, local);
        let tls = self.tls.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut plain, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let tls = tls.clone();
                tokio::spawn(async move {
                    let configs = match tls.current() {
                        Ok(c) => c,
                        Err(e) => return debug!("image sync: cannot dial {peer}: {e}"),
                    };
                    let connector = tokio_rustls::TlsConnector::from(configs.client);
                    let dial = async {
                        let tcp = TcpStream::connect(peer).await?;
                        connector
                            .connect(ServerName::IpAddress(peer.ip().into()), tcp)
                            .await
                    };
                    match tokio::time::timeout(HANDSHAKE_LIMIT, dial).await {
                        Ok(Ok(mut tls)) => {
                            let _ = tokio::io::copy_bidirectional(&mut plain, &mut tls).await;
                        }
                        Ok(Err(e)) => debug!("image sync: TLS to peer {peer}: {e}"),
                        Err(_) => debug!("image sync: TLS to peer {peer}: no handshake in time"),
                    }
                });
            }
        });
        Some(local)
    }

    /// `peers` as librqbit must dial them.
    pub fn locals(&self, peers: &[SocketAddr]) -> Vec<SocketAddr> {
        peers.iter().filter_map(|p| self.local_for(*p)).collect()
    }
}
