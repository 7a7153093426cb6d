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
    /// Remove a node from the cluster for good (on a server): its certificate is
    /// revoked everywhere, its Consul token deleted, it leaves Consul, and its
    /// instances are placed elsewhere. To come back it joins again with a token.
    Rm {
        node: NodeAddress,
        /// Remove a server too. A server holds the CA key and the management token, which
        /// stay valid wherever it keeps copies: a removed server that was taken over can
        /// still issue certificates, so the CA must then be replaced.
        #[arg(long)]
        force: bool,
    },
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
        if let Verb::Rm { node, force } = &self.verb {
            return remove(&config, *node, *force).await;
        }
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
            Verb::Rm { .. } => unreachable!("handled above"),
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

/// `node rm`: done here with the management token rather than through arpanetd, as it
/// is a server's administrative act that must work even when arpanetd is busy. Each step
/// is idempotent, so running it again after a failure finishes the job.
async fn remove(config: &Config, node: NodeAddress, force: bool) -> anyhow::Result<()> {
    use anyhow::Context;

    use crate::identity::{LocalIdentity, Role};
    use crate::join::{ISSUED_PREFIX, IssuedV1, REVOKED_PREFIX, RevokedV1};

    let files = crate::paths::IdentityFiles::new(&config.cluster.identity_dir);
    let local = LocalIdentity::load(&files)?;
    if local.info.identity.role != Role::Server {
        anyhow::bail!("node rm: run it on a server (this node is a client)");
    }
    if node == config.node.address {
        anyhow::bail!("node rm: {node} is this node; run it on another server");
    }
    let consul = crate::consul::client::Consul::for_management(config);
    let key = format!("{ISSUED_PREFIX}{node}");
    let issued: IssuedV1 = match consul.kv_get(&key).await? {
        Some(bytes) => crate::http::parse_json(&bytes)
            .map_err(|why| anyhow::anyhow!("Consul key {key}: {why}"))?,
        None => anyhow::bail!(
            "node rm: no certificate was issued to {node} by a join (see `arpanet node ls`); nothing to remove"
        ),
    };
    if issued.role == Role::Server.as_str() && !force {
        anyhow::bail!(
            "node rm: {node} is a server: it holds the CA key and the Consul management token, which removing it does not take back; stop it first, then `node rm --force {node}` (and replace the CA if it may have been taken over)"
        );
    }
    let record = RevokedV1 {
        address: node.to_string(),
        name: issued.name.clone(),
        at: crate::network::admission::unix_now(),
    };
    consul
        .kv_put(
            &format!("{REVOKED_PREFIX}{}", issued.serial),
            serde_json::to_vec(&record).expect("a record serializes"),
        )
        .await
        .context("revoke its certificate")?;
    println!(
        "revoked certificate {} of node {node} ({})",
        issued.serial, issued.name
    );
    crate::consul::acl::delete_node_token(&consul, &issued.name)
        .await
        .context("delete its Consul token")?;
    println!("deleted its Consul token");
    consul
        .force_leave(&issued.name)
        .await
        .context("remove it from Consul's members")?;
    consul
        .catalog_deregister_node(&issued.name)
        .await
        .context("remove it from Consul's catalog")?;
    consul.kv_delete(&key, false).await?;
    println!(
        "node {node} ({}) left the cluster; its instances are placed elsewhere",
        issued.name
    );
    Ok(())
}
