//! Forwarding and NAT rules the overlay needs next to Docker's own.
//!
//! Docker sets FORWARD's policy to DROP and masquerades everything its containers
//! send out of the bridge. Overlay traffic must instead be forwarded into the local
//! container subnet and leave with its container source address intact, so the
//! receiving host sees who called. Rules live in arpanet's own chains, jumped to
//! from the top of FORWARD and nat POSTROUTING, so Docker's restarts and rewrites
//! never reorder them and uninstall removes exactly what was added.
//!
//! The Docker API (10.254.a.b) and the cluster API (10.255.a.b) answer only the node
//! planes (10.253-10.255/16): containers reach those addresses over the overlay too,
//! and either API lets its caller run anything, privileged, on the host.

use anyhow::anyhow;
use ipnetwork::Ipv4Network;

pub const FORWARD_CHAIN: &str = "ARPANET-FORWARD";
pub const NAT_CHAIN: &str = "ARPANET-POSTROUTING";
pub const INPUT_CHAIN: &str = "ARPANET-INPUT";

/// What the INPUT rules guard: the host's node address, its two API ports and the
/// image sync peer port (images are not for containers to fetch).
#[derive(Debug, Clone, Copy)]
pub struct Guarded {
    pub address: crate::addressing::NodeAddress,
    pub docker_api_port: u16,
    pub cluster_api_port: u16,
    pub sync_peer_port: u16,
}

/// The rules as they should be, per (table, chain), written the way `iptables -S`
/// prints them (it orders -s, -d, -i, -o) so that comparing with it is exact.
pub fn desired_rules(
    device: &str,
    container_subnet: Ipv4Network,
    guarded: Guarded,
) -> [(&'static str, &'static str, Vec<String>); 3] {
    let a = guarded.address;
    let reject = |ip: std::net::Ipv4Addr, port: u16| {
        format!("-d {ip}/32 -p tcp -m tcp --dport {port} -j REJECT --reject-with tcp-reset")
    };
    [
        (
            "filter",
            FORWARD_CHAIN,
            vec![
                format!("-d {container_subnet} -i {device} -j ACCEPT"),
                format!("-s {container_subnet} -o {device} -j ACCEPT"),
            ],
        ),
        // ACCEPT in nat ends POSTROUTING for the packet: Docker's MASQUERADE is skipped.
        (
            "nat",
            NAT_CHAIN,
            vec![format!("-s {container_subnet} -o {device} -j ACCEPT")],
        ),
        (
            "filter",
            INPUT_CHAIN,
            vec![
                "-s 10.253.0.0/16 -j RETURN".to_string(),
                "-s 10.254.0.0/16 -j RETURN".to_string(),
                "-s 10.255.0.0/16 -j RETURN".to_string(),
                reject(a.docker_api_ip(), guarded.docker_api_port),
                reject(a.overlay_ip(), guarded.cluster_api_port),
                reject(a.overlay_ip(), guarded.sync_peer_port),
            ],
        ),
    ]
}

fn parent(chain: &str) -> &'static str {
    match chain {
        FORWARD_CHAIN => "FORWARD",
        INPUT_CHAIN => "INPUT",
        _ => "POSTROUTING",
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

/// Makes the chains hold exactly the desired rules and be jumped to first.
/// Returns a line per change made (none when all was in place).
pub fn ensure(
    device: &str,
    container_subnet: Ipv4Network,
    guarded: Guarded,
) -> anyhow::Result<Vec<String>> {
    let ipt = ipt()?;
    let err = |what: String| move |e: Box<dyn std::error::Error>| anyhow!("iptables {what}: {e}");
    let mut changes = Vec::new();
    for (table, chain, rules) in desired_rules(device, container_subnet, guarded) {
        if !has_chain(&ipt, table, chain)? {
            ipt.new_chain(table, chain)
                .map_err(err(format!("-t {table} -N {chain}")))?;
            changes.push(format!("create chain {table}/{chain}"));
        }
        let have = ipt
            .list(table, chain)
            .map_err(err(format!("-t {table} -S {chain}")))?;
        let want: Vec<String> = std::iter::once(format!("-N {chain}"))
            .chain(rules.iter().map(|r| format!("-A {chain} {r}")))
            .collect();
        if have != want {
            ipt.flush_chain(table, chain)
                .map_err(err(format!("-t {table} -F {chain}")))?;
            for rule in &rules {
                ipt.append(table, chain, rule)
                    .map_err(err(format!("-t {table} -A {chain} {rule}")))?;
            }
            changes.push(format!("set rules of {table}/{chain}"));
        }
        // First, not just present: Docker inserts its MASQUERADE at the top when it
        // (re)starts, and a jump below it would exempt nothing.
        let jump = format!("-j {chain}");
        let parent = parent(chain);
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
    ] {
        let parent = parent(chain);
        let jump = format!("-j {chain}");
        while ipt.exists(table, parent, &jump).unwrap_or(false) {
            if let Err(e) = ipt.delete(table, parent, &jump) {
                errors.push(format!("iptables -t {table} -D {parent} {jump}: {e}"));
                break;
            }
        }
        if has_chain(&ipt, table, chain).unwrap_or(false) {
            if let Err(e) = ipt.flush_chain(table, chain) {
                errors.push(format!("iptables -t {table} -F {chain}: {e}"));
            }
            if let Err(e) = ipt.delete_chain(table, chain) {
                errors.push(format!("iptables -t {table} -X {chain}: {e}"));
            }
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

    fn guarded() -> Guarded {
        Guarded {
            address: "0.1".parse().unwrap(),
            docker_api_port: 2375,
            cluster_api_port: 7100,
            sync_peer_port: 7101,
        }
    }

    #[test]
    fn only_node_planes_reach_the_apis_and_the_peer_port() {
        let rules = desired_rules("arpanet0", "10.0.1.0/24".parse().unwrap(), guarded());
        assert_eq!(rules[2].1, INPUT_CHAIN);
        assert_eq!(
            rules[2].2[3..],
            [
                "-d 10.254.0.1/32 -p tcp -m tcp --dport 2375 -j REJECT --reject-with tcp-reset",
                "-d 10.255.0.1/32 -p tcp -m tcp --dport 7100 -j REJECT --reject-with tcp-reset",
                "-d 10.255.0.1/32 -p tcp -m tcp --dport 7101 -j REJECT --reject-with tcp-reset",
            ]
        );
    }

    #[test]
    fn rules_exempt_only_overlay_traffic_from_masquerade() {
        let rules = desired_rules("arpanet0", "10.0.1.0/24".parse().unwrap(), guarded());
        assert_eq!(rules[1].2, ["-s 10.0.1.0/24 -o arpanet0 -j ACCEPT"]);
        assert!(
            rules[0]
                .2
                .contains(&"-d 10.0.1.0/24 -i arpanet0 -j ACCEPT".to_string())
        );
    }
}
