//! arpanet's keys in /etc/docker/daemon.json. Every other key is the user's and stays
//! as it is, in its order. The user's own values of arpanet's keys are saved the first
//! time they are replaced, so uninstall puts them back.
//!
//! dockerd listens on its unix socket only. Docker's API on `10.254.a.b:2376` is
//! arpanetd's relay ([`super::api_relay`]), which holds the TLS: dockerd has no
//! revocation list and reads its certificate only when it starts.

use std::path::Path;

use anyhow::{Context, bail};
use serde_json::{Map, Value};

use crate::config::{Config, Diagnostic};
use crate::identity::{IdentityError, LocalIdentity};
use crate::paths::IdentityFiles;

/// The keys arpanet owns. It sets none of the TLS keys any more; they stay owned so
/// that values an older arpanet wrote are taken out, and uninstall restores the user's.
pub const MANAGED_KEYS: [&str; 9] = [
    "bip",
    "dns",
    "dns-search",
    "hosts",
    "tls",
    "tlsverify",
    "tlscacert",
    "tlscert",
    "tlskey",
];

/// This node's identity files, if they hold a usable identity; else why not (one
/// line naming the file).
pub fn tls_identity(config: &Config) -> Result<IdentityFiles, IdentityError> {
    let files = IdentityFiles::new(&config.cluster.identity_dir);
    LocalIdentity::load(&files).map(|_| files)
}

/// What arpanet's keys must say for this node.
pub fn desired(config: &Config) -> Map<String, Value> {
    let a = config.node.address;
    let mut m = Map::new();
    m.insert("bip".into(), format!("{}/24", a.bridge_ip()).into());
    // Consul answers DNS on the bridge address; containers search the service domain.
    m.insert(
        "dns".into(),
        Value::Array(vec![a.bridge_ip().to_string().into()]),
    );
    m.insert(
        "dns-search".into(),
        Value::Array(vec!["service.consul".into()]),
    );
    m.insert(
        "hosts".into(),
        Value::Array(vec![Value::from(format!(
            "unix://{}",
            config.docker.socket.display()
        ))]),
    );
    m
}

/// Parses daemon.json; a broken file is reported with its position and never rewritten.
pub fn parse(path: &Path, text: &str) -> Result<Map<String, Value>, Diagnostic> {
    if text.trim().is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Diagnostic {
            file: path.to_path_buf(),
            position: Some((1, 1)),
            message: "daemon.json must be a JSON object; arpanet leaves it unchanged".into(),
        }),
        Err(e) => {
            // serde_json appends " at line L column C", which the position already says.
            let text = e.to_string();
            let message = text.split(" at line ").next().unwrap_or(&text);
            Err(Diagnostic {
                file: path.to_path_buf(),
                position: Some((e.line(), e.column().max(1))),
                message: format!("{message}; arpanet leaves the file unchanged until it is fixed"),
            })
        }
    }
}

/// `current` with arpanet's keys set, and those it does not set taken out; `None`
/// when nothing would change.
pub fn merged(
    current: &Map<String, Value>,
    desired: &Map<String, Value>,
) -> Option<Map<String, Value>> {
    let stale: Vec<&str> = MANAGED_KEYS
        .into_iter()
        .filter(|k| !desired.contains_key(*k) && current.contains_key(*k))
        .collect();
    if stale.is_empty() && desired.iter().all(|(k, v)| current.get(k) == Some(v)) {
        return None;
    }
    let mut out = current.clone();
    for k in stale {
        out.shift_remove(k);
    }
    for (k, v) in desired {
        out.insert(k.clone(), v.clone());
    }
    Some(out)
}

/// In the saved originals, the keys they cover. A file from before the TLS keys has
/// none and covers [`FIRST_KEYS`].
const COVERS: &str = "arpanet-covers";
const FIRST_KEYS: [&str; 4] = ["bip", "dns", "dns-search", "hosts"];

/// The user's values of arpanet's keys before arpanet first wrote them (absent = unset).
pub fn originals(current: &Map<String, Value>) -> Map<String, Value> {
    let mut out: Map<String, Value> = MANAGED_KEYS
        .iter()
        .filter_map(|k| current.get(*k).map(|v| ((*k).to_string(), v.clone())))
        .collect();
    out.insert(COVERS.into(), MANAGED_KEYS.to_vec().into());
    out
}

/// Originals saved by an older arpanet, extended to the keys it did not own yet: their
/// values in `current` are the user's, since that arpanet never wrote them. `None`
/// when they cover every key already.
pub fn extended(
    saved: &Map<String, Value>,
    current: &Map<String, Value>,
) -> Option<Map<String, Value>> {
    let covered: Vec<&str> = match saved.get(COVERS) {
        Some(Value::Array(keys)) => keys.iter().filter_map(Value::as_str).collect(),
        _ => FIRST_KEYS.to_vec(),
    };
    let new: Vec<&str> = MANAGED_KEYS
        .into_iter()
        .filter(|k| !covered.contains(k))
        .collect();
    if new.is_empty() {
        return None;
    }
    let mut out = saved.clone();
    for k in new {
        if let Some(v) = current.get(k) {
            out.insert(k.to_string(), v.clone());
        }
    }
    out.insert(COVERS.into(), MANAGED_KEYS.to_vec().into());
    Some(out)
}

/// The saved originals, if arpanet has written daemon.json before.
fn read_saved(saved: &Path) -> anyhow::Result<Option<Map<String, Value>>> {
    match std::fs::read_to_string(saved) {
        Ok(text) => match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(m)) => Ok(Some(m)),
            _ => bail!(
                "{} is damaged; fix or delete it to restore daemon.json",
                saved.display()
            ),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", saved.display())),
    }
}

/// `current` with arpanet's keys taken out and the user's saved values put back.
pub fn restored(
    current: &Map<String, Value>,
    originals: &Map<String, Value>,
) -> Map<String, Value> {
    let mut out = current.clone();
    for k in MANAGED_KEYS {
        match originals.get(k) {
            Some(v) => {
                out.insert(k.to_string(), v.clone());
            }
            None => {
                out.shift_remove(k);
            }
        }
    }
    out
}

fn read(path: &Path) -> anyhow::Result<Map<String, Value>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(parse(path, &text)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Map::new()),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

fn write_atomically(path: &Path, value: &Map<String, Value>) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    crate::files::write_atomically(path, &text)
}

/// What [`apply`] did.
#[derive(Debug)]
pub struct Applied {
    /// Whether the file changed (dockerd then needs a restart).
    pub changed: bool,
    /// Why the Docker API has no TCP listener: this node has no usable identity.
    pub no_tls: Option<IdentityError>,
}

/// Brings daemon.json to the plan.
pub fn apply(config: &Config) -> anyhow::Result<Applied> {
    let no_tls = tls_identity(config).err();
    let path = &config.docker.daemon_json;
    let current = read(path)?;
    let Some(new) = merged(&current, &desired(config)) else {
        return Ok(Applied {
            changed: false,
            no_tls,
        });
    };
    let saved = crate::paths::docker_daemon_json_originals(&config.paths);
    match read_saved(&saved)? {
        None => write_atomically(&saved, &originals(&current))?,
        Some(old) => {
            if let Some(more) = extended(&old, &current) {
                write_atomically(&saved, &more)?;
            }
        }
    }
    write_atomically(path, &new)?;
    Ok(Applied {
        changed: true,
        no_tls,
    })
}

/// Takes arpanet's keys out of daemon.json again. Returns whether the file changed.
pub fn remove(config: &Config) -> anyhow::Result<bool> {
    let path = &config.docker.daemon_json;
    let saved = crate::paths::docker_daemon_json_originals(&config.paths);
    let originals = read_saved(&saved)?.unwrap_or_default();
    let current = read(path)?;
    let new = restored(&current, &originals);
    let changed = new != current;
    if changed {
        write_atomically(path, &new)?;
    }
    let _ = std::fs::remove_file(&saved);
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(
            Path::new("t.toml"),
            "[node]\naddress = \"0.2\"\nrole = \"boot\"\n",
        )
        .unwrap()
    }

    fn obj(text: &str) -> Map<String, Value> {
        parse(Path::new("daemon.json"), text).unwrap()
    }

    /// A config whose identity_dir holds an identity for 0.2 from a fresh CA.
    fn enrolled(dir: &Path) -> Config {
        let mut c = config();
        c.cluster.identity_dir = dir.join("identity");
        let ca = crate::identity::Ca::generate("apples").unwrap();
        let id = crate::identity::NodeIdentity {
            cluster: "apples".into(),
            address: c.node.address,
            role: crate::identity::Role::Server,
        };
        crate::identity::enroll_locally(&ca, &IdentityFiles::new(&c.cluster.identity_dir), &id)
            .unwrap();
        c
    }

    /// What an arpanet that had dockerd terminate TLS wrote for 0.2.
    fn with_dockerd_tls(current: &Map<String, Value>) -> Map<String, Value> {
        let mut m = current.clone();
        let old = obj(r#"{
            "bip": "10.0.2.1/24", "dns": ["10.0.2.1"], "dns-search": ["service.consul"],
            "hosts": ["unix:///var/run/docker.sock", "tcp://10.254.0.2:2376"],
            "tls": true, "tlsverify": true,
            "tlscacert": "/etc/arpanet/identity/ca.pem",
            "tlscert": "/etc/arpanet/identity/cert.pem",
            "tlskey": "/etc/arpanet/identity/key.pem"}"#);
        for (k, v) in old {
            m.insert(k, v);
        }
        m
    }

    #[test]
    fn desired_keys_follow_the_plan() {
        let d = desired(&config());
        assert_eq!(d["bip"], "10.0.2.1/24");
        assert_eq!(d["dns"], serde_json::json!(["10.0.2.1"]));
        assert_eq!(d["dns-search"], serde_json::json!(["service.consul"]));
        // arpanetd's relay holds 2376 and the TLS; dockerd has its unix socket only.
        assert_eq!(
            d["hosts"],
            serde_json::json!(["unix:///var/run/docker.sock"])
        );
        for k in ["tls", "tlsverify", "tlscacert", "tlscert", "tlskey"] {
            assert!(!d.contains_key(k), "{k}");
            assert!(MANAGED_KEYS.contains(&k), "{k} stays owned");
        }
        let keys: Vec<&str> = d.keys().map(String::as_str).collect();
        assert!(keys.iter().all(|k| MANAGED_KEYS.contains(k)));
    }

    #[test]
    fn dockerds_own_tls_keys_from_an_older_arpanet_are_taken_out() {
        let before = with_dockerd_tls(&obj(r#"{"log-driver": "local"}"#));
        let after = merged(&before, &desired(&config())).unwrap();
        assert_eq!(
            serde_json::to_value(&after).unwrap(),
            serde_json::json!({
                "log-driver": "local",
                "bip": "10.0.2.1/24",
                "dns": ["10.0.2.1"],
                "dns-search": ["service.consul"],
                "hosts": ["unix:///var/run/docker.sock"],
            })
        );
        assert_eq!(
            merged(&after, &desired(&config())),
            None,
            "a second pass changes nothing"
        );
    }

    #[test]
    fn user_keys_and_their_order_survive() {
        let current = obj(
            r#"{"log-driver": "local", "dns": ["8.8.8.8"], "tlsverify": false, "debug": true}"#,
        );
        let d = desired(&config());
        let new = merged(&current, &d).unwrap();
        let keys: Vec<&str> = new.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["log-driver", "dns", "debug", "bip", "dns-search", "hosts"]
        );
        assert_eq!(new["log-driver"], "local");
        assert_eq!(new["debug"], true);
        assert_eq!(merged(&new, &d), None, "a second pass changes nothing");
    }

    #[test]
    fn uninstall_restores_the_users_values() {
        let before = obj(r#"{"log-driver": "local", "dns": ["8.8.8.8"], "tls": false}"#);
        let saved = originals(&before);
        let after = merged(&before, &desired(&config())).unwrap();
        assert!(!after.contains_key("tls"));
        assert_eq!(restored(&after, &saved), before);
        // Also from a file an older arpanet wrote with dockerd's TLS keys.
        let older = with_dockerd_tls(&before);
        assert_eq!(restored(&older, &saved), before);
    }

    #[test]
    fn originals_saved_before_the_tls_keys_take_the_users_tls_keys_in() {
        // The user's own TLS setup, and what an arpanet without TLS keys saved of it.
        let user = obj(r#"{"bip": "172.30.0.1/16", "tlsverify": true, "tlscert": "/mine.pem"}"#);
        let old_saved = obj(r#"{"bip": "172.30.0.1/16"}"#);
        // What that arpanet wrote: its four keys, the user's others kept.
        let old_arpanet = obj(
            r#"{"bip": "10.0.2.1/24", "tlsverify": true, "tlscert": "/mine.pem",
                "dns": ["10.0.2.1"], "dns-search": ["service.consul"], "hosts": []}"#,
        );
        let saved = extended(&old_saved, &old_arpanet).unwrap();
        assert_eq!(saved["tlsverify"], true);
        assert_eq!(saved["tlscert"], "/mine.pem");
        assert_eq!(extended(&saved, &old_arpanet), None, "once only");
        assert_eq!(extended(&originals(&user), &user), None);
        let now = merged(&old_arpanet, &desired(&config())).unwrap();
        assert_eq!(restored(&now, &saved), user);
    }

    #[test]
    fn broken_json_is_reported_with_position() {
        let err = parse(
            Path::new("/etc/docker/daemon.json"),
            "{\n  \"debug\": true,,\n}",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/docker/daemon.json:2:17: key must be a string; arpanet leaves the file unchanged until it is fixed"
        );
        assert!(parse(Path::new("d.json"), "[1]").is_err());
        assert!(parse(Path::new("d.json"), "").unwrap().is_empty());
    }

    #[test]
    fn apply_and_remove_round_trip_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = enrolled(dir.path());
        c.docker.daemon_json = dir.path().join("docker/daemon.json");
        c.paths.state_dir = dir.path().join("state");
        std::fs::create_dir_all(dir.path().join("docker")).unwrap();
        let original = "{\n  \"log-driver\": \"local\"\n}\n";
        std::fs::write(&c.docker.daemon_json, original).unwrap();
        let first = apply(&c).unwrap();
        assert!(first.changed && first.no_tls.is_none(), "{first:?}");
        assert!(!apply(&c).unwrap().changed, "second apply is a no-op");
        let text = std::fs::read_to_string(&c.docker.daemon_json).unwrap();
        assert!(
            text.contains("\"log-driver\": \"local\"")
                && !text.contains("tcp://")
                && !text.contains("tls"),
            "{text}"
        );
        assert!(remove(&c).unwrap());
        assert_eq!(
            std::fs::read_to_string(&c.docker.daemon_json).unwrap(),
            original
        );
    }

    #[test]
    fn apply_without_an_identity_says_which_file_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config();
        c.cluster.identity_dir = dir.path().join("identity");
        c.docker.daemon_json = dir.path().join("daemon.json");
        c.paths.state_dir = dir.path().join("state");
        let applied = apply(&c).unwrap();
        assert!(applied.changed);
        let why = applied.no_tls.expect("no identity").to_string();
        assert!(
            why.starts_with(&format!(
                "{} does not exist",
                dir.path().join("identity/ca.pem").display()
            )) && !why.contains('\n'),
            "{why}"
        );
        let text = std::fs::read_to_string(&c.docker.daemon_json).unwrap();
        assert!(!text.contains("tcp://") && !text.contains("tls"), "{text}");
        // The identity arrives: daemon.json stays as it is (the relay, not dockerd,
        // opens 2376), and the reason is gone.
        let enrolled = enrolled(dir.path());
        c.cluster.identity_dir = enrolled.cluster.identity_dir;
        let applied = apply(&c).unwrap();
        assert!(!applied.changed && applied.no_tls.is_none(), "{applied:?}");
    }

    #[test]
    fn broken_file_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config();
        c.docker.daemon_json = dir.path().join("daemon.json");
        c.paths.state_dir = dir.path().join("state");
        std::fs::write(&c.docker.daemon_json, "{ not json").unwrap();
        let err = apply(&c).unwrap_err().to_string();
        assert!(err.contains("daemon.json:1:3"), "{err}");
        assert_eq!(
            std::fs::read_to_string(&c.docker.daemon_json).unwrap(),
            "{ not json"
        );
    }
}
