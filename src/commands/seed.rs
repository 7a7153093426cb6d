//! `arpanet boot|server|client ADDRESS`: set a host up in one command, as the old
//! arpanet's seed did. Writes arpanet.toml (keeping every other edit in it), creates
//! or installs the cluster secret, then enables and starts arpanetd over D-Bus.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use toml_edit::{Array, DocumentMut, InlineTable, Item, Table, value};

use crate::addressing::NodeAddress;
use crate::config::{Config, JoinPeer, Role};
use crate::consul::secret;
use crate::paths;

#[derive(Debug, Args)]
pub struct Seed {
    /// This host's arpanet address, `a.b`.
    pub address: NodeAddress,
    /// The cluster's name (Consul's datacenter).
    #[arg(long)]
    pub cluster: Option<String>,
    /// A node to join, as ADDRESS@UNDERLAY_IP (repeatable), e.g. 0.1@192.168.8.120.
    #[arg(long, value_parser = parse_join)]
    pub join: Vec<JoinPeer>,
    /// How many Consul servers form the cluster before it elects a leader.
    #[arg(long)]
    pub expect: Option<u32>,
    /// The interface other hosts reach this one on (default: the default route's).
    #[arg(long)]
    pub underlay_interface: Option<String>,
    /// The cluster secret the boot node printed (not on the boot node); `-` reads it
    /// from stdin, which keeps it out of `ps` and the shell's history.
    #[arg(long, value_name = "SECRET", conflicts_with = "secret_file")]
    pub secret: Option<String>,
    /// Read the cluster secret from this file, e.g. a copy of the boot node's.
    #[arg(long, value_name = "PATH")]
    pub secret_file: Option<PathBuf>,
    /// This node's Consul ACL token (not on the boot node, which makes its own): a file
    /// holding the SecretID `arpanet consul-token NODE` printed on a server.
    #[arg(long, value_name = "PATH")]
    pub consul_token_file: Option<PathBuf>,
    /// Only write the config and the secret; do not enable or start arpanetd.
    #[arg(long)]
    pub no_start: bool,
}

fn parse_join(s: &str) -> Result<JoinPeer, String> {
    let (address, ip) = s
        .split_once('@')
        .ok_or_else(|| format!("`{s}` is not ADDRESS@IP, e.g. 0.1@192.168.8.120"))?;
    Ok(JoinPeer {
        address: address.parse().map_err(|e| format!("`{address}`: {e}"))?,
        ip: ip.parse::<Ipv4Addr>().map_err(|e| format!("`{ip}`: {e}"))?,
    })
}

impl Seed {
    pub async fn exec(&self, config_path: &Path, role: Role) -> anyhow::Result<()> {
        if role != Role::Boot && self.join.is_empty() {
            bail!(
                "--join: a {role} joins the cluster through a node that is in it, e.g. --join 0.1@192.168.8.120"
            );
        }
        if role == Role::Boot && (self.secret.is_some() || self.secret_file.is_some()) {
            let flag = if self.secret.is_some() {
                "--secret"
            } else {
                "--secret-file"
            };
            bail!("{flag}: the boot node creates the cluster's secret; give it to the others");
        }
        // Before anything is written: a weak secret changes nothing.
        let given = super::secret::from_flags(
            "--secret",
            self.secret.as_deref(),
            "--secret-file",
            self.secret_file.as_deref(),
        )?;
        let existing = match std::fs::read_to_string(config_path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("read {}", config_path.display())),
        };
        let text = self.render(existing.as_deref(), role, config_path)?;
        // The result must load, or nothing is written.
        let config = Config::parse(config_path, &text)?;
        if existing.as_deref() != Some(text.as_str()) {
            crate::files::write_atomically(config_path, &text)?;
            println!("wrote {}", config_path.display());
        }

        let secret_file = &config.cluster.secret_file;
        match (&given, role) {
            (Some(s), _) => {
                let same = secret::read(secret_file).is_ok_and(|old| &old == s);
                // Written even when the same, so a file left world-readable is 0600 now.
                secret::write(secret_file, s, true)?;
                if !same {
                    println!("installed the cluster secret in {}", secret_file.display());
                }
            }
            (None, Role::Boot) => {
                // An existing secret is the cluster's: a weak one is reported, not replaced.
                let value = if secret_file.exists() {
                    secret::read(secret_file)?
                } else {
                    let v = secret::generate()?;
                    secret::write(secret_file, &v, false)?;
                    v
                };
                println!(
                    "the cluster secret is in {}; on the other hosts run:\n  arpanet server|client ADDRESS --cluster {} --join {}@THIS_HOST_IP --secret {value}\n(`--secret -` reads it from stdin and `--secret-file PATH` from a copy of the file, keeping it out of `ps` and shell history)",
                    secret_file.display(),
                    config.cluster.name,
                    self.address
                );
            }
            (None, _) => {
                if !secret_file.exists() {
                    bail!(
                        "--secret: this node needs the cluster secret that `arpanet boot` printed ({} has none); give it with --secret SECRET, --secret - (stdin) or --secret-file PATH",
                        secret_file.display()
                    );
                }
                secret::read(secret_file)?;
            }
        }

        self.install_consul_tokens(&config, role)?;

        if self.no_start {
            return Ok(());
        }
        let systemd = crate::systemd::Systemd::connect().await?;
        systemd.enable(paths::ARPANETD_UNIT).await?;
        // A running arpanetd re-reads the new config; a stopped one starts with it.
        if systemd.active_state(paths::ARPANETD_UNIT).await? == "active" {
            systemd.reload_unit(paths::ARPANETD_UNIT).await?;
        } else {
            systemd.start(paths::ARPANETD_UNIT).await?;
        }
        // Image sync starts on its first request and exits when idle.
        let sync = paths::SYNC_SOCKET_UNIT;
        systemd.enable(sync).await?;
        systemd.start(sync).await?;
        println!(
            "arpanetd is enabled and running as node {} ({role}); `arpanet status` shows its state",
            self.address
        );
        Ok(())
    }

    /// Consul's ACL tokens: the boot node makes the management token and its own; a
    /// joiner installs the one it was given. A joiner without one gets a warning: its
    /// agent cannot register it until it has one.
    fn install_consul_tokens(&self, config: &Config, role: Role) -> anyhow::Result<()> {
        use crate::consul::{acl, client::read_token_file};
        let files = paths::IdentityFiles::new(&config.cluster.identity_dir);
        match (&self.consul_token_file, role) {
            (Some(_), Role::Boot) => {
                bail!("--consul-token-file: the boot node makes its own Consul tokens")
            }
            (None, Role::Boot) => {
                for line in acl::make_boot_tokens(&files)? {
                    println!("{line}");
                }
            }
            (Some(from), _) => {
                let token = read_token_file(from)?.with_context(|| {
                    format!("--consul-token-file: {} does not exist", from.display())
                })?;
                let to = files.consul_agent_token();
                if read_token_file(&to)?.as_deref() != Some(token.as_str()) {
                    acl::write_token_file(&to, &token)?;
                    println!("installed this node's Consul token in {}", to.display());
                }
            }
            (None, _) => {
                if read_token_file(&files.consul_agent_token())?.is_none() {
                    eprintln!(
                        "warning: no Consul token in {}: the cluster's Consul refuses this node until it has one (`arpanet consul-token {}` on the boot node prints it; give it with --consul-token-file)",
                        files.consul_agent_token().display(),
                        config.node_name()
                    );
                }
            }
        }
        Ok(())
    }

    /// The config with this command's settings, every other line as it was.
    pub fn render(
        &self,
        existing: Option<&str>,
        role: Role,
        path: &Path,
    ) -> anyhow::Result<String> {
        let mut doc: DocumentMut = match existing {
            Some(text) => text
                .parse()
                .with_context(|| format!("{}: not TOML; fix or remove it first", path.display()))?,
            None => DocumentMut::new(),
        };
        let node = table(&mut doc, "node");
        node["address"] = value(self.address.to_string());
        node["role"] = value(role.to_string());
        if !self.join.is_empty() {
            let mut peers = Array::new();
            for p in &self.join {
                let mut t = InlineTable::new();
                t.insert("address", p.address.to_string().into());
                t.insert("ip", p.ip.to_string().into());
                peers.push(t);
            }
            node["join"] = value(peers);
        }
        if let Some(interface) = &self.underlay_interface {
            node.remove("underlay_ip");
            node["underlay_interface"] = value(interface.clone());
        }
        if self.cluster.is_some() || self.expect.is_some() {
            let cluster = table(&mut doc, "cluster");
            if let Some(name) = &self.cluster {
                cluster["name"] = value(name.clone());
            }
            if let Some(expect) = self.expect {
                cluster["expect"] = value(i64::from(expect));
            }
        }
        Ok(doc.to_string())
    }
}

fn table<'a>(doc: &'a mut DocumentMut, name: &str) -> &'a mut Table {
    if !doc.contains_table(name) {
        doc.insert(name, Item::Table(Table::new()));
    }
    doc[name].as_table_mut().expect("just made a table")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(args: &[&str]) -> Seed {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            seed: Seed,
        }
        let mut argv = vec!["arpanet"];
        argv.extend_from_slice(args);
        Cli::parse_from(argv).seed
    }

    #[test]
    fn a_new_config_names_the_node_its_role_and_peers() {
        let s = seed(&["0.2", "--join", "0.1@192.168.8.120", "--cluster", "apples"]);
        let text = s.render(None, Role::Server, Path::new("a.toml")).unwrap();
        let c = Config::parse(Path::new("a.toml"), &text).unwrap();
        assert_eq!(c.node.address.to_string(), "0.2");
        assert_eq!(c.node.role, Role::Server);
        assert_eq!(c.node.join[0].ip, Ipv4Addr::new(192, 168, 8, 120));
        assert_eq!(c.cluster.name, "apples");
    }

    #[test]
    fn the_users_edits_and_comments_stay() {
        let before = "# my cluster\n[node]\naddress = \"0.9\"\nrole = \"client\"\nname = \"web1\" # keep\njoin = [{ address = \"0.1\", ip = \"10.9.9.9\" }]\n\n[api]\nport = 7200\n";
        let s = seed(&["0.3", "--join", "0.1@192.168.8.120"]);
        let text = s
            .render(Some(before), Role::Client, Path::new("a.toml"))
            .unwrap();
        assert!(text.starts_with("# my cluster\n"), "{text}");
        assert!(text.contains("name = \"web1\" # keep"), "{text}");
        assert!(text.contains("[api]\nport = 7200"), "{text}");
        let c = Config::parse(Path::new("a.toml"), &text).unwrap();
        assert_eq!(c.node.address.to_string(), "0.3");
        assert_eq!(c.node.join.len(), 1);
        assert_eq!(c.node.join[0].ip, Ipv4Addr::new(192, 168, 8, 120));
        // Running it again changes nothing.
        assert_eq!(
            s.render(Some(&text), Role::Client, Path::new("a.toml"))
                .unwrap(),
            text
        );
    }

    #[test]
    fn a_join_that_is_not_address_at_ip_is_refused() {
        assert!(parse_join("0.1").is_err());
        assert!(parse_join("0.1@host").is_err());
        assert!(parse_join("300.1@1.2.3.4").is_err());
    }
}
