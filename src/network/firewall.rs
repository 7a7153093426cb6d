//! arpanet's iptables rules: forwarding and NAT next to Docker's, and admission.
//!
//! Docker sets FORWARD's policy to DROP and masquerades everything its containers
//! send out of the bridge. Overlay traffic must instead be forwarded into the local
//! container subnet and leave with its container source address intact, so the
//! receiving host sees who called. Rules live in arpanet's own chains, jumped to
//! from the top of FORWARD, INPUT and nat POSTROUTING, so Docker's restarts and
//! rewrites never reorder them and uninstall removes exactly what was added.
//!
//! Admission is deny by default. VXLAN (UDP 4789) is accepted only from admitted
//! peers' underlay IPs on the underlay interface: the kernel decapsulates packets from
//! any sender, so this is what keeps forged frames out. The node planes
//! (10.253-10.255.a.b) answer the host itself, admitted peers' plane addresses over
//! the overlay, replies to the host's own connections, and DNS for containers; nothing
//! else, whatever listens there now or later. On the bridge address arpanet's own
//! ports answer containers DNS only; the user's other host services are left alone.
//! Containers may not send VXLAN at all, nor spoof their source address onto the
//! overlay (the hole Calico closed as TTA-2019-002).

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use anyhow::{Context, anyhow};
use ipnetwork::Ipv4Network;

use super::Peer;
use crate::addressing::NodeAddress;

pub const FORWARD_CHAIN: &str = "ARPANET-FORWARD";
pub const NAT_CHAIN: &str = "ARPANET-POSTROUTING";
pub const INPUT_CHAIN: &str = "ARPANET-INPUT";
/// What admitted peers may send: their VXLAN, and anything from their plane addresses.
pub const ADMITTED_CHAIN: &str = "ARPANET-ADMITTED";
/// Docker's default bridge, where local containers come from.
pub const DOCKER_BRIDGE: &str = "docker0";

/// Everything the rules are made from: this host, its ports, and the admitted peers.
#[derive(Debug, Clone)]
pub struct Plan {
    pub address: NodeAddress,
    /// The overlay device.
    pub device: String,
    /// The underlay interface, where VXLAN and hellos come in.
    pub underlay: String,
    pub vxlan_port: u16,
    pub hello_port: u16,
    /// The join service (TCP, servers): for joiners on the underlay, nobody else.
    pub join_port: u16,
    pub dns_port: u16,
    /// arpanet's own TCP listeners (Docker API, cluster API, image peers, Consul HTTP,
    /// RPC and serf), closed to containers on the bridge address.
    pub tcp_ports: Vec<u16>,
    /// arpanet's own UDP listeners besides DNS (serf), likewise.
    pub udp_ports: Vec<u16>,
    pub peers: Vec<Peer>,
}

impl Plan {
    /// Consul's default RPC and serf ports, which arpanet does not change.
    pub const CONSUL_TCP: [u16; 3] = [8300, 8301, 8302];
    pub const CONSUL_UDP: [u16; 2] = [8301, 8302];
}

fn ports(list: impl IntoIterator<Item = u16>) -> String {
    let mut v: Vec<u16> = list.into_iter().collect();
    v.sort_unstable();
    v.dedup();
    v.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
}

/// The rules as they should be, per (table, chain), written the way `iptables -S`
/// prints them (it orders -s, -d, -i, -o, -p) so that comparing with it is exact.
/// The admitted chain comes before the input chain, which jumps to it.
pub fn desired_rules(plan: &Plan) -> Vec<(&'static str, &'static str, Vec<String>)> {
    let a = plan.address;
    let subnet: Ipv4Network = a.container_subnet();
    let (dev, ul, br) = (plan.device.as_str(), plan.underlay.as_str(), DOCKER_BRIDGE);
    let vx = plan.vxlan_port;
    let mut admitted = Vec::new();
    for p in plan.peers.iter().filter(|p| p.address != a) {
        admitted.push(format!(
            "-s {}/32 -i {ul} -p udp -m udp --dport {vx} -j ACCEPT",
            p.underlay_ip
        ));
        for ip in planes(p.address) {
            admitted.push(format!("-s {ip}/32 -i {dev} -j ACCEPT"));
        }
    }
    let consul = a.consul_ip();
    let bridge = a.bridge_ip();
    let dns = plan.dns_port;
    let mut input = vec![
        format!("-j {ADMITTED_CHAIN}"),
        format!("-p udp -m udp --dport {vx} -j DROP"),
        "-i lo -j RETURN".to_string(),
        "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN".to_string(),
    ];
    for (ip, from) in [(consul, dev), (consul, br), (bridge, br)] {
        for proto in ["udp", "tcp"] {
            input.push(format!(
                "-d {ip}/32 -i {from} -p {proto} -m {proto} --dport {dns} -j RETURN"
            ));
        }
    }
    for ip in planes(a) {
        input.push(format!(
            "-d {ip}/32 -p tcp -j REJECT --reject-with tcp-reset"
        ));
        input.push(format!("-d {ip}/32 -j DROP"));
    }
    let tcp = ports(plan.tcp_ports.iter().copied().chain([dns]));
    let udp = ports(
        plan.udp_ports
            .iter()
            .copied()
            .chain([dns, plan.hello_port, vx]),
    );
    input.push(format!(
        "-d {bridge}/32 -p tcp -m multiport --dports {tcp} -j REJECT --reject-with tcp-reset"
    ));
    input.push(format!(
        "-d {bridge}/32 -p udp -m multiport --dports {udp} -j DROP"
    ));
    input.push(format!(
        "! -i {ul} -p udp -m udp --dport {} -j DROP",
        plan.hello_port
    ));
    input.push(format!(
        "! -i {ul} -p tcp -m tcp --dport {} -j REJECT --reject-with tcp-reset",
        plan.join_port
    ));
    vec![
        (
            "filter",
            FORWARD_CHAIN,
            vec![
                format!("-i {br} -p udp -m udp --dport {vx} -j DROP"),
                format!("! -s {subnet} -i {br} -o {dev} -j DROP"),
                format!("-d {subnet} -i {dev} -j ACCEPT"),
                format!("-s {subnet} -o {dev} -j ACCEPT"),
            ],
        ),
        // ACCEPT in nat ends POSTROUTING for the packet: Docker's MASQUERADE is skipped.
        (
            "nat",
            NAT_CHAIN,
            vec![format!("-s {subnet} -o {dev} -j ACCEPT")],
        ),
        ("filter", ADMITTED_CHAIN, admitted),
        ("filter", INPUT_CHAIN, input),
    ]
}

fn planes(a: NodeAddress) -> [Ipv4Addr; 3] {
    [a.consul_ip(), a.docker_api_ip(), a.overlay_ip()]
}

fn parent(chain: &str) -> Option<&'static str> {
    match chain {
        FORWARD_CHAIN => Some("FORWARD"),
        INPUT_CHAIN => Some("INPUT"),
        NAT_CHAIN => Some("POSTROUTING"),
        _ => None,
    }
}

/// Only `-S`, `-C`, `-A`, `-I`, `-D` are used: `-L` (behind the crate's `chain_exists`)
/// looks every address up in DNS and hangs where no resolver answers, and the crate's
/// numeric mode adds `-n` to `-S`, which iptables refuses.
fn ipt() -> anyhow::Result<iptables::IPTables> {
    iptables::new(false).map_err(|e| anyhow!("iptables: {e}"))
}

fn has_chain(ipt: &iptables::IPTables, table: &str, chain: &str) -> anyhow::Result<bool> {
    let chains = ipt
        .list_chains(table)
        .map_err(|e| anyhow!("iptables -t {table} -S: {e}"))?;
    Ok(chains.iter().any(|c| c == chain))
}

/// Replaces whole chains in one `iptables-restore --noflush`: the kernel swaps them in
/// one transaction, so no packet ever meets a half-written chain (appending rule by
/// rule left admitted peers' VXLAN dropped, or the planes open, for the length of the
/// rewrite). Hand-written because the iptables crate has no restore.
fn restore(table: &str, chains: &[(&str, &[String])]) -> anyhow::Result<()> {
    let mut text = format!("*{table}\n");
    for (chain, _) in chains {
        text.push_str(&format!(":{chain} - [0:0]\n"));
    }
    for (chain, rules) in chains {
        for r in *rules {
            text.push_str(&format!("-A {chain} {r}\n"));
        }
    }
    text.push_str("COMMIT\n");
    let mut child = Command::new("iptables-restore")
        .args(["--noflush", "--wait"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("run iptables-restore")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(text.as_bytes())
        .context("write to iptables-restore")?;
    let out = child
        .wait_with_output()
        .context("wait for iptables-restore")?;
    if !out.status.success() {
        return Err(anyhow!(
            "iptables-restore -t {table}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Makes the chains hold exactly the desired rules and be jumped to first.
/// Returns a line per change made (none when all was in place).
pub fn ensure(plan: &Plan) -> anyhow::Result<Vec<String>> {
    let ipt = ipt()?;
    let err = |what: String| move |e: Box<dyn std::error::Error>| anyhow!("iptables {what}: {e}");
    let mut changes = Vec::new();
    let desired = desired_rules(plan);
    for table in ["filter", "nat"] {
        let mut stale: Vec<(&str, &[String])> = Vec::new();
        for (_, chain, rules) in desired.iter().filter(|(t, _, _)| *t == table) {
            let have = if has_chain(&ipt, table, chain)? {
                ipt.list(table, chain)
                    .map_err(err(format!("-t {table} -S {chain}")))?
            } else {
                Vec::new()
            };
            let want: Vec<String> = std::iter::once(format!("-N {chain}"))
                .chain(rules.iter().map(|r| format!("-A {chain} {r}")))
                .collect();
            if have != want {
                stale.push((chain, rules));
                changes.push(if have.is_empty() {
                    format!("create chain {table}/{chain}")
                } else {
                    format!("set rules of {table}/{chain}")
                });
            }
        }
        if !stale.is_empty() {
            restore(table, &stale)?;
        }
    }
    for (table, chain, _) in &desired {
        let Some(parent) = parent(chain) else {
            continue;
        };
        // First, not just present: Docker inserts its MASQUERADE at the top when it
        // (re)starts, and a jump below it would exempt nothing.
        let jump = format!("-j {chain}");
        let parent_rules = ipt
            .list(table, parent)
            .map_err(err(format!("-t {table} -S {parent}")))?;
        let first = parent_rules.iter().find(|r| r.starts_with("-A "));
        if first.map(String::as_str) != Some(format!("-A {parent} {jump}").as_str()) {
            let mut had = false;
            while ipt
                .exists(table, parent, &jump)
                .map_err(err(format!("-t {table} -C {parent}")))?
            {
                ipt.delete(table, parent, &jump)
                    .map_err(err(format!("-t {table} -D {parent}")))?;
                had = true;
            }
            ipt.insert(table, parent, &jump, 1)
                .map_err(err(format!("-t {table} -I {parent}")))?;
            changes.push(if had {
                format!("move the jump to {chain} back to the top of {table}/{parent}")
            } else {
                format!("jump to {chain} from {table}/{parent}")
            });
        }
    }
    Ok(changes)
}

/// Removes the jumps and chains; carries on past each failure and reports them all.
/// The input chain goes before the admitted chain it jumps to.
pub fn remove() -> Vec<String> {
    let ipt = match ipt() {
        Ok(ipt) => ipt,
        Err(e) => return vec![e.to_string()],
    };
    let mut errors = Vec::new();
    for (table, chain) in [
        ("filter", FORWARD_CHAIN),
        ("nat", NAT_CHAIN),
        ("filter", INPUT_CHAIN),
        ("filter", ADMITTED_CHAIN),
    ] {
        if let Some(parent) = parent(chain) {
            let jump = format!("-j {chain}");
            while ipt.exists(table, parent, &jump).unwrap_or(false) {
                if let Err(e) = ipt.delete(table, parent, &jump) {
                    errors.push(format!("iptables -t {table} -D {parent} {jump}: {e}"));
                    break;
                }
            }
        }
        if has_chain(&ipt, table, chain).unwrap_or(false)
            && let Err(e) = ipt.flush_chain(table, chain)
        {
            errors.push(format!("iptables -t {table} -F {chain}: {e}"));
        }
    }
    for (table, chain) in [
        ("filter", FORWARD_CHAIN),
        ("nat", NAT_CHAIN),
        ("filter", INPUT_CHAIN),
        ("filter", ADMITTED_CHAIN),
    ] {
        if has_chain(&ipt, table, chain).unwrap_or(false)
            && let Err(e) = ipt.delete_chain(table, chain)
        {
            errors.push(format!("iptables -t {table} -X {chain}: {e}"));
        }
    }
    errors
}

/// Routing between the overlay and the container bridge needs forwarding on.
pub fn ensure_ip_forward() -> anyhow::Result<bool> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_forward";
    let now = std::fs::read_to_string(PATH).map_err(|e| anyhow!("read {PATH}: {e}"))?;
    if now.trim() == "1" {
        return Ok(false);
    }
    std::fs::write(PATH, "1").map_err(|e| anyhow!("enable IP forwarding ({PATH}): {e}"))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers() -> Vec<Peer> {
        vec![
            Peer {
                address: "0.1".parse().unwrap(),
                underlay_ip: Ipv4Addr::new(192, 168, 8, 120),
            },
            Peer {
                address: "0.2".parse().unwrap(),
                underlay_ip: Ipv4Addr::new(192, 168, 8, 121),
            },
        ]
    }

    fn rules(peers: &[Peer]) -> Vec<(&'static str, &'static str, Vec<String>)> {
        desired_rules(&Plan {
            address: "0.1".parse().unwrap(),
            device: "arpanet0".into(),
            underlay: "eth1".into(),
            vxlan_port: 4789,
            hello_port: 7102,
            join_port: 7103,
            dns_port: 53,
            tcp_ports: vec![2376, 7100, 7101, 8500, 8300, 8301, 8302],
            udp_ports: vec![8301, 8302],
            peers: peers.to_vec(),
        })
    }

    fn chain(rules: &[(&str, &str, Vec<String>)], name: &str) -> Vec<String> {
        rules.iter().find(|r| r.1 == name).unwrap().2.clone()
    }

    #[test]
    fn vxlan_and_planes_are_admitted_per_peer_and_never_for_ourselves() {
        let r = rules(&peers());
        assert_eq!(
            chain(&r, ADMITTED_CHAIN),
            [
                "-s 192.168.8.121/32 -i eth1 -p udp -m udp --dport 4789 -j ACCEPT",
                "-s 10.253.0.2/32 -i arpanet0 -j ACCEPT",
                "-s 10.254.0.2/32 -i arpanet0 -j ACCEPT",
                "-s 10.255.0.2/32 -i arpanet0 -j ACCEPT",
            ]
        );
        assert!(chain(&rules(&[]), ADMITTED_CHAIN).is_empty());
        let names: Vec<&str> = r.iter().map(|c| c.1).collect();
        assert!(
            names.iter().position(|n| *n == ADMITTED_CHAIN)
                < names.iter().position(|n| *n == INPUT_CHAIN),
            "the admitted chain must exist before the input chain jumps to it"
        );
    }

    #[test]
    fn everything_else_is_denied_after_the_allow_list() {
        let input = chain(&rules(&peers()), INPUT_CHAIN);
        assert_eq!(input[0], "-j ARPANET-ADMITTED");
        assert_eq!(input[1], "-p udp -m udp --dport 4789 -j DROP");
        // DNS is the one thing containers, local and remote, get from a plane address.
        assert!(input.contains(
            &"-d 10.253.0.1/32 -i arpanet0 -p udp -m udp --dport 53 -j RETURN".to_string()
        ));
        assert!(
            input.contains(
                &"-d 10.0.1.1/32 -i docker0 -p tcp -m tcp --dport 53 -j RETURN".to_string()
            )
        );
        let first_deny = input.iter().position(|r| r.contains("REJECT")).unwrap();
        assert!(
            input[..first_deny]
                .iter()
                .all(|r| r.contains("--dport 53 -j RETURN")
                    || r.starts_with("-j ")
                    || r.contains("4789 -j DROP")
                    || r == "-i lo -j RETURN"
                    || r.contains("ESTABLISHED")),
            "{input:?}"
        );
        for ip in ["10.253.0.1", "10.254.0.1", "10.255.0.1"] {
            assert!(input.contains(&format!("-d {ip}/32 -j DROP")), "{ip}");
        }
        assert!(input.contains(
            &"-d 10.0.1.1/32 -p tcp -m multiport --dports 53,2376,7100,7101,8300,8301,8302,8500 -j REJECT --reject-with tcp-reset".to_string()
        ));
        // Hellos and joins are answered on the underlay interface only.
        assert_eq!(
            input[input.len() - 2..],
            [
                "! -i eth1 -p udp -m udp --dport 7102 -j DROP".to_string(),
                "! -i eth1 -p tcp -m tcp --dport 7103 -j REJECT --reject-with tcp-reset"
                    .to_string()
            ]
        );
    }

    #[test]
    fn containers_send_no_vxlan_nor_spoofed_sources_and_keep_theirs_on_the_overlay() {
        let r = rules(&peers());
        assert_eq!(
            chain(&r, FORWARD_CHAIN),
            [
                "-i docker0 -p udp -m udp --dport 4789 -j DROP",
                "! -s 10.0.1.0/24 -i docker0 -o arpanet0 -j DROP",
                "-d 10.0.1.0/24 -i arpanet0 -j ACCEPT",
                "-s 10.0.1.0/24 -o arpanet0 -j ACCEPT",
            ]
        );
        assert_eq!(
            chain(&r, NAT_CHAIN),
            ["-s 10.0.1.0/24 -o arpanet0 -j ACCEPT"]
        );
    }
}
