//! Docker: the engine's configuration (daemon.json and, under systemd, a drop-in).

pub mod daemon_json;
