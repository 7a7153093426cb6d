use std::path::Path;

use clap::Args;

use super::table;
use crate::api::client::ApiClient;
use crate::api::{ImageRow, Listing};
use crate::config::Config;

/// List Docker images: this node's, one node's (--node) or every node's (--all).
#[derive(Debug, Args)]
pub struct Images {
    #[command(flatten)]
    pub nodes: table::Nodes,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl Images {
    pub async fn exec(&self, config_path: &Path) -> anyhow::Result<()> {
        let config = Config::load(config_path)?;
        let path = self.nodes.path("/v1/images");
        let listing: Listing<ImageRow> = ApiClient::from_config(&config).get(&path).await?;
        table::warn_unreachable(&listing.unreachable);
        table::emit(
            self.json,
            &listing.items,
            &["NODE", "ID", "TAGS", "SIZE"],
            |i| {
                vec![
                    i.node.clone(),
                    crate::docker::engine::short(i.id.trim_start_matches("sha256:")).to_string(),
                    if i.tags.is_empty() {
                        "<none>".to_string()
                    } else {
                        i.tags.join(",")
                    },
                    format!("{:.1} MB", i.size as f64 / 1e6),
                ]
            },
        )
    }
}
