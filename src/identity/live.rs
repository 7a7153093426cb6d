//! A process's TLS as its files say now. One [`NodeTls`] per process (arpanetd, the
//! sync service) holds the process's one [`Revoked`] set, so every verifier it builds
//! sees the same list.
//!
//! Reload: each call to [`NodeTls::current`] stats ca.pem, cert.pem and key.pem (and the
//! revocation file) and builds the configurations again only when one of them changed
//! (mtime, size or inode). Listeners call it per connection and clients per request, so
//! a renewed certificate is used by the next connection, with nothing restarted. A
//! rebuild that fails after one succeeded keeps the configuration it had (see below).

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{info, warn};

use super::{IdentityError, LocalIdentity, Revoked, TlsConfigs};
use crate::paths::IdentityFiles;

/// What a file's metadata says about its content, without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    std::fs::metadata(path).ok().map(|m| Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
    })
}

#[derive(Default)]
struct Loaded {
    identity: Option<[Option<Stamp>; 3]>,
    configs: Option<Result<TlsConfigs, IdentityError>>,
    revoked: Option<Option<Stamp>>,
}

/// The node's TLS configurations, rebuilt when its identity files change.
#[derive(Clone)]
pub struct NodeTls {
    files: IdentityFiles,
    revoked_file: PathBuf,
    revoked: Revoked,
    loaded: Arc<Mutex<Loaded>>,
}

impl NodeTls {
    /// `revoked_file` is a JSON array of revoked serials (lower-case hex, as
    /// [`super::serial_hex`] writes them); a missing file is an empty list.
    pub fn new(files: IdentityFiles, revoked_file: PathBuf) -> Self {
        Self {
            files,
            revoked_file,
            revoked: Revoked::default(),
            loaded: Arc::default(),
        }
    }

    pub fn from_config(config: &crate::config::Config) -> Self {
        Self::new(
            IdentityFiles::new(&config.cluster.identity_dir),
            crate::paths::revoked_serials(&config.paths),
        )
    }

    /// The process's revocation list: every configuration built here checks it at each
    /// handshake. [`NodeTls::current`] replaces it when the revocation file changes.
    pub fn revoked(&self) -> &Revoked {
        &self.revoked
    }

    pub fn files(&self) -> &IdentityFiles {
        &self.files
    }

    /// The configurations from the files as they are now (see the module's comment).
    pub fn current(&self) -> Result<TlsConfigs, IdentityError> {
        let mut loaded = self.loaded.lock().expect("tls lock");
        self.refresh_revoked(&mut loaded);
        let now = [
            stamp(&self.files.ca_cert()),
            stamp(&self.files.node_cert()),
            stamp(&self.files.node_key()),
        ];
        if loaded.identity != Some(now) || loaded.configs.is_none() {
            let built = LocalIdentity::load(&self.files)
                .and_then(|id| TlsConfigs::new(&id, self.revoked.clone()).map(|c| (id, c)));
            let had = matches!(loaded.configs, Some(Ok(_)));
            match built {
                Ok((id, configs)) => {
                    if had {
                        info!(
                            serial = %id.info.serial,
                            "node certificate reloaded from {}",
                            self.files.node_cert().display()
                        );
                    }
                    loaded.configs = Some(Ok(configs));
                }
                // A renewal replaces key.pem and cert.pem one after the other, so a
                // rebuild can meet a mismatched pair for a moment: the last good
                // configuration stays until the files are right again. Its certificate
                // is still the CA's until it expires or is revoked, which the peers check.
                Err(e) if had => {
                    warn!("{e}; TLS goes on with the certificate loaded before");
                }
                Err(e) => loaded.configs = Some(Err(e)),
            }
            loaded.identity = Some(now);
        }
        loaded.configs.clone().expect("set above")
    }

    /// Re-reads the revocation file every second from now on, so the open connections
    /// of a node that is revoked end within about a second, not at the next handshake.
    pub fn follow_revocations(&self) {
        let tls = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let mut loaded = tls.loaded.lock().expect("tls lock");
                tls.refresh_revoked(&mut loaded);
            }
        });
    }

    fn refresh_revoked(&self, loaded: &mut Loaded) {
        let now = stamp(&self.revoked_file);
        if loaded.revoked == Some(now) {
            return;
        }
        loaded.revoked = Some(now);
        let serials = match now {
            None => BTreeSet::new(),
            Some(_) => match read_revoked(&self.revoked_file) {
                Ok(s) => s,
                Err(e) => {
                    // Keep the list held: a bad file must not let revoked nodes back in.
                    warn!("{e}; the revocation list stays as it was");
                    return;
                }
            },
        };
        let count = serials.len();
        if self.revoked.set(serials) {
            info!(
                "revocation list: {count} serial(s) from {}",
                self.revoked_file.display()
            );
        }
    }
}

/// Reads a revocation file: a JSON array of serials in lower-case hex.
pub fn read_revoked(path: &Path) -> Result<BTreeSet<String>, IdentityError> {
    let bad = |why: String| IdentityError::File {
        path: path.to_path_buf(),
        why,
    };
    let text = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let serials: Vec<String> = crate::http::parse_json(&text).map_err(bad)?;
    for (i, s) in serials.iter().enumerate() {
        if s.is_empty()
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad(format!(
                "[{i}]: `{s}` is not a serial (lower-case hex, no separators)"
            )));
        }
    }
    Ok(serials.into_iter().collect())
}

/// An HTTPS client for other nodes (their cluster API on 10.255.a.b): it shows this
/// node's certificate and trusts only a server certificate from the cluster CA naming
/// the IP dialled. Built again when the node's identity files change (renewal).
pub struct NodeClient {
    tls: NodeTls,
    connect_timeout: Duration,
    timeout: Duration,
    held: Held,
    /// The client for streamed answers ([`NodeClient::streaming`]).
    held_streaming: Held,
}

type Held = std::sync::Mutex<Option<(std::sync::Arc<rustls::ClientConfig>, reqwest::Client)>>;

/// How long a streamed answer may sit idle before TCP checks that its node is still
/// there: a node that vanishes without closing the connection ends the stream then.
const STREAM_KEEPALIVE: Duration = Duration::from_secs(15);

impl NodeClient {
    pub fn new(tls: NodeTls, connect_timeout: Duration, timeout: Duration) -> Self {
        Self {
            tls,
            connect_timeout,
            timeout,
            held: std::sync::Mutex::new(None),
            held_streaming: std::sync::Mutex::new(None),
        }
    }

    /// The client for the node's identity as it is now; without one, why not.
    pub fn get(&self) -> Result<reqwest::Client, IdentityError> {
        self.cached(&self.held, |b| b.timeout(self.timeout))
    }

    /// As [`NodeClient::get`], for answers that stream for as long as someone watches
    /// (`logs -f`): no limit on the whole answer, which the caller reads chunk by chunk
    /// (`bytes_stream`), but TCP keepalives, so a vanished node ends it.
    pub fn streaming(&self) -> Result<reqwest::Client, IdentityError> {
        self.cached(&self.held_streaming, |b| {
            b.tcp_keepalive(STREAM_KEEPALIVE)
                .tcp_keepalive_interval(STREAM_KEEPALIVE)
                .tcp_keepalive_retries(3)
        })
    }

    fn cached(
        &self,
        held: &Held,
        limits: impl FnOnce(reqwest::ClientBuilder) -> reqwest::ClientBuilder,
    ) -> Result<reqwest::Client, IdentityError> {
        let configs = self.tls.current()?;
        let mut held = held.lock().expect("client lock");
        if let Some((config, client)) = held.as_ref()
            && std::sync::Arc::ptr_eq(config, &configs.client)
        {
            return Ok(client.clone());
        }
        let builder = reqwest::Client::builder()
            .tls_backend_preconfigured((*configs.client).clone())
            .connect_timeout(self.connect_timeout);
        let client = limits(builder)
            .build()
            .map_err(|e| IdentityError::Tls(e.to_string()))?;
        *held = Some((configs.client, client.clone()));
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::{Ca, NodeIdentity, Role, enroll_locally};
    use super::*;

    fn enroll(ca: &Ca, files: &IdentityFiles) {
        let who = NodeIdentity {
            cluster: "apples".into(),
            address: "0.2".parse().unwrap(),
            role: Role::Client,
        };
        enroll_locally(ca, files, &who).unwrap();
    }

    #[test]
    fn configurations_are_rebuilt_only_when_the_files_change() {
        let dir = tempfile::tempdir().unwrap();
        let files = IdentityFiles::new(&dir.path().join("identity"));
        let tls = NodeTls::new(files.clone(), dir.path().join("revoked.json"));
        let e = tls.current().unwrap_err().to_string();
        assert!(e.contains("ca.pem does not exist"), "{e}");
        let ca = Ca::generate("apples").unwrap();
        enroll(&ca, &files);
        let first = tls.current().unwrap();
        let again = tls.current().unwrap();
        assert!(Arc::ptr_eq(&first.server, &again.server));
        // Renewal writes new files (atomically: a new inode).
        enroll(&ca, &files);
        let renewed = tls.current().unwrap();
        assert!(!Arc::ptr_eq(&first.server, &renewed.server));
        // Halfway through the next one (a new key, the old certificate): the last good
        // configuration stays, and the complete pair is picked up.
        let held = std::fs::read_to_string(files.node_cert()).unwrap();
        enroll(&ca, &files);
        crate::files::write_atomically_with_mode(&files.node_cert(), &held, 0o644).unwrap();
        let halfway = tls.current().unwrap();
        assert!(Arc::ptr_eq(&renewed.server, &halfway.server));
        enroll(&ca, &files);
        let complete = tls.current().unwrap();
        assert!(!Arc::ptr_eq(&renewed.server, &complete.server));
    }

    #[test]
    fn the_revocation_file_feeds_the_shared_list_and_a_bad_one_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revoked.json");
        let tls = NodeTls::new(IdentityFiles::new(dir.path()), path.clone());
        let shared = tls.clone();
        std::fs::write(&path, r#"["1a02", "ff"]"#).unwrap();
        let _ = tls.current();
        assert!(shared.revoked().contains("1a02"));
        std::fs::write(&path, r#"["1A:02"]"#).unwrap();
        let _ = tls.current();
        assert!(
            shared.revoked().contains("ff"),
            "a bad file changes nothing"
        );
        let e = read_revoked(&path).unwrap_err().to_string();
        assert!(
            e.contains("revoked.json: [0]: `1A:02` is not a serial"),
            "{e}"
        );
        std::fs::remove_file(&path).unwrap();
        let _ = tls.current();
        assert!(shared.revoked().serials().is_empty());
    }
}
