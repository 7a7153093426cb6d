use std::path::Path;

use clap::{Args, Subcommand};

use super::table;
use crate::addressing::NodeAddress;
use crate::api::client::ApiClient;
use crate::api::{Listing, NodeRow};
use crate::config::Config;

/// The nodes that take cluster-service instances (DockerMod's register/unregister).
#[derive(Debug, Args)]
pub struct NodeCmd {
    #[command(subcommand)]
    pub verb: Verb,
}

#[derive(Debug, Subcommand)]
pub enum Verb {
    /// Move every cluster-service instance off a node and place none there.
    Drain { node: NodeAddress },
    /// Let a drained node take instances again.
    Undrain { node: NodeAddress },
    /// List the healthy nodes and whether they are drained.
    Ls {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

impl NodeCmd {
    pub async fn exec(&self, config_path: &Path) -> anyhow::Result<()> {
        let config = Config::load(config_path)?;
        let api = ApiClient::from_config(&config);
        match &self.verb {
            Verb::Drain { node } => {
                let _: serde_json::Value = api
                    .post(&format!("/v1/nodes/{node}/drain"), None::<&()>)
                    .await?;
                println!("node {node} drained: its instances move to the other nodes");
            }
            Verb::Undrain { node } => {
                let _: serde_json::Value = api
                    .post(&format!("/v1/nodes/{node}/undrain"), None::<&()>)
                    .await?;
                println!("node {node} takes instances again");
            }
            Verb::Ls { json } => {
                let listing: Listing<NodeRow> = api.get("/v1/nodes").await?;
                let headers = ["NODE", "ROLE", "PLACEMENT", "LABELS"];
                table::emit(*json, &listing.items, &headers, |n| {
                    let labels: Vec<String> =
                        n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    vec![
                        n.address.clone(),
                        n.role.clone(),
                        if n.drained { "drained" } else { "active" }.to_string(),
                        labels.join(","),
                    ]
                })?;
            }
        }
        Ok(())
    }
}
