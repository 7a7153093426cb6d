//! The docker.service drop-in: daemon.json's `hosts` conflicts with the `-H fd://`
//! that distributions put on dockerd's command line, so arpanet restates ExecStart
//! without it. Everything else on the line (`--containerd=...`, `$DOCKER_OPTS`) stays.

use std::path::Path;

use anyhow::Context;

pub const DROPIN: &str = "/etc/systemd/system/docker.service.d/arpanet.conf";

/// `argv` without any form of `-H fd://` (`-H fd://`, `-Hfd://`, `--host=fd://`, `--host fd://`).
pub fn without_fd_host(argv: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut args = argv.iter().peekable();
    while let Some(a) = args.next() {
        let fd = |v: &str| v.starts_with("fd://");
        match a.as_str() {
            "-H" | "--host" if args.peek().is_some_and(|v| fd(v)) => {
                args.next();
            }
            s if s.strip_prefix("--host=").is_some_and(fd)
                || s.strip_prefix("-H").is_some_and(fd) => {}
            _ => out.push(a.clone()),
        }
    }
    out
}

/// One argument as systemd's ExecStart= parses it back.
fn quote(arg: &str) -> String {
    if !arg.is_empty()
        && !arg
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '\'' || c == '\\' || c == ';')
    {
        return arg.to_string();
    }
    format!("\"{}\"", arg.replace('\\', "\\\\").replace('"', "\\\""))
}

pub fn render(argv: &[String]) -> String {
    let line: Vec<String> = without_fd_host(argv).iter().map(|a| quote(a)).collect();
    format!(
        "# Written by arpanetd: the listeners come from /etc/docker/daemon.json (`hosts`).\n\
         # `arpanet uninstall-network` removes this file.\n\
         [Service]\nExecStart=\nExecStart={}\n",
        line.join(" ")
    )
}

/// Writes the drop-in if its content differs. Returns whether it changed.
pub fn apply(path: &Path, content: &str) -> anyhow::Result<bool> {
    if std::fs::read_to_string(path).is_ok_and(|c| c == content) {
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(path, content).with_context(|| format!("write {}", path.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn debian_and_docker_ce_lines_lose_only_the_fd_listener() {
        let debian = argv(
            "/usr/sbin/dockerd -H fd:// --containerd=/run/containerd/containerd.sock $DOCKER_OPTS",
        );
        assert_eq!(
            without_fd_host(&debian),
            argv("/usr/sbin/dockerd --containerd=/run/containerd/containerd.sock $DOCKER_OPTS")
        );
        for form in ["--host=fd://", "-Hfd://", "--host fd://"] {
            let line = argv(&format!("/usr/bin/dockerd {form} --debug"));
            assert_eq!(
                without_fd_host(&line),
                argv("/usr/bin/dockerd --debug"),
                "{form}"
            );
        }
        // A TCP listener the user put there is theirs.
        let tcp = argv("/usr/bin/dockerd -H tcp://127.0.0.1:2375");
        assert_eq!(without_fd_host(&tcp), tcp);
    }

    #[test]
    fn render_is_stable_and_quotes_what_needs_it() {
        let text = render(&[
            "/usr/sbin/dockerd".into(),
            "-H".into(),
            "fd://".into(),
            "--label".into(),
            "a b".into(),
        ]);
        assert!(
            text.ends_with("[Service]\nExecStart=\nExecStart=/usr/sbin/dockerd --label \"a b\"\n"),
            "{text}"
        );
        // Rendering our own line again gives the same file: a second pass changes nothing.
        let again = render(&["/usr/sbin/dockerd".into(), "--label".into(), "a b".into()]);
        assert_eq!(text, again);
    }
}
