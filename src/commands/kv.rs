use std::io::{Read, Write};
use std::path::Path;

use anyhow::bail;
use clap::{Args, Subcommand};

use crate::config::Config;
use crate::consul::client::Consul;

/// Read and write Consul's key/value store.
#[derive(Debug, Args)]
pub struct Kv {
    #[command(subcommand)]
    pub action: KvAction,
}

#[derive(Debug, Subcommand)]
pub enum KvAction {
    /// Print a key's value.
    Get { key: String },
    /// Set a key; VALUE `-` reads standard input.
    Put { key: String, value: String },
    /// Delete a key, or with --recurse everything under it.
    Del {
        key: String,
        #[arg(long)]
        recurse: bool,
    },
    /// List the keys under a prefix.
    Ls {
        #[arg(default_value = "")]
        prefix: String,
        /// Print JSON instead of one key per line.
        #[arg(long)]
        json: bool,
    },
}

impl Kv {
    pub async fn exec(&self, config_path: &Path) -> anyhow::Result<()> {
        let config = Config::load(config_path)?;
        let consul = Consul::for_node(&config);
        match &self.action {
            KvAction::Get { key } => match consul.kv_get(key).await? {
                Some(value) => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&value)?;
                    if !value.ends_with(b"\n") {
                        out.write_all(b"\n")?;
                    }
                }
                None => bail!("no key `{key}` in Consul"),
            },
            KvAction::Put { key, value } => {
                let bytes = if value == "-" {
                    let mut buf = Vec::new();
                    std::io::stdin().read_to_end(&mut buf)?;
                    buf
                } else {
                    value.clone().into_bytes()
                };
                consul.kv_put(key, bytes).await?;
            }
            KvAction::Del { key, recurse } => consul.kv_delete(key, *recurse).await?,
            KvAction::Ls { prefix, json } => {
                let keys = consul.kv_keys(prefix).await?;
                if *json {
                    println!("{}", serde_json::to_string_pretty(&keys)?);
                } else {
                    for k in keys {
                        println!("{k}");
                    }
                }
            }
        }
        Ok(())
    }
}
