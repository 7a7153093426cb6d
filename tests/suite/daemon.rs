//! arpanetd as a process: a bad config on reload is reported and changes nothing.
//! It runs inside a lab host, never in this machine's own namespace.

use crate::fixture;
use crate::lab;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::lab::{Lab, wait_until};

#[test]
fn reload_keeps_running_on_a_broken_config_and_applies_a_good_one() {
    require_lab!();
    let lab = Lab::builder(2).start();
    lab.write_arpanet_configs("[consul]\nmode = \"disabled\"\n");
    let host = &lab.hosts[0];
    let cfg = host.config_path();
    let good = std::fs::read_to_string(&cfg).unwrap();
    host.start_arpanetd();
    // Host 1 runs too: a join peer is programmed once its hello proves the secret.
    lab.hosts[1].start_arpanetd();
    wait_until(Duration::from_secs(10), "arpanetd ready", || {
        host.log("arpanetd").contains("arpanetd ready")
    });
    wait_until(Duration::from_secs(15), "host 1 to be admitted", || {
        lab::stdout(&host.exec(&["ip", "route", "show", "proto", "97"])).contains("10.0.2.0/24")
    });
    let routes_before = lab::stdout(&host.exec(&["ip", "route", "show", "proto", "97"]));
    assert!(routes_before.contains("10.0.2.0/24"), "{routes_before}");

    std::fs::write(&cfg, format!("{good}bogus = 1\n")).unwrap();
    let pid = std::fs::read_to_string(host.dir.join("arpanetd.pid.spawned")).unwrap();
    let hup = || {
        assert!(
            Command::new("kill")
                .args(["-HUP", pid.trim()])
                .status()
                .unwrap()
                .success()
        )
    };
    hup();
    wait_until(
        Duration::from_secs(10),
        "the reload error in the log",
        || {
            host.log("arpanetd")
                .contains("keeping the running configuration")
        },
    );
    let log = host.log("arpanetd");
    let line = good.lines().count() + 1;
    assert!(
        log.contains(&format!(
            "{}:{line}:1: unknown field `bogus`",
            cfg.display()
        )),
        "{log}"
    );
    std::thread::sleep(Duration::from_millis(1500));
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
    assert!(
        !stat.is_empty() && !stat.contains(") Z"),
        "arpanetd exited on a bad config"
    );
    // Nothing it had set up was torn down by the bad file.
    assert_eq!(
        lab::stdout(&host.exec(&["ip", "route", "show", "proto", "97"])),
        routes_before
    );

    std::fs::write(&cfg, &good).unwrap();
    hup();
    wait_until(Duration::from_secs(10), "the reload to apply", || {
        host.log("arpanetd").contains("configuration reloaded")
    });

    assert!(
        Command::new("kill")
            .args(["-TERM", pid.trim()])
            .status()
            .unwrap()
            .success()
    );
    wait_until(Duration::from_secs(10), "arpanetd to stop", || {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
        stat.is_empty() || stat.contains(") Z")
    });
    assert!(host.log("arpanetd").contains("arpanetd stopping"));
    lab.teardown().expect("teardown");
}

#[test]
fn a_broken_config_at_start_fails_with_its_position_before_touching_anything() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("arpanet.toml");
    std::fs::write(&cfg, fixture("config/address-not-arpanet.toml")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_arpanetd"))
        .arg("--config")
        .arg(&cfg)
        .env_remove("JOURNAL_STREAM")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:2:11: node.address: `1.2.3` is not an arpanet address",
            cfg.display()
        )),
        "{err}"
    );
    assert!(!Path::new("/sys/class/net/arpanet0").exists());
}
