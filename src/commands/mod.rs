//! One file per `arpanet` verb.

pub mod check;
pub mod consul_agent;
pub mod info;
pub mod kv;
pub mod members;
pub mod secret;
pub mod status;
pub mod uninstall_network;
pub mod up;
