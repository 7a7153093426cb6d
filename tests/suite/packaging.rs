//! The .deb as users meet it, on real systemd machines (systemd-nspawn, Debian 12):
//! installed, set up with boot/server/client, upgraded and purged. The packages come
//! from `scripts/build-packages` (`make packages`, which `make test` runs first).

use crate::fixture;
use crate::lab;
use std::path::PathBuf;
use std::time::Duration;

use crate::lab::machine::{self, Install, Machine};
use crate::lab::{Lab, TEST_IMAGE, assert_success, stdout, wait_until};

/// The package of each revision (`-1`, and `-2` for the upgrade).
fn packages() -> Option<(PathBuf, PathBuf)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/packages");
    let find = |suffix: &str| {
        std::fs::read_dir(&dir)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.to_string_lossy().ends_with(suffix))
    };
    match (find("-1_amd64.deb"), find("-2_amd64.deb")) {
        (Some(a), Some(b)) => Some((a, b)),
        _ => {
            let msg = format!(
                "no packages in {} (make packages builds them)",
                dir.display()
            );
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{msg}; CI=true, so this fails instead of skipping");
            }
            eprintln!("SKIPPED: {msg}");
            None
        }
    }
}

fn name(p: &std::path::Path) -> String {
    format!("/root/{}", p.file_name().unwrap().to_string_lossy())
}

/// arpanet's units' journal in a machine, for failures.
fn journal(m: &Machine) -> String {
    stdout(&m.exec(&[
        "journalctl",
        "--no-pager",
        "-n",
        "60",
        "-u",
        "arpanetd",
        "-u",
        "arpanet-consul",
    ]))
}

/// The Consul agent runs as arpanet-consul with CAP_NET_BIND_SERVICE alone, and the
/// config holding the gossip key is that user's, 0600.
fn assert_agent_is_unprivileged(m: &Machine) {
    let uid = stdout(&m.exec(&["id", "-u", "arpanet-consul"]))
        .trim()
        .to_string();
    assert!(!uid.is_empty(), "no arpanet-consul user");
    let status = || {
        stdout(&m.exec(&[
            "sh",
            "-c",
            "for p in /proc/[0-9]*; do [ \"$(cat $p/comm 2>/dev/null)\" = consul ] && grep -E '^(Uid|CapEff|CapBnd):' $p/status; done",
        ]))
    };
    wait_until(Duration::from_secs(60), "the consul process", || {
        status().contains("Uid:")
    });
    let status = status();
    let line = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    // Real, effective, saved and filesystem UIDs.
    assert_eq!(line("Uid:"), vec![uid.as_str(); 4], "{status}");
    // 0x400: CAP_NET_BIND_SERVICE, and nothing else, even in the bounding set.
    assert_eq!(line("CapEff:"), ["0000000000000400"], "{status}");
    assert_eq!(line("CapBnd:"), ["0000000000000400"], "{status}");
    let config = m.exec(&["stat", "-c", "%a %U", "/var/lib/arpanet/consul/config.json"]);
    assert_eq!(stdout(&config).trim(), "600 arpanet-consul");
}

fn active(m: &Machine, unit: &str) -> bool {
    m.unit_property(unit, "ActiveState") == "active"
}

fn wait_active(m: &Machine, unit: &str) {
    wait_until(
        Duration::from_secs(90),
        &format!("{unit} active in {}", m.name),
        || active(m, unit),
    );
}

#[test]
fn lintian_finds_no_errors() {
    let Some((deb, _)) = packages() else { return };
    if lab::which("lintian").is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "lintian missing; CI=true, so this fails instead of skipping"
        );
        eprintln!("SKIPPED: lintian missing (apt-get install lintian)");
        return;
    }
    let out = std::process::Command::new("lintian")
        .args(["--fail-on", "error", "--tag-display-limit", "0"])
        .arg(&deb)
        .output()
        .expect("run lintian");
    assert!(
        out.status.success(),
        "lintian: {}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_rpm_carries_the_same_files_config_and_scripts() {
    let Some(_) = packages() else { return };
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/packages");
    let rpm = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "rpm"))
        .expect("an .rpm next to the .deb (make packages)");
    if lab::which("rpm").is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "rpm missing; CI=true, so this fails instead of skipping"
        );
        eprintln!("SKIPPED: rpm missing (apt-get install rpm)");
        return;
    }
    let query = |what: &str| {
        let out = std::process::Command::new("rpm")
            .args(["-qp", what])
            .arg(&rpm)
            .output()
            .expect("rpm");
        assert_success(&out, &format!("rpm -qp {what}"));
        stdout(&out)
    };
    let files = query("--list");
    for f in [
        "/usr/bin/arpanetd",
        "/usr/bin/arpanet",
        "/usr/lib/systemd/system/arpanetd.service",
        "/usr/lib/systemd/system/arpanet-consul.service",
        "/usr/lib/systemd/system/arpanet-sync.socket",
        "/usr/lib/systemd/system/arpanet-sync.service",
    ] {
        assert!(files.lines().any(|l| l == f), "{f} missing: {files}");
    }
    let config = query("--configfiles");
    assert!(config.contains("/etc/arpanet/arpanet.toml"), "{config}");
    let scripts = query("--scripts");
    for part in [
        "postinstall",
        "preuninstall",
        "postuninstall",
        "uninstall-network",
    ] {
        assert!(scripts.contains(part), "{part} missing: {scripts}");
    }
}

#[test]
fn the_package_installs_waits_for_setup_upgrades_and_purges_cleanly() {
    require_lab!(machines);
    let Some((v1, v2)) = packages() else { return };
    let _turn = machine::take_turn();
    let base = machine::base_tree();
    let lab = Lab::builder(1).start();
    let h0 = &lab.hosts[0];
    let pkgs = [v1.clone(), v2.clone()];
    let m = Machine::boot_with(h0, &base, &Install::Packages(&pkgs));

    // Installed: binaries, units, conffiles, completions; enabled but not started.
    let install = m.exec(&["dpkg", "-i", &name(&v1)]);
    assert_success(&install, "dpkg -i");
    let conffiles = stdout(&m.exec(&["dpkg-query", "-W", "-f=${Conffiles}", "arpanet"]));
    for f in [
        "/etc/arpanet/arpanet.toml",
        "/etc/arpanet/containers.d/example.toml",
    ] {
        assert!(conffiles.contains(f), "{f} is not a conffile: {conffiles}");
    }
    for f in [
        "/usr/bin/arpanetd",
        "/usr/bin/arpanet",
        "/usr/lib/systemd/system/arpanetd.service",
        "/usr/lib/systemd/system/arpanet-consul.service",
        "/usr/lib/systemd/system/arpanet-sync.socket",
        "/usr/lib/systemd/system/arpanet-sync.service",
        "/usr/share/bash-completion/completions/arpanet",
        "/usr/share/man/man1/arpanet.1.gz",
        "/usr/share/man/man8/arpanetd.8.gz",
    ] {
        assert_success(&m.exec(&["test", "-e", f]), f);
    }
    assert_eq!(
        stdout(&m.exec(&["systemctl", "is-enabled", "arpanetd.service"])).trim(),
        "enabled"
    );
    assert!(
        !active(&m, "arpanetd.service"),
        "started before it was set up"
    );
    // Even a start skips it cleanly until the node is set up.
    let _ = m.exec(&["systemctl", "start", "arpanetd.service"]);
    assert!(!active(&m, "arpanetd.service"));
    assert_eq!(
        m.unit_property("arpanetd.service", "ActiveState"),
        "inactive"
    );
    assert_eq!(
        m.unit_property("arpanetd.service", "Result"),
        "exec-condition"
    );

    // One command sets the node up and starts it.
    let boot = m.exec(&[
        "arpanet",
        "boot",
        &h0.address.to_string(),
        "--cluster",
        "apples",
        "--underlay-interface",
        "eth1",
    ]);
    assert_success(&boot, "arpanet boot");
    assert!(
        stdout(&boot).contains("--token ARPN-1-"),
        "{}",
        stdout(&boot)
    );
    wait_active(&m, "arpanetd.service");
    wait_active(&m, "arpanet-consul.service");
    assert_success(&m.exec(&["ip", "link", "show", "arpanet0"]), "arpanet0");
    assert_agent_is_unprivileged(&m);
    wait_until(Duration::from_secs(30), "bip in daemon.json", || {
        m.read_file("/etc/docker/daemon.json").contains("\"bip\"")
    });

    // Image sync: the socket listens, the service starts on the first request (here
    // `arpanet image ls`, which arpanetd relays to it), exits when idle, starts again.
    wait_active(&m, "arpanet-sync.socket");
    assert!(!active(&m, "arpanet-sync.service"), "started before use");
    let config = m.read_file("/etc/arpanet/arpanet.toml");
    m.write_file(
        "/etc/arpanet/arpanet.toml",
        &format!("{config}\n[sync]\nidle_timeout = \"4s\"\n"),
    );
    // `image ls` reads the node registry's records in Consul KV, which answers once the
    // new cluster has a leader and the node's token; until then it is one clear line.
    wait_until(Duration::from_secs(60), "Consul KV to answer", || {
        m.exec(&["arpanet", "kv", "ls", "arpanet/registry/"])
            .status
            .success()
    });
    for round in ["first", "second"] {
        let ls = m.exec(&["arpanet", "image", "ls", "--json"]);
        assert_success(&ls, &format!("arpanet image ls ({round} activation)"));
        let ls: serde_json::Value = serde_json::from_str(stdout(&ls).trim()).expect("JSON");
        assert_eq!(ls["items"], serde_json::json!([]), "{ls}");
        assert_eq!(ls["unreachable"], serde_json::json!([]), "{ls}");
        assert!(active(&m, "arpanet-sync.service"), "{round} activation");
        wait_until(
            Duration::from_secs(30),
            "the idle sync service exits",
            || m.unit_property("arpanet-sync.service", "ActiveState") == "inactive",
        );
        assert_eq!(m.unit_property("arpanet-sync.service", "Result"), "success");
        assert!(active(&m, "arpanet-sync.socket"), "the socket stays");
    }
    m.write_file("/etc/arpanet/arpanet.toml", &config);

    // An edited config survives an upgrade, which restarts arpanetd.
    let edited = format!(
        "{}# edited by the operator\n",
        m.read_file("/etc/arpanet/arpanet.toml")
    );
    m.write_file("/etc/arpanet/arpanet.toml", &edited);
    let pid = m.unit_property("arpanetd.service", "MainPID");
    let upgrade = m.exec(&["dpkg", "-i", &name(&v2)]);
    assert_success(&upgrade, "dpkg -i of the newer package");
    assert_eq!(m.read_file("/etc/arpanet/arpanet.toml"), edited);
    wait_active(&m, "arpanetd.service");
    assert_ne!(
        m.unit_property("arpanetd.service", "MainPID"),
        pid,
        "the upgrade did not restart arpanetd"
    );

    // `arpanet stop` stops the node and keeps it off at boot; containers stay.
    let stop = m.exec(&["arpanet", "stop"]);
    assert_success(&stop, "arpanet stop");
    for unit in [
        "arpanetd.service",
        "arpanet-consul.service",
        "arpanet-sync.socket",
        "arpanet-sync.service",
    ] {
        assert!(!active(&m, unit), "{unit} still active");
    }
    assert_eq!(
        stdout(&m.exec(&["systemctl", "is-enabled", "arpanetd.service"])).trim(),
        "disabled"
    );

    // Purge leaves no unit, state, device or daemon.json key behind.
    assert_success(&m.exec(&["dpkg", "--purge", "arpanet"]), "dpkg --purge");
    let units = m.exec(&["systemctl", "list-unit-files", "--no-legend", "arpanet*"]);
    assert_eq!(stdout(&units).trim(), "", "units left");
    for gone in [
        "/var/lib/arpanet",
        "/etc/arpanet",
        "/usr/lib/systemd/system/arpanetd.service",
        "/etc/systemd/system/docker.service.d/arpanet.conf",
    ] {
        assert!(
            !m.exec(&["test", "-e", gone]).status.success(),
            "{gone} left"
        );
    }
    assert!(
        !m.exec(&["ip", "link", "show", "arpanet0"]).status.success(),
        "arpanet0 left"
    );
    let json = m.read_file("/etc/docker/daemon.json");
    for key in ["\"bip\"", "\"hosts\"", "10.253.", "\"tlsverify\""] {
        assert!(!json.contains(key), "{key} left in daemon.json: {json}");
    }
    assert!(
        active(&m, "docker.service"),
        "Docker runs on without arpanet"
    );
}

/// Three machines with the package installed, set up as boot, server and client;
/// returns them with each one's dockerd PID from before arpanet.
fn form_cluster<'a>(
    lab: &'a Lab,
    base: &std::path::Path,
    pkgs: &'a [PathBuf],
) -> (Vec<Machine<'a>>, Vec<String>) {
    let v1 = &pkgs[0];
    let machines: Vec<Machine> = lab
        .hosts
        .iter()
        .map(|h| Machine::boot_with(h, base, &Install::Packages(pkgs)))
        .collect();
    let docker_pids: Vec<String> = machines
        .iter()
        .map(|m| m.unit_property("docker.service", "MainPID"))
        .collect();
    for m in &machines {
        assert_success(&m.exec(&["dpkg", "-i", &name(v1)]), "dpkg -i");
    }
    let boot_node = &lab.hosts[0];
    let boot = machines[0].exec(&[
        "arpanet",
        "boot",
        &boot_node.address.to_string(),
        "--cluster",
        "apples",
        "--underlay-interface",
        "eth1",
    ]);
    assert_success(&boot, "arpanet boot");
    // The tokens as `arpanet boot` printed them, one line per role.
    let printed = stdout(&boot);
    let token = |role: &str| -> String {
        printed
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("arpanet {role} ")))
            .and_then(|l| l.split_whitespace().skip_while(|w| *w != "--token").nth(1))
            .unwrap_or_else(|| panic!("no {role} token in:\n{printed}"))
            .to_string()
    };
    let join = format!("{}@{}", boot_node.address, boot_node.underlay_ip);
    for (m, role) in machines[1..].iter().zip(["server", "client"]) {
        let out = m.exec(&[
            "arpanet",
            role,
            &m.host.address.to_string(),
            "--cluster",
            "apples",
            "--join",
            &join,
            "--token",
            &token(role),
            "--underlay-interface",
            "eth1",
        ]);
        assert_success(&out, &format!("arpanet {role}"));
    }
    for m in &machines {
        wait_active(m, "arpanetd.service");
        wait_active(m, "arpanet-consul.service");
    }
    (machines, docker_pids)
}

/// `make demo`: the 3-machine cluster from the package, left running until Enter.
#[test]
#[ignore = "interactive; run by `make demo`"]
fn demo() {
    assert!(
        lab::available() && machine::available(),
        "the demo needs root, dockerd, Consul and systemd-nspawn (make deps)"
    );
    let (v1, _) = packages().expect("make packages first");
    let base = machine::base_tree();
    let lab = Lab::builder(3).start();
    let pkgs = [v1.clone()];
    let (machines, _) = form_cluster(&lab, &base, &pkgs);
    wait_until(Duration::from_secs(90), "3 Consul members", || {
        let out = machines[0].exec(&["arpanet", "members", "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).is_ok_and(|v| {
            v.as_array()
                .is_some_and(|a| a.iter().filter(|m| m["status"] == "alive").count() == 3)
        })
    });
    // Shown once every node has a leader and both others as working peers.
    for m in &machines {
        wait_until(Duration::from_secs(90), "a settled cluster", || {
            let out = m.exec(&["arpanet", "status", "--json"]);
            serde_json::from_slice::<serde_json::Value>(&out.stdout).is_ok_and(|s| {
                !s["consul"]["leader"].is_null()
                    && s["peers"]
                        .as_array()
                        .is_some_and(|p| p.iter().filter(|p| p["state"] == "ok").count() == 2)
            })
        });
    }
    for m in &machines {
        println!("==== {} (node {}): arpanet status", m.name, m.host.address);
        println!("{}", stdout(&m.exec(&["arpanet", "status"])));
    }
    println!("A shell in a machine (as root, from another terminal):");
    for m in &machines {
        println!(
            "  nsenter -t {} -a -r -w bash    # {} (node {})",
            m.leader, m.name, m.host.address
        );
    }
    println!("Press Enter to stop the cluster and remove it.");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

#[test]
fn three_machines_form_a_cluster_from_the_package() {
    require_lab!(machines);
    let Some((v1, _)) = packages() else { return };
    let _turn = machine::take_turn();
    let base = machine::base_tree();
    let lab = Lab::builder(3).start();
    let pkgs = [v1.clone()];
    let (machines, docker_pids) = form_cluster(&lab, &base, &pkgs);
    // Docker was restarted by arpanetd, over D-Bus, with the new daemon.json.
    for (m, before) in machines.iter().zip(&docker_pids) {
        wait_until(Duration::from_secs(60), "docker restarted", || {
            &m.unit_property("docker.service", "MainPID") != before && active(m, "docker.service")
        });
        let bridge = m.host.address.bridge_ip().to_string();
        let info = m.exec(&[
            "docker",
            "network",
            "inspect",
            "bridge",
            "-f",
            "{{json .IPAM.Config}}",
        ]);
        assert!(stdout(&info).contains(&bridge), "{}", stdout(&info));
    }
    let members = || {
        let out = machines[2].exec(&["arpanet", "members", "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).is_ok_and(|v| {
            v.as_array()
                .is_some_and(|a| a.iter().filter(|m| m["status"] == "alive").count() == 3)
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while !members() {
        if std::time::Instant::now() > deadline {
            for m in &machines {
                eprintln!("==== {} journal", m.name);
                eprintln!("{}", journal(m));
            }
            panic!("timed out waiting for 3 Consul members");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // Every plane answers between machines.
    for m in &machines {
        for other in &lab.hosts {
            for ip in [
                other.address.overlay_ip(),
                other.address.docker_api_ip(),
                other.address.consul_ip(),
            ] {
                let ip = ip.to_string();
                wait_until(
                    Duration::from_secs(30),
                    &format!("{} pings {ip}", m.name),
                    || {
                        m.exec(&["ping", "-c", "1", "-W", "1", &ip])
                            .status
                            .success()
                    },
                );
            }
        }
    }

    // A container on machine 1 finds and calls one on machine 2 by name.
    for m in &machines[1..] {
        m.import_test_image();
    }
    let web = machines[2].exec(&[&["docker"][..], &lab::RUN_WEB[..]].concat());
    assert_success(&web, "docker run web");
    let web_ip = stdout(&machines[2].exec(&["docker", "inspect", "-f", lab::IP_FORMAT, "web"]))
        .trim()
        .to_string();
    let mut answer = String::new();
    wait_until(
        Duration::from_secs(30),
        "web.service.consul from machine 1",
        || {
            let call = machines[1].exec(&[
            "docker", "run", "--rm", TEST_IMAGE, "sh", "-c",
            "nslookup web.service.consul && timeout 10 wget -q -O - http://web.service.consul:8080/cgi-bin/whoami",
        ]);
            answer = stdout(&call);
            call.status.success()
        },
    );
    assert!(answer.contains(&web_ip), "{answer}");
    // The caller's own container address arrives (no NAT on the overlay).
    assert!(
        answer.contains(&format!("10.{}.", lab.hosts[1].address)),
        "{answer}"
    );

    // `systemctl reload arpanetd` applies a changed containers.d file.
    machines[1].write_file(
        "/etc/arpanet/containers.d/hello.toml",
        &fixture("containers.d/hello.toml"),
    );
    assert_success(
        &machines[1].exec(&["systemctl", "reload", "arpanetd.service"]),
        "systemctl reload arpanetd",
    );
    wait_until(
        Duration::from_secs(30),
        "hello running on machine 1",
        || {
            !stdout(&machines[1].exec(&["docker", "ps", "--filter", "name=hello", "-q"]))
                .trim()
                .is_empty()
        },
    );
    assert!(active(&machines[1], "arpanetd.service"));

    // An image pushed on machine 2 and pulled on machine 0, each sync service started
    // by its socket: machine 2's by arpanetd when machine 0's pull asks it to seed.
    let push = machines[2].exec(&["arpanet", "image", "push", "--torrent", TEST_IMAGE]);
    assert_success(&push, "arpanet image push");
    assert!(active(&machines[2], "arpanet-sync.service"));
    assert_success(
        &machines[2].exec(&["systemctl", "stop", "arpanet-sync.service"]),
        "stop machine 2's sync service",
    );
    assert!(active(&machines[2], "arpanet-sync.socket"));
    assert!(!active(&machines[0], "arpanet-sync.service"));
    let pull = machines[0].exec(&["arpanet", "image", "pull", TEST_IMAGE]);
    assert_success(&pull, "arpanet image pull on machine 0");
    assert!(active(&machines[0], "arpanet-sync.service"));
    assert!(
        active(&machines[2], "arpanet-sync.service"),
        "machine 2's sync service was not started to seed"
    );
    let id = |m: &Machine| {
        stdout(&m.exec(&["docker", "image", "inspect", "-f", "{{.Id}}", TEST_IMAGE]))
            .trim()
            .to_string()
    };
    assert_eq!(id(&machines[0]), id(&machines[2]));
    assert!(id(&machines[0]).starts_with("sha256:"));

    // The node registry under the packaged, sandboxed arpanetd: pushed on machine 1
    // with plain docker, pulled by the same name on machine 0.
    let name = "127.0.0.1:7102/pkg/busybox:1";
    assert_success(
        &machines[1].exec(&["docker", "tag", TEST_IMAGE, name]),
        "docker tag",
    );
    assert_success(
        &machines[1].exec(&["docker", "push", name]),
        "docker push to machine 1's registry",
    );
    assert_success(
        &machines[0].exec(&["docker", "pull", name]),
        "docker pull from machine 0's registry",
    );
    let id_of = |m: &Machine| {
        stdout(&m.exec(&["docker", "image", "inspect", "-f", "{{.Id}}", name]))
            .trim()
            .to_string()
    };
    assert_eq!(id_of(&machines[0]), id_of(&machines[1]));
}
