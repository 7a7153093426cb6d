//! The join service on servers: `POST /v1/join` over TLS on the underlay (the joiner
//! has no certificate yet; the token is what admits it).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use tracing::{info, warn};

use super::{
    ISSUED_PREFIX, IssuedV1, JoinRequestV1, JoinResponseV1, PeerV1, PeersRequestV1, PeersV1,
    SECRETS_KEY, ServerSecretsV1,
};
use crate::addressing::NodeAddress;
use crate::config::Config;
use crate::consul::client::Consul;
use crate::http::{ApiError, Json};
use crate::identity::{
    Ca, CertInfo, JoinSecrets, JoinToken, LocalIdentity, NODE_CERT_VALIDITY, NodeIdentity, Role,
};
use crate::paths::IdentityFiles;

struct JoinState {
    cluster: String,
    /// This server's own address and node name, which no joiner may take.
    address: NodeAddress,
    name: String,
    files: IdentityFiles,
    secret_file: std::path::PathBuf,
    /// With the management token: reads the join secrets, records certificates, makes
    /// node tokens.
    consul: Consul,
    /// Held by a join on the boot node's own copy of the secrets (while it has one), and
    /// while the waiting joins are recorded and the secrets published (see
    /// [`super::pending`]).
    local: tokio::sync::Mutex<()>,
    /// The nodes this one's hello service admitted: what the peer list offers while
    /// Consul has no leader and so no catalog.
    admissions: crate::network::admission::Shared,
}

/// The boot node's own copy of the join secrets, there until it has published them.
fn local_secrets(files: &IdentityFiles) -> Result<Option<JoinSecrets>, ApiError> {
    let path = files.join_secrets();
    match std::fs::read(&path) {
        Ok(b) => crate::http::parse_json(&b).map(Some).map_err(|why| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{}: {why}", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ApiError::backend(anyhow::anyhow!(
            "read {}: {e}",
            path.display()
        ))),
    }
}

/// [`taken`] on the boot node's own copy: this server and the joins waiting to be
/// recorded (with a leader, the caller also asks Consul). `Some(i)` when waiting join
/// `i` is this one asked again: the same address, name, role and key.
fn taken_before_leader(
    state: &JoinState,
    pending: &super::pending::PendingV1,
    address: NodeAddress,
    name: &str,
    role: Role,
    public_key: &str,
) -> Result<Option<usize>, ApiError> {
    let waiting = |what: String| {
        ApiError(
            StatusCode::CONFLICT,
            format!("{what} is taken by a join that waits to be recorded in Consul"),
        )
    };
    if address == state.address {
        return Err(in_use(address));
    }
    if name == state.name {
        return Err(name_taken(name, &state.address.to_string()));
    }
    let address_text = address.to_string();
    for (i, j) in pending.joins.iter().enumerate() {
        let same_address = j.address == address_text;
        let same_name = j.record.name == name;
        if same_address && same_name && j.record.role == role.as_str() && j.public_key == public_key
        {
            return Ok(Some(i));
        }
        if same_address {
            return Err(waiting(format!("address {address}")));
        }
        if same_name {
            return Err(waiting(format!("name {name:?}")));
        }
    }
    Ok(None)
}

fn name_taken(name: &str, holder: &str) -> ApiError {
    ApiError(
        StatusCode::CONFLICT,
        format!(
            "name {name:?} is node {holder}'s already; give this host another (node.name in arpanet.toml) or `arpanet node rm {holder}` first"
        ),
    )
}

/// The cluster's join secrets as Consul holds them (None: not published yet).
pub async fn read_secrets(consul: &Consul) -> Result<Option<JoinSecrets>, ApiError> {
    let Some(bytes) = consul
        .kv_get(SECRETS_KEY)
        .await
        .map_err(ApiError::backend)?
    else {
        return Ok(None);
    };
    crate::http::parse_json::<JoinSecrets>(&bytes)
        .map(Some)
        .map_err(|why| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("Consul key {SECRETS_KEY}: {why}"),
            )
        })
}

fn in_use(address: NodeAddress) -> ApiError {
    ApiError(
        StatusCode::CONFLICT,
        format!(
            "address {address} is a node of the cluster already; `arpanet node rm {address}` on a server frees it"
        ),
    )
}

/// A joiner takes a free address and a free name: an address in the catalog or with a
/// certificate on record is someone's (a client token must not make its holder node
/// 0.1), and so is a name on record (its Consul token would be replaced).
async fn taken(consul: &Consul, address: NodeAddress, name: &str) -> Result<(), ApiError> {
    let catalog = crate::consul::node::read_catalog(consul)
        .await
        .map_err(ApiError::backend)?;
    if catalog.nodes.iter().any(|n| n.address == address) {
        return Err(in_use(address));
    }
    let (records, _) = consul
        .kv_list(ISSUED_PREFIX, None, Duration::ZERO)
        .await
        .map_err(ApiError::backend)?;
    for (key, value) in records {
        if key == format!("{ISSUED_PREFIX}{address}") {
            return Err(in_use(address));
        }
        if let Ok(r) = serde_json::from_slice::<IssuedV1>(&value)
            && r.name == name
        {
            let holder = key.strip_prefix(ISSUED_PREFIX).unwrap_or(&key);
            return Err(name_taken(name, holder));
        }
    }
    Ok(())
}

fn refuse(m: impl Into<String>) -> ApiError {
    ApiError(StatusCode::FORBIDDEN, m.into())
}

const PEERS_PATIENCE: Duration = Duration::from_secs(2);

fn parse_token(token: &str) -> Result<JoinToken, ApiError> {
    token
        .parse()
        .map_err(|e: crate::identity::IdentityError| ApiError::bad_request(format!("token: {e}")))
}

/// The cluster's nodes as this server's catalog has them, for a holder of a current
/// join token (who could join and read them anyway).
async fn peers(
    State(state): State<Arc<JoinState>>,
    Json(req): Json<PeersRequestV1>,
) -> Result<axum::Json<PeersV1>, ApiError> {
    let token = parse_token(&req.token)?;
    let ca = Ca::load(&state.files)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    if token.ca_digest != ca.digest() {
        return Err(refuse(
            "the token names another CA: it is not this cluster's",
        ));
    }
    // Before Consul has a leader (an `expect` > 1 cluster's first servers joining) a
    // read waits out Consul's own patience and then this client's retries: the list is a
    // head start only, so a server that cannot answer at once says so.
    let unanswered = || {
        ApiError::backend(anyhow::anyhow!(
            "Consul did not answer within {PEERS_PATIENCE:?}"
        ))
    };
    let checked = tokio::time::timeout(PEERS_PATIENCE, async {
        let secrets = match local_secrets(&state.files)? {
            Some(s) => Some(s),
            None => read_secrets(&state.consul).await?,
        };
        let Some(secrets) = secrets else {
            return Err(ApiError::backend(anyhow::anyhow!(
                "the cluster's join tokens are not in Consul yet; try again in a few seconds"
            )));
        };
        if secrets.role_of(&token.secret).is_none() {
            return Err(refuse("the join token is not current"));
        }
        Ok(())
    });
    checked.await.map_err(|_| unanswered())??;
    // Without a leader (the first servers and the clients that join with them) there is
    // no catalog yet: the nodes this one admitted by hello stand in, so that a joiner
    // greets them, and reaches every server, before the election. Its Consul agent's
    // first token lookup must reach a server: a failed one is taken as "ACL not found"
    // and cached for the agent's token TTL. With a leader, a catalog that does not
    // answer is the caller's to know (it asks its next join peer).
    let catalog = tokio::time::timeout(PEERS_PATIENCE, async {
        match state.consul.leader().await {
            Ok(Some(_)) => crate::consul::node::read_catalog(&state.consul)
                .await
                .map(Some)
                .map_err(ApiError::backend),
            _ => Ok(None),
        }
    })
    .await
    .map_err(|_| unanswered())??;
    let admitted = state
        .admissions
        .lock()
        .expect("admissions")
        .current(crate::network::admission::unix_now());
    Ok(axum::Json(peer_list(catalog.as_ref(), &admitted)))
}

/// The catalog's nodes, then those admitted by hello that it does not list.
fn peer_list(
    catalog: Option<&crate::consul::node::Catalog>,
    admitted: &[crate::network::Peer],
) -> PeersV1 {
    let mut peers: Vec<crate::network::Peer> = catalog.map(|c| c.peers()).unwrap_or_default();
    for p in admitted {
        if !peers.iter().any(|q| q.address == p.address) {
            peers.push(*p);
        }
    }
    PeersV1 {
        peers: peers
            .iter()
            .map(|p| PeerV1 {
                address: p.address.to_string(),
                underlay_ip: p.underlay_ip.to_string(),
            })
            .collect(),
    }
}

async fn join(
    State(state): State<Arc<JoinState>>,
    Json(req): Json<JoinRequestV1>,
) -> Result<axum::Json<JoinResponseV1>, ApiError> {
    let token = parse_token(&req.token)?;
    let address: NodeAddress = req
        .address
        .parse()
        .map_err(|e| ApiError::bad_request(format!("address: {e}")))?;
    let role: Role = req
        .role
        .parse()
        .map_err(|e: String| ApiError::bad_request(format!("role: {e}")))?;
    if !consul_node_name(&req.name) {
        return Err(ApiError::bad_request(format!(
            "name: {:?} is not a node name (1-63 letters, digits, `.`, `-` or `_`, starting with a letter or digit)",
            req.name
        )));
    }
    // Read per request: renewal or a restored backup may have changed them. A CA that
    // cannot be read is this server's fault, not a wait (503 makes joiners wait).
    let ca = Ca::load(&state.files)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    if token.ca_digest != ca.digest() {
        return Err(refuse(
            "the token names another CA: it is not this cluster's",
        ));
    }
    // Until the boot node has published the join tokens (with `cluster.expect` > 1,
    // until its initial servers have joined and elected a leader), it takes joins on
    // its own copy and records them once Consul can take them (`super::pending`). The
    // lock is for that path only: other joins do not queue behind an election.
    let local_lock = match state.files.join_secrets().exists() {
        true => Some(state.local.lock().await),
        false => None,
    };
    let local = match local_lock {
        Some(_) => local_secrets(&state.files)?,
        None => None,
    };
    let secrets = match &local {
        Some(s) => s.clone(),
        None => read_secrets(&state.consul).await?.ok_or_else(|| {
            ApiError::backend(anyhow::anyhow!(
                "the cluster's join tokens are not in Consul yet (the boot node publishes them once Consul has a leader); try again in a few seconds"
            ))
        })?,
    };
    match (secrets.role_of(&token.secret), role) {
        (None, _) => {
            return Err(refuse(format!(
                "the join token is not current: it was rotated, or never was this cluster's; `arpanet token show {role}` on a server prints the current one"
            )));
        }
        (Some(Role::Client), Role::Server) => {
            return Err(refuse(
                "this is a client token: `arpanet server` needs the server token (`arpanet token show server` on a server)",
            ));
        }
        _ => {}
    }
    let identity = NodeIdentity {
        cluster: state.cluster.clone(),
        address,
        role,
    };
    let issued = ca
        .issue(&req.csr, &identity, NODE_CERT_VALIDITY)
        .map_err(|e| ApiError::bad_request(format!("csr: {e}")))?;
    let info = CertInfo::from_pem(&issued.cert_pem).map_err(ApiError::backend)?;
    let record = IssuedV1 {
        serial: issued.serial.clone(),
        name: req.name.clone(),
        role: role.to_string(),
        not_after: info
            .not_after
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        earlier: Vec::new(),
    };
    let cluster_secret =
        crate::consul::secret::read(&state.secret_file).map_err(ApiError::backend)?;
    let server = if role == Role::Server {
        Some(ServerSecretsV1 {
            ca_key: ca.key_pem(),
            consul_management_token: read_optional(&state.files.consul_management_token())?,
        })
    } else {
        None
    };
    let (cert, consul_token) = if local.is_some() {
        let public_key =
            crate::identity::public_key_digest(&issued.cert_pem).map_err(ApiError::backend)?;
        let pending_path = state.files.join_pending();
        let mut pending = super::pending::load(&pending_path).map_err(ApiError::backend)?;
        match taken_before_leader(&state, &pending, address, &req.name, role, &public_key)? {
            // Asked again with the same key (the answer was lost): the same answer, so
            // what a flush may have recorded already stays this join's.
            Some(i) => {
                let join = &pending.joins[i];
                info!(
                    "join: answered node {address} ({role}, {}) again with certificate {}",
                    req.name, join.record.serial
                );
                (join.cert_pem.clone(), join.consul_token.clone())
            }
            None => {
                // A leader (the tokens are only not published yet): what Consul holds
                // counts too, so a join cannot take an address or name on record.
                if matches!(state.consul.leader().await, Ok(Some(_))) {
                    taken(&state.consul, address, &req.name).await?;
                }
                let secret = crate::consul::acl::random_uuid().map_err(ApiError::backend)?;
                pending.joins.push(super::pending::PendingJoin {
                    address: address.to_string(),
                    record,
                    consul_token: secret.clone(),
                    public_key,
                    cert_pem: issued.cert_pem.clone(),
                });
                super::pending::save(&pending_path, &pending).map_err(ApiError::backend)?;
                info!(
                    "join: issued node {address} ({role}, {}) certificate {}, to record in Consul when it can",
                    req.name, issued.serial
                );
                (issued.cert_pem, secret)
            }
        }
    } else {
        taken(&state.consul, address, &req.name).await?;
        // Created, never overwritten: of two joins for one address only one gets it.
        let created = state
            .consul
            .kv_put_new(
                &format!("{ISSUED_PREFIX}{address}"),
                serde_json::to_vec(&record).expect("a record serializes"),
            )
            .await
            .map_err(ApiError::backend)?;
        if !created {
            return Err(in_use(address));
        }
        // The node's own Consul token (node write for its name only); made again on a
        // re-join, which replaces the old one.
        let token = crate::consul::acl::create_node_token(&state.consul, &req.name)
            .await
            .map_err(ApiError::backend)?;
        info!(
            "join: issued node {address} ({role}, {}) certificate {}",
            req.name, issued.serial
        );
        (issued.cert_pem, token)
    };
    Ok(axum::Json(JoinResponseV1 {
        ca: ca.cert_pem.clone(),
        cert,
        cluster_secret,
        consul_token: Some(consul_token),
        server,
    }))
}

/// What Consul (and so an ACL node identity) accepts as a node name, kept to a safe set.
pub fn consul_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'))
}

fn read_optional(path: &std::path::Path) -> Result<Option<String>, ApiError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ApiError::backend(anyhow::anyhow!(
            "read {}: {e}",
            path.display()
        ))),
    }
}

/// Runs the join service on a server that holds the CA, on TCP `cluster.join_port` of
/// every address (the firewall answers it on the underlay interface only). A node
/// without the CA key serves nothing and says why once.
pub fn spawn(config: &Config, admissions: crate::network::admission::Shared) {
    let files = IdentityFiles::new(&config.cluster.identity_dir);
    let identity = match LocalIdentity::load(&files) {
        Ok(i) => i,
        Err(e) => {
            warn!("join service: {e}; joins go through another server");
            return;
        }
    };
    if identity.info.identity.role != Role::Server || !files.ca_key().exists() {
        return;
    }
    let tls = match crate::identity::tls::join_server_config(&identity) {
        Ok(t) => t,
        Err(e) => {
            warn!("join service: {e}");
            return;
        }
    };
    let state = Arc::new(JoinState {
        cluster: config.datacenter(),
        address: config.node.address,
        name: config.node_name(),
        files,
        secret_file: config.cluster.secret_file.clone(),
        consul: Consul::for_management(config),
        local: tokio::sync::Mutex::new(()),
        admissions,
    });
    if state.files.join_secrets().exists() || state.files.join_pending().exists() {
        let state = state.clone();
        tokio::spawn(async move {
            let mut reported = String::new();
            loop {
                // Without a leader every write waits out Consul's hold and our retries
                // (about a minute): not with the lock, which joins need meanwhile.
                let done = match state.consul.leader().await {
                    Ok(Some(_)) => {
                        let _local = state.local.lock().await;
                        record_and_publish(&state).await
                    }
                    Ok(None) => Err(anyhow::anyhow!("Consul has no leader yet")),
                    Err(e) => Err(e.into()),
                };
                match done {
                    Ok(()) => break,
                    Err(e) => {
                        let e = format!("{e:#}");
                        if e != reported {
                            info!("join tokens and joins wait for Consul: {e}");
                            reported = e;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        });
    }
    let app = Router::new()
        .route("/v1/join", post(join))
        .route("/v1/join/peers", post(peers))
        .with_state(state);
    let addr = SocketAddr::from(([0, 0, 0, 0], config.cluster.join_port));
    tokio::spawn(async move {
        let listener = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) => {
                    warn!("join service: bind {addr}: {e}; trying again");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        };
        // The files are read per connection (joins are rare), so a renewed certificate
        // is shown from the next join on; a bad read keeps the one held.
        let held = std::sync::Mutex::new((identity.cert_pem.clone(), tls));
        let files = IdentityFiles::new(&identity.files.dir);
        let listener =
            match crate::http::TlsListener::new(listener, "join service", None, move || {
                let mut held = held.lock().expect("join tls lock");
                if let Ok(now) = LocalIdentity::load(&files)
                    && now.cert_pem != held.0
                    && let Ok(config) = crate::identity::tls::join_server_config(&now)
                {
                    *held = (now.cert_pem, config);
                }
                Some(held.1.clone())
            }) {
                Ok(l) => l,
                Err(e) => return warn!("join service on {addr}: {e}"),
            };
        info!("join service on {addr}");
        if let Err(e) = axum::serve(listener, app).await {
            warn!("join service on {addr} stopped: {e}");
        }
    });
}

/// The joins taken on the local copy first, so that they are on record before any
/// other server takes joins, then the secrets.
async fn record_and_publish(state: &JoinState) -> anyhow::Result<()> {
    // The joiners' tokens name the node policy: made here too, not only by this node's
    // pass, so that they exist the moment Consul can take them (the joiners' agents
    // are asking for them already).
    crate::consul::acl::ensure_policies(&state.consul).await?;
    super::pending::flush(&state.consul, &state.files.join_pending()).await?;
    publish_secrets(&state.consul, &state.files).await
}

/// Publishes this server's join secrets if the cluster has none yet (the boot node's
/// first start), and keeps the local copy in step with the cluster's afterwards.
pub async fn publish_secrets(consul: &Consul, files: &IdentityFiles) -> anyhow::Result<()> {
    let path = files.join_secrets();
    let local: Option<JoinSecrets> = match std::fs::read(&path) {
        Ok(b) => Some(
            crate::http::parse_json(&b)
                .map_err(|why| anyhow::anyhow!("{}: {why}", path.display()))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(anyhow::anyhow!("read {}: {e}", path.display())),
    };
    let Some(local) = local else { return Ok(()) };
    let text = serde_json::to_vec(&local).expect("secrets serialize");
    if consul.kv_put_new(SECRETS_KEY, text).await? {
        info!("published the cluster's join tokens");
    }
    // Consul holds the cluster's now (perhaps rotated since): a local copy would only
    // go stale.
    std::fs::remove_file(&path).map_err(|e| anyhow::anyhow!("remove {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn node_names_are_a_safe_set() {
        for good in ["h1", "web-1.example", "a_b"] {
            assert!(super::consul_node_name(good), "{good}");
        }
        for bad in ["", "-x", ".x", "a/b", "a b", "a?b", &"x".repeat(64)] {
            assert!(!super::consul_node_name(bad), "{bad}");
        }
    }

    #[test]
    fn before_a_leader_the_peer_list_is_the_nodes_admitted_by_hello() {
        use crate::consul::node::{Catalog, CatalogNode};
        use crate::network::Peer;
        let peer = |a: &str, last: u8| Peer {
            address: a.parse().unwrap(),
            underlay_ip: std::net::Ipv4Addr::new(192, 168, 9, last),
        };
        let listed = |l: &super::PeersV1| -> Vec<(String, String)> {
            l.peers
                .iter()
                .map(|p| (p.address.clone(), p.underlay_ip.clone()))
                .collect()
        };
        let admitted = [peer("0.2", 2), peer("0.3", 3)];
        // No catalog: the admitted nodes.
        assert_eq!(
            listed(&super::peer_list(None, &admitted)),
            [
                ("0.2".into(), "192.168.9.2".into()),
                ("0.3".into(), "192.168.9.3".into())
            ]
        );
        // The catalog first; an admitted node it lists is not listed twice.
        let catalog = Catalog {
            nodes: [peer("0.1", 1), peer("0.2", 2)]
                .iter()
                .map(|p| CatalogNode {
                    address: p.address,
                    underlay_ip: p.underlay_ip,
                    role: crate::config::Role::Server,
                    labels: Default::default(),
                    capacity: None,
                    healthy: true,
                })
                .collect(),
            refused: vec![],
        };
        assert_eq!(
            listed(&super::peer_list(Some(&catalog), &admitted)),
            [
                ("0.1".into(), "192.168.9.1".into()),
                ("0.2".into(), "192.168.9.2".into()),
                ("0.3".into(), "192.168.9.3".into())
            ]
        );
    }
}
