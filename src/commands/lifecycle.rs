//! `arpanet start|stop|restart|rm|inspect ID`: one container, wherever it runs. The
//! five verbs differ only in the request, so they share this file.

use std::path::Path;

use clap::Args;

use crate::api::Done;
use crate::api::client::ApiClient;
use crate::config::Config;

#[derive(Debug, Args)]
pub struct ContainerId {
    /// A container ID, ID prefix or name, on any node.
    pub id: String,
}

/// `arpanet stop [ID]`: a container anywhere, or without an ID this node's services.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// A container ID, ID prefix or name, on any node. Without one, arpanetd and its
    /// Consul agent stop on this host and stay off at boot.
    pub id: Option<String>,
}

impl StopArgs {
    pub async fn exec(&self, config_path: &Path) -> anyhow::Result<()> {
        match &self.id {
            Some(id) => {
                ContainerId { id: id.clone() }
                    .exec(config_path, Verb::Stop)
                    .await
            }
            None => super::stop_node::exec().await,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Verb {
    Start,
    Stop,
    Restart,
    Rm,
    Inspect,
}

impl ContainerId {
    pub async fn exec(&self, config_path: &Path, verb: Verb) -> anyhow::Result<()> {
        let config = Config::load(config_path)?;
        let api = ApiClient::from_config(&config);
        let path = format!("/v1/containers/{}", self.id);
        let done: Done = match verb {
            Verb::Inspect => {
                let inspect: serde_json::Value = api.get(&path).await?;
                println!("{}", serde_json::to_string_pretty(&inspect)?);
                return Ok(());
            }
            Verb::Rm => api.delete(&path).await?,
            Verb::Start => api.post(&format!("{path}/start"), None::<&()>).await?,
            Verb::Stop => api.post(&format!("{path}/stop"), None::<&()>).await?,
            Verb::Restart => api.post(&format!("{path}/restart"), None::<&()>).await?,
        };
        println!(
            "{} {} on node {}",
            done.action,
            crate::docker::engine::short(&done.id),
            done.node
        );
        Ok(())
    }
}
