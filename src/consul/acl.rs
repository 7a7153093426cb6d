//! Consul's ACLs, `default_policy = "deny"`: what each token may do, made and kept by
//! the servers that hold the management token.
//!
//! - Every node's token (its agent's and arpanet's own requests) may write its own
//!   node and read its own agent, read every node, write every service (containers
//!   register under any name), and write KV under `arpanet/` but only read
//!   `arpanet/identity/` (revocations and join-token hashes, which only management
//!   writes).
//! - The anonymous token (requests without one, DNS) reads nodes and services, which
//!   DNS needs, and nothing else: KV and the agent endpoints answer 403.
//! - The management token (`acl.tokens.master`, which the leader creates) stays in a
//!   root-only file on the servers that have it.
//!
//! A node's token has a SecretID chosen by whoever makes it (the agent's config can
//! name it before a leader exists) and an AccessorID derived from the node's name, so
//! it is found, replaced and deleted by name alone.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::client::{Consul, ConsulError};

/// Shared by every node's token.
pub const NODE_POLICY: &str = "arpanet-node";
/// The anonymous token's.
pub const ANONYMOUS_POLICY: &str = "arpanet-anonymous";
/// Consul's fixed AccessorID of the anonymous token.
pub const ANONYMOUS_TOKEN: &str = "00000000-0000-0000-0000-000000000002";
/// Where servers keep what nodes may read and never write.
pub const IDENTITY_PREFIX: &str = "arpanet/identity/";
const KV_PREFIX: &str = "arpanet/";

#[derive(Debug, thiserror::Error)]
pub enum AclError {
    #[error(transparent)]
    Consul(#[from] ConsulError),
    #[error("node name `{name}`: {reason}")]
    InvalidNodeName { name: String, reason: &'static str },
    #[error("no randomness for a Consul token: {0}")]
    Random(String),
    #[error("write {}: {reason}", path.display())]
    Write {
        path: std::path::PathBuf,
        reason: String,
    },
}

/// The rules every node's token shares (Consul reads JSON rules as it reads HCL).
pub fn node_rules() -> Value {
    json!({
        "node_prefix": { "": { "policy": "read" } },
        "service_prefix": { "": { "policy": "write" } },
        "key_prefix": {
            KV_PREFIX: { "policy": "write" },
            IDENTITY_PREFIX: { "policy": "read" },
        },
    })
}

/// The rules only `node`'s token has: its own catalog entry (the agent's
/// anti-entropy and coordinates) and its own agent (`/v1/agent/self`).
pub fn own_node_rules(node: &str) -> Value {
    json!({
        "node": { node: { "policy": "write" } },
        "agent": { node: { "policy": "read" } },
    })
}

/// What DNS needs: `NAME.service.consul` and `NAME.node.consul`.
pub fn anonymous_rules() -> Value {
    json!({
        "node_prefix": { "": { "policy": "read" } },
        "service_prefix": { "": { "policy": "read" } },
    })
}

fn check_node_name(node: &str) -> Result<(), AclError> {
    let invalid = |reason| AclError::InvalidNodeName {
        name: node.escape_debug().to_string(),
        reason,
    };
    if node.is_empty() {
        return Err(invalid("is empty"));
    }
    if node.chars().any(char::is_control) {
        return Err(invalid("holds a control character"));
    }
    Ok(())
}

/// The per-node policy's name. Consul allows `[A-Za-z0-9_-]{1,128}` only: a name with
/// other characters (a dotted hostname) is spelled with `_` and a digest of the name,
/// so two names never share a policy.
pub fn own_node_policy(node: &str) -> String {
    let plain = node.len() <= 100
        && node
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if plain {
        return format!("arpanet-node-{node}");
    }
    let spelled: String = node
        .chars()
        .take(80)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let digest = Sha256::digest(node.as_bytes());
    let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("arpanet-node-{spelled}-{hex}")
}

fn format_uuid(b: [u8; 16]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// A random UUID (version 4), as Consul's own SecretIDs are.
pub fn random_uuid() -> Result<String, AclError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| AclError::Random(e.to_string()))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    Ok(format_uuid(b))
}

/// The AccessorID of `node`'s token: a name-based UUID (version 8, from SHA-256). It
/// is no secret; the SecretID is.
pub fn node_token_accessor(node: &str) -> String {
    let digest = Sha256::digest(format!("arpanet/v1/consul-node-token\0{node}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    format_uuid(b)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PolicyListEntry {
    #[serde(rename = "ID")]
    id: String,
    name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Policy {
    #[serde(default)]
    rules: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
struct PolicyLink {
    #[serde(rename = "ID", default, skip_serializing_if = "String::is_empty")]
    id: String,
    #[serde(default)]
    name: String,
}

/// A node's token as Consul holds it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeToken {
    #[serde(rename = "AccessorID")]
    pub accessor_id: String,
    #[serde(rename = "SecretID", default)]
    pub secret_id: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    policies: Vec<PolicyLink>,
}

impl NodeToken {
    pub fn policy_names(&self) -> Vec<&str> {
        self.policies.iter().map(|p| p.name.as_str()).collect()
    }
}

/// A read that answers "ACL not found" for a token that does not exist (Consul 1.8
/// does; a later one may answer 404, which is `None` already).
fn absent_if_not_found<T>(r: Result<Option<T>, ConsulError>) -> Result<Option<T>, ConsulError> {
    match r {
        Err(ConsulError::Forbidden { body, .. }) if body.contains("ACL not found") => Ok(None),
        other => other,
    }
}

/// Whether `client`'s token is one Consul knows (the management token the leader
/// creates once it leads). Checked first, so that "ACL not found" from later reads
/// is about the token read and not the reader's own.
async fn check_own_token(client: &Consul) -> Result<(), ConsulError> {
    let _: Value = client
        .get_json_optional("/v1/acl/token/self")
        .await?
        .ok_or(ConsulError::Status {
            addr: client.addr(),
            code: reqwest::StatusCode::NOT_FOUND,
            body: "no /v1/acl/token/self (are ACLs enabled?)".into(),
        })?;
    Ok(())
}

/// Waits until the leader has created `client`'s token from its config (the
/// management token): moments after it is elected.
pub async fn wait_for_own_token(
    client: &Consul,
    limit: std::time::Duration,
) -> Result<(), ConsulError> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match check_own_token(client).await {
            Err(ConsulError::Forbidden { body, .. })
                if body.contains("ACL not found") && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await
            }
            other => return other,
        }
    }
}

/// Makes the policy `name` hold `rules`, creating it when missing. Returns whether
/// anything changed.
async fn ensure_policy(
    client: &Consul,
    name: &str,
    description: &str,
    rules: &Value,
) -> Result<bool, ConsulError> {
    let rules = rules.to_string();
    let list: Vec<PolicyListEntry> = client
        .get_json_optional("/v1/acl/policies")
        .await?
        .unwrap_or_default();
    let body = |id: Option<&str>| {
        let mut b = json!({ "Name": name, "Description": description, "Rules": rules });
        if let Some(id) = id {
            b["ID"] = json!(id);
        }
        b
    };
    match list.iter().find(|p| p.name == name) {
        None => match client
            .put_json::<_, Value>("/v1/acl/policy", &body(None))
            .await
        {
            Ok(_) => Ok(true),
            // Another server made it first: it is checked on the next pass.
            Err(ConsulError::Status { body, .. }) if body.contains("already exists") => Ok(false),
            Err(e) => Err(e),
        },
        Some(p) => {
            let path = format!("/v1/acl/policy/{}", p.id);
            let current: Option<Policy> = client.get_json_optional(&path).await?;
            if current.is_some_and(|c| c.rules == rules) {
                return Ok(false);
            }
            let _: Value = client.put_json(&path, &body(Some(&p.id))).await?;
            Ok(true)
        }
    }
}

async fn delete_policy(client: &Consul, name: &str) -> Result<(), ConsulError> {
    let list: Vec<PolicyListEntry> = client
        .get_json_optional("/v1/acl/policies")
        .await?
        .unwrap_or_default();
    if let Some(p) = list.iter().find(|p| p.name == name) {
        client
            .delete_path(&format!("/v1/acl/policy/{}", p.id))
            .await?;
    }
    Ok(())
}

/// The shared policies, and the anonymous token's policy. Returns a line per change.
pub async fn ensure_policies(client: &Consul) -> Result<Vec<String>, AclError> {
    check_own_token(client).await?;
    let mut changes = Vec::new();
    for (name, description, rules) in [
        (NODE_POLICY, "arpanet: every node's token", node_rules()),
        (
            ANONYMOUS_POLICY,
            "arpanet: requests without a token (DNS)",
            anonymous_rules(),
        ),
    ] {
        if ensure_policy(client, name, description, &rules).await? {
            changes.push(format!("wrote ACL policy {name}"));
        }
    }
    let path = format!("/v1/acl/token/{ANONYMOUS_TOKEN}");
    let anonymous: Option<NodeToken> = absent_if_not_found(client.get_json_optional(&path).await)?;
    let has = anonymous
        .as_ref()
        .is_some_and(|t| t.policy_names() == [ANONYMOUS_POLICY]);
    if !has {
        let body = json!({
            "AccessorID": ANONYMOUS_TOKEN,
            "Description": "Anonymous Token (arpanet: DNS reads only)",
            "Policies": [{ "Name": ANONYMOUS_POLICY }],
        });
        let _: Value = client.put_json(&path, &body).await?;
        changes.push(format!(
            "gave the anonymous token policy {ANONYMOUS_POLICY}"
        ));
    }
    Ok(changes)
}

/// `node`'s token, read with a management token; `None` when it has none.
pub async fn read_node_token(client: &Consul, node: &str) -> Result<Option<NodeToken>, AclError> {
    check_node_name(node)?;
    check_own_token(client).await?;
    let path = format!("/v1/acl/token/{}", node_token_accessor(node));
    Ok(absent_if_not_found(client.get_json_optional(&path).await)?)
}

/// Makes `node`'s token the one with `secret`: its policy written, and a token with
/// another SecretID replaced. Returns whether anything changed.
pub async fn ensure_node_token(
    client: &Consul,
    node: &str,
    secret: &str,
) -> Result<bool, AclError> {
    check_node_name(node)?;
    check_own_token(client).await?;
    let own = own_node_policy(node);
    let changed = ensure_policy(
        client,
        &own,
        &format!("arpanet: node {node}'s own"),
        &own_node_rules(node),
    )
    .await?;
    let accessor = node_token_accessor(node);
    let path = format!("/v1/acl/token/{accessor}");
    let current: Option<NodeToken> = absent_if_not_found(client.get_json_optional(&path).await)?;
    let want = [NODE_POLICY, own.as_str()];
    match current {
        Some(t) if t.secret_id == secret && t.policy_names() == want => return Ok(changed),
        Some(t) if t.secret_id == secret => {
            // Same secret, other policies: updated in place.
            let body = json!({
                "AccessorID": accessor,
                "Description": t.description,
                "Policies": want.iter().map(|n| json!({ "Name": n })).collect::<Vec<_>>(),
            });
            let _: Value = client.put_json(&path, &body).await?;
            return Ok(true);
        }
        // A SecretID cannot change: the old token goes.
        Some(_) => client.delete_path(&path).await?,
        None => {}
    }
    let body = json!({
        "AccessorID": accessor,
        "SecretID": secret,
        "Description": format!("arpanet node {node}"),
        "Policies": want.iter().map(|n| json!({ "Name": n })).collect::<Vec<_>>(),
        "Local": false,
    });
    let _: Value = client.put_json("/v1/acl/token", &body).await?;
    Ok(true)
}

/// A new token for `node` (replacing any it had), for the join service; returns its
/// SecretID, which goes to the node's agent token file.
pub async fn create_node_token(client: &Consul, node: &str) -> Result<String, AclError> {
    let secret = random_uuid()?;
    ensure_node_token(client, node, &secret).await?;
    Ok(secret)
}

/// Deletes `node`'s token and its own policy (`arpanet node rm`); gone already is fine.
pub async fn delete_node_token(client: &Consul, node: &str) -> Result<(), AclError> {
    check_node_name(node)?;
    check_own_token(client).await?;
    let path = format!("/v1/acl/token/{}", node_token_accessor(node));
    match client.delete_path(&path).await {
        Err(ConsulError::Forbidden { body, .. }) if body.contains("ACL not found") => {}
        other => other?,
    }
    delete_policy(client, &own_node_policy(node)).await?;
    Ok(())
}

/// `arpanet boot`: the management token and this node's agent token SecretID, made
/// once (random UUIDs; a second boot keeps them). The leader creates the management
/// token from the agent's config, and this node's reconciler then makes its own token
/// with that SecretID. Returns a line per file written.
pub fn make_boot_tokens(files: &crate::paths::IdentityFiles) -> Result<Vec<String>, AclError> {
    let mut written = Vec::new();
    for path in [files.consul_management_token(), files.consul_agent_token()] {
        if super::client::read_token_file(&path)?.is_none() {
            write_token_file(&path, &random_uuid()?)?;
            written.push(format!("wrote {}", path.display()));
        }
    }
    Ok(written)
}

/// Writes a token file, 0600 (also when it replaces a wider one).
pub fn write_token_file(path: &Path, token: &str) -> Result<(), AclError> {
    crate::files::write_private(path, &format!("{token}\n")).map_err(|e| AclError::Write {
        path: path.to_path_buf(),
        reason: format!("{e:#}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule<'a>(rules: &'a Value, kind: &str, name: &str) -> Option<&'a str> {
        rules[kind][name]["policy"].as_str()
    }

    #[test]
    fn a_node_writes_arpanet_kv_but_only_reads_identity_and_nothing_else() {
        // What Consul is sent, parsed back.
        let rules: Value = serde_json::from_str(&node_rules().to_string()).unwrap();
        assert_eq!(rule(&rules, "key_prefix", "arpanet/"), Some("write"));
        assert_eq!(
            rule(&rules, "key_prefix", "arpanet/identity/"),
            Some("read")
        );
        assert_eq!(
            rule(&rules, "key_prefix", ""),
            None,
            "no KV outside arpanet/"
        );
        assert_eq!(rule(&rules, "node_prefix", ""), Some("read"));
        assert_eq!(rule(&rules, "service_prefix", ""), Some("write"));
        let kinds: Vec<&str> = rules
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(kinds, ["node_prefix", "service_prefix", "key_prefix"]);
    }

    #[test]
    fn a_node_writes_only_its_own_node_and_reads_only_its_own_agent() {
        let rules: Value = serde_json::from_str(&own_node_rules("h1").to_string()).unwrap();
        assert_eq!(rule(&rules, "node", "h1"), Some("write"));
        assert_eq!(rule(&rules, "agent", "h1"), Some("read"));
        assert_eq!(rules["node"].as_object().unwrap().len(), 1);
        assert_eq!(rules["agent"].as_object().unwrap().len(), 1);
        assert_eq!(rules.as_object().unwrap().len(), 2);
        // A name with quotes stays one name (it is a JSON key, not HCL text).
        let odd = own_node_rules("a\"b");
        assert_eq!(rule(&odd, "node", "a\"b"), Some("write"));
    }

    #[test]
    fn anonymous_reads_what_dns_needs_only() {
        let rules: Value = serde_json::from_str(&anonymous_rules().to_string()).unwrap();
        assert_eq!(rule(&rules, "node_prefix", ""), Some("read"));
        assert_eq!(rule(&rules, "service_prefix", ""), Some("read"));
        assert_eq!(rules.as_object().unwrap().len(), 2);
    }

    #[test]
    fn per_node_policy_names_are_valid_and_distinct() {
        let valid = |n: &str| {
            (1..=128).contains(&n.len())
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        assert_eq!(own_node_policy("h1"), "arpanet-node-h1");
        let names = ["a.b", "a_b", "a-b", "web1.example.com", &"x".repeat(300)];
        let policies: Vec<String> = names.iter().map(|n| own_node_policy(n)).collect();
        for p in &policies {
            assert!(valid(p), "{p}");
        }
        let mut unique = policies.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), policies.len(), "{policies:?}");
    }

    #[test]
    fn accessors_are_uuids_fixed_per_name_and_secrets_are_random() {
        let a = node_token_accessor("h1");
        assert_eq!(a, node_token_accessor("h1"));
        assert_ne!(a, node_token_accessor("h2"));
        let shape = |u: &str| {
            let parts: Vec<usize> = u.split('-').map(str::len).collect();
            parts == [8, 4, 4, 4, 12] && u.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
        };
        assert!(shape(&a), "{a}");
        assert_ne!(a, ANONYMOUS_TOKEN);
        let (s1, s2) = (random_uuid().unwrap(), random_uuid().unwrap());
        assert!(shape(&s1) && s1.as_bytes()[14] == b'4', "{s1}");
        assert_ne!(s1, s2);
    }

    #[test]
    fn token_files_are_private_and_read_back_as_one_token() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity/consul-agent.token");
        let read = |p: &Path| crate::consul::client::read_token_file(p);
        assert_eq!(read(&path).unwrap(), None, "missing: no token");
        write_token_file(&path, "abc-123").unwrap();
        assert_eq!(read(&path).unwrap().as_deref(), Some("abc-123"));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        std::fs::write(&path, "two tokens\n").unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(
            e.contains("consul-agent.token") && e.contains("one token"),
            "{e}"
        );
    }

    #[test]
    fn bad_node_names_are_refused() {
        assert!(check_node_name("").is_err());
        assert!(check_node_name("a\nb").is_err());
        assert!(check_node_name("h1").is_ok());
    }
}
