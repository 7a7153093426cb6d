//! Logs across nodes on three lab hosts: `arpanet service logs NAME` prints every
//! instance's lines, each after its instance's name, from any node; `-f` goes on
//! printing lines written after it started; `arpanet logs ID` prints one container's
//! lines from whichever node runs it; a node that goes away mid-follow is one warning
//! while the others' lines keep coming.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::lab::{Host, Lab, TEST_IMAGE, assert_success, stdout, wait_until};

/// One instance: its Docker name and its ID.
#[derive(Debug, Clone)]
struct Instance {
    name: String,
    id: String,
}

impl Instance {
    /// What it printed when it started: its hostname is its short ID, which names it on
    /// the node that runs it.
    fn greeting(&self) -> String {
        format!("hello from {}", &self.id[..12])
    }
}

/// The running instances of `service` per node, once there is one on every node.
fn one_on_each(host: &Host, hosts: &[&Host], service: &str) -> BTreeMap<String, Instance> {
    let mut found = BTreeMap::new();
    wait_until(
        Duration::from_secs(90),
        "one running instance on every node",
        || {
            let out = host.arpanet(&["ps", "--all", "--json"]);
            let Ok(list) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
                return false;
            };
            found.clear();
            for c in list.as_array().into_iter().flatten() {
                if c["service"] == service && c["state"] == "running" {
                    let node = c["node"].as_str().unwrap().to_string();
                    let instance = Instance {
                        name: c["name"].as_str().unwrap().to_string(),
                        id: c["id"].as_str().unwrap().to_string(),
                    };
                    if found.insert(node, instance).is_some() {
                        return false;
                    }
                }
            }
            hosts
                .iter()
                .all(|h| found.contains_key(&h.address.to_string()))
        },
    );
    found
}

/// A process started with [`Host::spawn`] still runs (is not a zombie: the lab reaps
/// its children only at teardown).
fn assert_still_running(host: &Host, name: &str) {
    let pid: i32 = std::fs::read_to_string(host.dir.join(format!("{name}.pid.spawned")))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(") ").map(|(_, rest)| &rest[..1]);
    assert!(
        matches!(state, Some("R" | "S")),
        "{name} ended ({stat}): {}",
        host.log(name)
    );
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn service_logs_show_every_instance_on_every_node_and_follow_new_lines() {
    require_lab!();
    let lab = Lab::three_nodes();
    let hosts: Vec<&Host> = lab.hosts.iter().collect();
    let (h0, h1, h2) = (hosts[0], hosts[1], hosts[2]);

    // Three instances, one per node; each says where it runs, then waits.
    let create = h1.arpanet(&[
        "service",
        "create",
        "talk",
        "--image",
        TEST_IMAGE,
        "--replicas",
        "3",
        "--",
        "sh",
        "-c",
        "echo \"hello from $(hostname)\"; echo \"to stderr from $(hostname)\" >&2; exec sleep 3600",
    ]);
    assert_success(&create, "service create talk");
    let instances = one_on_each(h0, &hosts, "talk");
    let on = |h: &Host| instances[&h.address.to_string()].clone();

    // From node 0: the lines of the instances on all three nodes, stdout and stderr,
    // each after its instance's name, and nothing else.
    let started = std::time::Instant::now();
    let mut last = String::new();
    wait_until(
        Duration::from_secs(20),
        "every instance's lines in `service logs`",
        || {
            let out = h0.arpanet(&["service", "logs", "talk"]);
            assert_success(&out, "service logs talk");
            last = stdout(&out);
            hosts.iter().all(|h| {
                let i = on(h);
                last.lines()
                    .any(|l| l == format!("{} | {}", i.name, i.greeting()))
                    && last
                        .lines()
                        .any(|l| l == format!("{} | to stderr from {}", i.name, &i.id[..12]))
            })
        },
    );
    println!(
        "MEASURED: every node's lines through `service logs` after {:.1?}",
        started.elapsed()
    );
    assert_eq!(last.lines().count(), 6, "{last}");
    for line in last.lines() {
        let (instance, _) = line.split_once(" | ").unwrap_or_else(|| panic!("{line}"));
        assert!(
            instances.values().any(|i| i.name == instance),
            "{line}: no instance `{instance}`"
        );
    }

    // One container on another node, by name and by short ID, without prefixes.
    let far = on(h2);
    for id in [far.name.as_str(), &far.id[..12]] {
        let out = h0.arpanet(&["logs", id]);
        assert_success(&out, "logs");
        let mut got: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
        got.sort();
        assert_eq!(
            got,
            [far.greeting(), format!("to stderr from {}", &far.id[..12])],
            "arpanet logs {id} from node {}",
            h0.address
        );
    }

    // Following, from node 1: a line written on node 2 after the command started
    // arrives while the command still runs.
    let config = h1.config_path();
    let follow_args = [
        env!("CARGO_BIN_EXE_arpanet"),
        "--config",
        config.to_str().unwrap(),
        "service",
        "logs",
        "talk",
        "-f",
    ];
    let follow_args: Vec<&std::ffi::OsStr> = follow_args.iter().map(std::ffi::OsStr::new).collect();
    h1.spawn("follow", &follow_args);
    // And one container's, from node 0.
    let config0 = h0.config_path();
    let one_args = [
        env!("CARGO_BIN_EXE_arpanet"),
        "--config",
        config0.to_str().unwrap(),
        "logs",
        "--follow",
        &far.name,
    ];
    let one_args: Vec<&std::ffi::OsStr> = one_args.iter().map(std::ffi::OsStr::new).collect();
    h0.spawn("follow-one", &one_args);
    wait_until(
        Duration::from_secs(20),
        "the followers printing what was there",
        || {
            let log = h1.log("follow");
            hosts
                .iter()
                .all(|h| log.contains(&format!("{} | {}", on(h).name, on(h).greeting())))
                && h0.log("follow-one").lines().any(|l| l == far.greeting())
        },
    );
    let marker = format!("written later {}", crate::lab::random_uuid());
    let written = std::time::Instant::now();
    let write = h2.docker(&[
        "exec",
        &far.id,
        "sh",
        "-c",
        &format!("echo '{marker}' > /proc/1/fd/1"),
    ]);
    assert_success(&write, "write a line into the instance on node 2");
    let want = format!("{} | {marker}", far.name);
    wait_until(
        Duration::from_secs(20),
        "the later line in the follower's output",
        || h1.log("follow").lines().any(|l| l == want),
    );
    println!(
        "MEASURED: a line written on node 2 (by `docker exec`, started then) reached `service logs -f` on node 1 after {:.1?}",
        written.elapsed()
    );
    wait_until(
        Duration::from_secs(20),
        "the later line in `logs --follow`",
        || h0.log("follow-one").lines().any(|l| l == marker),
    );
    assert_still_running(h1, "follow");
    assert_still_running(h0, "follow-one");
    h1.stop("follow");
    h0.stop("follow-one");

    // --tail counts per instance, on every node: the last line of each.
    let out = h0.arpanet(&["service", "logs", "talk", "--tail", "1"]);
    assert_success(&out, "service logs --tail 1");
    let tail = stdout(&out);
    assert_eq!(tail.lines().count(), 3, "{tail}");
    assert!(tail.lines().any(|l| l == want), "{tail}");
    // --since reaches back: everything is younger than an hour.
    let out = h2.arpanet(&["service", "logs", "talk", "--since", "1h"]);
    assert_success(&out, "service logs --since 1h");
    assert_eq!(stdout(&out).lines().count(), 7, "{}", stdout(&out));

    // Bad input: one error naming what is wrong, before any request.
    for (args, want) in [
        (vec!["logs", "a/b"], "ID: `a/b` is not a container name"),
        (
            vec!["service", "logs", "talk", "--since", "soon"],
            "`soon` is not a duration such as 10m, 1h30m or 45s",
        ),
        (
            vec!["service", "logs", "talk", "--tail", "many"],
            "`many` is not a number of lines or `all`",
        ),
        (vec!["service", "logs", "nope"], "no service `nope`"),
        (
            vec!["logs", "0123456789ab"],
            "no container `0123456789ab` on any node",
        ),
    ] {
        let out = h0.arpanet(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
    }
    assert!(
        stderr(&h0.arpanet(&["service", "logs", "talk", "--since", "soon"])).contains("--since")
    );

    // Node 2's arpanetd dies while node 1 follows: one warning naming node 2, and
    // the other nodes' lines keep coming.
    h1.spawn("follow2", &follow_args);
    wait_until(
        Duration::from_secs(20),
        "the second follower started",
        || h1.log("follow2").lines().any(|l| l == want),
    );
    h2.kill("arpanetd");
    let broke = format!("warning: node {}: its logs broke off", h2.address);
    wait_until(
        Duration::from_secs(20),
        "the follower's warning about node 2",
        || h1.log("follow2").contains(&broke),
    );
    let near = on(h0);
    let later = format!("after node 2 died {}", crate::lab::random_uuid());
    assert_success(
        &h0.docker(&[
            "exec",
            &near.id,
            "sh",
            "-c",
            &format!("echo '{later}' > /proc/1/fd/1"),
        ]),
        "write a line into the instance on node 0",
    );
    let want_later = format!("{} | {later}", near.name);
    wait_until(
        Duration::from_secs(20),
        "node 0's later line in the follower's output",
        || h1.log("follow2").lines().any(|l| l == want_later),
    );
    assert_still_running(h1, "follow2");
    h1.stop("follow2");
}

/// Without arpanetd (no lab): the logs verbs say so in the one line the other cluster
/// verbs use, and are listed in the help.
#[test]
fn logs_without_arpanetd_are_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let cfg = dir.path().join("a.toml");
    std::fs::write(
        &cfg,
        format!("[node]\naddress = \"0.1\"\nrole = \"boot\"\n[paths]\nrun_dir = {run:?}\n"),
    )
    .unwrap();
    let arpanet = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_arpanet"))
            .args(args)
            .env_remove("ARPANET_CONFIG")
            .output()
            .expect("run arpanet")
    };
    for args in [
        &["logs", "abc"][..],
        &["logs", "-f", "abc"][..],
        &["service", "logs", "web", "--tail", "5"][..],
    ] {
        let mut full = vec!["--config", cfg.to_str().unwrap()];
        full.extend_from_slice(args);
        let out = arpanet(&full);
        assert!(!out.status.success());
        assert_eq!(
            stderr(&out).trim(),
            format!(
                "error: cannot reach arpanetd at {}: cannot connect (is arpanetd running? are you root?)",
                run.join("api.sock").display()
            ),
            "{args:?}"
        );
    }
    let help = stdout(&arpanet(&["--help"]));
    assert!(
        help.lines().any(|l| l.trim_start().starts_with("logs ")),
        "{help}"
    );
    let help = stdout(&arpanet(&["service", "--help"]));
    assert!(
        help.lines().any(|l| l.trim_start().starts_with("logs ")),
        "{help}"
    );
}
