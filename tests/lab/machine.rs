//! Real systemd machines (systemd-nspawn, systemd as PID 1) standing in for a lab
//! host: they share one cached Debian 12 tree through an overlay and live in the
//! host's network namespace, so the lab's underlay joins them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use super::{Host, wait_until};

const BASE_TREE: &str = "/var/cache/arpanet-test/bookworm";

/// Builds (once) and returns the base tree; panics with the build's output on failure.
pub fn base_tree() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-test-machine");
    let out = Command::new(&script)
        .arg(BASE_TREE)
        .output()
        .expect("run build-test-machine");
    assert!(
        out.status.success(),
        "build-test-machine: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(BASE_TREE)
}

/// How arpanet gets into a machine.
pub enum Install<'p> {
    /// The freshly built binaries bound at /usr/bin and the repo's unit files.
    RepoBinaries,
    /// Nothing yet: these packages are bound read-only at /root/NAME, for the test
    /// to `dpkg -i`.
    Packages(&'p [PathBuf]),
}

pub struct Machine<'a> {
    pub host: &'a Host,
    pub name: String,
    /// The machine's PID 1 (systemd), as the root namespace sees it.
    pub leader: u32,
}

impl<'a> Machine<'a> {
    /// Boots a machine in `host`'s network namespace with arpanet's freshly built
    /// binaries at /usr/bin, and waits until systemd reports the boot finished.
    pub fn boot(host: &'a Host, base: &Path) -> Self {
        Self::boot_with(host, base, &Install::RepoBinaries)
    }

    pub fn boot_with(host: &'a Host, base: &Path, install: &Install) -> Self {
        // Unique across labs running at once: nspawn keeps per-name state under /run.
        let name = format!("{}-m", host.netns);
        let upper = host.dir.join("machine-upper");
        let docker = host.dir.join("machine-docker");
        std::fs::create_dir_all(upper.join("etc")).unwrap();
        std::fs::create_dir_all(&docker).unwrap();
        std::fs::write(upper.join("etc/hostname"), format!("{name}\n")).unwrap();
        // Unique per machine (Docker and Consul read it), fixed by the lab's name.
        let id: String = format!(
            "{:0>32}",
            format!("{:x}{:x}", std::process::id(), host.index + 1)
        );
        std::fs::write(
            upper.join("etc/machine-id"),
            format!("{}\n", &id[id.len() - 32..]),
        )
        .unwrap();
        let netns = format!("/run/netns/{}", host.netns);
        // nspawn mounts /proc/sys read-only; dockerd only writes ip_forward when it is
        // off, so the "host" turns it on as a VM's kernel would let dockerd do.
        let forward = host.exec(&["sysctl", "-w", "net.ipv4.ip_forward=1"]);
        assert!(
            forward.status.success(),
            "enable forwarding in {}",
            host.netns
        );
        let mut args: Vec<String> = vec![
            "systemd-nspawn".into(),
            "--register=no".into(),
            "--keep-unit".into(),
            "--boot".into(),
            format!("--directory={}", base.display()),
            format!("--overlay={}:{}:/", base.display(), upper.display()),
            // The tree's resolv.conf points at resolved's stub, which is the machine's own.
            "--resolv-conf=off".into(),
            format!("--machine={name}"),
            "--capability=all".into(),
            "--system-call-filter=@keyring @privileged bpf".into(),
            "--bind=/sys/fs/cgroup".into(),
            "--property=Delegate=yes".into(),
            format!("--bind={}:/var/lib/docker", docker.display()),
            // Consul is a self-contained binary: the host's serves the machines too.
            format!(
                "--bind-ro={}:/usr/bin/consul",
                super::which("consul").expect("consul").display()
            ),
            format!("--network-namespace-path={netns}"),
            "--console=pipe".into(),
        ];
        match install {
            Install::RepoBinaries => {
                args.push(format!(
                    "--bind-ro={}:/usr/bin/arpanetd",
                    env!("CARGO_BIN_EXE_arpanetd")
                ));
                args.push(format!(
                    "--bind-ro={}:/usr/bin/arpanet",
                    env!("CARGO_BIN_EXE_arpanet")
                ));
            }
            Install::Packages(packages) => {
                for p in *packages {
                    let name = p.file_name().unwrap().to_string_lossy();
                    args.push(format!("--bind-ro={}:/root/{name}", p.display()));
                }
            }
        }
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
        host.spawn("machine", &refs);
        let nspawn: u32 = std::fs::read_to_string(host.dir.join("machine.pid.spawned"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let mut leader = 0;
        wait_until(
            Duration::from_secs(30),
            &format!("machine {name}'s systemd to start"),
            || {
                let children = Command::new("pgrep")
                    .args(["-P", &nspawn.to_string()])
                    .output()
                    .unwrap();
                // nspawn's short-lived outer child is its child too, for a moment:
                // the leader is the one that is PID 1 in its own PID namespace.
                leader = String::from_utf8_lossy(&children.stdout)
                    .split_whitespace()
                    .filter_map(|pid| pid.parse().ok())
                    .find(|pid| is_namespace_init(*pid))
                    .unwrap_or(0);
                leader != 0
            },
        );
        let machine = Self { host, name, leader };
        // Generous: several machines boot at once on a small, shared CI host.
        let booted = || {
            let state = machine.exec(&["systemctl", "is-system-running"]);
            matches!(super::stdout(&state).trim(), "running" | "degraded")
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        while !booted() {
            if std::time::Instant::now() > deadline {
                let state = machine.exec(&["systemctl", "is-system-running"]);
                let jobs = machine.exec(&["systemctl", "list-jobs", "--no-pager"]);
                panic!(
                    "machine {} did not finish booting in 180 s; state {:?} ({}); jobs left:\n{}",
                    machine.name,
                    super::stdout(&state).trim(),
                    String::from_utf8_lossy(&state.stderr).trim(),
                    super::stdout(&jobs)
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        wait_until(
            Duration::from_secs(60),
            &format!("docker.service in {}", machine.name),
            || machine.unit_property("docker.service", "ActiveState") == "active",
        );
        // The repo's unit files, installed as the package installs them.
        let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
        let repo_units = match install {
            Install::RepoBinaries => std::fs::read_dir(&units)
                .unwrap()
                .filter_map(|e| e.ok())
                .collect(),
            Install::Packages(_) => Vec::new(),
        };
        for unit in repo_units {
            let text = std::fs::read_to_string(unit.path()).unwrap();
            let name = unit.file_name().to_string_lossy().into_owned();
            if name == "arpanet.sysusers" {
                // The Consul agent's user, created as the packages' scripts create it.
                machine.write_file("/usr/lib/sysusers.d/arpanet.conf", &text);
                super::assert_success(
                    &machine.exec(&["systemd-sysusers", "/usr/lib/sysusers.d/arpanet.conf"]),
                    "systemd-sysusers",
                );
            } else {
                machine.write_file(&format!("/etc/systemd/system/{name}"), &text);
            }
        }
        super::assert_success(
            &machine.exec(&["systemctl", "daemon-reload"]),
            "daemon-reload",
        );
        let failed = machine.exec(&["systemctl", "--failed", "--no-legend", "--plain"]);
        assert_eq!(
            super::stdout(&failed).trim(),
            "",
            "units failed to start in {}",
            machine.name
        );
        machine
    }

    /// Runs a command inside the machine (all its namespaces, its root and cwd).
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.leader.to_string(), "-a", "-r", "-w", "--"])
            .args(args)
            .output()
            .expect("nsenter into the machine")
    }

    /// Writes a file inside the machine (through the machine, not its overlay layers).
    pub fn write_file(&self, path: &str, content: &str) {
        let mut child = Command::new("nsenter")
            .args([
                "-t",
                &self.leader.to_string(),
                "-a",
                "-r",
                "-w",
                "--",
                "sh",
                "-c",
            ])
            .arg(format!(
                "mkdir -p \"$(dirname '{path}')\" && cat > '{path}'"
            ))
            .stdin(Stdio::piped())
            .spawn()
            .expect("nsenter");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(content.as_bytes())
            .unwrap();
        assert!(
            child.wait().unwrap().success(),
            "write {path} in {}",
            self.name
        );
    }

    pub fn read_file(&self, path: &str) -> String {
        super::stdout(&self.exec(&["cat", path]))
    }

    /// Loads the busybox test image into the machine's own Docker engine.
    pub fn import_test_image(&self) {
        let socket = format!("unix:///proc/{}/root/run/docker.sock", self.leader);
        super::import_image(
            &self.host.dir.join("machine-image"),
            &socket,
            super::TEST_IMAGE,
            &[],
        );
    }

    /// A unit property, as `systemctl show -p NAME --value` prints it.
    pub fn unit_property(&self, unit: &str, property: &str) -> String {
        super::stdout(&self.exec(&["systemctl", "show", "-p", property, "--value", unit]))
            .trim()
            .to_string()
    }
}

/// Whether machines can boot here; under CI=true a missing tool fails instead.
pub fn available() -> bool {
    let missing: Vec<&str> = ["systemd-nspawn", "debootstrap"]
        .into_iter()
        .filter(|t| super::which(t).is_none())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "systemd machine tests need {} (apt-get install systemd-container debootstrap)",
        missing.join(", ")
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg}; CI=true, so this fails instead of skipping");
    }
    eprintln!("SKIPPED: {msg}");
    false
}

/// Whether `pid` is PID 1 of a PID namespace of its own (its last NSpid is 1).
fn is_namespace_init(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
            let ids: Vec<&str> = line.split_whitespace().skip(1).collect();
            Some(ids.len() > 1 && ids.last() == Some(&"1"))
        })
        .unwrap_or(false)
}
