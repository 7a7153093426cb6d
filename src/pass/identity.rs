//! Renewal of the node's certificate, checked every pass: once a third or less of its
//! lifetime is left, a server issues itself a new one with the CA key it holds, and a
//! client asks a server (`POST /v1/identity/renew` over mutual TLS, showing the
//! certificate it renews). Either way with a new key, written so that no reader sees a
//! mismatched pair ([`identity::renew`]); the TLS configurations pick it up at their
//! next connection. A failure leaves the old certificate in use until it expires, and
//! is tried again next pass.

use std::time::{Duration, SystemTime};

use super::{Reconciler, Snapshot};
use crate::addressing::NodeAddress;
use crate::config::Role as ConfigRole;
use crate::identity::{
    self, CertInfo, LocalIdentity, NODE_CERT_VALIDITY, NodeClient, NodeKey, NodeTls, Role,
};
use crate::join::renew::{RenewRequestV1, RenewResponseV1};
use crate::outcome::Outcome;
use crate::paths::IdentityFiles;

pub struct Renewal {
    nodes: NodeClient,
    /// A server's own renewal whose KV record (for `node rm`) is still to be written.
    unrecorded: Option<identity::Issued>,
}

impl Renewal {
    pub fn new(tls: NodeTls) -> Self {
        Self {
            nodes: NodeClient::new(tls, Duration::from_secs(3), Duration::from_secs(20)),
            unrecorded: None,
        }
    }
}

/// What a pass does about the node's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    Keep,
    /// Issue it here, with the CA key this server holds.
    Locally,
    /// Ask a server for it.
    ThroughServer,
}

pub fn plan(info: &CertInfo, holds_ca_key: bool, now: SystemTime) -> Plan {
    if !info.due_for_renewal(now) {
        Plan::Keep
    } else if holds_ca_key && info.identity.role == Role::Server {
        Plan::Locally
    } else {
        Plan::ThroughServer
    }
}

/// The servers to ask, in order: the catalog's (other than this node), then the join
/// peers it does not list.
pub fn servers(snap: &Snapshot<'_>) -> Vec<NodeAddress> {
    let me = snap.plan.address;
    let mut out: Vec<NodeAddress> = snap
        .catalog
        .iter()
        .flat_map(|c| &c.nodes)
        .filter(|n| matches!(n.role, ConfigRole::Boot | ConfigRole::Server))
        .map(|n| n.address)
        .filter(|a| *a != me)
        .collect();
    for p in crate::network::reconcile::join_peers(snap.config) {
        if p.address != me && !out.contains(&p.address) {
            out.push(p.address);
        }
    }
    out
}

fn until(info: &CertInfo) -> String {
    humantime::format_rfc3339_seconds(info.not_after).to_string()
}

impl Renewal {
    async fn through_server(&self, snap: &Snapshot<'_>, key: &NodeKey) -> Result<String, String> {
        let csr = key.csr_pem().map_err(|e| e.to_string())?;
        let servers = servers(snap);
        if servers.is_empty() {
            return Err("no server to ask: none in the catalog, and no join peers".into());
        }
        let client = self.nodes.get().map_err(|e| e.to_string())?;
        let mut failed = Vec::new();
        for server in servers {
            let url = format!(
                "https://{}:{}/v1/identity/renew",
                server.overlay_ip(),
                snap.config.api.port
            );
            let answer = async {
                let resp = client
                    .post(&url)
                    .json(&RenewRequestV1 { csr: csr.clone() })
                    .send()
                    .await
                    .map_err(crate::http::request_error)?;
                let status = resp.status();
                let body = resp.bytes().await.map_err(|e| e.to_string())?;
                if !status.is_success() {
                    return Err(crate::http::error_text(status, &body));
                }
                crate::http::parse_json::<RenewResponseV1>(&body)
            };
            match answer.await {
                Ok(r) => return Ok(r.cert),
                Err(e) => failed.push(format!("{server}: {e}")),
            }
        }
        Err(format!("no server renewed it ({})", failed.join("; ")))
    }
}

#[async_trait::async_trait]
impl Reconciler for Renewal {
    fn name(&self) -> &'static str {
        "identity"
    }

    async fn converge(&mut self, snap: &Snapshot<'_>) -> Outcome {
        let mut outcome = Outcome::default();
        let files = IdentityFiles::new(&snap.config.cluster.identity_dir);
        // Not joined yet: the listeners say so; there is nothing to renew.
        if !LocalIdentity::present(&files) {
            return outcome;
        }
        match identity::renew::recover(&files) {
            Ok(true) => outcome.change(format!(
                "put back {}: a renewal was cut short before its certificate was written",
                files.node_key().display()
            )),
            Ok(false) => {}
            Err(e) => outcome.fail("certificate renewal", e),
        }
        if let Some(issued) = self.unrecorded.clone() {
            self.record(snap, &issued, &mut outcome).await;
        }
        let local = match LocalIdentity::load(&files) {
            Ok(l) => l,
            Err(e) => {
                outcome.fail("certificate renewal", e);
                return outcome;
            }
        };
        let how = plan(&local.info, files.ca_key().exists(), SystemTime::now());
        if how == Plan::Keep {
            return outcome;
        }
        let key = match NodeKey::generate() {
            Ok(k) => k,
            Err(e) => {
                outcome.fail("certificate renewal", e);
                return outcome;
            }
        };
        let cert = match how {
            Plan::Locally => identity::Ca::load(&files)
                .and_then(|ca| ca.issue(&key.csr_pem()?, &local.info.identity, NODE_CERT_VALIDITY))
                .map(|i| i.cert_pem)
                .map_err(|e| e.to_string()),
            _ => self.through_server(snap, &key).await,
        };
        let written = cert.and_then(|cert| {
            let info = CertInfo::from_pem(&cert).map_err(|e| e.to_string())?;
            // A server that named anyone else, or gave less time, is not believed.
            if info.identity != local.info.identity || info.not_after <= local.info.not_after {
                return Err(format!(
                    "the renewed certificate names {} until {}, not {} past {}",
                    info.identity.spiffe_id(),
                    until(&info),
                    local.info.identity.spiffe_id(),
                    until(&local.info)
                ));
            }
            identity::renew::replace(&files, &key, &cert).map_err(|e| e.to_string())?;
            Ok((info, cert))
        });
        match written {
            Ok((info, cert)) => {
                outcome.change(format!(
                    "renewed the node certificate ({}): serial {} -> {}, valid until {}",
                    match how {
                        Plan::Locally => "with this server's CA key",
                        _ => "through a server",
                    },
                    local.info.serial,
                    info.serial,
                    until(&info)
                ));
                if how == Plan::Locally {
                    let issued = identity::Issued {
                        cert_pem: cert,
                        serial: info.serial,
                    };
                    self.record(snap, &issued, &mut outcome).await;
                }
            }
            Err(why) => outcome.fail(
                "certificate renewal",
                format!(
                    "{why}; the certificate {} keeps working until it expires at {}",
                    local.info.serial,
                    until(&local.info)
                ),
            ),
        }
        outcome
    }
}

impl Renewal {
    /// Points `node rm` at a server's own new certificate; kept for the next pass until
    /// Consul takes it.
    async fn record(
        &mut self,
        snap: &Snapshot<'_>,
        issued: &identity::Issued,
        outcome: &mut Outcome,
    ) {
        if snap.consul.is_none() {
            // Kept for a pass that has Consul: `node rm` must know the new serial.
            self.unrecorded = Some(issued.clone());
            return;
        }
        let role = Role::Server.as_str();
        let name = Some(snap.config.node_name());
        let management = crate::consul::client::Consul::for_management(snap.config);
        match crate::join::renew::record_issued(&management, snap.plan.address, issued, role, name)
            .await
        {
            Ok(()) => self.unrecorded = None,
            Err(e) => {
                self.unrecorded = Some(issued.clone());
                outcome.fail("certificate renewal", format!("record the new serial: {e}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn info(role: Role) -> CertInfo {
        let start = UNIX_EPOCH + Duration::from_secs(1_000_000);
        CertInfo {
            identity: identity::NodeIdentity {
                cluster: "apples".into(),
                address: "0.2".parse().unwrap(),
                role,
            },
            serial: "01".into(),
            not_before: start,
            not_after: start + Duration::from_secs(90 * 24 * 3600),
        }
    }

    #[test]
    fn renewal_waits_for_the_last_third_then_picks_who_issues() {
        let day = Duration::from_secs(24 * 3600);
        let start = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let (early, late) = (start + 59 * day, start + 61 * day);
        let expired = start + 91 * day;
        for role in [Role::Server, Role::Client] {
            for key in [true, false] {
                assert_eq!(plan(&info(role), key, early), Plan::Keep);
            }
        }
        assert_eq!(plan(&info(Role::Server), true, late), Plan::Locally);
        assert_eq!(plan(&info(Role::Server), true, expired), Plan::Locally);
        // A server without the CA key (not handed over yet) asks another.
        assert_eq!(plan(&info(Role::Server), false, late), Plan::ThroughServer);
        // A client never issues, even with a stray CA key.
        assert_eq!(plan(&info(Role::Client), true, late), Plan::ThroughServer);
        assert_eq!(plan(&info(Role::Client), false, late), Plan::ThroughServer);
    }
}
