//! Rolling updates and resource-aware placement on three lab hosts (boot, server,
//! client) with real dockerd and Consul: health-gated batches, a rollback of a failing
//! update, a driver killed mid-rollout, `service ps`, and a node with a small capacity.
//! One lab for the topic: the checks share the services they make.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::lab::{Host, Lab, TEST_IMAGE, assert_success, json, stdout, wait_until};

/// The image ID of every container of `service` on `host`, running or not, by name.
fn images_on(host: &Host, service: &str) -> BTreeMap<String, (String, bool)> {
    let ids = stdout(&host.docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=arpanet.file={service}"),
    ]));
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if ids.is_empty() {
        return BTreeMap::new();
    }
    let mut args = vec!["inspect", "-f", "{{.Name}} {{.Image}} {{.State.Running}}"];
    args.extend(ids);
    // A container removed between the two commands makes inspect fail for it alone.
    stdout(&host.docker(&args))
        .lines()
        .filter_map(|l| {
            let mut p = l.split_whitespace();
            let (name, image, running) = (p.next()?, p.next()?, p.next()?);
            Some((
                name.trim_start_matches('/').to_string(),
                (image.to_string(), running == "true"),
            ))
        })
        .collect()
}

/// Running containers of `service` on the image `ids[host]`, over all hosts.
fn running_on(hosts: &[&Host], service: &str, ids: &[String]) -> usize {
    hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            images_on(h, service)
                .into_values()
                .filter(|(image, running)| *running && *image == ids[i])
                .count()
        })
        .sum()
}

fn image_id(host: &Host, tag: &str) -> String {
    let out = host.docker(&["image", "inspect", "-f", "{{.Id}}", tag]);
    assert_success(&out, "image inspect");
    stdout(&out).trim().to_string()
}

fn inspect(host: &Host, service: &str) -> serde_json::Value {
    json(
        &host.arpanet(&["service", "inspect", service]),
        "service inspect",
    )
}

/// What a sampler saw during a rollout: the fewest passing instances, how many samples
/// Consul did not answer, and the image of every instance name over time.
#[derive(Default)]
struct Seen {
    fewest_passing: Option<usize>,
    samples: usize,
    unanswered: usize,
    /// Per sample: instance name -> (host index, image ID, running).
    images: Vec<BTreeMap<String, (usize, String, bool)>>,
}

/// Samples Consul every 200 ms (and, between, each host's containers) until `stop`.
fn sample(hosts: &[&Host], service: &str, stop: &AtomicBool, seen: &Mutex<Seen>) {
    let mut last_images = Instant::now() - Duration::from_secs(1);
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        match hosts[1].passing_instances(service) {
            Some(n) => {
                let mut s = seen.lock().unwrap();
                s.samples += 1;
                s.fewest_passing = Some(s.fewest_passing.map_or(n, |f| f.min(n)));
            }
            None => seen.lock().unwrap().unanswered += 1,
        }
        if last_images.elapsed() >= Duration::from_secs(1) {
            last_images = Instant::now();
            let mut all = BTreeMap::new();
            for (i, h) in hosts.iter().enumerate() {
                for (name, (image, running)) in images_on(h, service) {
                    all.insert(name, (i, image, running));
                }
            }
            seen.lock().unwrap().images.push(all);
        }
        std::thread::sleep(Duration::from_millis(200).saturating_sub(started.elapsed()));
    }
}

/// Runs `f` while a sampler watches `service`; returns f's value and what was seen.
fn sampled<T>(hosts: &[&Host], service: &str, f: impl FnOnce() -> T) -> (T, Seen) {
    let stop = AtomicBool::new(false);
    let seen = Mutex::new(Seen::default());
    let value = std::thread::scope(|scope| {
        scope.spawn(|| sample(hosts, service, &stop, &seen));
        let value = f();
        stop.store(true, Ordering::Relaxed);
        value
    });
    (value, seen.into_inner().unwrap())
}

const WEB: &str = r#"[[container]]
name = "web"
image = "@IMAGE@"
command = ["sh", "-c", "trap 'exit 0' TERM; httpd -f -p 8080 -h /www & wait"]
restart = "always"
update = { pull = false }
service = { port = 8080, check = { type = "http", path = "/cgi-bin/whoami", interval = "2s", timeout = "2s" } }
"#;

#[test]
fn updates_roll_in_checked_batches_roll_back_on_failure_survive_their_driver_and_fit_capacity() {
    require_lab!();
    let lab = Lab::three_nodes();
    let hosts: Vec<&Host> = lab.hosts.iter().collect();
    let (h0, h1, h2) = (hosts[0], hosts[1], hosts[2]);
    // v2 and v3: the same contents, different images. bad: httpd never starts (the
    // entrypoint sleeps), so its check fails while the container runs. Both stop at
    // SIGTERM (a shell as PID 1 ignores it unless trapped, and each stop would wait out
    // Docker's 10 s grace).
    for h in &hosts {
        h.import_image("arpanet-test/web:2", &["ENV BUILD=2"]);
        h.import_image("arpanet-test/web:3", &["ENV BUILD=3"]);
        h.import_image(
            "arpanet-test/web:bad",
            &[r#"ENTRYPOINT ["/bin/sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]"#],
        );
    }
    let ids = |tag: &str| -> Vec<String> { hosts.iter().map(|h| image_id(h, tag)).collect() };
    let (v1, v2, v3, bad) = (
        ids(TEST_IMAGE),
        ids("arpanet-test/web:2"),
        ids("arpanet-test/web:3"),
        ids("arpanet-test/web:bad"),
    );

    let file = h0.dir.join("web.toml");
    std::fs::write(&file, WEB.replace("@IMAGE@", TEST_IMAGE)).unwrap();
    assert_success(
        &h0.arpanet(&[
            "service",
            "create",
            "web",
            "--file",
            file.to_str().unwrap(),
            "--replicas",
            "6",
        ]),
        "service create web",
    );
    wait_until(Duration::from_secs(90), "6 passing web instances", || {
        h0.passing_instances("web") == Some(6)
    });
    // Bad requests: one error naming the field, and the record stays as it was.
    for (body, code, said) in [
        (
            r#"{"update":{"parallel":0}}"#,
            400,
            "update.parallel: must be at least 1",
        ),
        (r#"{"image":"nope"}"#, 400, "image: image `nope` has no tag"),
        (
            r#"{"env":{"A=B":"c"}}"#,
            400,
            "env: `A=B` is not a variable name",
        ),
        (
            r#"{"update":{"order":"sideways"}}"#,
            400,
            "update.order: unknown variant `sideways`",
        ),
        (r#"{"replicas":-1}"#, 400, "replicas: "),
    ] {
        let (status, answer) = h0.api_request("PUT", "/v1/services/web/update", body);
        assert_eq!(status, code, "{body}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.starts_with(said), "{body}: {error}");
    }
    let (status, answer) = h0.api_request("POST", "/v1/services/web/rollback", "");
    assert_eq!(status, 409, "{answer}");
    assert_eq!(
        answer["error"],
        "service `web` has no previous spec to roll back to"
    );
    let (status, _) = h0.api_request("PUT", "/v1/services/..%2Ftemplates%2Fx/update", "{}");
    assert_eq!(status, 400);
    assert_eq!(
        inspect(h1, "web")["version"],
        serde_json::Value::Null,
        "still version 1"
    );

    // 1. A healthy update, 2 at a time: never fewer than 4 pass, and each instance goes
    // from the old image to the new one, once.
    let started = Instant::now();
    let (out, seen) = sampled(&hosts, "web", || {
        h1.arpanet(&[
            "service",
            "update",
            "web",
            "--image",
            "arpanet-test/web:2",
            "--parallel",
            "2",
            "--monitor",
            "3s",
            "--failure-action",
            "rollback",
        ])
    });
    let took = started.elapsed();
    assert_success(&out, "service update web");
    assert!(
        stdout(&out).contains("version 2 rolled out"),
        "{}",
        stdout(&out)
    );
    println!("MEASURED: a rolling update of 6 instances, 2 at a time, took {took:.1?}");
    assert!(seen.samples > 10, "{} samples", seen.samples);
    assert!(
        seen.unanswered * 10 <= seen.samples,
        "Consul did not answer {} of {} samples",
        seen.unanswered,
        seen.samples
    );
    assert!(
        seen.fewest_passing.unwrap() >= 4,
        "only {:?} passing during the update",
        seen.fewest_passing
    );
    let mut on_new: BTreeSet<String> = BTreeSet::new();
    for sample in &seen.images {
        for (name, (host, image, _)) in sample {
            if *image == v2[*host] {
                on_new.insert(name.clone());
            } else {
                assert_eq!(
                    *image, v1[*host],
                    "{name} runs neither the old nor the new image"
                );
                assert!(!on_new.contains(name), "{name} went back to the old image");
            }
        }
        // Stop-first, 2 at a time: at most 2 instances are not running the new image
        // and not the old one either (stopped or starting) at once.
        let running = sample.values().filter(|(_, _, r)| *r).count();
        assert!(running >= 4, "only {running} running in {sample:?}");
    }
    let after: BTreeMap<String, (usize, String, bool)> = hosts
        .iter()
        .enumerate()
        .flat_map(|(i, h)| {
            images_on(h, "web")
                .into_iter()
                .map(move |(n, (im, r))| (n, (i, im, r)))
        })
        .collect();
    assert_eq!(after.len(), 6, "{after:?}");
    assert!(
        after.values().all(|(i, im, r)| *r && *im == v2[*i]),
        "{after:?}"
    );
    wait_until(
        Duration::from_secs(20),
        "6 passing after the update",
        || h0.passing_instances("web") == Some(6),
    );
    let ps = json(
        &h2.arpanet(&["service", "ps", "web", "--json"]),
        "service ps",
    );
    let rows = ps.as_array().unwrap();
    assert_eq!(rows.len(), 6, "{ps}");
    for r in rows {
        assert_eq!(r["version"], 2, "{r}");
        assert_eq!(r["state"], "running", "{r}");
        assert_eq!(r["health"], "passing", "{r}");
        assert!(r["status"].as_str().unwrap().starts_with("Up"), "{r}");
    }
    let record = inspect(h2, "web");
    assert_eq!(record["version"], 2);
    assert_eq!(record["rollout"]["state"], "completed");
    assert_eq!(record["previous"]["version"], 1);

    // 2. An update whose check fails stops after its first batch and rolls back.
    let started = Instant::now();
    let (out, seen) = sampled(&hosts, "web", || {
        h0.arpanet(&[
            "service",
            "update",
            "web",
            "--image",
            "arpanet-test/web:bad",
            "--parallel",
            "2",
            "--monitor",
            "3s",
            "--failure-action",
            "rollback",
        ])
    });
    let took = started.elapsed();
    assert!(
        !out.status.success(),
        "a failed update succeeded: {}",
        stdout(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("failed and was rolled back"), "{err}");
    let mut ever_bad = BTreeSet::new();
    for sample in &seen.images {
        for (name, (host, image, _)) in sample {
            if *image == bad[*host] {
                ever_bad.insert(name.clone());
            }
        }
    }
    assert!(
        !ever_bad.is_empty() && ever_bad.len() <= 2,
        "instances on the failing image: {ever_bad:?}"
    );
    assert!(
        seen.fewest_passing.unwrap() >= 4,
        "{:?}",
        seen.fewest_passing
    );
    let record = inspect(h1, "web");
    assert_eq!(record["rollout"]["state"], "rolled_back", "{record}");
    assert_eq!(record["version"], 2);
    let (rb_start, rb_end) = (
        record["rollout"]["started"].as_u64().unwrap(),
        record["rollout"]["ended"].as_u64().unwrap(),
    );
    println!(
        "MEASURED: failing update: {took:.1?} from `service update` to the end of the rollback; \
         the rollback itself (failure found -> old instances back and passing) {:.1?}; \
         a failure is found --monitor (3s) + one check interval (2s) after the bad instance starts",
        Duration::from_millis(rb_end - rb_start)
    );
    wait_until(
        Duration::from_secs(30),
        "6 passing after the rollback",
        || h0.passing_instances("web") == Some(6),
    );
    assert_eq!(running_on(&hosts, "web", &v2), 6);
    // Every node's /metrics says so too.
    let rolled_back = "arpanet_service_rollout{service=\"web\",state=\"rolled_back\"}";
    for h in &hosts {
        wait_until(Duration::from_secs(20), "rolled_back in /metrics", || {
            crate::metrics::value(&crate::metrics::scrape(h).1, rolled_back) == Some(1.0)
        });
    }
    let ps = h2.arpanet(&["service", "ps", "web"]);
    assert_success(&ps, "service ps");
    let text = stdout(&ps);
    assert!(
        text.contains("update rolled back") && text.contains("did not pass its check"),
        "service ps does not say why: {text}"
    );

    // 3. The node taking the steps is SIGKILLed mid-rollout; another server takes the
    // next steps, and the rollout finishes (the killed arpanetd comes back, as
    // systemd's Restart= brings it back, once another node has stepped in).
    let out = h2.arpanet(&[
        "service",
        "update",
        "web",
        "--image",
        "arpanet-test/web:3",
        "--parallel",
        "1",
        "--monitor",
        "2s",
        "--detach",
    ]);
    assert_success(&out, "service update --detach");
    let mut driver = String::new();
    // Killed while the batch under way is on another node, so that the other server
    // can finish that batch without it.
    wait_until(
        Duration::from_secs(60),
        "a batch under way on another node",
        || {
            let r = inspect(h2, "web");
            let rollout = &r["rollout"];
            let batch: Vec<&str> = rollout["batch"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|b| b.as_str())
                .collect();
            match rollout["driver"].as_str() {
                Some(d) if rollout["state"] == "updating" && !batch.is_empty() => {
                    driver = d.to_string();
                    batch.iter().all(|b| !b.contains(&format!("_{d}_")))
                }
                _ => false,
            }
        },
    );
    let killed = *hosts
        .iter()
        .find(|h| h.address.to_string() == driver)
        .expect("the driver is a lab host");
    assert!(killed.index < 2, "a client ({driver}) drove a rollout");
    killed.kill("arpanetd");
    let other = hosts[1 - killed.index];
    let before = inspect(other, "web")["rollout"].clone();
    wait_until(Duration::from_secs(30), "another node takes a step", || {
        let now = inspect(other, "web")["rollout"].clone();
        now["driver"] == other.address.to_string() && now != before
    });
    killed.start_arpanetd();
    wait_until(
        Duration::from_secs(120),
        "the rollout to version 3 completes",
        || inspect(h2, "web")["rollout"]["state"] == "completed",
    );
    wait_until(Duration::from_secs(30), "6 passing on web:3", || {
        h0.passing_instances("web") == Some(6) && running_on(&hosts, "web", &v3) == 6
    });
    assert_eq!(inspect(h0, "web")["version"], 4, "v1, v2, bad (3), then 4");

    // Host-network instances have no address of their own: they register at their
    // node's overlay address, so their update is watched like any other.
    let agent = h0.dir.join("agent.toml");
    std::fs::write(
        &agent,
        WEB.replace("@IMAGE@", TEST_IMAGE)
            .replace("name = \"web\"", "name = \"agent\"\nnetwork = \"host\"")
            .replace("8080", "9100"),
    )
    .unwrap();
    assert_success(
        &h1.arpanet(&[
            "service",
            "create",
            "agent",
            "--file",
            agent.to_str().unwrap(),
            "--replicas",
            "3",
        ]),
        "service create agent",
    );
    wait_until(
        Duration::from_secs(60),
        "3 passing host-network instances",
        || h0.passing_instances("agent") == Some(3),
    );
    let out = h2.arpanet(&[
        "service",
        "update",
        "agent",
        "--image",
        "arpanet-test/web:2",
        "--monitor",
        "1s",
    ]);
    assert_success(&out, "service update agent");
    assert!(
        stdout(&out).contains("version 2 rolled out"),
        "{}",
        stdout(&out)
    );
    assert_eq!(running_on(&hosts, "agent", &v2), 3);
    wait_until(
        Duration::from_secs(20),
        "3 passing after the update",
        || h0.passing_instances("agent") == Some(3),
    );

    // 4. Capacity: node 2 offers 1 CPU and 256 MB. A service of 0.5 CPU and 100 MB
    // instances gets at most 2 there; the rest go elsewhere.
    let config = h2.config_path();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[node.capacity]\ncpus = 1\nmemory = \"256m\"\n");
    std::fs::write(&config, text).unwrap();
    h2.kill("arpanetd");
    h2.start_arpanetd();
    wait_until(
        Duration::from_secs(60),
        "node 2 publishes its capacity",
        || {
            let url = "http://127.0.0.1:8500/v1/catalog/service/arpanet";
            let out = h0.exec(&["timeout", "5", "busybox", "wget", "-q", "-O", "-", url]);
            stdout(&out).contains("\"capacity_memory\":\"268435456\"")
        },
    );
    let fat = h0.dir.join("fat.toml");
    std::fs::write(
        &fat,
        format!(
            "[[container]]\nname = \"fat\"\nimage = \"{TEST_IMAGE}\"\ncommand = [\"sleep\", \"1d\"]\ncpu = 512\nmemory = \"100m\"\nupdate = {{ pull = false }}\n"
        ),
    )
    .unwrap();
    assert_success(
        &h1.arpanet(&[
            "service",
            "create",
            "fat",
            "--file",
            fat.to_str().unwrap(),
            "--replicas",
            "9",
        ]),
        "service create fat",
    );
    let count = |h: &Host| images_on(h, "fat").values().filter(|(_, r)| *r).count();
    wait_until(Duration::from_secs(90), "9 fat instances running", || {
        hosts.iter().map(|h| count(h)).sum::<usize>() == 9
    });
    assert_eq!(count(h2), 2, "node 2 fits two of 100 MB in 256 MB");
    // A service that fits on no node is reported, not run.
    let huge = h0.dir.join("huge.toml");
    std::fs::write(
        &huge,
        format!(
            "[[container]]\nname = \"huge\"\nimage = \"{TEST_IMAGE}\"\ncommand = [\"sleep\", \"1d\"]\ncpu = 262144\nupdate = {{ pull = false }}\n"
        ),
    )
    .unwrap();
    assert_success(
        &h1.arpanet(&[
            "service",
            "create",
            "huge",
            "--file",
            huge.to_str().unwrap(),
            "--replicas",
            "1",
        ]),
        "service create huge",
    );
    let ls = json(&h2.arpanet(&["service", "ls", "--json"]), "service ls");
    let row = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "huge")
        .expect("huge listed")
        .clone();
    assert_eq!(row["unplaced"], 1, "{row}");
    assert!(
        row["why"].as_str().unwrap().contains("256 CPU free"),
        "{row}"
    );
    let ps = json(
        &h0.arpanet(&["service", "ps", "huge", "--json"]),
        "service ps huge",
    );
    assert_eq!(ps[0]["state"], "unplaced", "{ps}");
    assert!(ps[0]["why"].as_str().unwrap().contains("no node"), "{ps}");
    std::thread::sleep(Duration::from_secs(3));
    for h in &hosts {
        assert!(
            images_on(h, "huge").is_empty(),
            "huge runs on {}",
            h.address
        );
    }
    assert_eq!(count(h2), 2, "node 2 still runs two fat instances");
}
