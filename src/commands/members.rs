use std::path::Path;

use clap::Args;
use serde::Serialize;

use crate::config::Config;
use crate::consul::client::Consul;

/// List the cluster's nodes as Consul's gossip sees them.
#[derive(Debug, Args)]
pub struct Members {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct MemberView {
    pub name: String,
    pub address: String,
    pub status: String,
    pub role: String,
    /// The node's arpanet address, read off its Consul-plane IP (10.253.a.b).
    pub arpanet_address: Option<String>,
}

impl Members {
    pub async fn exec(&self, config_path: &Path) -> anyhow::Result<()> {
        let config = Config::load(config_path)?;
        let consul = Consul::for_node(&config);
        let mut members: Vec<MemberView> = consul
            .members()
            .await?
            .into_iter()
            .map(|m| {
                let arpanet_address = m
                    .addr
                    .strip_prefix("10.253.")
                    .filter(|rest| rest.parse::<crate::addressing::NodeAddress>().is_ok())
                    .map(str::to_string);
                MemberView {
                    status: m.status_name().into(),
                    role: m.role().into(),
                    address: m.addr.clone(),
                    name: m.name,
                    arpanet_address,
                }
            })
            .collect();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        if self.json {
            println!("{}", serde_json::to_string_pretty(&members)?);
            return Ok(());
        }
        println!(
            "{:<20} {:<16} {:<8} {:<7} ARPANET",
            "NODE", "ADDRESS", "STATUS", "ROLE"
        );
        for m in &members {
            println!(
                "{:<20} {:<16} {:<8} {:<7} {}",
                m.name,
                m.address,
                m.status,
                m.role,
                m.arpanet_address.as_deref().unwrap_or("-")
            );
        }
        Ok(())
    }
}
