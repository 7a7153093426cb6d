//! Admission, attacked for real: three whole nodes (boot, server, client; Consul and
//! dockerd in lab namespaces) and a fourth host on the same underlay that is not a
//! node. It first runs arpanetd with another cluster secret, then forges VXLAN frames
//! the way an attacker would; containers on the nodes forge them too, and a Consul
//! writer registers claims for another node's address. Every packet stays inside the
//! lab's namespaces.

use crate::lab;
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::lab::{Host, Lab, TEST_IMAGE, assert_success, stdout, wait_until};

const CONSUL: &str = "[consul]\nmode = \"config\"\n";
/// The attacker's VTEP, as in the issue: MAC 02:61:72:70:c8:c8, 10.25x.200.200.
const EVIL_MAC: &str = "02:61:72:70:c8:c8";

fn status(host: &Host) -> serde_json::Value {
    let out = host.arpanet(&["status", "--json"]);
    assert_success(&out, "arpanet status --json");
    serde_json::from_slice(&out.stdout).expect("status JSON")
}

fn peer_state(host: &Host, address: &str) -> Option<String> {
    status(host)["peers"]
        .as_array()?
        .iter()
        .find(|p| p["address"] == address)
        .map(|p| p["state"].as_str().unwrap_or_default().to_string())
}

/// Packets counted by the first rule of `chain` (on `host`) that matches `needle`.
fn counter(host: &Host, chain: &str, needle: &str) -> u64 {
    let out = host.exec(&["iptables", "-v", "-S", chain]);
    assert_success(&out, "iptables -v -S");
    let text = stdout(&out);
    let line = text
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no rule with {needle:?} in {chain}:\n{text}"));
    let mut words = line.split_whitespace().skip_while(|w| *w != "-c");
    words
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter in {line:?}"))
}

/// Whether a TCP connection from inside `netns` (a namespace path) to `ip:port` opens
/// within 3 s (bash's /dev/tcp: success means the handshake completed).
fn tcp_opens(netns: &str, ip: Ipv4Addr, port: u16) -> bool {
    std::process::Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args(["--", "timeout", "3", "bash", "-c"])
        .arg(format!("exec 3<>/dev/tcp/{ip}/{port}"))
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("bash")
        .success()
}

fn ns(host: &Host) -> String {
    format!("/run/netns/{}", host.netns)
}

/// What any node has made of the attacker: FDB, neighbour, route and firewall entries.
fn traces(host: &Host, underlay_ip: Ipv4Addr, address: &str) -> Vec<String> {
    let a: arpanet::addressing::NodeAddress = address.parse().unwrap();
    let mac = arpanet::network::vtep_mac(a).to_string();
    let ul = underlay_ip.to_string();
    let subnet = a.container_subnet().to_string();
    let mut found = Vec::new();
    let cmds: [(&[&str], Vec<&str>); 4] = [
        (
            &["bridge", "fdb", "show", "dev", "arpanet0"],
            vec![&mac, EVIL_MAC, &ul],
        ),
        (
            &["ip", "neigh", "show", "dev", "arpanet0"],
            vec![&mac, EVIL_MAC, "10.255.200.200"],
        ),
        (&["ip", "route"], vec![&subnet, "10.200.200.0"]),
        (&["iptables-save"], vec![&ul]),
    ];
    for (cmd, needles) in cmds {
        let text = stdout(&host.exec(cmd));
        for line in text.lines() {
            if needles.iter().any(|n| line.contains(n)) {
                found.push(format!("{}: {line}", cmd.join(" ")));
            }
        }
    }
    found
}

/// One VXLAN datagram (VNI 1) carrying an ICMP echo from the attacker's VTEP to
/// `dst` (an overlay address), with valid checksums.
fn forged_vxlan(dst_mac: [u8; 6], dst: Ipv4Addr) -> Vec<u8> {
    fn sum(bytes: &[u8]) -> u16 {
        let mut s: u32 = bytes
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum();
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
    icmp.extend_from_slice(b"arpanet-forged");
    let c = sum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 1, 0, 0];
    ip[2..4].copy_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[10, 255, 200, 200]);
    ip.extend_from_slice(&dst.octets());
    let c = sum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut frame = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
    frame.extend_from_slice(&dst_mac);
    frame.extend_from_slice(&[0x02, 0x61, 0x72, 0x70, 0xc8, 0xc8, 0x08, 0x00]);
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&icmp);
    frame
}

/// Output of a shell command in a throwaway test container on `host`.
fn in_container(host: &Host, extra: &[&str], script: &str) -> String {
    let mut args = vec!["run", "--rm"];
    args.extend_from_slice(extra);
    args.extend([TEST_IMAGE, "sh", "-c", script]);
    let out = host.docker(&args);
    format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn nothing_that_is_not_a_node_reaches_a_node() {
    require_lab!();
    let lab = Lab::builder(4).start();
    lab.write_arpanet_config(0, "boot", &[1, 2], CONSUL);
    lab.write_arpanet_config(1, "server", &[0, 2], CONSUL);
    lab.write_arpanet_config(2, "client", &[0, 1], CONSUL);
    let (h0, h1, h2, out) = (&lab.hosts[0], &lab.hosts[1], &lab.hosts[2], &lab.hosts[3]);
    let nodes = [h0, h1, h2];
    Host::start_nodes(&nodes);
    for h in nodes {
        h.wait_for_nodes(3, Duration::from_secs(60));
    }

    // 1. A host with another cluster secret runs arpanetd naming the boot node: it is
    // turned away, and nobody programs anything for it.
    std::fs::write(
        out.dir.join("secret"),
        arpanet::consul::secret::generate().unwrap(),
    )
    .unwrap();
    lab.write_arpanet_config(3, "client", &[0], CONSUL);
    out.start_arpanetd();
    wait_until(
        Duration::from_secs(20),
        "the boot node to turn the stranger's hello away",
        || {
            status(h0)["admission"]["turned_away"]
                .as_array()
                .is_some_and(|t| {
                    t.iter().any(|r| {
                        r["from"] == out.underlay_ip.to_string()
                            && r["reason"].as_str().unwrap_or("").contains("signature")
                    })
                })
        },
    );
    let text = stdout(&h0.arpanet(&["status"]));
    assert!(
        text.contains(&format!("turned away  hello from {}", out.underlay_ip)),
        "{text}"
    );
    // Its own view: the boot node's answer never came (h0 does not answer a bad hello).
    assert_eq!(
        peer_state(out, "0.1").as_deref(),
        Some("not admitted (no valid hello from it yet)")
    );
    for h in nodes {
        assert_eq!(traces(h, out.underlay_ip, "0.4"), Vec::<String>::new());
    }
    out.stop("arpanetd");
    assert_success(
        &out.arpanet(&["uninstall-network"]),
        "the stranger's cleanup",
    );

    // 2. Forged VXLAN from the underlay, with no secret: its own device (VNI 1, port
    // 4789, MAC 02:61:72:70:c8:c8, 10.255.200.200/16) flooding to every node.
    let sh = |script: &str| {
        let o = out.exec(&["sh", "-c", script]);
        assert_success(&o, script);
    };
    sh(&format!(
        "ip link add vx0 type vxlan id 1 dstport 4789 dev eth1 local {} && \
         ip link set vx0 address {EVIL_MAC} && \
         ip addr add 10.255.200.200/16 dev vx0 && ip addr add 10.254.200.200/16 dev vx0 && \
         ip addr add 10.253.200.200/16 dev vx0 && ip link set vx0 up",
        out.underlay_ip
    ));
    for h in nodes {
        sh(&format!(
            "bridge fdb append 00:00:00:00:00:00 dev vx0 dst {}",
            h.underlay_ip
        ));
    }
    // The probe works, and nodes still reach each other's planes.
    assert!(tcp_opens(&ns(h1), h0.address.consul_ip(), 8500));
    assert!(tcp_opens(&ns(h2), h0.address.overlay_ip(), 7100));
    let dropped_before = counter(h0, "ARPANET-INPUT", "--dport 4789 -c");
    for h in nodes {
        let a = h.address;
        for (ip, port) in [
            (a.docker_api_ip(), 2376),
            (a.overlay_ip(), 7100),
            (a.overlay_ip(), 7101),
            (a.consul_ip(), 8500),
            (a.consul_ip(), 8300),
        ] {
            assert!(
                !tcp_opens(&ns(out), ip, port),
                "the forged VTEP reached {ip}:{port}"
            );
        }
        // Nor from the underlay address, nor routed through the node to its planes.
        for port in [2376, 7100, 8500, 8300, 8301] {
            assert!(
                !tcp_opens(&ns(out), h.underlay_ip, port),
                "{}:{port} answered on the underlay",
                h.underlay_ip
            );
        }
    }
    sh(&format!(
        "ip route add 10.253.0.1/32 via {} dev eth1 && ip route add 10.254.0.1/32 via {} dev eth1",
        h0.underlay_ip, h0.underlay_ip
    ));
    for (ip, port) in [
        ("10.253.0.1", 8500),
        ("10.253.0.1", 8300),
        ("10.254.0.1", 2376),
    ] {
        assert!(
            !tcp_opens(&ns(out), ip.parse().unwrap(), port),
            "{ip}:{port} answered a packet routed over the underlay"
        );
    }
    let dropped = counter(h0, "ARPANET-INPUT", "--dport 4789 -c") - dropped_before;
    assert!(dropped > 0, "no forged VXLAN packet was counted as dropped");
    // What listens on the underlay (the hello port) answers nothing to garbage, nor to
    // a well-formed hello signed with another key (a real UDP socket in the stranger's
    // namespace waits 2 s for any answer). That it answers valid hellos is what
    // admitted every node above.
    let probe = format!(
        "import socket,struct,time,os\n\
         s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         s.bind(('{me}',7102))\n\
         hello=b'ARPH'+bytes([1,0,0,4])+socket.inet_aton('{me}')+struct.pack('>Q',int(time.time()))+os.urandom(32)\n\
         for m in [b'ARPH-not-a-hello', hello, b'\\x00'*52]: s.sendto(m,('{to}',7102))\n\
         s.settimeout(2)\n\
         n=0\n\
         try:\n  while True: s.recvfrom(512); n+=1\n\
         except socket.timeout: pass\n\
         print('answers', n)\n",
        me = out.underlay_ip,
        to = h0.underlay_ip
    );
    let reply = out.exec(&["python3", "-c", &probe]);
    assert_success(&reply, "the hello-port probe");
    assert_eq!(
        stdout(&reply).trim(),
        "answers 0",
        "the hello port answered a stranger"
    );
    for h in nodes {
        assert_eq!(
            traces(h, out.underlay_ip, "0.4"),
            Vec::<String>::new(),
            "{} made entries for the forged VTEP",
            h.netns
        );
    }
    eprintln!("MEASURED: h0 dropped {dropped} forged VXLAN packets from the underlay");

    // 3. Forged VXLAN from containers. One with no capabilities sends frames from an
    // ordinary UDP socket to its bridge address and to another node's underlay IP.
    let frames = h0.dir.join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    std::fs::write(
        frames.join("frame.bin"),
        forged_vxlan([0x02, 0x61, 0x72, 0x70, 0, 1], h0.address.overlay_ip()),
    )
    .unwrap();
    let mount = format!("{}:/f:ro", frames.display());
    let input_before = counter(h0, "ARPANET-INPUT", "--dport 4789 -c");
    let forward_before = counter(h0, "ARPANET-FORWARD", "--dport 4789 -c");
    let bridge = h0.address.bridge_ip();
    // busybox's nc has no UDP: the host's bash (read-only, with its libraries) writes the
    // frames through an ordinary UDP socket, as an unprivileged user with no capabilities.
    let text = in_container(
        h0,
        &[
            "--cap-drop",
            "ALL",
            "--user",
            "65534",
            "-v",
            &mount,
            "-v",
            "/usr:/usr:ro",
            "-v",
            "/lib:/lib:ro",
            "-v",
            "/lib64:/lib64:ro",
        ],
        &format!(
            "for i in 1 2 3; do /usr/bin/bash -c 'cat /f/frame.bin > /dev/udp/{bridge}/4789' && \
             /usr/bin/bash -c 'cat /f/frame.bin > /dev/udp/{}/4789' && echo sent-$i; done",
            h1.underlay_ip
        ),
    );
    assert!(text.contains("sent-3"), "{text}");
    assert!(
        counter(h0, "ARPANET-INPUT", "--dport 4789 -c") >= input_before + 3,
        "frames to the bridge address were not dropped"
    );
    assert!(
        counter(h0, "ARPANET-FORWARD", "--dport 4789 -c") >= forward_before + 3,
        "frames to another node were not dropped on the way out"
    );
    // One with CAP_NET_ADMIN runs its own VXLAN device towards another node and its
    // own bridge (its namespace is entered with the host's iproute2; busybox has none).
    let run = h0.docker(&[
        "run",
        "-d",
        "--name",
        "evil",
        "--cap-add",
        "NET_ADMIN",
        TEST_IMAGE,
        "sleep",
        "600",
    ]);
    assert_success(&run, "docker run evil");
    let pid = stdout(&h0.docker(&["inspect", "-f", "{{.State.Pid}}", "evil"]))
        .trim()
        .to_string();
    let evil_ns = format!("/proc/{pid}/ns/net");
    let in_evil = |script: &str| {
        let o = std::process::Command::new("nsenter")
            .arg(format!("--net={evil_ns}"))
            .args(["--", "sh", "-c", script])
            .output()
            .unwrap();
        assert_success(&o, script);
    };
    in_evil(&format!(
        "ip link add vx0 type vxlan id 1 dstport 4789 dev eth0 && \
         ip link set vx0 address {EVIL_MAC} && ip addr add 10.255.200.200/16 dev vx0 && \
         ip addr add 10.254.200.200/16 dev vx0 && ip addr add 10.253.200.200/16 dev vx0 && \
         ip link set vx0 up && \
         bridge fdb append 00:00:00:00:00:00 dev vx0 dst {} && \
         bridge fdb append 00:00:00:00:00:00 dev vx0 dst {bridge}",
        h1.underlay_ip
    ));
    for h in [h0, h1] {
        let a = h.address;
        for (ip, port) in [
            (a.docker_api_ip(), 2376),
            (a.overlay_ip(), 7100),
            (a.consul_ip(), 8500),
        ] {
            // The container's own route to 10.25x is now its VXLAN device.
            assert!(
                !tcp_opens(&evil_ns, ip, port),
                "a container's own VXLAN device reached {ip}:{port}"
            );
        }
    }
    for h in nodes {
        assert_eq!(traces(h, out.underlay_ip, "0.4"), Vec::<String>::new());
        let fdb = stdout(&h.exec(&["bridge", "fdb", "show", "dev", "arpanet0"]));
        assert!(!fdb.contains(EVIL_MAC), "{}: {fdb}", h.netns);
    }
    assert_success(&h0.docker(&["rm", "-f", "evil"]), "docker rm evil");

    // 4. Containers get DNS from the node planes and nothing else, locally and across
    // hosts; their own traffic across hosts still works with source addresses kept.
    assert_success(&h1.docker(&lab::RUN_WEB), "docker run web on h1");
    let web_ip = stdout(&h1.docker(&["inspect", "-f", lab::IP_FORMAT, "web"]))
        .trim()
        .to_string();
    wait_until(Duration::from_secs(30), "web.service.consul", || {
        in_container(h0, &[], "nslookup web.service.consul").contains(&web_ip)
    });
    let mut script = String::new();
    for h in nodes {
        let c = h.address.consul_ip();
        script.push_str(&format!(
            "nslookup arpanet.service.consul {c} >/dev/null && echo dns-{c}-ok; \
             timeout 5 wget -q -O - http://{c}:8500/v1/status/leader && echo http-{c}-open; \
             timeout 5 wget -q -O /dev/null http://{c}:8300/ 2>&1 | grep -q refused || echo rpc-{c}-open; \
             timeout 5 wget -q -O - http://{}:7100/v1/nodes && echo api-{c}-open; ",
            h.address.overlay_ip()
        ));
    }
    script.push_str(&format!(
        "nslookup arpanet.service.consul >/dev/null && echo dns-bridge-ok; \
         timeout 10 wget -q -O - http://{web_ip}:8080/cgi-bin/whoami; \
         ip -4 -o addr show eth0"
    ));
    let text = in_container(h0, &[], &script);
    for h in nodes {
        let c = h.address.consul_ip();
        assert!(text.contains(&format!("dns-{c}-ok")), "DNS at {c}: {text}");
        for what in ["http", "rpc", "api"] {
            assert!(
                !text.contains(&format!("{what}-{c}-open")),
                "a container reached {what} at {c}: {text}"
            );
        }
    }
    assert!(text.contains("dns-bridge-ok"), "{text}");
    let own = text
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|c| c.split('/').next())
        .unwrap_or_else(|| panic!("no address in {text}"))
        .to_string();
    assert!(
        text.contains(&format!("[::ffff:{own}]")) || text.contains(&format!("\n{own}\n")),
        "the web server on h1 must see the caller's own address: {text}"
    );

    // 5. Poisoned catalog entries. A Consul writer on h2 registers an `arpanet` service
    // claiming 0.2 at the stranger's underlay IP; then a whole fake node at 0.2's Consul
    // address does the same. h1 (0.2) stays where it is on every node.
    let register = format!(
        "{{\"ID\":\"evil\",\"Name\":\"arpanet\",\"Address\":\"10.255.0.2\",\"Port\":7100,\
         \"Meta\":{{\"arpanet_address\":\"0.2\",\"underlay_ip\":\"{}\"}}}}",
        out.underlay_ip
    );
    // Straight to h2's agent. Consul's ACLs refuse a writer without a token; h2's own
    // token (a node gone bad) may register services, so the claim is made with it.
    let token = |path: &std::path::Path| {
        let t = std::fs::read_to_string(path).expect("a token file");
        format!("X-Consul-Token: {}", t.trim())
    };
    let node_token = token(&h2.identity_dir().join("consul-agent.token"));
    let try_put = |path: &str, body: &str, header: Option<&str>| {
        let url = format!("http://127.0.0.1:8500{path}");
        let mut args = vec!["curl", "-sf", "-X", "PUT", "--data", body, &url];
        if let Some(h) = header {
            args.extend(["-H", h]);
        }
        h2.exec(&args)
    };
    let put = |path: &str, body: &str, header: &str| {
        assert_success(&try_put(path, body, Some(header)), path);
    };
    assert!(
        !try_put("/v1/agent/service/register", &register, None)
            .status
            .success(),
        "a register without a token is refused"
    );
    put("/v1/agent/service/register", &register, &node_token);
    wait_until(
        Duration::from_secs(20),
        "the forged claim to be refused",
        || {
            status(h0)["admission"]["refused_claims"]
                .as_array()
                .is_some_and(|r| {
                    r.iter().any(|c| {
                        c["node"] == "h2"
                            && c["reason"]
                                .as_str()
                                .unwrap_or("")
                                .contains("not 10.253.0.2")
                    })
                })
        },
    );
    let twin = format!(
        "{{\"Node\":\"evil\",\"Address\":\"10.253.0.2\",\"Service\":{{\"ID\":\"arpanet\",\
         \"Service\":\"arpanet\",\"Address\":\"10.255.0.2\",\"Port\":7100,\
         \"Meta\":{{\"arpanet_address\":\"0.2\",\"underlay_ip\":\"{}\"}}}}}}",
        out.underlay_ip
    );
    // A whole other node is more than h2's token may write; a writer with every
    // right (the management token) is what the catalog check must still hold against.
    assert!(
        !try_put("/v1/catalog/register", &twin, Some(&node_token))
            .status
            .success(),
        "h2's token cannot register node `evil`"
    );
    let management = token(&h0.identity_dir().join("consul-management.token"));
    put("/v1/catalog/register", &twin, &management);
    wait_until(Duration::from_secs(20), "the conflict to be shown", || {
        stdout(&h0.arpanet(&["status"])).contains("conflicting claims for 0.2")
    });
    // A few resync periods for anything that would follow the claims.
    std::thread::sleep(Duration::from_secs(3));
    for h in [h0, h2] {
        let fdb = stdout(&h.exec(&["bridge", "fdb", "show", "dev", "arpanet0"]));
        assert!(
            fdb.contains(&format!("02:61:72:70:00:02 dst {}", h1.underlay_ip)),
            "{}: {fdb}",
            h.netns
        );
        assert_eq!(traces(h, out.underlay_ip, "0.4"), Vec::<String>::new());
        assert_eq!(peer_state(h, "0.2").as_deref(), Some("ok"));
    }

    lab.teardown().expect("teardown");
}

/// Whether `host`'s status says a hello from `from` was turned away for a reason
/// containing `needle`; with when it was last turned away (unix seconds).
fn turned_away(host: &Host, from: Ipv4Addr, needle: &str) -> Option<u64> {
    status(host)["admission"]["turned_away"]
        .as_array()?
        .iter()
        .find(|r| {
            r["from"] == from.to_string() && r["reason"].as_str().unwrap_or("").contains(needle)
        })
        .and_then(|r| r["at"].as_u64())
}

/// A node removed with its certificate revoked still holds the cluster secret and keeps
/// sending hellos: once its serial is in the other nodes' revoked.json, they turn it
/// away for that reason, and its overlay entries go (Consul off: hellos are the only
/// way in), while they keep admitting each other.
#[test]
fn a_node_whose_certificate_is_revoked_is_no_longer_admitted_by_hello() {
    require_lab!();
    let lab = Lab::builder(3).start();
    lab.write_arpanet_configs("[consul]\nmode = \"disabled\"\n");
    for host in &lab.hosts {
        host.start_arpanetd();
    }
    let (h0, h1, h2) = (&lab.hosts[0], &lab.hosts[1], &lab.hosts[2]);
    for host in [h0, h1] {
        wait_until(Duration::from_secs(20), "0.3 admitted by hello", || {
            peer_state(host, "0.3").as_deref() == Some("ok")
        });
    }
    let cert = std::fs::read_to_string(h2.identity_files().node_cert()).unwrap();
    let serial = arpanet::identity::CertInfo::from_pem(&cert).unwrap().serial;
    for host in [h0, h1] {
        std::fs::write(
            host.dir.join("state/revoked.json"),
            serde_json::to_vec(&[&serial]).unwrap(),
        )
        .unwrap();
    }
    let reason = format!("its certificate (serial {serial}) is revoked");
    for host in [h0, h1] {
        let first = wait_until_some(
            Duration::from_secs(20),
            "the revoked node turned away",
            || turned_away(host, h2.underlay_ip, &reason),
        );
        // Its hello admission runs out (ADMITTED_FOR) and its entries are removed.
        wait_until(Duration::from_secs(40), "0.3 no longer admitted", || {
            peer_state(host, "0.3").as_deref() == Some("not admitted (no valid hello from it yet)")
        });
        let fdb = stdout(&host.exec(&["bridge", "fdb", "show", "dev", "arpanet0"]));
        assert!(
            !fdb.contains(&h2.underlay_ip.to_string()),
            "{}: {fdb}",
            host.netns
        );
        assert!(!host.admits(&h2.underlay_ip.to_string()));
        // It keeps sending, and keeps being turned away for the same reason.
        wait_until(Duration::from_secs(15), "another hello turned away", || {
            turned_away(host, h2.underlay_ip, &reason).is_some_and(|at| at > first)
        });
        let text = stdout(&host.arpanet(&["status"]));
        assert!(
            text.contains(&format!(
                "turned away  hello from {}: {reason}",
                h2.underlay_ip
            )),
            "{text}"
        );
    }
    // The others still admit each other.
    assert_eq!(peer_state(h0, "0.2").as_deref(), Some("ok"));
    assert_eq!(peer_state(h1, "0.1").as_deref(), Some("ok"));
    lab.teardown().expect("teardown");
}

fn wait_until_some<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let mut got = None;
    wait_until(timeout, what, || {
        got = f();
        got.is_some()
    });
    got.expect("set by wait_until")
}
