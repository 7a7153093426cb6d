//! A multi-host test lab: N simulated hosts, each a network namespace with its own
//! dockerd and Consul agent, joined by a bridge that lives in a namespace of its own
//! (the underlay). The root namespace gets no address on it, so test traffic can only
//! flow between namespaces this lab created.
//!
//! Teardown works from what is on disk (pidfiles, the lab directory, namespace names),
//! so the same code cleans up after a panicking test (Drop) and after a test process
//! that was killed outright (the sweep every new lab runs first).

#![allow(dead_code, unused_macros)] // each bench uses a different part of the lab

use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arpanet::addressing::NodeAddress;

pub mod cluster;
pub mod machine;

const LAB_ROOT: &str = "/tmp/arpanet-lab";
const NETNS_DIR: &str = "/run/netns";
/// Every lab's namespaces and directory start with this, followed by the owner's pid.
const PREFIX: &str = "arpl";
pub const TEST_IMAGE: &str = "arpanet-test/busybox:1";

/// `docker` arguments that run the test web server as `web`, registered as service
/// `web` on port 8080 (its CGI /cgi-bin/whoami answers the caller's address).
pub const RUN_WEB: [&str; 15] = [
    "run",
    "-d",
    "--name",
    "web",
    "-l",
    "arpanet.service=web",
    "--expose",
    "8080",
    TEST_IMAGE,
    "httpd",
    "-f",
    "-p",
    "8080",
    "-h",
    "/www",
];

/// `docker inspect -f` template for a container's address on its network.
pub const IP_FORMAT: &str = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}";
const UNDERLAY_NET: [u8; 3] = [192, 168, 100];

static NEXT_LAB: AtomicUsize = AtomicUsize::new(0);

/// Tools the lab runs. Under CI=true a missing one fails the test; elsewhere the test
/// is skipped with a message saying what to install.
const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("nsenter", "util-linux"),
    ("dockerd", "docker.io"),
    ("docker", "docker.io"),
    ("consul", "../shared/ci/install-consul"),
    ("busybox", "busybox-static"),
    // A real OCI client for the node registry (registry.rs), and curl for raw requests.
    ("skopeo", "skopeo"),
    ("curl", "curl"),
];

/// A cluster secret as `arpanet secret` makes one (32 random bytes, base64): arpanet
/// refuses secrets weaker than 128 bits.
pub fn random_secret() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("randomness for a lab secret");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The opener of every lab test: returns from the test (a skip, said on stderr) when
/// the lab cannot run here, and fails it under CI=true (see [`available`]).
/// `require_lab!(machines)` needs systemd-nspawn machines too.
macro_rules! require_lab {
    () => {
        if !$crate::lab::available() {
            return;
        }
    };
    (machines) => {
        if !$crate::lab::available() || !$crate::lab::machine::available() {
            return;
        }
    };
}

/// Returns whether lab tests can run here; panics under CI=true when they cannot.
pub fn available() -> bool {
    let mut missing = Vec::new();
    if std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
        != 0
    {
        missing.push("root (network namespaces need it)".to_string());
    }
    for (tool, package) in TOOLS {
        if which(tool).is_none() {
            missing.push(format!("`{tool}` (install {package})"));
        }
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("lab tests need {}", missing.join(", "));
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg}; CI=true, so this fails instead of skipping");
    }
    eprintln!("SKIPPED: {msg}");
    false
}

/// A random UUID, as `arpanet boot` makes Consul tokens.
pub fn random_uuid() -> String {
    arpanet::consul::acl::random_uuid().expect("randomness for a token")
}

/// A token file as arpanet writes it (0600).
fn write_private(path: &Path, token: &str) {
    arpanet::consul::acl::write_token_file(path, token).expect("write a token file");
}

pub fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

/// The docker CLI of the engine's own package: the image may ship a newer client
/// elsewhere on PATH whose legacy behaviours differ.
pub fn docker_cli() -> PathBuf {
    let packaged = PathBuf::from("/usr/bin/docker");
    if packaged.is_file() {
        packaged
    } else {
        which("docker").expect("docker on PATH")
    }
}

pub enum Dockerd {
    /// The lab's own flags: a unix socket in the host dir and `--bip` from the plan.
    Plain,
    /// Everything from this daemon.json (as arpanet writes it).
    ConfigFile(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsulRole {
    Server,
    Client,
}

pub struct LabBuilder {
    hosts: usize,
    docker: bool,
    consul_servers: Option<usize>,
}

impl LabBuilder {
    /// Run a dockerd on every host (with the test image loaded).
    pub fn docker(mut self) -> Self {
        self.docker = true;
        self
    }

    /// Run Consul on every host: the first `servers` hosts as servers, the rest as clients.
    pub fn consul(mut self, servers: usize) -> Self {
        assert!(servers >= 1 && servers <= self.hosts);
        self.consul_servers = Some(servers);
        self
    }

    pub fn start(self) -> Lab {
        sweep_dead_labs();
        let name = format!(
            "{PREFIX}{}x{}",
            std::process::id(),
            NEXT_LAB.fetch_add(1, Ordering::Relaxed)
        );
        let dir = Path::new(LAB_ROOT).join(&name);
        std::fs::create_dir_all(&dir).expect("create lab dir");
        let mut lab = Lab {
            name: name.clone(),
            dir: dir.clone(),
            hosts: Vec::new(),
            secret: random_secret(),
            ca: arpanet::identity::Ca::generate("arpanet-lab").expect("the lab's CA"),
            torn_down: false,
        };
        // From here on a panic drops `lab`, which tears down whatever was made.
        lab.create_underlay();
        for index in 0..self.hosts {
            let consul = self.consul_servers.map(|s| {
                if index < s {
                    ConsulRole::Server
                } else {
                    ConsulRole::Client
                }
            });
            lab.add_host(index, consul);
        }
        if self.docker {
            for host in &lab.hosts {
                host.start_dockerd(Dockerd::Plain);
            }
            for host in &lab.hosts {
                host.wait_for_dockerd();
                host.import_test_image();
            }
        }
        if let Some(servers) = self.consul_servers {
            let server_ips: Vec<Ipv4Addr> =
                lab.hosts[..servers].iter().map(|h| h.underlay_ip).collect();
            for host in &lab.hosts {
                host.start_consul(servers, &server_ips);
            }
            lab.wait_for_consul();
        }
        lab
    }
}

pub struct Lab {
    pub name: String,
    pub dir: PathBuf,
    pub hosts: Vec<Host>,
    /// The cluster secret every host gets unless the test writes another.
    pub secret: String,
    /// The lab's cluster CA: every host configured by the lab gets a certificate from it.
    pub ca: arpanet::identity::Ca,
    torn_down: bool,
}

pub struct Host {
    pub index: usize,
    /// The network namespace standing in for this host.
    pub netns: String,
    pub address: NodeAddress,
    /// Address on the lab's underlay (the network the hosts already share).
    pub underlay_ip: Ipv4Addr,
    /// The underlay interface inside the host, as in the example config.
    pub underlay_interface: String,
    pub dir: PathBuf,
    pub consul: Option<ConsulRole>,
    /// Processes this host runs, waited for after teardown so none is left a zombie.
    children: Mutex<Vec<Child>>,
}

impl Lab {
    pub fn builder(hosts: usize) -> LabBuilder {
        assert!((1..=200).contains(&hosts));
        LabBuilder {
            hosts,
            docker: false,
            consul_servers: None,
        }
    }

    fn underlay_netns(&self) -> String {
        format!("{}-ul", self.name)
    }

    fn create_underlay(&self) {
        let ns = self.underlay_netns();
        sh(Command::new("ip").args(["netns", "add", &ns]));
        sh(Command::new("ip").args(["-n", &ns, "link", "add", "br0", "type", "bridge"]));
        sh(Command::new("ip").args(["-n", &ns, "link", "set", "br0", "up"]));
    }

    fn add_host(&mut self, index: usize, consul: Option<ConsulRole>) {
        let netns = format!("{}-h{index}", self.name);
        let dir = self.dir.join(format!("h{index}"));
        std::fs::create_dir_all(&dir).expect("create host dir");
        let underlay_ip = Ipv4Addr::new(
            UNDERLAY_NET[0],
            UNDERLAY_NET[1],
            UNDERLAY_NET[2],
            10 + index as u8,
        );
        let host = Host {
            index,
            netns: netns.clone(),
            address: NodeAddress::new(0, index as u8 + 1).expect("lab address"),
            underlay_ip,
            underlay_interface: "eth1".into(),
            dir,
            consul,
            children: Mutex::new(Vec::new()),
        };
        // Push before configuring so a failure below still tears this host down.
        self.hosts.push(host);
        let ul = self.underlay_netns();
        let port = format!("h{index}");
        sh(Command::new("ip").args(["netns", "add", &netns]));
        sh(Command::new("ip").args([
            "link", "add", "eth1", "netns", &netns, "type", "veth", "peer", "name", &port, "netns",
            &ul,
        ]));
        sh(Command::new("ip").args(["-n", &ul, "link", "set", &port, "master", "br0", "up"]));
        sh(Command::new("ip").args(["-n", &netns, "link", "set", "lo", "up"]));
        sh(Command::new("ip").args([
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{underlay_ip}/24"),
            "dev",
            "eth1",
        ]));
        sh(Command::new("ip").args(["-n", &netns, "link", "set", "eth1", "up"]));
    }

    fn wait_for_consul(&self) {
        let expected = self.hosts.len();
        wait_until(
            Duration::from_secs(90),
            "every Consul agent to see all members alive",
            || {
                self.hosts
                    .iter()
                    .all(|h| h.consul_alive_members().len() == expected)
            },
        );
        // A KV write needs an elected leader.
        wait_until(
            Duration::from_secs(60),
            "a Consul leader (a KV write to succeed)",
            || {
                self.hosts[0]
                    .consul(&["kv", "put", "arpanet-lab/ready", "1"])
                    .status
                    .success()
            },
        );
    }

    /// tbf on both ends of the host's underlay veth: what it sends and what it receives.
    pub fn shape(&self, h: &Host, rate_mbit: usize) {
        for (netns, dev) in self.underlay_ends(h) {
            let out = Command::new("ip")
                .args([
                    "netns", "exec", &netns, "tc", "qdisc", "replace", "dev", &dev,
                ])
                .args(["root", "tbf", "rate", &format!("{rate_mbit}mbit")])
                .args(["burst", "256kb", "latency", "100ms"])
                .output()
                .expect("tc");
            assert_success(&out, &format!("tc on {dev} in {netns}"));
        }
    }

    fn underlay_ends(&self, h: &Host) -> [(String, String); 2] {
        [
            (h.netns.clone(), h.underlay_interface.clone()),
            (format!("{}-ul", self.name), format!("h{}", h.index)),
        ]
    }

    /// Tears everything down and reports every error, not only the first.
    pub fn teardown(mut self) -> Result<(), String> {
        self.torn_down = true;
        let errors = self.teardown_and_reap();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("\n"))
        }
    }

    /// What every host's processes said last: the first thing to read when a test failed.
    fn print_log_tails(&self) {
        for host in &self.hosts {
            let Ok(entries) = std::fs::read_dir(&host.dir) else {
                continue;
            };
            let mut logs: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .collect();
            logs.sort();
            for log in logs {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                // LAB_LOG_LINES shows more when a failure needs it.
                let keep = std::env::var("LAB_LOG_LINES")
                    .ok()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(25);
                let tail = &lines[lines.len().saturating_sub(keep)..];
                eprintln!(
                    "==== {} (last {} lines)\n{}",
                    log.display(),
                    tail.len(),
                    tail.join("\n")
                );
            }
        }
    }

    fn teardown_and_reap(&mut self) -> Vec<String> {
        let errors = teardown_lab(&self.name, &self.dir);
        for host in &self.hosts {
            for mut child in host.children.lock().unwrap().drain(..) {
                // Dead by now (or reported in `errors`); this only collects the exit status.
                let _ = child.try_wait();
            }
        }
        errors
    }

    /// Writes an arpanet.toml for every host: host 0 boots, the others are servers,
    /// every other host is a join peer, paths and sockets live in the host's directory,
    /// Docker is configured by file only. `extra` is appended (e.g. a `[consul]` table).
    /// Three whole nodes (boot, server, client; Consul run as arpanet runs it), once
    /// every node's API lists all three.
    pub fn three_nodes() -> Lab {
        Lab::three_nodes_with("")
    }

    /// [`Lab::three_nodes`] with `extra` appended to every arpanet.toml (e.g. a
    /// `[registry]` table).
    pub fn three_nodes_with(extra: &str) -> Lab {
        let lab = Lab::builder(3).start();
        let config = format!("[consul]\nmode = \"config\"\n{extra}");
        lab.write_arpanet_config(0, "boot", &[1, 2], &config);
        lab.write_arpanet_config(1, "server", &[0, 2], &config);
        lab.write_arpanet_config(2, "client", &[0, 1], &config);
        let hosts: Vec<&Host> = lab.hosts.iter().collect();
        Host::start_nodes(&hosts);
        for h in &hosts {
            h.wait_for_nodes(3, Duration::from_secs(60));
        }
        lab
    }

    pub fn write_arpanet_configs(&self, extra: &str) -> Vec<PathBuf> {
        (0..self.hosts.len())
            .map(|i| {
                let role = if i == 0 { "boot" } else { "server" };
                let join: Vec<usize> = (0..self.hosts.len()).filter(|j| *j != i).collect();
                self.write_arpanet_config(i, role, &join, extra)
            })
            .collect()
    }

    /// One host running dockerd, configured for containers.d without Consul. Returns
    /// the lab, the host's config path and its (created) containers.d.
    pub fn containers_host() -> (Lab, PathBuf, PathBuf) {
        let lab = Lab::builder(1).docker().start();
        let config = lab.write_arpanet_config(0, "boot", &[], "[consul]\nmode = \"disabled\"\n");
        let dir = lab.hosts[0].dir.join("containers.d");
        std::fs::create_dir_all(&dir).expect("create containers.d");
        (lab, config, dir)
    }

    /// Writes host `index`'s arpanet.toml with this role and these hosts as join peers.
    /// The cluster secret is the lab's unless the host has one already.
    /// Gives host `index` a fresh key and a certificate from the lab's CA for `role`
    /// (servers also hold the CA key, as `arpanet boot` and server joins leave it).
    pub fn enroll(&self, index: usize, role: arpanet::identity::Role) {
        let host = &self.hosts[index];
        let files = host.identity_files();
        let identity = arpanet::identity::NodeIdentity {
            cluster: "arpanet-lab".into(),
            address: host.address,
            role,
        };
        arpanet::identity::enroll_locally(&self.ca, &files, &identity).expect("enroll a lab host");
        if role == arpanet::identity::Role::Server {
            self.ca.store(&files).expect("store the lab CA on a server");
        }
    }

    pub fn write_arpanet_config(
        &self,
        index: usize,
        role: &str,
        join: &[usize],
        extra: &str,
    ) -> PathBuf {
        let host = &self.hosts[index];
        let secret = host.dir.join("secret");
        if !secret.exists() {
            std::fs::write(&secret, format!("{}\n", self.secret)).expect("write secret");
        }
        let files = host.identity_files();
        if !arpanet::identity::LocalIdentity::present(&files) {
            let role = if role == "client" {
                arpanet::identity::Role::Client
            } else {
                arpanet::identity::Role::Server
            };
            self.enroll(index, role);
        }
        let others: Vec<&Host> = join.iter().map(|j| &self.hosts[*j]).collect();
        let path = host.write_arpanet_config(role, &others, extra);
        // Consul's ACL tokens as `arpanet boot` makes them: the servers hold the lab's
        // management token (whichever is elected first creates it); every host has
        // its own agent token SecretID, which a server's arpanetd makes into its own
        // token, and the boot host (standing in for the join service, see
        // [`Host::start_consul_agent`]) makes into a client's.
        let identity = host.identity_dir();
        let agent = identity.join("consul-agent.token");
        if !agent.exists() {
            write_private(&agent, &random_uuid());
        }
        let management = self.dir.join("consul-management.token");
        if !management.exists() {
            write_private(&management, &random_uuid());
        }
        if role == "boot" || role == "server" {
            let text = std::fs::read_to_string(&management).expect("read the management token");
            write_private(&identity.join("consul-management.token"), text.trim());
        }
        if role == "boot" {
            std::fs::write(
                self.dir.join("boot-node"),
                format!("{}\n{}\n", host.netns, path.display()),
            )
            .expect("write boot-node");
        }
        path
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        if std::thread::panicking() {
            self.print_log_tails();
        }
        let errors = self.teardown_and_reap();
        if !errors.is_empty() {
            let msg = format!("lab {} teardown:\n{}", self.name, errors.join("\n"));
            if std::thread::panicking() {
                eprintln!("{msg}");
            } else {
                panic!("{msg}");
            }
        }
    }
}

impl Host {
    pub fn docker_socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    /// Runs a command inside this host's network namespace (and nowhere else).
    pub fn exec(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run nsenter")
    }

    /// `args` to run in this host's namespace, for a test to spawn and talk to.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={NETNS_DIR}/{}", self.netns))
            .arg("--")
            .args(args);
        c
    }

    /// The docker CLI against this host's engine (over its unix socket).
    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new(docker_cli())
            .arg("-H")
            .arg(format!("unix://{}", self.docker_socket().display()))
            .args(args)
            .output()
            .expect("run docker")
    }

    /// The consul CLI against this host's agent, from inside the host:
    /// `consul(&["kv", "put", "k", "v"])`.
    pub fn consul(&self, args: &[&str]) -> Output {
        // Consul wants flags between the subcommand and its positional arguments.
        let (sub, rest) = args.split_at(if args.len() > 1 && matches!(args[0], "kv" | "catalog") {
            2
        } else {
            1
        });
        let mut full = vec!["consul"];
        full.extend_from_slice(sub);
        full.push("-http-addr=127.0.0.1:8500");
        // A node's own token, as arpanet's requests carry it (Consul with ACLs on).
        let token = self.identity_dir().join("consul-agent.token");
        let token_flag = format!("-token-file={}", token.display());
        if token.exists() {
            full.push(&token_flag);
        }
        full.extend_from_slice(rest);
        self.exec(&full)
    }

    /// Whether this host's firewall lets VXLAN in from the peer at `underlay_ip`. `arpanet
    /// status` reads netlink only, and a pass programs a peer's entries before it
    /// rewrites ARPANET-ADMITTED: traffic sent in between is dropped, which tests that
    /// run at once (slow passes) met.
    pub fn admits(&self, underlay_ip: &str) -> bool {
        let out = self.exec(&["iptables", "-S", "ARPANET-ADMITTED"]);
        stdout(&out).contains(&format!("-s {underlay_ip}/32 "))
    }

    /// Names of the members this host's agent sees as alive.
    pub fn consul_alive_members(&self) -> Vec<String> {
        let out = self.consul(&["members"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter(|l| l.split_whitespace().nth(2) == Some("alive"))
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    }

    /// Starts `args` inside this host, logging to `NAME.log`; teardown stops it by
    /// its pidfile `NAME.pid.spawned` (nsenter execs, so the pid is the program's).
    pub fn spawn(&self, name: &str, args: &[&std::ffi::OsStr]) {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).expect("log file");
        let child = Command::new("nsenter")
            .arg(format!("--net={NETNS_DIR}/{}", self.netns))
            .arg("--")
            .args(args)
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {args:?}: {e}"));
        std::fs::write(
            self.dir.join(format!("{name}.pid.spawned")),
            child.id().to_string(),
        )
        .expect("pidfile");
        self.children.lock().unwrap().push(child);
    }

    /// Stops a process started with [`Host::spawn`] (SIGTERM, then SIGKILL).
    pub fn stop(&self, name: &str) {
        stop_pidfile(&self.dir.join(format!("{name}.pid.spawned"))).expect("stop");
        let _ = std::fs::remove_file(self.dir.join(format!("{name}.pid.spawned")));
    }

    /// Kills a process started with [`Host::spawn`] and everything it started, with
    /// SIGKILL: a crash, with no chance to say goodbye (a Consul agent does not leave).
    pub fn kill(&self, name: &str) {
        let pidfile = self.dir.join(format!("{name}.pid.spawned"));
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .expect("pidfile")
            .trim()
            .parse()
            .expect("pid");
        let pids = process_tree(pid);
        for p in &pids {
            let _ = Command::new("kill")
                .args(["-KILL", &p.to_string()])
                .status();
        }
        wait_until(Duration::from_secs(10), "killed processes gone", || {
            pids.iter().all(|p| !process_alive(*p))
        });
        let _ = std::fs::remove_file(pidfile);
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Starts this host's dockerd, either with the lab's own flags or from a
    /// daemon.json (as arpanet writes it), which then names the socket and bridge.
    pub fn start_dockerd(&self, how: Dockerd) {
        let d = &self.dir;
        let mut args: Vec<std::ffi::OsString> = vec![
            "dockerd".into(),
            "--data-root".into(),
            d.join("docker").into(),
            "--exec-root".into(),
            d.join("exec").into(),
            "--pidfile".into(),
            d.join("dockerd.pid").into(),
        ];
        match how {
            Dockerd::Plain => {
                args.push("-H".into());
                args.push(format!("unix://{}", self.docker_socket().display()).into());
                args.push("--bip".into());
                args.push(format!("{}/24", self.address.bridge_ip()).into());
            }
            Dockerd::ConfigFile(path) => {
                args.push("--config-file".into());
                args.push(path.into());
            }
        }
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        self.spawn("dockerd", &refs);
    }

    pub fn wait_for_dockerd(&self) {
        wait_until(
            Duration::from_secs(60),
            &format!("dockerd on {}", self.netns),
            || {
                self.docker(&["version", "--format", "{{.Server.Version}}"])
                    .status
                    .success()
            },
        );
    }

    /// Loads the busybox test image (with a `whoami` CGI under /www) into this engine.
    pub fn import_test_image(&self) {
        self.import_image(TEST_IMAGE, &[]);
    }

    /// The test image's contents under another tag, with extra Dockerfile-style
    /// changes (e.g. `ENV BUILD=2`), which make it a different image.
    pub fn import_image(&self, tag: &str, changes: &[&str]) {
        import_image(
            &self.dir,
            &format!("unix://{}", self.docker_socket().display()),
            tag,
            changes,
        );
    }

    fn start_consul(&self, servers: usize, server_ips: &[Ipv4Addr]) {
        let mut args: Vec<String> = vec![
            "consul".into(),
            "agent".into(),
            format!("-node=h{}", self.index),
            "-datacenter=arpanet-lab".into(),
            format!("-bind={}", self.underlay_ip),
            "-client=127.0.0.1".into(),
            format!("-data-dir={}", self.dir.join("consul").display()),
            "-disable-host-node-id".into(),
            "-log-level=warn".into(),
        ];
        if self.consul == Some(ConsulRole::Server) {
            args.push("-server".into());
            args.push(format!("-bootstrap-expect={servers}"));
        }
        for ip in server_ips.iter().filter(|ip| **ip != self.underlay_ip) {
            args.push(format!("-retry-join={ip}"));
        }
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
        self.spawn("consul", &refs);
    }

    /// This host's arpanet.toml as the lab writes it (see [`Lab::write_arpanet_configs`]).
    fn write_arpanet_config(&self, role: &str, others: &[&Host], extra: &str) -> PathBuf {
        let join: Vec<String> = others
            .iter()
            .map(|o| {
                format!(
                    "{{ address = \"{}\", ip = \"{}\" }}",
                    o.address, o.underlay_ip
                )
            })
            .collect();
        let d = &self.dir;
        let text = format!(
            "[node]\naddress = \"{}\"\nrole = \"{}\"\nname = \"h{}\"\nunderlay_interface = \"{}\"\njoin = [{}]\n\
             [cluster]\nname = \"arpanet-lab\"\nsecret_file = {:?}\nidentity_dir = {:?}\n\
             [paths]\nstate_dir = {:?}\nrun_dir = {:?}\ncontainers_dir = {:?}\n\
             [overlay]\nresync = \"1s\"\n\
             [docker]\nmode = \"config\"\nsocket = {:?}\ndaemon_json = {:?}\n\
             {extra}\n",
            self.address,
            role,
            self.index,
            self.underlay_interface,
            join.join(", "),
            d.join("secret"),
            self.identity_files().dir,
            d.join("state"),
            d.join("run"),
            d.join("containers.d"),
            self.docker_socket(),
            self.daemon_json(),
        );
        let path = d.join("arpanet.toml");
        std::fs::write(&path, text).expect("write arpanet.toml");
        path
    }

    /// Where this host's CA, certificate, key and Consul tokens live (`cluster.identity_dir`).
    pub fn identity_files(&self) -> arpanet::paths::IdentityFiles {
        arpanet::paths::IdentityFiles::new(&self.dir.join("identity"))
    }

    /// Where this host's identity lives (`cluster.identity_dir`): its Consul tokens.
    pub fn identity_dir(&self) -> PathBuf {
        self.dir.join("identity")
    }

    pub fn daemon_json(&self) -> PathBuf {
        self.dir.join("daemon.json")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("arpanet.toml")
    }

    /// Runs the `arpanet` CLI inside this host with its config.
    pub fn arpanet(&self, args: &[&str]) -> Output {
        let config = self.config_path();
        let mut full = vec![
            env!("CARGO_BIN_EXE_arpanet"),
            "--config",
            config.to_str().unwrap(),
        ];
        full.extend_from_slice(args);
        self.exec(&full)
    }

    /// One convergence pass of arpanetd inside this host.
    pub fn arpanetd_once(&self) -> Output {
        let config = self.config_path();
        self.exec(&[
            env!("CARGO_BIN_EXE_arpanetd"),
            "--config",
            config.to_str().unwrap(),
            "--once",
        ])
    }

    /// The Consul agent as arpanet-consul.service runs it: `arpanet consul-agent`.
    pub fn start_consul_agent(&self) {
        let config = self.config_path();
        self.spawn(
            "consul",
            &[
                std::ffi::OsStr::new(env!("CARGO_BIN_EXE_arpanet")),
                "--config".as_ref(),
                config.as_os_str(),
                "consul-agent".as_ref(),
            ],
        );
        self.issue_consul_token();
    }

    /// Makes this host's Consul token from its agent token file on the boot host
    /// (`arpanet consul-token` there, with its management token), as the join service
    /// will: retried in the background (a spawned loop, logged as `consul-token.log`)
    /// until the boot host's Consul answers. Not for servers, whose arpanetd makes
    /// their own, nor once done.
    fn issue_consul_token(&self) {
        let identity = self.identity_dir();
        let done = self.dir.join("consul-token.done");
        let boot = std::fs::read_to_string(self.dir.parent().unwrap().join("boot-node"));
        let (Ok(boot), false, true, false) = (
            boot,
            identity.join("consul-management.token").exists(),
            identity.join("consul-agent.token").exists(),
            done.exists(),
        ) else {
            return;
        };
        let (boot_netns, boot_config) = boot.trim().split_once('\n').expect("boot-node");
        let script = format!(
            "for i in $(seq 180); do nsenter --net={NETNS_DIR}/{boot_netns} -- {} --config {boot_config} consul-token h{} --secret-file {} && touch {} && exit 0; sleep 1; done; exit 1",
            env!("CARGO_BIN_EXE_arpanet"),
            self.index,
            identity.join("consul-agent.token").display(),
            done.display(),
        );
        self.spawn(
            "consul-token",
            &["sh".as_ref(), "-c".as_ref(), script.as_ref()],
        );
    }

    /// A whole node as a host runs it, for hosts configured with `consul.mode =
    /// "config"`: arpanetd, then dockerd from the daemon.json it wrote (bridge, DNS ->
    /// Consul, API) with the test image, then the Consul agent once its DNS is rendered
    /// onto the bridge. Each step goes host by host, so the hosts come up together.
    pub fn start_nodes(hosts: &[&Host]) {
        for h in hosts {
            h.start_arpanetd();
        }
        for h in hosts {
            // arpanetd's keys, not just the file: a caller may have written its own first.
            wait_until(Duration::from_secs(20), "daemon.json", || {
                std::fs::read_to_string(h.daemon_json()).is_ok_and(|j| j.contains("\"bip\""))
            });
            h.start_dockerd(Dockerd::ConfigFile(h.daemon_json()));
        }
        for h in hosts {
            h.wait_for_dockerd();
            h.import_test_image();
            let bridge = h.address.bridge_ip().to_string();
            wait_until(
                Duration::from_secs(20),
                "Consul's DNS on the bridge",
                || {
                    std::fs::read_to_string(h.dir.join("state/consul/config.json"))
                        .is_ok_and(|c| c.contains(&bridge))
                },
            );
            h.start_consul_agent();
        }
    }

    /// The image sync service as arpanet-sync.service runs it (`arpanetd --sync`),
    /// started by hand: the lab has no systemd to activate its socket.
    pub fn start_sync(&self) {
        let config = self.config_path();
        self.spawn(
            "sync",
            &[
                std::ffi::OsStr::new(env!("CARGO_BIN_EXE_arpanetd")),
                "--config".as_ref(),
                config.as_os_str(),
                "--sync".as_ref(),
            ],
        );
        wait_until(Duration::from_secs(20), "the sync service's socket", || {
            self.dir.join("run/sync.sock").exists()
        });
    }

    /// Debian's docker-registry in this host's namespace, serving plain HTTP on `addr`
    /// from a store in this host's directory; returns once it answers.
    pub fn start_registry(&self, addr: &str) {
        assert!(
            which("docker-registry").is_some(),
            "docker-registry is missing: scripts/install-test-deps installs it"
        );
        let config = self.dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                self.dir.join("registry").display()
            ),
        )
        .expect("registry.yml");
        self.spawn(
            "registry",
            &[
                "docker-registry".as_ref(),
                "serve".as_ref(),
                config.as_os_str(),
            ],
        );
        let url = format!("http://{addr}/v2/");
        wait_until(Duration::from_secs(20), "the registry", || {
            self.exec(&["curl", "-sf", &url, "-o", "/dev/null"])
                .status
                .success()
        });
    }

    /// Imports an image of `mb` MB of random data (incompressible, like real layers)
    /// as `tag`; returns its ID.
    pub fn import_random_image(&self, tag: &str, mb: usize) -> String {
        use std::io::Read;
        let root = self
            .dir
            .join(format!("root-{}", tag.replace(['/', ':'], "-")));
        std::fs::create_dir_all(&root).expect("image root");
        let mut data = vec![0u8; mb << 20];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut data))
            .expect("random bytes");
        std::fs::write(root.join("data.bin"), &data).expect("write the image's data");
        let cmd = format!(
            "tar -C {} -c . | {} -H unix://{} import - {tag}",
            root.display(),
            docker_cli().display(),
            self.docker_socket().display()
        );
        let out = Command::new("sh").args(["-c", &cmd]).output().expect("sh");
        assert_success(&out, "docker import of a random image");
        std::fs::remove_dir_all(&root).ok();
        self.image_id(tag).expect("the imported image")
    }

    /// The manifest the node registry holds for `image` (`skopeo inspect --raw`, a real
    /// OCI client against this host's 127.0.0.1 registry).
    pub fn registry_manifest(&self, image: &str) -> serde_json::Value {
        let out = self.exec(&[
            "skopeo",
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{image}"),
        ]);
        json(&out, "skopeo inspect --raw")
    }

    /// Bytes received and sent on this host's underlay interface so far (its netns's
    /// /proc/net/dev; /sys here would be the root namespace's).
    pub fn underlay_bytes(&self) -> (u64, u64) {
        let out = self.exec(&["cat", "/proc/net/dev"]);
        assert_success(&out, "read /proc/net/dev");
        let text = stdout(&out);
        let prefix = format!("{}:", self.underlay_interface);
        let fields: Vec<u64> = text
            .lines()
            .find_map(|l| l.trim().strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("{prefix} in /proc/net/dev:\n{text}"))
            .split_whitespace()
            .map(|f| f.parse().expect("a counter"))
            .collect();
        // Receive: bytes packets errs drop fifo frame compressed multicast; then transmit.
        (fields[0], fields[8])
    }

    /// The ID of `image` in this host's Docker, if it has it.
    pub fn image_id(&self, image: &str) -> Option<String> {
        let out = self.docker(&["image", "inspect", "-f", "{{.Id}}", image]);
        out.status
            .success()
            .then(|| stdout(&out).trim().to_string())
    }

    /// Waits until this node's cluster API lists `n` nodes.
    pub fn wait_for_nodes(&self, n: usize, limit: Duration) {
        wait_until(limit, &format!("{n} nodes in the API"), || {
            let out = self.arpanet(&["node", "ls", "--json"]);
            serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .ok()
                .and_then(|v| v.as_array().map(Vec::len))
                == Some(n)
        });
    }

    /// A raw request to this host's API socket: (status, body).
    pub fn api_request(&self, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
        let socket = self.dir.join("run/api.sock");
        let out = self.exec(&[
            "curl",
            "-s",
            "-X",
            method,
            "--unix-socket",
            socket.to_str().unwrap(),
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
            "-w",
            "\n%{http_code}",
            &format!("http://arpanetd{path}"),
        ]);
        assert_success(&out, "curl");
        let text = stdout(&out);
        let (body, code) = text.rsplit_once('\n').unwrap();
        (
            code.trim().parse().unwrap(),
            serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
        )
    }

    /// Passing instances of `service` in Consul, as this host's agent sees them; None
    /// when the agent did not answer.
    pub fn passing_instances(&self, service: &str) -> Option<usize> {
        let url = format!("http://127.0.0.1:8500/v1/health/service/{service}?passing");
        let out = self.exec(&["timeout", "10", "busybox", "wget", "-q", "-O", "-", &url]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().map(Vec::len))
    }

    pub fn start_arpanetd(&self) {
        let config = self.config_path();
        self.spawn(
            "arpanetd",
            &[
                std::ffi::OsStr::new(env!("CARGO_BIN_EXE_arpanetd")),
                "--config".as_ref(),
                config.as_os_str(),
            ],
        );
    }
}

/// Imports the busybox test image into the engine at `socket` as `tag`, building its
/// root under `dir` once.
fn import_image(dir: &Path, socket: &str, tag: &str, changes: &[&str]) {
    let root = dir.join("image-root");
    if !root.exists() {
        make_busybox_root(&root);
    }
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .expect("tar");
    let mut args = vec!["-H", socket, "import", "--change", "CMD [\"/bin/sh\"]"];
    for c in changes {
        args.extend(["--change", c]);
    }
    args.extend(["-", tag]);
    let out = Command::new(docker_cli())
        .args(&args)
        .stdin(tar.stdout.take().expect("tar stdout"))
        .output()
        .expect("docker import");
    let tar_status = tar.wait().expect("wait for tar");
    assert!(
        tar_status.success(),
        "tar of the test image root: {tar_status}"
    );
    assert_success(&out, "docker import");
}

/// The `changes` of an `arpanetd --once` run, which must have succeeded.
pub fn once_changes(out: &Output) -> Vec<String> {
    assert_success(out, "arpanetd --once");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("report JSON");
    report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect()
}

/// A FROM-scratch busybox root: `docker import` of it needs no registry and no build.
fn make_busybox_root(root: &Path) {
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).expect("image root");
    let busybox = which("busybox").expect("busybox on PATH");
    std::fs::copy(&busybox, bin.join("busybox")).expect("copy busybox");
    let list = Command::new(&busybox)
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("applet link");
        }
    }
    for dir in ["tmp", "etc", "proc", "sys", "dev", "www/cgi-bin"] {
        std::fs::create_dir_all(root.join(dir)).expect("image dir");
    }
    // `httpd -f -p 8080 -h /www` then answers /cgi-bin/whoami with the caller's address.
    let whoami = root.join("www/cgi-bin/whoami");
    std::fs::write(
        &whoami,
        "#!/bin/sh\necho 'Content-Type: text/plain'\necho\necho \"$REMOTE_ADDR\"\n",
    )
    .expect("cgi");
    std::fs::set_permissions(&whoami, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
}

/// Stops every process, unmounts, deletes the namespaces and the directory of a lab.
/// Goes on after each failure and returns them all.
fn teardown_lab(name: &str, dir: &Path) -> Vec<String> {
    let mut errors = Vec::new();
    let hosts: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join(".").is_dir())
                .collect()
        })
        .unwrap_or_default();
    for host_dir in &hosts {
        let socket = host_dir.join("docker.sock");
        if socket.exists() {
            // Removing containers first keeps dockerd's shutdown from waiting out each one's stop timeout.
            let ids = Command::new(docker_cli())
                .arg("-H")
                .arg(format!("unix://{}", socket.display()))
                .args(["ps", "-aq"])
                .output();
            if let Ok(ids) = ids {
                let ids: Vec<String> = String::from_utf8_lossy(&ids.stdout)
                    .split_whitespace()
                    .map(String::from)
                    .collect();
                if !ids.is_empty() {
                    let _ = Command::new(docker_cli())
                        .arg("-H")
                        .arg(format!("unix://{}", socket.display()))
                        .args(["rm", "-f"])
                        .args(&ids)
                        .output();
                }
            }
        }
        // arpanetd first, so it cannot repair what the rest of teardown removes.
        let mut pidfiles: Vec<PathBuf> = std::fs::read_dir(host_dir)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        pidfiles.retain(|p| p.to_string_lossy().contains(".pid"));
        pidfiles.sort_by_key(|p| !p.to_string_lossy().contains("arpanetd"));
        for pidfile in pidfiles {
            if let Err(e) = stop_pidfile(&pidfile) {
                errors.push(e);
            }
        }
    }
    machine::remove_cgroups(&format!("{name}-"));
    errors.extend(unmount_below(dir));
    if let Ok(entries) = std::fs::read_dir(NETNS_DIR) {
        for ns in entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
        {
            if ns
                .strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('-'))
            {
                let out = Command::new("ip").args(["netns", "del", &ns]).output();
                match out {
                    Ok(o) if o.status.success() => {}
                    Ok(o) => errors.push(format!(
                        "ip netns del {ns}: {}",
                        String::from_utf8_lossy(&o.stderr).trim()
                    )),
                    Err(e) => errors.push(format!("ip netns del {ns}: {e}")),
                }
            }
        }
    }
    if dir.exists()
        && let Err(e) = std::fs::remove_dir_all(dir)
    {
        errors.push(format!("remove {}: {e}", dir.display()));
    }
    errors
}

/// SIGTERM, up to 30 s for a clean exit, then SIGKILL.
fn stop_pidfile(pidfile: &Path) -> Result<(), String> {
    let Ok(text) = std::fs::read_to_string(pidfile) else {
        return Ok(());
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return Ok(());
    };
    if !process_alive(pid) {
        return Ok(());
    }
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while process_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if process_alive(pid) {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        // Dying takes a while for a process with many threads or I/O in flight (dockerd,
        // nspawn's machine) on a loaded host: wait for it rather than a fixed 200 ms.
        let deadline = Instant::now() + Duration::from_secs(10);
        while process_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if process_alive(pid) {
            return Err(format!(
                "pid {pid} from {} survived SIGKILL",
                pidfile.display()
            ));
        }
    }
    Ok(())
}

/// A zombie (exited, not yet waited for) counts as dead.
fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3 is the state; a zombie has exited.
        Ok(stat) => stat
            .rsplit(") ")
            .next()
            .is_some_and(|rest| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

fn unmount_below(dir: &Path) -> Vec<String> {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let prefix = format!("{}/", dir.display());
    let mut points: Vec<&str> = mountinfo
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    // Deepest first, so nested mounts go before their parents.
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    points.dedup();
    let mut errors = Vec::new();
    for point in points {
        let out = Command::new("umount").args(["-l", point]).output();
        if let Ok(o) = out
            && !o.status.success()
        {
            errors.push(format!(
                "umount {point}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
    }
    errors
}

/// Cleans up labs whose test process died without tearing them down.
fn sweep_dead_labs() {
    let mut names: Vec<String> = Vec::new();
    for dir in [LAB_ROOT, NETNS_DIR] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.filter_map(|e| e.ok()) {
                let n = e.file_name().to_string_lossy().into_owned();
                if let Some(lab) = n.strip_prefix(PREFIX) {
                    let lab_name = format!("{PREFIX}{}", lab.split('-').next().unwrap_or(""));
                    if !names.contains(&lab_name) {
                        names.push(lab_name);
                    }
                }
            }
        }
    }
    for name in names {
        let owner = name
            .trim_start_matches(PREFIX)
            .split('x')
            .next()
            .and_then(|p| p.parse::<i32>().ok());
        if owner.is_some_and(|pid| !process_alive(pid)) {
            for e in teardown_lab(&name, &Path::new(LAB_ROOT).join(&name)) {
                eprintln!("sweeping dead lab {name}: {e}");
            }
        }
    }
}

/// Runs a setup command; a failure panics with its stderr.
fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `ready` every 200 ms; panics naming what it waited for after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        if ready() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A successful command's stdout as JSON (`--json` output).
/// A JSON array of strings, sorted (node lists such as an image's holders).
pub fn sorted_strings(v: &serde_json::Value) -> Vec<String> {
    let mut all: Vec<String> = v
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("not a string: {s}"))
                .to_string()
        })
        .collect();
    all.sort();
    all
}

pub fn json(out: &Output, what: &str) -> serde_json::Value {
    assert_success(out, what);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what}: {e}: {}", stdout(out)))
}

pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `pid` and every process below it.
pub fn process_tree(pid: i32) -> Vec<i32> {
    let mut pids = vec![pid];
    let mut i = 0;
    while i < pids.len() {
        let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", pids[i]))
            .unwrap_or_default();
        pids.extend(
            children
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
        i += 1;
    }
    pids
}
