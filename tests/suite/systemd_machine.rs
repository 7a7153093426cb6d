//! arpanetd under a real systemd (systemd-nspawn machines in lab namespaces):
//! Docker reconfigured and restarted over D-Bus, resolved told about `~consul`.

use crate::fixture;
use crate::lab;
use crate::lab::machine::{self, Machine};
use crate::lab::{Host, Lab, assert_success, stdout};

fn config(me: &Host, peer: &Host) -> String {
    format!(
        "[node]\naddress = \"{}\"\nrole = \"{}\"\nunderlay_interface = \"eth1\"\n\
         join = [{{ address = \"{}\", ip = \"{}\" }}]\n[consul]\nmode = \"disabled\"\n",
        me.address,
        if me.index == 0 { "boot" } else { "server" },
        peer.address,
        peer.underlay_ip
    )
}

/// Gives the machine of host `index` an identity from the lab's CA in
/// /etc/arpanet/identity, as joining leaves it (the key 0600).
fn install_identity(lab: &Lab, index: usize, m: &Machine) {
    lab.enroll(index, arpanet::identity::Role::Server);
    let files = lab.hosts[index].identity_files();
    for (from, name) in [
        (files.ca_cert(), "ca.pem"),
        (files.node_cert(), "cert.pem"),
        (files.node_key(), "key.pem"),
    ] {
        let path = format!("/etc/arpanet/identity/{name}");
        m.write_file(&path, &std::fs::read_to_string(from).unwrap());
    }
    assert_success(
        &m.exec(&["chmod", "600", "/etc/arpanet/identity/key.pem"]),
        "chmod key.pem",
    );
}

fn once(m: &Machine) -> Vec<String> {
    lab::once_changes(&m.exec(&["arpanetd", "--once"]))
}

#[test]
fn docker_is_reconfigured_over_dbus_and_reachable_on_the_overlay_only() {
    require_lab!(machines);
    let _turn = machine::take_turn();
    let base = machine::base_tree();
    let lab = Lab::builder(2).start();
    let (h0, h1) = (&lab.hosts[0], &lab.hosts[1]);
    let m0 = Machine::boot(h0, &base);
    let m1 = Machine::boot(h1, &base);
    m0.write_file("/etc/arpanet/arpanet.toml", &config(h0, h1));
    m1.write_file("/etc/arpanet/arpanet.toml", &config(h1, h0));
    // One cluster secret on both: a join peer is programmed once its hello proves it.
    assert_success(&m0.exec(&["arpanet", "secret"]), "arpanet secret");
    m1.write_file("/etc/arpanet/secret", &m0.read_file("/etc/arpanet/secret"));
    install_identity(&lab, 0, &m0);
    install_identity(&lab, 1, &m1);
    m0.write_file(
        "/etc/docker/daemon.json",
        "{\n  \"log-driver\": \"local\"\n}\n",
    );
    assert_eq!(m0.unit_property("docker.service", "ActiveState"), "active");
    let pid_before = m0.unit_property("docker.service", "MainPID");

    let changes = once(&m0);
    assert!(
        changes.contains(&"docker: restarted docker.service".to_string()),
        "{changes:?}"
    );
    assert!(
        changes
            .iter()
            .any(|c| c.starts_with("resolved: ~consul via 10.253.0.1")),
        "{changes:?}"
    );
    assert_eq!(m0.unit_property("docker.service", "ActiveState"), "active");
    assert_ne!(
        m0.unit_property("docker.service", "MainPID"),
        pid_before,
        "dockerd was not restarted"
    );
    let dropin = m0.read_file("/etc/systemd/system/docker.service.d/arpanet.conf");
    assert!(
        dropin.contains("ExecStart=\nExecStart=/usr/sbin/dockerd --containerd="),
        "{dropin}"
    );
    assert!(!dropin.contains("fd://"), "{dropin}");
    let json = m0.read_file("/etc/docker/daemon.json");
    assert!(
        json.contains("\"log-driver\": \"local\"")
            && json.contains("unix:///var/run/docker.sock")
            && !json.contains("tcp://")
            && !json.contains("tls"),
        "dockerd on its unix socket only (arpanetd holds 2376 and the TLS): {json}"
    );
    let driver = m0.exec(&["docker", "info", "--format", "{{.LoggingDriver}}"]);
    assert_eq!(
        stdout(&driver).trim(),
        "local",
        "dockerd runs with the merged daemon.json"
    );

    // Nothing changed, so nothing is restarted.
    let pid_after = m0.unit_property("docker.service", "MainPID");
    let again = once(&m0);
    assert!(!again.iter().any(|c| c.contains("docker")), "{again:?}");
    assert_eq!(m0.unit_property("docker.service", "MainPID"), pid_after);

    // The host resolves *.consul through the overlay device.
    assert!(stdout(&m0.exec(&["resolvectl", "dns", "arpanet0"])).contains("10.253.0.1"));
    assert!(stdout(&m0.exec(&["resolvectl", "domain", "arpanet0"])).contains("~consul"));

    // The Docker API answers other hosts on the overlay, and not on the underlay. m0's
    // arpanetd runs as its unit, so it answers the hello of m1's pass and admits m1.
    assert_success(
        &m0.exec(&["systemctl", "start", "arpanetd.service"]),
        "systemctl start arpanetd",
    );
    let admitted = once(&m1);
    let fdb = format!("network: add fdb 02:61:72:70:00:01 dst {}", h0.underlay_ip);
    assert!(admitted.contains(&fdb), "{admitted:?}");
    // With TLS: m1's certificate through `arpanet docker-env`, and nothing without it.
    let remote = m1.exec(&[
        "sh",
        "-c",
        "eval \"$(arpanet docker-env 0.1)\" && docker version --format '{{.Server.Version}}'",
    ]);
    assert_success(
        &remote,
        "docker version against 0.1 from the other machine, after docker-env",
    );
    let plain = m1.exec(&["docker", "-H", "tcp://10.254.0.1:2376", "version"]);
    assert!(
        !plain.status.success(),
        "the Docker API answered a client without a certificate"
    );
    let old = m1.exec(&[
        "timeout",
        "10",
        "docker",
        "-H",
        "tcp://10.254.0.1:2375",
        "version",
    ]);
    assert!(!old.status.success(), "something answers on 2375");
    let underlay = format!("tcp://{}:2376", h0.underlay_ip);
    let refused = m1.exec(&[
        "sh",
        "-c",
        &format!("eval \"$(arpanet docker-env 0.1)\" && timeout 10 docker -H {underlay} version"),
    ]);
    assert!(
        !refused.status.success(),
        "the Docker API answered on the underlay address"
    );

    // Uninstall puts the user's daemon.json back and restarts Docker without the drop-in.
    assert_success(
        &m0.exec(&["systemctl", "stop", "arpanetd.service"]),
        "systemctl stop arpanetd",
    );
    assert_success(
        &m0.exec(&["arpanet", "uninstall-network"]),
        "arpanet uninstall-network",
    );
    assert_eq!(
        m0.read_file("/etc/docker/daemon.json"),
        "{\n  \"log-driver\": \"local\"\n}\n"
    );
    assert!(
        !m0.exec(&[
            "test",
            "-e",
            "/etc/systemd/system/docker.service.d/arpanet.conf"
        ])
        .status
        .success()
    );
    assert_eq!(m0.unit_property("docker.service", "ActiveState"), "active");
    assert!(
        !m0.exec(&["ip", "link", "show", "arpanet0"])
            .status
            .success()
    );

    lab.teardown().expect("teardown");
}

#[test]
fn consul_runs_as_a_unit_and_answers_dns_for_containers_and_the_host() {
    require_lab!(machines);
    let _turn = machine::take_turn();
    let base = machine::base_tree();
    let lab = Lab::builder(1).start();
    let m0 = Machine::boot(&lab.hosts[0], &base);
    m0.write_file(
        "/etc/arpanet/arpanet.toml",
        &fixture("config/machine-boot-alone.toml"),
    );
    // The boot node's cluster as `arpanet boot` makes it (secret, CA, certificate,
    // Consul's ACL tokens), without starting anything: this test drives `--once`.
    assert_success(
        &m0.exec(&["arpanet", "boot", "0.1", "--no-start"]),
        "arpanet boot --no-start",
    );

    let changes = once(&m0);
    assert!(
        changes.contains(&"docker: restarted docker.service".to_string()),
        "{changes:?}"
    );
    assert!(
        changes.contains(&"consul: restarted arpanet-consul.service".to_string()),
        "{changes:?}"
    );
    assert_eq!(
        m0.unit_property("arpanet-consul.service", "ActiveState"),
        "active"
    );
    lab::wait_until(
        std::time::Duration::from_secs(60),
        "a leader and this node registered",
        || {
            once(&m0);
            let s = m0.exec(&["arpanet", "status", "--json"]);
            let s: serde_json::Value = serde_json::from_slice(&s.stdout).unwrap_or_default();
            !s["consul"]["leader"].is_null()
                && stdout(&m0.exec(&["arpanet", "members"])).contains("alive")
        },
    );
    // Consul's DNS is bound on the bridge too, since Docker's bridge existed when the
    // config was rendered.
    let rendered = m0.read_file("/var/lib/arpanet/consul/config.json");
    assert!(
        rendered.contains("\"dns\": \"10.253.0.1 10.0.1.1\""),
        "{rendered}"
    );
    let pid = m0.unit_property("arpanet-consul.service", "MainPID");
    let again = once(&m0);
    assert!(
        !again.iter().any(|c| c.starts_with("consul: ")),
        "{again:?}"
    );
    assert_eq!(
        m0.unit_property("arpanet-consul.service", "MainPID"),
        pid,
        "no restart without a change"
    );

    // A container finds services by name through Consul (search domain service.consul).
    m0.import_test_image();
    lab::wait_until(
        std::time::Duration::from_secs(30),
        "this node in the catalog",
        || {
            once(&m0);
            m0.exec(&["consul", "catalog", "services"])
                .stdout
                .starts_with(b"arpanet")
        },
    );
    let lookup = m0.exec(&[
        "docker",
        "run",
        "--rm",
        lab::TEST_IMAGE,
        "nslookup",
        "arpanet.service.consul",
    ]);
    assert_success(&lookup, "nslookup in a container");
    assert!(
        stdout(&lookup).contains("10.255.0.1"),
        "{}",
        stdout(&lookup)
    );
    let short = m0.exec(&[
        "docker",
        "run",
        "--rm",
        lab::TEST_IMAGE,
        "nslookup",
        "arpanet",
    ]);
    assert!(
        stdout(&short).contains("10.255.0.1"),
        "the search domain: {}",
        stdout(&short)
    );
    // And so does the host itself, through systemd-resolved's ~consul routing domain.
    let host = m0.exec(&["resolvectl", "query", "arpanet.service.consul"]);
    assert_success(&host, "resolvectl query");
    assert!(stdout(&host).contains("10.255.0.1"), "{}", stdout(&host));

    lab.teardown().expect("teardown");
}

/// A machine outlives a SIGKILLed nspawn (teardown's last resort); teardown ends it.
#[test]
fn teardown_ends_a_machine_whose_nspawn_was_killed() {
    require_lab!(machines);
    let _turn = machine::take_turn();
    let base = machine::base_tree();
    let lab = Lab::builder(1).start();
    let m = Machine::boot(&lab.hosts[0], &base);
    let leader = m.leader;
    let nspawn = std::fs::read_to_string(lab.hosts[0].dir.join("machine.pid.spawned")).unwrap();
    assert_success(
        &std::process::Command::new("kill")
            .args(["-KILL", nspawn.trim()])
            .output()
            .unwrap(),
        "kill nspawn",
    );
    let alive = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit(") ")
                .next()
                .is_some_and(|s| !s.starts_with('Z'))
        })
    };
    drop(m);
    lab.teardown().expect("teardown");
    assert!(
        !alive(leader),
        "teardown left the machine's systemd running"
    );
}

/// The boot flake's reproducer (issue 13): machines booted as the tests boot them,
/// LAB_BOOT_AT_ONCE (2) at a time, LAB_BOOT_ROUNDS (10) times; every boot must come up
/// with no failed unit. Ignored: `cargo test --test suite -- --ignored --exact
/// systemd_machine::machines_boot_cleanly_again_and_again`.
#[test]
#[ignore = "slow: the boot loop for the machine-boot flake"]
fn machines_boot_cleanly_again_and_again() {
    assert!(lab::available() && machine::available());
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (rounds, at_once) = (env("LAB_BOOT_ROUNDS", 10), env("LAB_BOOT_AT_ONCE", 2));
    let base = machine::base_tree();
    let mut failed = 0;
    for round in 0..rounds {
        let lab = Lab::builder(at_once).start();
        std::thread::scope(|s| {
            let boots: Vec<_> = lab
                .hosts
                .iter()
                .map(|h| s.spawn(|| drop(Machine::boot(h, &base))))
                .collect();
            for (i, boot) in boots.into_iter().enumerate() {
                if boot.join().is_err() {
                    eprintln!("round {round}: machine {i} failed to boot");
                    failed += 1;
                }
            }
        });
        lab.teardown().expect("teardown");
    }
    eprintln!("boot loop: {} boots, {failed} failed", rounds * at_once);
    assert_eq!(failed, 0);
}
