//! `arpanet image push|pull|ls|rm`: images in the node registry (`127.0.0.1:PORT/NAME:TAG`
//! on every node), and those published earlier as tarballs through the image sync
//! service (BitTorrent between the nodes), which stay listed and pullable.
//!
//! `push` runs here, against this node's dockerd (as `arpanet up` does): `docker push`
//! to the local registry is exactly what a user would type, and its progress comes
//! straight from Docker. Everything else goes through arpanetd's API.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use clap::{Args, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::table;
use crate::api::client::ApiClient;
use crate::api::{Listing, NodeRow, PullRow, RemovedImage, Unreachable};
use crate::config::Config;
use crate::docker::engine::Engine;
use crate::human;
use crate::imagesync::short_id as short;
use crate::imagesync::{ClusterImage, ImageRequest, Transfer, TransferState};
use crate::registry::images::{self as registry_images, ImageName, RegistryImage};

/// Share Docker images between nodes through the node registry (and the older
/// BitTorrent image sync).
#[derive(Debug, Args)]
pub struct Image {
    #[command(subcommand)]
    verb: ImageVerb,
}

#[derive(Debug, Subcommand)]
enum ImageVerb {
    /// Push an image from this node's Docker to the node registry, as
    /// `127.0.0.1:PORT/NAME:TAG` (its repository and tag without any registry host),
    /// which runs by that name on every node.
    Push {
        /// A tag as `docker images` shows it (`nginx:1`, `busybox` for `:latest`).
        image: String,
        /// Publish it the older way instead: a tarball seeded over BitTorrent by the
        /// image sync service (`image pull` fetches those).
        #[arg(long)]
        torrent: bool,
        /// Print the published image as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Pull a registry image into this node's Docker (or every node's: a preheat), or
    /// fetch a tarball image from the nodes that seed it, check it and `docker load` it.
    Pull {
        /// `NAME:TAG` in the node registry (`127.0.0.1:PORT/` before it or not), or a
        /// tarball image's tag, ID or ID prefix, as `arpanet image ls` shows it.
        image: String,
        /// Every healthy node pulls it at once.
        #[arg(long)]
        all_nodes: bool,
        /// Fetch the tarball image of that name even if the registry has one too.
        #[arg(long)]
        torrent: bool,
        /// Print each node's pull as JSON when it ends.
        #[arg(long)]
        json: bool,
    },
    /// List the registry's images (one row per tag) and the tarball images, with the
    /// nodes that hold them.
    Ls {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove tags from the node registry (the manifest too when no other tag points at
    /// it; blobs stay until garbage collection).
    Rm {
        /// `NAME:TAG`, with or without `127.0.0.1:PORT/` before it.
        #[arg(required = true)]
        images: Vec<String>,
        /// Print what was removed as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// A row of `arpanet image ls --json`: a tag of the node registry, or an image the
/// image sync publishes as a tarball.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ImageLsRow {
    Registry(RegistryImage),
    Tarball(ClusterImage),
}

impl Image {
    pub async fn exec(&self, config_path: &Path) -> anyhow::Result<()> {
        let config = Config::load(config_path)?;
        let socket = crate::paths::api_socket(&config.paths);
        let port = config.registry.port;
        match &self.verb {
            ImageVerb::Push {
                image,
                torrent: false,
                json,
            } => push(&ApiClient::new(&socket), &config, image, *json).await,
            ImageVerb::Push {
                image,
                torrent: true,
                json,
            } => {
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
                torrent,
                json,
            } => {
                let api = ApiClient::new(&socket);
                match registry_image(&api, image, port, *torrent).await? {
                    Some(name) => registry_pull(&socket, &name, *all_nodes, *json).await,
                    None => pull(&api, &config, image, *all_nodes, *json).await,
                }
            }
            ImageVerb::Ls { json } => ls(&ApiClient::new(&socket), &config, *json).await,
            ImageVerb::Rm { images, json } => {
                rm(&ApiClient::new(&socket), port, images, *json).await
            }
        }
    }
}

fn holders_cell(holders: &[String]) -> String {
    if holders.is_empty() {
        "(none up)".into()
    } else {
        holders.join(",")
    }
}

/// Both kinds in one listing, so nothing published the older way disappears from it.
/// The image sync service not answering leaves its rows out, said on stderr (or in
/// `unreachable`), and the registry's are listed still.
async fn ls(api: &ApiClient, config: &Config, json: bool) -> anyhow::Result<()> {
    let registry: Listing<RegistryImage> = api.get("/v1/registry/images").await?;
    let mut listing = Listing {
        items: registry
            .items
            .into_iter()
            .map(ImageLsRow::Registry)
            .collect::<Vec<_>>(),
        unreachable: registry.unreachable,
    };
    match api.get::<Vec<ClusterImage>>("/v1/sync/images").await {
        Ok(tarballs) => listing
            .items
            .extend(tarballs.into_iter().map(ImageLsRow::Tarball)),
        Err(e) => listing.unreachable.push(Unreachable {
            node: config.node.address.to_string(),
            error: format!("tarball images: {e:#}"),
        }),
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&listing)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = listing
        .items
        .iter()
        .map(|row| match row {
            ImageLsRow::Registry(i) => vec![
                "registry".into(),
                i.name.clone(),
                short(i.digest.trim_start_matches("sha256:")).to_string(),
                match (i.manifest.as_str(), &i.problem) {
                    (_, Some(problem)) => format!("? ({problem})"),
                    ("index", None) => format!("{} (index)", human::bytes(i.size)),
                    _ => human::bytes(i.size),
                },
                holders_cell(&i.holders),
            ],
            ImageLsRow::Tarball(i) => vec![
                "tarball".into(),
                if i.tags.is_empty() {
                    "<none>".into()
                } else {
                    i.tags.join(",")
                },
                short(&i.id).to_string(),
                human::bytes(i.size),
                holders_cell(&i.holders),
            ],
        })
        .collect();
    table::print(&["KIND", "NAME", "DIGEST/ID", "SIZE", "HOLDERS"], &rows);
    table::warn_unreachable(&listing.unreachable);
    Ok(())
}

/// Every name is checked before anything is removed: a bad one changes nothing.
async fn rm(api: &ApiClient, port: u16, images: &[String], json: bool) -> anyhow::Result<()> {
    let names: Vec<ImageName> = images
        .iter()
        .map(|i| registry_images::parse_name(i, port).map_err(|e| anyhow!(e)))
        .collect::<anyhow::Result<_>>()?;
    let mut removed = Vec::new();
    let mut failed = Vec::new();
    for name in &names {
        match api
            .delete::<RemovedImage>(&format!("/v1/registry/images/{name}"))
            .await
        {
            Ok(r) => {
                if !json {
                    println!(
                        "removed {} ({}{})",
                        r.name,
                        short(r.digest.trim_start_matches("sha256:")),
                        if r.manifest_removed {
                            ""
                        } else {
                            "; another tag still points at it"
                        }
                    );
                }
                removed.push(r);
            }
            Err(e) if names.len() == 1 => return Err(e),
            Err(e) => {
                eprintln!("{name}: {e:#}");
                failed.push(name.to_string());
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&removed)?);
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} images were not removed ({})",
            failed.len(),
            names.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

/// The registry's name for `image` when `image pull` should pull it from the node
/// registry: it says so (`127.0.0.1:PORT/...`), or the registry has that tag and
/// `--torrent` does not ask for the tarball.
async fn registry_image(
    api: &ApiClient,
    image: &str,
    port: u16,
    torrent: bool,
) -> anyhow::Result<Option<ImageName>> {
    let explicit = [format!("127.0.0.1:{port}/"), format!("localhost:{port}/")]
        .iter()
        .any(|p| image.starts_with(p.as_str()));
    if explicit {
        return registry_images::parse_name(image, port)
            .map(Some)
            .map_err(|e| anyhow!(e));
    }
    if torrent {
        return Ok(None);
    }
    let Ok(name) = registry_images::parse_name(image, port) else {
        return Ok(None);
    };
    let listed: Listing<RegistryImage> = api.get("/v1/registry/images").await?;
    let wanted = name.to_string();
    Ok(listed
        .items
        .iter()
        .any(|i| i.name == wanted)
        .then_some(name))
}

/// Tags the image as the registry's name for it and `docker push`es it to this node's
/// registry, with Docker's progress on a terminal.
async fn push(api: &ApiClient, config: &Config, image: &str, json: bool) -> anyhow::Result<()> {
    let name = registry_images::push_name(image).map_err(|e| anyhow!(e))?;
    let target = name.pull_name(config.registry.port);
    // The registry is arpanetd's: without it a push could only fail, less clearly.
    let _: Listing<NodeRow> = api.get("/v1/nodes").await?;
    let engine = Engine::connect(&config.docker.socket).await?;
    if engine.image_id(image).await?.is_none() {
        bail!("no image `{image}` in this node's Docker (`docker images` lists them)");
    }
    if image != target {
        engine.tag(image, &target).await?;
    }
    // Drawn on a terminal only; Docker reports bytes per layer, which a spinner shows
    // as they come (its messages carry no layer ID to keep a bar per layer by).
    let spinner = ProgressBar::new_spinner().with_message(format!("pushing {target}"));
    spinner.enable_steady_tick(Duration::from_millis(120));
    let mut digest = None;
    let pushed = engine
        .push(&target, |info| {
            let status = info.status.as_deref().unwrap_or_default();
            if let Some(d) = status.split_whitespace().find(|w| w.starts_with("sha256:")) {
                digest = Some(d.to_string());
            }
            let bytes = info
                .progress_detail
                .as_ref()
                .and_then(|p| Some((p.current?, p.total?)));
            spinner.set_message(match bytes {
                Some((done, total)) if total > 0 => format!(
                    "pushing {target}: {status} {}/{}",
                    human::bytes(done as u64),
                    human::bytes(total as u64)
                ),
                _ => format!("pushing {target}: {status}"),
            });
        })
        .await;
    spinner.finish_and_clear();
    pushed?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "image": image,
                "name": name.to_string(),
                "run_as": target,
                "digest": digest,
            }))?
        );
    } else {
        println!("pushed {image} to the node registry as {name}; on any node run it as {target}");
    }
    Ok(())
}

/// `docker pull 127.0.0.1:PORT/NAME:TAG` by this node's dockerd, or every healthy
/// node's at once (a preheat): only the blobs a node lacks move.
async fn registry_pull(
    socket: &Path,
    name: &ImageName,
    all_nodes: bool,
    json: bool,
) -> anyhow::Result<()> {
    let api = ApiClient::with_timeout(socket, Duration::from_secs(3600));
    let where_ = if all_nodes { "every node" } else { "this node" };
    let spinner = ProgressBar::new_spinner().with_message(format!("pulling {name} on {where_}"));
    spinner.enable_steady_tick(Duration::from_millis(120));
    let query = if all_nodes { "?all=true" } else { "" };
    let started = Instant::now();
    let rows: anyhow::Result<Listing<PullRow>> = api
        .post(&format!("/v1/registry/pulls/{name}{query}"), None::<&()>)
        .await;
    spinner.finish_and_clear();
    let rows = rows?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows.items)?);
    }
    let failed: Vec<&PullRow> = rows.items.iter().filter(|r| r.error.is_some()).collect();
    for r in &rows.items {
        match &r.error {
            None if !json => println!(
                "node {}: pulled {} ({}) in {:.1} s",
                r.node,
                r.image,
                short(
                    r.id.as_deref()
                        .unwrap_or_default()
                        .trim_start_matches("sha256:")
                ),
                started.elapsed().as_secs_f64()
            ),
            Some(e) if rows.items.len() == 1 => bail!("{e}"),
            Some(e) => eprintln!("node {}: {e}", r.node),
            None => {}
        }
    }
    if !failed.is_empty() {
        bail!(
            "the pull failed on {} of {} nodes ({})",
            failed.len(),
            rows.items.len(),
            failed
                .iter()
                .map(|r| r.node.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_ls_rows_say_their_kind() {
        let registry = ImageLsRow::Registry(RegistryImage {
            name: "team/app:v1".into(),
            digest: "sha256:ab".into(),
            manifest: "image".into(),
            size: 5,
            holders: vec!["0.2".into()],
            problem: None,
        });
        let tarball = ImageLsRow::Tarball(ClusterImage {
            id: "sha256:cd".into(),
            tags: vec!["app:1".into()],
            size: 7,
            holders: vec![],
        });
        let json = serde_json::to_value([&registry, &tarball]).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"kind": "registry", "name": "team/app:v1", "digest": "sha256:ab",
                 "manifest": "image", "size": 5, "holders": ["0.2"]},
                {"kind": "tarball", "id": "sha256:cd", "tags": ["app:1"], "size": 7,
                 "holders": []},
            ])
        );
        let back: Vec<ImageLsRow> = serde_json::from_value(json).unwrap();
        assert!(matches!(back[1], ImageLsRow::Tarball(_)));
    }
}
