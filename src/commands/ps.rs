use std::path::Path;

use clap::Args;

use super::table;
use crate::api::client::ApiClient;
use crate::api::{ContainerRow, Listing};
use crate::config::Config;

/// List containers: this node's, one node's (--node) or the whole cluster's (--all).
#[derive(Debug, Args)]
pub struct Ps {
    #[command(flatten)]
    pub nodes: table::Nodes,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl Ps {
    pub async fn exec(&self, config_path: &Path) -> anyhow::Result<()> {
        let config = Config::load(config_path)?;
        let path = self.nodes.path("/v1/containers");
        let listing: Listing<ContainerRow> = ApiClient::from_config(&config).get(&path).await?;
        table::warn_unreachable(&listing.unreachable);
        table::emit(
            self.json,
            &listing.items,
            &["NODE", "ID", "NAME", "IMAGE", "SERVICE", "STATUS"],
            |c| {
                vec![
                    c.node.clone(),
                    crate::docker::engine::short(&c.id).to_string(),
                    c.name.clone(),
                    c.image.clone(),
                    c.service.clone().unwrap_or_else(|| "-".into()),
                    c.status.clone(),
                ]
            },
        )
    }
}
