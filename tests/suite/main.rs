//! The integration tests: one binary, one module per topic, so the lab harness
//! (`lab/`) is compiled once. `make test` runs them with cargo-nextest, one process
//! per test; `.config/nextest.toml` says which may run at once and why.
//! One topic: `cargo nextest run --test suite -E 'test(/^services::/)'`, or
//! `cargo test --test suite -- services::`.

#[macro_use]
mod lab;

mod admission;
mod cli;
mod consul;
mod containers;
mod daemon;
mod docker_api;
mod identity;
mod image_sync;
mod lab_hosts;
mod metrics;
mod node_tls;
mod overlay;
mod packaging;
mod registration;
mod registry;
mod registry_faults;
mod registry_gc;
mod renew;
mod rollouts;
mod scale;
mod service_logs;
mod services;
mod systemd_machine;

/// The text of `tests/fixtures/NAME`, a whole config or containers.d file, with
/// `@TEST_IMAGE@` standing for the lab's test image.
pub fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
        .replace("@TEST_IMAGE@", lab::TEST_IMAGE)
}
