use std::path::Path;

use clap::Args;

use super::table;
use crate::api::client::ApiClient;
use crate::api::{ContainerRow, Listing};
use crate::config::Config;

/// List containers: this node's, one node's (--node) or the whole cluster's (--all).
#[derive(Debug, Args)]
pub struct Ps {
    /// Every node's containers.
    #[arg(long, short)]
    pub all: bool,
    /// One node's containers (its arpanet address, e.g. 0.2).
    #[arg(long, conflicts_with = "all")]
    pub node: Option<crate::addressing::NodeAddress>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl Ps {
    pub async fn exec(&self, config_path: &Path) -> anyhow::Result<()> {
        let config = Config::load(config_path)?;
        let path = match (self.all, self.node) {
            (_, Some(node)) => format!("/v1/containers?node={node}"),
            (true, None) => "/v1/containers?all=true".to_string(),
            (false, None) => "/v1/containers".to_string(),
        };
        let listing: Listing<ContainerRow> = ApiClient::from_config(&config).get(&path).await?;
        table::warn_unreachable(&listing.unreachable);
        if self.json {
            println!("{}", serde_json::to_string_pretty(&listing.items)?);
            return Ok(());
        }
        let rows: Vec<Vec<String>> = listing
            .items
            .iter()
            .map(|c| {
                vec![
                    c.node.clone(),
                    crate::docker::engine::short(&c.id).to_string(),
                    c.name.clone(),
                    c.image.clone(),
                    c.service.clone().unwrap_or_else(|| "-".into()),
                    c.status.clone(),
                ]
            })
            .collect();
        table::print(&["NODE", "ID", "NAME", "IMAGE", "SERVICE", "STATUS"], &rows);
        Ok(())
    }
}
