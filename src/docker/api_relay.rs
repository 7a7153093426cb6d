//! Docker's API on `10.254.a.b:2376`: arpanetd completes the mutual TLS handshake with
//! the node's certificate and relays each verified connection, byte for byte, to
//! dockerd's unix socket.
//!
//! Why not dockerd's own `tlsverify`: dockerd has no revocation list, and reads its
//! certificate only when it starts. Here every connection takes the configuration
//! [`NodeTls::current`] gives as it arrives, so a revoked serial is refused by the next
//! handshake and a renewed certificate is used without restarting Docker.
//!
//! Raw bytes, not HTTP: a hijacked connection (attach, exec, `run -it`) is relayed
//! like any other, half-closes included.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::serve::Listener;
use tokio::net::{TcpListener, UnixStream};
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::http::TlsListener;
use crate::identity::NodeTls;

const WHAT: &str = "docker api";

/// Starts the relay. It waits for an identity (the Docker pass says why there is none),
/// then for the address (the network pass adds it), then serves.
pub fn spawn(config: &Config, tls: NodeTls) {
    let addr = SocketAddr::from((config.node.address.docker_api_ip(), config.docker.api_port));
    let socket = config.docker.socket.clone();
    tokio::spawn(async move {
        while tls.current().is_err() {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        let mut reported = false;
        let tcp = loop {
            match TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) => {
                    if !reported {
                        info!("{WHAT} waits for {addr} ({e})");
                        reported = true;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let revoked = tls.revoked().clone();
        let cut = Some(revoked.cut_when_revoked());
        let mut listener = match TlsListener::answering_plain_http(tcp, WHAT, cut, move || {
            tls.current().ok().map(|c| c.server)
        }) {
            Ok(l) => l,
            Err(e) => return warn!("{WHAT} on {addr}: {e}"),
        };
        info!(
            "{WHAT} on {addr} (mutual TLS, node certificates), relayed to {}",
            socket.display()
        );
        loop {
            let (stream, peer) = listener.accept().await;
            tokio::spawn(relay(stream, peer, socket.clone(), revoked.clone()));
        }
    });
}

async fn relay(
    mut client: crate::http::Severable<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
    peer: SocketAddr,
    socket: PathBuf,
    revoked: crate::identity::Revoked,
) {
    // Docker's API is root on this host, and a server's host holds the CA key and the
    // management token: only servers' certificates get in, so a client node taken over
    // is not root everywhere.
    let who = crate::identity::tls::peer_identity(client.get_ref().get_ref().1.peer_certificates());
    if who.as_ref().map(|w| w.role) != Some(crate::identity::Role::Server) {
        use tokio::io::AsyncWriteExt;
        let _ = client
            .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nDocker's API on arpanet nodes answers servers' certificates only\n")
            .await;
        let _ = client.shutdown().await;
        return debug!("{WHAT}: {peer}: not a server's certificate ({who:?})");
    }
    let mut docker = match UnixStream::connect(&socket).await {
        Ok(s) => s,
        Err(e) => {
            // The client sees the connection close, as if dockerd were down.
            return warn!("{WHAT}: {peer} not relayed: {}: {e}", socket.display());
        }
    };
    // A half-closed client (`docker exec -i … < file`) is no longer read, so its
    // stream alone would notice a revocation only when dockerd writes.
    let ending = revoked.until_peer_revoked(client.get_ref().get_ref().1);
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut docker) => match copied {
            Ok((up, down)) => debug!("{WHAT}: {peer}: {up} bytes to dockerd, {down} back"),
            // Peers that close without close_notify, dockerd restarting: nothing to act on.
            Err(e) => debug!("{WHAT}: {peer}: {e}"),
        },
        () = ending => debug!("{WHAT}: {peer}: cut, its certificate was revoked"),
    }
}
