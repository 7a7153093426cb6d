//! arpanetd as a process: a bad config on reload is reported and changes nothing.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn wait_for_log(log: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the log:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(pid: u32, sig: &str) {
    assert!(
        Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
}

#[test]
fn reload_keeps_running_on_a_broken_config_and_applies_a_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("arpanet.toml");
    let log = dir.path().join("arpanetd.log");
    let good = "[node]\naddress = \"0.1\"\nrole = \"boot\"\n";
    std::fs::write(&cfg, good).unwrap();
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_arpanetd"))
        .arg("--config")
        .arg(&cfg)
        .env_remove("JOURNAL_STREAM")
        .env_remove("NOTIFY_SOCKET")
        .stderr(std::fs::File::create(&log).unwrap())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = daemon.id();
    wait_for_log(&log, "arpanetd ready");

    std::fs::write(
        &cfg,
        "[node]\naddress = \"0.1\"\nrole = \"boot\"\nbogus = 1\n",
    )
    .unwrap();
    signal(pid, "-HUP");
    let text = wait_for_log(&log, "keeping the running configuration");
    assert!(
        text.contains(&format!("{}:4:1: unknown field `bogus`", cfg.display())),
        "{text}"
    );
    assert!(
        daemon.try_wait().unwrap().is_none(),
        "arpanetd exited on a bad config"
    );

    std::fs::write(&cfg, good).unwrap();
    signal(pid, "-HUP");
    wait_for_log(&log, "configuration reloaded");

    signal(pid, "-TERM");
    let status = daemon.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn a_broken_config_at_start_fails_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("arpanet.toml");
    std::fs::write(&cfg, "[node]\naddress = \"1.2.3\"\n").unwrap();
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
}
