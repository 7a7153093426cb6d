use std::path::Path;

use clap::Args;

use crate::config::{Config, Mtu, Underlay};
use crate::plan::NodePlan;

/// Print this node's addresses and settings, from its config alone.
#[derive(Debug, Args)]
pub struct Info {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl Info {
    pub fn exec(&self, config_path: &Path) -> anyhow::Result<()> {
        let config = Config::load(config_path)?;
        let plan = NodePlan::from_config(&config);
        if self.json {
            println!("{}", serde_json::to_string_pretty(&plan)?);
        } else {
            print!("{}", render(&plan));
        }
        Ok(())
    }
}

fn render(p: &NodePlan) -> String {
    let mtu = match p.overlay.mtu {
        Mtu::Auto => "auto".to_string(),
        Mtu::Fixed(m) => m.to_string(),
    };
    let underlay = match &p.underlay {
        Underlay::Interface(i) => format!("interface {i}"),
        Underlay::Ip(ip) => format!("address {ip}"),
        Underlay::DefaultRoute => "interface of the default route".to_string(),
    };
    let join = if p.join.is_empty() {
        "-".to_string()
    } else {
        p.join
            .iter()
            .map(|j| format!("{} at {}", j.address, j.ip))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "node {} ({}) in cluster {}\n\
         \x20 overlay      {} on {} (VNI {}, UDP {}, MTU {mtu})\n\
         \x20 docker api   {}\n\
         \x20 consul       {} (DNS for containers at {})\n\
         \x20 registry     {}\n\
         \x20 containers   {} (bridge {})\n\
         \x20 underlay     {underlay}\n\
         \x20 join         {join}\n",
        p.address,
        p.role,
        p.cluster,
        p.overlay_ip,
        p.overlay.device,
        p.overlay.vni,
        p.overlay.port,
        p.docker_api,
        p.consul_ip,
        p.consul_dns,
        p.registry,
        p.container_subnet,
        p.bridge_ip,
    )
}
