//! containers.d applied to a real dockerd (a lab host's), by `arpanet up` and arpanetd.

use crate::fixture;
use std::collections::BTreeMap;
use std::time::Duration;

use crate::lab::{Host, Lab, TEST_IMAGE, assert_success, stdout, wait_until};

fn spec(name: &str, mode: &str) -> String {
    format!(
        "[[container]]\nname = \"{name}\"\nimage = \"{TEST_IMAGE}\"\ncommand = [\"sleep\", \"3600\"]\n\
         env = {{ MODE = \"{mode}\" }}\nupdate = {{ pull = false }}\n\n"
    )
}

/// name -> (id, state) of every container arpanet manages on the host.
fn managed(host: &Host) -> BTreeMap<String, (String, String)> {
    let out = host.docker(&[
        "ps",
        "-a",
        "--filter",
        "label=arpanet.managed=true",
        "--format",
        "{{.Names}} {{.ID}} {{.State}}",
    ]);
    assert_success(&out, "docker ps");
    stdout(&out)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_string(), (f[1].to_string(), f[2].to_string()))
        })
        .collect()
}

/// Whether the container now named `name` runs with `env` set. One inspect, so state and
/// env come from the same container: `docker ps` can answer from before a replace (it
/// waits on the old container's lock while that stops) and an inspect from after it.
fn runs_with(host: &Host, name: &str, env: &str) -> bool {
    let out = stdout(&host.docker(&[
        "inspect",
        "-f",
        "{{.State.Status}}\n{{range .Config.Env}}{{println .}}{{end}}",
        name,
    ]));
    out.lines().next() == Some("running") && out.lines().any(|l| l == env)
}

fn up(host: &Host, args: &[&str]) -> std::process::Output {
    let mut full = vec!["up"];
    full.extend_from_slice(args);
    host.arpanet(&full)
}

#[test]
fn containers_d_is_applied_changed_pruned_and_survives_bad_files_and_crashes() {
    require_lab!();
    let (lab, _, dir) = Lab::containers_host();
    let host = &lab.hosts[0];
    std::fs::write(dir.join("a.toml"), spec("web1", "1") + &spec("web2", "1")).unwrap();
    std::fs::write(dir.join("b.toml"), spec("db", "1")).unwrap();
    std::fs::write(dir.join("c.toml"), spec("cache", "1")).unwrap();

    let out = up(host, &[]);
    assert_success(&out, "arpanet up");
    let first = managed(host);
    assert_eq!(
        first.keys().collect::<Vec<_>>(),
        ["cache", "db", "web1", "web2"]
    );
    assert!(
        first.values().all(|(_, state)| state == "running"),
        "{first:?}"
    );
    assert_eq!(stdout(&up(host, &["--dry-run"])), "nothing to do\n");
    let json: serde_json::Value =
        serde_json::from_slice(&up(host, &["--dry-run", "--json"]).stdout).unwrap();
    assert_eq!(json["actions"], serde_json::json!([]));
    assert_eq!(json["diagnostics"], serde_json::json!([]));

    // One env change replaces exactly that container.
    std::fs::write(dir.join("a.toml"), spec("web1", "2") + &spec("web2", "1")).unwrap();
    let plan = stdout(&up(host, &["--dry-run"]));
    assert_eq!(plan.lines().count(), 1, "{plan}");
    assert!(plan.starts_with("replace web1 ("), "{plan}");
    assert_success(&up(host, &[]), "arpanet up after an env change");
    let second = managed(host);
    assert_ne!(
        second["web1"].0, first["web1"].0,
        "web1 must be a new container"
    );
    for other in ["web2", "db", "cache"] {
        assert_eq!(
            second[other].0, first[other].0,
            "{other} must not be touched"
        );
    }
    let env = host.docker(&[
        "inspect",
        "-f",
        "{{range .Config.Env}}{{println .}}{{end}}",
        "web1",
    ]);
    assert!(stdout(&env).contains("MODE=2"));

    // Deleting a file removes its containers; one started by hand is never touched.
    assert_success(
        &host.docker(&[
            "run", "-d", "--name", "handmade", TEST_IMAGE, "sleep", "3600",
        ]),
        "docker run",
    );
    std::fs::remove_file(dir.join("c.toml")).unwrap();
    assert_success(&up(host, &[]), "arpanet up after deleting a file");
    assert!(!managed(host).contains_key("cache"));
    let handmade = host.docker(&["inspect", "-f", "{{.State.Running}}", "handmade"]);
    assert_eq!(stdout(&handmade).trim(), "true");

    // A syntax error names file, line and column, and nothing it declared is removed.
    std::fs::write(
        dir.join("b.toml"),
        fixture("containers.d/syntax-error.toml"),
    )
    .unwrap();
    let broken = up(host, &[]);
    assert!(!broken.status.success());
    let err = String::from_utf8_lossy(&broken.stderr);
    assert!(
        err.lines()
            .next()
            .unwrap()
            .starts_with(&format!("{}:3:", dir.join("b.toml").display())),
        "{err}"
    );
    assert_eq!(
        managed(host)["db"],
        second["db"],
        "db keeps running, untouched"
    );
    let json: serde_json::Value = serde_json::from_slice(&up(host, &["--json"]).stdout).unwrap();
    assert!(
        json["diagnostics"][0]
            .as_str()
            .unwrap()
            .contains("b.toml:3:"),
        "{json}"
    );
    std::fs::write(dir.join("b.toml"), spec("db", "1")).unwrap();

    // What a crash between actions leaves: a copy created but never started, and a
    // duplicate. The next pass starts the one and removes the other.
    let labels = stdout(&host.docker(&[
        "inspect",
        "-f",
        "{{range $k, $v := .Config.Labels}}{{$k}}={{$v}}\n{{end}}",
        "web2",
    ]));
    let label_args: Vec<String> = labels
        .lines()
        .filter(|l| !l.is_empty())
        .flat_map(|l| ["--label".into(), l.to_string()])
        .collect();
    assert_success(&host.docker(&["rm", "-f", "web2"]), "docker rm web2");
    for name in ["web2", "web2-copy"] {
        let mut create = vec!["create", "--name", name];
        create.extend(label_args.iter().map(String::as_str));
        create.extend([TEST_IMAGE, "sleep", "3600"]);
        assert_success(&host.docker(&create), "docker create (crash leftover)");
    }
    let plan = stdout(&up(host, &["--dry-run"]));
    assert!(
        plan.contains("start web2") && plan.contains("remove web2") && plan.contains("duplicate"),
        "{plan}"
    );
    assert_success(&up(host, &[]), "arpanet up after a crash");
    let after = managed(host);
    assert_eq!(after.keys().collect::<Vec<_>>(), ["db", "web1", "web2"]);
    assert_eq!(after["web2"].1, "running");

    // arpanetd does the same on its own, and a SIGKILL and restart makes no duplicates.
    std::fs::write(dir.join("d.toml"), spec("queue", "1")).unwrap();
    host.start_arpanetd();
    wait_until(Duration::from_secs(20), "arpanetd to create queue", || {
        managed(host)
            .get("queue")
            .is_some_and(|(_, s)| s == "running")
    });
    let pid = std::fs::read_to_string(host.dir.join("arpanetd.pid.spawned")).unwrap();
    std::fs::write(dir.join("d.toml"), spec("queue", "2")).unwrap();
    assert!(
        std::process::Command::new("kill")
            .args(["-KILL", pid.trim()])
            .status()
            .unwrap()
            .success()
    );
    host.start_arpanetd();
    wait_until(Duration::from_secs(30), "queue replaced once", || {
        let m = managed(host);
        m.len() == 4
            && m.values().all(|(_, s)| s == "running")
            && runs_with(host, "queue", "MODE=2")
    });
    assert_eq!(stdout(&up(host, &["--dry-run"])), "nothing to do\n");

    lab.teardown().expect("teardown");
}

#[test]
fn a_new_image_under_the_same_tag_replaces_its_containers() {
    require_lab!();
    let (lab, _, dir) = Lab::containers_host();
    let host = &lab.hosts[0];
    let tag = "arpanet-test/app:1";
    host.import_image(tag, &["ENV BUILD=1"]);
    let image = |name: &str, eager: bool| {
        format!(
            "[[container]]\nname = \"{name}\"\nimage = \"{tag}\"\ncommand = [\"sleep\", \"3600\"]\n\
             update = {{ pull = false, eager = {eager} }}\n\n"
        )
    };
    std::fs::write(
        dir.join("app.toml"),
        image("plain", false) + &image("eager", true),
    )
    .unwrap();
    assert_success(&up(host, &[]), "arpanet up");
    let before = managed(host);
    let old_image = stdout(&host.docker(&["image", "inspect", "-f", "{{.Id}}", tag]))
        .trim()
        .to_string();

    // The same tag now names another image.
    host.import_image(tag, &["ENV BUILD=2"]);
    let plan = stdout(&up(host, &["--dry-run"]));
    assert!(
        plan.contains("replace plain (") && plan.contains("image changed)"),
        "{plan}"
    );
    assert!(
        plan.contains("replace eager (") && plan.contains("image changed, eager)"),
        "{plan}"
    );
    let out = up(host, &[]);
    assert_success(&out, "arpanet up after the image moved");
    let after = managed(host);
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        ["eager", "plain"],
        "the eager one is back under its own name"
    );
    for name in ["plain", "eager"] {
        assert_ne!(
            after[name].0, before[name].0,
            "{name} must be a new container"
        );
        assert_eq!(after[name].1, "running");
        let env = stdout(&host.docker(&[
            "inspect",
            "-f",
            "{{range .Config.Env}}{{println .}}{{end}}",
            name,
        ]));
        assert!(env.contains("BUILD=2"), "{name}: {env}");
    }
    // Nothing uses the old image any more, so it went.
    assert!(stdout(&out).contains("remove image"), "{}", stdout(&out));
    assert!(
        !host
            .docker(&["image", "inspect", &old_image])
            .status
            .success(),
        "old image still there"
    );
    assert_eq!(stdout(&up(host, &["--dry-run"])), "nothing to do\n");

    lab.teardown().expect("teardown");
}

#[test]
fn a_changed_file_is_applied_at_once_not_at_the_next_resync() {
    require_lab!();
    let (lab, cfg, dir) = Lab::containers_host();
    let host = &lab.hosts[0];
    // A resync an hour away: only the file watch can explain a prompt change.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("resync = \"1s\"", "resync = \"1h\"");
    std::fs::write(&cfg, text).unwrap();
    host.start_arpanetd();
    wait_until(Duration::from_secs(20), "arpanetd ready", || {
        host.log("arpanetd").contains("arpanetd ready")
    });

    std::fs::write(dir.join("new.toml"), spec("watched", "1")).unwrap();
    wait_until(Duration::from_secs(10), "the new file applied", || {
        managed(host)
            .get("watched")
            .is_some_and(|(_, s)| s == "running")
    });
    std::fs::write(dir.join("new.toml"), spec("watched", "2")).unwrap();
    // The old container gets 10 s to stop (sleep as PID 1 ignores SIGTERM): still far
    // inside the hour until the next resync.
    wait_until(Duration::from_secs(30), "the changed file applied", || {
        runs_with(host, "watched", "MODE=2")
    });
    lab.teardown().expect("teardown");
}
