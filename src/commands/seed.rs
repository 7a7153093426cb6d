//! `arpanet boot|server|client ADDRESS`: set a host up in one command, as the old
//! arpanet's seed did. Writes arpanet.toml (keeping every other edit in it), then
//! enables and starts arpanetd over D-Bus. `boot` makes the cluster: its secret, its CA,
//! this node's certificate and the join tokens. `server|client` join with a token
//! (`--token`): the join peer issues this node's certificate and hands over the
//! cluster secret (see [`crate::join`]); nothing is written before that has worked.
//!
//! `--secret` is gone rather than kept: a node with the secret but no certificate could
//! reach no API of the cluster. It is refused with a pointer to `--token`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use toml_edit::{Array, DocumentMut, InlineTable, Item, Table, value};

use crate::addressing::NodeAddress;
use crate::config::{Config, JoinPeer, Role};
use crate::consul::secret;
use crate::identity::{self, Ca, JoinSecrets, JoinToken, LocalIdentity, NodeKey};
use crate::join::JoinRequestV1;
use crate::paths::{self, IdentityFiles};

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
    /// The join token `arpanet boot` or `arpanet token show server|client` printed (not
    /// on the boot node); `-` reads it from stdin, which keeps it out of `ps` and the
    /// shell's history.
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Replaced by --token.
    #[arg(long, hide = true)]
    pub secret: Option<String>,
    /// Replaced by --token.
    #[arg(long, hide = true)]
    pub secret_file: Option<PathBuf>,
    /// Only write the config and the secret; do not enable or start arpanetd.
    #[arg(long)]
    pub no_start: bool,
}

/// How long a join waits for a join peer that cannot answer yet.
const JOIN_PATIENCE: std::time::Duration = std::time::Duration::from_secs(120);

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
        if self.secret.is_some() || self.secret_file.is_some() {
            let flag = if self.secret.is_some() {
                "--secret"
            } else {
                "--secret-file"
            };
            bail!(
                "{flag}: nodes join with a token now, which brings the cluster secret and this node's certificate: `arpanet token show server|client` on a server prints it; give it with --token TOKEN or --token - (stdin)"
            );
        }
        if role != Role::Boot && self.join.is_empty() {
            bail!(
                "--join: a {role} joins the cluster through a node that is in it, e.g. --join 0.1@192.168.8.120"
            );
        }
        if role == Role::Boot && self.token.is_some() {
            bail!("--token: the boot node makes the cluster's tokens; give them to the others");
        }
        // Before anything is written: a malformed token changes nothing.
        let token = match self.token.as_deref() {
            None => None,
            Some("-") => {
                let text = std::io::read_to_string(std::io::stdin())
                    .context("--token -: read the join token from stdin")?;
                Some(
                    text.parse::<JoinToken>()
                        .map_err(|e| anyhow::anyhow!("--token -: {e}"))?,
                )
            }
            Some(t) => Some(
                t.parse::<JoinToken>()
                    .map_err(|e| anyhow::anyhow!("--token: {e}"))?,
            ),
        };
        let existing = match std::fs::read_to_string(config_path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("read {}", config_path.display())),
        };
        let text = self.render(existing.as_deref(), role, config_path)?;
        // The result must load, or nothing is written.
        let config = Config::parse(config_path, &text)?;
        let files = IdentityFiles::new(&config.cluster.identity_dir);
        let started = std::time::Instant::now();
        match role {
            Role::Boot => {
                // The config first: `boot` run again on a working node changes only it.
                write_config(config_path, existing.as_deref(), &text)?;
                self.boot(&config, &files)?;
            }
            _ => {
                let wanted = if role == Role::Client {
                    identity::Role::Client
                } else {
                    identity::Role::Server
                };
                match token {
                    Some(token) => self.join(&config, &files, wanted, &token).await?,
                    None => already_joined(&config, &files, wanted)?,
                }
                write_config(config_path, existing.as_deref(), &text)?;
            }
        }
        tracing::debug!("identity ready in {:?}", started.elapsed());

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

    /// The boot node's cluster: the secret, the CA, this node's certificate, the join
    /// secrets; each made only if missing, so running `boot` again changes nothing.
    fn boot(&self, config: &Config, files: &IdentityFiles) -> anyhow::Result<()> {
        let secret_file = &config.cluster.secret_file;
        // An existing secret is the cluster's: a weak one is reported, not replaced.
        if secret_file.exists() {
            secret::read(secret_file)?;
        } else {
            secret::write(secret_file, &secret::generate()?, false)?;
            println!("wrote the cluster secret to {}", secret_file.display());
        }
        let ca = if files.ca_key().exists() {
            Ca::load(files)?
        } else {
            let ca = Ca::generate(&config.datacenter())?;
            ca.store(files)?;
            println!("made the cluster CA in {}", files.dir.display());
            ca
        };
        let me = identity::NodeIdentity {
            cluster: config.datacenter(),
            address: self.address,
            role: identity::Role::Server,
        };
        let current = LocalIdentity::load(files)
            .ok()
            .filter(|l| l.info.identity == me && l.ca_digest() == ca.digest());
        if current.is_none() {
            identity::enroll_locally(&ca, files, &me)?;
            println!(
                "issued this node's certificate ({} {})",
                me.role, me.address
            );
        }
        // Consul's ACL tokens: the management token (the first leader creates it from
        // this node's config) and this node's own; each made only if missing.
        for line in crate::consul::acl::make_boot_tokens(files)? {
            println!("{line}");
        }
        let secrets = match std::fs::read(files.join_secrets()) {
            Ok(bytes) => crate::http::parse_json::<JoinSecrets>(&bytes)
                .map_err(|why| anyhow::anyhow!("{}: {why}", files.join_secrets().display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if current.is_some() {
                    // A cluster that runs already: its tokens are in Consul.
                    println!(
                        "this node is the cluster's boot node already; `arpanet token show` prints the join tokens"
                    );
                    return Ok(());
                }
                let s = JoinSecrets::generate()?;
                crate::files::write_private(
                    &files.join_secrets(),
                    &serde_json::to_string(&s).expect("secrets serialize"),
                )?;
                s
            }
            Err(e) => {
                return Err(e).with_context(|| format!("read {}", files.join_secrets().display()));
            }
        };
        let digest = ca.digest();
        println!("on the other hosts run:");
        // Every initial server waits for the same number of servers (Consul's
        // bootstrap_expect); the boot node takes their joins before there is a leader.
        let expect = match config.cluster.expect {
            1 => String::new(),
            n => format!(" --expect {n}"),
        };
        for role in [identity::Role::Server, identity::Role::Client] {
            let expect = if role == identity::Role::Server {
                expect.as_str()
            } else {
                ""
            };
            println!(
                "  arpanet {role} ADDRESS --cluster {}{expect} --join {}@THIS_HOST_IP --token {}",
                config.cluster.name,
                self.address,
                secrets.token(role, &digest)
            );
        }
        println!(
            "(`--token -` reads it from stdin, keeping it out of `ps` and shell history; `arpanet token show|rotate` manages them)"
        );
        Ok(())
    }

    /// Gets this node's identity from the first join peer that gives one, then writes
    /// it with the cluster secret (and on servers the CA key and management token).
    async fn join(
        &self,
        config: &Config,
        files: &IdentityFiles,
        role: identity::Role,
        token: &JoinToken,
    ) -> anyhow::Result<()> {
        let key = NodeKey::generate()?;
        let request = JoinRequestV1 {
            token: token.to_string(),
            address: self.address.to_string(),
            role: role.to_string(),
            name: config.node_name(),
            csr: key.csr_pem()?,
        };
        // Right after `arpanet boot` the boot node's join service may not listen yet, or
        // its Consul may have no leader: ask again for a while, as `docker swarm join`
        // waits for its manager. A refusal is the cluster's answer and ends it at once.
        let deadline = std::time::Instant::now() + JOIN_PATIENCE;
        let mut told = false;
        let answer = loop {
            let mut failures = Vec::new();
            let mut answer = None;
            for peer in &config.node.join {
                match crate::join::client::request(peer, config.cluster.join_port, token, &request)
                    .await
                {
                    Ok(a) => {
                        answer = Some(a);
                        break;
                    }
                    Err(e @ crate::join::JoinError::Refused(_))
                    | Err(e @ crate::join::JoinError::Identity(_)) => return Err(e.into()),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            if let Some(a) = answer {
                break a;
            }
            // A TLS failure is an answer too: the peer is not this token's cluster.
            if failures.iter().any(|f| f.contains("nothing was sent"))
                || std::time::Instant::now() >= deadline
            {
                bail!("join: {}", failures.join("; "));
            }
            if !told {
                eprintln!("waiting for the join service ({}) ...", failures.join("; "));
                told = true;
            }
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        };
        let info = identity::CertInfo::from_pem(&answer.cert)?;
        if info.identity.address != self.address || info.identity.role != role {
            bail!(
                "join: the certificate issued names {} {}, not {role} {}",
                info.identity.role,
                info.identity.address,
                self.address
            );
        }
        // Everything checked before anything is written: a bad answer leaves the host
        // as it was.
        let secret = secret::validated(
            &answer.cluster_secret,
            "the cluster secret from the join peer",
        )?;
        let ca = match (&answer.server, role) {
            (Some(server), identity::Role::Server) => {
                Some(Ca::from_pems(&answer.ca, &server.ca_key)?)
            }
            (None, identity::Role::Client) => None,
            _ => bail!("join: the answer does not fit a {role} (the CA key is for servers only)"),
        };
        identity::TlsConfigs::from_pems(
            &answer.ca,
            &answer.cert,
            &key.key_pem(),
            identity::Revoked::default(),
        )?;
        identity::write_identity(files, &answer.ca, &answer.cert, &key.key_pem())?;
        secret::write(&config.cluster.secret_file, &secret, true)?;
        if let Some(ca) = ca {
            ca.store(files)?;
        }
        if let Some(t) = answer
            .server
            .as_ref()
            .and_then(|s| s.consul_management_token.as_ref())
        {
            crate::files::write_private(&files.consul_management_token(), &format!("{t}\n"))?;
        }
        if let Some(t) = &answer.consul_token {
            crate::files::write_private(&files.consul_agent_token(), &format!("{t}\n"))?;
        }
        self.fetch_peers(config, token).await;
        println!(
            "joined: this node's certificate ({role} {}) and the cluster secret are in {} and {}",
            self.address,
            files.dir.display(),
            config.cluster.secret_file.display()
        );
        Ok(())
    }

    /// The cluster's nodes from a join peer, kept as the peer cache: arpanetd programs
    /// and greets them all on its first pass, before its Consul agent answers. Best
    /// effort (a server of an older release has no such endpoint; Consul tells later).
    async fn fetch_peers(&self, config: &Config, token: &JoinToken) {
        for peer in &config.node.join {
            let asked = crate::join::client::peers(peer, config.cluster.join_port, token);
            match tokio::time::timeout(std::time::Duration::from_secs(5), asked)
                .await
                .unwrap_or_else(|_| {
                    Err(crate::join::JoinError::NotReady("no answer in 5 s".into()))
                }) {
                Ok(list) => {
                    let (mut peers, bad) = list.validated();
                    for b in bad {
                        eprintln!(
                            "warning: the peer list from {}: {b}; left out",
                            peer.address
                        );
                    }
                    peers.retain(|p| p.address != self.address);
                    let path = crate::paths::peers_cache(&config.paths);
                    if let Err(e) = crate::network::peers::save_cache(&path, &peers) {
                        eprintln!(
                            "warning: cannot keep the peer list in {}: {e:#}",
                            path.display()
                        );
                    }
                    return;
                }
                Err(e) => tracing::debug!("peer list from {}: {e}", peer.address),
            }
        }
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

/// Without `--token`, the node must have joined before (a re-run that changes, say,
/// the underlay interface), as this address and role.
fn already_joined(
    config: &Config,
    files: &IdentityFiles,
    role: identity::Role,
) -> anyhow::Result<()> {
    let local = LocalIdentity::load(files).map_err(|e| match e {
        identity::IdentityError::Missing { .. } => anyhow::anyhow!(
            "--token: this node has not joined yet; give the join token that `arpanet boot` or `arpanet token show {role}` on a server printed (--token TOKEN, or --token - for stdin)"
        ),
        e => e.into(),
    })?;
    let have = &local.info.identity;
    if have.address != config.node.address || have.role != role {
        bail!(
            "--token: this node's certificate is for {} {}, not {role} {}; join again with a token",
            have.role,
            have.address,
            config.node.address
        );
    }
    Ok(())
}

fn write_config(path: &Path, existing: Option<&str>, text: &str) -> anyhow::Result<()> {
    if existing != Some(text) {
        crate::files::write_atomically(path, text)?;
        println!("wrote {}", path.display());
    }
    Ok(())
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
