//! Every file, socket and systemd unit arpanet's processes share, named once. Paths
//! derive from `[paths]` in arpanet.toml ([`PathsConfig`]); unit names are those of the
//! packaged units (`systemd/`; arpanet-sync.socket names the sync socket's path too).

use std::path::{Path, PathBuf};

use crate::config::PathsConfig;

/// arpanetd itself.
pub const ARPANETD_UNIT: &str = "arpanetd.service";
/// The Consul agent (`arpanet consul-agent`).
pub const CONSUL_UNIT: &str = "arpanet-consul.service";
/// The image sync service and the socket that starts it; `arpanet boot|server|client`
/// enables the socket.
pub const SYNC_SOCKET_UNIT: &str = "arpanet-sync.socket";
pub const SYNC_SERVICE_UNIT: &str = "arpanet-sync.service";
/// Docker's unit, which arpanet gives a drop-in and restarts when its config changed.
pub const DOCKER_UNIT: &str = "docker.service";

/// The cluster API's socket (root only).
pub fn api_socket(paths: &PathsConfig) -> PathBuf {
    paths.run_dir.join("api.sock")
}

/// The image sync service's control socket (systemd's arpanet-sync.socket).
pub fn sync_socket(paths: &PathsConfig) -> PathBuf {
    paths.run_dir.join("sync.sock")
}

/// Where image tarballs live: one file per image, named by ID, the torrent's only file.
pub fn images_dir(paths: &PathsConfig) -> PathBuf {
    paths.state_dir.join("images")
}

/// The node registry's blobs and uploads.
pub fn registry_dir(paths: &PathsConfig) -> PathBuf {
    paths.state_dir.join("registry")
}

/// The image sync service's byte totals (sent, received), for arpanetd's `/metrics`.
pub fn image_transfer(paths: &PathsConfig) -> PathBuf {
    paths.state_dir.join("image-transfer.json")
}

/// The catalog's last answer, for the overlay's peers after a restart.
pub fn peers_cache(paths: &PathsConfig) -> PathBuf {
    paths.state_dir.join("peers.json")
}

/// Where each admitted peer came from and what was turned away (`arpanet status`).
pub fn admission_status(paths: &PathsConfig) -> PathBuf {
    paths.state_dir.join("admission.json")
}

/// Serials of revoked node certificates (a JSON array of lower-case hex): every
/// process of the node reads it, and refuses those certificates at the next handshake.
pub fn revoked_serials(paths: &PathsConfig) -> PathBuf {
    paths.state_dir.join("revoked.json")
}

/// The Consul agent's config, rendered from arpanet.toml.
pub fn consul_config(paths: &PathsConfig) -> PathBuf {
    paths.state_dir.join("consul/config.json")
}

/// The agent's copies of this node's CA, certificate and key (its user's, 0600).
pub fn consul_tls_dir(paths: &PathsConfig) -> PathBuf {
    paths.state_dir.join("consul/tls")
}

pub fn consul_data(paths: &PathsConfig) -> PathBuf {
    paths.state_dir.join("consul/data")
}

/// The last problem the agent wrapper recognised, for `arpanet status`: in the agent's
/// own directory (arpanet-consul.service's RuntimeDirectory), as the agent may run as
/// an unprivileged user.
pub fn consul_problem(paths: &PathsConfig) -> PathBuf {
    paths.run_dir.join("consul/problem")
}

/// The values arpanet's keys replaced in Docker's daemon.json, restored on uninstall.
pub fn docker_daemon_json_originals(paths: &PathsConfig) -> PathBuf {
    paths.state_dir.join("docker-daemon-json.orig.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_layout_is_the_packaged_one() {
        let p = PathsConfig::default();
        assert_eq!(api_socket(&p), PathBuf::from("/run/arpanet/api.sock"));
        assert_eq!(sync_socket(&p), PathBuf::from("/run/arpanet/sync.sock"));
        assert_eq!(images_dir(&p), PathBuf::from("/var/lib/arpanet/images"));
        assert_eq!(
            peers_cache(&p),
            PathBuf::from("/var/lib/arpanet/peers.json")
        );
        assert_eq!(
            consul_config(&p),
            PathBuf::from("/var/lib/arpanet/consul/config.json")
        );
    }
}

/// The files of a node's identity, in `cluster.identity_dir`. Docker's names for the
/// first three, so the directory is a DOCKER_CERT_PATH as it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityFiles {
    pub dir: PathBuf,
}

impl IdentityFiles {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }
    /// The cluster CA's certificate (PEM): every node has it.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    /// This node's certificate (PEM), issued by the cluster CA.
    pub fn node_cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }
    /// This node's private key (PEM, 0600); it never leaves the node.
    pub fn node_key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }
    /// The CA's private key (PEM, 0600): on servers only.
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca-key.pem")
    }
    /// This node's Consul ACL token (the agent's and arpanet's own requests; 0600).
    pub fn consul_agent_token(&self) -> PathBuf {
        self.dir.join("consul-agent.token")
    }
    /// The join secrets `arpanet boot` made, until arpanetd has put them in Consul.
    pub fn join_secrets(&self) -> PathBuf {
        self.dir.join("join-tokens.json")
    }
    /// Joins the boot node took before Consul had a leader, to record once it has
    /// one (0600: it holds the joiners' Consul token secrets).
    pub fn join_pending(&self) -> PathBuf {
        self.dir.join("join-pending.json")
    }
    /// The Consul management token (servers only; 0600).
    pub fn consul_management_token(&self) -> PathBuf {
        self.dir.join("consul-management.token")
    }
}
