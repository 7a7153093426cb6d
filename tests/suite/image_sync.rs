//! Image sync on three lab hosts with real dockerd, Consul and arpanetd: images pushed
//! on one node and pulled peer-to-peer (librqbit) on the others, over the overlay.
//! Each host runs the sync service as arpanet-sync.service would (`arpanetd --sync`);
//! socket activation itself is tested on systemd machines (packaging.rs).

use crate::lab;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::lab::{Host, Lab, assert_success, json, stdout, wait_until};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn tarball(h: &Host, id: &str) -> PathBuf {
    h.dir
        .join("state/images")
        .join(format!("{}.tar", id.trim_start_matches("sha256:")))
}

fn holders(h: &Host, id: &str) -> Vec<String> {
    let ls = json(&h.arpanet(&["image", "ls", "--json"]), "image ls");
    let image = ls["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["kind"] == "tarball" && i["id"] == id)
        .unwrap_or_else(|| panic!("{id} in image ls: {ls}"));
    lab::sorted_strings(&image["holders"])
}

#[test]
fn images_are_pushed_pulled_peer_to_peer_verified_and_resumed() {
    require_lab!();
    let lab = Lab::three_nodes();
    let hosts: Vec<&Host> = lab.hosts.iter().collect();
    let (h0, h1, h2) = (hosts[0], hosts[1], hosts[2]);
    for h in &hosts {
        h.start_sync();
    }
    let (a0, a1, a2) = (
        h0.address.to_string(),
        h1.address.to_string(),
        h2.address.to_string(),
    );

    // Push on node 0, pull on node 1: the same image ID, tagged as on node 0.
    let big = "arpanet-test/big:1";
    let id = h0.import_random_image(big, 24);
    let push = h0.arpanet(&["image", "push", "--torrent", big]);
    assert_success(&push, "image push");
    assert!(stdout(&push).contains("pushed"), "{}", stdout(&push));
    assert_eq!(holders(h1, &id), vec![a0.clone()]);
    let pull = h1.arpanet(&["image", "pull", big]);
    assert_success(&pull, "image pull on node 1");
    assert!(
        stdout(&pull).contains(&format!("node {a1}: pulled {big}")),
        "{}",
        stdout(&pull)
    );
    assert_eq!(h1.image_id(big).as_deref(), Some(id.as_str()));
    assert_eq!(holders(h2, &id), vec![a0.clone(), a1.clone()]);

    // Bad input: one line each, nothing changes.
    let missing = h2.arpanet(&["image", "pull", "arpanet-test/nosuch:1"]);
    assert!(!missing.status.success());
    assert_eq!(
        stderr(&missing).trim(),
        "error: no image `arpanet-test/nosuch:1` in the cluster; `arpanet image push arpanet-test/nosuch:1` on a node that has it publishes it (`arpanet image ls` lists the cluster's images)"
    );
    let missing = h2.arpanet(&["image", "push", "--torrent", "arpanet-test/nosuch:1"]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("no image `arpanet-test/nosuch:1` in this node's Docker"),
        "{}",
        stderr(&missing)
    );
    let text = post_pull(h2, "{\"img\": \"x\"}");
    assert!(text.ends_with("\n400"), "{text}");
    assert!(text.contains("unknown field `img`"), "{text}");
    let text = post_pull(h2, &format!("{{\"image\": \"{big}\", \"start_at\": 1.5}}"));
    assert!(text.ends_with("\n400"), "{text}");
    assert!(
        text.contains("start_at: must be a fraction from 0 to 1"),
        "{text}"
    );
    assert_eq!(h2.image_id(big), None, "a bad request starts nothing");

    // Poisoned image records, put straight into Consul KV as any KV writer could: the
    // genuine record of `big` with IDs that are paths (absolute, relative, `/x/y`), and
    // a swarm entry saying node 0 holds each. A file stands where two of them point
    // (in the lab's directory, not the machine's /x); nothing reads, seeds, lists or
    // deletes it, and each record is warned about once, by key and field.
    let genuine_key = format!("arpanet/sync/images/{}", id.trim_start_matches("sha256:"));
    let genuine: serde_json::Value =
        serde_json::from_slice(&h0.consul(&["kv", "get", &genuine_key]).stdout)
            .expect("the pushed record in KV");
    let victim = h2.dir.join("victim.tar");
    std::fs::write(&victim, b"not an image").unwrap();
    let poisons = [
        (
            "poison-abs",
            format!("sha256:{}", h2.dir.join("victim").display()),
        ),
        ("poison-rel", "sha256:../../victim".to_string()),
        ("poison-x", "sha256:/x/y".to_string()),
    ];
    for (name, poison_id) in &poisons {
        let mut record = genuine.clone();
        record["id"] = poison_id.as_str().into();
        record["tags"] = serde_json::json!([format!("arpanet-test/{name}:1")]);
        put_kv(h1, &format!("arpanet/sync/images/{name}"), &record);
        put_kv(
            h1,
            &format!("arpanet/sync/peers/{name}/{a0}"),
            &serde_json::json!({"peer": format!("{}:7101", h0.address.overlay_ip()), "complete": true}),
        );
    }
    for _ in 0..2 {
        let ls = json(&h2.arpanet(&["image", "ls", "--json"]), "image ls");
        for (_, poison_id) in &poisons {
            assert!(
                !ls["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|i| i["id"] == *poison_id),
                "{ls}"
            );
        }
    }
    for (name, _) in &poisons {
        let tag = format!("arpanet-test/{name}:1");
        let pull = h2.arpanet(&["image", "pull", &tag]);
        assert!(!pull.status.success(), "pulled {tag}");
        assert!(
            stderr(&pull).contains(&format!("no image `{tag}` in the cluster")),
            "{}",
            stderr(&pull)
        );
        assert_eq!(h2.image_id(&tag), None);
    }
    // The relay to the sync service forwards no `..` either (`%2F` decodes to `/`).
    let text = post_sync(h2, "seeds/..%2F..%2F..%2Fvictim", "");
    assert!(text.ends_with("\n400"), "{text}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"not an image");
    assert!(!Path::new("/x/y.tar").exists());
    let log = h2.log("sync");
    for (name, poison_id) in &poisons {
        let warning = format!(
            "image record arpanet/sync/images/{name} in Consul KV ignored: id: `{poison_id}` is not an image ID"
        );
        assert_eq!(log.matches(&warning).count(), 1, "{warning}\n{log}");
    }

    // A corrupt seeder: flip a byte in node 1's copy and take node 0's service away, so
    // node 2 can only get that piece from node 1. The pull fails clearly and loads nothing.
    let bad_copy = tarball(h1, &id);
    let mut bytes = std::fs::read(&bad_copy).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(&bad_copy, &bytes).unwrap();
    h0.kill("sync");
    let failed = h2.arpanet(&["image", "pull", big, "--json"]);
    assert!(!failed.status.success(), "a pull from a corrupt seeder");
    let first: serde_json::Value = serde_json::from_slice(&failed.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", stdout(&failed)));
    assert_eq!(first[0]["state"], "failed");
    assert!(
        stderr(&failed).contains("no data for 30 s from the swarm"),
        "{}",
        stderr(&failed)
    );
    assert_eq!(
        stderr(&failed).trim().lines().count(),
        1,
        "{}",
        stderr(&failed)
    );
    assert_eq!(h2.image_id(big), None, "nothing is loaded from a bad copy");
    let had = first[0]["done_bytes"].as_u64().unwrap();
    let total = first[0]["total_bytes"].as_u64().unwrap();
    assert!(had > 0 && had < total, "partial: {had} of {total}");

    // Node 0 back: the pull resumes (fetching about what it lacked, not the whole
    // tarball) and ends with the right image.
    h0.start_sync();
    let resumed = json(
        &h2.arpanet(&["image", "pull", big, "--json"]),
        "resumed pull",
    );
    assert_eq!(resumed[0]["state"], "done");
    // What the interrupted pull had verified is on disk, checked, and not fetched again.
    let kept = resumed[0]["resumed_bytes"].as_u64().unwrap();
    let fetched = resumed[0]["fetched_bytes"].as_u64().unwrap();
    assert!(
        kept >= had && fetched > 0,
        "a resumed pull started from {kept} bytes of {total} (the interrupted one had {had}) and fetched {fetched}"
    );
    assert_eq!(h2.image_id(big).as_deref(), Some(id.as_str()));
    println!(
        "MEASURED resume: had {had} of {total} bytes, started again from {kept}, fetched {fetched}"
    );

    // Containers cannot reach the peer port (only nodes trade images).
    let probe = h2.docker(&[
        "run",
        "--rm",
        lab::TEST_IMAGE,
        "sh",
        "-c",
        &format!(
            "nc -w 3 {} 7101 </dev/null 2>&1; echo exit=$?",
            h0.address.overlay_ip()
        ),
    ]);
    assert!(
        stdout(&probe).contains("Connection refused") && stdout(&probe).contains("exit=1"),
        "{}",
        stdout(&probe)
    );

    // Every node at once.
    let all = "arpanet-test/all:1";
    let all_id = h0.import_random_image(all, 16);
    assert_success(&h0.arpanet(&["image", "push", "--torrent", all]), "push");
    let everywhere = json(
        &h1.arpanet(&["image", "pull", "--all-nodes", all, "--json"]),
        "pull --all-nodes",
    );
    let mut nodes: Vec<&str> = everywhere
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            assert_eq!(t["state"], "done", "{t}");
            t["node"].as_str().unwrap()
        })
        .collect();
    nodes.sort();
    assert_eq!(nodes, vec![a0.as_str(), a1.as_str(), a2.as_str()]);
    for h in &hosts {
        assert_eq!(h.image_id(all).as_deref(), Some(all_id.as_str()));
    }
    assert_eq!(
        holders(h0, &all_id),
        vec![a0.clone(), a1.clone(), a2.clone()]
    );

    // containers.d on node 2 with an image only node 0 has: from the swarm, not a registry.
    let app = "arpanet-test/app:1";
    h0.import_image(app, &["ENV BUILD=7"]);
    let app_id = h0.image_id(app).unwrap();
    assert_success(
        &h0.arpanet(&["image", "push", "--torrent", app]),
        "push app",
    );
    declare_and_wait(h2, "app", app);
    assert_eq!(h2.image_id(app).as_deref(), Some(app_id.as_str()));

    // An image the cluster does not have comes from a registry instead (one on node 2's
    // loopback, which Docker trusts without TLS).
    h2.start_registry("127.0.0.1:5000");
    let remote = "127.0.0.1:5000/arpanet-test/remote:1";
    h2.import_image(remote, &["ENV FROM=registry"]);
    let remote_id = h2.image_id(remote).unwrap();
    assert_success(&h2.docker(&["push", remote]), "docker push");
    assert_success(&h2.docker(&["rmi", remote]), "docker rmi");
    assert_eq!(h2.image_id(remote), None);
    declare_and_wait(h2, "remote", remote);
    assert_eq!(h2.image_id(remote).as_deref(), Some(remote_id.as_str()));

    // A tag added on the pushing node after the push: pushed again, the tarball is made
    // again to carry it, and node 1 (which has the image, under the old tag only) gets
    // the new tag from the swarm.
    let big2 = "arpanet-test/big:2";
    assert_success(&h0.docker(&["tag", big, big2]), "docker tag");
    assert_success(
        &h0.arpanet(&["image", "push", "--torrent", big2]),
        "push again",
    );
    assert_eq!(h1.image_id(big2), None);
    let pull = h1.arpanet(&["image", "pull", big2]);
    assert_success(&pull, "pull of the new tag on node 1");
    assert_eq!(h1.image_id(big2).as_deref(), Some(id.as_str()));

    // A poisoned tag: `big`'s genuine record rewritten to say it is also `nginx:1`, as
    // if it were the public image. Node 1 has `big` (Docker and tarball); node 2 has it
    // no more (removed, and its sync service started afresh). containers.d on both asks
    // the swarm for nginx:1 before any registry: the swarm refuses, since `big`'s own
    // tarball does not carry the tag, no node tags anything nginx:1 and node 2 loads
    // nothing.
    let mut claimed: serde_json::Value =
        serde_json::from_slice(&h0.consul(&["kv", "get", &genuine_key]).stdout)
            .expect("the record in KV");
    claimed["tags"]
        .as_array_mut()
        .unwrap()
        .push("nginx:1".into());
    put_kv(h1, &genuine_key, &claimed);
    h2.kill("sync");
    assert_success(&h2.docker(&["rmi", big]), "docker rmi on node 2");
    std::fs::remove_file(tarball(h2, &id)).unwrap();
    h2.start_sync();
    for h in [h1, h2] {
        declare(h, "poisoned", "nginx:1");
    }
    let refused = "tags it `nginx:1`, but the image's own tarball does not; the tag is not applied";
    for h in [h1, h2] {
        wait_until(
            Duration::from_secs(90),
            &format!("node {} to refuse the poisoned tag", h.address),
            || h.log("sync").contains(refused),
        );
    }
    for h in &hosts {
        assert_eq!(h.image_id("nginx:1"), None, "nginx:1 on node {}", h.address);
    }
    assert_eq!(h2.image_id(big), None, "nothing loaded on node 2");
    assert_eq!(h1.image_id(big).as_deref(), Some(id.as_str()));
    for h in [h1, h2] {
        std::fs::remove_file(h.dir.join("containers.d/poisoned.toml")).unwrap();
    }

    lab.teardown().expect("teardown");
}

/// `consul kv put KEY JSON` on `h`, straight into KV as any KV writer could.
fn put_kv(h: &Host, key: &str, value: &serde_json::Value) {
    let out = h.consul(&["kv", "put", key, &value.to_string()]);
    assert_success(&out, &format!("consul kv put {key}"));
}

/// POSTs `body` as a pull request to `h`'s API; the response body, a newline, the status.
fn post_pull(h: &Host, body: &str) -> String {
    post_sync(h, "pulls", body)
}

/// POSTs `body` to `/v1/sync/PATH` on `h`'s API socket; the body, a newline, the status.
fn post_sync(h: &Host, path: &str, body: &str) -> String {
    let socket = h.dir.join("run/api.sock");
    stdout(&h.exec(&[
        "curl",
        "-s",
        "-w",
        "\n%{http_code}",
        "--unix-socket",
        socket.to_str().unwrap(),
        "--data-binary",
        body,
        &format!("http://arpanetd/v1/sync/{path}"),
    ]))
}

/// A containers.d file on `h` declaring `name` from `image`.
fn declare(h: &Host, name: &str, image: &str) {
    std::fs::create_dir_all(h.dir.join("containers.d")).unwrap();
    std::fs::write(
        h.dir.join(format!("containers.d/{name}.toml")),
        format!(
            "[[container]]\nname = \"{name}\"\nimage = \"{image}\"\ncommand = [\"sleep\", \"1d\"]\n"
        ),
    )
    .unwrap();
}

/// [`declare`], then waits until the container runs.
fn declare_and_wait(h: &Host, name: &str, image: &str) {
    declare(h, name, image);
    wait_until(Duration::from_secs(60), &format!("{name} running"), || {
        stdout(&h.docker(&["inspect", "-f", "{{.State.Running}}", name])).trim() == "true"
    });
}

/// `arpanet image pull IMAGE --json` on `h`, left running.
fn pull_in_background(h: &Host, image: &str) -> Child {
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", h.netns))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_arpanet"))
        .arg("--config")
        .arg(h.config_path())
        .args(["image", "pull", image, "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start arpanet image pull")
}

/// Bytes a (sparse) file holds on disk.
fn bytes_on_disk(path: &Path) -> u64 {
    std::fs::metadata(path)
        .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
        .unwrap_or(0)
}

/// Bytes free on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> u64 {
    let out = Command::new("stat")
        .args(["-f", "-c", "%a %S"])
        .arg(dir)
        .output()
        .expect("stat -f");
    let text = stdout(&out);
    let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().unwrap());
    fields.next().unwrap() * fields.next().unwrap()
}

fn fallocate(path: &Path, bytes: u64) {
    let out = Command::new("fallocate")
        .args(["-l", &bytes.to_string()])
        .arg(path)
        .output()
        .expect("fallocate");
    assert_success(&out, "fallocate");
}

#[test]
fn a_full_disk_is_one_line_and_a_peer_dying_mid_pull_is_replaced() {
    require_lab!();
    let lab = Lab::three_nodes();
    let hosts: Vec<&Host> = lab.hosts.iter().collect();
    let (h0, h1, h2) = (hosts[0], hosts[1], hosts[2]);
    // Node 2 keeps its images on a disk of its own, small enough to fill.
    let images = h2.dir.join("state/images");
    std::fs::create_dir_all(&images).unwrap();
    let mount = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=48m", "arpanet-test-images"])
        .arg(&images)
        .output()
        .unwrap();
    assert_success(&mount, "mount a small tmpfs");
    for h in &hosts {
        h.start_sync();
    }
    let image = "arpanet-test/relay:1";
    let id = h0.import_random_image(image, 32);
    assert_success(&h0.arpanet(&["image", "push", "--torrent", image]), "push");
    assert_success(&h1.arpanet(&["image", "pull", image]), "pull on node 1");
    let tar = tarball(h2, &id);

    // Too little space before the pull: one line saying how much is needed and free.
    let filler = images.join("filler");
    fallocate(&filler, 40 << 20);
    let short_of_space = h2.arpanet(&["image", "pull", image]);
    assert!(!short_of_space.status.success());
    let line = stderr(&short_of_space);
    assert_eq!(line.trim().lines().count(), 1, "{line}");
    assert!(
        line.starts_with(&format!(
            "error: not enough space in {} to pull {image}: it needs 33.",
            images.display()
        )) && line.contains("MB is free"),
        "{line}"
    );
    assert!(!tar.exists(), "nothing written");

    // The disk fills during the pull (links slowed so it is caught mid-way): one line,
    // the bytes already fetched stay, and the pull resumes once there is room.
    std::fs::remove_file(&filler).unwrap();
    for h in [h0, h1] {
        lab.shape(h, 16);
    }
    let filling = pull_in_background(h2, image);
    wait_until(Duration::from_secs(60), "node 2 to fetch 4 MB", || {
        bytes_on_disk(&tar) > 4 << 20
    });
    // All but 1 MiB (the pull goes on writing meanwhile); the pull fills the rest.
    fallocate(
        &filler,
        free_bytes(&images).saturating_sub(1 << 20).max(4096),
    );
    let full = filling.wait_with_output().unwrap();
    assert!(!full.status.success(), "a pull onto a full disk");
    let line = stderr(&full);
    assert_eq!(line.trim().lines().count(), 1, "{line}");
    assert!(
        line.contains(&format!("{} is full:", images.display()))
            && line.contains("the pull resumes when run again"),
        "{line}"
    );
    assert_eq!(h2.image_id(image), None, "nothing loaded");
    println!("full disk: {}", line.trim());
    let kept = bytes_on_disk(&tar);
    assert!(kept > 4 << 20, "the fetched bytes stay: {kept}");
    std::fs::remove_file(&filler).unwrap();

    // A holder dies mid-pull: the other holder serves the rest.
    let resuming = pull_in_background(h2, image);
    wait_until(Duration::from_secs(60), "node 2 to fetch 4 MB more", || {
        bytes_on_disk(&tar) > kept + (4 << 20)
    });
    h0.kill("sync");
    let at_kill = bytes_on_disk(&tar);
    let done = resuming.wait_with_output().unwrap();
    assert_success(&done, "a pull whose holder died");
    let transfers: serde_json::Value = serde_json::from_slice(&done.stdout).unwrap();
    assert_eq!(transfers[0]["state"], "done", "{transfers}");
    let total = transfers[0]["total_bytes"].as_u64().unwrap();
    assert!(
        at_kill < total,
        "node 0 died mid-pull ({at_kill} of {total})"
    );
    assert_eq!(h2.image_id(image).as_deref(), Some(id.as_str()));
    assert!(
        holders(h1, &id).contains(&h2.address.to_string()),
        "node 2 holds the image now"
    );
    println!("MEASURED holder died at {at_kill} of {total} bytes; the other finished the pull");

    lab.teardown().expect("teardown");
}
