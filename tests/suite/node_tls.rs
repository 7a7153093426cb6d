//! Mutual TLS on the cluster API (10.255.a.b:7100) and the image peer port (7101), with
//! the admission firewall out of the way: ARPANET-INPUT is flushed on the node over and
//! over (arpanetd puts it back every pass), so whatever refuses a peer here is the
//! certificate check. Two nodes and a host on the same underlay that is not one; curl
//! (OpenSSL) from inside the lab's namespaces. Every packet stays inside them.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use arpanet::identity::{Ca, NodeIdentity, NodeKey, Role};

use crate::consul::{Rpc, rpc_ping};
use crate::lab::{Host, Lab, TEST_IMAGE, assert_success, stdout};

const CONSUL: &str = "[consul]\nmode = \"config\"\n";

/// A client certificate on disk (cert.pem, key.pem) and its serial.
struct ClientCert {
    dir: PathBuf,
    serial: String,
}

fn client_cert(dir: &Path, key: &NodeKey, issued: arpanet::identity::Issued) -> ClientCert {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("cert.pem"), &issued.cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), key.key_pem()).unwrap();
    ClientCert {
        dir: dir.to_path_buf(),
        serial: issued.serial,
    }
}

fn who(address: &str) -> NodeIdentity {
    NodeIdentity {
        cluster: "arpanet-lab".into(),
        address: address.parse().unwrap(),
        role: Role::Client,
    }
}

/// curl from inside the network namespace `netns` (a path), with a client certificate
/// or none, not checking the server (the probe is about what the server accepts).
/// Returns curl's exit code and its verbose output.
fn curl(netns: &str, url: &str, cert: Option<&Path>) -> (i32, String) {
    let mut cmd = std::process::Command::new("nsenter");
    cmd.arg(format!("--net={netns}"))
        .args(["--", "curl", "-skv", "--max-time", "5"]);
    if let Some(dir) = cert {
        cmd.arg("--cert")
            .arg(dir.join("cert.pem"))
            .arg("--key")
            .arg(dir.join("key.pem"));
    }
    let out = cmd.arg(url).output().expect("curl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// [`curl`] until the connection gets through (the flusher and arpanetd's pass race;
/// a probe that met the firewall proves nothing), then what it got.
fn probe(netns: &str, url: &str, cert: Option<&Path>) -> (i32, String) {
    let tls = url.starts_with("https");
    for _ in 0..20 {
        let (code, text) = curl(netns, url, cert);
        let through = if tls {
            text.contains("TLS handshake, Server hello")
        } else {
            text.contains("Connected to")
        };
        if through {
            return (code, text);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{url} from {netns}: never got past the firewall, though it is flushed");
}

/// Refused in the handshake with one of `alerts`, in curl's (OpenSSL's) words, e.g.
/// `alert certificate required`; no HTTP answer.
fn assert_refused(what: &str, (code, text): (i32, String), alerts: &[&str]) {
    assert_ne!(code, 0, "{what}: {text}");
    assert!(
        alerts.iter().any(|a| text.contains(a)),
        "{what}: expected one of {alerts:?}:\n{text}"
    );
    assert!(
        !text.contains("< HTTP/"),
        "{what}: got an HTTP answer:\n{text}"
    );
}

#[test]
fn the_node_ports_refuse_every_peer_without_a_good_cluster_certificate() {
    require_lab!();
    let lab = Lab::builder(3).start();
    lab.write_arpanet_config(0, "boot", &[1], CONSUL);
    lab.write_arpanet_config(1, "client", &[0], CONSUL);
    let (h0, h1, out) = (&lab.hosts[0], &lab.hosts[1], &lab.hosts[2]);
    Host::start_nodes(&[h0, h1]);
    for h in [h0, h1] {
        h.wait_for_nodes(2, Duration::from_secs(60));
    }
    h0.start_sync();
    let api = format!("https://{}:7100/v1/nodes", h0.address.overlay_ip());
    let peer = format!("https://{}:7101/", h0.address.overlay_ip());
    let h1_ns = format!("/run/netns/{}", h1.netns);
    let mine = h1.identity_files().dir;

    // A node with its own certificate gets its answer, and gets through to the peer
    // port's TLS (behind it, librqbit hangs up on HTTP: no alert).
    let (code, text) = curl(&h1_ns, &api, Some(&mine));
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("< HTTP/1.1 200"), "{text}");
    let (_, text) = curl(&h1_ns, &peer, Some(&mine));
    assert!(text.contains("SSL connection using TLSv1.3"), "{text}");
    assert!(
        !text.contains("alert certificate") && !text.contains("alert unknown"),
        "{text}"
    );

    // The firewall out of the way, for good: flushed every 50 ms.
    h0.spawn(
        "flusher",
        &[
            "sh".as_ref(),
            "-c".as_ref(),
            "while :; do iptables -w -F ARPANET-INPUT; sleep 0.05; done".as_ref(),
        ],
    );

    // The underlay attacker, routing to the node's planes by its underlay address.
    assert_success(
        &out.exec(&[
            "ip",
            "route",
            "add",
            "10.255.0.0/16",
            "via",
            &h0.underlay_ip.to_string(),
        ]),
        "route to the overlay plane over the underlay",
    );
    assert_success(
        &out.exec(&[
            "ip",
            "route",
            "add",
            "10.253.0.0/16",
            "via",
            &h0.underlay_ip.to_string(),
        ]),
        "route to the Consul plane over the underlay",
    );
    let consul_rpc = std::net::SocketAddrV4::new(h0.address.consul_ip(), 8300);
    let out_ns = format!("/run/netns/{}", out.netns);
    // A container on the node: curl in its network namespace.
    assert_success(
        &h0.docker(&["run", "-d", "--name", "probe", TEST_IMAGE, "sleep", "600"]),
        "docker run probe",
    );
    let pid = stdout(&h0.docker(&["inspect", "-f", "{{.State.Pid}}", "probe"]))
        .trim()
        .to_string();
    let container_ns = format!("/proc/{pid}/ns/net");
    for (who, ns) in [("the underlay", &out_ns), ("a container", &container_ns)] {
        for url in [&api, &peer] {
            assert_refused(
                &format!("{who} without a certificate at {url}"),
                probe(ns, url, None),
                &["alert certificate required"],
            );
            let plain = url.replacen("https", "http", 1);
            let (code, text) = probe(ns, &plain, None);
            assert_ne!(code, 0, "{who}, plain HTTP at {plain}: {text}");
            assert!(!text.contains("< HTTP/"), "{who} at {plain}:\n{text}");
        }
        // Consul's server RPC: neither plain nor TLS without a certificate answers.
        let ca = &lab.ca.cert_pem;
        rpc_refused(&format!("{who}, plain"), ns, consul_rpc, Rpc::Plain, ca);
        rpc_refused(
            &format!("{who}, no certificate"),
            ns,
            consul_rpc,
            Rpc::Tls(None),
            ca,
        );
    }

    // Bad certificates, from a node's own namespace (the nodes' own path over the
    // overlay): another CA's, an expired one, and a revoked one.
    let bad = h1.dir.join("bad-certs");
    let stranger_ca = Ca::generate("arpanet-lab").unwrap();
    let key = NodeKey::generate().unwrap();
    let foreign = client_cert(
        &bad.join("foreign"),
        &key,
        stranger_ca
            .issue(
                &key.csr_pem().unwrap(),
                &who("0.2"),
                Duration::from_secs(3600),
            )
            .unwrap(),
    );
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let key = NodeKey::generate().unwrap();
    let expired = client_cert(
        &bad.join("expired"),
        &key,
        lab.ca
            .issue_between(
                &key.csr_pem().unwrap(),
                &who("0.2"),
                now - 2 * hour,
                now - hour,
            )
            .unwrap(),
    );
    let key = NodeKey::generate().unwrap();
    let revoked = client_cert(
        &bad.join("revoked"),
        &key,
        lab.ca
            .issue(&key.csr_pem().unwrap(), &who("0.3"), hour)
            .unwrap(),
    );
    for url in [&api, &peer] {
        assert_refused(
            &format!("another CA's certificate at {url}"),
            probe(&h1_ns, url, Some(&foreign.dir)),
            // The stranger's CA has the lab CA's name: its signature is what fails.
            &["alert unknown ca", "alert decrypt error"],
        );
        assert_refused(
            &format!("an expired certificate at {url}"),
            probe(&h1_ns, url, Some(&expired.dir)),
            &["alert certificate expired"],
        );
    }
    // Consul's server RPC takes the node's own certificate, not another CA's nor an
    // expired one. (Consul has no revocation list: a removed node's deleted ACL token
    // is what shuts it out there, see identity.rs.)
    let ca = &lab.ca.cert_pem;
    let own = rpc_ping(&h1_ns, consul_rpc, Rpc::Tls(Some(&mine)), ca);
    let own = own.unwrap_or_else(|e| panic!("Consul RPC with h1's own certificate: {e}"));
    assert!(own.windows(11).any(|w| w == b"Status.Ping"), "{own:?}");
    for (what, dir) in [("another CA's", &foreign.dir), ("an expired", &expired.dir)] {
        rpc_refused(what, &h1_ns, consul_rpc, Rpc::Tls(Some(dir)), ca);
    }
    // Good until its serial is in the node's revocation list.
    let (code, text) = curl(&h1_ns, &api, Some(&revoked.dir));
    assert_eq!(code, 0, "before revocation: {text}");
    std::fs::write(
        h0.dir.join("state/revoked.json"),
        serde_json::to_vec(&[&revoked.serial]).unwrap(),
    )
    .unwrap();
    for url in [&api, &peer] {
        assert_refused(
            &format!("a revoked certificate at {url}"),
            probe(&h1_ns, url, Some(&revoked.dir)),
            &["alert certificate revoked"],
        );
    }
    // The node's own certificate still works, and so does the cluster.
    let (code, text) = curl(&h1_ns, &api, Some(&mine));
    assert_eq!(code, 0, "{text}");
    let lists_probe = || {
        let ps = h1.arpanet(&["ps", "--all", "--json"]);
        assert_success(&ps, "ps --all");
        let listing: serde_json::Value = serde_json::from_slice(&ps.stdout).unwrap();
        listing.to_string().contains("\"probe\"")
    };
    assert!(lists_probe(), "h1 lists h0's container over TLS");

    // Renewal: h1 gets a new certificate while its arpanetd runs, and h0 revokes the
    // old one. h1's next call to h0 already shows the new one (no restart).
    let cert = |h: &Host| {
        let pem = std::fs::read_to_string(h.identity_files().node_cert()).unwrap();
        arpanet::identity::CertInfo::from_pem(&pem).unwrap().serial
    };
    let old = cert(h1);
    lab.enroll(1, Role::Client);
    assert_ne!(cert(h1), old);
    std::fs::write(
        h0.dir.join("state/revoked.json"),
        serde_json::to_vec(&[&revoked.serial, &old]).unwrap(),
    )
    .unwrap();
    assert!(lists_probe(), "h1 reaches h0 with its renewed certificate");
    h0.stop("flusher");
}

/// Consul RPC from `netns` that reaches the server (past the firewall, which the
/// flusher and arpanetd's pass race over) and is refused there.
fn rpc_refused(what: &str, netns: &str, addr: std::net::SocketAddrV4, how: Rpc, ca: &str) {
    for _ in 0..20 {
        match rpc_ping(netns, addr, how, ca) {
            Err(e) if e.starts_with("connect:") => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return eprintln!("MEASURED: Consul RPC, {what}: {e}"),
            Ok(answer) => panic!("Consul RPC, {what}: answered {answer:?}"),
        }
    }
    panic!("Consul RPC, {what}: never got past the firewall, though it is flushed");
}

/// A node without an identity: no listener on 7100 or 7101, one line saying why and
/// what to do; the rest of arpanetd runs on.
#[test]
fn a_node_without_an_identity_listens_nowhere_and_says_why_once() {
    require_lab!();
    let lab = Lab::builder(1).start();
    lab.write_arpanet_config(0, "boot", &[], CONSUL);
    let h0 = &lab.hosts[0];
    let files = h0.identity_files();
    std::fs::remove_dir_all(&files.dir).unwrap();
    h0.start_arpanetd();
    crate::lab::wait_until(Duration::from_secs(20), "the overlay address", || {
        stdout(&h0.exec(&["ip", "-4", "addr", "show", "arpanet0"])).contains("10.255.0.1")
    });
    h0.start_sync();
    let missing = format!(
        "{} does not exist: this node has no cluster identity yet",
        files.ca_cert().display()
    );
    crate::lab::wait_until(Duration::from_secs(20), "the reason in the log", || {
        h0.log("arpanetd").contains(&missing) && h0.log("sync").contains(&missing)
    });
    // Passes go on (1 s apart) and the reason is not repeated.
    std::thread::sleep(Duration::from_secs(6));
    let log = h0.log("arpanetd");
    let line = format!("the cluster API does not listen on 10.255.0.1:7100: {missing}");
    assert_eq!(log.matches(&line).count(), 1, "{log}");
    assert!(log.contains("--token"), "{log}");
    assert!(
        h0.log("sync").contains(&format!(
            "image sync: no peer listens on 10.255.0.1:7101: {missing}"
        )),
        "{}",
        h0.log("sync")
    );
    for port in ["7100", "7101"] {
        let (code, text) = curl(
            &format!("/run/netns/{}", h0.netns),
            &format!("https://10.255.0.1:{port}/"),
            None,
        );
        assert_eq!(code, 7, "nothing listens on {port}: {text}");
    }
    // The unix socket still answers the CLI.
    let out = h0.arpanet(&["node", "ls"]);
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("cannot reach arpanetd"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
