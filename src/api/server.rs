//! The API's HTTP side (axum). Every request is answered here or forwarded, with
//! `?local=true`, to the one node that can answer it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, put};
use futures::future::join_all;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use super::tls::Peer;
use super::{
    ContainerRow, Done, ImageRow, InstanceListing, InstanceRow, Listing, NodeRow, ServiceRow,
    Unreachable,
};
use crate::addressing::NodeAddress;
use crate::config::Config;
use crate::config::containers::{ContainerName, ContainerSpec};
use crate::consul::client::Consul;
use crate::consul::node::Node;
use crate::containers::{LABEL_CLUSTER, LABEL_FILE};
use crate::docker::engine::Engine;
use crate::http::TlsListener;
use crate::http::{ApiError, Json, error_text, json_bytes, json_response};
use crate::identity::NodeTls;
use crate::network::netlink::Netlink;
use crate::network::{admission, health};
use crate::placement::reconcile::healthy_nodes;
use crate::placement::rollout::{self, Order};
use crate::placement::store;
use crate::placement::wire::{
    self, ConstraintsV1, ContainerSpecV1, CreateServiceV1, Record, ScaleV1, ServiceRecord,
    TemplateRowV1, UpdateServiceV1,
};
use crate::placement::{ServiceDef, ServiceName, TemplateName, UpdateConfig};
use crate::{http, paths};

mod logs;
mod registry;

/// Seconds a stopped container gets to exit, as `docker stop` gives.
const STOP_GRACE_SECS: i32 = 10;

pub struct ApiState {
    me: Node,
    docker_socket: PathBuf,
    consul: Consul,
    port: u16,
    /// For requests to other nodes' APIs over the overlay (mutual TLS).
    peers: crate::identity::NodeClient,
    /// For pulls on other nodes, which take as long as the image takes to move.
    slow_peers: crate::identity::NodeClient,
    /// The node registry's port on 127.0.0.1, which dockerd pulls from.
    registry_port: u16,
    /// The image sync service's control socket, relayed under `/v1/sync/`.
    sync_socket: PathBuf,
    sync: reqwest::Client,
    /// Where a server's CA key is, for renewals.
    identity: paths::IdentityFiles,
    /// What `/metrics` reads at each scrape (as `arpanet status` does).
    scraped: Scraped,
}

/// The inputs of the metrics a scrape reads rather than a pass records.
struct Scraped {
    device: String,
    join: Vec<NodeAddress>,
    admission_status: PathBuf,
    image_transfer: PathBuf,
}

type Shared = Arc<ApiState>;

impl ApiState {
    pub fn new(config: &Config, tls: NodeTls) -> Self {
        Self {
            me: crate::placement::reconcile::me(&config.node),
            docker_socket: config.docker.socket.clone(),
            consul: Consul::impatient_for_node(config).retrying_connects(),
            port: config.api.port,
            slow_peers: crate::identity::NodeClient::new(
                tls.clone(),
                Duration::from_secs(3),
                Duration::from_secs(3600),
            ),
            registry_port: config.registry.port,
            peers: crate::identity::NodeClient::new(
                tls,
                Duration::from_secs(3),
                // A stop waits out the container's grace period.
                Duration::from_secs(STOP_GRACE_SECS as u64 + 20),
            ),
            sync_socket: paths::sync_socket(&config.paths),
            // A push exports and hashes the whole image before it answers.
            sync: http::unix_client(
                &paths::sync_socket(&config.paths),
                Duration::from_secs(3600),
            ),
            identity: paths::IdentityFiles::new(&config.cluster.identity_dir),
            scraped: Scraped {
                device: config.overlay.device.as_str().to_string(),
                join: config.node.join.iter().map(|j| j.address).collect(),
                admission_status: paths::admission_status(&config.paths),
                image_transfer: paths::image_transfer(&config.paths),
            },
        }
    }
}

type ApiResult = Result<Response, ApiError>;

fn ok<T: Serialize>(body: &T) -> ApiResult {
    Ok(json_response(StatusCode::OK, body))
}

pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/v1/services", get(list_services).post(create_service))
        .route(
            "/v1/services/{name}",
            get(get_service).delete(remove_service),
        )
        .route("/v1/services/{name}/replicas", put(scale_service))
        .route("/v1/services/{name}/update", put(update_service))
        .route("/v1/services/{name}/rollback", post(rollback_service))
        .route("/v1/services/{name}/ps", get(service_ps))
        .route("/v1/services/{name}/logs", get(logs::service_logs))
        .route("/v1/templates", get(list_templates))
        .route(
            "/v1/templates/{name}",
            put(put_template).delete(remove_template),
        )
        .route("/v1/containers", get(list_containers))
        .route(
            "/v1/containers/{id}",
            get(inspect_container).delete(remove_container),
        )
        .route("/v1/containers/{id}/logs", get(logs::container_logs))
        .route("/v1/containers/{id}/{action}", post(container_action))
        .route("/v1/images", get(list_images))
        .route("/v1/registry/images", get(registry::list_images))
        .route(
            "/v1/registry/images/{*image}",
            axum::routing::delete(registry::remove_image),
        )
        .route("/v1/registry/pulls/{*image}", post(registry::pull_image))
        .route("/v1/nodes", get(list_nodes))
        .route("/v1/nodes/{node}/{action}", post(node_action))
        .route("/v1/sync/{*rest}", any(relay_sync))
        .route("/v1/identity/renew", post(renew_identity))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::not_found("no such endpoint; the API is under /v1/") })
        .with_state(state)
}

type Params = Query<BTreeMap<String, String>>;

fn flag(q: &BTreeMap<String, String>, name: &str) -> bool {
    q.get(name)
        .is_some_and(|v| v.is_empty() || v == "true" || v == "1")
}

impl ApiState {
    /// Changes a service record by compare-and-set, so that a rollout step or another
    /// request written meanwhile is never lost: `change` sees the record as stored and
    /// every instance now placed, and is asked again if the record moved under it.
    async fn change_service(
        &self,
        name: &ServiceName,
        change: impl Fn(&ServiceDef, &[String]) -> Result<ServiceDef, ApiError>,
    ) -> Result<ServiceDef, ApiError> {
        let key = store::service_key(name);
        for _ in 0..5 {
            let (bytes, index) = self
                .consul
                .kv_get_indexed(&key)
                .await
                .map_err(ApiError::backend)?
                .ok_or_else(|| ApiError::not_found(format!("no service `{name}`")))?;
            let def = ServiceDef::from_json(&bytes).map_err(|e| {
                ApiError(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("service `{name}` in Consul KV is unreadable: {e}"),
                )
            })?;
            let state = store::load(&self.consul).await.map_err(ApiError::backend)?;
            let nodes = healthy_nodes(&self.consul, &self.me)
                .await
                .map_err(ApiError::backend)?;
            let plan = crate::placement::plan(&state.services, &nodes, &state.drained);
            let placed: Vec<String> = crate::placement::placed_instances(name, &plan)
                .into_iter()
                .map(|(i, _)| i)
                .collect();
            let next = change(&def, &placed)?;
            if next == def {
                return Ok(def);
            }
            if self
                .consul
                .kv_put_cas(&key, next.to_json(), index)
                .await
                .map_err(ApiError::backend)?
            {
                return Ok(next);
            }
        }
        Err(ApiError(
            StatusCode::CONFLICT,
            format!("service `{name}` kept changing while this request tried to; try again"),
        ))
    }

    /// A rollout needs a server node of this release to take its steps (older ones
    /// publish no capacity and do not drive): stored without one, it would wait forever.
    async fn require_a_driver(&self) -> Result<(), ApiError> {
        let nodes = healthy_nodes(&self.consul, &self.me)
            .await
            .map_err(ApiError::backend)?;
        if nodes
            .iter()
            .any(|n| crate::placement::driver::drives(n) && n.capacity.is_some())
        {
            return Ok(());
        }
        Err(ApiError(
            StatusCode::CONFLICT,
            "no healthy server node runs a release that takes rollout steps; upgrade a server first".into(),
        ))
    }

    async fn engine(&self) -> Result<Engine, ApiError> {
        Engine::connect(&self.docker_socket)
            .await
            .map_err(ApiError::backend)
    }

    async fn nodes(&self) -> Result<Vec<Node>, ApiError> {
        healthy_nodes(&self.consul, &self.me)
            .await
            .map_err(|e| ApiError::backend(e.context("list the cluster's nodes")))
    }

    /// Sends a request to another node's API; an unreachable node is an `Err`.
    async fn call(
        &self,
        node: NodeAddress,
        method: Method,
        path: &str,
    ) -> Result<(StatusCode, Bytes), String> {
        self.call_via(&self.peers, node, method, path).await
    }

    /// [`ApiState::call`] through `client` (one with another timeout).
    async fn call_via(
        &self,
        client: &crate::identity::NodeClient,
        node: NodeAddress,
        method: Method,
        path: &str,
    ) -> Result<(StatusCode, Bytes), String> {
        let url = format!("https://{}:{}{path}", node.overlay_ip(), self.port);
        let peers = client.get().map_err(|e| e.to_string())?;
        let resp = peers.request(method, &url).send().await.map_err(|e| {
            let connect = e.is_connect();
            let why = http::request_error(e);
            if connect {
                format!("{why} (is arpanetd running there?)")
            } else {
                why
            }
        })?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        Ok((status, body))
    }

    /// A listing from this node, another one, or every node (`all`).
    async fn listing<T: DeserializeOwned>(
        &self,
        q: &BTreeMap<String, String>,
        path: &str,
        here: impl Future<Output = Result<Vec<T>, ApiError>>,
    ) -> Result<Listing<T>, ApiError> {
        let targets: Vec<NodeAddress> = if let Some(node) = q.get("node") {
            vec![node.parse().map_err(|e| {
                ApiError::bad_request(format!("node: `{node}` is not an arpanet address: {e}"))
            })?]
        } else if flag(q, "all") && !flag(q, "local") {
            self.nodes().await?.iter().map(|n| n.address).collect()
        } else {
            vec![self.me.address]
        };
        let mut listing = Listing {
            items: Vec::new(),
            unreachable: Vec::new(),
        };
        let local_path = format!("{path}?local=true");
        let me = self.me.address;
        let remote = join_all(targets.iter().filter(|n| **n != me).map(|node| async {
            let there = self.call(*node, Method::GET, &local_path).await;
            (*node, Answer::There(there))
        }));
        let mine = async {
            if targets.contains(&me) {
                Some((me, Answer::Here(here.await)))
            } else {
                None
            }
        };
        let (mine, remote) = futures::join!(mine, remote);
        let answers = mine.into_iter().chain(remote);
        for (node, answer) in answers {
            let failure = match answer {
                Answer::Here(items) => {
                    listing.items.extend(items?);
                    continue;
                }
                Answer::There(Ok((status, body))) if status.is_success() => {
                    match serde_json::from_slice::<Listing<T>>(&body) {
                        Ok(l) => {
                            listing.items.extend(l.items);
                            continue;
                        }
                        Err(e) => format!("unexpected answer: {e}"),
                    }
                }
                Answer::There(Ok((status, body))) => error_text(status, &body),
                Answer::There(Err(e)) => e,
            };
            listing.unreachable.push(Unreachable {
                node: node.to_string(),
                error: failure,
            });
        }
        Ok(listing)
    }

    /// The one node with a container of this ID, ID prefix or name, and its inspect
    /// answer.
    async fn locate(&self, id: &str) -> Result<(NodeAddress, Response), ApiError> {
        let nodes = self.nodes().await?;
        let path = format!("/v1/containers/{id}?local=true");
        let answers = join_all(nodes.iter().map(|n| async {
            if n.address == self.me.address {
                return (n.address, Answer::Here(self.inspect_here(id).await));
            }
            let there = self.call(n.address, Method::GET, &path).await;
            (n.address, Answer::There(there))
        }))
        .await;
        let mut found = Vec::new();
        let mut silent = Vec::new();
        for (node, answer) in answers {
            match answer {
                Answer::Here(Ok(Some(inspect))) => found.push((node, inspect)),
                Answer::Here(Ok(None)) => {}
                Answer::Here(Err(e)) => return Err(e),
                Answer::There(Ok((StatusCode::NOT_FOUND, _))) => {}
                Answer::There(Ok((status, body))) if status.is_success() => {
                    found.push((node, json_bytes(status, body)));
                }
                Answer::There(Ok((status, body))) => {
                    silent.push(format!("{node} ({})", error_text(status, &body)));
                }
                Answer::There(Err(e)) => silent.push(format!("{node} ({e})")),
            }
        }
        match found.len() {
            1 => Ok(found.pop().expect("one")),
            0 if silent.is_empty() => Err(ApiError::not_found(format!(
                "no container `{id}` on any node"
            ))),
            0 => Err(ApiError(
                StatusCode::BAD_GATEWAY,
                format!(
                    "no container `{id}` on the nodes that answered; these did not: {}",
                    silent.join(", ")
                ),
            )),
            _ => Err(ApiError(
                StatusCode::CONFLICT,
                format!(
                    "`{id}` names containers on several nodes ({}); use a longer ID",
                    found
                        .iter()
                        .map(|(n, _)| n.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    async fn inspect_here(&self, id: &str) -> Result<Option<Response>, ApiError> {
        let engine = self.engine().await?;
        let Some(inspect) = engine.inspect(id).await.map_err(ApiError::backend)? else {
            return Ok(None);
        };
        #[derive(Serialize)]
        struct Inspect {
            node: String,
            container: bollard::models::ContainerInspectResponse,
        }
        Ok(Some(json_response(
            StatusCode::OK,
            &Inspect {
                node: self.me.address.to_string(),
                container: inspect,
            },
        )))
    }

    async fn act_here(&self, id: &str, action: &str) -> ApiResult {
        let engine = self.engine().await?;
        let full = engine
            .inspect(id)
            .await
            .map_err(ApiError::backend)?
            .and_then(|i| i.id)
            .ok_or_else(|| ApiError::not_found(format!("no container `{id}` on this node")))?;
        let result = match action {
            "start" => engine.start(&full).await,
            "stop" => engine.stop(&full, STOP_GRACE_SECS).await,
            "restart" => engine.restart(&full, STOP_GRACE_SECS).await,
            "remove" => engine.stop_and_remove(&full, STOP_GRACE_SECS).await,
            other => {
                return Err(ApiError::not_found(format!(
                    "no container action `{other}`: start, stop or restart (DELETE removes)"
                )));
            }
        };
        result.map_err(ApiError::backend)?;
        info!(container = %full, "{action} (requested through the cluster API)");
        ok(&Done {
            node: self.me.address.to_string(),
            id: full,
            action: action.to_string(),
        })
    }

    /// Runs a container operation here, or on the node that owns the container.
    async fn route(
        &self,
        id: &str,
        action: &str,
        method: Method,
        q: &BTreeMap<String, String>,
    ) -> ApiResult {
        if flag(q, "local") {
            return self.act_here(id, action).await;
        }
        let (node, _) = self.locate(id).await?;
        if node == self.me.address {
            return self.act_here(id, action).await;
        }
        let path = match action {
            "remove" => format!("/v1/containers/{id}?local=true"),
            a => format!("/v1/containers/{id}/{a}?local=true"),
        };
        match self.call(node, method, &path).await {
            Ok((status, body)) => Ok(json_bytes(status, body)),
            Err(e) => Err(ApiError(
                StatusCode::BAD_GATEWAY,
                format!("node {node} owns `{id}` but did not answer: {e}"),
            )),
        }
    }
}

/// A fan-out's answer from one node: this one's own, or another's over HTTP.
enum Answer<T> {
    Here(Result<T, ApiError>),
    There(Result<(StatusCode, Bytes), String>),
}

impl ApiState {
    /// This node's containers, as `ps` lists them.
    async fn containers_here(&self) -> Result<Vec<ContainerRow>, ApiError> {
        let engine = self.engine().await?;
        let list = engine.list_all().await.map_err(ApiError::backend)?;
        Ok(list
            .into_iter()
            .map(|c| {
                let name = crate::docker::engine::summary_name(&c);
                let labels = c.labels.unwrap_or_default();
                ContainerRow {
                    node: self.me.address.to_string(),
                    name,
                    id: c.id.unwrap_or_default(),
                    image: c.image.unwrap_or_default(),
                    state: c.state.map(|s| s.to_string()).unwrap_or_default(),
                    status: c.status.unwrap_or_default(),
                    service: labels
                        .contains_key(LABEL_CLUSTER)
                        .then(|| labels.get(LABEL_FILE).cloned())
                        .flatten(),
                    version: labels.contains_key(LABEL_CLUSTER).then(|| {
                        labels
                            .get(crate::placement::LABEL_VERSION)
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(1)
                    }),
                }
            })
            .collect())
    }
}

async fn list_containers(State(s): State<Shared>, Query(q): Params) -> ApiResult {
    let mut listing = s.listing(&q, "/v1/containers", s.containers_here()).await?;
    listing
        .items
        .sort_by(|a, b| (&a.node, &a.name).cmp(&(&b.node, &b.name)));
    ok(&listing)
}

async fn list_images(State(s): State<Shared>, Query(q): Params) -> ApiResult {
    let here = async {
        let engine = s.engine().await?;
        let list = engine.images().await.map_err(ApiError::backend)?;
        Ok(list
            .into_iter()
            .map(|i| ImageRow {
                node: s.me.address.to_string(),
                id: i.id,
                tags: i.repo_tags,
                size: i.size,
            })
            .collect())
    };
    let listing = s.listing(&q, "/v1/images", here).await?;
    ok(&listing)
}

/// A name from the request path (axum has percent-decoded it, so `..%2Fx` is `../x`),
/// checked by the one validator of its kind before it reaches a KV key, a file or
/// another node's URL. A bad one is a 400 naming the segment.
fn in_path<T>(
    segment: &str,
    value: &str,
    parse: impl FnOnce(String) -> Result<T, String>,
) -> Result<T, ApiError> {
    parse(value.to_string())
        .map_err(|e| ApiError::bad_request(format!("path segment {{{segment}}}: {e}")))
}

/// A container ID, ID prefix or name as Docker allows them; anything else could not
/// name a container, and must not reach another node's URL.
fn container_ref(id: &str) -> Result<(), ApiError> {
    in_path("id", id, |s| ContainerName::check(&s))
}

fn node_in_path(node: &str) -> Result<NodeAddress, ApiError> {
    in_path("node", node, |s| s.parse().map_err(|e| format!("{e}")))
}

/// What follows `/v1/sync/`, which goes into another URL: path segments of letters,
/// digits, `_`, `.` and `-` (`pulls/3`, `seeds/HEX`), never `..` or an empty one.
fn sync_path(rest: &str) -> Result<(), ApiError> {
    let ok = rest.split('/').all(|seg| ContainerName::check(seg).is_ok());
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "path `/v1/sync/{}`: segments are letters, digits, `_`, `.` and `-`",
            rest.escape_debug()
        )))
    }
}

async fn inspect_container(
    State(s): State<Shared>,
    Path(id): Path<String>,
    Query(q): Params,
) -> ApiResult {
    container_ref(&id)?;
    if flag(&q, "local") {
        return s
            .inspect_here(&id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no container `{id}` on this node")));
    }
    Ok(s.locate(&id).await?.1)
}

async fn container_action(
    State(s): State<Shared>,
    Path((id, action)): Path<(String, String)>,
    Query(q): Params,
) -> ApiResult {
    container_ref(&id)?;
    if !["start", "stop", "restart"].contains(&action.as_str()) {
        return Err(ApiError::not_found(format!(
            "no container action `{action}`: start, stop or restart (DELETE removes)"
        )));
    }
    s.route(&id, &action, Method::POST, &q).await
}

async fn remove_container(
    State(s): State<Shared>,
    Path(id): Path<String>,
    Query(q): Params,
) -> ApiResult {
    container_ref(&id)?;
    s.route(&id, "remove", Method::DELETE, &q).await
}

/// A service name from a request body's `name`.
fn service_name(name: &str) -> Result<ServiceName, ApiError> {
    ServiceName::try_from(name.to_string()).map_err(|e| ApiError::bad_request(format!("name: {e}")))
}

fn service_in_path(name: &str) -> Result<ServiceName, ApiError> {
    in_path("name", name, ServiceName::try_from)
}

fn template_in_path(name: &str) -> Result<TemplateName, ApiError> {
    in_path("name", name, TemplateName::try_from)
}

async fn load_service(s: &ApiState, name: &ServiceName) -> Result<ServiceDef, ApiError> {
    let bytes = s
        .consul
        .kv_get(&store::service_key(name))
        .await
        .map_err(ApiError::backend)?
        .ok_or_else(|| ApiError::not_found(format!("no service `{name}`")))?;
    ServiceDef::from_json(&bytes).map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("service `{name}` in Consul KV is unreadable: {e}"),
        )
    })
}

async fn list_services(State(s): State<Shared>) -> ApiResult {
    let state = store::load(&s.consul).await.map_err(ApiError::backend)?;
    let nodes = healthy_nodes(&s.consul, &s.me)
        .await
        .map_err(ApiError::backend)?;
    let plan = crate::placement::plan(&state.services, &nodes, &state.drained);
    let all = BTreeMap::from([("all".to_string(), "true".to_string())]);
    let running = s
        .listing(&all, "/v1/containers", s.containers_here())
        .await?;
    let rows: Vec<ServiceRow> = state
        .services
        .iter()
        .map(|d| {
            let unplaced = plan.unplaced.get(&d.name);
            ServiceRow {
                name: d.name.to_string(),
                image: d.spec.image.as_str().to_string(),
                replicas: d.replicas,
                running: running
                    .items
                    .iter()
                    .filter(|c| {
                        c.state == "running" && c.service.as_deref() == Some(d.name.as_str())
                    })
                    .count() as u32,
                constraints: ConstraintsV1::from(&d.constraints),
                unplaced: unplaced.map_or(0, |u| u.count),
                why: unplaced.map(|u| u.why.clone()),
                version: d.version,
                rollout: d.rollout.as_ref().map(|r| r.state.as_str().to_string()),
            }
        })
        .collect();
    ok(&Listing {
        items: rows,
        unreachable: running.unreachable,
    })
}

async fn get_service(State(s): State<Shared>, Path(name): Path<String>) -> ApiResult {
    let name = service_in_path(&name)?;
    ok(&ServiceRecord(load_service(&s, &name).await?))
}

/// A request body of the API: version, then each field, checked.
fn replicas(n: i64) -> Result<u32, ApiError> {
    u32::try_from(n).map_err(|_| {
        ApiError::bad_request(format!(
            "replicas: must be a whole number from 0 to {}, not {n}",
            u32::MAX
        ))
    })
}

/// Bodies are wire records: their version is checked before any field.
async fn create_service(
    State(s): State<Shared>,
    Json(Record(req)): Json<Record<CreateServiceV1>>,
) -> ApiResult {
    let name = service_name(&req.name)?;
    let replicas = replicas(req.replicas)?;
    let sources = [
        req.image.is_some(),
        req.template.is_some(),
        req.spec.is_some(),
    ];
    if sources.iter().filter(|s| **s).count() != 1 {
        return Err(ApiError::bad_request(
            "say what runs with exactly one of image, template or spec",
        ));
    }
    let mut spec: ContainerSpec = if let Some(image) = &req.image {
        let raw = serde_json::json!({
            "name": name.as_str(),
            "image": image,
            "command": req.command,
            "env": req.env,
        });
        wire::decode_value::<ContainerSpecV1>(raw)
            .and_then(ContainerSpec::try_from)
            .map_err(|e| ApiError::bad_request(e.to_string()))?
    } else if let Some(template) = &req.template {
        let state = store::load(&s.consul).await.map_err(ApiError::backend)?;
        let unprocessable = |m: String| ApiError(StatusCode::UNPROCESSABLE_ENTITY, m);
        if let Some((_, why)) = state.broken_templates.iter().find(|(t, _)| t == template) {
            return Err(unprocessable(format!(
                "template: template `{template}` in Consul KV is unreadable: {why}"
            )));
        }
        state
            .templates
            .into_iter()
            .find(|(t, _)| t == template)
            .map(|(_, spec)| spec)
            .ok_or_else(|| {
                unprocessable(format!(
                    "template: no template named `{template}` (`arpanet template ls` lists them)"
                ))
            })?
    } else {
        let spec = req.spec.clone().expect("counted above");
        ContainerSpec::try_from(spec)
            .map_err(|e| ApiError::bad_request(e.within("spec").to_string()))?
    };
    spec.name =
        ContainerName::try_from(name.to_string()).expect("a service name is a container name");
    if req.template.is_some() || req.spec.is_some() {
        spec.env.extend(req.env.clone());
        if req.command.is_some() {
            spec.command = req.command.clone();
        }
    }
    let def = ServiceDef::new(name.clone(), spec, replicas, req.constraints.clone().into());
    let stored = s
        .consul
        .kv_put_new(&store::service_key(&name), def.to_json())
        .await
        .map_err(ApiError::backend)?;
    if !stored {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("service `{name}` exists; `arpanet service scale` changes its replicas"),
        ));
    }
    info!(service = %name, replicas, "service created through the cluster API");
    Ok(json_response(StatusCode::CREATED, &ServiceRecord(def)))
}

async fn scale_service(
    State(s): State<Shared>,
    Path(name): Path<String>,
    Json(Record(req)): Json<Record<ScaleV1>>,
) -> ApiResult {
    let name = service_in_path(&name)?;
    let replicas = replicas(req.replicas)?;
    let def = s
        .change_service(&name, |def, _| {
            let mut def = def.clone();
            def.replicas = replicas;
            Ok(def)
        })
        .await?;
    info!(service = %name, replicas, "service scaled through the cluster API");
    ok(&ServiceRecord(def))
}

/// `PUT /v1/services/NAME/update`: the changed spec becomes the next version, rolled
/// out in batches by the server nodes (`placement::driver`).
async fn update_service(
    State(s): State<Shared>,
    Path(name): Path<String>,
    Json(Record(req)): Json<Record<UpdateServiceV1>>,
) -> ApiResult {
    let name = service_in_path(&name)?;
    let replicas = req.replicas.map(replicas).transpose()?;
    let update = req
        .update
        .map(UpdateConfig::try_from)
        .transpose()
        .map_err(|e| ApiError::bad_request(e.within("update").to_string()))?;
    if let Some(bad) = req
        .env
        .keys()
        .find(|k| k.is_empty() || k.contains(['=', '\0']))
    {
        return Err(ApiError::bad_request(format!(
            "env: `{}` is not a variable name (not empty, no `=`)",
            bad.escape_debug()
        )));
    }
    let image = req
        .image
        .clone()
        .map(crate::config::containers::ImageRef::try_from)
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("image: {e}")))?;
    s.require_a_driver().await?;
    let def = s
        .change_service(&name, |def, _| {
            if let Some(r) = def.rollout.as_ref().filter(|r| r.state.splits()) {
                let what = if r.back { "rollback" } else { "update" };
                let ongoing = if r.state == crate::placement::RolloutState::Paused {
                    format!(
                        "paused ({}); `arpanet service rollback {name}` {} first",
                        r.message.as_deref().unwrap_or("no reason recorded"),
                        if r.back {
                            "resumes it"
                        } else {
                            "puts the previous version back"
                        }
                    )
                } else {
                    format!("under way: wait for it to end, or `arpanet service rollback {name}`")
                };
                return Err(ApiError(
                    StatusCode::CONFLICT,
                    format!(
                        "service `{name}`'s {what} to version {} is {ongoing}",
                        def.version
                    ),
                ));
            }
            let update = update.unwrap_or(def.update);
            let mut spec = def.spec.clone();
            if let Some(image) = &image {
                spec.image = image.clone();
            }
            for (k, v) in &req.env {
                if v.is_empty() {
                    spec.env.remove(k);
                } else {
                    spec.env.insert(k.clone(), v.clone());
                }
            }
            let mut def = def.clone();
            if let Some(n) = replicas {
                def.replicas = n;
            }
            if spec == def.spec {
                // Nothing to roll out: the new replicas and settings only.
                def.update = update;
                return Ok(def);
            }
            // Start-first is the spec's containers.d `update.eager`; a spec that has it
            // keeps it (stop-first, the default, turns nothing off).
            if update.order == Order::StartFirst {
                spec.update.eager = true;
            }
            // Checked as a whole, as a created service's spec is.
            let spec = ContainerSpec::try_from(ContainerSpecV1::from(&spec))
                .map_err(|e| ApiError::bad_request(e.within("spec").to_string()))?;
            Ok(rollout::start_update(
                &def,
                spec,
                update,
                crate::placement::driver::now_ms(),
            ))
        })
        .await?;
    info!(service = %name, version = def.version, "service update through the cluster API");
    ok(&ServiceRecord(def))
}

/// `POST /v1/services/NAME/rollback`: the previous spec goes back, in batches.
async fn rollback_service(State(s): State<Shared>, Path(name): Path<String>) -> ApiResult {
    let name = service_in_path(&name)?;
    s.require_a_driver().await?;
    let def = s
        .change_service(&name, |def, placed| {
            if def
                .rollout
                .as_ref()
                .is_some_and(|r| r.state == crate::placement::RolloutState::RollingBack)
            {
                return Err(ApiError(
                    StatusCode::CONFLICT,
                    format!("service `{name}` is rolling back already"),
                ));
            }
            let previous = def.previous.as_ref().map(|p| p.version);
            rollout::start_rollback(
                def,
                placed,
                crate::placement::driver::now_ms(),
                previous.map(|p| format!("rollback to version {p} asked for")),
            )
            .ok_or_else(|| {
                ApiError(
                    StatusCode::CONFLICT,
                    format!("service `{name}` has no previous spec to roll back to"),
                )
            })
        })
        .await?;
    info!(service = %name, version = def.version, "service rollback through the cluster API");
    ok(&ServiceRecord(def))
}

/// `GET /v1/services/NAME/ps`: every desired instance, where and how it runs.
async fn service_ps(State(s): State<Shared>, Path(name): Path<String>) -> ApiResult {
    let name = service_in_path(&name)?;
    let state = store::load(&s.consul).await.map_err(ApiError::backend)?;
    let def = state
        .services
        .iter()
        .find(|d| d.name == name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("no service `{name}`")))?;
    let nodes = healthy_nodes(&s.consul, &s.me)
        .await
        .map_err(ApiError::backend)?;
    let plan = crate::placement::plan(&state.services, &nodes, &state.drained);
    let all = BTreeMap::from([("all".to_string(), "true".to_string())]);
    let containers = s
        .listing(&all, "/v1/containers", s.containers_here())
        .await?;
    let (entries, _) = s
        .consul
        .all_instances(
            &crate::placement::driver::consul_name(&def),
            None,
            Duration::ZERO,
        )
        .await
        .map_err(ApiError::backend)?;
    let health = health_words(&entries);
    let mine: Vec<&ContainerRow> = containers
        .items
        .iter()
        .filter(|c| c.service.as_deref() == Some(name.as_str()))
        .collect();
    let row = |instance: &str, node: String, c: Option<&ContainerRow>, state: &str| InstanceRow {
        instance: instance.to_string(),
        node,
        container: c.map(|c| c.id.clone()),
        version: c.and_then(|c| c.version),
        desired_version: def.spec_for(instance).0,
        state: c.map_or(state.to_string(), |c| c.state.clone()),
        health: health.get(instance).cloned().unwrap_or_default(),
        status: c.map(|c| c.status.clone()).unwrap_or_default(),
        why: None,
    };
    let placed = crate::placement::placed_instances(&name, &plan);
    let mut items: Vec<InstanceRow> = placed
        .iter()
        .map(|(instance, node)| {
            let c = mine.iter().copied().find(|c| &c.name == instance);
            row(instance, node.to_string(), c, "missing")
        })
        .collect();
    for c in &mine {
        if !placed.iter().any(|(i, _)| *i == c.name) {
            let mut r = row(&c.name, c.node.clone(), Some(c), "");
            r.state = format!("leaving ({})", c.state);
            items.push(r);
        }
    }
    if let Some(u) = plan.unplaced.get(&name) {
        for _ in 0..u.count {
            let mut r = row("-", "-".into(), None, "unplaced");
            r.desired_version = def.version;
            r.why = Some(u.why.clone());
            items.push(r);
        }
    }
    ok(&InstanceListing {
        items,
        unreachable: containers.unreachable,
        version: def.version,
        rollout: def.rollout.as_ref().map(|r| r.state.as_str().to_string()),
        message: def.rollout.as_ref().and_then(|r| r.message.clone()),
    })
}

/// Each instance's worst check status, by container name.
fn health_words(entries: &[crate::consul::client::HealthEntry]) -> BTreeMap<String, String> {
    let rank = |s: &str| match s {
        "passing" => 0,
        "warning" => 1,
        _ => 2,
    };
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for e in entries {
        let Some(container) = e.service.id.split(':').nth(2) else {
            continue;
        };
        let worst = e
            .checks
            .iter()
            .map(|c| c.status.as_str())
            .max_by_key(|s| rank(s))
            .unwrap_or("passing")
            .to_string();
        out.entry(container.to_string())
            .and_modify(|w| {
                if rank(&worst) > rank(w) {
                    *w = worst.clone();
                }
            })
            .or_insert(worst);
    }
    out
}

async fn remove_service(State(s): State<Shared>, Path(name): Path<String>) -> ApiResult {
    let name = service_in_path(&name)?;
    let def = load_service(&s, &name).await?;
    s.consul
        .kv_delete(&store::service_key(&name), false)
        .await
        .map_err(ApiError::backend)?;
    info!(service = %name, "service removed through the cluster API");
    ok(&ServiceRecord(def))
}

async fn list_templates(State(s): State<Shared>) -> ApiResult {
    let state = store::load(&s.consul).await.map_err(ApiError::backend)?;
    let items: Vec<TemplateRowV1> = state
        .templates
        .iter()
        .map(|(name, spec)| TemplateRowV1 {
            name: name.clone(),
            spec: ContainerSpecV1::from(spec),
        })
        .collect();
    ok(&Listing {
        items,
        unreachable: Vec::new(),
    })
}

async fn put_template(
    State(s): State<Shared>,
    Path(name): Path<String>,
    Json(Record(spec)): Json<Record<ContainerSpecV1>>,
) -> ApiResult {
    let name = template_in_path(&name)?;
    let spec = ContainerSpec::try_from(spec).map_err(|e| ApiError::bad_request(e.to_string()))?;
    s.consul
        .kv_put(
            &store::template_key(&name),
            wire::records::template_to_json(&spec),
        )
        .await
        .map_err(ApiError::backend)?;
    ok(&TemplateRowV1 {
        name: name.to_string(),
        spec: ContainerSpecV1::from(&spec),
    })
}

async fn remove_template(State(s): State<Shared>, Path(name): Path<String>) -> ApiResult {
    let name = template_in_path(&name)?;
    let key = store::template_key(&name);
    if s.consul
        .kv_get(&key)
        .await
        .map_err(ApiError::backend)?
        .is_none()
    {
        return Err(ApiError::not_found(format!("no template `{name}`")));
    }
    s.consul
        .kv_delete(&key, false)
        .await
        .map_err(ApiError::backend)?;
    ok(&serde_json::json!({ "removed": name.as_str() }))
}

async fn list_nodes(State(s): State<Shared>) -> ApiResult {
    let state = store::load(&s.consul).await.map_err(ApiError::backend)?;
    let nodes = s.nodes().await?;
    let items: Vec<NodeRow> = nodes
        .iter()
        .map(|n| NodeRow {
            address: n.address.to_string(),
            role: n.role.to_string(),
            drained: state.drained.contains(&n.address),
            labels: n.labels.clone(),
        })
        .collect();
    ok(&Listing {
        items,
        unreachable: Vec::new(),
    })
}

async fn node_action(
    State(s): State<Shared>,
    Path((node, action)): Path<(String, String)>,
) -> ApiResult {
    let address = node_in_path(&node)?;
    let key = store::drained_key(address);
    let drained = match action.as_str() {
        "drain" => {
            let known = s.nodes().await?.iter().any(|n| n.address == address);
            if !known {
                return Err(ApiError::not_found(format!(
                    "no node {address} among the cluster's healthy nodes"
                )));
            }
            s.consul
                .kv_put(&key, Vec::new())
                .await
                .map_err(ApiError::backend)?;
            true
        }
        "undrain" => {
            s.consul
                .kv_delete(&key, false)
                .await
                .map_err(ApiError::backend)?;
            false
        }
        other => {
            return Err(ApiError::not_found(format!(
                "no node action `{other}`: drain or undrain"
            )));
        }
    };
    info!(node = %address, drained, "node {action}ed through the cluster API");
    ok(&serde_json::json!({ "node": address.to_string(), "drained": drained }))
}

/// `/v1/sync/...` goes to the image sync service: this node's (its control socket, which
/// systemd activates) or, with `?node=A`, node A's through A's API.
async fn relay_sync(
    State(s): State<Shared>,
    Path(rest): Path<String>,
    Query(q): Params,
    method: Method,
    body: Bytes,
) -> ApiResult {
    sync_path(&rest)?;
    let target = match q.get("node") {
        Some(node) => Some(node.parse::<NodeAddress>().map_err(|e| {
            ApiError::bad_request(format!("node: `{node}` is not an arpanet address: {e}"))
        })?),
        None => None,
    }
    .filter(|n| *n != s.me.address);
    // The two hops differ only in where they go and what a failure to get there means.
    let (client, url, unreachable, fail) = match target {
        Some(node) => (
            s.peers
                .get()
                .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?,
            format!("https://{}:{}/v1/sync/{rest}", node.overlay_ip(), s.port),
            format!("node {node} does not answer"),
            StatusCode::BAD_GATEWAY,
        ),
        None => (
            s.sync.clone(),
            format!("http://sync/v1/{rest}"),
            format!(
                "the image sync service does not answer at {} on node {} (is arpanet-sync.socket running?)",
                s.sync_socket.display(),
                s.me.address
            ),
            StatusCode::SERVICE_UNAVAILABLE,
        ),
    };
    let resp = client
        .request(method, &url)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| ApiError(fail, format!("{unreachable}: {}", http::request_error(e))))?;
    let status = resp.status();
    let body = resp.bytes().await.unwrap_or_default();
    Ok(json_bytes(status, body))
}

/// `GET /metrics`: Prometheus' text format. Peers and image transfers are read now;
/// the passes record the rest as they run.
async fn metrics(State(s): State<Shared>) -> Response {
    let sc = &s.scraped;
    match Netlink::connect() {
        Ok(nl) => match nl.observe(&sc.device).await {
            Ok(observed) => {
                let admission = admission::load_status(&sc.admission_status);
                let peers = health::peers(&sc.join, &observed, admission.as_ref());
                crate::metrics::peers(&health::count_by_state(&peers));
            }
            Err(e) => warn!("metrics: cannot read the overlay's entries: {e:#}"),
        },
        Err(e) => warn!("metrics: {e:#}"),
    }
    if let Some(t) = crate::imagesync::TransferTotals::load(&sc.image_transfer) {
        crate::metrics::image_transfer(t.sent, t.received);
    }
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::encode(),
    )
        .into_response()
}

/// `POST /v1/identity/renew` (see [`crate::join::renew`]): on a server, a new
/// certificate for the node whose certificate the caller showed. On the unix socket no
/// certificate was shown, so there is nothing to renew.
async fn renew_identity(
    State(state): State<Shared>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<Peer>>>,
    Json(req): Json<crate::join::renew::RenewRequestV1>,
) -> ApiResult {
    use crate::join::renew;
    let caller = peer.as_ref().and_then(|p| p.0.0.node.clone());
    // Only a certificate in its last third renews: a node cannot mint itself a stock of
    // fresh certificates that `node rm` would not all know of.
    if let Some(cert) = peer.as_ref().and_then(|p| p.0.0.cert.as_ref())
        && !cert.due_for_renewal(std::time::SystemTime::now())
    {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!(
                "certificate {} is not due for renewal yet (its last third begins {})",
                cert.serial,
                humantime::format_rfc3339_seconds(
                    cert.not_after
                        - cert
                            .not_after
                            .duration_since(cert.not_before)
                            .unwrap_or_default()
                            / 3
                )
            ),
        ));
    }
    if !state.identity.ca_key().exists() {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "this node holds no CA key: renew through a server".into(),
        ));
    }
    let ca = crate::identity::Ca::load(&state.identity).map_err(ApiError::backend)?;
    let issued = renew::issue_renewal(&ca, caller.as_ref(), &req)?;
    let caller = caller.expect("issue_renewal refuses no caller");
    let name = renew::catalog_name(&state.consul, caller.address).await;
    let management = crate::consul::client::Consul::new(state.consul.addr())
        .with_token_file(state.identity.consul_management_token());
    renew::record_issued(
        &management,
        caller.address,
        &issued,
        caller.role.as_str(),
        name,
    )
    .await
    .map_err(ApiError::backend)?;
    info!(
        "renewed the certificate of node {} ({}): serial {}",
        caller.address, caller.role, issued.serial
    );
    ok(&renew::RenewResponseV1 {
        cert: issued.cert_pem,
    })
}

/// Serves the API on the unix socket at once and on the overlay address, over mutual
/// TLS, as soon as the address exists (arpanetd adds it in its first pass) and the node
/// has its identity. Runs until the process ends.
pub fn spawn(config: &Config, tls: NodeTls, registry: Option<crate::registry::Registry>) {
    let state: Shared = Arc::new(ApiState::new(config, tls.clone()));
    let mut app = router(state);
    if let Some(registry) = registry {
        // Other nodes fetch this node's blobs here (behind `only_nodes` on the overlay).
        app = app.merge(crate::registry::server::peer_routes(registry.swarm));
    }
    let socket = paths::api_socket(&config.paths);
    let tcp = SocketAddr::from((config.node.address.overlay_ip(), config.api.port));
    let unix_app = app.clone();
    tokio::spawn(async move {
        match http::bind_unix(&socket) {
            Ok(listener) => {
                info!("cluster API on {}", socket.display());
                if let Err(e) = axum::serve(listener, unix_app).await {
                    warn!("cluster API on {} stopped: {e}", socket.display());
                }
            }
            Err(e) => warn!("{e:#}; the cluster API is not on the unix socket"),
        }
    });
    tokio::spawn(async move {
        // Without an identity there is nothing to prove to other nodes or to check
        // them by: no listener at all (the unix socket serves the CLI meanwhile).
        let mut reported = false;
        while let Err(e) = tls.current() {
            if !reported {
                warn!("the cluster API does not listen on {tcp}: {e}");
                reported = true;
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        let mut reported = false;
        let listener = loop {
            match tokio::net::TcpListener::bind(tcp).await {
                Ok(l) => break l,
                Err(e) => {
                    if !reported {
                        info!("cluster API waits for {tcp} ({e})");
                        reported = true;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let cut = Some(tls.revoked().cut_when_revoked());
        let listener = match TlsListener::new(listener, "cluster API", cut, move || {
            tls.current().ok().map(|c| c.server)
        }) {
            Ok(l) => l,
            Err(e) => return warn!("cluster API on {tcp}: {e}"),
        };
        info!("cluster API on {tcp} (mutual TLS, node certificates)");
        let service = overlay(app).into_make_service_with_connect_info::<Peer>();
        if let Err(e) = axum::serve(listener, service).await {
            warn!("cluster API on {tcp} stopped: {e}");
        }
    });
}

/// The API as the overlay serves it: every route, `/metrics` too, behind [`only_nodes`].
fn overlay(app: Router) -> Router {
    app.layer(axum::middleware::from_fn(only_nodes))
}

/// On the overlay the API answers other nodes only, not the containers that can reach
/// it too (a container that could create services could run anything, privileged, on
/// every host). The handshake has checked the certificate against the cluster CA and
/// the revocation list; here it must also name a node.
async fn only_nodes(
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<Peer>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if peer.node.is_some() {
        return next.run(request).await;
    }
    ApiError(
        StatusCode::FORBIDDEN,
        format!(
            "the cluster API answers arpanet nodes only; the certificate {} showed names none",
            peer.addr.ip()
        ),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `GET /metrics` on the overlay's app, from a peer whose certificate names `node`.
    async fn overlay_metrics(node: Option<crate::identity::NodeIdentity>) -> (StatusCode, String) {
        use tower::ServiceExt;
        let config = Config::parse(
            std::path::Path::new("t"),
            "[node]\naddress = \"0.1\"\nrole = \"boot\"\n",
        )
        .unwrap();
        let state = Arc::new(ApiState::new(&config, NodeTls::from_config(&config)));
        let peer = Peer {
            addr: SocketAddr::from(([10, 255, 0, 9], 40000)),
            node,
            cert: None,
        };
        let app = overlay(router(state)).layer(axum::extract::connect_info::MockConnectInfo(peer));
        let request = axum::http::Request::get("/metrics")
            .body(axum::body::Body::empty())
            .unwrap();
        let resp = app.oneshot(request).await.unwrap();
        let status = resp.status();
        let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        if status == StatusCode::OK {
            assert_eq!(content_type.unwrap(), crate::metrics::CONTENT_TYPE);
        }
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn metrics_on_the_overlay_answer_nodes_only() {
        let node = crate::identity::NodeIdentity {
            cluster: "c".into(),
            address: "0.2".parse().unwrap(),
            role: crate::identity::Role::Client,
        };
        let (status, body) = overlay_metrics(Some(node)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        // No join peers and no overlay device here: no peer in any state.
        assert!(body.contains("arpanet_peers{state=\"ok\"} 0\n"), "{body}");
        let (status, body) = overlay_metrics(None).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(body.contains("answers arpanet nodes only"), "{body}");
        assert!(!body.contains("arpanet_"), "{body}");
    }

    #[test]
    fn container_references_are_docker_names_or_ids() {
        assert!(container_ref("web_0.2_1").is_ok());
        assert!(container_ref("3f2a9c").is_ok());
        assert!(container_ref(&"a".repeat(128)).is_ok());
        let long = "a".repeat(129);
        for bad in [
            "",
            "a/b",
            "a?local=true",
            "a b",
            "../x",
            "..",
            ".",
            "-x",
            "a\n",
            "a%2Fb",
            &long,
        ] {
            let ApiError(status, message) = container_ref(bad).unwrap_err();
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert!(message.starts_with("path segment {id}: `"), "{message}");
        }
    }

    #[test]
    fn names_in_paths_are_checked_by_their_kind() {
        // `..%2Fservices%2Fweb`, as axum hands it over.
        let attack = "../services/web";
        let ApiError(status, message) = template_in_path(attack).unwrap_err();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            message,
            "path segment {name}: `../services/web` is not a template name: lowercase letters, digits and `-` (a DNS label, at most 63 characters)"
        );
        assert!(template_in_path("web").is_ok());
        assert!(service_in_path("web-2").is_ok());
        let long = "a".repeat(64);
        for bad in ["", "..", "a/b", "Web", "-a", "a-", "a.b", "a\0", &long] {
            assert!(template_in_path(bad).is_err(), "{bad}");
            let ApiError(_, m) = service_in_path(bad).unwrap_err();
            assert!(m.starts_with("path segment {name}: `"), "{m}");
        }
        assert!(service_in_path(&"a".repeat(63)).is_ok());
        assert_eq!(node_in_path("0.2").unwrap().to_string(), "0.2");
        for bad in ["", "..", "0.2/x", "0.2/../x", "256.1", "0.0"] {
            let ApiError(_, m) = node_in_path(bad).unwrap_err();
            assert!(m.starts_with("path segment {node}: "), "{m}");
        }
    }

    #[test]
    fn the_sync_relay_forwards_plain_paths_only() {
        for good in [
            "pulls",
            "pulls/3",
            "images",
            &format!("seeds/{}", "ab".repeat(32)),
        ] {
            assert!(sync_path(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "../services/web",
            "pulls/..",
            "pulls//3",
            "pulls/3?node=0.2",
            "a%2Fb",
            "pulls/\n",
        ] {
            assert!(sync_path(bad).is_err(), "{bad}");
        }
    }
}
