//! Docker's API on `10.254.a.b:2376`, arpanetd's mutual TLS relayed to dockerd's unix
//! socket: `arpanet docker-env` gives root a working `docker` against another node;
//! without a cluster certificate (none, another CA's, an expired one, a revoked one)
//! nobody gets in, with the firewall or without it; a renewed certificate needs no
//! Docker restart. Every packet stays inside the lab's namespaces.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use arpanet::identity::{Ca, NodeIdentity, NodeKey, Role};

use crate::lab::{self, Dockerd, Host, Lab, TEST_IMAGE, assert_success, stdout, wait_until};

const NO_CONSUL: &str = "[consul]\nmode = \"disabled\"\n";
const PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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

fn all_output(out: &std::process::Output) -> String {
    format!("{}{}", stdout(out), String::from_utf8_lossy(&out.stderr))
}

/// A key and certificate for 0.1 from `ca`, valid between the two times, in `dir`
/// (cert.pem, key.pem).
fn issue(ca: &Ca, dir: &Path, not_before: SystemTime, not_after: SystemTime) -> PathBuf {
    issue_for(ca, dir, Role::Server, not_before, not_after)
}

fn issue_for(
    ca: &Ca,
    dir: &Path,
    role: Role,
    not_before: SystemTime,
    not_after: SystemTime,
) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let key = NodeKey::generate().unwrap();
    let id = NodeIdentity {
        cluster: "arpanet-lab".into(),
        address: "0.1".parse().unwrap(),
        role,
    };
    let issued = ca
        .issue_between(&key.csr_pem().unwrap(), &id, not_before, not_after)
        .unwrap();
    std::fs::write(dir.join("cert.pem"), issued.cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), key.key_pem()).unwrap();
    dir.to_path_buf()
}

/// The docker CLI inside `host`, with nothing from the test's environment or root's
/// ~/.docker: only `env` (and PATH).
fn docker_in(host: &Host, env: &[String], args: &[&str]) -> std::process::Output {
    let config = host.dir.join("docker-cli");
    std::fs::create_dir_all(&config).unwrap();
    let config = format!("DOCKER_CONFIG={}", config.display());
    let cli = lab::docker_cli();
    let mut full: Vec<&str> = vec!["env", "-i", PATH, &config];
    full.extend(env.iter().map(String::as_str));
    full.push(cli.to_str().unwrap());
    full.extend_from_slice(args);
    host.exec(&full)
}

/// `eval "$(arpanet docker-env NODE)"`, then `script` with `docker` as the lab's CLI,
/// in a clean shell inside `host`.
fn with_docker_env(host: &Host, node: &str, script: &str) -> std::process::Output {
    let config = host.dir.join("docker-cli");
    std::fs::create_dir_all(&config).unwrap();
    let arpanet = format!(
        "{} --config {}",
        env!("CARGO_BIN_EXE_arpanet"),
        host.config_path().display()
    );
    let sh = format!(
        "docker() {{ {} \"$@\"; }}; eval \"$({arpanet} docker-env {node})\" && {script}",
        lab::docker_cli().display()
    );
    host.exec(&[
        "env",
        "-i",
        PATH,
        &format!("DOCKER_CONFIG={}", config.display()),
        "sh",
        "-c",
        &sh,
    ])
}

/// curl from `netns` to `url` with extra arguments; returns its exit code and output.
fn curl(netns: &str, url: &str, extra: &[&str]) -> (i32, String) {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args(["--", "curl", "-sS", "--max-time", "10"])
        .args(extra)
        .arg(url)
        .output()
        .expect("curl");
    (out.status.code().unwrap_or(-1), all_output(&out))
}

#[test]
fn docker_env_lets_root_in_and_nothing_else_gets_in_even_without_the_firewall() {
    require_lab!();
    let lab = Lab::builder(3).start();
    lab.write_arpanet_config(0, "boot", &[1], NO_CONSUL);
    lab.write_arpanet_config(1, "server", &[0], NO_CONSUL);
    let (h0, h1, stranger) = (&lab.hosts[0], &lab.hosts[1], &lab.hosts[2]);
    let nodes = [h0, h1];
    for h in nodes {
        h.start_arpanetd();
    }
    for (h, other) in [(h0, h1), (h1, h0)] {
        wait_until(Duration::from_secs(20), "daemon.json written", || {
            std::fs::read_to_string(h.daemon_json()).is_ok_and(|j| j.contains("\"hosts\""))
        });
        wait_until(Duration::from_secs(20), "the peer admitted", || {
            h.admits(&other.underlay_ip.to_string())
        });
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(h1.daemon_json()).unwrap()).unwrap();
    // dockerd has its unix socket only: arpanetd holds 2376 and the TLS.
    assert_eq!(
        json["hosts"],
        serde_json::json!([format!("unix://{}", h1.docker_socket().display())])
    );
    for k in ["tls", "tlsverify", "tlscacert", "tlscert", "tlskey"] {
        assert!(json.get(k).is_none(), "{k} in daemon.json: {json}");
    }
    for h in nodes {
        h.start_dockerd(Dockerd::ConfigFile(h.daemon_json()));
    }
    for h in nodes {
        h.wait_for_dockerd();
        h.import_test_image();
    }
    let dockerd_pid = || std::fs::read_to_string(h1.dir.join("dockerd.pid")).unwrap();
    let pid_before = dockerd_pid();
    wait_until(
        Duration::from_secs(20),
        "arpanetd's relay on 10.254.0.2:2376",
        || tcp_opens(&ns(h0), h1.address.docker_api_ip(), 2376),
    );
    assert_success(
        &h1.docker(&["run", "-d", "--name", "marker", TEST_IMAGE, "sleep", "600"]),
        "docker run marker on 0.2",
    );
    let id1_engine = stdout(&h1.docker(&["info", "--format", "{{.ID}}"]))
        .trim()
        .to_string();

    // 1. docker-env prints what docker-machine's `env` would.
    let env = h0.arpanet(&["docker-env", "0.2"]);
    assert_success(&env, "arpanet docker-env 0.2");
    let cert_path = h0.identity_files().dir;
    assert_eq!(
        stdout(&env),
        format!(
            "export DOCKER_HOST=\"tcp://10.254.0.2:2376\"\n\
             export DOCKER_TLS_VERIFY=\"1\"\n\
             export DOCKER_CERT_PATH=\"{}\"\n\
             # Run this command to configure your shell:\n\
             # eval \"$(arpanet --config \"{}\" docker-env 0.2)\"\n",
            cert_path.display(),
            h0.config_path().display()
        )
    );
    let json = h0.arpanet(&["docker-env", "0.2", "--json"]);
    assert_success(&json, "arpanet docker-env 0.2 --json");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&json.stdout).unwrap(),
        serde_json::json!({
            "DOCKER_HOST": "tcp://10.254.0.2:2376",
            "DOCKER_TLS_VERIFY": "1",
            "DOCKER_CERT_PATH": cert_path.to_str().unwrap(),
        })
    );
    let unset = h0.arpanet(&["docker-env", "--unset"]);
    assert!(
        stdout(&unset).starts_with("unset DOCKER_HOST DOCKER_TLS_VERIFY DOCKER_CERT_PATH\n"),
        "{}",
        stdout(&unset)
    );
    // Root only: the key is 0600.
    let nobody = h0.exec(&[
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        env!("CARGO_BIN_EXE_arpanet"),
        "--config",
        h0.config_path().to_str().unwrap(),
        "docker-env",
        "0.2",
    ]);
    assert!(!nobody.status.success());
    assert_eq!(
        String::from_utf8_lossy(&nobody.stderr),
        format!(
            "error: {} is readable by root only: run docker-env, and docker, as root\n",
            h0.identity_files().node_key().display()
        )
    );

    // 2. With it, docker on 0.1 works against 0.2's engine.
    let script = "docker ps --format '{{.Names}}' && docker info --format 'engine={{.ID}}'";
    let ps = with_docker_env(h0, "0.2", script);
    assert_success(&ps, "docker ps against 0.2 after docker-env");
    let text = stdout(&ps);
    assert!(text.lines().any(|l| l == "marker"), "{text}");
    assert!(text.contains(&format!("engine={id1_engine}")), "{text}");

    // 3. Without the certificates, with another CA's, with an expired one: refused.
    let host = "tcp://10.254.0.2:2376";
    let plain = docker_in(h0, &[], &["-H", host, "ps"]);
    assert!(!plain.status.success(), "{}", all_output(&plain));
    assert!(
        all_output(&plain).contains("Client sent an HTTP request to an HTTPS server"),
        "{}",
        all_output(&plain)
    );
    let now = SystemTime::now();
    let day = Duration::from_secs(24 * 3600);
    let foreign = issue(
        &Ca::generate("arpanet-lab").unwrap(),
        &h0.dir.join("foreign"),
        now - day,
        now + day,
    );
    let expired = issue(&lab.ca, &h0.dir.join("expired"), now - 3 * day, now - day);
    let ca = h0.identity_files().ca_cert();
    // The control: a certificate issued the same way, valid and from the cluster CA.
    let valid = issue(&lab.ca, &h0.dir.join("valid"), now - day, now + day);
    let tls_args = |dir: &Path| {
        [
            "--tlsverify".to_string(),
            "--tlscacert".into(),
            ca.display().to_string(),
            "--tlscert".into(),
            dir.join("cert.pem").display().to_string(),
            "--tlskey".into(),
            dir.join("key.pem").display().to_string(),
            "-H".into(),
            host.into(),
            "ps".into(),
        ]
    };
    let args = tls_args(&valid);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = docker_in(h0, &[], &args);
    assert_success(
        &out,
        "docker ps with a valid certificate from the cluster CA",
    );
    for (what, dir) in [("another CA's", &foreign), ("an expired", &expired)] {
        let args = tls_args(dir);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = docker_in(h0, &[], &args);
        let text = all_output(&out);
        assert!(
            !out.status.success() && !text.contains("marker"),
            "{what} certificate got in: {text}"
        );
        assert!(text.contains("certificate"), "{what} certificate: {text}");
        eprintln!("MEASURED: docker with {what} certificate: {}", text.trim());
    }
    // A client node's certificate, valid and from the cluster CA: a client taken over
    // is not root on other nodes.
    let client = issue_for(
        &lab.ca,
        &h0.dir.join("client"),
        Role::Client,
        now - day,
        now + day,
    );
    let args = tls_args(&client);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = docker_in(h0, &[], &args);
    let text = all_output(&out);
    assert!(
        !out.status.success() && !text.contains("marker"),
        "a client's certificate got in: {text}"
    );
    assert!(
        text.contains("servers' certificates only") || text.contains("Forbidden"),
        "{text}"
    );
    eprintln!(
        "MEASURED: docker with a client's certificate: {}",
        text.trim()
    );

    // 4. A certificate that got in is refused once its serial is in 0.2's revocation
    // list, with nothing restarted; the node's own still gets in.
    let serial = |dir: &Path| {
        let pem = std::fs::read_to_string(dir.join("cert.pem")).unwrap();
        arpanet::identity::CertInfo::from_pem(&pem).unwrap().serial
    };
    std::fs::write(
        arpanet::paths::revoked_serials(
            &arpanet::config::Config::load(&h1.config_path())
                .unwrap()
                .paths,
        ),
        serde_json::to_vec(&[serial(&valid)]).unwrap(),
    )
    .unwrap();
    let args = tls_args(&valid);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = docker_in(h0, &[], &args);
    let text = all_output(&out);
    assert!(
        !out.status.success() && !text.contains("marker"),
        "a revoked certificate got in: {text}"
    );
    assert!(
        text.contains("certificate"),
        "a revoked certificate: {text}"
    );
    eprintln!(
        "MEASURED: docker with a revoked certificate: {}",
        text.trim()
    );
    let ps = with_docker_env(h0, "0.2", "docker ps --format '{{.Names}}'");
    assert_success(&ps, "docker ps against 0.2 with a revocation list");
    assert!(stdout(&ps).lines().any(|l| l == "marker"));

    // 5. 0.2 renews its certificate while everything runs: the next connection gets
    // the new one, docker-env still works, dockerd was not restarted. Hijacked
    // connections (exec, with stdin closed half-way) go through the relay too.
    let served_serial = || {
        let id = h0.identity_files();
        let out = h0.exec(&[
            "sh",
            "-c",
            &format!(
                "openssl s_client -connect 10.254.0.2:2376 -CAfile {} -cert {} -key {} </dev/null 2>/dev/null | openssl x509 -noout -serial",
                id.ca_cert().display(),
                id.node_cert().display(),
                id.node_key().display()
            ),
        ]);
        stdout(&out)
            .trim()
            .trim_start_matches("serial=")
            .to_ascii_lowercase()
    };
    let old = serial(&h1.identity_files().dir);
    assert_eq!(served_serial(), old);
    lab.enroll(1, Role::Server);
    let new = serial(&h1.identity_files().dir);
    assert_ne!(new, old);
    assert_eq!(
        served_serial(),
        new,
        "the relay serves the renewed certificate"
    );
    let script = "docker ps --format '{{.Names}}' && docker exec marker echo hi \
                  && echo piped | docker exec -i marker cat";
    let ps = with_docker_env(h0, "0.2", script);
    assert_success(&ps, "docker ps and exec against 0.2 after its renewal");
    let text = stdout(&ps);
    assert!(text.lines().any(|l| l == "marker"), "{text}");
    assert!(text.lines().any(|l| l == "hi"), "{text}");
    assert!(text.lines().any(|l| l == "piped"), "{text}");
    assert_eq!(dockerd_pid(), pid_before, "dockerd was restarted");

    // 6. ARPANET-INPUT flushed on both nodes: TLS is what holds now. arpanetd holds
    // it, so it keeps running, with a resync period long enough that it does not put
    // the rules back meanwhile (checked again at the end).
    for h in nodes {
        let config = std::fs::read_to_string(h.config_path()).unwrap();
        assert!(config.contains("resync = \"1s\""), "{config}");
        std::fs::write(
            h.config_path(),
            config.replace("resync = \"1s\"", "resync = \"1h\""),
        )
        .unwrap();
        let pid = std::fs::read_to_string(h.dir.join("arpanetd.pid.spawned")).unwrap();
        assert_success(
            &std::process::Command::new("kill")
                .args(["-HUP", pid.trim()])
                .output()
                .unwrap(),
            "kill -HUP arpanetd",
        );
        wait_until(Duration::from_secs(10), "the reload", || {
            h.log("arpanetd").contains("configuration reloaded")
        });
    }
    // The passes the reload starts (a converge, and the new interval's first tick).
    std::thread::sleep(Duration::from_secs(5));
    for h in nodes {
        assert_success(
            &h.exec(&["iptables", "-F", "ARPANET-INPUT"]),
            "iptables -F ARPANET-INPUT",
        );
        assert_eq!(
            stdout(&h.exec(&["iptables", "-S", "ARPANET-INPUT"])).trim(),
            "-N ARPANET-INPUT"
        );
    }
    // A stranger on the underlay routes 0.1's Docker plane address through it.
    let route = stranger.exec(&[
        "ip",
        "route",
        "add",
        "10.254.0.1/32",
        "via",
        &h0.underlay_ip.to_string(),
        "dev",
        &stranger.underlay_interface,
    ]);
    assert_success(&route, "the stranger's route to 10.254.0.1");
    let api = h0.address.docker_api_ip();
    assert!(
        tcp_opens(&ns(stranger), api, 2376),
        "with the firewall flushed the stranger must reach {api}:2376 (or this test proves nothing)"
    );
    let (code, text) = curl(&ns(stranger), &format!("http://{api}:2376/version"), &[]);
    assert!(
        text.contains("Client sent an HTTP request to an HTTPS server")
            && !text.contains("ApiVersion"),
        "plain HTTP from the stranger (curl {code}): {text}"
    );
    let https = format!("https://{api}:2376/version");
    let (code, text) = curl(&ns(stranger), &https, &["-k"]);
    assert!(
        code != 0 && !text.contains("ApiVersion"),
        "TLS without a client certificate from the stranger (curl {code}): {text}"
    );
    eprintln!(
        "MEASURED: the stranger without a certificate: curl {code}: {}",
        text.trim()
    );
    for (what, dir) in [("another CA's", &foreign), ("an expired", &expired)] {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let (code, text) = curl(
            &ns(stranger),
            &https,
            &[
                "-k",
                "--cert",
                cert.to_str().unwrap(),
                "--key",
                key.to_str().unwrap(),
            ],
        );
        assert!(
            code != 0 && !text.contains("ApiVersion"),
            "the stranger with {what} certificate (curl {code}): {text}"
        );
    }
    assert!(
        !tcp_opens(&ns(stranger), api, 2375),
        "something answers on {api}:2375"
    );
    assert!(!tcp_opens(&ns(stranger), h0.underlay_ip, 2376));

    // A container on 0.1, to its own node's Docker plane address (docker0, INPUT): the
    // host's curl, read-only with its libraries, with no certificate.
    let script = format!(
        "wget -q -O - http://{api}:2376/version 2>&1; echo wget=$?; \
         /usr/bin/curl -sS --max-time 10 http://{api}:2376/version 2>&1; echo; \
         /usr/bin/curl -sSk --max-time 10 https://{api}:2376/version 2>&1; echo https=$?; \
         /usr/bin/curl -sS --max-time 5 http://{api}:2375/version 2>&1; echo plain=$?"
    );
    let run = h0.docker(&[
        "run",
        "--rm",
        "-v",
        "/usr:/usr:ro",
        "-v",
        "/lib:/lib:ro",
        "-v",
        "/lib64:/lib64:ro",
        TEST_IMAGE,
        "sh",
        "-c",
        &script,
    ]);
    let text = all_output(&run);
    eprintln!(
        "MEASURED: a container on 0.1 without a certificate:\n{}",
        text.trim()
    );
    assert!(!text.contains("ApiVersion"), "a container got in: {text}");
    assert!(
        text.contains("Client sent an HTTP request to an HTTPS server"),
        "the container must reach dockerd (firewall flushed) and be refused by TLS: {text}"
    );
    assert!(
        !text.contains("https=0") && text.contains("https="),
        "TLS without a certificate: {text}"
    );
    assert!(
        text.contains("plain=7"),
        "nothing may answer on 2375 (curl 7: refused): {text}"
    );

    // The nodes themselves, with their certificates, still get in.
    let ps = with_docker_env(h0, "0.2", "docker ps --format '{{.Names}}'");
    assert_success(&ps, "docker ps against 0.2 with the firewall flushed");
    assert!(stdout(&ps).lines().any(|l| l == "marker"));
    for h in nodes {
        assert_eq!(
            stdout(&h.exec(&["iptables", "-S", "ARPANET-INPUT"])).trim(),
            "-N ARPANET-INPUT",
            "the firewall was put back during the checks: they prove nothing"
        );
    }

    lab.teardown().expect("teardown");
}

#[test]
fn a_node_without_an_identity_keeps_docker_on_its_unix_socket() {
    require_lab!();
    let lab = Lab::builder(1).start();
    let h = &lab.hosts[0];
    lab.write_arpanet_config(0, "boot", &[], NO_CONSUL);
    let files = h.identity_files();
    std::fs::remove_file(files.node_cert()).unwrap();
    let out = h.arpanetd_once();
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    assert_success(&out, "arpanetd --once without an identity");
    let json = std::fs::read_to_string(h.daemon_json()).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        parsed["hosts"],
        serde_json::json!([format!("unix://{}", h.docker_socket().display())]),
        "{json}"
    );
    assert!(!json.contains("tls"), "{json}");
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&files.node_cert().display().to_string()))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].contains("does not exist") && lines[0].contains("unix socket only"),
        "{log}"
    );
    h.start_dockerd(Dockerd::ConfigFile(h.daemon_json()));
    h.wait_for_dockerd();
    assert!(
        !tcp_opens(&ns(h), h.address.docker_api_ip(), 2376)
            && !tcp_opens(&ns(h), h.address.docker_api_ip(), 2375),
        "dockerd listens on TCP without an identity"
    );
    let env = h.arpanet(&["docker-env", "0.1"]);
    assert!(!env.status.success());
    assert_eq!(
        String::from_utf8_lossy(&env.stderr),
        format!(
            "error: {} does not exist: this node has no cluster identity, so it has no certificate for Docker's API\n",
            files.node_cert().display()
        )
    );
    lab.teardown().expect("teardown");
}
