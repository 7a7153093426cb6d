# The two commands a newcomer needs: `make run` and `make test`.
.PHONY: run test deps lint unit bench-overlay bench-containers

# Show what the example config makes of a node (no daemon, no root needed).
run:
	cargo run --quiet --bin arpanet -- --config etc/arpanet/arpanet.toml info

# Everything: installs the real components the tests use, then lint and all tests
# (benchmarks are compiled and linted here, and run by the bench-* targets).
test: deps lint
	cargo test

deps:
	scripts/install-test-deps

lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

# Pure-logic tests only: no root, no dockerd, no Consul.
unit:
	cargo test --lib

# Overlay vs underlay TCP throughput between two lab hosts (root, iperf3).
bench-overlay: deps
	cargo bench --bench overlay_throughput

# Time to converge 50 declared containers from nothing and with nothing changed (root).
bench-containers: deps
	cargo bench --bench containers_converge
