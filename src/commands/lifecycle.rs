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
