//! The lab itself: namespaced hosts with real dockerd and Consul, torn down always.

use std::net::Ipv4Addr;
use std::path::Path;

use crate::lab::{Lab, TEST_IMAGE, assert_success, stdout};

#[test]
fn three_hosts_run_containers_and_form_one_consul_cluster() {
    require_lab!();
    let lab = Lab::builder(3).docker().consul(3).start();

    for host in &lab.hosts {
        let out = host.docker(&[
            "run",
            "--rm",
            TEST_IMAGE,
            "echo",
            &format!("hello from {}", host.netns),
        ]);
        assert_success(&out, "docker run");
        assert_eq!(stdout(&out), format!("hello from {}\n", host.netns));

        // The engine's bridge comes from the addressing plan: containers get 10.a.b.x.
        let out = host.docker(&[
            "run", "--rm", TEST_IMAGE, "ip", "-4", "-o", "addr", "show", "eth0",
        ]);
        assert_success(&out, "docker run ip addr");
        let text = stdout(&out);
        let ip: Ipv4Addr = text
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|cidr| cidr.split('/').next())
            .and_then(|ip| ip.parse().ok())
            .unwrap_or_else(|| panic!("no IPv4 address in {text:?}"));
        assert!(
            host.address.container_subnet().contains(ip),
            "{} is outside {}'s container subnet {}",
            ip,
            host.netns,
            host.address.container_subnet()
        );
    }

    for host in &lab.hosts {
        let mut members = host.consul_alive_members();
        members.sort();
        assert_eq!(
            members,
            ["h0", "h1", "h2"],
            "members seen from {}",
            host.netns
        );
    }
    assert_success(
        &lab.hosts[0].consul(&["kv", "put", "lab/greeting", "hi"]),
        "kv put",
    );
    let got = lab.hosts[2].consul(&["kv", "get", "lab/greeting"]);
    assert_success(&got, "kv get");
    assert_eq!(stdout(&got).trim(), "hi");

    // The underlay joins the hosts (and only them: it lives in namespaces of its own).
    let target = lab.hosts[2].underlay_ip.to_string();
    assert_success(
        &lab.hosts[0].exec(&["ping", "-c", "1", "-W", "2", &target]),
        "underlay ping",
    );

    lab.teardown().expect("teardown");
}

#[test]
fn lab_is_torn_down_even_when_the_test_panics() {
    require_lab!();
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::panic::catch_unwind(move || {
        let lab = Lab::builder(1).docker().consul(1).start();
        let host = &lab.hosts[0];
        assert_success(
            &host.docker(&["run", "-d", TEST_IMAGE, "sleep", "600"]),
            "docker run -d",
        );
        let pid = |f: &str| {
            std::fs::read_to_string(host.dir.join(f))
                .unwrap()
                .trim()
                .to_string()
        };
        tx.send((
            lab.name.clone(),
            lab.dir.clone(),
            pid("dockerd.pid"),
            pid("consul.pid.spawned"),
        ))
        .unwrap();
        panic!("a failing test");
    });
    assert!(result.is_err());
    let (name, dir, dockerd, consul) = rx.recv().unwrap();

    let leftover_netns: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !leftover_netns
            .iter()
            .any(|n| n.starts_with(&format!("{name}-"))),
        "{leftover_netns:?}"
    );
    assert!(!dir.exists(), "{} still exists", dir.display());
    for pid in [dockerd, consul] {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.contains(") Z"),
            "pid {pid} still runs: {stat}"
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(dir.to_str().unwrap()),
        "mounts left under {}",
        dir.display()
    );
    assert!(!Path::new(&format!("/run/netns/{name}-ul")).exists());
}
