//! arpanet: one cluster out of a set of Docker hosts.
//!
//! Data flows one way: [`config`] (what the operator wrote) -> [`plan`] (what this
//! node should look like) -> one [`pass::Snapshot`] per pass (the plan and every
//! runtime input: catalog, KV, local images) -> the [`pass`] reconcilers, which compare
//! it with the real system and report an [`outcome::Outcome`].
//! [`addressing`] is the seed design every plane's address comes from.
//!
//! Imports point down only, in this order (a module uses those before it):
//! `addressing`, `files`, `human`, `http`, `sd`, `logging`, `outcome`, `metrics`; `config`,
//! `plan`, `paths`; `identity`; `systemd`, `docker`, `network`; `consul`; `join`; `imagesync`; `registry`; `containers`;
//! `placement`; `api`; `pass`; `daemon`; `commands`. `scripts/check-module-cycles` (in `make lint`) fails on a cycle.

pub mod addressing;
pub mod api;
pub mod commands;
pub mod config;
pub mod consul;
pub mod containers;
pub mod daemon;
pub mod docker;
pub mod files;
pub mod http;
pub mod human;
pub mod identity;
pub mod imagesync;
pub mod join;
pub mod logging;
pub mod metrics;
pub mod network;
pub mod outcome;
pub mod pass;
pub mod paths;
pub mod placement;
pub mod plan;
pub mod registry;
pub mod sd;
pub mod systemd;
