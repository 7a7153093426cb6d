//! arpanetd's `/metrics` on three lab hosts with real dockerd and Consul: Prometheus'
//! own parser (`promtool check metrics`) reads it, it says what the cluster does (peers
//! up, a service's instances desired and running, pass step times, image bytes moved
//! by the sync service), and on the overlay it answers nodes only.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::lab::{Host, Lab, TEST_IMAGE, assert_success, stdout, wait_until, which};

/// `/metrics` from `host`'s API socket: (content type, body).
pub fn scrape(host: &Host) -> (String, String) {
    let socket = host.dir.join("run/api.sock");
    let out = host.exec(&[
        "curl",
        "-sS",
        "--fail",
        "--max-time",
        "10",
        "--unix-socket",
        socket.to_str().unwrap(),
        "-w",
        "\n%{content_type}",
        "http://node/metrics",
    ]);
    assert_success(&out, "curl /metrics on the API socket");
    let text = stdout(&out);
    let (body, content_type) = text.rsplit_once('\n').unwrap();
    (content_type.to_string(), format!("{body}\n"))
}

/// The value of one series, written as the exposition writes it (`name{labels}`).
pub fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// `service`'s instances in `state` on `host`, 0 when not there yet.
fn instances(text: &str, service: &str, state: &str) -> f64 {
    let series = format!("arpanet_service_instances{{service=\"{service}\",state=\"{state}\"}}");
    value(text, &series).unwrap_or(0.0)
}

/// Runs Debian's `promtool check metrics` on `text`: Ok, or what it said.
fn promtool_check(promtool: &std::path::Path, text: &str) -> Result<String, String> {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("wait for promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(said)
    } else {
        Err(format!("{}: {said}", out.status))
    }
}

/// A certificate from the cluster CA that names no node, as a container or a user
/// could be given one. Returns (cert, key) PEM paths.
fn non_node_certificate(lab: &Lab, dir: &std::path::Path) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "not a node");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.serial_number = Some(rcgen::SerialNumber::from(vec![0x42, 0x17, 0x01]));
    let ca_key = rcgen::KeyPair::from_pem(&lab.ca.key_pem()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&lab.ca.cert_pem, ca_key).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let cert_path = dir.join("not-a-node.crt");
    let key_path = dir.join("not-a-node.key");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (
        cert_path.to_str().unwrap().to_string(),
        key_path.to_str().unwrap().to_string(),
    )
}

#[test]
fn metrics_parse_and_show_peers_instances_and_passes_and_the_overlay_answers_nodes_only() {
    require_lab!();
    let promtool = which("promtool");
    if promtool.is_none() {
        let msg = "promtool is missing: scripts/install-test-deps installs Debian's prometheus";
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true"),
            "{msg}; CI=true, so this fails instead of skipping"
        );
        eprintln!("SKIPPED (the promtool check only): {msg}");
    }
    let started = Instant::now();
    let lab = Lab::three_nodes();
    let hosts: Vec<&Host> = lab.hosts.iter().collect();
    let (h0, h1) = (hosts[0], hosts[1]);

    let create = h1.arpanet(&[
        "service",
        "create",
        "mweb",
        "--image",
        TEST_IMAGE,
        "--replicas",
        "3",
        "--",
        "httpd",
        "-f",
        "-p",
        "8080",
    ]);
    assert_success(&create, "service create mweb");
    // 3 replicas on 3 nodes: each node's share is 1, placed and running.
    let mut last: Vec<(f64, f64)>;
    let settled = {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            last = hosts
                .iter()
                .map(|h| {
                    let (_, text) = scrape(h);
                    (
                        instances(&text, "mweb", "desired"),
                        instances(&text, "mweb", "running"),
                    )
                })
                .collect();
            if last == [(1.0, 1.0); 3] || Instant::now() > deadline {
                break last == [(1.0, 1.0); 3];
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    assert!(
        settled,
        "mweb (desired, running) per node: wanted (1, 1) on each, last {last:?}"
    );

    // Both other nodes are peers with every entry in place.
    wait_until(Duration::from_secs(30), "2 peers ok on node 0", || {
        let (_, text) = scrape(h0);
        value(&text, "arpanet_peers{state=\"ok\"}") == Some(2.0)
    });
    let (content_type, text) = scrape(h0);
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert_eq!(
        value(&text, "arpanet_peers{state=\"not_admitted\"}"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "arpanet_peers{state=\"missing\"}"),
        Some(0.0),
        "{text}"
    );
    // Steps of both passes were timed; no image has moved yet.
    for (pass, step) in [
        ("main", "cluster services"),
        ("main", "network"),
        ("network", "network"),
        ("network", "admission"),
    ] {
        let series =
            format!("arpanet_pass_step_duration_seconds_count{{pass=\"{pass}\",step=\"{step}\"}}");
        let runs = value(&text, &series).unwrap_or(0.0);
        assert!(runs >= 1.0, "{series} is {runs}:\n{text}");
    }
    assert!(
        text.contains("# TYPE arpanet_pass_step_errors_total counter"),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "arpanet_image_transfer_bytes_total{direction=\"sent\"}"
        ),
        Some(0.0),
        "{text}"
    );

    // Image bytes: the sync service (a process of its own) moves an image from node 0
    // to node 1, and arpanetd's /metrics on each says so.
    for h in [h0, h1] {
        h.start_sync();
    }
    let image = "arpanet-test/metrics:1";
    h0.import_random_image(image, 4);
    assert_success(
        &h0.arpanet(&["image", "push", "--torrent", image]),
        "image push",
    );
    assert_success(
        &h1.arpanet(&["image", "pull", image]),
        "image pull on node 1",
    );
    let transferred = |h: &Host, direction: &str| {
        let series = format!("arpanet_image_transfer_bytes_total{{direction=\"{direction}\"}}");
        value(&scrape(h).1, &series).unwrap_or(0.0)
    };
    let four_mib = f64::from(4u32 << 20);
    wait_until(Duration::from_secs(20), "4 MiB sent by node 0", || {
        transferred(h0, "sent") >= four_mib
    });
    wait_until(Duration::from_secs(20), "4 MiB received by node 1", || {
        transferred(h1, "received") >= four_mib
    });
    assert_eq!(transferred(h1, "sent"), 0.0, "node 1 sent nothing");
    let (_, text) = scrape(h0);

    // Prometheus' own parser, with its lint.
    if let Some(promtool) = &promtool {
        match promtool_check(promtool, &text) {
            Ok(said) => eprintln!("promtool check metrics: ok {said}"),
            Err(e) => panic!("promtool check metrics failed: {e}\n{text}"),
        }
    }

    // On the overlay: node 0 asks node 1 with its node certificate and gets the
    // metrics; a certificate from the same CA that names no node is refused, and so
    // is a client with none. Every request runs in node 0's namespace.
    let files = h0.identity_files();
    let url = format!("https://{}:7100/metrics", h1.address.overlay_ip());
    let ca = files.ca_cert();
    let curl = |cert: Option<(&str, &str)>| {
        let mut args = vec![
            "curl",
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            ca.to_str().unwrap(),
            "-w",
            "\n%{http_code}",
        ];
        if let Some((c, k)) = cert {
            args.extend(["--cert", c, "--key", k]);
        }
        args.push(&url);
        let out = h0.exec(&args);
        let text = stdout(&out);
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (
            out.status.success(),
            code.trim().to_string(),
            body.to_string(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (node_cert, node_key) = (files.node_cert(), files.node_key());
    let (ok, code, body, err) = curl(Some((
        node_cert.to_str().unwrap(),
        node_key.to_str().unwrap(),
    )));
    assert!(ok && code == "200", "a node on the overlay: {code} {err}");
    assert!(body.contains("arpanet_peers{state=\"ok\"}"), "{body}");
    // The handshake already turns a certificate naming no node away (the nodes-only
    // guard behind it, which a unit test in api::server checks, never sees one).
    let (cert, key) = non_node_certificate(&lab, &h0.dir);
    let (ok, code, body, err) = curl(Some((&cert, &key)));
    assert!(
        !ok && code == "000" && !body.contains("arpanet_"),
        "a certificate naming no node: curl answered {code}: {body} {err}"
    );
    assert!(err.contains("certificate unknown"), "{err}");
    let (ok, code, body, _) = curl(None);
    assert!(
        !ok && code == "000" && !body.contains("arpanet_"),
        "no client certificate: curl succeeded with {code}: {body}"
    );
    eprintln!(
        "MEASURED: metrics test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
