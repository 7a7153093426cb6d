//! Real Consul agents, run and configured by arpanet, on lab hosts whose only path to
//! each other's agents is the overlay (Consul binds the 10.253 plane).

use std::time::{Duration, Instant};

use crate::lab::{Host, Lab, assert_success, stdout, wait_until};

const CONSUL: &str = "[consul]\nmode = \"config\"\n";

fn json(out: &std::process::Output, what: &str) -> serde_json::Value {
    assert_success(out, what);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what}: {e}: {}", stdout(out)))
}

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

    // KV written on the client is read on every server.
    assert_success(
        &h3.arpanet(&["kv", "put", "apples/colour", "green"]),
        "kv put",
    );
    for h in [h0, h1, h2] {
        assert_eq!(
            stdout(&h.arpanet(&["kv", "get", "apples/colour"])),
            "green\n"
        );
    }
    let missing = h0.arpanet(&["kv", "get", "apples/none"]);
    assert!(!missing.status.success());
    assert_eq!(
        String::from_utf8_lossy(&missing.stderr).trim(),
        "error: no key `apples/none` in Consul"
    );

    // One server down: the other two keep a quorum, so KV keeps working.
    h1.stop("consul");
    assert_success(
        &h0.arpanet(&["kv", "put", "apples/while-down", "still"]),
        "kv put with a server down",
    );
    assert_eq!(
        stdout(&h2.arpanet(&["kv", "get", "apples/while-down"])),
        "still\n"
    );
    h1.start_consul_agent();
    wait_until(Duration::from_secs(60), "h1 to rejoin", || {
        alive_members(h0) == ["h0", "h1", "h2", "h3"]
            && stdout(&h1.arpanet(&["kv", "get", "apples/while-down"])) == "still\n"
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

// A node with the wrong secret is turned away before it reaches Consul at all: it is
// never admitted to the overlay (admission.rs attacks that with a real stranger).
