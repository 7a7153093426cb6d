//! arpanet's keys in /etc/docker/daemon.json. Every other key is the user's and stays
//! as it is, in its order. The user's own values of arpanet's keys are saved the first
//! time they are replaced, so uninstall puts them back.

use std::path::Path;

use anyhow::{Context, bail};
use serde_json::{Map, Value};

use crate::config::{Config, Diagnostic};

/// The keys arpanet owns.
pub const MANAGED_KEYS: [&str; 4] = ["bip", "dns", "dns-search", "hosts"];

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
        Value::Array(vec![
            format!("unix://{}", config.docker.socket.display()).into(),
            format!("tcp://{}:{}", a.docker_api_ip(), config.docker.api_port).into(),
        ]),
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

/// `current` with arpanet's keys set; `None` when nothing would change.
pub fn merged(
    current: &Map<String, Value>,
    desired: &Map<String, Value>,
) -> Option<Map<String, Value>> {
    if desired.iter().all(|(k, v)| current.get(k) == Some(v)) {
        return None;
    }
    let mut out = current.clone();
    for (k, v) in desired {
        out.insert(k.clone(), v.clone());
    }
    Some(out)
}

/// The user's values of arpanet's keys before arpanet first wrote them (absent = unset).
pub fn originals(current: &Map<String, Value>) -> Map<String, Value> {
    MANAGED_KEYS
        .iter()
        .filter_map(|k| current.get(*k).map(|v| ((*k).to_string(), v.clone())))
        .collect()
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

/// Brings daemon.json to the plan. Returns whether the file changed (dockerd then
/// needs a restart).
pub fn apply(config: &Config) -> anyhow::Result<bool> {
    let path = &config.docker.daemon_json;
    let current = read(path)?;
    let Some(new) = merged(&current, &desired(config)) else {
        return Ok(false);
    };
    let saved = crate::paths::docker_daemon_json_originals(&config.paths);
    if !saved.exists() {
        write_atomically(&saved, &originals(&current))?;
    }
    write_atomically(path, &new)?;
    Ok(true)
}

/// Takes arpanet's keys out of daemon.json again. Returns whether the file changed.
pub fn remove(config: &Config) -> anyhow::Result<bool> {
    let path = &config.docker.daemon_json;
    let saved = crate::paths::docker_daemon_json_originals(&config.paths);
    let originals = match std::fs::read_to_string(&saved) {
        Ok(text) => match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(m)) => m,
            _ => bail!(
                "{} is damaged; fix or delete it to restore daemon.json",
                saved.display()
            ),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Map::new(),
        Err(e) => return Err(e).with_context(|| format!("read {}", saved.display())),
    };
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

    #[test]
    fn desired_keys_follow_the_plan() {
        let d = desired(&config());
        assert_eq!(d["bip"], "10.0.2.1/24");
        assert_eq!(d["dns"], serde_json::json!(["10.0.2.1"]));
        assert_eq!(d["dns-search"], serde_json::json!(["service.consul"]));
        assert_eq!(
            d["hosts"],
            serde_json::json!(["unix:///var/run/docker.sock", "tcp://10.254.0.2:2375"])
        );
    }

    #[test]
    fn user_keys_and_their_order_survive() {
        let current = obj(r#"{"log-driver": "local", "dns": ["8.8.8.8"], "debug": true}"#);
        let new = merged(&current, &desired(&config())).unwrap();
        let keys: Vec<&str> = new.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["log-driver", "dns", "debug", "bip", "dns-search", "hosts"]
        );
        assert_eq!(new["log-driver"], "local");
        assert_eq!(
            merged(&new, &desired(&config())),
            None,
            "a second pass changes nothing"
        );
    }

    #[test]
    fn uninstall_restores_the_users_values() {
        let before = obj(r#"{"log-driver": "local", "dns": ["8.8.8.8"]}"#);
        let saved = originals(&before);
        let after = merged(&before, &desired(&config())).unwrap();
        assert_eq!(restored(&after, &saved), before);
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
        let mut c = config();
        c.docker.daemon_json = dir.path().join("docker/daemon.json");
        c.paths.state_dir = dir.path().join("state");
        std::fs::create_dir_all(dir.path().join("docker")).unwrap();
        let original = "{\n  \"log-driver\": \"local\"\n}\n";
        std::fs::write(&c.docker.daemon_json, original).unwrap();
        assert!(apply(&c).unwrap());
        assert!(!apply(&c).unwrap(), "second apply is a no-op");
        let text = std::fs::read_to_string(&c.docker.daemon_json).unwrap();
        assert!(
            text.contains("\"log-driver\": \"local\"") && text.contains("tcp://10.254.0.2:2375"),
            "{text}"
        );
        assert!(remove(&c).unwrap());
        assert_eq!(
            std::fs::read_to_string(&c.docker.daemon_json).unwrap(),
            original
        );
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
