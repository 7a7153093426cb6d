//! Overlay TCP throughput as a ratio of the underlay's, between two lab hosts.
//! `make bench-overlay` (root; iperf3). Prints figures; asserts nothing about speed.

#[path = "../tests/suite/lab/mod.rs"]
#[macro_use]
mod lab;

use lab::{Lab, assert_success, wait_until};
use std::time::Duration;

fn iperf(client: &lab::Host, target: &str, seconds: u32) -> f64 {
    let out = client.exec(&["iperf3", "-J", "-t", &seconds.to_string(), "-c", target]);
    assert_success(&out, "iperf3 client");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 JSON");
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .expect("bits_per_second")
}

fn main() {
    require_lab!();
    let seconds = std::env::var("SECONDS_PER_RUN")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let lab = Lab::builder(2).start();
    lab.write_arpanet_configs("[consul]\nmode = \"disabled\"\n");
    for host in &lab.hosts {
        assert_success(&host.arpanetd_once(), "arpanetd --once");
    }
    let (client, server) = (&lab.hosts[0], &lab.hosts[1]);
    server.spawn("iperf3", &["iperf3".as_ref(), "-s".as_ref()]);
    wait_until(Duration::from_secs(10), "iperf3 server", || {
        client
            .exec(&["iperf3", "-c", &server.underlay_ip.to_string(), "-t", "1"])
            .status
            .success()
    });
    // /sys under nsenter --net is still the root namespace's; ask the kernel instead.
    let link = lab::stdout(&client.exec(&["ip", "-o", "link", "show", "arpanet0"]));
    let mtu = link
        .split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .unwrap_or("?")
        .to_string();
    let underlay = iperf(client, &server.underlay_ip.to_string(), seconds);
    let overlay = iperf(client, &server.address.overlay_ip().to_string(), seconds);
    println!(
        "overlay throughput ({seconds} s each, veth underlay, overlay MTU {})",
        mtu.trim()
    );
    println!("  underlay {:>8.0} Mbit/s", underlay / 1e6);
    println!("  overlay  {:>8.0} Mbit/s", overlay / 1e6);
    println!(
        "  ratio    {:>8.2} (overlay / underlay)",
        overlay / underlay
    );
    lab.teardown().expect("teardown");
}
