//! The hello service (admission): a task that greets the join peers and answers
//! hellos, kept running with what it should say.

use super::{Reconciler, Snapshot};
use crate::consul::secret;
use crate::identity::{LocalIdentity, NodeTls};
use crate::network::admission::{self, HelloIdentity, Speaker};
use crate::network::reconcile::join_peers;
use crate::outcome::Outcome;

pub struct Hello {
    pub admissions: admission::Shared,
    /// Signalled when a hello admits a node, so a pass programs it at once.
    pub admitted_tx: tokio::sync::mpsc::Sender<()>,
    /// The node's TLS: where its identity lives, and the process's revocation list.
    pub tls: NodeTls,
    running: Option<(Speaker, tokio::task::JoinHandle<()>)>,
}

impl Hello {
    pub fn new(
        admissions: admission::Shared,
        admitted_tx: tokio::sync::mpsc::Sender<()>,
        tls: NodeTls,
    ) -> Self {
        Self {
            admissions,
            admitted_tx,
            tls,
            running: None,
        }
    }
}

/// A host with no join peers and no secret file (a lone host, Consul off) has nobody
/// to greet and could admit nobody: it runs without hellos, and says nothing.
pub fn lone_without_secret(config: &crate::config::Config) -> bool {
    config.node.join.is_empty() && !config.cluster.secret_file.exists()
}

/// What this node's hellos say, from the config, the secret, the underlay and the
/// node's identity (as `tls` finds it).
pub fn speaker(snap: &Snapshot<'_>, tls: &NodeTls) -> anyhow::Result<Speaker> {
    let secret = secret::read(&snap.config.cluster.secret_file)?;
    let underlay = snap.underlay.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Speaker {
        me: snap.plan.address,
        underlay_ip: underlay.ip,
        port: snap.config.overlay.hello_port,
        key: secret::derive_key(&secret, secret::ADMISSION_LABEL),
        join: join_peers(snap.config)
            .iter()
            .map(|p| p.underlay_ip)
            .collect(),
        identity: LocalIdentity::load(tls.files())
            .map_err(|e| e.to_string())
            .and_then(|id| HelloIdentity::from_local(&id)),
    })
}

#[async_trait::async_trait]
impl Reconciler for Hello {
    fn name(&self) -> &'static str {
        "admission"
    }

    /// (Re)starts the task when the secret, the underlay address, the join list or the
    /// node's identity (a renewed certificate, one that appeared) changed, or it ended.
    async fn converge(&mut self, snap: &Snapshot<'_>) -> Outcome {
        let mut outcome = Outcome::default();
        if lone_without_secret(snap.config) {
            return outcome;
        }
        let speaker = match speaker(snap, &self.tls) {
            Ok(s) => s,
            Err(e) => {
                outcome.fail_with(&e);
                return outcome;
            }
        };
        if let Some((running, task)) = &self.running
            && *running == speaker
            && !task.is_finished()
        {
            return outcome;
        }
        if let Some((_, task)) = self.running.take() {
            task.abort();
        }
        match speaker.bind().await {
            Ok(socket) => {
                let task = tokio::spawn(speaker.clone().serve(
                    socket,
                    self.admissions.clone(),
                    self.tls.clone(),
                    self.admitted_tx.clone(),
                ));
                self.running = Some((speaker, task));
            }
            Err(e) => outcome.fail(
                format!("bind UDP {}:{}", speaker.underlay_ip, speaker.port),
                e,
            ),
        }
        outcome
    }
}
