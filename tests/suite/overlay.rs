//! The VXLAN overlay between lab hosts, programmed by arpanetd over netlink.
//! Every packet here stays inside the lab's namespaces.

use crate::lab;
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::lab::{Dockerd, Host, Lab, TEST_IMAGE, assert_success, stdout, wait_until};

fn ping(from: &Host, to: Ipv4Addr) -> bool {
    from.exec(&["ping", "-c", "1", "-W", "2", &to.to_string()])
        .status
        .success()
}

fn status_json(host: &Host) -> serde_json::Value {
    let out = host.arpanet(&["status", "--json"]);
    assert_success(&out, "arpanet status --json");
    serde_json::from_slice(&out.stdout).expect("status JSON")
}

/// Whether `host` has `expected` peers, each with every overlay entry ("ok") and
/// admitted by its firewall ([`Host::admits`]).
fn peers_ok(host: &Host, expected: usize) -> bool {
    let s = status_json(host);
    let peers = s["peers"].as_array().cloned().unwrap_or_default();
    peers.len() == expected
        && peers.iter().all(|p| {
            p["state"] == "ok" && p["underlay_ip"].as_str().is_some_and(|ip| host.admits(ip))
        })
}

/// The first IPv4 address `ip -4 -o addr show eth0` prints.
fn first_inet(text: &str) -> Ipv4Addr {
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|c| c.split('/').next())
        .and_then(|ip| ip.parse().ok())
        .unwrap_or_else(|| panic!("no inet address in {text:?}"))
}

#[test]
fn hosts_reach_each_other_on_every_plane_and_containers_by_ip() {
    require_lab!();
    let lab = Lab::builder(3).start();
    // A key of the user's, which arpanet must keep when it adds its own.
    std::fs::write(
        lab.hosts[0].daemon_json(),
        "{\n  \"log-driver\": \"local\"\n}\n",
    )
    .unwrap();
    lab.write_arpanet_configs("[consul]\nmode = \"disabled\"\n");
    for host in &lab.hosts {
        host.start_arpanetd();
    }
    for host in &lab.hosts {
        wait_until(
            Duration::from_secs(20),
            &format!("{}'s peers to be programmed", host.netns),
            || peers_ok(host, 2),
        );
    }

    for from in &lab.hosts {
        for to in lab.hosts.iter().filter(|t| t.index != from.index) {
            let a = to.address;
            for ip in [a.overlay_ip(), a.docker_api_ip(), a.consul_ip()] {
                assert!(
                    ping(from, ip),
                    "{} cannot ping {} ({})",
                    from.netns,
                    ip,
                    to.netns
                );
            }
        }
    }

    // dockerd configured only by the daemon.json arpanet wrote.
    for host in &lab.hosts {
        host.start_dockerd(Dockerd::ConfigFile(host.daemon_json()));
    }
    for host in &lab.hosts {
        host.wait_for_dockerd();
        host.import_test_image();
    }
    // dockerd puts its MASQUERADE first when it starts; arpanetd moves its exemption
    // back above it within a resync period.
    for host in &lab.hosts {
        wait_until(
            Duration::from_secs(5),
            "arpanet's NAT exemption to be first again",
            || {
                let rules = stdout(&host.exec(&["iptables", "-t", "nat", "-S", "POSTROUTING"]));
                rules.lines().find(|l| l.starts_with("-A "))
                    == Some("-A POSTROUTING -j ARPANET-POSTROUTING")
            },
        );
    }
    let json = std::fs::read_to_string(lab.hosts[0].daemon_json()).unwrap();
    assert!(
        json.contains("\"log-driver\": \"local\""),
        "user key lost:\n{json}"
    );
    let driver = lab.hosts[0].docker(&["info", "--format", "{{.LoggingDriver}}"]);
    assert_eq!(stdout(&driver).trim(), "local");

    // A web server in a container on host 0, called from a container on host 1.
    let (server, client) = (&lab.hosts[0], &lab.hosts[1]);
    let run = server.docker(&[
        "run", "-d", "--name", "web", TEST_IMAGE, "httpd", "-f", "-p", "8080", "-h", "/www",
    ]);
    assert_success(&run, "docker run httpd");
    let ip = server.docker(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", "web"]);
    let server_ip: Ipv4Addr = stdout(&ip).trim().parse().expect("container IP");
    assert!(server.address.container_subnet().contains(server_ip));
    let url = format!("http://{server_ip}:8080/cgi-bin/whoami");
    let call = client.docker(&[
        "run",
        "--rm",
        TEST_IMAGE,
        "sh",
        "-c",
        // busybox 1.35's static wget crashes when given -T; `timeout` bounds it instead.
        &format!("ip -4 -o addr show eth0; echo ---; timeout 10 wget -q -O - {url}"),
    ]);
    assert_success(&call, "cross-host wget");
    let text = stdout(&call);
    let (own, answer) = text.split_once("---").expect("both parts");
    let client_ip = first_inet(own);
    assert!(client.address.container_subnet().contains(client_ip));
    // busybox httpd listens on IPv6 and reports IPv4 callers as [::ffff:a.b.c.d].
    let seen = answer
        .trim()
        .trim_start_matches("[::ffff:")
        .trim_end_matches(']');
    assert_eq!(
        seen,
        client_ip.to_string(),
        "the server must see the caller's own address (no NAT)"
    );

    // The Docker API answers on the overlay from another host that shows its cluster
    // certificate (TLS, tlsverify), and not on the underlay.
    let api = format!("https://{}:2376/version", server.address.docker_api_ip());
    let id = client.identity_files();
    let (ca, cert, key) = (id.ca_cert(), id.node_cert(), id.node_key());
    let version = client.exec(&[
        "curl",
        "-sS",
        "--max-time",
        "10",
        "--cacert",
        ca.to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        &api,
    ]);
    assert_success(&version, "GET /version over the overlay, with TLS");
    assert!(
        stdout(&version).contains("ApiVersion"),
        "{}",
        stdout(&version)
    );
    // A container reaches 10.254.a.b over the overlay too, but is turned away there by
    // the firewall (before TLS would): only the node planes may use the Docker API.
    let plain = format!("http://{}:2376/version", server.address.docker_api_ip());
    let from_container = client.docker(&[
        "run",
        "--rm",
        TEST_IMAGE,
        "sh",
        "-c",
        &format!("timeout 10 wget -q -O - {plain}; echo exit=$?"),
    ]);
    let text = format!(
        "{}{}",
        stdout(&from_container),
        String::from_utf8_lossy(&from_container.stderr)
    );
    assert!(
        text.contains("exit=1") && !text.contains("ApiVersion") && !text.contains("400"),
        "a container reached the Docker API: {text}"
    );
    for port in [2375, 2376] {
        let underlay = format!("https://{}:{port}/version", server.underlay_ip);
        let refused = client.exec(&[
            "curl",
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            ca.to_str().unwrap(),
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            &underlay,
        ]);
        assert!(
            !refused.status.success(),
            "the Docker API must not answer on the underlay address (port {port})"
        );
    }

    let s = status_json(server);
    assert_eq!(s["device"]["vni"], 1);
    assert_eq!(
        s["device"]["learning"], false,
        "nothing may be learned from traffic"
    );
    assert!(stdout(&server.exec(&["ip", "-d", "link", "show", "arpanet0"])).contains("nolearning"));
    assert_eq!(s["addresses"].as_array().unwrap().len(), 3);

    lab.teardown().expect("teardown");
}

/// What `ip` and `iptables` show of arpanet's state on a host.
fn dump(host: &Host) -> String {
    let cmds: [&[&str]; 7] = [
        &["ip", "-d", "link", "show", "arpanet0"],
        &["ip", "-4", "addr", "show", "dev", "arpanet0"],
        &["ip", "neigh", "show", "dev", "arpanet0", "nud", "permanent"],
        &["bridge", "fdb", "show", "dev", "arpanet0"],
        &["ip", "route", "show", "proto", "97"],
        &["iptables", "-S"],
        &["iptables", "-t", "nat", "-S"],
    ];
    cmds.iter()
        .map(|c| format!("$ {}\n{}", c.join(" "), stdout(&host.exec(c))))
        .collect()
}

fn once_changes(host: &Host) -> Vec<String> {
    lab::once_changes(&host.arpanetd_once())
}

#[test]
fn reconcile_is_idempotent_heals_and_removes_peers() {
    require_lab!();
    let lab = Lab::builder(3).start();
    lab.write_arpanet_configs("[consul]\nmode = \"disabled\"\n");
    let host = &lab.hosts[0];
    // The others run, so they answer the hellos by which `--once` admits them.
    for other in &lab.hosts[1..] {
        other.start_arpanetd();
    }
    wait_until(
        Duration::from_secs(20),
        "hosts 1 and 2 to admit each other",
        || {
            status_json(&lab.hosts[1])["peers"]
                .as_array()
                .is_some_and(|p| {
                    p.iter()
                        .any(|p| p["address"] == "0.3" && p["state"] == "ok")
                })
        },
    );

    let first = once_changes(host);
    assert!(
        first.iter().any(|c| c == "network: create device"),
        "{first:?}"
    );
    let before = dump(host);
    assert_eq!(
        once_changes(host),
        Vec::<String>::new(),
        "a second pass must change nothing"
    );
    assert_eq!(
        dump(host),
        before,
        "netlink and iptables state must be identical after a second pass"
    );
    assert_eq!(
        before.matches("-j ARPANET-FORWARD").count(),
        1,
        "one jump, not one per pass:\n{before}"
    );

    host.start_arpanetd();
    // A hand-deleted route comes back within a resync period (1 s here).
    assert_success(
        &host.exec(&["ip", "route", "del", "10.0.2.0/24"]),
        "ip route del",
    );
    wait_until(
        Duration::from_secs(5),
        "the deleted route to come back",
        || {
            stdout(&host.exec(&["ip", "route", "show", "proto", "97"]))
                .contains("10.0.2.0/24 via 10.255.0.2")
        },
    );
    // A device with settings that cannot change in place is recreated.
    // The running daemon may recreate the device between the test's delete and add
    // (its resync is 1 s here): the swap is tried again until the wrong one is in.
    assert_success(
        &host.exec(&[
            "sh",
            "-c",
            "for i in 1 2 3 4 5 6 7 8 9 10; do \
               ip link del arpanet0 2>/dev/null; \
               ip link add arpanet0 type vxlan id 99 dstport 4789 dev eth1 && exit 0; \
             done; exit 1",
        ]),
        "replace arpanet0 by a device with the wrong VNI",
    );
    wait_until(
        Duration::from_secs(5),
        "the device to be recreated with VNI 1",
        || {
            let s = status_json(host);
            s["device"]["vni"] == 1
                && s["peers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|p| p["state"] == "ok")
        },
    );

    // Dropping host 2 from the join list (and reloading) removes all its entries once
    // it falls silent: a node that keeps proving the secret stays admitted.
    lab.hosts[2].stop("arpanetd");
    let config = std::fs::read_to_string(host.config_path()).unwrap();
    let peer2 = format!(
        "{{ address = \"{}\", ip = \"{}\" }}",
        lab.hosts[2].address, lab.hosts[2].underlay_ip
    );
    let edited = config.replace(&format!(", {peer2}"), "");
    assert_ne!(edited, config);
    std::fs::write(host.config_path(), edited).unwrap();
    let pid = std::fs::read_to_string(host.dir.join("arpanetd.pid.spawned")).unwrap();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", pid.trim()])
            .status()
            .unwrap()
            .success()
    );
    wait_until(
        Duration::from_secs(40),
        "host 2's entries to be removed (20 s after its last hello)",
        || {
            let d = dump(host);
            !d.contains("10.255.0.3")
                && !d.contains("10.0.3.0/24")
                && !d.contains("02:61:72:70:00:03")
        },
    );
    let d = dump(host);
    assert!(
        d.contains("10.0.2.0/24 via 10.255.0.2"),
        "host 1 must stay:\n{d}"
    );

    // Uninstall removes the device and the rules, and leaves nothing for the daemon to fight.
    host.stop("arpanetd");
    assert_success(
        &host.arpanet(&["uninstall-network"]),
        "arpanet uninstall-network",
    );
    let d = dump(host);
    assert!(!d.contains("ARPANET"), "firewall rules left:\n{d}");
    assert!(
        !host
            .exec(&["ip", "link", "show", "arpanet0"])
            .status
            .success(),
        "device left"
    );

    lab.teardown().expect("teardown");
}
