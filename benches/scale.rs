//! How arpanet's costs grow with the number of nodes: `make bench-scale`. For each N
//! in NODES (default `5 10 20`), a lab of N+1 hosts (namespaces with real arpanetd,
//! dockerd and Consul) joined as a user joins them, one host after another:
//!
//! - join to all alive, and to a full mesh (every node has every other `ok` in `arpanet
//!   status`), from the start of the last join command;
//! - one more node joining the settled cluster: until every agent sees it alive and it
//!   and every node have each other `ok` (then it is killed and removed again);
//! - placement of 3N instances, until every node lists 3 per node;
//! - `arpanet ps --all` latency, against `ps` of the node alone;
//! - the Consul servers' RPC requests and reads per second once settled, and the size
//!   of the catalog answer each node's watch gets;
//! - re-placement after a node is killed, and its return;
//! - a 30 s partition of one node, healed: exactly 3N instances again, none twice;
//! - arpanetd's and Consul's resident memory per node.
//!
//! `TRACE=1` prints every host's alive members and ok peers while waiting for them;
//! `JOIN_ONLY=1` stops after the first N's mesh (a join stall hunt);
//! `KEEP_LOGS=DIR` keeps every host's logs in `DIR/RUN-nN/hI/`.
//!
//! Prints figures; asserts only that each step happened (a step that never completes
//! within its limit is printed as `never`, and the run goes on).

#[path = "../tests/suite/lab/mod.rs"]
#[macro_use]
mod lab;

use std::time::{Duration, Instant};

use lab::cluster::{self, Instances};
use lab::{Host, Lab, TEST_IMAGE, assert_success};

fn secs(d: Option<Duration>) -> String {
    d.map_or("never".into(), |d| format!("{:.1} s", d.as_secs_f64()))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn timed_ms(host: &Host, args: &[&str]) -> Duration {
    let started = Instant::now();
    assert_success(&host.arpanet(args), &format!("arpanet {}", args.join(" ")));
    started.elapsed()
}

struct Row {
    n: usize,
    alive: Option<Duration>,
    mesh: Option<Duration>,
    settled_join: Option<Duration>,
    placed: Option<Duration>,
    ps_all: Duration,
    ps_local: Duration,
    /// The servers' RPC requests and read queries per second, summed over the servers.
    rpc: (f64, f64),
    /// The catalog watch's answer: entries and bytes.
    catalog: (usize, usize),
    replaced: Option<Duration>,
    returned: Option<Duration>,
    healed: Option<Duration>,
    heal_count: String,
    arpanetd_mib: (f64, f64),
    consul_mib: (f64, f64),
}

fn mean_max(v: &[f64]) -> (f64, f64) {
    let max = v.iter().copied().fold(0.0, f64::max);
    (v.iter().sum::<f64>() / v.len().max(1) as f64, max)
}

fn run(n: usize) -> Row {
    let limit = Duration::from_secs(300);
    let lab = Lab::builder(n + 1).start();
    let all: Vec<&Host> = lab.hosts.iter().collect();
    let nodes = &all[..n];
    let boot = cluster::boot(&lab);
    for i in 1..n - 1 {
        cluster::join(&lab, i, &boot);
    }
    let last_join = Instant::now();
    cluster::join(&lab, n - 1, &boot);
    let trace = || {
        if std::env::var_os("TRACE").is_none() {
            return;
        }
        let counts: Vec<String> = nodes
            .iter()
            .map(|h| {
                format!(
                    "{}/{}",
                    h.consul_alive_members().len(),
                    cluster::ok_peers(h).len()
                )
            })
            .collect();
        eprintln!(
            "{:>5.1} s alive/ok per host: {}",
            last_join.elapsed().as_secs_f64(),
            counts.join(" ")
        );
    };
    let alive = cluster::time_until(limit, || {
        trace();
        cluster::all_alive(nodes, n)
    })
    .map(|_| last_join.elapsed());
    let mesh = cluster::time_until(limit, || {
        trace();
        cluster::full_mesh(nodes)
    })
    .map(|_| last_join.elapsed());
    eprintln!(
        "N={n}: alive after {}, mesh after {}",
        secs(alive),
        secs(mesh)
    );

    if std::env::var_os("JOIN_ONLY").is_some() {
        finish(lab, n);
        std::process::exit(0);
    }

    // One more node into the settled cluster.
    let newcomer = all[n];
    let started = Instant::now();
    cluster::join(&lab, n, &boot);
    let settled_join = cluster::time_until(limit, || {
        cluster::all_alive(&all, n + 1) && cluster::meshed_with(&all, newcomer)
    })
    .map(|_| started.elapsed());
    eprintln!(
        "N={n}: a node joining the settled cluster meshed after {}",
        secs(settled_join)
    );
    newcomer.kill("arpanetd");
    newcomer.kill("consul");
    assert_success(
        &all[0].arpanet(&["node", "rm", &newcomer.address.to_string()]),
        "node rm the extra node",
    );

    // Placement of 3N instances.
    let (h0, replicas) = (all[0], (3 * n).to_string());
    let started = Instant::now();
    assert_success(
        &h0.arpanet(&[
            "service",
            "create",
            "web",
            "--image",
            TEST_IMAGE,
            "--replicas",
            &replicas,
            "--",
            "sleep",
            "1d",
        ]),
        "service create",
    );
    let placed = cluster::time_until(limit, || {
        cluster::on_all(nodes, |h| cluster::spread_is(h, "web", nodes, 3))
    })
    .map(|_| started.elapsed());
    eprintln!("N={n}: {replicas} instances placed after {}", secs(placed));

    let ps_all = median(
        (0..5)
            .map(|_| timed_ms(h0, &["ps", "--all", "--json"]))
            .collect(),
    );
    let ps_local = median((0..5).map(|_| timed_ms(h0, &["ps", "--json"])).collect());

    // The servers' load once placement has settled: two complete 10 s metric intervals.
    let samples: Vec<(f64, f64)> = (0..2)
        .map(|_| {
            std::thread::sleep(Duration::from_secs(10));
            cluster::server_rpc_rates(&lab)
        })
        .collect();
    let rpc = (
        samples.iter().map(|s| s.0).sum::<f64>() / 2.0,
        samples.iter().map(|s| s.1).sum::<f64>() / 2.0,
    );
    let catalog = cluster::catalog_answer(h0);

    // A node is killed (arpanetd and its Consul agent): its share runs elsewhere.
    let victim = all[n - 1];
    victim.kill("arpanetd");
    victim.kill("consul");
    let started = Instant::now();
    let replaced = cluster::time_until(limit, || {
        cluster::instances(h0, "web").is_some_and(|i: Instances| {
            i.total() == 3 * n && i.running.keys().all(|k| *k != victim.address.to_string())
        })
    })
    .map(|_| started.elapsed());
    eprintln!(
        "N={n}: the killed node's share replaced after {}",
        secs(replaced)
    );
    victim.start_arpanetd();
    victim.start_consul_agent();
    let started = Instant::now();
    let returned = cluster::time_until(limit, || cluster::spread_is(h0, "web", nodes, 3))
        .map(|_| started.elapsed());

    // A 30 s partition of one node, then healed.
    let cut = n - 2;
    cluster::set_partitioned(&lab, cut, true);
    std::thread::sleep(Duration::from_secs(30));
    cluster::set_partitioned(&lab, cut, false);
    let started = Instant::now();
    let healed = cluster::time_until(limit, || {
        cluster::on_all(nodes, |h| {
            cluster::instances(h, "web").is_some_and(|i| {
                i.total() == 3 * n && i.duplicates().is_empty() && i.unreachable == 0
            }) && cluster::spread_is(h, "web", nodes, 3)
        })
    })
    .map(|_| started.elapsed());
    let after = cluster::instances(h0, "web").unwrap_or_default();
    let heal_count = format!(
        "{} running, {} twice",
        after.total(),
        after.duplicates().len()
    );

    let arpanetd: Vec<f64> = nodes
        .iter()
        .filter_map(|h| cluster::rss_mib(h, "arpanetd"))
        .collect();
    let consul: Vec<f64> = nodes
        .iter()
        .filter_map(|h| cluster::rss_mib(h, "consul"))
        .collect();
    let row = Row {
        n,
        alive,
        mesh,
        settled_join,
        placed,
        ps_all,
        ps_local,
        rpc,
        catalog,
        replaced,
        returned,
        healed,
        heal_count,
        arpanetd_mib: mean_max(&arpanetd),
        consul_mib: mean_max(&consul),
    };
    finish(lab, n);
    row
}

/// Keeps the logs if asked to, and tears the lab down.
fn finish(lab: Lab, n: usize) {
    if let Some(dir) = std::env::var_os("KEEP_LOGS") {
        static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        keep_logs(
            &lab,
            &std::path::Path::new(&dir).join(format!("{run}-n{n}")),
        );
    }
    lab.teardown().expect("teardown");
}

/// Copies every host's logs (arpanetd, Consul, dockerd) to `dir/hI/` before the lab
/// goes: `KEEP_LOGS=DIR` keeps what a slow step needs read.
fn keep_logs(lab: &Lab, dir: &std::path::Path) {
    for h in &lab.hosts {
        let to = dir.join(format!("h{}", h.index));
        std::fs::create_dir_all(&to).expect("KEEP_LOGS directory");
        for entry in std::fs::read_dir(&h.dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|x| x == "log") {
                let _ = std::fs::copy(&path, to.join(entry.file_name()));
            }
        }
    }
}

/// Placement's own cost, without a lab: one node's pass computes its share of S
/// services among N nodes (a rendezvous score per node and service, and a sort).
fn placement_cost() {
    use arpanet::config::Role;
    use arpanet::consul::node::Node;
    use arpanet::placement::{Constraints, ServiceDef, ServiceName, instances_for};
    let spec: arpanet::config::containers::ContainerSpec =
        toml::from_str("name = \"s\"\nimage = \"busybox:1\"\n").expect("a spec");
    println!("placement: one node's share of S services on N nodes (3N replicas each)");
    for (s, n) in [(10, 10), (100, 100), (100, 1000), (1000, 1000)] {
        let nodes: Vec<Node> = (0..n)
            .map(|i| Node {
                address: arpanet::addressing::NodeAddress::new(
                    (i / 250) as u8,
                    (i % 250 + 1) as u8,
                )
                .expect("an address"),
                role: Role::Client,
                labels: Default::default(),
                capacity: None,
            })
            .collect();
        let services: Vec<ServiceDef> = (0..s)
            .map(|k| {
                ServiceDef::new(
                    ServiceName::try_from(format!("s{k}")).expect("a name"),
                    spec.clone(),
                    3 * n as u32,
                    Constraints::default(),
                )
            })
            .collect();
        let started = Instant::now();
        let mine = instances_for(nodes[0].address, &services, &nodes, &[]);
        let took = started.elapsed();
        println!(
            "  S = {s:>4}, N = {n:>4}: {:>8.2} ms ({} instances here)",
            took.as_secs_f64() * 1e3,
            mine.len()
        );
    }
}

fn main() {
    placement_cost();
    require_lab!();
    let counts: Vec<usize> = std::env::var("NODES")
        .unwrap_or_else(|_| "5 10 20".into())
        .split_whitespace()
        .map(|n| n.parse().expect("NODES: numbers, e.g. `5 10 20`"))
        .collect();
    assert!(
        counts.iter().all(|n| *n >= 4),
        "NODES: at least 4 (3 servers and a client)"
    );
    let mut rows = Vec::new();
    for n in counts {
        rows.push(run(n));
    }
    println!(
        "arpanet at scale: lab hosts on this machine ({} CPUs), one run each; times from the last join command",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for r in &rows {
        println!("N = {} nodes (3 servers, {} clients)", r.n, r.n - 3);
        println!("  all members alive          {}", secs(r.alive));
        println!("  full mesh                  {}", secs(r.mesh));
        println!(
            "  +1 node into the settled cluster, alive and meshed  {}",
            secs(r.settled_join)
        );
        println!(
            "  {} instances placed, listed alike everywhere  {}",
            3 * r.n,
            secs(r.placed)
        );
        println!(
            "  ps --all                   {:.0} ms (ps of one node {:.0} ms)",
            r.ps_all.as_secs_f64() * 1e3,
            r.ps_local.as_secs_f64() * 1e3
        );
        println!(
            "  Consul servers, settled    {:.1} RPC/s, {:.1} reads/s (per node {:.2} / {:.2})",
            r.rpc.0,
            r.rpc.1,
            r.rpc.0 / r.n as f64,
            r.rpc.1 / r.n as f64
        );
        println!(
            "  catalog watch answer       {} entries, {} bytes (read once per change, shared by every pass)",
            r.catalog.0, r.catalog.1
        );
        println!(
            "  killed node's share re-placed  {} (its return: {})",
            secs(r.replaced),
            secs(r.returned)
        );
        println!(
            "  30 s partition healed      {} ({})",
            secs(r.healed),
            r.heal_count
        );
        println!(
            "  RSS per node               arpanetd {:.0} MiB (max {:.0}), Consul {:.0} MiB (max {:.0})",
            r.arpanetd_mib.0, r.arpanetd_mib.1, r.consul_mib.0, r.consul_mib.1
        );
    }
}
