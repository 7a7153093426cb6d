//! A cluster of N lab hosts joined the way a user joins them (`arpanet boot`, then
//! `arpanet server|client --token ... --join`, one host after another), and what a
//! user checks of it: members alive, the overlay mesh, the spread of a service. Shared
//! by the scale test and `make bench-scale`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{Host, Lab, assert_success, stdout};

const CONSUL: &str = "[consul]\nmode = \"config\"\n";

/// The first three hosts are Consul servers (boot and two servers), the rest clients.
pub const SERVERS: usize = 3;

pub fn role(index: usize) -> &'static str {
    match index {
        0 => "boot",
        i if i < SERVERS => "server",
        _ => "client",
    }
}

/// Host `index` as before its first `arpanet boot|server|client`: the lab's paths in
/// arpanet.toml, no secret and no identity.
fn bare(lab: &Lab, index: usize) {
    let join: Vec<usize> = if index == 0 { vec![] } else { vec![0] };
    let path = lab.write_arpanet_config(index, role(index), &join, CONSUL);
    // The product's resync (10 s), not the lab's 1 s: at 20 hosts on two cores, a whole
    // pass a second on every host is load no user's cluster has, and what it repairs
    // must be repaired by events here.
    let text = std::fs::read_to_string(&path).expect("read arpanet.toml");
    assert!(text.contains("resync = \"1s\""), "{text}");
    std::fs::write(&path, text.replace("resync = \"1s\"", "resync = \"10s\""))
        .expect("write arpanet.toml");
    let h = &lab.hosts[index];
    let _ = std::fs::remove_dir_all(h.dir.join("identity"));
    let _ = std::fs::remove_file(h.dir.join("secret"));
}

/// The join command `arpanet boot` printed for `role`, as words: `arpanet ROLE
/// ADDRESS ... --join 0.1@THIS_HOST_IP --token TOKEN`.
fn printed_command(boot_output: &str, role: &str) -> Vec<String> {
    boot_output
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("arpanet {role} ")))
        .unwrap_or_else(|| panic!("no {role} join command in:\n{boot_output}"))
        .split_whitespace()
        .skip(1)
        .map(str::to_string)
        .collect()
}

/// Boots host 0 and returns what `arpanet boot` printed (the join commands).
pub fn boot(lab: &Lab) -> String {
    bare(lab, 0);
    let h0 = &lab.hosts[0];
    let out = h0.arpanet(&[
        "boot",
        &h0.address.to_string(),
        "--cluster",
        "arpanet-lab",
        "--expect",
        &SERVERS.to_string(),
        "--no-start",
    ]);
    assert_success(&out, "arpanet boot");
    Host::start_nodes(&[h0]);
    stdout(&out)
}

/// Joins host `index` with the token for its role, and starts it (arpanetd, dockerd
/// from the daemon.json arpanetd wrote, the Consul agent), as `arpanet client` and
/// systemd do; returns once its processes run.
pub fn join(lab: &Lab, index: usize, boot_output: &str) {
    bare(lab, index);
    let (h0, h) = (&lab.hosts[0], &lab.hosts[index]);
    let role = role(index);
    let mut args: Vec<String> = printed_command(boot_output, role)
        .into_iter()
        .map(|w| {
            w.replace("ADDRESS", &h.address.to_string())
                .replace("THIS_HOST_IP", &h0.underlay_ip.to_string())
        })
        .collect();
    args.push("--no-start".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_success(
        &h.arpanet(&args),
        &format!("arpanet {role} on host {index}"),
    );
    Host::start_nodes(&[h]);
}

/// Runs `check` on every host at once (each is a process or two in its namespace);
/// true when it holds on all of them.
pub fn on_all(hosts: &[&Host], check: impl Fn(&Host) -> bool + Sync) -> bool {
    std::thread::scope(|s| {
        let handles: Vec<_> = hosts.iter().map(|h| s.spawn(|| check(h))).collect();
        handles.into_iter().all(|t| t.join().unwrap_or(false))
    })
}

/// Every host's Consul agent sees `n` members alive.
pub fn all_alive(hosts: &[&Host], n: usize) -> bool {
    on_all(hosts, |h| h.consul_alive_members().len() == n)
}

/// The peers `host`'s `arpanet status` reports `ok` (FDB, neighbours and route in place).
pub fn ok_peers(host: &Host) -> Vec<String> {
    let out = host.arpanet(&["status", "--json"]);
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        return Vec::new();
    };
    v["peers"]
        .as_array()
        .map(|peers| {
            peers
                .iter()
                .filter(|p| p["state"] == "ok")
                .filter_map(|p| p["address"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Every host has every other as an `ok` peer.
pub fn full_mesh(hosts: &[&Host]) -> bool {
    on_all(hosts, |h| {
        let ok = ok_peers(h);
        hosts
            .iter()
            .filter(|o| o.index != h.index)
            .all(|o| ok.contains(&o.address.to_string()))
    })
}

/// `newcomer` is an `ok` peer of every other host, and they are of it.
pub fn meshed_with(hosts: &[&Host], newcomer: &Host) -> bool {
    let me = newcomer.address.to_string();
    on_all(hosts, |h| {
        let ok = ok_peers(h);
        if h.index == newcomer.index {
            hosts
                .iter()
                .filter(|o| o.index != h.index)
                .all(|o| ok.contains(&o.address.to_string()))
        } else {
            ok.contains(&me)
        }
    })
}

/// Polls `ready` every 100 ms until it holds, up to `limit`; the time it took, or
/// `None` when it never held.
pub fn time_until(limit: Duration, mut ready: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    loop {
        if ready() {
            return Some(started.elapsed());
        }
        if started.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Instances of `service` as `arpanet ps --all --json` on `host` lists them: running
/// ones per node, and every instance name seen (running or not), for duplicates.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Instances {
    pub running: BTreeMap<String, usize>,
    pub names: Vec<String>,
    /// Nodes the listing could not reach.
    pub unreachable: usize,
}

impl Instances {
    pub fn total(&self) -> usize {
        self.running.values().sum()
    }

    /// Names listed more than once (one instance running on two nodes).
    pub fn duplicates(&self) -> Vec<String> {
        let mut seen = std::collections::BTreeSet::new();
        self.names
            .iter()
            .filter(|n| !seen.insert(n.as_str()))
            .cloned()
            .collect()
    }
}

pub fn instances(host: &Host, service: &str) -> Option<Instances> {
    let out = host.arpanet(&["ps", "--all", "--json"]);
    if !out.status.success() {
        return None;
    }
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let mut found = Instances {
        unreachable: String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| l.contains("unreachable") || l.contains("did not answer"))
            .count(),
        ..Instances::default()
    };
    for c in list.as_array()? {
        if c["service"] != service {
            continue;
        }
        if let Some(name) = c["name"].as_str() {
            found.names.push(name.to_string());
        }
        if c["state"] == "running" {
            *found
                .running
                .entry(c["node"].as_str()?.to_string())
                .or_insert(0) += 1;
        }
    }
    Some(found)
}

/// `per_node` running instances of `service` on each of `nodes` and nowhere else.
pub fn spread_is(host: &Host, service: &str, nodes: &[&Host], per_node: usize) -> bool {
    let want: BTreeMap<String, usize> = nodes
        .iter()
        .map(|h| (h.address.to_string(), per_node))
        .collect();
    instances(host, service).is_some_and(|i| i.running == want)
}

/// Resident memory of the process started as `name` on `host` (and, for `consul`, the
/// agent `arpanet consul-agent` runs), in MiB.
pub fn rss_mib(host: &Host, name: &str) -> Option<f64> {
    let pid: i32 = std::fs::read_to_string(host.dir.join(format!("{name}.pid.spawned")))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let pids = super::process_tree(pid);
    let kib: u64 = pids
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .sum();
    Some(kib as f64 / 1024.0)
}

/// Cuts host `index` off the underlay (its port on the lab's bridge goes down), or
/// puts it back.
pub fn set_partitioned(lab: &Lab, index: usize, cut: bool) {
    let out = std::process::Command::new("ip")
        .args([
            "-n",
            &lab.underlay_netns(),
            "link",
            "set",
            &format!("h{index}"),
            if cut { "down" } else { "up" },
        ])
        .output()
        .expect("ip link");
    assert_success(&out, "set the host's underlay port");
}

/// What the Consul servers handle per second, summed over the servers, from each
/// agent's last complete 10 s metrics interval (`/v1/agent/metrics`, read with the boot
/// node's management token): `(RPC requests, read queries)`. Reads are the blocking
/// queries (watches) and KV and catalog reads the nodes' requests turn into.
pub fn server_rpc_rates(lab: &Lab) -> (f64, f64) {
    let token =
        std::fs::read_to_string(lab.hosts[0].identity_dir().join("consul-management.token"))
            .expect("the boot node's management token");
    let mut rates = (0.0, 0.0);
    for h in &lab.hosts[..SERVERS] {
        let metrics: serde_json::Value =
            serde_json::from_slice(&consul_get(h, &token, "/v1/agent/metrics")).unwrap_or_default();
        let rate = |name: &str| -> f64 {
            metrics["Counters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| c["Name"] == name)
                .filter_map(|c| c["Rate"].as_f64())
                .sum()
        };
        if std::env::var_os("TRACE").is_some() {
            // What makes up the load, busiest first.
            let mut busy: Vec<(f64, String)> = metrics["Counters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| {
                    Some((
                        c["Rate"].as_f64()?,
                        format!("{} {}", c["Name"], c["Labels"]),
                    ))
                })
                .filter(|(r, _)| *r >= 0.2)
                .collect();
            busy.sort_by(|a, b| b.0.total_cmp(&a.0));
            for (r, name) in busy {
                eprintln!("h{} {r:>7.2}/s {name}", h.index);
            }
        }
        rates.0 += rate("consul.rpc.request");
        rates.1 += rate("consul.rpc.query");
    }
    rates
}

/// The catalog answer each node's watch receives on a change: `(entries, bytes)`.
pub fn catalog_answer(host: &Host) -> (usize, usize) {
    let out = host.consul(&["catalog", "nodes", "-service=arpanet"]);
    let entries = stdout(&out).lines().skip(1).count();
    let token =
        std::fs::read_to_string(host.identity_dir().join("consul-agent.token")).unwrap_or_default();
    (
        entries,
        consul_get(host, &token, "/v1/health/service/arpanet").len(),
    )
}

/// `path` of `host`'s Consul agent's HTTP API with `token`; empty if it fails.
fn consul_get(host: &Host, token: &str, path: &str) -> Vec<u8> {
    host.exec(&[
        "curl",
        "-sf",
        "-H",
        &format!("X-Consul-Token: {}", token.trim()),
        &format!("http://127.0.0.1:8500{path}"),
    ])
    .stdout
}
