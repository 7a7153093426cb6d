//! `arpanet token show|rotate [server|client]`: the cluster's join tokens, on a server.
//! They live in Consul KV under a key only the management token reads; before the boot
//! node's arpanetd has published them, `show` reads the boot node's own copy.

use std::path::Path;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use crate::config::Config;
use crate::identity::{JoinSecrets, LocalIdentity, Role, token::new_secret};
use crate::join::SECRETS_KEY;
use crate::paths::IdentityFiles;

#[derive(Debug, Args)]
pub struct Token {
    #[command(subcommand)]
    pub verb: Verb,
}

#[derive(Debug, Subcommand)]
pub enum Verb {
    /// Print the join token for a role (both without one).
    Show {
        role: Option<Role>,
        /// Print JSON: {"server": TOKEN, "client": TOKEN}.
        #[arg(long)]
        json: bool,
    },
    /// Make a new token for a role (both without one): joins with the old one fail from
    /// now on; nodes that joined with it keep working.
    Rotate { role: Option<Role> },
}

impl clap::ValueEnum for Role {
    fn value_variants<'a>() -> &'a [Self] {
        &[Role::Server, Role::Client]
    }
    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.as_str()))
    }
}

fn roles(role: Option<Role>) -> Vec<Role> {
    role.map_or_else(|| vec![Role::Server, Role::Client], |r| vec![r])
}

impl Token {
    pub async fn exec(&self, config_path: &Path) -> anyhow::Result<()> {
        let config = Config::load(config_path)?;
        let files = IdentityFiles::new(&config.cluster.identity_dir);
        let local = LocalIdentity::load(&files)?;
        if local.info.identity.role != Role::Server || !files.ca_key().exists() {
            bail!(
                "join tokens are kept by servers: run this on a server (this node is a {})",
                local.info.identity.role
            );
        }
        let digest = local.ca_digest();
        let consul = crate::consul::client::Consul::for_management(&config);
        match &self.verb {
            Verb::Show { role, json } => {
                let secrets = match crate::join::server::read_secrets(&consul).await {
                    Ok(Some(s)) => s,
                    Ok(None) => local_secrets(&files)?,
                    Err(e) => {
                        // Consul down: the boot node's copy, if it still has one.
                        local_secrets(&files)
                            .with_context(|| format!("Consul did not answer ({})", e.1))?
                    }
                };
                if *json {
                    let mut obj = serde_json::Map::new();
                    for r in roles(*role) {
                        obj.insert(r.to_string(), secrets.token(r, &digest).to_string().into());
                    }
                    println!("{}", serde_json::Value::Object(obj));
                } else {
                    for r in roles(*role) {
                        if role.is_some() {
                            println!("{}", secrets.token(r, &digest));
                        } else {
                            println!("{r}: {}", secrets.token(r, &digest));
                        }
                    }
                }
            }
            Verb::Rotate { role } => {
                let mut secrets = crate::join::server::read_secrets(&consul)
                    .await
                    .map_err(|e| anyhow::anyhow!("read the join tokens from Consul: {}", e.1))?
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "the cluster's join tokens are not in Consul yet (arpanetd on the boot node publishes them once Consul has a leader)"
                        )
                    })?;
                for r in roles(*role) {
                    secrets.set(r, new_secret()?);
                }
                consul
                    .kv_put(
                        SECRETS_KEY,
                        serde_json::to_vec(&secrets).expect("secrets serialize"),
                    )
                    .await
                    .context("store the new join tokens in Consul")?;
                for r in roles(*role) {
                    println!(
                        "rotated the {r} token; joins with the old one fail from now on:\n  {}",
                        secrets.token(r, &digest)
                    );
                }
            }
        }
        Ok(())
    }
}

fn local_secrets(files: &IdentityFiles) -> anyhow::Result<JoinSecrets> {
    let path = files.join_secrets();
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "the join tokens are not in Consul and {} does not hold them",
            path.display()
        )
    })?;
    crate::http::parse_json(&bytes).map_err(|why| anyhow::anyhow!("{}: {why}", path.display()))
}
