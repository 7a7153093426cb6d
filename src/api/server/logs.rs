//! Logs through the cluster API: one container's wherever it runs
//! (`GET /v1/containers/{id}/logs`), or every instance of a service on every node
//! (`GET /v1/services/{name}/logs`), with the query `follow`, `since` and `tail`.
//! Answers are NDJSON [`LogRecord`]s sent as the lines come, so with `follow=true` a
//! line written after the request still arrives. A node answers for its own
//! containers (`local=true`, from Docker's log stream); any node forwards to the others
//! over the overlay and merges what they send, line by line.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use futures::future::join_all;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};

use super::{
    ApiResult, ApiState, Params, Shared, container_ref, flag, load_service, service_in_path,
};
use crate::addressing::NodeAddress;
use crate::api::{LogOptions, LogRecord};
use crate::containers::{LABEL_CLUSTER, LABEL_FILE};
use crate::docker::engine::{Engine, short};
use crate::http::{self, ApiError, error_text};

/// Log records as they come, from one node or merged from several.
type Records = BoxStream<'static, LogRecord>;

fn options(q: &BTreeMap<String, String>) -> Result<LogOptions, ApiError> {
    LogOptions::from_query(q).map_err(ApiError::bad_request)
}

/// One record saying that a node's logs are missing, and why.
fn failed(node: impl ToString, error: impl ToString) -> Records {
    stream::iter([LogRecord::Failed {
        node: node.to_string(),
        error: error.to_string(),
    }])
    .boxed()
}

/// Docker's `since` is a Unix time: `since` back from this node's clock.
fn since_unix(back: std::time::Duration) -> i32 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    // `parse_since` keeps `back` far below this; 0 would mean "from the start".
    i32::try_from(now.saturating_sub(back.as_secs()).max(1)).unwrap_or(i32::MAX)
}

pub(super) async fn container_logs(
    State(s): State<Shared>,
    Path(id): Path<String>,
    axum::extract::Query(q): Params,
) -> ApiResult {
    container_ref(&id)?;
    let opts = options(&q)?;
    if flag(&q, "local") {
        return Ok(http::ndjson_response(
            s.container_logs_here(&id, opts).await?,
        ));
    }
    let (node, _) = s.locate(&id).await?;
    if node == s.me.address {
        return Ok(http::ndjson_response(
            s.container_logs_here(&id, opts).await?,
        ));
    }
    let path = format!("/v1/containers/{id}/logs?local=true&{}", opts.query());
    Ok(http::ndjson_response(s.records_from(node, &path).await?))
}

pub(super) async fn service_logs(
    State(s): State<Shared>,
    Path(name): Path<String>,
    axum::extract::Query(q): Params,
) -> ApiResult {
    let name = service_in_path(&name)?;
    let opts = options(&q)?;
    if flag(&q, "local") {
        return Ok(http::ndjson_response(
            s.service_logs_here(name.as_str(), opts).await?,
        ));
    }
    load_service(&s, &name).await?;
    // Only the nodes with instances (stopped ones too: their log may say why they
    // stopped) are asked; the ones that did not answer the listing are said first.
    let all = BTreeMap::from([("all".to_string(), "true".to_string())]);
    let listing = s
        .listing(&all, "/v1/containers", s.containers_here())
        .await?;
    let nodes: BTreeSet<&str> = listing
        .items
        .iter()
        .filter(|c| c.service.as_deref() == Some(name.as_str()))
        .map(|c| c.node.as_str())
        .collect();
    let mut streams: Vec<Records> = listing
        .unreachable
        .iter()
        .map(|u| failed(&u.node, &u.error))
        .collect();
    let path = format!("/v1/services/{name}/logs?local=true&{}", opts.query());
    let (s, name, path) = (&s, &name, &path);
    let opened = join_all(nodes.into_iter().map(|node| async move {
        let answer = match node.parse::<NodeAddress>() {
            Ok(a) if a == s.me.address => s.service_logs_here(name.as_str(), opts).await,
            Ok(a) => s.records_from(a, path).await,
            Err(e) => Err(ApiError::backend(anyhow::anyhow!(
                "a listing named node `{node}`: {e}"
            ))),
        };
        answer.unwrap_or_else(|ApiError(_, why)| failed(node, why))
    }))
    .await;
    streams.extend(opened);
    Ok(http::ndjson_response(stream::select_all(streams)))
}

impl ApiState {
    async fn container_logs_here(&self, id: &str, opts: LogOptions) -> Result<Records, ApiError> {
        let engine = self.engine().await?;
        let inspect = engine
            .inspect(id)
            .await
            .map_err(ApiError::backend)?
            .ok_or_else(|| ApiError::not_found(format!("no container `{id}` on this node")))?;
        let full = inspect.id.unwrap_or_else(|| id.to_string());
        let name = inspect
            .name
            .map(|n| n.trim_start_matches('/').to_string())
            .unwrap_or_else(|| short(&full).to_string());
        Ok(self.instance_records(&engine, &full, name, opts))
    }

    /// Every instance of the service on this node, merged.
    async fn service_logs_here(
        &self,
        service: &str,
        opts: LogOptions,
    ) -> Result<Records, ApiError> {
        let engine = self.engine().await?;
        let containers = engine
            .containers_with_label(LABEL_FILE, service)
            .await
            .map_err(ApiError::backend)?;
        let streams: Vec<Records> = containers
            .into_iter()
            // A containers.d file of the same name is not the service.
            .filter(|c| c.labels.contains_key(LABEL_CLUSTER))
            .map(|c| self.instance_records(&engine, &c.id, c.name, opts))
            .collect();
        Ok(stream::select_all(streams).boxed())
    }

    /// One container's log here, line by line, each line named by `instance`.
    fn instance_records(
        &self,
        engine: &Engine,
        id: &str,
        instance: String,
        opts: LogOptions,
    ) -> Records {
        let node = self.me.address.to_string();
        let bytes = engine
            .logs(id, opts.follow, opts.since.map(since_unix), opts.tail)
            .map_err(|e| e.to_string());
        http::lines(bytes)
            .map(move |r| match r {
                Ok(line) => LogRecord::Line {
                    instance: instance.clone(),
                    line,
                },
                Err(error) => LogRecord::Failed {
                    node: node.clone(),
                    error,
                },
            })
            .boxed()
    }

    /// Another node's logs answer, passed on record by record as its body arrives
    /// (read chunk by chunk, never whole: with `follow` it does not end). A refusal
    /// keeps its status; an answer that breaks off ends with a record saying so.
    async fn records_from(&self, node: NodeAddress, path: &str) -> Result<Records, ApiError> {
        let url = format!("https://{}:{}{path}", node.overlay_ip(), self.port);
        let client = self
            .peers
            .streaming()
            .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        let resp = client.get(&url).send().await.map_err(|e| {
            ApiError(
                StatusCode::BAD_GATEWAY,
                format!("node {node} did not answer: {}", http::request_error(e)),
            )
        })?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.bytes().await.unwrap_or_default();
            return Err(ApiError(
                status,
                format!("node {node}: {}", error_text(status, &body)),
            ));
        }
        let bytes = resp.bytes_stream().map_err(http::request_error);
        Ok(remote_records(node, bytes))
    }
}

/// NDJSON records from a byte stream; a line that is no record, or the stream breaking
/// off, is a failure of `node`'s (and the end of its records).
fn remote_records<S>(node: NodeAddress, bytes: S) -> Records
where
    S: futures::Stream<Item = Result<axum::body::Bytes, String>> + Send + 'static,
{
    let node = node.to_string();
    http::lines(bytes)
        .filter(|r| std::future::ready(!matches!(r, Ok(l) if l.is_empty())))
        .map(move |r| match r {
            Ok(line) => serde_json::from_str(&line).unwrap_or_else(|e| LogRecord::Failed {
                node: node.clone(),
                error: format!("unexpected answer: {e}"),
            }),
            Err(e) => LogRecord::Failed {
                node: node.clone(),
                error: format!("its logs broke off: {e}"),
            },
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn another_nodes_records_pass_on_whole_and_a_break_is_said() {
        let node: NodeAddress = "0.3".parse().unwrap();
        let body = br#"{"instance":"web_0.3_1","line":"hel"#;
        let chunks: Vec<Result<axum::body::Bytes, String>> = vec![
            Ok(axum::body::Bytes::from_static(body)),
            Ok(axum::body::Bytes::from_static(b"lo\"}\n\nnot json\n")),
            Err("cannot connect".into()),
        ];
        let got: Vec<LogRecord> = remote_records(node, stream::iter(chunks)).collect().await;
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(
            got[0],
            LogRecord::Line {
                instance: "web_0.3_1".into(),
                line: "hello".into()
            }
        );
        assert!(
            matches!(&got[1], LogRecord::Failed { node, error } if node == "0.3" && error.starts_with("unexpected answer: ")),
            "{got:?}"
        );
        assert_eq!(
            got[2],
            LogRecord::Failed {
                node: "0.3".into(),
                error: "its logs broke off: cannot connect".into()
            }
        );
    }

    #[test]
    fn since_counts_back_from_now() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let since = since_unix(std::time::Duration::from_secs(600)) as i64;
        assert!((now - 600 - since).abs() <= 1, "{since} vs {now}");
    }
}
