use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use super::table;
use crate::api::Listing;
use crate::api::client::ApiClient;
use crate::config::Config;
use crate::placement::TemplateName;
use crate::placement::wire::{ContainerSpecV1, TemplateRowV1};

/// Templates: container specs stored in the cluster, for `service create --template`.
#[derive(Debug, Args)]
pub struct Template {
    #[command(subcommand)]
    pub verb: Verb,
}

#[derive(Debug, Subcommand)]
pub enum Verb {
    /// Store every [[container]] of a containers.d-style file as a template of its name.
    Add { file: PathBuf },
    /// List templates.
    Ls {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a template (services created from it keep their copy).
    Rm { name: String },
}

impl Template {
    pub async fn exec(&self, config_path: &Path) -> anyhow::Result<()> {
        let config = Config::load(config_path)?;
        let api = ApiClient::from_config(&config);
        match &self.verb {
            Verb::Add { file } => {
                for c in crate::config::containers::load_file(file)? {
                    // Checked here too: a name goes into the request's path.
                    let name = TemplateName::try_from(c.spec.name.as_str().to_string())
                        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
                    let spec = ContainerSpecV1::from(&c.spec);
                    let _: TemplateRowV1 = api.put(&format!("/v1/templates/{name}"), &spec).await?;
                    println!("template {name} stored");
                }
            }
            Verb::Ls { json } => {
                let listing: Listing<TemplateRowV1> = api.get("/v1/templates").await?;
                table::emit(*json, &listing.items, &["NAME", "IMAGE"], |t| {
                    vec![t.name.clone(), t.spec.image.as_str().to_string()]
                })?;
            }
            Verb::Rm { name } => {
                let name = TemplateName::try_from(name.clone()).map_err(anyhow::Error::msg)?;
                let _: serde_json::Value = api.delete(&format!("/v1/templates/{name}")).await?;
                println!("template {name} removed");
            }
        }
        Ok(())
    }
}
