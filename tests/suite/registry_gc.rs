//! The node registry's garbage collection on three lab hosts: once a tag's record is
//! gone, the blobs only it reached go from every node that held them, shared and
//! tagged ones stay; while a record cannot be read, nothing goes.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::lab::{Host, Lab, TEST_IMAGE, assert_success, stdout, wait_until};

const REGISTRY: &str = "127.0.0.1:7102";
/// A grace a lab push fits in (a blob is uploaded before its manifest names it).
const GRACE_SECS: u64 = 15;

fn blob_digests(h: &Host, image: &str) -> BTreeSet<String> {
    let m = h.registry_manifest(image);
    let mut digests: BTreeSet<String> = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    digests.insert(m["config"]["digest"].as_str().unwrap().to_string());
    digests
}

fn has_blob(h: &Host, digest: &str) -> bool {
    h.dir
        .join("state/registry/blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
        .exists()
}

fn kv_has(h: &Host, key: &str) -> bool {
    h.arpanet(&["kv", "get", key]).status.success()
}

#[test]
fn gc_drops_blobs_no_tag_reaches_and_nothing_while_a_record_is_unreadable() {
    require_lab!();
    let started = std::time::Instant::now();
    let lab = Lab::three_nodes_with(&format!(
        "[registry]\ngc_interval = \"2s\"\ngc_grace = \"{GRACE_SECS}s\"\n"
    ));
    let (h0, h1, h2) = (&lab.hosts[0], &lab.hosts[1], &lab.hosts[2]);

    // Two images on node 0: `a`, and `b` = a's layers and one more.
    let a = format!("{REGISTRY}/team/gc:a");
    let b = format!("{REGISTRY}/team/gc:b");
    assert_success(&h0.docker(&["tag", TEST_IMAGE, &a]), "docker tag");
    assert_success(&h0.docker(&["push", &a]), "docker push a");
    let make = h0.docker(&[
        "run",
        "--name",
        "mk-b",
        &a,
        "sh",
        "-c",
        "head -c 1048576 /dev/urandom > /b.bin",
    ]);
    assert_success(&make, "write b's layer");
    assert_success(&h0.docker(&["commit", "mk-b", &b]), "docker commit");
    assert_success(&h0.docker(&["rm", "mk-b"]), "docker rm");
    assert_success(&h0.docker(&["push", &b]), "docker push b");
    let a_blobs = blob_digests(h0, &a);
    let b_blobs = blob_digests(h0, &b);
    let only_b: Vec<&String> = b_blobs.difference(&a_blobs).collect();
    assert_eq!(only_b.len(), 2, "b's config and top layer: {b_blobs:?}");
    assert!(a_blobs.intersection(&b_blobs).count() >= 1, "a shared base");
    assert_success(&h1.docker(&["pull", &b]), "docker pull b on node 1");
    for d in &b_blobs {
        assert!(has_blob(h0, d) && has_blob(h1, d), "{d} on nodes 0 and 1");
    }
    // Within the grace, nothing goes though GC runs every 2 s.
    std::thread::sleep(Duration::from_secs(4));
    for d in &b_blobs {
        assert!(has_blob(h0, d), "{d} went within the grace");
    }

    // b's tag goes: b's own blobs go from both nodes, and node 0's holder records
    // with them; the shared base and a's blobs stay.
    let b_tag = "arpanet/registry/repos/team/gc/_tags/b";
    let b_manifest = format!(
        "arpanet/registry/repos/team/gc/_manifests/{}",
        stdout(&h0.arpanet(&["kv", "get", b_tag]))
            .trim()
            .trim_start_matches("sha256:")
    );
    assert!(kv_has(h0, &b_manifest), "{b_manifest}");
    assert_success(&h0.arpanet(&["kv", "del", b_tag]), "kv del b's tag");
    let deleted = std::time::Instant::now();
    wait_until(
        Duration::from_secs(60),
        "b's own blobs gone from nodes 0 and 1",
        || only_b.iter().all(|d| !has_blob(h0, d) && !has_blob(h1, d)),
    );
    eprintln!(
        "b's blobs went {:.1}s after its tag",
        deleted.elapsed().as_secs_f64()
    );
    for d in &a_blobs {
        assert!(has_blob(h0, d), "a's {d} stays on node 0");
    }
    for d in a_blobs.intersection(&b_blobs) {
        assert!(has_blob(h1, d), "the shared {d} stays on node 1");
    }
    for d in &only_b {
        let holder = format!(
            "arpanet/registry/blobs/{}/{}",
            d.trim_start_matches("sha256:"),
            h0.address
        );
        assert!(!kv_has(h0, &holder), "{holder} released");
    }
    // No node holds b's blobs any more: its untagged manifest record goes too.
    wait_until(Duration::from_secs(30), "b's manifest record gone", || {
        !kv_has(h0, &b_manifest)
    });
    let run = h2.docker(&["run", "--rm", &a, "echo", "a still runs"]);
    assert_success(&run, "docker run a on node 2");
    assert_eq!(stdout(&run).trim(), "a still runs");

    // A poisoned record: with a's tag gone too, that pass deletes nothing.
    let poisoned = format!("arpanet/registry/repos/x/_manifests/{}", "0".repeat(64));
    assert_success(
        &h0.arpanet(&["kv", "put", &poisoned, "garbage"]),
        "kv put garbage",
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_success(
        &h0.arpanet(&["kv", "del", "arpanet/registry/repos/team/gc/_tags/a"]),
        "kv del a's tag",
    );
    std::thread::sleep(Duration::from_secs(10));
    for d in &a_blobs {
        assert!(
            has_blob(h0, d),
            "a's {d} stays while a record is unreadable"
        );
    }
    let log = h0.log("arpanetd");
    assert!(
        log.contains(&poisoned) && log.contains("deletes nothing"),
        "node 0 names the record"
    );
    assert_eq!(
        log.matches(&poisoned).count(),
        1,
        "said once, not on every pass"
    );
    // Without it, a's blobs go too (no container on node 0 uses a).
    assert_success(&h0.arpanet(&["kv", "del", &poisoned]), "kv del garbage");
    wait_until(
        Duration::from_secs(30),
        "a's blobs gone from node 0",
        || a_blobs.iter().all(|d| !has_blob(h0, d)),
    );
    eprintln!("registry GC lab: {:.0}s", started.elapsed().as_secs_f64());
}
