use std::path::Path;

use clap::Args;

use super::table;
use crate::api::client::ApiClient;
use crate::api::{ImageRow, Listing};
use crate::config::Config;

/// List Docker images: this node's, one node's (--node) or every node's (--all).
#[derive(Debug, Args)]
pub struct Images {
    #[arg(long, short)]
    pub all: bool,
    #[arg(long, conflicts_with = "all")]
    pub node: Option<crate::addressing::NodeAddress>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl Images {
    pub async fn exec(&self, config_path: &Path) -> anyhow::Result<()> {
        let config = Config::load(config_path)?;
        let path = match (self.all, self.node) {
            (_, Some(node)) => format!("/v1/images?node={node}"),
            (true, None) => "/v1/images?all=true".to_string(),
            (false, None) => "/v1/images".to_string(),
        };
        let listing: Listing<ImageRow> = ApiClient::from_config(&config).get(&path).await?;
        table::warn_unreachable(&listing.unreachable);
        if self.json {
            println!("{}", serde_json::to_string_pretty(&listing.items)?);
            return Ok(());
        }
        let rows: Vec<Vec<String>> = listing
            .items
            .iter()
            .map(|i| {
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
            })
            .collect();
        table::print(&["NODE", "ID", "TAGS", "SIZE"], &rows);
        Ok(())
    }
}
