//! Real Consul agents, run and configured by arpanet, on lab hosts whose only path to
//! each other's agents is the overlay (Consul binds the 10.253 plane).

use std::time::{Duration, Instant};

use crate::lab::{Host, Lab, TEST_IMAGE, assert_success, json, stdout, wait_until};

const CONSUL: &str = "[consul]\nmode = \"config\"\n";

fn status(host: &Host) -> serde_json::Value {
    json(
        &host.arpanet(&["status", "--json"]),
        "arpanet status --json",
    )
}

fn alive_members(host: &Host) -> Vec<String> {
    let out = host.arpanet(&["members", "--json"]);
    if !out.status.success() {
        return Vec::new();
    }
    let members: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut names: Vec<String> = members
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["status"] == "alive")
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

fn has_leader(host: &Host) -> bool {
    let s = status(host);
    !s["consul"]["leader"].is_null()
}

/// Whether `host` has every overlay entry for the node at `address` ("a.b"), and its
/// firewall admits it ([`Host::admits`]): a ping follows.
fn peer_ok(host: &Host, address: &str) -> bool {
    status(host)["peers"].as_array().unwrap().iter().any(|p| {
        p["address"] == address
            && p["state"] == "ok"
            && p["underlay_ip"].as_str().is_some_and(|ip| host.admits(ip))
    })
}

fn peer_absent(host: &Host, address: &str) -> bool {
    !status(host)["peers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["address"] == address)
}

fn start(host: &Host) {
    host.start_arpanetd();
    host.start_consul_agent();
}

fn stop(host: &Host) {
    host.stop("consul");
    host.stop("arpanetd");
}

#[test]
fn three_servers_and_a_client_form_one_cluster_that_survives_and_grows() {
    require_lab!();
    let lab = Lab::builder(5).start();
    // h0 boots, h1 and h2 are servers, h3 is a client; h4 joins later.
    let servers = [0, 1, 2];
    for (i, role) in ["boot", "server", "server", "client"].iter().enumerate() {
        let join: Vec<usize> = servers.iter().copied().filter(|s| *s != i).collect();
        lab.write_arpanet_config(i, role, &join, CONSUL);
        // Three servers must be there before the first leader is elected.
        let cfg = std::fs::read_to_string(lab.hosts[i].config_path()).unwrap();
        std::fs::write(
            lab.hosts[i].config_path(),
            cfg.replace(
                "name = \"arpanet-lab\"\n",
                "name = \"arpanet-lab\"\nexpect = 3\n",
            ),
        )
        .unwrap();
    }
    let (h0, h1, h2, h3, h4) = (
        &lab.hosts[0],
        &lab.hosts[1],
        &lab.hosts[2],
        &lab.hosts[3],
        &lab.hosts[4],
    );
    for h in [h0, h1, h2, h3] {
        start(h);
    }
    for h in [h0, h1, h2, h3] {
        wait_until(
            Duration::from_secs(90),
            &format!("a Consul leader seen from {}", h.netns),
            || has_leader(h),
        );
    }
    for h in [h0, h1, h2, h3] {
        wait_until(Duration::from_secs(30), "4 alive members", || {
            alive_members(h) == ["h0", "h1", "h2", "h3"]
        });
    }
    let members = json(&h3.arpanet(&["members", "--json"]), "members --json");
    assert_eq!(members.as_array().unwrap().len(), 4, "{members}");
    assert!(
        members
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["status"] == "alive")
    );
    let roles: Vec<&str> = members
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["server", "server", "server", "client"]);
    let s = status(h3);
    assert_eq!(s["consul"]["servers"].as_array().unwrap().len(), 3);
    assert_eq!(s["consul"]["node_status"], "alive");

    // KV written on the client is read on every server (under arpanet/, where a
    // node's Consul token may write).
    assert_success(
        &h3.arpanet(&["kv", "put", "arpanet/apples/colour", "green"]),
        "kv put",
    );
    for h in [h0, h1, h2] {
        assert_eq!(
            stdout(&h.arpanet(&["kv", "get", "arpanet/apples/colour"])),
            "green\n"
        );
    }
    let missing = h0.arpanet(&["kv", "get", "arpanet/apples/none"]);
    assert!(!missing.status.success());
    assert_eq!(
        String::from_utf8_lossy(&missing.stderr).trim(),
        "error: no key `arpanet/apples/none` in Consul"
    );

    // One server down: the other two keep a quorum, so KV keeps working.
    h1.stop("consul");
    assert_success(
        &h0.arpanet(&["kv", "put", "arpanet/apples/while-down", "still"]),
        "kv put with a server down",
    );
    assert_eq!(
        stdout(&h2.arpanet(&["kv", "get", "arpanet/apples/while-down"])),
        "still\n"
    );
    h1.start_consul_agent();
    wait_until(Duration::from_secs(60), "h1 to rejoin", || {
        alive_members(h0) == ["h0", "h1", "h2", "h3"]
            && stdout(&h1.arpanet(&["kv", "get", "arpanet/apples/while-down"])) == "still\n"
    });

    // A 5th node that names only the boot node becomes everyone's overlay peer with no
    // restart anywhere: the catalog tells the others about it.
    lab.write_arpanet_config(4, "client", &[0], CONSUL);
    let started = Instant::now();
    start(h4);
    for h in [h0, h1, h2, h3] {
        wait_until(
            Duration::from_secs(60),
            &format!("0.5 to be a peer of {}", h.netns),
            || peer_ok(h, "0.5"),
        );
    }
    let joined_in = started.elapsed();
    for other in ["0.1", "0.2", "0.3", "0.4"] {
        wait_until(
            Duration::from_secs(30),
            &format!("{other} to be a peer of h4"),
            || peer_ok(h4, other),
        );
    }
    // And the overlay carries traffic to it from a host that never heard of it.
    assert_success(
        &h3.exec(&["ping", "-c", "1", "-W", "2", "10.255.0.5"]),
        "ping the 5th node",
    );
    // The cache keeps what the catalog said, for the next start (0.5's hello made it
    // the boot node's peer before the catalog named it).
    wait_until(
        Duration::from_secs(60),
        "the peer cache to list 0.5",
        || {
            std::fs::read_to_string(h3.dir.join("state/peers.json"))
                .is_ok_and(|c| c.contains("\"0.5\""))
        },
    );

    // After a restart with Consul down, the cache alone brings back a peer that only
    // the catalog had named (0.5 is in no join list of h3's).
    h3.stop("consul");
    h3.stop("arpanetd");
    assert_success(
        &h3.exec(&["ip", "link", "del", "arpanet0"]),
        "drop h3's overlay",
    );
    h3.start_arpanetd();
    wait_until(
        Duration::from_secs(20),
        "0.5 back on h3 from the cache",
        || peer_ok(h3, "0.5"),
    );
    assert!(
        status(h3)["consul"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot reach Consul"))
    );
    h3.start_consul_agent();
    wait_until(Duration::from_secs(60), "h3 to rejoin", || {
        alive_members(h0).contains(&"h3".to_string())
    });

    // It leaves: every entry for it goes.
    let stopped = Instant::now();
    stop(h4);
    // The catalog drops it once Consul sees it leave; the boot node, which admitted it
    // by hello, forgets it 20 s after its last hello.
    for h in [h0, h1, h2, h3] {
        wait_until(
            Duration::from_secs(150),
            &format!("every entry for 0.5 to leave {}", h.netns),
            || {
                peer_absent(h, "0.5")
                    && !stdout(&h.exec(&["bridge", "fdb", "show", "dev", "arpanet0"]))
                        .contains("02:61:72:70:00:05")
                    && !stdout(&h.exec(&["ip", "route", "show", "proto", "97"]))
                        .contains("10.0.5.0/24")
            },
        );
    }
    eprintln!(
        "MEASURED: a joining node was a peer of all 4 others after {joined_in:?}; a leaving one was gone from all after {:?}",
        stopped.elapsed()
    );

    lab.teardown().expect("teardown");
}

/// How a stranger tries Consul's RPC port (8300).
#[derive(Clone, Copy)]
pub(crate) enum Rpc<'a> {
    /// Consul's plain RPC byte (0x00), then a request.
    Plain,
    /// Consul's TLS byte (0x03), a TLS handshake with this client certificate (dir
    /// with cert.pem and key.pem) or none, then the same request.
    Tls(Option<&'a std::path::Path>),
}

/// `Status.Ping` over Consul's RPC from inside `netns`, as a Consul agent sends it
/// (net/rpc with msgpack). `Ok(answer)` when a response came back, `Err(why)` when the
/// server closed the connection or the TLS handshake failed.
pub(crate) fn rpc_ping(
    netns: &str,
    addr: std::net::SocketAddrV4,
    how: Rpc,
    ca_pem: &str,
) -> Result<Vec<u8>, String> {
    rpc_call(netns, addr, how, ca_pem, "Status.Ping", &[])
}

/// A msgpack string.
fn msgpack_str(out: &mut Vec<u8>, s: &str) {
    match s.len() {
        n if n < 32 => out.push(0xa0 | n as u8),
        // str16 (raw16 in the old spec Consul's codec also reads); not str8, which
        // the old spec lacks.
        n if n < 65536 => out.extend_from_slice(&[0xda, (n >> 8) as u8, n as u8]),
        n => panic!("a {n}-byte string in a test RPC"),
    }
    out.extend_from_slice(s.as_bytes());
}

/// `method` over Consul's RPC with `args` (string fields, e.g. a KV.Get's Datacenter,
/// Key and Token), as [`rpc_ping`] sends Status.Ping. The answer holds the response
/// header, whose Error names a refusal ("ACL not found").
pub(crate) fn rpc_call(
    netns: &str,
    addr: std::net::SocketAddrV4,
    how: Rpc,
    ca_pem: &str,
    method: &str,
    args: &[(&str, &str)],
) -> Result<Vec<u8>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use std::io::Write;
    // Request header {ServiceMethod: method, Seq: 1}, then the args map.
    let mut ping = vec![0x82];
    msgpack_str(&mut ping, "ServiceMethod");
    msgpack_str(&mut ping, method);
    msgpack_str(&mut ping, "Seq");
    ping.push(0x01);
    assert!(args.len() < 16);
    ping.push(0x80 | args.len() as u8);
    for (k, v) in args {
        msgpack_str(&mut ping, k);
        msgpack_str(&mut ping, v);
    }
    let tls = match how {
        Rpc::Plain => None,
        Rpc::Tls(client) => {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
                .unwrap();
            let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let builder = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots);
            let config = match client {
                None => builder.with_no_client_auth(),
                Some(dir) => builder
                    .with_client_auth_cert(
                        vec![CertificateDer::from_pem_file(dir.join("cert.pem")).unwrap()],
                        PrivateKeyDer::from_pem_file(dir.join("key.pem")).unwrap(),
                    )
                    .unwrap(),
            };
            Some(std::sync::Arc::new(config))
        }
    };
    let netns = std::fs::File::open(netns).unwrap();
    std::thread::spawn(move || -> Result<Vec<u8>, String> {
        // This thread only: the test's other threads stay in the root namespace.
        nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let timeout = Some(Duration::from_secs(5));
        let mut tcp = std::net::TcpStream::connect_timeout(&addr.into(), Duration::from_secs(3))
            .map_err(|e| format!("connect: {e}"))?;
        tcp.set_read_timeout(timeout).unwrap();
        tcp.set_write_timeout(timeout).unwrap();
        let exchange = |s: &mut dyn ReadWrite| -> Result<Vec<u8>, String> {
            s.write_all(&[0x00]).map_err(|e| format!("write: {e}"))?;
            s.write_all(&ping).map_err(|e| format!("write: {e}"))?;
            s.flush().map_err(|e| format!("flush: {e}"))?;
            let mut answer = vec![0; 4096];
            match s.read(&mut answer) {
                Ok(0) => Err("closed without an answer".into()),
                Ok(n) => Ok(answer[..n].to_vec()),
                Err(e) => Err(format!("read: {e}")),
            }
        };
        match tls {
            None => exchange(&mut tcp),
            Some(config) => {
                tcp.write_all(&[0x03]).map_err(|e| format!("write: {e}"))?;
                let name = ServerName::try_from("server.arpanet-lab.consul").unwrap();
                let conn = rustls::ClientConnection::new(config, name).unwrap();
                exchange(&mut rustls::StreamOwned::new(conn, tcp))
            }
        }
    })
    .join()
    .unwrap()
}

trait ReadWrite: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> ReadWrite for T {}

/// What a user checks: a machine without a cluster certificate cannot talk RPC to a
/// server, also with ARPANET-INPUT flushed, while the node's own agents (a client
/// among them) form the cluster over TLS and HTTP on 127.0.0.1 stays plain.
#[test]
fn without_a_cluster_certificate_nothing_talks_rpc_to_a_server() {
    require_lab!();
    let lab = Lab::builder(3).start();
    lab.write_arpanet_config(0, "boot", &[1], CONSUL);
    lab.write_arpanet_config(1, "client", &[0], CONSUL);
    let (h0, h1, stranger) = (&lab.hosts[0], &lab.hosts[1], &lab.hosts[2]);
    for h in [h0, h1] {
        start(h);
    }
    // A leader seen from the client: its agent's RPC to the server, over TLS.
    for h in [h0, h1] {
        wait_until(Duration::from_secs(90), "a Consul leader", || has_leader(h));
        wait_until(Duration::from_secs(30), "2 alive members", || {
            alive_members(h) == ["h0", "h1"]
        });
    }
    let rendered: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(h0.dir.join("state/consul/config.json")).unwrap(),
    )
    .unwrap();
    let tls_dir = h0.dir.join("state/consul/tls");
    assert_eq!(
        rendered["cert_file"],
        tls_dir.join("cert.pem").to_str().unwrap()
    );
    assert_eq!(rendered["verify_incoming_rpc"], true);
    assert_eq!(rendered["verify_server_hostname"], true);
    assert_eq!(
        std::fs::read(tls_dir.join("key.pem")).unwrap(),
        std::fs::read(h0.identity_files().node_key()).unwrap()
    );
    // The plain HTTP API still answers on loopback.
    assert_success(&h0.consul(&["members"]), "consul members over plain HTTP");

    // ARPANET-INPUT flushed (arpanetd stopped first, or it puts the rules back).
    h0.stop("arpanetd");
    assert_success(
        &h0.exec(&["iptables", "-F", "ARPANET-INPUT"]),
        "iptables -F ARPANET-INPUT",
    );
    let server = h0.address.consul_ip();
    let route = stranger.exec(&[
        "ip",
        "route",
        "add",
        &format!("{server}/32"),
        "via",
        &h0.underlay_ip.to_string(),
        "dev",
        &stranger.underlay_interface,
    ]);
    assert_success(
        &route,
        "the stranger's route to the server's Consul address",
    );
    let ns = format!("/run/netns/{}", stranger.netns);
    let addr = std::net::SocketAddrV4::new(server, 8300);
    let ca = &lab.ca.cert_pem;

    // With a cluster certificate (the client node's), from the same place: an answer.
    // Without it this test would prove nothing.
    let with_cert = rpc_ping(&ns, addr, Rpc::Tls(Some(&h1.identity_files().dir)), ca);
    let answer = with_cert.unwrap_or_else(|e| panic!("RPC with the client's certificate: {e}"));
    assert!(
        answer.windows(11).any(|w| w == b"Status.Ping"),
        "Status.Ping's answer: {answer:?}"
    );
    let plain = rpc_ping(&ns, addr, Rpc::Plain, ca);
    assert!(plain.is_err(), "plain RPC answered: {plain:?}");
    let no_cert = rpc_ping(&ns, addr, Rpc::Tls(None), ca);
    assert!(
        no_cert.is_err(),
        "TLS RPC without a certificate answered: {no_cert:?}"
    );
    eprintln!("MEASURED: plain RPC: {plain:?}; TLS without a certificate: {no_cert:?}");

    lab.teardown().expect("teardown");
}

// A node with the wrong secret is turned away before it reaches Consul at all: it is
// never admitted to the overlay (admission.rs attacks that with a real stranger).

/// The client against one real Consul agent (`consul agent -dev` on loopback), through
/// a loopback proxy that forwards every request to it and, when told, loses the
/// answer to the next `cas=0` create after Consul has applied it (or before it
/// arrives). Consul itself is never imitated: every write lands in the real agent.
mod client_against_a_dev_agent {
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use arpanet::consul::client::{Consul, ConsulError};
    use arpanet::consul::watch::BlockingQuery;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use crate::lab;

    struct DevAgent {
        child: std::process::Child,
        http: SocketAddr,
    }

    impl Drop for DevAgent {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// A dev agent on loopback ports of its own, or `None` (skipped) without consul.
    async fn dev_agent() -> Option<DevAgent> {
        let Some(consul) = lab::which("consul") else {
            let msg = "this test needs `consul` on PATH";
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{msg}; CI=true, so this fails instead of skipping");
            }
            eprintln!("SKIPPED: {msg}");
            return None;
        };
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let port = |flag: &str, p: u16| format!("-{flag}={p}");
        let child = std::process::Command::new(consul)
            .args(["agent", "-dev", "-bind=127.0.0.1", "-client=127.0.0.1"])
            .args(["-node=arpanet-client-test", "-disable-host-node-id"])
            .arg("-hcl=disable_update_check = true")
            .arg(port("http-port", http.port()))
            .arg(port("server-port", free_port()))
            .arg(port("serf-lan-port", free_port()))
            .arg(port("serf-wan-port", free_port()))
            .args(["-dns-port=-1", "-grpc-port=-1"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start consul agent -dev");
        let agent = DevAgent { child, http };
        let c = Consul::new(http);
        c.wait_until_up(Duration::from_secs(20)).await.unwrap();
        c.wait_for_leader(Duration::from_secs(20)).await.unwrap();
        Some(agent)
    }

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Fault {
        /// Forward the create, then close the connection without its answer.
        LoseAnswer,
        /// Forward the create, then answer what a leader that lost leadership while
        /// committing it answers.
        LeadershipLost,
        /// Close the connection before forwarding the create.
        LoseRequest,
        /// Lose the create's answer and every answer after it.
        LoseEverything,
    }

    #[derive(Default)]
    struct ProxyState {
        fault: Option<Fault>,
        lose_all: bool,
        /// The request lines Consul received.
        forwarded: Vec<String>,
    }

    struct Proxy {
        addr: SocketAddr,
        state: Arc<Mutex<ProxyState>>,
    }

    impl Proxy {
        async fn start(upstream: SocketAddr) -> Proxy {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let state = Arc::new(Mutex::new(ProxyState::default()));
            let shared = state.clone();
            tokio::spawn(async move {
                while let Ok((conn, _)) = listener.accept().await {
                    tokio::spawn(relay(conn, upstream, shared.clone()));
                }
            });
            Proxy { addr, state }
        }

        fn arm(&self, fault: Fault) {
            self.state.lock().unwrap().fault = Some(fault);
        }

        fn creates_forwarded(&self, key: &str) -> usize {
            let put = format!("PUT /v1/kv/{key}?cas=0 ");
            let state = self.state.lock().unwrap();
            state
                .forwarded
                .iter()
                .filter(|l| l.starts_with(&put))
                .count()
        }
    }

    /// Reads one HTTP/1.1 request (head and Content-Length body).
    async fn read_request(conn: &mut TcpStream) -> Option<(String, Vec<u8>)> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = conn.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        let mut body = buf[head_end..].to_vec();
        while body.len() < length {
            let n = conn.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        Some((head, body))
    }

    /// One request per connection, each sent to Consul on a fresh connection; every
    /// answer says `Connection: close`, so the client never reuses a connection.
    async fn relay(mut conn: TcpStream, upstream: SocketAddr, state: Arc<Mutex<ProxyState>>) {
        let Some((head, body)) = read_request(&mut conn).await else {
            return;
        };
        let request_line = head.lines().next().unwrap_or("").to_string();
        let is_create = request_line.starts_with("PUT ") && request_line.contains("?cas=0 ");
        let fault = {
            let mut s = state.lock().unwrap();
            if s.lose_all {
                return;
            }
            if is_create { s.fault.take() } else { None }
        };
        if fault == Some(Fault::LoseRequest) {
            return;
        }
        let mut forwarded_head: String = head
            .split("\r\n")
            .filter(|l| !l.is_empty() && !l.to_ascii_lowercase().starts_with("connection:"))
            .map(|l| format!("{l}\r\n"))
            .collect();
        forwarded_head.push_str("Connection: close\r\n\r\n");
        let mut up = TcpStream::connect(upstream).await.unwrap();
        up.write_all(forwarded_head.as_bytes()).await.unwrap();
        up.write_all(&body).await.unwrap();
        let mut answer = Vec::new();
        up.read_to_end(&mut answer).await.unwrap();
        state.lock().unwrap().forwarded.push(request_line);
        match fault {
            Some(Fault::LoseAnswer) => return,
            Some(Fault::LoseEverything) => {
                state.lock().unwrap().lose_all = true;
                return;
            }
            Some(Fault::LeadershipLost) => {
                let body = "rpc error making call: leadership lost while committing log";
                answer = format!(
                    "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n\
                     Content-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes();
            }
            _ => {}
        }
        // Say `Connection: close` whatever Consul said.
        let status_end = answer.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
        let mut out = answer[..status_end].to_vec();
        out.extend_from_slice(b"Connection: close\r\n");
        out.extend_from_slice(&answer[status_end..]);
        let _ = conn.write_all(&out).await;
        let _ = conn.shutdown().await;
    }

    #[tokio::test]
    async fn a_create_whose_answer_is_lost_is_settled_by_reading_back_not_by_sending_it_again() {
        let Some(agent) = dev_agent().await else {
            return;
        };
        let direct = Consul::new(agent.http);
        let proxy = Proxy::start(agent.http).await;
        let client = Consul::new(proxy.addr);

        // The answer lost after Consul stored it: the create took effect.
        proxy.arm(Fault::LoseAnswer);
        assert!(client.kv_put_new("t/lost", b"mine".to_vec()).await.unwrap());
        assert_eq!(
            proxy.creates_forwarded("t/lost"),
            1,
            "the create was sent again"
        );
        assert_eq!(direct.kv_get("t/lost").await.unwrap().unwrap(), b"mine");
        // A second create of the same key is refused as before.
        assert!(
            !client
                .kv_put_new("t/lost", b"again".to_vec())
                .await
                .unwrap()
        );

        // The leader lost leadership while committing it (Consul's 500): the old
        // client retried the create, which then answered "exists".
        proxy.arm(Fault::LeadershipLost);
        assert!(
            client
                .kv_put_new("t/leader", b"mine".to_vec())
                .await
                .unwrap()
        );
        assert_eq!(
            proxy.creates_forwarded("t/leader"),
            1,
            "the create was sent again"
        );

        // Someone else created it first: still "exists", whatever the lost answer.
        direct.kv_put("t/taken", b"theirs".to_vec()).await.unwrap();
        proxy.arm(Fault::LoseAnswer);
        assert!(
            !client
                .kv_put_new("t/taken", b"mine".to_vec())
                .await
                .unwrap()
        );
        assert_eq!(direct.kv_get("t/taken").await.unwrap().unwrap(), b"theirs");

        // Lost on the way: the key is absent, so the create is sent once more.
        proxy.arm(Fault::LoseRequest);
        assert!(
            client
                .kv_put_new("t/never", b"mine".to_vec())
                .await
                .unwrap()
        );
        assert_eq!(proxy.creates_forwarded("t/never"), 1);
        assert_eq!(direct.kv_get("t/never").await.unwrap().unwrap(), b"mine");

        // Nothing answers any more: the caller is told the outcome is unknown.
        proxy.arm(Fault::LoseEverything);
        let e = client
            .kv_put_new("t/unknown", b"mine".to_vec())
            .await
            .unwrap_err();
        assert!(matches!(e, ConsulError::UnknownOutcome { .. }), "{e}");
        assert!(e.to_string().contains("t/unknown"), "{e}");
        // It did land; only the answers were lost.
        assert_eq!(direct.kv_get("t/unknown").await.unwrap().unwrap(), b"mine");
    }

    #[tokio::test]
    async fn a_blocking_query_blocks_until_a_change_and_tells_it() {
        let Some(agent) = dev_agent().await else {
            return;
        };
        let consul = Consul::new(agent.http);
        consul.kv_put("w/a", b"1".to_vec()).await.unwrap();
        let mut query = BlockingQuery::new(Duration::from_secs(1));
        let list = |index, wait| consul.kv_list("w/", index, wait);

        let first = query.next(list).await.unwrap();
        assert!(!first.changed);
        assert_eq!(first.value.len(), 1);
        // Nothing changes: each query waits out its second on Consul's side.
        let started = Instant::now();
        for _ in 0..2 {
            assert!(!query.next(list).await.unwrap().changed);
        }
        assert!(
            started.elapsed() >= Duration::from_millis(1800),
            "queries without a change returned after {:?}",
            started.elapsed()
        );
        // A write while a query blocks ends it, and the change is told.
        let writer = Consul::new(agent.http);
        let write = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            writer.kv_put("w/b", b"2".to_vec()).await.unwrap();
        });
        let started = Instant::now();
        let mut query = BlockingQuery::new(Duration::from_secs(20));
        query.next(list).await.unwrap();
        let answer = query.next(list).await.unwrap();
        write.await.unwrap();
        assert!(answer.changed);
        assert_eq!(answer.value.len(), 2);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }
}

/// Consul's ACLs hold on their own, without arpanet's firewall: over 127.0.0.1 on the
/// node itself, a request without a token is refused (KV and the agent), a node's own
/// token writes KV under `arpanet/` only and never `arpanet/identity/`, cannot speak
/// for another node, and DNS still answers (the anonymous token reads services).
#[test]
fn consul_acls_deny_without_a_token_and_a_node_token_does_only_its_part() {
    require_lab!();
    let lab = Lab::builder(2).start();
    lab.write_arpanet_config(0, "boot", &[1], CONSUL);
    lab.write_arpanet_config(1, "client", &[0], CONSUL);
    let (h0, h1) = (&lab.hosts[0], &lab.hosts[1]);
    Host::start_nodes(&[h0, h1]);
    for h in [h0, h1] {
        h.wait_for_nodes(2, Duration::from_secs(90));
    }
    let token = |h: &Host| {
        std::fs::read_to_string(h.identity_dir().join("consul-agent.token"))
            .unwrap()
            .trim()
            .to_string()
    };
    // `curl` inside the host against its own agent: the HTTP code, then the body.
    let http = |h: &Host, method: &str, path: &str, token: Option<&str>, body: &str| {
        let url = format!("http://127.0.0.1:8500{path}");
        let header = token.map(|t| format!("X-Consul-Token: {t}"));
        let mut args = vec!["curl", "-s", "-w", "\n%{http_code}", "-X", method, &url];
        if let Some(h) = &header {
            args.extend(["-H", h]);
        }
        if !body.is_empty() {
            args.extend(["--data", body]);
        }
        let out = stdout(&h.exec(&args));
        let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
        (code.trim().to_string(), body.to_string())
    };

    for h in [h0, h1] {
        let own = token(h);
        let name = format!("h{}", h.index);
        // The node's own token writes and reads arpanet/.
        let (code, body) = http(
            h,
            "PUT",
            &format!("/v1/kv/arpanet/test/{name}"),
            Some(&own),
            "v",
        );
        assert_eq!(
            (code.as_str(), body.as_str()),
            ("200", "true"),
            "{name}: own token, arpanet/"
        );
        // Without a token: KV read and write, and the agent, answer 403.
        for (method, path, body) in [
            ("GET", format!("/v1/kv/arpanet/test/{name}"), ""),
            ("PUT", format!("/v1/kv/arpanet/test/{name}"), "anon"),
            ("GET", "/v1/agent/self".to_string(), ""),
        ] {
            let (code, text) = http(h, method, &path, None, body);
            assert_eq!(
                code, "403",
                "{name}: {method} {path} without a token: {text}"
            );
            assert!(
                text.contains("Permission denied") || text.contains("ACL not found"),
                "{name}: {method} {path}: {text}"
            );
        }
        // The own token: not arpanet/identity/ (servers' only), not outside arpanet/.
        for key in ["arpanet/identity/revoked/x", "apples/colour"] {
            let (code, text) = http(h, "PUT", &format!("/v1/kv/{key}"), Some(&own), "v");
            assert_eq!(code, "403", "{name}: PUT {key}: {text}");
        }
        let (code, _) = http(h, "GET", "/v1/agent/self", Some(&own), "");
        assert_eq!(code, "200", "{name}: its own agent");
    }
    // A node's token cannot register a node named after another node.
    let other = r#"{"Node":"h0","Address":"10.253.0.2"}"#;
    let (code, text) = http(h1, "PUT", "/v1/catalog/register", Some(&token(h1)), other);
    assert_eq!(code, "403", "h1 registering h0: {text}");
    // Nor read another host's agent with its token.
    let (code, _) = http(h0, "GET", "/v1/agent/self", Some(&token(h1)), "");
    assert_eq!(code, "403", "h1's token on h0's agent");

    // arpanet's own error names the token file.
    let out = h1.arpanet(&["kv", "put", "apples/colour", "green"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let file = h1.identity_dir().join("consul-agent.token");
    assert!(
        err.contains("refused") && err.contains(&file.display().to_string()),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // While arpanet/ works through the CLI, on both.
    assert_success(
        &h1.arpanet(&["kv", "put", "arpanet/test/cli", "ok"]),
        "kv put",
    );
    assert_eq!(
        stdout(&h0.arpanet(&["kv", "get", "arpanet/test/cli"])),
        "ok\n"
    );

    // DNS reads services with the anonymous token: the nodes' own service resolves,
    // from a container and from the host.
    let call = h1.docker(&[
        "run",
        "--rm",
        TEST_IMAGE,
        "nslookup",
        "arpanet.service.consul",
    ]);
    assert_success(&call, "nslookup arpanet.service.consul");
    let text = stdout(&call);
    assert!(
        text.contains("10.255.0.1") && text.contains("10.255.0.2"),
        "{text}"
    );

    // The management token is on the boot node only, root's only.
    use std::os::unix::fs::PermissionsExt;
    let m = h0.identity_dir().join("consul-management.token");
    assert_eq!(
        std::fs::metadata(&m).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(!h1.identity_dir().join("consul-management.token").exists());
    lab.teardown().expect("teardown");
}
