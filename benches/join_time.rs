//! Time to join nodes the way a user does: `arpanet boot` on the first host, then
//! `arpanet server` and `arpanet client` on two more, each started by hand, with real
//! arpanetd, dockerd and Consul in lab namespaces. `make bench-join`. Prints figures;
//! asserts nothing about speed.
//!
//! The same file builds against an arpanet from before node identity (join by
//! `--secret-file`, no certificates), so one run of each gives a like-for-like ratio:
//! it joins with `--token` where the CLI has it.

#[path = "../tests/suite/lab/mod.rs"]
#[macro_use]
mod lab;

use std::time::{Duration, Instant};

use lab::{Host, Lab, assert_success, stdout};

const CONSUL: &str = "[consul]\nmode = \"config\"\n";

/// Host `index` as before its first `arpanet boot|server|client`: the lab's paths in
/// arpanet.toml, no secret and no identity.
fn bare(lab: &Lab, index: usize, role: &str, join: &[usize]) {
    lab.write_arpanet_config(index, role, join, CONSUL);
    let h = &lab.hosts[index];
    let _ = std::fs::remove_dir_all(h.dir.join("identity"));
    let _ = std::fs::remove_file(h.dir.join("secret"));
}

fn timed(host: &Host, args: &[&str]) -> (Duration, String) {
    let started = Instant::now();
    let out = host.arpanet(args);
    assert_success(&out, &format!("arpanet {}", args.join(" ")));
    (started.elapsed(), stdout(&out))
}

/// The token `arpanet boot` printed for `role`.
fn printed_token(boot_output: &str, role: &str) -> String {
    boot_output
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("arpanet {role} ")))
        .and_then(|l| l.split_whitespace().skip_while(|w| *w != "--token").nth(1))
        .unwrap_or_else(|| panic!("no {role} token in:\n{boot_output}"))
        .to_string()
}

fn main() {
    require_lab!();
    let lab = Lab::builder(3).start();
    let (h0, h1, h2) = (&lab.hosts[0], &lab.hosts[1], &lab.hosts[2]);
    let help = stdout(&h0.arpanet(&["server", "--help"]));
    let tokens = help.contains("--token");
    bare(&lab, 0, "boot", &[]);
    bare(&lab, 1, "server", &[0]);
    bare(&lab, 2, "client", &[0]);
    let address = |h: &Host| h.address.to_string();
    let join_peer = format!("{}@{}", h0.address, h0.underlay_ip);

    let (boot_cli, boot_out) = timed(
        h0,
        &[
            "boot",
            &address(h0),
            "--cluster",
            "arpanet-lab",
            "--no-start",
        ],
    );
    let started = Instant::now();
    Host::start_nodes(&[h0]);
    h0.wait_for_nodes(1, Duration::from_secs(120));
    let boot_up = started.elapsed();

    let mut rows = vec![("boot", boot_cli, boot_up)];
    for (h, role, n) in [(h1, "server", 2), (h2, "client", 3)] {
        let secret_file = h0.dir.join("secret");
        let token;
        let mut args = vec![
            role,
            "--cluster",
            "arpanet-lab",
            "--join",
            &join_peer,
            "--no-start",
        ];
        let a = address(h);
        args.insert(1, &a);
        if tokens {
            token = printed_token(&boot_out, role);
            args.extend(["--token", &token]);
        } else {
            args.extend(["--secret-file", secret_file.to_str().unwrap()]);
        }
        let (cli, _) = timed(h, &args);
        let started = Instant::now();
        Host::start_nodes(&[h]);
        h0.wait_for_nodes(n, Duration::from_secs(120));
        rows.push((role, cli, started.elapsed()));
    }
    let total: Duration = rows.iter().map(|(_, cli, up)| *cli + *up).sum();
    let how = if tokens {
        "join tokens, certificates, Consul ACLs and TLS"
    } else {
        "cluster secret (before node identity)"
    };
    println!("joining 3 nodes ({how}), one lab run");
    println!("  node     arpanet <role>   started -> listed by the boot node");
    for (role, cli, up) in &rows {
        println!(
            "  {role:<8} {:>10.2} s   {:>10.2} s",
            cli.as_secs_f64(),
            up.as_secs_f64()
        );
    }
    println!("  total    {:>10.2} s", total.as_secs_f64());
    lab.teardown().expect("teardown");
}
