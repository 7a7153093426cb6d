//! Node identity, attacked for real: joins with tokens (a rotated one, one naming
//! another CA, a client token used for a server), a node that joins and works, and
//! `node rm` revoking it. Whole nodes (arpanetd, dockerd, Consul) in lab namespaces.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use arpanet::identity::{Ca, CertInfo, JoinSecrets, Role};

use crate::consul::{Rpc, rpc_call};
use crate::lab::{Host, Lab, TEST_IMAGE, assert_success, stdout, wait_until};

const CONSUL: &str = "[consul]\nmode = \"config\"\n";

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Host `index` configured by the lab but with no identity and no secret, as a host
/// is before its first `arpanet server|client`.
fn bare(lab: &Lab, index: usize, role: &str, join: &[usize]) {
    lab.write_arpanet_config(index, role, join, CONSUL);
    let h = &lab.hosts[index];
    std::fs::remove_dir_all(h.identity_files().dir).unwrap();
    std::fs::remove_file(h.dir.join("secret")).unwrap();
}

fn join(h: &Host, role: &str, boot: &Host, token: &str) -> std::process::Output {
    h.arpanet(&[
        role,
        &h.address.to_string(),
        "--cluster",
        "arpanet-lab",
        "--join",
        &format!("{}@{}", boot.address, boot.underlay_ip),
        "--token",
        token,
        "--no-start",
    ])
}

fn token(boot: &Host, role: &str) -> String {
    let out = boot.arpanet(&["token", "show", role]);
    assert_success(&out, "arpanet token show");
    stdout(&out).trim().to_string()
}

#[test]
fn joins_take_a_current_token_of_the_right_ca_and_role() {
    require_lab!();
    let lab = Lab::builder(3).start();
    let (h0, h1, h2) = (&lab.hosts[0], &lab.hosts[1], &lab.hosts[2]);
    // The boot node as `arpanet boot` leaves it: CA, certificate, join secrets.
    lab.write_arpanet_config(0, "boot", &[], CONSUL);
    let seed = h0.identity_files().join_secrets();
    std::fs::write(
        &seed,
        serde_json::to_string(&JoinSecrets::generate().unwrap()).unwrap(),
    )
    .unwrap();
    Host::start_nodes(&[h0]);
    wait_until(Duration::from_secs(60), "the join tokens in Consul", || {
        !seed.exists()
    });
    let client_token = token(h0, "client");
    let server_token = token(h0, "server");
    assert!(client_token.starts_with(&format!("ARPN-1-{}-", lab.ca.digest())));
    bare(&lab, 1, "client", &[0]);
    bare(&lab, 2, "server", &[0]);
    let files = h1.identity_files();

    // A token naming another CA: the handshake fails before the token is sent.
    let other = Ca::generate("arpanet-lab").unwrap();
    let foreign = client_token.replace(&lab.ca.digest(), &other.digest());
    let out = join(h1, "client", h0, &foreign);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(
        e.contains("not a server of the cluster whose CA the token names")
            && e.contains("nothing was sent"),
        "{e}"
    );
    assert!(!files.node_cert().exists());

    // A client token for a server.
    let out = join(h2, "server", h0, &client_token);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.contains("this is a client token"), "{e}");
    assert!(!h2.identity_files().node_cert().exists());

    // A rotated token.
    let out = h0.arpanet(&["token", "rotate", "client"]);
    assert_success(&out, "token rotate client");
    let new_client = token(h0, "client");
    assert_ne!(new_client, client_token);
    assert_eq!(token(h0, "server"), server_token, "the server token stays");
    let out = join(h1, "client", h0, &client_token);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.contains("not current: it was rotated"), "{e}");
    assert!(!files.node_cert().exists());
    assert!(!h1.dir.join("secret").exists());

    // The current token: the node gets its identity and the cluster secret, then runs.
    let started = Instant::now();
    let out = join(h1, "client", h0, &new_client);
    assert_success(&out, "arpanet client --token");
    println!("join (identity issued) took {:?}", started.elapsed());
    let info = CertInfo::from_pem(&std::fs::read_to_string(files.node_cert()).unwrap()).unwrap();
    assert_eq!(info.identity.address, h1.address);
    assert_eq!(info.identity.role, Role::Client);
    assert!(!files.ca_key().exists(), "a client never holds the CA key");
    assert_eq!(
        std::fs::read_to_string(h1.dir.join("secret")).unwrap(),
        std::fs::read_to_string(h0.dir.join("secret")).unwrap()
    );
    let out = join(h2, "server", h0, &server_token);
    assert_success(&out, "arpanet server --token");
    assert!(
        h2.identity_files().ca_key().exists(),
        "servers hold the CA key"
    );
    Host::start_nodes(&[h1, h2]);
    for h in [h0, h1, h2] {
        h.wait_for_nodes(3, Duration::from_secs(90));
    }
    println!(
        "3 nodes in the API {:?} after the first join",
        started.elapsed()
    );

    // Running the command again without a token keeps the identity it has.
    let out = h1.arpanet(&[
        "client",
        &h1.address.to_string(),
        "--join",
        &format!("{}@{}", h0.address, h0.underlay_ip),
        "--no-start",
    ]);
    assert_success(&out, "arpanet client again, no token");
    assert_eq!(
        CertInfo::from_pem(&std::fs::read_to_string(files.node_cert()).unwrap())
            .unwrap()
            .serial,
        info.serial
    );

    // node rm: the client's instance runs elsewhere, its certificate and Consul token
    // stop working, and it can come back with a new token.
    let create = h0.arpanet(&[
        "service",
        "create",
        "web",
        "--image",
        TEST_IMAGE,
        "--replicas",
        "3",
        "--",
        "sleep",
        "3600",
    ]);
    assert_success(&create, "service create web");
    let each = |h: &Host| -> BTreeMap<String, usize> {
        let out = h.arpanet(&["ps", "--all", "--json"]);
        let mut counts = BTreeMap::new();
        if let Ok(serde_json::Value::Array(list)) = serde_json::from_slice(&out.stdout) {
            for c in list {
                if c["service"] == "web" && c["state"] == "running" {
                    *counts
                        .entry(c["node"].as_str().unwrap_or("").to_string())
                        .or_insert(0) += 1;
                }
            }
        }
        counts
    };
    let spread = |pairs: &[(&str, usize)]| -> BTreeMap<String, usize> {
        pairs.iter().map(|(a, n)| (a.to_string(), *n)).collect()
    };
    wait_until(Duration::from_secs(90), "one web instance per node", || {
        each(h0) == spread(&[("0.1", 1), ("0.2", 1), ("0.3", 1)])
    });
    let agent_token = std::fs::read_to_string(files.consul_agent_token())
        .unwrap()
        .trim()
        .to_string();
    // A connection 0.2 holds open to 0.1's cluster API (keep-alive, idle).
    let (cert, key, ca) = (files.node_cert(), files.node_key(), files.ca_cert());
    let held = HeldConnection::open(
        h0,
        "10.255.0.1:7100",
        &[&cert, &key, &ca],
        "GET /v1/nodes HTTP/1.1\r\nHost: 10.255.0.1\r\n\r\n",
    );
    held.wait_for_answer("HTTP/1.1 200", Duration::from_secs(10));
    // And one with a live certificate (0.1's own), which must stay open.
    let own = h0.identity_files();
    let mut live = HeldConnection::open(
        h0,
        "10.255.0.1:7100",
        &[&own.node_cert(), &own.node_key(), &own.ca_cert()],
        "GET /v1/nodes HTTP/1.1\r\nHost: 10.255.0.1\r\n\r\n",
    );
    live.wait_for_answer("HTTP/1.1 200", Duration::from_secs(10));
    let out = h0.arpanet(&["node", "rm", "0.2"]);
    assert_success(&out, "node rm 0.2");
    assert!(
        stdout(&out).contains(&format!("revoked certificate {}", info.serial)),
        "{}",
        stdout(&out)
    );
    wait_until(Duration::from_secs(60), "web re-placed off 0.2", || {
        let c = each(h0);
        c.values().sum::<usize>() == 3 && !c.contains_key("0.2")
    });
    // The connection it held is closed, and its certificate, shown to 0.1's own
    // cluster API again, is refused as revoked.
    held.wait_for_close(Duration::from_secs(20));
    live.assert_open();
    drop(live);
    wait_until(
        Duration::from_secs(20),
        "0.1 to refuse 0.2's certificate",
        || {
            let out = h0.exec(&[
                "curl",
                "-sS",
                "--max-time",
                "5",
                "--cacert",
                ca.to_str().unwrap(),
                "--cert",
                cert.to_str().unwrap(),
                "--key",
                key.to_str().unwrap(),
                "https://10.255.0.1:7100/v1/nodes",
            ]);
            !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("revoked")
        },
    );
    // Its Consul token is gone.
    let out = h0.exec(&[
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        &format!("X-Consul-Token: {agent_token}"),
        "http://127.0.0.1:8500/v1/kv/arpanet/cluster/?keys",
    ]);
    assert_eq!(
        stdout(&out),
        "403",
        "the removed node's Consul token still works"
    );
    // Consul's RPC has no revocation list: its certificate still gets through TLS
    // there, and the deleted token is what is refused. With a live token (0.1's) the
    // same call answers, so the refusal is the token's.
    let rpc = std::net::SocketAddrV4::new(h0.address.consul_ip(), 8300);
    let h0_ns = format!("/run/netns/{}", h0.netns);
    let h0_token = std::fs::read_to_string(h0.identity_files().consul_agent_token()).unwrap();
    let kv_get = |token: &str| {
        let args = [
            ("Datacenter", "arpanet-lab"),
            ("Key", "arpanet/cluster/services"),
            ("Token", token),
        ];
        let how = Rpc::Tls(Some(&files.dir));
        let answer = rpc_call(&h0_ns, rpc, how, &lab.ca.cert_pem, "KVS.Get", &args)
            .unwrap_or_else(|e| panic!("KVS.Get over Consul RPC: {e}"));
        String::from_utf8_lossy(&answer).into_owned()
    };
    let live = kv_get(h0_token.trim());
    // The answer's body (its QueryMeta's Index) and no error.
    assert!(live.contains("Index") && !live.contains("ACL"), "{live:?}");
    let removed = kv_get(&agent_token);
    assert!(removed.contains("ACL not found"), "{removed:?}");
    // Back with a new token: a new certificate, and a node again.
    h1.stop("arpanetd");
    h1.stop("consul");
    std::fs::remove_dir_all(files.dir.clone()).unwrap();
    let out = join(h1, "client", h0, &token(h0, "client"));
    assert_success(&out, "arpanet client again after node rm");
    let again = CertInfo::from_pem(&std::fs::read_to_string(files.node_cert()).unwrap()).unwrap();
    assert_ne!(again.serial, info.serial);
    h1.start_arpanetd();
    h1.start_consul_agent();
    for h in [h0, h1, h2] {
        h.wait_for_nodes(3, Duration::from_secs(90));
    }
}

/// Three initial servers (`cluster.expect = 3`): Consul has no leader until all three
/// run, so the boot node takes the two joins on its own copy of the tokens, and puts
/// them on record (certificates, Consul tokens) once the three have elected one.
#[test]
fn the_initial_servers_of_an_expect_3_cluster_join_by_token() {
    require_lab!();
    let lab = Lab::builder(3).start();
    let (h0, h1, h2) = (&lab.hosts[0], &lab.hosts[1], &lab.hosts[2]);
    let config = lab.write_arpanet_config(0, "boot", &[], CONSUL);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replacen("[cluster]\n", "[cluster]\nexpect = 3\n", 1),
    )
    .unwrap();
    let secrets = JoinSecrets::generate().unwrap();
    let seed = h0.identity_files().join_secrets();
    std::fs::write(&seed, serde_json::to_string(&secrets).unwrap()).unwrap();
    let server_token = secrets.token(Role::Server, &lab.ca.digest()).to_string();
    let client_token = secrets.token(Role::Client, &lab.ca.digest()).to_string();
    Host::start_nodes(&[h0]);
    bare(&lab, 1, "server", &[0]);
    bare(&lab, 2, "server", &[0]);
    let server = |h: &Host, address: &str, token: &str| {
        h.arpanet(&[
            "server",
            address,
            "--cluster",
            "arpanet-lab",
            "--expect",
            "3",
            "--join",
            &format!("{}@{}", h0.address, h0.underlay_ip),
            "--token",
            token,
            "--no-start",
        ])
    };
    for h in [h1, h2] {
        if h.address == h2.address {
            // Before a leader the same checks hold: a client token makes no server, and
            // an address a waiting join took is not free.
            let out = server(h2, &h2.address.to_string(), &client_token);
            assert!(!out.status.success());
            assert!(
                stderr(&out).contains("this is a client token"),
                "{}",
                stderr(&out)
            );
            let out = server(h2, &h1.address.to_string(), &server_token);
            assert!(!out.status.success());
            let e = stderr(&out);
            assert!(
                e.contains(&format!(
                    "address {} is taken by a join that waits",
                    h1.address
                )),
                "{e}"
            );
            assert!(!h2.identity_files().node_cert().exists());
        }
        let out = server(h, &h.address.to_string(), &server_token);
        assert_success(&out, &format!("arpanet server {} --expect 3", h.address));
        assert!(
            std::fs::read_to_string(h.config_path())
                .unwrap()
                .contains("expect = 3")
        );
    }
    // No leader yet: nothing is in Consul, and the tokens are still the boot node's.
    assert!(
        seed.exists(),
        "the join tokens were published with no leader"
    );
    let pending = h0.identity_dir().join("join-pending.json");
    let held: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&pending).unwrap()).unwrap();
    assert_eq!(held["joins"].as_array().map(Vec::len), Some(2), "{held}");

    Host::start_nodes(&[h1, h2]);
    for h in [h0, h1, h2] {
        h.wait_for_nodes(3, Duration::from_secs(120));
    }
    // On record, each with the certificate its node holds, and the tokens published.
    wait_until(Duration::from_secs(30), "the joins on record", || {
        !pending.exists() && !seed.exists()
    });
    for h in [h1, h2] {
        let out = h0.consul(&[
            "kv",
            "get",
            &format!("arpanet/identity/nodes/{}", h.address),
        ]);
        assert_success(&out, "the join's certificate record");
        let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let held =
            CertInfo::from_pem(&std::fs::read_to_string(h.identity_files().node_cert()).unwrap())
                .unwrap();
        assert_eq!(record["serial"], held.serial, "{record}");
    }
    let out = h1.arpanet(&["token", "show", "server"]);
    assert_success(&out, "token show server on a joined server");
    assert_eq!(stdout(&out).trim(), server_token);
}

/// A TLS connection held open with a node's certificate (`openssl s_client`, from
/// `host`'s namespace), after one request sent on it; killed when dropped.
struct HeldConnection {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl HeldConnection {
    fn open(host: &Host, to: &str, cert_key_ca: &[&std::path::Path; 3], request: &str) -> Self {
        use std::io::{BufRead, Write};
        let [cert, key, ca] = cert_key_ca.map(|p| p.to_str().unwrap().to_string());
        let mut child = host
            .command(&[
                "openssl", "s_client", "-quiet", "-connect", to, "-CAfile", &ca, "-cert", &cert,
                "-key", &key,
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn openssl s_client");
        // stdin stays open (held by the child handle): the client does not hang up.
        child
            .stdin
            .as_mut()
            .unwrap()
            .write_all(request.as_bytes())
            .expect("send the request");
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    fn wait_for_answer(&self, starts: &str, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(starts) => return,
                Ok(_) => continue,
                Err(e) => panic!("no {starts:?} on the held connection: {e}"),
            }
        }
    }

    fn assert_open(&mut self) {
        let status = self.child.try_wait().expect("openssl s_client");
        assert!(
            status.is_none(),
            "the live connection was closed too: {status:?}"
        );
    }

    fn wait_for_close(mut self, limit: Duration) {
        wait_until(limit, "the held connection to be closed", || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
    }
}

impl Drop for HeldConnection {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
