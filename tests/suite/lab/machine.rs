//! Real systemd machines (systemd-nspawn, systemd as PID 1) standing in for a lab
//! host: they share one cached Debian 12 tree through an overlay and live in the
//! host's network namespace, so the lab's underlay joins them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::Host;

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

/// The machine tests take turns: together they would boot six machines, each with a
/// dockerd, on a CI host of two cores. This serializes them in one process (`cargo
/// test`); under nextest, where each test is a process of its own, the `machines` test
/// group of .config/nextest.toml does.
static MACHINES: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn take_turn() -> std::sync::MutexGuard<'static, ()> {
    MACHINES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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
        std::fs::write(upper.join("etc/machine-id"), machine_id(&name) + "\n").unwrap();
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
        let cgroups = own_cgroups(&name);
        // Writable cgroup controllers for the machine's dockerd (nspawn mounts them
        // read-only); each hierarchy's root is then replaced by the machine's own cgroup.
        // (With one cgroup2 at /sys/fs/cgroup that cgroup alone is the tree.)
        if !cgroups
            .iter()
            .any(|c| c.mount == Path::new("/sys/fs/cgroup"))
        {
            args.push("--bind=/sys/fs/cgroup".into());
        }
        for c in &cgroups {
            args.push(format!("--bind={}:{}", c.root.display(), c.mount.display()));
        }
        // nspawn starts in the machine's cgroups (the pid stays: sh execs nspawn).
        let enter: String = cgroups
            .iter()
            .map(|c| format!("echo $$ > '{}/cgroup.procs' && ", c.dir.display()))
            .collect();
        let mut wrapped: Vec<String> = vec![
            "sh".into(),
            "-c".into(),
            format!("{enter}exec \"$@\""),
            "sh".into(),
        ];
        wrapped.extend(args);
        let refs: Vec<&std::ffi::OsStr> = wrapped.iter().map(std::ffi::OsStr::new).collect();
        host.spawn("machine", &refs);
        let nspawn: u32 = std::fs::read_to_string(host.dir.join("machine.pid.spawned"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let mut leader = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        while leader == 0 {
            assert!(
                Instant::now() < deadline,
                "machine {name}'s systemd did not start in 30 s; nspawn said:\n{}",
                host.log("machine")
            );
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
            if leader == 0 {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        let machine = Self { host, name, leader };
        // Generous: several machines boot at once on a small, shared CI host.
        let booted = || {
            let state = machine.exec(&["systemctl", "is-system-running"]);
            matches!(super::stdout(&state).trim(), "running" | "degraded")
        };
        let deadline = Instant::now() + Duration::from_secs(180);
        while !booted() {
            if Instant::now() > deadline {
                let state = machine.exec(&["systemctl", "is-system-running"]);
                let jobs = machine.exec(&["systemctl", "list-jobs", "--no-pager"]);
                panic!(
                    "machine {} did not finish booting in 180 s; state {:?} ({}); jobs left:\n{}\n{}",
                    machine.name,
                    super::stdout(&state).trim(),
                    String::from_utf8_lossy(&state.stderr).trim(),
                    super::stdout(&jobs),
                    machine.diagnosis()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        machine.wait_active("docker.service", Duration::from_secs(60));
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
        // Its systemd keeps to the machine's own cgroups (see `own_cgroups`).
        let cgroup = std::fs::read_to_string(format!("/proc/{leader}/cgroup")).unwrap_or_default();
        for line in cgroup.lines() {
            assert!(
                line.split(['/', ':']).any(|part| part == machine.name),
                "{}'s systemd is in cgroup {line:?}, not in the machine's own",
                machine.name
            );
        }
        let failed = machine.failed_units();
        assert!(
            failed.is_empty(),
            "units failed to start in {}: {failed:?}\n{}",
            machine.name,
            machine.diagnosis()
        );
        machine
    }

    /// Waits until `unit` is active; panics with its status and journal if it is not
    /// by `limit`.
    pub fn wait_active(&self, unit: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.unit_property(unit, "ActiveState") != "active" {
            if Instant::now() > deadline {
                panic!(
                    "{unit} not active in {} after {limit:?}\n{}{}",
                    self.name,
                    self.unit_report(unit),
                    self.diagnosis()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The units systemd lists as failed.
    pub fn failed_units(&self) -> Vec<String> {
        let out = self.exec(&["systemctl", "--failed", "--no-legend", "--plain"]);
        super::stdout(&out)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    }

    /// Everything a failed boot needs read: nspawn's output, then `systemctl status`
    /// and this boot's journal of every failed unit, as the machine itself sees them.
    pub fn diagnosis(&self) -> String {
        let mut report = format!(
            "==== {}: nspawn's output\n{}",
            self.name,
            self.host.log("machine")
        );
        for unit in self.failed_units() {
            report += &self.unit_report(&unit);
        }
        report
    }

    /// `systemctl status` and this boot's journal of one unit.
    pub fn unit_report(&self, unit: &str) -> String {
        let text = |out: Output| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        };
        format!(
            "==== {}: systemctl status {unit}\n{}==== {}: journalctl -u {unit} -b\n{}",
            self.name,
            text(self.exec(&["systemctl", "status", "--no-pager", "-l", unit])),
            self.name,
            text(self.exec(&["journalctl", "-u", unit, "-b", "--no-pager"])),
        )
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

/// A machine-id of the machine's own, fixed by its name (which names the lab's pid,
/// the lab and the host): Docker and Consul read it, and two labs of one test process
/// boot machines at once.
fn machine_id(name: &str) -> String {
    let hex: String = name
        .trim_start_matches(super::PREFIX)
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    let hex = format!("{hex:0>32}");
    hex[hex.len() - 32..].to_string()
}

/// One cgroup hierarchy, from the machine's side: the cgroup it gets (`dir`, made
/// below this process's own cgroup there), the cgroup its systemd sees as the root
/// (`root`), and where the hierarchy is mounted (`mount`).
struct MachineCgroup {
    dir: PathBuf,
    root: PathBuf,
    mount: PathBuf,
}

/// Creates the machine's own cgroup in every hierarchy.
///
/// Why: `--bind=/sys/fs/cgroup` shows the machine the host's whole tree, while its
/// systemd (in a cgroup namespace) takes its own cgroup for the root of it. So every
/// machine's systemd managed the same /system.slice/UNIT cgroups: one machine removed
/// a unit's cgroup just as another attached a process to it, and that unit failed
/// with 219/CGROUP ("units failed to start": systemd-tmpfiles-setup, sysusers,
/// modules-load, whichever was starting, only when two machines booted at once).
/// Now nspawn starts in a cgroup of the machine's own, and the namespace's root is
/// bound over each hierarchy, so the paths systemd sees and the tree it writes are
/// the machine's alone. nspawn moves its payload into `payload` in the hierarchy
/// that tracks units only (name=systemd, and cgroup2), so that is the root there.
fn own_cgroups(name: &str) -> Vec<MachineCgroup> {
    let mut cgroups = Vec::new();
    for h in hierarchies() {
        let dir = h.mount.join(h.own.trim_start_matches('/')).join(name);
        let root = if h.tracks_units {
            dir.join("payload")
        } else {
            dir.clone()
        };
        std::fs::create_dir_all(&root)
            .unwrap_or_else(|e| panic!("create cgroup {}: {e}", root.display()));
        // A new cpuset has no CPUs or memory nodes, and takes no process until it has.
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let parent = dir.parent().unwrap().join(file);
            if let Ok(value) = std::fs::read_to_string(&parent) {
                for d in [&dir, &root] {
                    std::fs::write(d.join(file), value.trim())
                        .unwrap_or_else(|e| panic!("write {}/{file}: {e}", d.display()));
                }
            }
        }
        cgroups.push(MachineCgroup {
            dir,
            root,
            mount: h.mount,
        });
    }
    cgroups
}

/// Ends what is left of the machines whose names start with `prefix` (a stopped lab's)
/// and removes their cgroups. A machine outlives an nspawn that had to be SIGKILLed
/// (its systemd is PID 1 of a namespace of its own), and would run on for good, so
/// whatever is still in a machine's cgroups is killed; a cgroup goes once it is empty.
pub fn remove_cgroups(prefix: &str) {
    fn pids(dir: &Path, found: &mut Vec<String>) {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        found.extend(procs.split_whitespace().map(str::to_string));
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.path().is_dir() {
                pids(&entry.path(), found);
            }
        }
    }
    fn remove(dir: &Path) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                remove(&path)?;
            }
        }
        std::fs::remove_dir(dir)
    }
    for h in hierarchies() {
        let own = h.mount.join(h.own.trim_start_matches('/'));
        let Ok(entries) = std::fs::read_dir(&own) else {
            continue;
        };
        for entry in entries.filter_map(|e| e.ok()) {
            if !entry.file_name().to_string_lossy().starts_with(prefix) {
                continue;
            }
            // Killed processes take a moment to leave their cgroups.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let mut left = Vec::new();
                pids(&entry.path(), &mut left);
                if !left.is_empty() {
                    let _ = Command::new("kill").arg("-KILL").args(&left).output();
                }
                match remove(&entry.path()) {
                    Ok(()) => break,
                    Err(e) if Instant::now() > deadline => {
                        eprintln!("remove cgroup {}: {e}", entry.path().display());
                        break;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        }
    }
}

/// A cgroup hierarchy this process is in.
struct Hierarchy {
    mount: PathBuf,
    /// This process's cgroup in it, from /proc/self/cgroup.
    own: String,
    /// name=systemd or cgroup2: where systemd keeps track of units.
    tracks_units: bool,
}

/// The hierarchies mounted under /sys/fs/cgroup (at their roots) that this process is
/// in, matched to /proc/self/cgroup by their controllers.
fn hierarchies() -> Vec<Hierarchy> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let mounts: Vec<(PathBuf, String, Vec<String>)> = mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split_whitespace().collect();
            let right: Vec<&str> = right.split_whitespace().collect();
            let (root, point) = (*left.get(3)?, *left.get(4)?);
            let fstype = *right.first()?;
            let options = right.get(2)?.split(',').map(str::to_string).collect();
            (root == "/"
                && point.starts_with("/sys/fs/cgroup")
                && matches!(fstype, "cgroup" | "cgroup2"))
            .then(|| (PathBuf::from(point), fstype.to_string(), options))
        })
        .collect();
    let own = std::fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
    own.lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            let (mount, _, _) = mounts.iter().find(|(_, fstype, options)| {
                if controllers.is_empty() {
                    fstype == "cgroup2"
                } else {
                    fstype == "cgroup"
                        && controllers
                            .split(',')
                            .all(|c| options.iter().any(|o| o == c))
                }
            })?;
            Some(Hierarchy {
                mount: mount.clone(),
                own: path.to_string(),
                tracks_units: controllers.is_empty() || controllers == "name=systemd",
            })
        })
        .collect()
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
