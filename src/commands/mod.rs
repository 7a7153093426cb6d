//! One file per `arpanet` verb.

pub mod check;
pub mod completions;
pub mod consul_agent;
pub mod consul_token;
pub mod docker_env;
pub mod image;
pub mod images;
pub mod info;
pub mod is_configured;
pub mod kv;
pub mod lifecycle;
pub mod logs;
pub mod man;
pub mod members;
pub mod node;
pub mod ps;
pub mod secret;
pub mod seed;
pub mod service;
pub mod status;
pub mod stop_node;
pub mod table;
pub mod template;
pub mod token;
pub mod uninstall_network;
pub mod up;
