# The two commands a newcomer needs: `make run` and `make test`.
.PHONY: run test deps lint unit packages demo bench-overlay bench-containers bench-images bench-join bench-scale

# Show what the example config makes of a node (no daemon, no root needed).
run:
	cargo run --quiet --bin arpanet -- --config etc/arpanet/arpanet.toml info

# Everything: installs the real components the tests use, then lint and all tests
# (benchmarks are compiled and linted here, and run by the bench-* targets); it ends
# with how long each test topic took and PASSED or FAILED (scripts/cargo-test-timed).
test: deps lint packages
	scripts/cargo-test-timed

# The .deb and .rpm in target/packages: revision 1, and revision 2 for the upgrade test
# (the dev profile's binaries, stripped, so that `make test` builds nothing twice).
packages:
	scripts/build-packages --profile dev --deb-version 0.1.0-2
	scripts/build-packages --profile dev

# A 3-machine arpanet cluster on this host (systemd-nspawn machines running Debian 12,
# the .deb installed, boot/server/client), with each machine's `arpanet status` and a
# way into a shell; Enter removes it. Root.
demo: deps packages
	cargo test --test suite -- --ignored --nocapture --exact packaging::demo

deps:
	scripts/install-test-deps

lint:
	cargo fmt --check
	scripts/check-module-cycles
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

# Time to join 3 nodes by hand: arpanet boot|server|client, start, listed (root).
bench-join: deps
	cargo bench --bench join_time

# How costs grow with nodes: joins, mesh, placement, ps --all, re-placement, partition
# heal and memory at NODES=5 10 20 lab hosts, then the 10-node lab test (root).
bench-scale: deps
	cargo bench --bench scale
	cargo test --test suite -- --ignored --exact scale::ten_nodes_mesh_spread_and_survive_a_kill_and_a_partition

# One image (1 layer, then 4) onto 5 nodes over 100 Mbit/s links: a registry vs
# opentracker+ctorrent (Docket) vs arpanet's node registry swarm, then a 10 MB update
# (root). IMAGE_MB, NODES (a list: 2,5,10), RATE_MBIT, LAYERS, UPDATE_MB, METHODS.
# (`deps` installs docker-registry; `command -v a b` succeeds if either exists, so one each.)
bench-images: deps
	command -v opentracker >/dev/null && command -v ctorrent >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq opentracker ctorrent)
	cargo bench --bench image_swarm
