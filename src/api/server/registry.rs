//! The node registry through the cluster API: its images with their sizes and holders
//! (`GET /v1/registry/images`), a tag removed (`DELETE /v1/registry/images/NAME:TAG`),
//! and a pull of `127.0.0.1:PORT/NAME:TAG` by this node's dockerd or every healthy
//! node's (`POST /v1/registry/pulls/NAME:TAG[?all=true]`, a preheat).
//!
//! Names hold slashes, so they are the path's tail; each is read by
//! [`images::parse_name`] (the spec's grammar for name and tag) before it becomes a KV
//! key or another node's URL.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use futures::future::join_all;
use tracing::info;

use super::{ApiResult, ApiState, Params, Shared, flag, ok};
use crate::addressing::NodeAddress;
use crate::api::{Listing, PullRow, RemovedImage};
use crate::http::{ApiError, error_text};
use crate::registry::catalog::{KV_BLOBS, KV_REPOS, TAGS, manifest_key, tag_key};
use crate::registry::images::{self, ImageName, Records, RegistryImage};
use crate::registry::spec::Digest;

/// `{image}` is `NAME:TAG`; the error names the segment and, within it, the field.
fn image_in_path(s: &ApiState, image: &str) -> Result<ImageName, ApiError> {
    super::in_path("image", image, |i| images::parse_name(&i, s.registry_port))
}

/// Every tag in the registry: three reads (the repositories' records, the holders, the
/// healthy nodes), whatever the number of blobs.
pub(super) async fn list_images(State(s): State<Shared>) -> ApiResult {
    let (repos, _) = s
        .consul
        .kv_list(KV_REPOS, None, Duration::ZERO)
        .await
        .map_err(ApiError::backend)?;
    let (blobs, _) = s
        .consul
        .kv_list(KV_BLOBS, None, Duration::ZERO)
        .await
        .map_err(ApiError::backend)?;
    let healthy: BTreeSet<NodeAddress> = s
        .nodes()
        .await?
        .iter()
        .map(|n| n.address)
        .chain([s.me.address])
        .collect();
    let items: Vec<RegistryImage> = images::list(
        &Records {
            repos: &repos,
            blobs: &blobs,
        },
        &healthy,
    );
    ok(&Listing {
        items,
        unreachable: Vec::new(),
    })
}

/// Deletes the tag, and the manifest when no other tag of the repository points at it
/// (an untagged manifest is still pullable by digest, which is not what `rm` means).
/// Blobs stay: another image may share them, and garbage collection decides.
pub(super) async fn remove_image(State(s): State<Shared>, Path(image): Path<String>) -> ApiResult {
    let name = image_in_path(&s, &image)?;
    let key = tag_key(&name.repo, &name.tag);
    let Some(value) = s.consul.kv_get(&key).await.map_err(ApiError::backend)? else {
        return Err(ApiError::not_found(format!(
            "no image `{name}` in the node registry (`arpanet image ls` lists them)"
        )));
    };
    s.consul
        .kv_delete(&key, false)
        .await
        .map_err(ApiError::backend)?;
    let text = String::from_utf8_lossy(&value).trim().to_string();
    let mut manifest_removed = false;
    // A tag record that names no digest points at nothing to remove.
    if let Ok(digest) = Digest::parse(&text) {
        let prefix = format!("{KV_REPOS}{}{TAGS}", name.repo);
        let (tags, _) = s
            .consul
            .kv_list(&prefix, None, Duration::ZERO)
            .await
            .map_err(ApiError::backend)?;
        if !images::still_tagged(&tags, &key, &digest) {
            s.consul
                .kv_delete(&manifest_key(&name.repo, &digest), false)
                .await
                .map_err(ApiError::backend)?;
            manifest_removed = true;
        }
    }
    info!("removed {name} ({text}) from the node registry (requested through the cluster API)");
    ok(&RemovedImage {
        name: name.to_string(),
        digest: text,
        manifest_removed,
    })
}

/// This node's dockerd pulls the image from the node registry, which fetches the
/// blobs it lacks from their holders.
async fn pull_here(s: &ApiState, name: &ImageName) -> PullRow {
    let image = name.pull_name(s.registry_port);
    let mut row = PullRow {
        node: s.me.address.to_string(),
        image: image.clone(),
        id: None,
        error: None,
    };
    let pulled = async {
        let engine = s.engine().await.map_err(|e| e.1)?;
        engine.pull(&image).await.map_err(|e| e.to_string())?;
        engine.image_id(&image).await.map_err(|e| e.to_string())
    };
    match pulled.await {
        Ok(id) => row.id = id,
        Err(e) => row.error = Some(e),
    }
    row
}

/// One row per node: what it pulled, or why not. `all=true` asks every healthy node at
/// once; otherwise this node alone.
pub(super) async fn pull_image(
    State(s): State<Shared>,
    Path(image): Path<String>,
    axum::extract::Query(q): Params,
) -> ApiResult {
    let name = image_in_path(&s, &image)?;
    if flag(&q, "local") || !flag(&q, "all") {
        return ok(&Listing {
            items: vec![pull_here(&s, &name).await],
            unreachable: Vec::new(),
        });
    }
    let nodes: Vec<NodeAddress> = s.nodes().await?.iter().map(|n| n.address).collect();
    let path = format!("/v1/registry/pulls/{name}?local=true");
    let rows = join_all(nodes.iter().map(|node| {
        let (s, path, name) = (&s, &path, &name);
        async move {
            if *node == s.me.address {
                return pull_here(s, name).await;
            }
            let failed = |error: String| PullRow {
                node: node.to_string(),
                image: name.pull_name(s.registry_port),
                id: None,
                error: Some(error),
            };
            match s.call_via(&s.slow_peers, *node, Method::POST, path).await {
                Ok((status, body)) if status.is_success() => {
                    match serde_json::from_slice::<Listing<PullRow>>(&body) {
                        Ok(mut l) if l.items.len() == 1 => l.items.remove(0),
                        Ok(_) => failed("unexpected answer: not one row".into()),
                        Err(e) => failed(format!("unexpected answer: {e}")),
                    }
                }
                Ok((status, body)) => failed(error_text(status, &body)),
                Err(e) => failed(e),
            }
        }
    }))
    .await;
    let failed = rows.iter().filter(|r| r.error.is_some()).count();
    info!(
        "{name} pulled on {} of {} nodes (requested through the cluster API)",
        rows.len() - failed,
        rows.len()
    );
    Ok(crate::http::json_response(
        StatusCode::OK,
        &Listing {
            items: rows,
            unreachable: Vec::new(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_names_in_paths_are_checked_by_the_spec_grammar() {
        let config = crate::config::Config::parse(
            std::path::Path::new("t"),
            "[node]\naddress = \"0.1\"\nrole = \"boot\"\n",
        )
        .unwrap();
        let s = ApiState::new(&config, crate::identity::NodeTls::from_config(&config));
        assert_eq!(
            image_in_path(&s, "team/app:v1").unwrap().to_string(),
            "team/app:v1"
        );
        assert_eq!(
            image_in_path(&s, "127.0.0.1:7102/team/app:v1")
                .unwrap()
                .to_string(),
            "team/app:v1"
        );
        // `..%2Fservices%2Fweb` arrives decoded; neither it nor a bad tag becomes a key.
        for (bad, field) in [
            ("Bad/../x:v1", "name: "),
            ("team/../../services/web:v1", "name: "),
            ("team/app:v1/x", "name: "),
            ("team/app:.v1", "tag: "),
            ("team/app:v1?local=true", "tag: "),
        ] {
            let ApiError(status, m) = image_in_path(&s, bad).unwrap_err();
            assert_eq!(status, StatusCode::BAD_REQUEST);
            let want = format!("path segment {{image}}: {field}");
            assert!(m.starts_with(&want), "{bad}: {m}");
        }
    }
}
