use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::Args;

use crate::addressing::NodeAddress;
use crate::config::{Config, DEFAULT_CONFIG_PATH};
use crate::identity::LocalIdentity;
use crate::paths::IdentityFiles;

const VARS: [&str; 3] = ["DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"];

/// Point `docker` at a node's Docker API: `eval "$(arpanet docker-env 0.2)"`.
///
/// Prints DOCKER_HOST (tcp://10.254.a.b:2376), DOCKER_TLS_VERIFY and DOCKER_CERT_PATH
/// (this node's identity directory) as `export` lines, like docker-machine's `env`.
/// The node's key is readable by root only, so this is for root.
#[derive(Debug, Args)]
pub struct DockerEnv {
    /// The node, by arpanet address (`0.2`).
    #[arg(required_unless_present = "unset")]
    pub node: Option<NodeAddress>,
    /// Print the three variables as a JSON object instead.
    #[arg(long, conflicts_with = "unset")]
    pub json: bool,
    /// Print the commands that unset them.
    #[arg(long)]
    pub unset: bool,
}

impl DockerEnv {
    pub fn exec(&self, config_path: &Path) -> anyhow::Result<()> {
        let again = |args: &str| {
            let config = if config_path == Path::new(DEFAULT_CONFIG_PATH) {
                String::new()
            } else {
                format!(" --config {}", quote(&config_path.display().to_string()))
            };
            format!(
                "# Run this command to configure your shell:\n# eval \"$(arpanet{config} docker-env {args})\"\n"
            )
        };
        let Some(node) = self.node.filter(|_| !self.unset) else {
            print!("unset {}\n{}", VARS.join(" "), again("--unset"));
            return Ok(());
        };
        let config = Config::load(config_path)?;
        let files = IdentityFiles::new(&config.cluster.identity_dir);
        let dir = usable_identity(&files)?;
        let me = LocalIdentity::load(&files)?;
        if me.info.identity.role != crate::identity::Role::Server {
            bail!(
                "docker-env: this node is a client, and Docker's API answers servers' certificates only (a client taken over must not be root on every node); run it on a server"
            );
        }
        let values = [
            format!("tcp://{}:{}", node.docker_api_ip(), config.docker.api_port),
            "1".to_string(),
            dir.display().to_string(),
        ];
        if self.json {
            let object: serde_json::Map<String, serde_json::Value> = VARS
                .iter()
                .zip(&values)
                .map(|(k, v)| (k.to_string(), v.clone().into()))
                .collect();
            println!("{}", serde_json::to_string_pretty(&object)?);
        } else {
            for (k, v) in VARS.iter().zip(&values) {
                println!("export {k}={}", quote(v));
            }
            print!("{}", again(&node.to_string()));
        }
        Ok(())
    }
}

/// The identity directory, absolute, once this node's identity is there and its key
/// is readable by the caller: `docker` would fail later and less clearly.
fn usable_identity(files: &IdentityFiles) -> anyhow::Result<PathBuf> {
    for path in [files.ca_cert(), files.node_cert(), files.node_key()] {
        if !path.exists() {
            bail!(
                "{} does not exist: this node has no cluster identity, so it has no certificate for Docker's API",
                path.display()
            );
        }
    }
    let key = files.node_key();
    if let Err(e) = std::fs::File::open(&key) {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            bail!(
                "{} is readable by root only: run docker-env, and docker, as root",
                key.display()
            );
        }
        bail!("{}: {e}", key.display());
    }
    LocalIdentity::load(files)?;
    Ok(std::path::absolute(&files.dir)?)
}

/// `s` in double quotes, as a POSIX shell reads it back.
fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        if matches!(c, '"' | '\\' | '$' | '`') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_quoted_for_the_shell() {
        assert_eq!(quote("/etc/arpanet/identity"), "\"/etc/arpanet/identity\"");
        assert_eq!(quote(r#"/a "b" $c`d`\"#), r#""/a \"b\" \$c\`d\`\\""#);
    }

    #[test]
    fn a_missing_identity_is_one_line_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let files = IdentityFiles::new(&dir.path().join("identity"));
        let e = usable_identity(&files).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{} does not exist", files.ca_cert().display()))
                && !e.contains('\n'),
            "{e}"
        );
    }
}
