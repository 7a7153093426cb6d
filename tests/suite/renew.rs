//! Certificate renewal while the nodes run: a server renews its own with the CA key it
//! holds, a client through a server (`POST /v1/identity/renew` on 10.255.a.b:7100), and
//! both go on talking to each other with the new ones, with no restart.

use std::time::{Duration, SystemTime};

use arpanet::identity::{CertInfo, NodeIdentity, NodeKey, Role};

use crate::lab::{Host, Lab, assert_success, wait_until};

const CONSUL: &str = "[consul]\nmode = \"config\"\n";

/// Writes into `host`'s identity dir a certificate with less than a third of its
/// lifetime left: valid from two hours ago for another half hour.
fn due_identity(lab: &Lab, host: &Host, role: Role) -> CertInfo {
    let who = NodeIdentity {
        cluster: "arpanet-lab".into(),
        address: host.address,
        role,
    };
    let key = NodeKey::generate().unwrap();
    let now = SystemTime::now();
    let issued = lab
        .ca
        .issue_between(
            &key.csr_pem().unwrap(),
            &who,
            now - Duration::from_secs(2 * 3600),
            now + Duration::from_secs(1800),
        )
        .unwrap();
    let files = host.identity_files();
    arpanet::identity::write_identity(&files, &lab.ca.cert_pem, &issued.cert_pem, &key.key_pem())
        .unwrap();
    if role == Role::Server {
        lab.ca.store(&files).unwrap();
    }
    let info = CertInfo::from_pem(&issued.cert_pem).unwrap();
    assert!(info.due_for_renewal(now));
    info
}

fn cert(h: &Host) -> CertInfo {
    let pem = std::fs::read_to_string(h.identity_files().node_cert()).unwrap();
    CertInfo::from_pem(&pem).unwrap()
}

/// The serial `node rm` would revoke for `h`.
fn recorded_serial(reader: &Host, h: &Host) -> Option<String> {
    let out = reader.consul(&[
        "kv",
        "get",
        &format!("arpanet/identity/nodes/{}", h.address),
    ]);
    if !out.status.success() {
        return None;
    }
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    record["serial"].as_str().map(str::to_string)
}

#[test]
fn due_certificates_are_renewed_in_place_and_the_nodes_go_on_talking() {
    require_lab!();
    let lab = Lab::builder(2).start();
    let (h0, h1) = (&lab.hosts[0], &lab.hosts[1]);
    let old0 = due_identity(&lab, h0, Role::Server);
    let old1 = due_identity(&lab, h1, Role::Client);
    lab.write_arpanet_config(0, "boot", &[1], CONSUL);
    lab.write_arpanet_config(1, "client", &[0], CONSUL);
    Host::start_nodes(&[h0, h1]);
    for h in [h0, h1] {
        h.wait_for_nodes(2, Duration::from_secs(60));
    }

    for (h, old, how) in [
        (h0, &old0, "with this server's CA key"),
        (h1, &old1, "through a server"),
    ] {
        wait_until(
            Duration::from_secs(60),
            &format!("{}'s renewed certificate", h.address),
            || cert(h).serial != old.serial,
        );
        let new = cert(h);
        assert_eq!(new.identity, old.identity);
        assert!(new.not_after > old.not_after + Duration::from_secs(80 * 24 * 3600));
        assert!(!new.due_for_renewal(SystemTime::now()));
        wait_until(
            Duration::from_secs(20),
            &format!("the KV record of {} naming {}", h.address, new.serial),
            || recorded_serial(h0, h).as_deref() == Some(new.serial.as_str()),
        );
        let log = h.log("arpanetd");
        let line = format!(
            "renewed the node certificate ({how}): serial {} -> {}",
            old.serial, new.serial
        );
        assert_eq!(log.matches(&line).count(), 1, "{log}");
    }
    assert!(
        h0.log("arpanetd")
            .contains(&format!("renewed the certificate of node {}", h1.address)),
        "{}",
        h0.log("arpanetd")
    );

    // The old certificates revoked on both: the nodes' next calls show the new ones.
    for h in [h0, h1] {
        std::fs::write(
            h.dir.join("state/revoked.json"),
            serde_json::to_vec(&[&old0.serial, &old1.serial]).unwrap(),
        )
        .unwrap();
    }
    for h in [h1, h0] {
        let ps = h.arpanet(&["ps", "--all", "--json"]);
        assert_success(&ps, "ps --all");
        let stderr = String::from_utf8_lossy(&ps.stderr);
        assert!(
            !stderr.contains("did not answer"),
            "{}: {stderr}",
            h.address
        );
    }
    // Renewed once, and arpanetd never restarted.
    for h in [h0, h1] {
        let log = h.log("arpanetd");
        assert_eq!(log.matches("arpanetd ready").count(), 1, "{log}");
        assert_eq!(
            log.matches("renewed the node certificate").count(),
            1,
            "{log}"
        );
    }
}
