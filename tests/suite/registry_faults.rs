//! The node registry when things go wrong mid-pull, on three lab hosts: the holder a
//! node is fetching a layer from dies, and the disk fills.

use std::time::Duration;

use crate::lab::{Host, Lab, assert_success, stdout, wait_until};

const REGISTRY: &str = "127.0.0.1:7102";

/// The digest and size of the image's one layer, as the registry lists it.
fn layer(h: &Host, image: &str) -> (String, u64) {
    let manifest = h.registry_manifest(image);
    let layer = &manifest["layers"][0];
    (
        layer["digest"].as_str().unwrap().to_string(),
        layer["size"].as_u64().unwrap(),
    )
}

/// A GET of the blob from `h`'s registry, as dockerd makes it: curl's exit code, the
/// status and the body.
fn get_blob(h: &Host, digest: &str) -> (Option<i32>, String, String) {
    let out = h.exec(&[
        "curl",
        "-s",
        "-o",
        "/dev/stderr",
        "-w",
        "%{http_code}",
        &format!("http://{REGISTRY}/v2/faults/any/blobs/{digest}"),
    ]);
    let body = String::from_utf8_lossy(&out.stderr);
    (
        out.status.code(),
        stdout(&out),
        body.chars().take(300).collect(),
    )
}

/// A tmpfs over a host's registry dir, unmounted however the test ends.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Self {
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "arpanet-lab",
            ])
            .arg(dir)
            .output()
            .unwrap();
        assert_success(&out, "mount tmpfs");
        for sub in ["blobs/sha256", "uploads"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        Self(dir.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let out = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .output()
            .unwrap();
        assert_success(&out, "remount tmpfs");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_swarm_seeds_each_piece_once_outlives_its_holder_and_resumes_after_a_full_disk() {
    require_lab!();
    let lab = Lab::three_nodes();
    let (h0, h1, h2) = (&lab.hosts[0], &lab.hosts[1], &lab.hosts[2]);

    // Nodes 1 and 2 pull one 24 MB layer at once from node 0, its link slowed to
    // 40 Mbit/s: the seed hands them disjoint pieces and they pass them on to each
    // other, so node 0 sends the layer about once, not once per puller.
    let big0 = format!("{REGISTRY}/faults/big:0");
    h0.import_random_image(&big0, 24);
    assert_success(&h0.docker(&["push", &big0]), "docker push big:0");
    let (digest0, size0) = layer(h0, &big0);
    lab.shape(h0, 40);
    let sent_before = h0.underlay_bytes().1;
    std::thread::scope(|scope| {
        let big0 = &big0;
        let pulls = [h1, h2].map(|h| scope.spawn(move || h.docker(&["pull", big0])));
        for pull in pulls {
            assert_success(&pull.join().unwrap(), "docker pull big:0 on nodes 1 and 2");
        }
    });
    let copies = (h0.underlay_bytes().1 - sent_before) as f64 / size0 as f64;
    eprintln!("two pullers at once: the seed sent {copies:.2} copies of the layer");
    assert!(
        copies < 1.3,
        "node 0 sent {copies:.2} copies of the layer to two pullers"
    );
    for (h, other) in [(h1, h2), (h2, h1)] {
        let log = h.log("arpanetd");
        let done = log
            .lines()
            .find(|l| l.contains(&format!("{} fetched in", &digest0[7..19])))
            .unwrap_or_else(|| panic!("node {} says where the layer came from:\n{log}", h.address));
        assert!(
            done.contains(&format!("node {}: ", other.address)),
            "node {} got pieces from node {}: {done}",
            h.address,
            other.address
        );
    }

    // One 24 MB layer on node 0, pulled by node 1: two holders.
    let big1 = format!("{REGISTRY}/faults/big:1");
    let id = h0.import_random_image(&big1, 24);
    assert_success(&h0.docker(&["push", &big1]), "docker push");
    assert_success(&h1.docker(&["pull", &big1]), "docker pull on node 1");
    let (digest, size) = layer(h0, &big1);
    let short = &digest["sha256:".len().."sha256:".len() + 12];

    // Node 2 pulls from both holders at once, each slowed to 40 Mbit/s (about 2.5 s for
    // the layer); node 0 is killed once node 2 is fetching. Node 1 gives the rest, and
    // nothing node 0 sent is fetched again.
    lab.shape(h0, 40);
    lab.shape(h1, 40);
    let received_before = h2.underlay_bytes().0;
    let pull = std::thread::scope(|scope| {
        let pull = scope.spawn(|| h2.docker(&["pull", &big1]));
        let fetching = format!("fetching {short} (");
        wait_until(Duration::from_secs(30), "node 2 to fetch the layer", || {
            h2.log("arpanetd").contains(&fetching)
        });
        std::thread::sleep(Duration::from_millis(1000));
        h0.kill("arpanetd");
        pull.join().unwrap()
    });
    assert_success(
        &pull,
        "docker pull on node 2 with a holder killed mid-layer",
    );
    assert_eq!(h2.image_id(&big1).as_deref(), Some(id.as_str()));
    let received = h2.underlay_bytes().0 - received_before;
    let log = h2.log("arpanetd");
    let done = log
        .lines()
        .find(|l| l.contains(&format!("{short} fetched in")))
        .unwrap_or_else(|| panic!("node 2 says where the layer came from:\n{log}"));
    assert!(
        done.contains(&format!("node {}: ", h0.address))
            && done.contains(&format!("node {}: ", h1.address)),
        "pieces from both holders: {done}"
    );
    assert!(
        log.contains(&format!("from node {} stopped", h0.address)),
        "node 2 says it dropped node 0:\n{log}"
    );
    assert!(
        (received as f64) < 1.2 * size as f64,
        "node 2 received {received} bytes for a {size}-byte layer: it fetched again what it had"
    );
    let second = h1;

    // A disk that fills mid-pull: one line naming the directory; with room again, the
    // same pull goes on from what it had.
    let big2 = format!("{REGISTRY}/faults/big:2");
    second.import_random_image(&big2, 24);
    assert_success(&second.docker(&["push", &big2]), "docker push big:2");
    let (digest2, size2) = layer(second, &big2);
    let dir = h2.dir.join("state/registry");
    let tmpfs = Tmpfs::mount(&dir, "12m");
    // The layer streams as it arrives: the disk fills after the answer began, so the
    // client sees it cut short (curl: 18, a partial body), never the whole blob.
    let (code, status, body) = get_blob(h2, &digest2);
    assert!(
        (status == "507" && body.contains(&format!("{} is full", dir.display())))
            || (status == "200" && code == Some(18)),
        "curl {code:?}, status {status}: {body}"
    );
    let short2 = &digest2["sha256:".len()..12 + "sha256:".len()];
    let full = h2.log("arpanetd");
    assert!(
        full.lines()
            .any(|l| l.contains(&format!("{} is full", dir.display()))
                && l.contains(short2)
                && l.contains("resumes when run again")),
        "one line naming the directory:\n{full}"
    );
    tmpfs.resize("64m");
    assert_success(&h2.docker(&["pull", &big2]), "docker pull with room again");
    let log = h2.log("arpanetd");
    // The pull that failed kept its pieces: this one starts from them.
    let again = log
        .lines()
        .rfind(|l| l.contains(&format!("fetching {short2} (")))
        .unwrap();
    let here: u64 = again
        .split(" pieces, ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap();
    let pieces = size2.div_ceil(arpanet::registry::pieces::MIN_PIECE);
    assert!(
        here > 0 && here < pieces,
        "the second pull started from {here} of {pieces} pieces: {again}"
    );
    drop(tmpfs);
}
