//! The `arpanet` binary as a user runs it.

use crate::fixture;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn arpanet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arpanet"))
        .args(args)
        .env_remove("ARPANET_CONFIG")
        .output()
        .expect("run arpanet")
}

fn example_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/arpanet/arpanet.toml")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn info_json_prints_the_plan_of_the_example_config() {
    let out = arpanet(&[
        "--config",
        example_config().to_str().unwrap(),
        "info",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(plan["address"], "0.1");
    assert_eq!(plan["role"], "boot");
    assert_eq!(plan["overlay_ip"], "10.255.0.1");
    assert_eq!(plan["docker_ip"], "10.254.0.1");
    assert_eq!(plan["consul_ip"], "10.253.0.1");
    assert_eq!(plan["container_subnet"], "10.0.1.0/24");
}

#[test]
fn config_path_comes_from_the_environment_too() {
    let out = Command::new(env!("CARGO_BIN_EXE_arpanet"))
        .args(["info", "--json"])
        .env("ARPANET_CONFIG", example_config())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn info_table_names_every_plane() {
    let out = arpanet(&["--config", example_config().to_str().unwrap(), "info"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "10.255.0.1",
        "tcp://10.254.0.1:2376",
        "10.253.0.1",
        "10.0.1.0/24",
    ] {
        assert!(text.contains(expected), "{expected} missing from:\n{text}");
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn unknown_key_is_refused_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "a.toml", &fixture("config/unknown-key.toml"));
    for verb in ["info", "check"] {
        let out = arpanet(&["--config", cfg.to_str().unwrap(), verb]);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "one clear line: {err}");
        assert!(
            err.starts_with(&format!(
                "{}:4:1: unknown field `underlay_iface`",
                cfg.display()
            )),
            "{err}"
        );
    }
}

#[test]
fn out_of_range_address_is_refused_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "a.toml",
        &fixture("config/address-out-of-range.toml"),
    );
    let out = arpanet(&["--config", cfg.to_str().unwrap(), "check"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).starts_with(&format!(
            "{}:2:11: node.address: `0.300` is out of range",
            cfg.display()
        )),
        "{}",
        stderr(&out)
    );
}

#[test]
fn check_reports_every_broken_containers_file() {
    let dir = tempfile::tempdir().unwrap();
    let cd = dir.path().join("containers.d");
    std::fs::create_dir(&cd).unwrap();
    let cfg = write(
        dir.path(),
        "arpanet.toml",
        &format!(
            "[node]\naddress = \"0.1\"\nrole = \"boot\"\n[paths]\ncontainers_dir = {:?}\n",
            cd
        ),
    );
    write(&cd, "good.toml", &fixture("containers.d/good.toml"));
    let ok = arpanet(&["--config", cfg.to_str().unwrap(), "check"]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("1 container(s) ok"));

    write(&cd, "bad1.toml", &fixture("containers.d/no-tag.toml"));
    write(
        &cd,
        "bad2.toml",
        &fixture("containers.d/port-out-of-range.toml"),
    );
    let out = arpanet(&["--config", cfg.to_str().unwrap(), "check"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].contains("bad1.toml:3:9: container[0].image: image `busybox` has no tag"),
        "{err}"
    );
    assert!(
        lines[1].contains("bad2.toml:4:24: container[0].ports[0].container:"),
        "{err}"
    );
}

#[test]
fn help_lists_every_subcommand() {
    let out = arpanet(&["--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for verb in [
        "info", "check", "service", "template", "ps", "start", "stop", "restart", "rm", "inspect",
        "node", "images",
    ] {
        assert!(
            text.lines().any(|l| l.trim_start().starts_with(verb)),
            "{verb} missing:\n{text}"
        );
    }
}

#[test]
fn bad_arguments_get_a_usage_error() {
    let out = arpanet(&["info", "--jsn"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--jsn"));
}

#[test]
fn a_missing_consul_binary_says_where_to_get_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "a.toml",
        &fixture("config/consul-binary-missing.toml"),
    );
    let out = arpanet(&["--config", cfg.to_str().unwrap(), "consul-agent"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent/consul does not exist"), "{err}");
    assert!(err.contains("HashiCorp's apt or rpm repository"), "{err}");
}

#[test]
fn an_unreachable_consul_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    // Port 1 on loopback: nothing listens, so the connection is refused at once.
    let cfg = write(
        dir.path(),
        "a.toml",
        &fixture("config/consul-unreachable.toml"),
    );
    for args in [&["members"][..], &["kv", "get", "some/key"][..]] {
        let mut full = vec!["--config", cfg.to_str().unwrap()];
        full.extend_from_slice(args);
        let out = arpanet(&full);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert_eq!(
            err.trim(),
            "error: cannot reach Consul at 127.0.0.1:1: connection refused (is the agent running? `arpanet status` tells)",
            "{args:?}"
        );
    }
}

#[test]
fn secret_is_created_once_and_installed_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    let cfg = write(
        dir.path(),
        "a.toml",
        &format!(
            "[node]\naddress = \"0.1\"\nrole = \"boot\"\n[cluster]\nsecret_file = {secret:?}\n"
        ),
    );
    let made = arpanet(&["--config", cfg.to_str().unwrap(), "secret"]);
    assert!(made.status.success(), "{}", stderr(&made));
    let value = String::from_utf8_lossy(&made.stdout).trim().to_string();
    assert_eq!(std::fs::read_to_string(&secret).unwrap().trim(), value);
    assert!(stderr(&made).contains(&format!("arpanet secret --set {value}")));
    let again = arpanet(&["--config", cfg.to_str().unwrap(), "secret"]);
    assert!(
        !again.status.success(),
        "an existing secret is not replaced silently"
    );
    assert!(stderr(&again).contains("--force"));
}

#[test]
fn cluster_verbs_without_arpanetd_are_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let cfg = write(
        dir.path(),
        "a.toml",
        &format!("[node]\naddress = \"0.1\"\nrole = \"boot\"\n[paths]\nrun_dir = {run:?}\n"),
    );
    let socket = run.join("api.sock");
    for args in [
        &["ps", "--all"][..],
        &["service", "ls"][..],
        &["stop", "abc"][..],
        &["node", "drain", "0.2"][..],
        &["image", "ls"][..],
        &["image", "pull", "busybox"][..],
        &["image", "push", "busybox"][..],
    ] {
        let mut full = vec!["--config", cfg.to_str().unwrap()];
        full.extend_from_slice(args);
        let out = arpanet(&full);
        assert!(!out.status.success());
        assert_eq!(
            stderr(&out).trim(),
            format!(
                "error: cannot reach arpanetd at {}: cannot connect (is arpanetd running? are you root?)",
                socket.display()
            ),
            "{args:?}"
        );
    }
}

#[test]
fn service_create_checks_its_arguments_before_asking_arpanetd() {
    let out = arpanet(&["service", "create", "web", "--replicas", "2"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("say what runs: --image IMAGE, --template NAME or --file FILE"),
        "{}",
        stderr(&out)
    );
    let out = arpanet(&[
        "service",
        "create",
        "web",
        "--image",
        "a:1",
        "--template",
        "t",
        "--replicas",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

fn arpanet_with_stdin(args: &[&str], input: &str) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_arpanet"))
        .args(args)
        .env_remove("ARPANET_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run arpanet");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// 32 random bytes, base64, as `arpanet secret` makes them.
fn strong_secret() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).unwrap();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A config whose secret file is in `dir`; returns (config, secret file).
fn secret_config(dir: &Path, role: &str) -> (PathBuf, PathBuf) {
    let secret = dir.join("secret");
    let cfg = write(
        dir,
        "a.toml",
        &format!(
            "[node]\naddress = \"0.2\"\nrole = \"{role}\"\n[cluster]\nsecret_file = {secret:?}\nidentity_dir = {:?}\n",
            dir.join("identity")
        ),
    );
    (cfg, secret)
}

#[test]
fn a_join_with_the_old_secret_flags_is_refused_pointing_at_token_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, secret) = secret_config(dir.path(), "server");
    let before = std::fs::read_to_string(&cfg).unwrap();
    let cfg = cfg.to_str().unwrap();
    let copy = write(dir.path(), "copy", &format!("{}\n", strong_secret()));
    let copy = copy.to_str().unwrap();
    let seed = ["--config", cfg, "server", "0.2", "--join", "0.1@192.0.2.1"];
    for (flag, value) in [("--secret-file", copy), ("--secret", "-")] {
        let mut args = seed.to_vec();
        args.extend([flag, value, "--no-start"]);
        let out = arpanet_with_stdin(&args, &strong_secret());
        assert!(!out.status.success(), "{flag}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(&format!("{flag}: nodes join with a token now"))
                && err.contains("--token"),
            "{flag}: {err}"
        );
        assert!(!secret.exists(), "{flag}: no secret written");
        assert_eq!(std::fs::read_to_string(cfg).unwrap(), before, "{flag}");
    }
}

#[test]
fn a_malformed_token_is_refused_naming_the_flag_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, secret) = secret_config(dir.path(), "client");
    let before = std::fs::read_to_string(&cfg).unwrap();
    let cfg = cfg.to_str().unwrap();
    let seed = ["--config", cfg, "client", "0.2", "--join", "0.1@192.0.2.1"];
    let digest = "ab".repeat(32);
    let v2 = format!("ARPN-2-{digest}-{}", "0".repeat(32));
    for (extra, stdin, want) in [
        (
            vec!["--token", "SWMTKN-1-abc-def"],
            String::new(),
            "--token: join token: not ARPN-1-<CA digest>-<secret>",
        ),
        (
            vec!["--token", "-"],
            format!("ARPN-1-{digest}-short\n"),
            "--token -: join token: its secret is not 32 lower-case hex digits",
        ),
        (
            vec!["--token", v2.as_str()],
            String::new(),
            "--token: join token: version 2",
        ),
    ] {
        let mut args = seed.to_vec();
        args.extend(extra.iter().copied());
        args.push("--no-start");
        let out = arpanet_with_stdin(&args, &stdin);
        assert!(!out.status.success(), "{extra:?}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(want), "{extra:?}: {err}");
        assert!(!secret.exists(), "{extra:?}: no secret written");
        assert!(
            !dir.path().join("identity").exists(),
            "{extra:?}: no identity written"
        );
        assert_eq!(std::fs::read_to_string(cfg).unwrap(), before, "{extra:?}");
    }
    // Without a token a node that never joined is told what to give.
    let out = arpanet(&[seed.as_slice(), &["--no-start"]].concat());
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--token: this node has not joined yet"),
        "{}",
        stderr(&out)
    );

    let out = arpanet(&["--config", cfg, "secret", "--set", &"A".repeat(44)]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--set: the cluster secret is weaker than 128 bits"),
        "{}",
        stderr(&out)
    );
    assert!(!secret.exists());
}

#[test]
fn secret_set_reads_stdin_or_a_file_and_force_leaves_the_file_0600() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, secret) = secret_config(dir.path(), "boot");
    let cfg = cfg.to_str().unwrap();

    let piped = strong_secret();
    let out = arpanet_with_stdin(&["--config", cfg, "secret", "--set", "-"], &piped);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&secret).unwrap().trim(), piped);
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&piped));
    assert_eq!(mode(&secret), 0o600);

    // An existing 0644 file, replaced with --force, is 0600 afterwards.
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let copy = write(dir.path(), "copy", &strong_secret());
    let out = arpanet(&[
        "--config",
        cfg,
        "secret",
        "--set-file",
        copy.to_str().unwrap(),
        "--force",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(&secret).unwrap().trim(),
        std::fs::read_to_string(&copy).unwrap()
    );
    assert_eq!(mode(&secret), 0o600);

    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = arpanet(&["--config", cfg, "secret", "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let made = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(std::fs::read_to_string(&secret).unwrap().trim(), made);
    assert_eq!(mode(&secret), 0o600);

    let missing = dir.path().join("missing");
    let out = arpanet(&[
        "--config",
        cfg,
        "secret",
        "--set-file",
        missing.to_str().unwrap(),
    ]);
    assert!(
        stderr(&out).contains(&format!("--set-file: read {}", missing.display())),
        "{}",
        stderr(&out)
    );
}
