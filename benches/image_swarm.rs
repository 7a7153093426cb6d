//! One image onto N nodes at once, three ways, over links shaped to the same rate:
//! (1) a central registry (Debian's docker-registry; `docker push`, then `docker pull`
//! on every node), (2) Docket's stack (opentracker + ctorrent on the `docker save`
//! tarball, then `docker load`), (3) `arpanet image pull --all-nodes` (the tarball
//! swarm), (4) the node registry: `docker push 127.0.0.1:7102/...` on the source,
//! then `docker pull` of that name on every node at once.
//! `make bench-images` (root). Prints each time, its ratio to the floor S/B and the
//! speed-up over the registry, measured in one run; asserts nothing about speed.
//!
//! IMAGE_MB (default 200), NODES (receivers, default 5) and RATE_MBIT (default 100)
//! change the setup; LAYERS (default 1) splits the image into that many layers of
//! random data; METHODS (default `registry,docket,arpanet,node-registry`) picks what
//! runs; the node registry's line also prints the copies of the image the source sent. Every host's underlay link is shaped both ways with tc (tbf), so
//! each node can send and receive B; the source node is one of N + 1 hosts.

#[path = "../tests/suite/lab/mod.rs"]
#[macro_use]
mod lab;

use std::path::Path;
use std::time::{Duration, Instant};

use lab::{Host, Lab, assert_success, stdout, wait_until};

const TAG: &str = "bench/big:1";
const REGISTRY_PORT: u16 = 5000;
const TRACKER_PORT: u16 = 6969;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    require_lab!();
    for tool in ["docker-registry", "opentracker", "ctorrent", "tc"] {
        assert!(
            lab::which(tool).is_some(),
            "{tool} is missing: `make bench-images` installs docker-registry, opentracker and ctorrent"
        );
    }
    let mb = env_or("IMAGE_MB", 200);
    let receivers = env_or("NODES", 5);
    let rate_mbit = env_or("RATE_MBIT", 100);

    let lab = Lab::builder(receivers + 1).start();
    let source_ip = lab.hosts[0].underlay_ip;
    let registry = format!("{source_ip}:{REGISTRY_PORT}");
    let consul = "[consul]\nmode = \"config\"\n";
    for i in 0..lab.hosts.len() {
        let role = if i == 0 { "boot" } else { "client" };
        let others: Vec<usize> = (0..lab.hosts.len()).filter(|j| *j != i).collect();
        lab.write_arpanet_config(i, role, &others, consul);
        // A plain-HTTP registry on another host must be named insecure; arpanetd adds
        // its own keys to this daemon.json and keeps the rest.
        std::fs::write(
            lab.hosts[i].daemon_json(),
            format!("{{\"insecure-registries\": [\"{registry}\"]}}\n"),
        )
        .expect("daemon.json");
    }
    let hosts: Vec<&Host> = lab.hosts.iter().collect();
    Host::start_nodes(&hosts);
    for h in &hosts {
        h.start_sync();
    }
    let (source, targets) = (hosts[0], &hosts[1..]);
    source.wait_for_nodes(hosts.len(), Duration::from_secs(90));

    let layers = env_or("LAYERS", 1).max(1);
    eprintln!("making a {mb} MB image of {layers} layer(s) on the source node");
    let id = make_image(source, mb, layers);
    let tarball = source.dir.join("bench.tar");
    assert_success(
        &source.docker(&["save", "-o", tarball.to_str().unwrap(), TAG]),
        "docker save",
    );
    let size = std::fs::metadata(&tarball).unwrap().len();
    let floor = size as f64 * 8.0 / (rate_mbit as f64 * 1e6);

    for h in &hosts {
        lab.shape(h, rate_mbit);
    }

    // METHODS=arpanet (say) runs a subset; the default runs all three.
    let methods =
        std::env::var("METHODS").unwrap_or_else(|_| "registry,docket,arpanet,node-registry".into());
    let mut results: Vec<(&str, f64)> = Vec::new();
    if methods.split(',').any(|m| m == "registry") {
        eprintln!("(1) registry");
        let secs = via_registry(source, targets, &registry, &id);
        results.push(("registry (docker-registry, docker pull)", secs));
        clear(targets, &id);
    }
    if methods.contains("docket") {
        eprintln!("(2) opentracker + ctorrent");
        let secs = via_ctorrent(source, targets, &tarball, &id);
        results.push(("Docket (opentracker + ctorrent, docker load)", secs));
        clear(targets, &id);
    }
    if methods.contains("arpanet") {
        eprintln!("(3) arpanet image pull --all-nodes");
        let secs = via_arpanet(source, targets, &id);
        results.push(("arpanet image pull --all-nodes", secs));
        eprintln!("copies each node sent: {}", uploads(&hosts, size));
        clear(targets, &id);
    }
    let mut seed_copies = None;
    if methods.contains("node-registry") {
        eprintln!("(4) the node registry: docker pull 127.0.0.1:7102/... on every node");
        let (secs, copies) = via_node_registry(source, targets, &id, size);
        results.push(("node registry (docker pull 127.0.0.1:7102/...)", secs));
        seed_copies = Some(copies);
    }

    println!(
        "image to {receivers} nodes at once: S = {:.1} MB (docker save tarball, {layers} layer(s)), every link {rate_mbit} Mbit/s, floor S/B = {floor:.1} s",
        size as f64 / 1e6
    );
    let registry_secs = results
        .iter()
        .find(|(name, _)| name.starts_with("registry"))
        .map(|(_, s)| *s);
    for (name, secs) in &results {
        let speedup = registry_secs
            .map(|r| format!("{:>5.2}x faster than the registry", r / secs))
            .unwrap_or_default();
        println!(
            "  {name:<46} {secs:>7.1} s  {:>5.2}x S/B  {speedup}",
            secs / floor
        );
    }
    if let Some(copies) = seed_copies {
        println!("  node registry: the source sent {copies:.2} copies of the image");
    }
    lab.teardown().expect("teardown");
}

/// The benchmark's image: one layer of random data (`docker import`), or the test
/// image with `layers` layers of random data on top, `mb` MB in all.
fn make_image(source: &Host, mb: usize, layers: usize) -> String {
    if layers == 1 {
        return source.import_random_image(TAG, mb);
    }
    source.import_test_image();
    let mut from = lab::TEST_IMAGE.to_string();
    for i in 0..layers {
        let name = format!("bench-layer-{i}");
        let kb = (mb << 10) / layers;
        let run = source.docker(&[
            "run",
            "--name",
            &name,
            &from,
            "sh",
            "-c",
            &format!("head -c {kb}k /dev/urandom > /layer-{i}.bin"),
        ]);
        assert_success(&run, "write a layer");
        assert_success(&source.docker(&["commit", &name, TAG]), "docker commit");
        assert_success(&source.docker(&["rm", &name]), "docker rm");
        from = TAG.to_string();
    }
    source.image_id(TAG).expect("the layered image")
}

/// Removes the image from the targets, so the next method starts from nothing.
fn clear(targets: &[&Host], id: &str) {
    for h in targets {
        let _ = h.docker(&["rmi", "-f", id]);
        assert_eq!(h.image_id(id), None, "image left on {}", h.address);
        std::fs::remove_dir_all(h.dir.join("state/images")).ok();
    }
}

/// Runs `work` for every target at once; the time until the last one finished.
fn all_at_once(targets: &[&Host], work: impl Fn(&Host) + Sync) -> f64 {
    let started = Instant::now();
    std::thread::scope(|scope| {
        for h in targets {
            let work = &work;
            scope.spawn(move || work(h));
        }
    });
    started.elapsed().as_secs_f64()
}

fn via_registry(source: &Host, targets: &[&Host], registry: &str, id: &str) -> f64 {
    source.start_registry(registry);
    let remote = format!("{registry}/{TAG}");
    assert_success(&source.docker(&["tag", TAG, &remote]), "docker tag");
    assert_success(&source.docker(&["push", &remote]), "docker push");
    let secs = all_at_once(targets, |h| {
        assert_success(&h.docker(&["pull", &remote]), "docker pull");
    });
    for h in targets {
        assert_eq!(h.image_id(&remote).as_deref(), Some(id));
    }
    source.stop("registry");
    secs
}

fn via_ctorrent(source: &Host, targets: &[&Host], tarball: &Path, id: &str) -> f64 {
    let tracker = format!("http://{}:{TRACKER_PORT}/announce", source.underlay_ip);
    let torrent = source.dir.join("bench.torrent");
    let make = source.exec(&[
        "ctorrent",
        "-t",
        "-u",
        &tracker,
        "-l",
        "262144",
        "-s",
        torrent.to_str().unwrap(),
        tarball.to_str().unwrap(),
    ]);
    assert_success(&make, "ctorrent -t");
    // Debian builds opentracker with a whitelist of info hashes.
    let bytes = std::fs::read(&torrent).unwrap();
    let info_hash = librqbit::torrent_from_bytes(&bytes)
        .expect("ctorrent's torrent parses")
        .info_hash
        .as_string();
    let whitelist = source.dir.join("whitelist.txt");
    std::fs::write(&whitelist, format!("{info_hash}\n")).unwrap();
    source.spawn(
        "opentracker",
        &[
            "opentracker".as_ref(),
            "-i".as_ref(),
            source.underlay_ip.to_string().as_ref(),
            "-p".as_ref(),
            TRACKER_PORT.to_string().as_ref(),
            "-w".as_ref(),
            whitelist.as_os_str(),
        ],
    );
    // The seeder; every downloader keeps seeding after it finishes, as Docket's did.
    source.spawn(
        "ctorrent-seed",
        &[
            "ctorrent".as_ref(),
            "-e".as_ref(),
            "12".as_ref(),
            "-s".as_ref(),
            tarball.as_os_str(),
            torrent.as_os_str(),
        ],
    );
    std::thread::sleep(Duration::from_secs(2));
    let secs = all_at_once(targets, |h| {
        let file = h.dir.join("bench.tar");
        let done = h.dir.join("ctorrent.done");
        h.spawn(
            "ctorrent",
            &[
                "ctorrent".as_ref(),
                "-e".as_ref(),
                "12".as_ref(),
                "-X".as_ref(),
                format!("touch {}", done.display()).as_ref(),
                "-s".as_ref(),
                file.as_os_str(),
                torrent.as_os_str(),
            ],
        );
        wait_until(Duration::from_secs(1800), "ctorrent done", || done.exists());
        assert_success(
            &h.docker(&["load", "-i", file.to_str().unwrap()]),
            "docker load",
        );
    });
    for h in targets {
        assert_eq!(h.image_id(TAG).as_deref(), Some(id));
        h.stop("ctorrent");
    }
    source.stop("ctorrent-seed");
    source.stop("opentracker");
    secs
}

/// Bytes each node's sync service sent to peers, in copies of the image.
fn uploads(hosts: &[&Host], size: u64) -> String {
    hosts
        .iter()
        .map(|h| {
            let socket = h.dir.join("run/sync.sock");
            let out = h.exec(&[
                "curl",
                "-s",
                "--unix-socket",
                socket.to_str().unwrap(),
                "http://sync/v1/status",
            ]);
            let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let sent: u64 = status["torrents"]
                .as_array()
                .map(|t| t.iter().filter_map(|t| t["uploaded_bytes"].as_u64()).sum())
                .unwrap_or(0);
            format!("{} {:.2}", h.address, sent as f64 / size as f64)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `docker push` to the source's node registry, then `docker pull` of the same
/// 127.0.0.1 name on every target at once; returns the time and the copies of the
/// image the source sent meanwhile (its underlay's transmit counter).
fn via_node_registry(source: &Host, targets: &[&Host], id: &str, size: u64) -> (f64, f64) {
    let name = format!("127.0.0.1:7102/{TAG}");
    assert_success(&source.docker(&["tag", TAG, &name]), "docker tag");
    assert_success(&source.docker(&["push", &name]), "docker push");
    let sent_before = source.underlay_bytes().1;
    let secs = all_at_once(targets, |h| {
        assert_success(&h.docker(&["pull", &name]), "docker pull");
    });
    let sent = source.underlay_bytes().1 - sent_before;
    for h in targets {
        assert_eq!(h.image_id(&name).as_deref(), Some(id));
    }
    (secs, sent as f64 / size as f64)
}

fn via_arpanet(source: &Host, targets: &[&Host], id: &str) -> f64 {
    assert_success(
        &source.arpanet(&["image", "push", "--torrent", TAG]),
        "arpanet image push",
    );
    let started = Instant::now();
    let pull = source.arpanet(&["image", "pull", "--torrent", "--all-nodes", TAG, "--json"]);
    let secs = started.elapsed().as_secs_f64();
    assert_success(&pull, "arpanet image pull --all-nodes");
    eprintln!("{}", stdout(&pull));
    for h in targets {
        assert_eq!(h.image_id(TAG).as_deref(), Some(id));
        let log = std::fs::read_to_string(h.dir.join("sync.log")).unwrap_or_default();
        if let Ok(dir) = std::env::var("BENCH_LOGS") {
            std::fs::create_dir_all(&dir).ok();
            std::fs::write(format!("{dir}/sync-{}.log", h.address), &log).ok();
        }
        for line in log.lines().filter(|l| l.contains("downloaded in")) {
            eprintln!(
                "node {}: {}",
                h.address,
                line.split("image sync: ").last().unwrap()
            );
        }
    }
    secs
}
