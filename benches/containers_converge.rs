//! Time for `arpanet up` to converge 50 declared containers from nothing, and a pass
//! with nothing changed, on a lab host's real dockerd. `make bench-containers`.
//! Prints figures; asserts nothing about speed.

#[path = "../tests/suite/lab/mod.rs"]
#[macro_use]
mod lab;

use std::time::{Duration, Instant};

use lab::{Lab, TEST_IMAGE, assert_success};

const CONTAINERS: usize = 50;

fn timed(host: &lab::Host, args: &[&str]) -> Duration {
    let started = Instant::now();
    assert_success(&host.arpanet(args), &format!("arpanet {}", args.join(" ")));
    started.elapsed()
}

fn main() {
    require_lab!();
    let (lab, _, dir) = Lab::containers_host();
    let host = &lab.hosts[0];
    for file in 0..5 {
        let text: String = (0..CONTAINERS / 5)
            .map(|i| {
                format!(
                    "[[container]]\nname = \"c{file}-{i}\"\nimage = \"{TEST_IMAGE}\"\ncommand = [\"sleep\", \"3600\"]\nupdate = {{ pull = false }}\n\n"
                )
            })
            .collect();
        std::fs::write(dir.join(format!("f{file}.toml")), text).unwrap();
    }
    let from_nothing = timed(host, &["up"]);
    let unchanged = timed(host, &["up"]);
    let plan = timed(host, &["up", "--dry-run"]);
    let running =
        lab::stdout(&host.docker(&["ps", "-q", "--filter", "label=arpanet.managed=true"]))
            .lines()
            .count();
    println!("containers.d convergence ({CONTAINERS} containers, busybox, one lab host)");
    println!(
        "  from nothing      {:>8.2} s ({running} running after)",
        from_nothing.as_secs_f64()
    );
    println!("  nothing changed   {:>8.3} s", unchanged.as_secs_f64());
    println!("  --dry-run         {:>8.3} s", plan.as_secs_f64());
    println!(
        "  ratio             {:>8.1}x (from nothing / nothing changed)",
        from_nothing.as_secs_f64() / unchanged.as_secs_f64()
    );
    lab.teardown().expect("teardown");
}
