//! Running containers registered in Consul by arpanetd (registrator's job), and
//! containers on different lab hosts finding and calling each other by name.

use crate::fixture;
use crate::lab;
use std::time::{Duration, Instant};

use crate::lab::{Host, Lab, TEST_IMAGE, assert_success, stdout, wait_until};

fn catalog_services(host: &Host) -> String {
    stdout(&host.consul(&["catalog", "services"]))
}

fn has_leader(host: &Host) -> bool {
    let out = host.arpanet(&["status", "--json"]);
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .is_ok_and(|s| !s["consul"]["leader"].is_null())
}

#[test]
fn containers_are_registered_and_found_across_hosts_by_name() {
    require_lab!();
    let lab = Lab::builder(2).start();
    let consul = "[consul]\nmode = \"config\"\n";
    lab.write_arpanet_config(0, "boot", &[1], consul);
    lab.write_arpanet_config(1, "client", &[0], consul);
    let (h0, h1) = (&lab.hosts[0], &lab.hosts[1]);
    Host::start_nodes(&[h0, h1]);
    for h in [h0, h1] {
        wait_until(Duration::from_secs(60), "a Consul leader", || has_leader(h));
    }

    // A web server on host 0, registered by label.
    let started = Instant::now();
    let run = h0.docker(&lab::RUN_WEB);
    assert_success(&run, "docker run web");
    wait_until(Duration::from_secs(10), "web in the catalog", || {
        catalog_services(h1).contains("web")
    });
    let registered_in = started.elapsed();
    let web_ip = stdout(&h0.docker(&["inspect", "-f", lab::IP_FORMAT, "web"]));
    let web_ip = web_ip.trim();
    assert!(web_ip.starts_with("10.0.1."), "{web_ip}");

    // From a container on host 1: the name resolves to host 0's container, and HTTP works.
    let call = h1.docker(&[
        "run",
        "--rm",
        TEST_IMAGE,
        "sh",
        "-c",
        "nslookup web.service.consul; echo ---; timeout 10 wget -q -O - http://web.service.consul:8080/cgi-bin/whoami",
    ]);
    assert_success(&call, "resolve and call web from host 1");
    let text = stdout(&call);
    let (lookup, answer) = text.split_once("---").unwrap();
    assert!(lookup.contains(web_ip), "{lookup}");
    assert!(
        answer.contains("10.0.2."),
        "the caller's own address reaches the server: {answer}"
    );

    // Stopping it deregisters it.
    let stopped = Instant::now();
    assert_success(&h0.docker(&["stop", "-t", "1", "web"]), "docker stop");
    wait_until(Duration::from_secs(10), "web out of the catalog", || {
        !catalog_services(h1).contains("web")
    });
    let deregistered_in = stopped.elapsed();

    // registrator's SERVICE_NAME works too; a SIGKILLed container is deregistered.
    let legacy = h0.docker(&[
        "run",
        "-d",
        "--name",
        "legacy",
        "-e",
        "SERVICE_NAME=legacy",
        "--expose",
        "6379",
        TEST_IMAGE,
        "sleep",
        "600",
    ]);
    assert_success(&legacy, "docker run legacy");
    wait_until(Duration::from_secs(10), "legacy in the catalog", || {
        catalog_services(h1).contains("legacy")
    });
    assert_success(&h0.docker(&["kill", "legacy"]), "docker kill");
    wait_until(Duration::from_secs(10), "legacy out of the catalog", || {
        !catalog_services(h1).contains("legacy")
    });

    // No ghosts: a container removed while arpanetd was down is deregistered at its start.
    let ghost = h0.docker(&[
        "run",
        "-d",
        "--name",
        "ghost",
        "-l",
        "arpanet.service=ghost",
        TEST_IMAGE,
        "sleep",
        "600",
    ]);
    assert_success(&ghost, "docker run ghost");
    wait_until(Duration::from_secs(10), "ghost in the catalog", || {
        catalog_services(h1).contains("ghost")
    });
    h0.stop("arpanetd");
    assert_success(&h0.docker(&["rm", "-f", "ghost"]), "docker rm ghost");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        catalog_services(h1).contains("ghost"),
        "nothing deregisters it while arpanetd is down"
    );
    h0.start_arpanetd();
    wait_until(Duration::from_secs(20), "the ghost to go", || {
        !catalog_services(h1).contains("ghost")
    });

    // A containers.d service with an HTTP check: registered with the check, which passes.
    let dir = h0.dir.join("containers.d");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("api.toml"),
        fixture("containers.d/api-with-http-check.toml"),
    )
    .unwrap();
    wait_until(
        Duration::from_secs(30),
        "api registered with a passing check",
        || {
            let url = "http://127.0.0.1:8500/v1/health/checks/api";
            let health = stdout(&h0.exec(&["busybox", "wget", "-q", "-O", "-", url]));
            health.contains("\"Status\":\"passing\"") && health.contains("cgi-bin/whoami")
        },
    );
    let url = "http://v1.api.service.consul:8080/cgi-bin/whoami";
    let call = h1.docker(&[
        "run", "--rm", TEST_IMAGE, "timeout", "10", "wget", "-q", "-O", "-", url,
    ]);
    assert_success(&call, "call api by tag and name from host 1");

    eprintln!(
        "MEASURED: registered {registered_in:?} after docker run; deregistered {deregistered_in:?} after docker stop"
    );
    lab.teardown().expect("teardown");
}
