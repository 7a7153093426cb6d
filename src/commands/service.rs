use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::{Args, Subcommand};

use super::table;
use crate::addressing::NodeAddress;
use crate::api::client::ApiClient;
use crate::api::{Listing, ServiceRow};
use crate::config::{Config, Role};
use crate::placement::wire::{
    ConstraintsV1, ContainerSpecV1, CreateServiceV1, Record, ScaleV1, ServiceDefV1,
};
use crate::placement::{Constraints, ServiceName};

/// Cluster services: N instances of a container, placed evenly across the nodes and
/// re-placed when a node fails.
#[derive(Debug, Args)]
pub struct Service {
    #[command(subcommand)]
    pub verb: Verb,
}

#[derive(Debug, Subcommand)]
pub enum Verb {
    /// Create a service from an image, a template or a containers.d-style file.
    Create(Create),
    /// Change how many instances run.
    Scale {
        name: String,
        #[arg(allow_negative_numbers = true)]
        replicas: i64,
    },
    /// Remove a service; its instances stop on every node.
    Rm { name: String },
    /// List services with their running instances.
    Ls {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the logs of every instance on every node, each line after its instance's
    /// name (`web_0.2_1 | ...`); stdout and stderr merged.
    Logs {
        name: String,
        #[command(flatten)]
        flags: super::logs::LogFlags,
    },
}

#[derive(Debug, Args)]
pub struct Create {
    /// The service's name; instances answer at NAME.service.consul.
    pub name: String,
    /// The image every instance runs (with a tag).
    #[arg(long, group = "what")]
    pub image: Option<String>,
    /// A template stored with `arpanet template add`.
    #[arg(long, group = "what")]
    pub template: Option<String>,
    /// A containers.d file holding one [[container]]: the spec of every instance.
    #[arg(long, group = "what")]
    pub file: Option<PathBuf>,
    #[arg(long, allow_negative_numbers = true)]
    pub replicas: i64,
    /// Run only on nodes of this role (repeatable; `server` includes the boot node).
    #[arg(long, value_parser = parse_role)]
    pub role: Vec<Role>,
    /// Run only on this node (repeatable).
    #[arg(long = "on")]
    pub nodes: Vec<NodeAddress>,
    /// Run only on nodes with this label, KEY=VALUE from `node.labels` (repeatable).
    #[arg(long, value_parser = parse_env)]
    pub label: Vec<(String, String)>,
    /// KEY=VALUE for every instance (repeatable).
    #[arg(long, short, value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// The command to run, after `--`.
    #[arg(last = true)]
    pub command: Vec<String>,
}

fn parse_role(s: &str) -> Result<Role, String> {
    match s {
        "boot" => Ok(Role::Boot),
        "server" => Ok(Role::Server),
        "client" => Ok(Role::Client),
        _ => Err("boot, server or client".into()),
    }
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

impl Service {
    pub async fn exec(&self, config_path: &Path) -> anyhow::Result<()> {
        if let Verb::Create(c) = &self.verb
            && c.image.is_none()
            && c.template.is_none()
            && c.file.is_none()
        {
            bail!("say what runs: --image IMAGE, --template NAME or --file FILE");
        }
        let config = Config::load(config_path)?;
        let api = ApiClient::from_config(&config);
        match &self.verb {
            Verb::Create(c) => {
                let mut req = CreateServiceV1 {
                    name: c.name.clone(),
                    image: c.image.clone(),
                    template: c.template.clone(),
                    replicas: c.replicas,
                    constraints: ConstraintsV1::from(&Constraints {
                        roles: c.role.clone(),
                        nodes: c.nodes.clone(),
                        labels: c.label.iter().cloned().collect(),
                    }),
                    env: c.env.iter().cloned().collect::<BTreeMap<_, _>>(),
                    command: (!c.command.is_empty()).then(|| c.command.clone()),
                    ..CreateServiceV1::default()
                };
                if let Some(file) = &c.file {
                    let declared = crate::config::containers::load_file(file)?;
                    let [one] = declared.as_slice() else {
                        bail!(
                            "{}: declares {} containers; a service's file declares one",
                            file.display(),
                            declared.len()
                        );
                    };
                    req.spec = Some(ContainerSpecV1::from(&one.spec));
                }
                let Record(def): Record<ServiceDefV1> =
                    api.post("/v1/services", Some(&req)).await?;
                println!(
                    "service {} created: {} instance(s) of {}",
                    def.name,
                    def.replicas,
                    def.spec.image.as_str()
                );
            }
            Verb::Scale { name, replicas } => {
                // Checked here too: a name goes into the request's path.
                let name = ServiceName::try_from(name.clone()).map_err(anyhow::Error::msg)?;
                let Record(def): Record<ServiceDefV1> = api
                    .put(
                        &format!("/v1/services/{name}/replicas"),
                        &ScaleV1 {
                            replicas: *replicas,
                        },
                    )
                    .await?;
                println!("service {} scaled to {}", def.name, def.replicas);
            }
            Verb::Rm { name } => {
                let name = ServiceName::try_from(name.clone()).map_err(anyhow::Error::msg)?;
                let Record(def): Record<ServiceDefV1> =
                    api.delete(&format!("/v1/services/{name}")).await?;
                println!("service {} removed", def.name);
            }
            Verb::Logs { name, flags } => {
                let name = ServiceName::try_from(name.clone()).map_err(anyhow::Error::msg)?;
                let path = format!("/v1/services/{name}/logs?{}", flags.options().query());
                super::logs::print(&config, &path, true).await?;
            }
            Verb::Ls { json } => {
                let listing: Listing<ServiceRow> = api.get("/v1/services").await?;
                table::warn_unreachable(&listing.unreachable);
                table::emit(*json, &listing.items, &["NAME", "IMAGE", "RUNNING"], |s| {
                    vec![
                        s.name.clone(),
                        s.image.clone(),
                        format!("{}/{}", s.running, s.replicas),
                    ]
                })?;
            }
        }
        Ok(())
    }
}
