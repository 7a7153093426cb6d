//! `arpanet consul-token NODE`: make (or replace) a node's Consul ACL token on a server
//! that holds the management token, and print its SecretID. The join service hands a
//! joiner its token; this is the operator's way to remake one by hand (the lab uses it
//! for hosts it enrolls without a join).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;

use crate::config::Config;
use crate::consul::acl;
use crate::consul::client::{Consul, read_token_file};
use crate::paths::IdentityFiles;

/// Make a node's Consul ACL token (on a server with the management token); prints its SecretID.
#[derive(Debug, Args)]
pub struct ConsulToken {
    /// The node's name (its Consul node name: `node.name`, else its hostname).
    pub node: String,
    /// Give the token this SecretID, read from PATH, instead of a new random one
    /// (prints nothing then).
    #[arg(long, value_name = "PATH")]
    pub secret_file: Option<PathBuf>,
    /// The management token's file (default: this node's, in `cluster.identity_dir`).
    #[arg(long, value_name = "PATH")]
    pub management_token_file: Option<PathBuf>,
}

impl ConsulToken {
    pub async fn exec(&self, config_path: &Path) -> anyhow::Result<()> {
        let config = Config::load(config_path)?;
        let management = self.management_token_file.clone().unwrap_or_else(|| {
            IdentityFiles::new(&config.cluster.identity_dir).consul_management_token()
        });
        if read_token_file(&management)?.is_none() {
            bail!(
                "{}: no management token here; run this on a server that has one (the boot node does)",
                management.display()
            );
        }
        let client = Consul::new(config.consul.http_addr).with_token_file(&management);
        match &self.secret_file {
            Some(path) => {
                let secret = read_token_file(path)?
                    .with_context(|| format!("{}: no such file", path.display()))?;
                acl::ensure_node_token(&client, &self.node, &secret).await?;
            }
            None => println!("{}", acl::create_node_token(&client, &self.node).await?),
        }
        Ok(())
    }
}
