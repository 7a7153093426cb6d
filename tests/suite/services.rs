//! Cluster services on three lab hosts with real dockerd and Consul: placed evenly
//! with no master, listed and operated from any node, re-placed when a node fails.

use crate::fixture;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::lab::{Host, Lab, TEST_IMAGE, assert_success, json, stdout, wait_until};

/// Running instances of `service` per node, as `arpanet ps --all --json` on `host`
/// reports them. `None` while the API does not answer.
fn running(host: &Host, service: &str) -> Option<BTreeMap<String, usize>> {
    let out = host.arpanet(&["ps", "--all", "--json"]);
    if !out.status.success() {
        return None;
    }
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let mut counts = BTreeMap::new();
    for c in list.as_array()? {
        if c["service"] == service && c["state"] == "running" {
            *counts.entry(c["node"].as_str()?.to_string()).or_insert(0) += 1;
        }
    }
    Some(counts)
}

fn spread(pairs: &[(&Host, usize)]) -> BTreeMap<String, usize> {
    pairs
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(h, n)| (h.address.to_string(), *n))
        .collect()
}

fn wait_for_spread(host: &Host, service: &str, want: &BTreeMap<String, usize>, limit: Duration) {
    let mut last;
    let ok = {
        let deadline = Instant::now() + limit;
        loop {
            last = running(host, service);
            if last.as_ref() == Some(want) {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    assert!(ok, "{service}: wanted {want:?} running, last seen {last:?}");
}

fn start_node(h: &Host) {
    h.start_arpanetd();
    h.start_consul_agent();
}

#[test]
fn services_are_placed_evenly_operated_from_any_node_and_replaced_on_failure() {
    require_lab!();
    let lab = Lab::three_nodes();
    let hosts: Vec<&Host> = lab.hosts.iter().collect();
    let (h0, h1, h2) = (hosts[0], hosts[1], hosts[2]);

    // 6 replicas from node 1: 2 on each node, listed alike from every node.
    let create = h1.arpanet(&[
        "service",
        "create",
        "web",
        "--image",
        TEST_IMAGE,
        "--replicas",
        "6",
        "--",
        "httpd",
        "-f",
        "-p",
        "8080",
        "-h",
        "/www",
    ]);
    assert_success(&create, "service create web");
    let even = spread(&[(h0, 2), (h1, 2), (h2, 2)]);
    // Placement has no master: each node acts on its own view, so the spread settles
    // on every node, and then every node lists the same.
    for h in [h2, h0, h1] {
        wait_for_spread(h, "web", &even, Duration::from_secs(60));
    }
    for h in [h0, h1, h2] {
        assert_eq!(
            running(h, "web").as_ref(),
            Some(&even),
            "ps --all on {}",
            h.address
        );
    }
    let ls = json(&h0.arpanet(&["service", "ls", "--json"]), "service ls");
    assert_eq!(ls[0]["name"], "web");
    assert_eq!(ls[0]["replicas"], 6);
    assert_eq!(ls[0]["running"], 6);

    // Every instance registers under the service's name.
    wait_until(Duration::from_secs(20), "6 healthy web instances", || {
        h0.passing_instances("web").unwrap_or(0) == 6
    });
    let lookup = h0.docker(&["run", "--rm", TEST_IMAGE, "nslookup", "web.service.consul"]);
    assert_success(&lookup, "nslookup web.service.consul");
    assert!(stdout(&lookup).contains("10.0."), "{}", stdout(&lookup));

    // Container operations sent to node 0 act on node 2, which owns the container.
    let all = json(&h0.arpanet(&["ps", "--all", "--json"]), "ps --all");
    let on_h2 = all
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["node"] == h2.address.to_string() && c["service"] == "web")
        .expect("an instance on node 2");
    let id = on_h2["id"].as_str().unwrap().to_string();
    let short = &id[..12];
    let inspect = json(&h0.arpanet(&["inspect", short]), "inspect");
    assert_eq!(inspect["node"], h2.address.to_string());
    assert_eq!(inspect["container"]["Id"], id);
    let state_on_h2 = || {
        stdout(&h2.docker(&["inspect", "-f", "{{.State.Running}}", &id]))
            .trim()
            .to_string()
    };
    let stop = h0.arpanet(&["stop", short]);
    assert_success(&stop, "stop");
    assert!(
        stdout(&stop).contains(&format!("on node {}", h2.address)),
        "{}",
        stdout(&stop)
    );
    assert_eq!(state_on_h2(), "false");
    assert_success(&h1.arpanet(&["start", short]), "start");
    assert_eq!(state_on_h2(), "true");
    let started_at = || {
        stdout(&h2.docker(&["inspect", "-f", "{{.State.StartedAt}}", &id]))
            .trim()
            .to_string()
    };
    let before = started_at();
    assert_success(&h0.arpanet(&["restart", short]), "restart");
    assert_eq!(state_on_h2(), "true");
    assert_ne!(
        started_at(),
        before,
        "restart did not restart the container"
    );
    // Removed from node 0: gone on node 2, whose share is then made whole again.
    let rm = h0.arpanet(&["rm", short]);
    assert_success(&rm, "rm");
    assert!(
        !h2.docker(&["inspect", &id]).status.success(),
        "the container is still on node 2"
    );
    wait_for_spread(h0, "web", &even, Duration::from_secs(60));

    // Images per node, from any node.
    let images = json(&h1.arpanet(&["images", "--all", "--json"]), "images --all");
    let with_test_image: std::collections::BTreeSet<String> = images
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| {
            i["tags"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t == TEST_IMAGE))
        })
        .map(|i| i["node"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(with_test_image.len(), 3, "{images}");
    let missing = h0.arpanet(&["stop", "0123456789ab"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains("no container `0123456789ab` on any node"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );

    // Bad requests: a 4xx with a message, and nothing changes.
    let bad = h0.arpanet(&[
        "service",
        "create",
        "db",
        "--template",
        "nope",
        "--replicas",
        "1",
    ]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("no template named `nope`"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let (code, body) = h0.api_request(
        "POST",
        "/v1/services",
        &format!(r#"{{"name":"db","image":"{TEST_IMAGE}","replicas":-1}}"#),
    );
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().starts_with("replicas: "),
        "{body}"
    );
    let (code, body) = h0.api_request("POST", "/v1/services", r#"{"name":"db","replicas":"#);
    assert_eq!(code, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("EOF"), "{body}");
    let (code, body) = h0.api_request(
        "POST",
        "/v1/services",
        r#"{"name":"Db!","image":"x:1","replicas":1}"#,
    );
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().starts_with("name: "),
        "{body}"
    );
    let (code, body) = h0.api_request("PUT", "/v1/services/nope/replicas", r#"{"replicas":2}"#);
    assert_eq!(code, 404, "{body}");
    let (code, body) = h0.api_request(
        "POST",
        "/v1/services",
        &format!(r#"{{"name":"web","image":"{TEST_IMAGE}","replicas":1}}"#),
    );
    assert_eq!(code, 409, "{body}");
    // Names in paths reach no other KV key: `..%2F` is `../` once decoded, which was
    // enough to delete service `web` through the templates' endpoint. Over the socket
    // and over the overlay (from inside node 1's namespace), a 400 naming the segment.
    let (code, body) = h0.api_request("DELETE", "/v1/templates/..%2Fservices%2Fweb", "");
    assert_eq!(code, 400, "{body}");
    assert_eq!(
        body["error"],
        "path segment {name}: `../services/web` is not a template name: lowercase letters, digits and `-` (a DNS label, at most 63 characters)"
    );
    // Over the overlay the API is mutual TLS: h1 shows its node certificate.
    let id = h1.identity_files();
    let overlay = h1.exec(&[
        "curl",
        "-s",
        "--cacert",
        &id.ca_cert().to_string_lossy(),
        "--cert",
        &id.node_cert().to_string_lossy(),
        "--key",
        &id.node_key().to_string_lossy(),
        "-X",
        "DELETE",
        "-w",
        "\n%{http_code}",
        &format!(
            "https://{}:7100/v1/templates/..%2Fservices%2Fweb",
            h0.address.overlay_ip()
        ),
    ]);
    assert!(stdout(&overlay).ends_with("\n400"), "{}", stdout(&overlay));
    for (method, path) in [
        ("PUT", "/v1/templates/..%2Fservices%2Fweb"),
        ("DELETE", "/v1/services/..%2Fservices%2Fweb"),
        ("DELETE", "/v1/containers/..%2F..%2Fservices%2Fweb"),
        ("POST", "/v1/nodes/..%2F0.2/drain"),
        ("DELETE", "/v1/sync/..%2F..%2Fservices%2Fweb"),
    ] {
        let (code, body) = h0.api_request(method, path, "{}");
        assert_eq!(code, 400, "{method} {path}: {body}");
    }
    let (code, body) = h0.api_request("GET", "/v1/services/web", "");
    assert_eq!(code, 200, "service web is still there: {body}");
    assert_eq!(body["replicas"], 6);
    // A container can route to the overlay API but is turned away (the firewall, and
    // behind it the API's certificate check): only nodes may use it.
    let from_container = h0.docker(&[
        "run",
        "--rm",
        TEST_IMAGE,
        "sh",
        "-c",
        "timeout 10 wget -q -O - http://10.255.0.2:7100/v1/services; echo exit=$?",
    ]);
    let text = format!(
        "{}{}",
        stdout(&from_container),
        String::from_utf8_lossy(&from_container.stderr)
    );
    assert!(
        text.contains("exit=1") && !text.contains("\"items\""),
        "a container used the cluster API: {text}"
    );
    let ls = json(&h2.arpanet(&["service", "ls", "--json"]), "service ls");
    assert_eq!(ls.as_array().unwrap().len(), 1, "{ls}");
    assert_eq!(ls[0]["replicas"], 6);
    assert_eq!(running(h0, "web").as_ref(), Some(&even));

    // Drain node 1: its instances move; undrain: the spread evens out again.
    assert_success(
        &h2.arpanet(&["node", "drain", &h1.address.to_string()]),
        "drain",
    );
    wait_for_spread(
        h0,
        "web",
        &spread(&[(h0, 3), (h2, 3)]),
        Duration::from_secs(60),
    );
    assert_success(
        &h0.arpanet(&["node", "undrain", &h1.address.to_string()]),
        "undrain",
    );
    wait_for_spread(h0, "web", &even, Duration::from_secs(60));

    // Node 2 fails (arpanetd and its Consul agent die): its share moves to the others.
    h2.kill("arpanetd");
    h2.kill("consul");
    let failed = Instant::now();
    wait_for_spread(
        h0,
        "web",
        &spread(&[(h0, 3), (h1, 3)]),
        Duration::from_secs(90),
    );
    let replaced_in = failed.elapsed();
    println!("MEASURED: a failed node's instances ran elsewhere after {replaced_in:.1?}");
    assert_eq!(running(h1, "web"), Some(spread(&[(h0, 3), (h1, 3)])));

    // It comes back: 2 + 2 + 2 again, moving only what must move.
    start_node(h2);
    let back = Instant::now();
    wait_for_spread(h0, "web", &even, Duration::from_secs(90));
    println!(
        "MEASURED: the returning node had its share again after {:.1?}",
        back.elapsed()
    );

    // A template stored from a containers.d-style file makes a service of its own.
    let template = h0.dir.join("db.toml");
    std::fs::write(&template, fixture("containers.d/db.toml")).unwrap();
    assert_success(
        &h0.arpanet(&["template", "add", template.to_str().unwrap()]),
        "template add",
    );
    let templates = json(&h1.arpanet(&["template", "ls", "--json"]), "template ls");
    assert_eq!(templates[0]["name"], "db", "{templates}");
    assert_success(
        &h1.arpanet(&[
            "service",
            "create",
            "db",
            "--template",
            "db",
            "--replicas",
            "1",
        ]),
        "service create --template",
    );
    wait_until(Duration::from_secs(60), "one db instance", || {
        running(h0, "db").is_some_and(|c| c.values().sum::<usize>() == 1)
    });
    assert_success(&h1.arpanet(&["service", "rm", "db"]), "service rm db");
    // The same file given directly: the spec of every instance.
    assert_success(
        &h2.arpanet(&[
            "service",
            "create",
            "cache",
            "--file",
            template.to_str().unwrap(),
            "--replicas",
            "2",
        ]),
        "service create --file",
    );
    wait_until(Duration::from_secs(60), "two cache instances", || {
        running(h0, "cache").is_some_and(|c| c.values().sum::<usize>() == 2)
    });
    assert_success(&h0.arpanet(&["service", "rm", "cache"]), "service rm cache");

    // Records as the release before versions wrote them, put straight into KV, run
    // as they did; one of a newer release is skipped with one error naming its key and
    // version, and the rest keep running.
    let legacy = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/kv/service-image-v0.json"),
    )
    .unwrap()
    .replace("busybox:1.36", TEST_IMAGE);
    assert_success(
        &h1.consul(&["kv", "put", "arpanet/cluster/services/api", &legacy]),
        "kv put a record of the release before versions",
    );
    wait_until(Duration::from_secs(60), "two api instances", || {
        running(h0, "api").is_some_and(|c| c.values().sum::<usize>() == 2)
    });
    let newer = format!(
        r#"{{"v":3,"name":"next","replicas":1,"spec":{{"name":"next","image":"{TEST_IMAGE}"}},"surge":1}}"#
    );
    assert_success(
        &h1.consul(&["kv", "put", "arpanet/cluster/services/next", &newer]),
        "kv put a record of a newer release",
    );
    let said = "cluster services: service next in Consul KV is unreadable: arpanet/cluster/services/next: record version 3 is newer than this arpanet reads (up to 2)";
    wait_until(Duration::from_secs(30), "the newer record reported", || {
        h0.log("arpanetd").contains(said)
    });
    let ls = json(&h0.arpanet(&["service", "ls", "--json"]), "service ls");
    let names: Vec<&str> = ls
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["api", "web"], "{ls}");
    assert_eq!(running(h0, "web").as_ref(), Some(&even));
    assert!(running(h0, "next").is_some_and(|c| c.is_empty()));
    assert_success(&h0.arpanet(&["service", "rm", "api"]), "service rm api");
    assert_success(
        &h0.consul(&["kv", "delete", "arpanet/cluster/services/next"]),
        "kv delete next",
    );

    // Scale down to one, then remove.
    assert_success(&h2.arpanet(&["service", "scale", "web", "1"]), "scale 1");
    wait_until(
        Duration::from_secs(60),
        "one web instance cluster-wide",
        || running(h0, "web").is_some_and(|c| c.values().sum::<usize>() == 1),
    );
    assert_success(&h0.arpanet(&["service", "rm", "web"]), "service rm");
    wait_until(Duration::from_secs(60), "no web instance anywhere", || {
        let gone = |h: &Host| {
            stdout(&h.docker(&["ps", "-aq", "--filter", "label=arpanet.cluster=true"]))
                .trim()
                .is_empty()
        };
        hosts.iter().all(|h| gone(h))
    });
    let ls = json(&h1.arpanet(&["service", "ls", "--json"]), "service ls");
    assert_eq!(ls, serde_json::json!([]));
}
