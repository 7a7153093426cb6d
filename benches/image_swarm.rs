//! One image onto N nodes at once, over links shaped to the same rate, three ways:
//! `registry` (Debian's docker-registry on the source node; `docker push`, then `docker
//! pull` on every node), `docket` (Docket's stack: opentracker + ctorrent on the `docker
//! save` tarball, then `docker load`) and `arpanet` (`docker push 127.0.0.1:7102/...` on
//! the source, then `docker pull` of that name on every node: the node registry's
//! swarm); `torrent` (`arpanet image pull --torrent --all-nodes`, the tarball swarm)
//! runs when named. Then an update: a new top layer on the image every node has.
//! `make bench-images` (root). Prints each time, its ratio to the floor S/B, the
//! speed-up over the registry and Docket, the copies of the image the source sent for
//! arpanet and the bytes each node received for the update, all measured in one run;
//! asserts nothing about speed.
//!
//! IMAGE_MB (default 200), RATE_MBIT (default 100), NODES (receivers, default 5; a
//! list such as `2,5,10` runs a lab each and prints how arpanet's time grows), LAYERS
//! (default `1,4`: an image of one layer of random data, then one of four), UPDATE_MB
//! (default 10; 0 skips the update) and METHODS (default `registry,docket,arpanet`).
//! Every host's underlay link is shaped both ways with tc (tbf), so each node can send
//! and receive B; the source node is one of N + 1 hosts.

#[path = "../tests/suite/lab/mod.rs"]
#[macro_use]
mod lab;

use std::path::Path;
use std::time::{Duration, Instant};

use lab::{Host, Lab, assert_success, stdout, wait_until};

const NODE_REGISTRY: &str = "127.0.0.1:7102";
const REGISTRY_PORT: u16 = 5000;
const TRACKER_PORT: u16 = 6969;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn env_list(name: &str, default: &str) -> Vec<usize> {
    let list = std::env::var(name).unwrap_or_else(|_| default.into());
    list.split(',')
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name}={list}: not a comma-separated list of numbers"))
        })
        .collect()
}

fn main() {
    require_lab!();
    for tool in ["docker-registry", "opentracker", "ctorrent", "tc"] {
        assert!(
            lab::which(tool).is_some(),
            "{tool} is missing: `make bench-images` installs docker-registry, opentracker and ctorrent"
        );
    }
    let setup = Setup {
        mb: env_or("IMAGE_MB", 200),
        rate_mbit: env_or("RATE_MBIT", 100),
        layers: env_list("LAYERS", "1,4"),
        update_mb: env_or("UPDATE_MB", 10),
        methods: std::env::var("METHODS").unwrap_or_else(|_| "registry,docket,arpanet".into()),
    };
    let mut growth = Vec::new();
    for receivers in env_list("NODES", "5") {
        growth.extend(run(receivers, &setup));
    }
    if growth.len() > 1 {
        println!("how it grows (arpanet, {} layer(s)):", setup.layers[0]);
        for (receivers, secs, floor) in growth {
            println!(
                "  {receivers:>3} nodes  {secs:>7.1} s  {:>5.2}x S/B",
                secs / floor
            );
        }
    }
}

struct Setup {
    mb: usize,
    rate_mbit: usize,
    layers: Vec<usize>,
    update_mb: usize,
    methods: String,
}

impl Setup {
    fn runs(&self, method: &str) -> bool {
        self.methods.split(',').any(|m| m == method)
    }
}

/// One lab of `receivers` + 1 hosts: every layer count, then the update. Returns
/// arpanet's time and the floor of the first layer count, for the growth table.
fn run(receivers: usize, setup: &Setup) -> Option<(usize, f64, f64)> {
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
            // debug: dockerd logs when it has a layer and when it applied it.
            format!("{{\"insecure-registries\": [\"{registry}\"], \"debug\": true}}\n"),
        )
        .expect("daemon.json");
    }
    let hosts: Vec<&Host> = lab.hosts.iter().collect();
    Host::start_nodes(&hosts);
    if setup.runs("torrent") {
        for h in &hosts {
            h.start_sync();
        }
    }
    let (source, targets) = (hosts[0], &hosts[1..]);
    source.wait_for_nodes(hosts.len(), Duration::from_secs(90));
    source.start_registry(&registry);
    for h in &hosts {
        lab.shape(h, setup.rate_mbit);
    }

    let mut growth = None;
    let mut base = None;
    for &layers in &setup.layers {
        let tag = format!("bench/big-{layers}:1");
        eprintln!(
            "making a {} MB image of {layers} layer(s) on the source node",
            setup.mb
        );
        let id = make_image(source, &tag, setup.mb, layers);
        let tarball = source.dir.join("bench.tar");
        assert_success(
            &source.docker(&["save", "-o", tarball.to_str().unwrap(), &tag]),
            "docker save",
        );
        let size = std::fs::metadata(&tarball).unwrap().len();
        let floor = size as f64 * 8.0 / (setup.rate_mbit as f64 * 1e6);

        let mut results: Vec<(&str, f64)> = Vec::new();
        let mut seed_copies = None;
        let mut whole_at = None;
        if setup.runs("registry") {
            eprintln!("(1) registry: docker pull {registry}/...");
            let remote = format!("{registry}/{tag}");
            let secs = via_registry(source, targets, &tag, &remote, &id).0;
            results.push(("registry (docker-registry, docker pull)", secs));
            clear(targets, &id);
        }
        if setup.runs("docket") {
            eprintln!("(2) opentracker + ctorrent");
            let secs = via_ctorrent(source, targets, &tarball, &tag, &id).0;
            results.push(("Docket (opentracker + ctorrent, docker load)", secs));
            clear(targets, &id);
        }
        if setup.runs("torrent") {
            eprintln!("(3) arpanet image pull --torrent --all-nodes");
            let secs = via_torrent(source, targets, &tag, &id);
            results.push(("arpanet's tarball swarm (--torrent)", secs));
            eprintln!("copies each node sent: {}", uploads(&hosts, size));
            clear(targets, &id);
        }
        if setup.runs("arpanet") {
            eprintln!("(4) arpanet: docker pull 127.0.0.1:7102/... on every node");
            let name = format!("{NODE_REGISTRY}/{tag}");
            let (secs, sent, _, whole) = via_node_registry(source, targets, &tag, &name, &id);
            results.push(("arpanet (docker pull 127.0.0.1:7102/...)", secs));
            seed_copies = Some(sent as f64 / size as f64);
            whole_at = Some(whole);
            if growth.is_none() {
                growth = Some((receivers, secs, floor));
            }
            // The update goes on top of this image, which every target now has.
            base = Some((tag.clone(), name));
        }

        println!(
            "image to {receivers} nodes at once: S = {:.1} MB (docker save tarball, {layers} layer(s)), every link {} Mbit/s, floor S/B = {floor:.1} s",
            size as f64 / 1e6,
            setup.rate_mbit
        );
        print_results(&results, floor);
        if let Some(copies) = seed_copies {
            println!("  arpanet: the source sent {copies:.2} copies of the image");
        }
        if let Some(whole) = whole_at {
            println!(
                "  arpanet: every blob was whole on every node after {whole:.1} s ({:.2}x S/B); dockerd took the last {:.1} s",
                whole / floor,
                results.last().map_or(0.0, |r| r.1) - whole
            );
        }
    }
    if setup.update_mb > 0
        && let Some((tag, name)) = base
    {
        update(source, targets, setup, &registry, &tag, &name);
    }
    lab.teardown().expect("teardown");
    growth
}

fn print_results(results: &[(&str, f64)], floor: f64) {
    let registry_secs = results
        .iter()
        .find(|(name, _)| name.starts_with("registry"))
        .map(|(_, s)| *s);
    let docket_secs = results
        .iter()
        .find(|(name, _)| name.starts_with("Docket"))
        .map(|(_, s)| *s);
    for (name, secs) in results {
        let vs = |other: Option<f64>, what: &str| {
            other
                .map(|o| format!("  {:>5.2}x faster than {what}", o / secs))
                .unwrap_or_default()
        };
        println!(
            "  {name:<46} {secs:>7.1} s  {:>5.2}x S/B{}{}",
            secs / floor,
            vs(registry_secs, "the registry"),
            vs(docket_secs, "Docket")
        );
    }
}

/// A new top layer of `update_mb` on the base every target has, three ways: the bytes
/// each node received and the time until every node has it.
fn update(
    source: &Host,
    targets: &[&Host],
    setup: &Setup,
    registry: &str,
    base: &str,
    base_name: &str,
) {
    let tag = format!("{}-update", base.split(':').next().unwrap());
    let tag = format!("{tag}:2");
    let mk = source.docker(&[
        "run",
        "--name",
        "bench-update",
        base_name,
        "sh",
        "-c",
        &format!(
            "head -c {}k /dev/urandom > /update.bin",
            setup.update_mb << 10
        ),
    ]);
    assert_success(&mk, "write the update's layer");
    assert_success(
        &source.docker(&["commit", "bench-update", &tag]),
        "docker commit",
    );
    assert_success(&source.docker(&["rm", "bench-update"]), "docker rm");
    let id = source.image_id(&tag).expect("the update");
    let layer = (setup.update_mb << 20) as f64;
    println!(
        "update: a new {} MB top layer on the base, to {} nodes that have the base:",
        setup.update_mb,
        targets.len()
    );
    let report = |what: &str, (secs, received): (f64, Vec<u64>)| {
        let per_node: Vec<String> = received
            .iter()
            .map(|b| format!("{:.1}", *b as f64 / 1e6))
            .collect();
        let most = received.iter().copied().max().unwrap_or(0) as f64;
        println!(
            "  {what:<46} {secs:>7.1} s  MB received per node: {} (at most {:.2}x the layer)",
            per_node.join(", "),
            most / layer
        );
    };
    if setup.runs("arpanet") {
        let name = format!("{NODE_REGISTRY}/{tag}");
        let (secs, _, received, _) = via_node_registry(source, targets, &tag, &name, &id);
        report("arpanet (docker pull 127.0.0.1:7102/...)", (secs, received));
        drop_update(targets, &name);
    }
    if setup.runs("registry") {
        // The base under the central registry's name, so docker sees its layers there.
        let base_remote = format!("{registry}/{base}");
        assert_success(&source.docker(&["tag", base, &base_remote]), "docker tag");
        assert_success(&source.docker(&["push", &base_remote]), "docker push base");
        let remote = format!("{registry}/{tag}");
        report(
            "registry (docker-registry, docker pull)",
            via_registry(source, targets, &tag, &remote, &id),
        );
        drop_update(targets, &remote);
    }
    if setup.runs("docket") {
        let tarball = source.dir.join("update.tar");
        assert_success(
            &source.docker(&["save", "-o", tarball.to_str().unwrap(), &tag]),
            "docker save",
        );
        report(
            "Docket (the whole tarball, docker load)",
            via_ctorrent(source, targets, &tarball, &tag, &id),
        );
    }
}

/// Removes the update's tag from the targets (its base stays).
fn drop_update(targets: &[&Host], name: &str) {
    for h in targets {
        let _ = h.docker(&["rmi", name]);
    }
}

/// The benchmark's image: one layer of random data (`docker import`), or the test
/// image with `layers` layers of random data on top, `mb` MB in all.
fn make_image(source: &Host, tag: &str, mb: usize, layers: usize) -> String {
    if layers == 1 {
        return source.import_random_image(tag, mb);
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
        assert_success(&source.docker(&["commit", &name, tag]), "docker commit");
        assert_success(&source.docker(&["rm", &name]), "docker rm");
        from = tag.to_string();
    }
    source.image_id(tag).expect("the layered image")
}

/// Removes the image from the targets, so the next method starts from nothing.
fn clear(targets: &[&Host], id: &str) {
    for h in targets {
        let _ = h.docker(&["rmi", "-f", id]);
        assert_eq!(h.image_id(id), None, "image left on {}", h.address);
        std::fs::remove_dir_all(h.dir.join("state/images")).ok();
    }
}

/// Runs `work` for every target at once: the time until the last one finished, and
/// the bytes each received meanwhile (its underlay's counter).
fn all_at_once(targets: &[&Host], work: impl Fn(&Host) + Sync) -> (f64, Vec<u64>) {
    let before: Vec<u64> = targets.iter().map(|h| h.underlay_bytes().0).collect();
    let started = Instant::now();
    let done: Vec<f64> = std::thread::scope(|scope| {
        let each: Vec<_> = targets
            .iter()
            .map(|h| {
                let work = &work;
                scope.spawn(move || {
                    work(h);
                    started.elapsed().as_secs_f64()
                })
            })
            .collect();
        each.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let secs = started.elapsed().as_secs_f64();
    let done: Vec<String> = done.iter().map(|t| format!("{t:.1}")).collect();
    eprintln!("each node done after (s): {}", done.join(" "));
    let received = targets
        .iter()
        .zip(before)
        .map(|(h, b)| h.underlay_bytes().0 - b)
        .collect();
    (secs, received)
}

fn via_registry(
    source: &Host,
    targets: &[&Host],
    tag: &str,
    remote: &str,
    id: &str,
) -> (f64, Vec<u64>) {
    assert_success(&source.docker(&["tag", tag, remote]), "docker tag");
    assert_success(&source.docker(&["push", remote]), "docker push");
    pull_everywhere(targets, remote, id)
}

/// `docker pull` on every target at once; each ends with the image `id`.
fn pull_everywhere(targets: &[&Host], remote: &str, id: &str) -> (f64, Vec<u64>) {
    let moved = all_at_once(targets, |h| {
        assert_success(&h.docker(&["pull", remote]), "docker pull");
    });
    for h in targets {
        assert_eq!(h.image_id(remote).as_deref(), Some(id));
    }
    moved
}

fn via_ctorrent(
    source: &Host,
    targets: &[&Host],
    tarball: &Path,
    tag: &str,
    id: &str,
) -> (f64, Vec<u64>) {
    let tracker = format!("http://{}:{TRACKER_PORT}/announce", source.underlay_ip);
    let torrent = source.dir.join("bench.torrent");
    std::fs::remove_file(&torrent).ok();
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
    let moved = all_at_once(targets, |h| {
        let file = h.dir.join("bench.tar");
        let done = h.dir.join("ctorrent.done");
        std::fs::remove_file(&file).ok();
        std::fs::remove_file(&done).ok();
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
        assert_eq!(h.image_id(tag).as_deref(), Some(id));
        h.stop("ctorrent");
    }
    source.stop("ctorrent-seed");
    source.stop("opentracker");
    moved
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
/// 127.0.0.1 name on every target at once: the time, the bytes the source sent
/// meanwhile (its underlay's counter), the bytes each target received and when the
/// last blob was whole on the last node (seconds after the pulls began).
fn via_node_registry(
    source: &Host,
    targets: &[&Host],
    tag: &str,
    name: &str,
    id: &str,
) -> (f64, u64, Vec<u64>, f64) {
    assert_success(&source.docker(&["tag", tag, name]), "docker tag");
    assert_success(&source.docker(&["push", name]), "docker push");
    let sent_before = source.underlay_bytes().1;
    let began = std::time::SystemTime::now();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (secs, received) = std::thread::scope(|scope| {
        // Each second: what the seed sent and what each puller received, so an idle
        // link shows where the time goes.
        scope.spawn(|| {
            let read = || {
                let mut v = vec![source.underlay_bytes().1];
                v.extend(targets.iter().map(|h| h.underlay_bytes().0));
                v
            };
            let mut last = read();
            let mut lines = vec![String::new(); last.len()];
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(Duration::from_secs(1));
                let now = read();
                for ((line, n), l) in lines.iter_mut().zip(&now).zip(&last) {
                    line.push_str(&format!("{:.0} ", (n - l) as f64 * 8.0 / 1e6));
                }
                last = now;
            }
            eprintln!("seed Mbit/s sent per second:       {}", lines[0]);
            for (h, line) in targets.iter().zip(&lines[1..]) {
                eprintln!("node {} Mbit/s received per second: {line}", h.address);
            }
        });
        let moved = pull_everywhere(targets, name, id);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        moved
    });
    let sent = source.underlay_bytes().1 - sent_before;
    // When each blob was whole on each node, against when its `docker pull` ended:
    // the difference is dockerd's (extraction).
    let mut whole = 0f64;
    for h in targets {
        // A blob's fetch began at its "fetching SHORT (" line and took the time its
        // "SHORT fetched in T s" line says, up to the digest check (the fsync is after).
        let mut began_at = std::collections::HashMap::new();
        for line in h.log("arpanetd").lines() {
            let Some((stamp, rest)) = line.split_once(' ') else {
                continue;
            };
            let Some(at) = secs_after(stamp, began) else {
                continue;
            };
            let Some(what) = rest.split("registry: ").nth(1) else {
                continue;
            };
            if let Some(blob) = what.strip_prefix("fetching ")
                && let Some((short, _)) = blob.split_once(" (")
            {
                began_at.insert(short.to_string(), at);
            } else if let Some((short, tail)) = what.split_once(" fetched in ")
                && let Some(took) = tail.split(' ').next().and_then(|t| t.parse::<f64>().ok())
                && let Some(from) = began_at.get(short)
            {
                let at = from + took;
                eprintln!("node {}: whole at {at:.1} s, {what}", h.address);
                whole = whole.max(at);
            }
        }
    }
    for h in targets {
        eprintln!("node {}: dockerd {}", h.address, dockerd_steps(h, began));
    }
    (secs, sent, received, whole)
}

/// Seconds from `began` to a log line's UTC stamp (arpanetd's and dockerd's both end in
/// `Z`); `None` for a line from before it or with no stamp.
fn secs_after(stamp: &str, began: std::time::SystemTime) -> Option<f64> {
    let at = humantime::parse_rfc3339_weak(stamp).ok()?;
    Some(at.duration_since(began).ok()?.as_secs_f64())
}

/// When this host's dockerd (debug log) had each layer whole and when it had applied
/// it, in seconds after `began`.
fn dockerd_steps(host: &Host, began: std::time::SystemTime) -> String {
    let mut steps = Vec::new();
    for line in host.log("dockerd").lines() {
        let Some(stamp) = line
            .strip_prefix("time=\"")
            .and_then(|l| l.split('"').next())
        else {
            continue;
        };
        let Some(at) = secs_after(stamp, began) else {
            continue;
        };
        if line.contains("to tempfile") {
            steps.push(format!("had a layer at {at:.1} s"));
        } else if line.contains("Applied tar") {
            steps.push(format!("applied it at {at:.1} s"));
        }
    }
    steps.join(", ")
}

fn via_torrent(source: &Host, targets: &[&Host], tag: &str, id: &str) -> f64 {
    assert_success(
        &source.arpanet(&["image", "push", "--torrent", tag]),
        "arpanet image push",
    );
    let started = Instant::now();
    let pull = source.arpanet(&["image", "pull", "--torrent", "--all-nodes", tag, "--json"]);
    let secs = started.elapsed().as_secs_f64();
    assert_success(&pull, "arpanet image pull --all-nodes");
    eprintln!("{}", stdout(&pull));
    for h in targets {
        assert_eq!(h.image_id(tag).as_deref(), Some(id));
    }
    secs
}
