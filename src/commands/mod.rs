//! One file per `arpanet` verb.

pub mod check;
pub mod info;
pub mod status;
pub mod uninstall_network;
