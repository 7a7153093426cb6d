//! The node registry on three lab hosts with real dockerd, skopeo, Consul and arpanetd:
//! `docker push 127.0.0.1:PORT/NAME:TAG` on one node, `docker run` of the same name on
//! the others; only the blobs a node lacks move; bad bytes are never loaded; only root
//! gets in.

use std::time::Duration;

use crate::lab::{self, Host, Lab, TEST_IMAGE, assert_success, stdout, wait_until};

const REGISTRY: &str = "127.0.0.1:7102";

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn blob_file(h: &Host, digest: &str) -> std::path::PathBuf {
    h.dir
        .join("state/registry/blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

#[test]
fn an_image_pushed_on_one_node_runs_on_every_node_by_its_loopback_name() {
    require_lab!();
    let lab = Lab::three_nodes();
    let (h0, h1, h2) = (&lab.hosts[0], &lab.hosts[1], &lab.hosts[2]);
    let info = lab::json(&h0.arpanet(&["info", "--json"]), "info --json");
    assert_eq!(info["registry"], REGISTRY, "{info}");

    // Push with plain docker on node 0; run by the same name on nodes 1 and 2.
    let v1 = format!("{REGISTRY}/team/app:v1");
    assert_success(&h0.docker(&["tag", TEST_IMAGE, &v1]), "docker tag");
    assert_success(&h0.docker(&["push", &v1]), "docker push");
    let id = h0.image_id(&v1).unwrap();
    for h in [h1, h2] {
        let run = h.docker(&["run", "--rm", &v1, "echo", "hello from v1"]);
        assert_success(&run, "docker run by the registry name");
        assert_eq!(stdout(&run).trim(), "hello from v1");
        assert_eq!(
            h.image_id(&v1).as_deref(),
            Some(id.as_str()),
            "the same image"
        );
    }
    // skopeo reads the same manifest on every node, and copies the image out whole.
    let m0 = h0.registry_manifest(&v1);
    assert_eq!(h2.registry_manifest(&v1), m0);
    let copy = h2.exec(&[
        "skopeo",
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{v1}"),
        &format!("dir:{}", h2.dir.join("copy").display()),
    ]);
    assert_success(&copy, "skopeo copy");
    let tags = h1.exec(&[
        "curl",
        "-sf",
        &format!("http://{REGISTRY}/v2/team/app/tags/list"),
    ]);
    assert_eq!(
        lab::json(&tags, "tags list"),
        serde_json::json!({"name": "team/app", "tags": ["v1"]})
    );

    // A cluster service by the registry's name runs on every node.
    let create = h1.arpanet(&[
        "service",
        "create",
        "regweb",
        "--image",
        &v1,
        "--replicas",
        "3",
        "--",
        "httpd",
        "-f",
        "-p",
        "8080",
    ]);
    assert_success(&create, "service create");
    wait_until(
        Duration::from_secs(90),
        "3 instances of regweb running",
        || {
            let out = h2.arpanet(&["service", "ps", "regweb", "--json"]);
            serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .ok()
                .and_then(|v| {
                    v.as_array()
                        .map(|rows| rows.len() == 3 && rows.iter().all(|r| r["state"] == "running"))
                })
                .unwrap_or(false)
        },
    );

    // An update of the top layer moves that layer only.
    let make = h0.docker(&[
        "run",
        "--name",
        "mk-v2",
        &v1,
        "sh",
        "-c",
        "head -c 5242880 /dev/urandom > /layer.bin",
    ]);
    assert_success(&make, "write the new layer");
    let v2 = format!("{REGISTRY}/team/app:v2");
    assert_success(&h0.docker(&["commit", "mk-v2", &v2]), "docker commit");
    assert_success(&h0.docker(&["push", &v2]), "docker push v2");
    let layers = h0.registry_manifest(&v2)["layers"]
        .as_array()
        .unwrap()
        .clone();
    let top = layers.last().unwrap();
    let (top_digest, top_size) = (
        top["digest"].as_str().unwrap().to_string(),
        top["size"].as_u64().unwrap(),
    );
    let fetched = |h: &Host| {
        let series = "arpanet_registry_blob_bytes_total{direction=\"received\"}";
        crate::metrics::value(&crate::metrics::scrape(h).1, series).unwrap_or(0.0)
    };
    let fetched_before = fetched(h1);
    let before = h1.underlay_bytes().0;
    assert_success(&h1.docker(&["pull", &v2]), "docker pull v2");
    let received = h1.underlay_bytes().0 - before;
    eprintln!(
        "update: node 1 received {received} bytes for a top layer of {top_size} bytes ({:.2}x)",
        received as f64 / top_size as f64
    );
    assert!(
        (received as f64) <= 1.2 * top_size as f64,
        "node 1 received {received} bytes for a {top_size}-byte layer"
    );
    assert_eq!(h1.image_id(&v2), h0.image_id(&v2));
    // The registry's own count (/metrics): the layer and the image config, no more.
    let blob_bytes = fetched(h1) - fetched_before;
    assert!(
        blob_bytes >= top_size as f64 && blob_bytes <= 1.2 * top_size as f64,
        "node 1's registry fetched {blob_bytes} bytes for a {top_size}-byte layer"
    );

    // A corrupt copy planted on a holder is never loaded: with node 0 the only holder
    // KV names, node 2's pull fails and loads nothing; with node 1 named again, node 2
    // gets the layer from it, though it may ask node 0 first.
    let planted = blob_file(h0, &top_digest);
    let mut bad = std::fs::read(&planted).unwrap();
    for b in bad.iter_mut().step_by(4096) {
        *b ^= 0xff;
    }
    std::fs::write(&planted, &bad).unwrap();
    let h1_holder = format!(
        "arpanet/registry/blobs/{}/{}",
        top_digest.trim_start_matches("sha256:"),
        h1.address
    );
    let held = h0.arpanet(&["kv", "get", &h1_holder]);
    assert_success(&held, "node 1's holder record");
    assert_success(&h0.arpanet(&["kv", "del", &h1_holder]), "kv del");
    // The layer as dockerd would ask for it (curl: dockerd retries a failed layer for
    // a minute before it gives up).
    let get = h2.exec(&[
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{REGISTRY}/v2/team/app/blobs/{top_digest}"),
    ]);
    assert_ne!(
        stdout(&get),
        "200",
        "node 2 served the layer of a corrupt holder"
    );
    assert!(!blob_file(h2, &top_digest).exists(), "bad bytes kept");
    assert_eq!(h2.image_id(&v2), None, "nothing loaded");
    assert!(
        h2.log("arpanetd").lines().any(|l| l
            .contains(&format!("from node {} stopped: piece ", h0.address))
            && l.contains(&format!(
                "does not match its hash; node {} dropped",
                h0.address
            ))),
        "node 2 says why"
    );
    assert_success(
        &h0.arpanet(&["kv", "put", &h1_holder, stdout(&held).trim()]),
        "kv put",
    );
    assert_success(
        &h2.docker(&["pull", &v2]),
        "docker pull v2 with a good holder",
    );
    assert_eq!(h2.image_id(&v2), h0.image_id(&v2));
    let good = h2.exec(&["sha256sum", blob_file(h2, &top_digest).to_str().unwrap()]);
    assert!(stdout(&good).starts_with(top_digest.trim_start_matches("sha256:")));

    // Only root gets in: another local user is refused with the spec's DENIED, and a
    // container cannot reach the port at all (it is on loopback only).
    let nobody = h0.exec(&[
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "curl",
        "-s",
        "-w",
        "\n%{http_code}",
        &format!("http://{REGISTRY}/v2/team/app/tags/list"),
    ]);
    let answer = stdout(&nobody);
    assert!(
        answer.ends_with("\n403") && answer.contains("DENIED"),
        "{answer} {}",
        stderr(&nobody)
    );
    let bridge_ip = h0.address.bridge_ip().to_string();
    let probe = h0.docker(&[
        "run",
        "--rm",
        TEST_IMAGE,
        "wget",
        "-T",
        "3",
        "-qO-",
        &format!("http://{bridge_ip}:7102/v2/"),
    ]);
    assert!(
        !probe.status.success(),
        "a container reached the registry: {}",
        stdout(&probe)
    );
}

/// The registry's row for `name` in `arpanet image ls --json` on `h`, if it lists one.
fn ls_row(h: &Host, name: &str) -> Option<serde_json::Value> {
    let ls = lab::json(&h.arpanet(&["image", "ls", "--json"]), "image ls --json");
    ls["items"]
        .as_array()
        .unwrap_or_else(|| panic!("items in {ls}"))
        .iter()
        .find(|i| i["kind"] == "registry" && i["name"] == name)
        .cloned()
}

#[test]
fn arpanet_image_push_ls_pull_and_rm_work_on_the_node_registry() {
    require_lab!();
    let lab = Lab::three_nodes();
    let (h0, h1, h2) = (&lab.hosts[0], &lab.hosts[1], &lab.hosts[2]);
    let (a0, a1, a2) = (
        h0.address.to_string(),
        h1.address.to_string(),
        h2.address.to_string(),
    );

    // `image push` tags the image as the registry's name for it and pushes it.
    assert_success(
        &h0.docker(&["tag", TEST_IMAGE, "team/cli:v1"]),
        "docker tag",
    );
    let push = h0.arpanet(&["image", "push", "team/cli:v1"]);
    assert_success(&push, "image push");
    let v1 = format!("{REGISTRY}/team/cli:v1");
    assert!(
        stdout(&push).contains(&format!("run it as {v1}")),
        "{}",
        stdout(&push)
    );
    assert_eq!(h0.image_id(&v1), h0.image_id(TEST_IMAGE));

    // Listed on another node with its digest, its blobs' size and node 0 as holder.
    let m = h2.registry_manifest(&v1);
    let size: u64 = std::iter::once(&m["config"])
        .chain(m["layers"].as_array().unwrap())
        .map(|d| d["size"].as_u64().unwrap())
        .sum();
    let row = ls_row(h2, "team/cli:v1").expect("team/cli:v1 in image ls");
    assert!(
        row["digest"].as_str().unwrap().starts_with("sha256:"),
        "{row}"
    );
    assert_eq!(row["manifest"], "image", "{row}");
    assert_eq!(row["size"], size, "{row}");
    assert_eq!(lab::sorted_strings(&row["holders"]), vec![a0.clone()]);
    let table = stdout(&h2.arpanet(&["image", "ls"]));
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("registry") && l.contains("team/cli:v1")),
        "{table}"
    );

    // Node 1 pulls it with plain docker and is a holder from then on.
    assert_success(&h1.docker(&["pull", &v1]), "docker pull on node 1");
    let row = ls_row(h2, "team/cli:v1").unwrap();
    assert_eq!(
        lab::sorted_strings(&row["holders"]),
        vec![a0.clone(), a1.clone()]
    );

    // A preheat: every node's dockerd pulls it; node 2 gets the same image.
    let pull = h1.arpanet(&["image", "pull", "team/cli:v1", "--all-nodes"]);
    assert_success(&pull, "image pull --all-nodes");
    assert!(
        stdout(&pull).contains(&format!("node {a2}: pulled {v1}")),
        "{}",
        stdout(&pull)
    );
    assert_eq!(h2.image_id(&v1), h0.image_id(&v1));
    let row = ls_row(h0, "team/cli:v1").unwrap();
    assert_eq!(
        lab::sorted_strings(&row["holders"]),
        vec![a0.clone(), a1.clone(), a2.clone()]
    );

    // Bad input is one line naming the field, and removes nothing.
    let bad = h2.arpanet(&["image", "rm", "Bad/../x:v1"]);
    assert!(!bad.status.success());
    let err = stderr(&bad);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: name: `Bad/../x` is not a repository name"),
        "{err}"
    );

    // Two tags of one manifest: removing one leaves the other pullable.
    assert_success(
        &h0.docker(&["tag", TEST_IMAGE, "team/cli:v2"]),
        "docker tag v2",
    );
    assert_success(
        &h0.arpanet(&["image", "push", "team/cli:v2"]),
        "image push v2",
    );
    let v2 = format!("{REGISTRY}/team/cli:v2");
    let rm = h2.arpanet(&["image", "rm", &v1]);
    assert_success(&rm, "image rm v1");
    assert!(
        stdout(&rm).contains("another tag still points at it"),
        "{}",
        stdout(&rm)
    );
    assert_eq!(ls_row(h1, "team/cli:v1"), None, "v1 is gone from image ls");
    assert_success(&h2.docker(&["pull", &v2]), "docker pull v2");
    let gone = h1.docker(&["pull", &v1]);
    assert!(!gone.status.success(), "v1 pulled after image rm");
    assert!(
        stderr(&gone).contains("manifest unknown"),
        "{}",
        stderr(&gone)
    );

    // The last tag takes the manifest with it.
    let rm = h1.arpanet(&["image", "rm", "team/cli:v2"]);
    assert_success(&rm, "image rm v2");
    assert!(!stdout(&rm).contains("another tag"), "{}", stdout(&rm));
    assert_eq!(ls_row(h0, "team/cli:v2"), None);
    // With its last record gone the repository is gone too: the spec's NAME_UNKNOWN.
    let gone = h2.docker(&["pull", &v2]);
    assert!(!gone.status.success(), "v2 pulled after image rm");
    assert!(
        stderr(&gone).contains("name unknown: no repository team/cli"),
        "{}",
        stderr(&gone)
    );
    let again = h1.arpanet(&["image", "rm", "team/cli:v2"]);
    assert!(!again.status.success());
    assert_eq!(
        stderr(&again).trim(),
        "error: no image `team/cli:v2` in the node registry (`arpanet image ls` lists them)"
    );
}
