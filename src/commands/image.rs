//! `arpanet image push|pull|ls`: images moved between nodes by the image sync service
//! (BitTorrent between the nodes, Consul as the tracker), through arpanetd's API.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use clap::{Args, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::table;
use crate::api::client::ApiClient;
use crate::api::{Listing, NodeRow};
use crate::config::Config;
use crate::human;
use crate::imagesync::short_id as short;
use crate::imagesync::{ClusterImage, ImageRequest, Transfer, TransferState};

/// Share Docker images between nodes peer-to-peer (BitTorrent), with no registry.
#[derive(Debug, Args)]
pub struct Image {
    #[command(subcommand)]
    verb: ImageVerb,
}

#[derive(Debug, Subcommand)]
enum ImageVerb {
    /// Publish an image from this node's Docker to the cluster and seed it.
    Push {
        /// A tag or ID, as `docker images` shows it.
        image: String,
        /// Print the published image as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Fetch a cluster image from the nodes that hold it, check it, and `docker load` it.
    Pull {
        /// A tag, ID or ID prefix, as `arpanet image ls` shows it.
        image: String,
        /// Every node fetches it at once (they trade pieces with each other).
        #[arg(long)]
        all_nodes: bool,
        /// Print each node's transfer as JSON when it ends.
        #[arg(long)]
        json: bool,
    },
    /// List the cluster's images and the nodes that hold them.
    Ls {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

impl Image {
    pub async fn exec(&self, config_path: &Path) -> anyhow::Result<()> {
        let config = Config::load(config_path)?;
        let socket = crate::paths::api_socket(&config.paths);
        match &self.verb {
            ImageVerb::Push { image, json } => {
                // Export and hashing take a while for big images; the answer comes after.
                let api = ApiClient::with_timeout(&socket, Duration::from_secs(3600));
                let spinner = ProgressBar::new_spinner()
                    .with_message(format!("exporting {image} and making its torrent"));
                spinner.enable_steady_tick(Duration::from_millis(120));
                let pushed: anyhow::Result<ClusterImage> = api
                    .post(
                        "/v1/sync/push",
                        Some(&ImageRequest {
                            image: image.clone(),
                            start_at: None,
                        }),
                    )
                    .await;
                spinner.finish_and_clear();
                let pushed = pushed?;
                if *json {
                    println!("{}", serde_json::to_string_pretty(&pushed)?);
                } else if pushed.holders.is_empty() {
                    println!(
                        "pushed {image} ({}): the cluster had this image already; its holders serve the new tags",
                        short(&pushed.id)
                    );
                } else {
                    println!(
                        "pushed {image} ({}, {}); node {} seeds it",
                        short(&pushed.id),
                        human::bytes(pushed.size),
                        config.node.address
                    );
                }
                Ok(())
            }
            ImageVerb::Pull {
                image,
                all_nodes,
                json,
            } => pull(&ApiClient::new(&socket), &config, image, *all_nodes, *json).await,
            ImageVerb::Ls { json } => {
                let images: Vec<ClusterImage> =
                    ApiClient::new(&socket).get("/v1/sync/images").await?;
                table::emit(*json, &images, &["ID", "TAGS", "SIZE", "HOLDERS"], |i| {
                    vec![
                        short(&i.id).to_string(),
                        if i.tags.is_empty() {
                            "<none>".into()
                        } else {
                            i.tags.join(",")
                        },
                        human::bytes(i.size),
                        if i.holders.is_empty() {
                            "(none up)".into()
                        } else {
                            i.holders.join(",")
                        },
                    ]
                })
            }
        }
    }
}

/// Starts the pull on each node, then follows every transfer to its end.
async fn pull(
    api: &ApiClient,
    config: &Config,
    image: &str,
    all_nodes: bool,
    json: bool,
) -> anyhow::Result<()> {
    let nodes: Vec<String> = if all_nodes {
        let nodes: Listing<NodeRow> = api.get("/v1/nodes").await?;
        nodes.items.into_iter().map(|n| n.address).collect()
    } else {
        vec![config.node.address.to_string()]
    };
    let started = Instant::now();
    let mut pulls = Vec::new();
    let mut failed = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let request = ImageRequest {
            image: image.to_string(),
            start_at: all_nodes.then(|| i as f64 / nodes.len() as f64),
        };
        match api
            .post::<Transfer>(&format!("/v1/sync/pulls?node={node}"), Some(&request))
            .await
        {
            Ok(t) => pulls.push((node.clone(), t)),
            Err(e) if !all_nodes => return Err(e),
            Err(e) => {
                eprintln!("node {node}: {e:#}");
                failed.push(node.clone());
            }
        }
    }
    // Bars are drawn on a terminal only (indicatif hides them when stderr is not one).
    let multi = MultiProgress::new();
    let style = ProgressStyle::with_template(
        "{prefix:>6} {bar:30} {bytes:>10}/{total_bytes:10} {binary_bytes_per_sec:>12} eta {eta:>4} {msg}",
    )
    .expect("a valid template");
    let bars: Vec<ProgressBar> = pulls
        .iter()
        .map(|(node, t)| {
            multi.add(
                ProgressBar::new(t.total_bytes)
                    .with_style(style.clone())
                    .with_prefix(node.clone()),
            )
        })
        .collect();
    let mut done: Vec<Option<(Transfer, Duration)>> = vec![None; pulls.len()];
    while done.iter().any(Option::is_none) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        for (i, (node, t)) in pulls.iter().enumerate() {
            if done[i].is_some() {
                continue;
            }
            let now: Transfer = match api
                .get(&format!("/v1/sync/pulls/{}?node={node}", t.id))
                .await
            {
                Ok(now) => now,
                Err(e) => Transfer {
                    state: TransferState::Failed,
                    error: Some(format!("lost track of the pull: {e:#}")),
                    ..t.clone()
                },
            };
            bars[i].set_length(now.total_bytes);
            bars[i].set_position(now.done_bytes);
            bars[i].set_message(format!("{:?}", now.state).to_lowercase());
            if now.state.finished() {
                bars[i].finish();
                done[i] = Some((now, started.elapsed()));
            }
        }
    }
    multi.clear().ok();
    let results: Vec<(Transfer, Duration)> = done.into_iter().flatten().collect();
    if json {
        let out: Vec<serde_json::Value> = results
            .iter()
            .map(|(t, took)| {
                let mut v = serde_json::to_value(t).expect("serializable");
                v["seconds"] = serde_json::json!(took.as_secs_f64());
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    for (t, took) in &results {
        match (&t.state, &t.error) {
            (TransferState::Done, _) if !json => println!(
                "node {}: pulled {image} ({}, {}) in {:.1} s",
                t.node,
                short(&t.image_id),
                human::bytes(t.total_bytes),
                took.as_secs_f64()
            ),
            (TransferState::Failed, error) => {
                let error = error.clone().unwrap_or_else(|| "failed".into());
                if !all_nodes {
                    return Err(anyhow!(error));
                }
                eprintln!("node {}: {error}", t.node);
                failed.push(t.node.clone());
            }
            _ => {}
        }
    }
    if !failed.is_empty() {
        bail!(
            "the pull failed on {} of {} nodes ({})",
            failed.len(),
            nodes.len(),
            failed.join(", ")
        );
    }
    Ok(())
}
