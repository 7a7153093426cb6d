use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::{Args, Subcommand};

use super::table;
use crate::addressing::NodeAddress;
use crate::api::client::ApiClient;
use crate::api::{InstanceListing, Listing, ServiceRow};
use crate::config::{Config, Role};
use crate::placement::rollout::{FailureAction, Order};
use crate::placement::wire::{
    ConstraintsV1, ContainerSpecV1, CreateServiceV1, ScaleV1, ServiceRecord, UpdateConfigV2,
    UpdateServiceV1,
};
use crate::placement::{Constraints, RolloutState, ServiceDef, ServiceName};

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
    /// Roll out a changed spec, a batch at a time, each batch health-gated.
    Update(Update),
    /// Put the previous spec back, the same way an update rolls out.
    Rollback {
        name: String,
        /// Return once the rollback is stored, without following it.
        #[arg(long, short)]
        detach: bool,
    },
    /// List every instance: node, container, version, state, health, and why one
    /// runs nowhere.
    Ps {
        name: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show the spec, its version and the last update's state (JSON).
    Inspect { name: String },
    /// Print the logs of every instance on every node, each line after its instance's
    /// name (`web_0.2_1 | ...`); stdout and stderr merged.
    Logs {
        name: String,
        #[command(flatten)]
        flags: super::logs::LogFlags,
    },
}

#[derive(Debug, Args)]
pub struct Update {
    pub name: String,
    /// The image every instance runs from now on (with a tag).
    #[arg(long)]
    pub image: Option<String>,
    /// KEY=VALUE to set, or KEY= to remove (repeatable).
    #[arg(long, short, value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// The number of instances (applied at once, not in batches).
    #[arg(long, allow_negative_numbers = true)]
    pub replicas: Option<i64>,
    /// Instances replaced at once across the cluster [default: the last update's, 1 at
    /// first].
    #[arg(long)]
    pub parallel: Option<u32>,
    /// Pause between batches, e.g. 10s [default: the last update's, 0s at first].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub delay: Option<std::time::Duration>,
    /// How long each new instance is watched: one without a check must run this long,
    /// one with a check must pass within it (plus one check interval) and keep passing
    /// [default: the last update's, 5s at first].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub monitor: Option<std::time::Duration>,
    /// What a failed batch does: pause or rollback [default: the last update's, pause at
    /// first].
    #[arg(long, value_parser = parse_failure_action)]
    pub failure_action: Option<FailureAction>,
    /// stop-first or start-first (the new instance starts before the old one stops)
    /// [default: the last update's, stop-first at first].
    #[arg(long, value_parser = parse_order)]
    pub order: Option<Order>,
    /// Return once the update is stored, without following it.
    #[arg(long, short)]
    pub detach: bool,
    /// Print the final service record as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_failure_action(s: &str) -> Result<FailureAction, String> {
    match s {
        "pause" => Ok(FailureAction::Pause),
        "rollback" => Ok(FailureAction::Rollback),
        _ => Err("rollback or pause".into()),
    }
}

fn parse_order(s: &str) -> Result<Order, String> {
    match s {
        "stop-first" => Ok(Order::StopFirst),
        "start-first" => Ok(Order::StartFirst),
        _ => Err("stop-first or start-first".into()),
    }
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
                let ServiceRecord(def) = api.post("/v1/services", Some(&req)).await?;
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
                let ServiceRecord(def) = api
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
                let ServiceRecord(def) = api.delete(&format!("/v1/services/{name}")).await?;
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
                table::emit(
                    *json,
                    &listing.items,
                    &[
                        "NAME",
                        "IMAGE",
                        "VERSION",
                        "RUNNING",
                        "UPDATE",
                        "NOT PLACED",
                    ],
                    |s| {
                        vec![
                            s.name.clone(),
                            s.image.clone(),
                            s.version.to_string(),
                            format!("{}/{}", s.running, s.replicas),
                            s.rollout.clone().unwrap_or_else(|| "-".into()),
                            match &s.why {
                                Some(why) => format!("{}: {why}", s.unplaced),
                                None => "-".into(),
                            },
                        ]
                    },
                )?;
            }
            Verb::Update(u) => {
                let name = ServiceName::try_from(u.name.clone()).map_err(anyhow::Error::msg)?;
                let current: ServiceRecord = api.get(&format!("/v1/services/{name}")).await?;
                let mut config = current.0.update;
                if let Some(n) = u.parallel {
                    config.parallel = n;
                }
                if let Some(d) = u.delay {
                    config.delay = d;
                }
                if let Some(d) = u.monitor {
                    config.monitor = d;
                }
                if let Some(a) = u.failure_action {
                    config.failure_action = a;
                }
                if let Some(o) = u.order {
                    config.order = o;
                }
                let req = UpdateServiceV1 {
                    image: u.image.clone(),
                    env: u.env.iter().cloned().collect(),
                    replicas: u.replicas,
                    update: Some(UpdateConfigV2::from(&config)),
                };
                let ServiceRecord(def) = api
                    .put(&format!("/v1/services/{name}/update"), &req)
                    .await?;
                follow(&api, def, u.detach, u.json).await?;
            }
            Verb::Rollback { name, detach } => {
                let name = ServiceName::try_from(name.clone()).map_err(anyhow::Error::msg)?;
                let ServiceRecord(def) = api
                    .post(&format!("/v1/services/{name}/rollback"), None::<&()>)
                    .await?;
                follow(&api, def, *detach, false).await?;
            }
            Verb::Ps { name, json } => {
                let name = ServiceName::try_from(name.clone()).map_err(anyhow::Error::msg)?;
                let listing: InstanceListing = api.get(&format!("/v1/services/{name}/ps")).await?;
                table::warn_unreachable(&listing.unreachable);
                if !*json {
                    let mut head = format!("service {name}: version {}", listing.version);
                    if let Some(r) = &listing.rollout {
                        head.push_str(&format!(", update {}", r.replace('_', " ")));
                    }
                    if let Some(m) = &listing.message {
                        head.push_str(&format!(": {m}"));
                    }
                    println!("{head}");
                }
                table::emit(
                    *json,
                    &listing.items,
                    &[
                        "INSTANCE",
                        "NODE",
                        "CONTAINER",
                        "VERSION",
                        "STATE",
                        "HEALTH",
                        "STATUS",
                        "WHY",
                    ],
                    |i| {
                        vec![
                            i.instance.clone(),
                            i.node.clone(),
                            i.container
                                .as_deref()
                                .map_or("-", crate::docker::engine::short)
                                .to_string(),
                            match i.version {
                                Some(v) if v != i.desired_version => {
                                    format!("{v} (to {})", i.desired_version)
                                }
                                Some(v) => v.to_string(),
                                None => format!("- (to {})", i.desired_version),
                            },
                            i.state.clone(),
                            if i.health.is_empty() {
                                "-".into()
                            } else {
                                i.health.clone()
                            },
                            if i.status.is_empty() {
                                "-".into()
                            } else {
                                i.status.clone()
                            },
                            i.why.clone().unwrap_or_else(|| "-".into()),
                        ]
                    },
                )?;
            }
            Verb::Inspect { name } => {
                let name = ServiceName::try_from(name.clone()).map_err(anyhow::Error::msg)?;
                let record: serde_json::Value = api.get(&format!("/v1/services/{name}")).await?;
                println!("{}", serde_json::to_string_pretty(&record)?);
            }
        }
        Ok(())
    }
}

/// Follows a rollout to its end: a bar on a terminal, a line per batch elsewhere; with
/// `json`, the final record is the only output.
async fn follow(api: &ApiClient, def: ServiceDef, detach: bool, json: bool) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let name = def.name.clone();
    let say = |line: String| {
        if !json {
            println!("{line}");
        }
    };
    let print_json = |def: &ServiceDef| -> anyhow::Result<()> {
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&ServiceRecord(def.clone()))?
            );
        }
        Ok(())
    };
    let Some(r) = def.rollout.clone().filter(|r| r.state.active()) else {
        say(format!(
            "service {name}: version {}, nothing to roll out",
            def.version
        ));
        return print_json(&def);
    };
    let verb = if r.back {
        "rolling back to"
    } else {
        "updating to"
    };
    if detach {
        say(format!(
            "service {name}: {verb} version {}; `arpanet service ps {name}` follows it",
            def.version
        ));
        return print_json(&def);
    }
    let terminal = std::io::stderr().is_terminal();
    let bar = indicatif::ProgressBar::new(u64::from(def.replicas));
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({elapsed})")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    let mut last = def;
    let mut said = None;
    while let Some(r) = last.rollout.clone() {
        // Instances on the spec being rolled out, the batch under way not counted.
        let done = r.updated.len().saturating_sub(r.batch.len()) as u64;
        let state = r.state.as_str().replace('_', " ");
        bar.set_length(u64::from(last.replicas).max(done));
        bar.set_position(done);
        bar.set_message(format!("{name}: {state} version {}", last.version));
        let now = (r.state, r.batch.clone(), last.version);
        if !terminal && said.as_ref() != Some(&now) && !json {
            let batch: Vec<&str> = r.batch.iter().map(String::as_str).collect();
            if batch.is_empty() {
                eprintln!("{name}: {state} version {}, {done} done", last.version);
            } else {
                eprintln!(
                    "{name}: {state} version {}, {done} done, replacing {}",
                    last.version,
                    batch.join(", ")
                );
            }
            said = Some(now);
        }
        if !r.state.active() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let ServiceRecord(now) = api.get(&format!("/v1/services/{name}")).await?;
        last = now;
    }
    bar.finish_and_clear();
    print_json(&last)?;
    let r = last.rollout.clone().expect("followed a rollout");
    match r.state {
        RolloutState::Completed => {
            say(format!(
                "service {name}: version {} rolled out",
                last.version
            ));
            Ok(())
        }
        RolloutState::RolledBack => {
            let why = r.message.unwrap_or_default();
            say(format!(
                "service {name}: rolled back to version {}: {why}",
                last.version
            ));
            // An update that ended rolled back failed; a rollback asked for did not.
            if why.contains("failed") {
                bail!("update of {name} failed and was rolled back");
            }
            Ok(())
        }
        _ => bail!(
            "service {name}: {} {}: {}",
            if r.back { "rollback" } else { "update" },
            r.state.as_str().replace('_', " "),
            r.message.unwrap_or_default()
        ),
    }
}
