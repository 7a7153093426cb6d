//! The Consul agent (its config, and its unit under systemd) and this node's entry in
//! the catalog.

use std::time::Duration;

use super::{Reconciler, Snapshot};
use crate::consul;
use crate::network::netlink::Netlink;
use crate::outcome::{Outcome, Restarted};

pub struct ConsulAgent {
    pub netlink: Netlink,
}

#[async_trait::async_trait]
impl Reconciler for ConsulAgent {
    fn name(&self) -> &'static str {
        "consul"
    }

    async fn converge(&mut self, snap: &Snapshot<'_>) -> Outcome {
        let mut outcome = Outcome::default();
        let Some(client) = snap.consul else {
            return outcome;
        };
        match consul::reconcile(snap.config, &self.netlink, snap.systemd).await {
            Ok(changes) => {
                // Register only once the agent that was just (re)started listens and
                // its cluster has a leader; other passes never wait.
                if changes
                    .iter()
                    .any(|c| c.contains(crate::paths::CONSUL_UNIT))
                {
                    outcome.restarted = Some(Restarted::Consul);
                    let limit = Duration::from_secs(30);
                    let up = match client.wait_until_up(limit).await {
                        Ok(()) => client.wait_for_leader(limit).await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = up {
                        outcome.fail_with(&e);
                    }
                }
                outcome.changes = changes;
            }
            Err(e) => outcome.fail_with(&e),
        }
        outcome
    }
}

/// Consul's ACLs, on a server that holds the management token (the boot node has it
/// from `arpanet boot`): the policies, the anonymous token's, and this node's own token
/// with the SecretID its agent token file holds. Waits for a leader (it creates the
/// management token); checked again every pass, so a policy deleted by hand comes back.
pub struct ConsulAcl;

#[async_trait::async_trait]
impl Reconciler for ConsulAcl {
    fn name(&self) -> &'static str {
        "consul"
    }

    async fn converge(&mut self, snap: &Snapshot<'_>) -> Outcome {
        let mut outcome = Outcome::default();
        let config = snap.config;
        if snap.consul.is_none()
            || config.node.role == crate::config::Role::Client
            || !matches!(
                config.consul.mode,
                crate::config::ConsulMode::Config | crate::config::ConsulMode::Systemd
            )
        {
            return outcome;
        }
        let files = crate::paths::IdentityFiles::new(&config.cluster.identity_dir);
        let management = files.consul_management_token();
        if !management.exists() {
            return outcome;
        }
        let client =
            consul::client::Consul::impatient(config.consul.http_addr).with_token_file(&management);
        match client.leader().await {
            Ok(Some(_)) => {}
            // No leader yet, or no agent: the agent reconciler says so.
            _ => return outcome,
        }
        if let Err(e) = consul::acl::wait_for_own_token(&client, Duration::from_secs(10)).await {
            outcome.fail(
                "ACLs",
                format!("the management token in {}: {e}", management.display()),
            );
            return outcome;
        }
        match consul::acl::ensure_policies(&client).await {
            Ok(changes) => outcome.changes.extend(changes),
            Err(e) => {
                outcome.fail("ACL policies", format!("{e:#}"));
                return outcome;
            }
        }
        let node = config.node_name();
        match consul::client::read_token_file(&files.consul_agent_token()) {
            Ok(Some(secret)) => match consul::acl::ensure_node_token(&client, &node, &secret).await
            {
                Ok(true) => {
                    outcome.change(format!("made node {node}'s ACL token"));
                    // The pass read Consul (KV, the catalog) before the token existed:
                    // once Consul resolves it, read again, so this very pass goes on
                    // with it instead of reporting "ACL not found".
                    let own = consul::client::Consul::for_node(config);
                    if let Err(e) =
                        consul::acl::wait_for_own_token(&own, Duration::from_secs(10)).await
                    {
                        outcome.fail("this node's ACL token", format!("{e:#}"));
                    }
                    outcome.restarted = Some(crate::outcome::Restarted::Consul);
                }
                Ok(false) => {}
                Err(e) => outcome.fail("this node's ACL token", format!("{e:#}")),
            },
            Ok(None) => {}
            Err(e) => outcome.fail("this node's ACL token", e.to_string()),
        }
        outcome
    }
}

/// This node as the `arpanet` service in the catalog, with what peers need to reach it.
pub struct NodeRegistration;

#[async_trait::async_trait]
impl Reconciler for NodeRegistration {
    fn name(&self) -> &'static str {
        "consul"
    }

    async fn converge(&mut self, snap: &Snapshot<'_>) -> Outcome {
        let mut outcome = Outcome::default();
        let (Some(client), Ok(underlay)) = (snap.consul, &snap.underlay) else {
            return outcome;
        };
        if !snap.consul_leader {
            // Registered when there is one: the election's catalog change starts a pass.
            outcome.fail("register this node", "Consul has no leader yet");
            return outcome;
        }
        match consul::ensure_registered(client, snap.config, underlay.ip).await {
            Ok(true) => outcome.change(format!("registered node {}", snap.plan.address)),
            Ok(false) => {}
            Err(e) => outcome.fail("register this node", format!("{e:#}")),
        }
        outcome
    }
}
