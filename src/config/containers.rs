//! `/etc/arpanet/containers.d/*.toml`: containers this host must run (dockerup's
//! options, plus labels and a Consul service). Each file holds `[[container]]` tables.
//!
//! A file that fails to parse is reported and skipped on its own: the others still load,
//! so one typo never takes down what other files declare.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::diagnostic::{self, Diagnostic};

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainersFile {
    #[serde(default)]
    pub container: Vec<ContainerSpec>,
}

/// One `[[container]]`. Its `Serialize` is only for `containers::spec_hash`, the label
/// that tells a running container's spec; KV records and API bodies carry
/// `placement::wire::ContainerSpecV1`, so an edit here changes no record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    pub name: ContainerName,
    pub image: ImageRef,
    /// CPU shares (Docker's `--cpu-shares`).
    pub cpu: Option<CpuShares>,
    /// Memory limit, as Docker writes it: "512m", "2g".
    pub memory: Option<MemoryLimit>,
    pub entrypoint: Option<Vec<String>>,
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub privileged: bool,
    #[serde(default)]
    pub network: NetworkMode,
    #[serde(default)]
    pub volumes: Vec<Volume>,
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub restart: RestartPolicy,
    #[serde(default)]
    pub update: UpdatePolicy,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub service: Option<ServiceSpec>,
}

/// Docker's rule for container names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ContainerName(String);

impl ContainerName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl ContainerName {
    /// Docker's rule, which also fits container IDs and ID prefixes, capped at 128
    /// characters: nothing that could step out of a URL path segment (`..`, `/`, `?`).
    pub fn check(s: &str) -> Result<(), String> {
        let mut bytes = s.bytes();
        let first_ok = bytes.next().is_some_and(|c| c.is_ascii_alphanumeric());
        if first_ok
            && s.len() <= 128
            && bytes.all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(&c))
        {
            Ok(())
        } else {
            Err(format!(
                "`{}` is not a container name: letters, digits, `_`, `.` or `-`, starting with a letter or digit, at most 128 characters",
                s.escape_debug()
            ))
        }
    }
}

impl TryFrom<String> for ContainerName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::check(&s)?;
        Ok(Self(s))
    }
}

impl From<ContainerName> for String {
    fn from(n: ContainerName) -> String {
        n.0
    }
}

/// An image reference with an explicit tag or digest: arpanet never guesses `latest`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ImageRef(String);

impl ImageRef {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ImageRef {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.is_empty() || s.chars().any(char::is_whitespace) {
            return Err(format!("`{s}` is not an image reference"));
        }
        let last = s.rsplit('/').next().unwrap_or(&s);
        if !(last.contains(':') || s.contains('@')) {
            return Err(format!(
                "image `{s}` has no tag: name the one you mean, e.g. `{s}:1.0` (arpanet does not assume `latest`)"
            ));
        }
        Ok(Self(s))
    }
}

impl From<ImageRef> for String {
    fn from(i: ImageRef) -> String {
        i.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct CpuShares(pub u32);

impl TryFrom<i64> for CpuShares {
    type Error = String;
    fn try_from(v: i64) -> Result<Self, String> {
        // The kernel's bounds for cpu.shares.
        if (2..=262_144).contains(&v) {
            Ok(Self(v as u32))
        } else {
            Err(format!(
                "cpu shares {v} out of range: 2 to 262144 (1024 is one CPU's default weight)"
            ))
        }
    }
}

impl From<CpuShares> for i64 {
    fn from(c: CpuShares) -> i64 {
        c.0.into()
    }
}

/// Bytes, written like Docker's `--memory`: a number with an optional b, k, m or g.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MemoryLimit(pub u64);

/// Docker refuses limits below 6 MiB.
const MIN_MEMORY: u64 = 6 * 1024 * 1024;

impl TryFrom<String> for MemoryLimit {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a memory size: write e.g. \"512m\" or \"2g\"");
        let lower = s.trim().to_ascii_lowercase();
        let (digits, unit) = match lower.find(|c: char| !c.is_ascii_digit()) {
            Some(i) => lower.split_at(i),
            None => (lower.as_str(), "b"),
        };
        let scale: u64 = match unit {
            "b" => 1,
            "k" | "kb" => 1 << 10,
            "m" | "mb" => 1 << 20,
            "g" | "gb" => 1 << 30,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        let bytes = n.checked_mul(scale).ok_or_else(bad)?;
        if bytes < MIN_MEMORY {
            return Err(format!("memory `{s}` is below Docker's minimum of 6m"));
        }
        Ok(Self(bytes))
    }
}

impl From<MemoryLimit> for String {
    fn from(m: MemoryLimit) -> String {
        format!("{}b", m.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NetworkMode {
    #[default]
    Bridge,
    None,
    Host,
    /// Share another container's network namespace.
    Container(String),
}

impl Serialize for NetworkMode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            NetworkMode::Bridge => s.serialize_str("bridge"),
            NetworkMode::None => s.serialize_str("none"),
            NetworkMode::Host => s.serialize_str("host"),
            NetworkMode::Container(c) => s.collect_str(&format_args!("container:{c}")),
        }
    }
}

impl<'de> Deserialize<'de> for NetworkMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "bridge" => Ok(Self::Bridge),
            "none" => Ok(Self::None),
            "host" => Ok(Self::Host),
            other => match other.strip_prefix("container:") {
                Some(name) if !name.is_empty() => Ok(Self::Container(name.to_string())),
                _ => Err(serde::de::Error::custom(format!(
                    "`{s}` is not a network mode: bridge, none, host or container:NAME"
                ))),
            },
        }
    }
}

/// A host directory, an anonymous volume (container path only), or every volume of
/// another container (`from`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawVolume")]
pub enum Volume {
    Bind {
        host: PathBuf,
        container: PathBuf,
        read_only: bool,
    },
    Anonymous {
        container: PathBuf,
    },
    From {
        container: String,
        read_only: bool,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVolume {
    host: Option<PathBuf>,
    container: Option<PathBuf>,
    from: Option<String>,
    #[serde(default)]
    mode: VolumeMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum VolumeMode {
    #[default]
    Rw,
    Ro,
}

impl TryFrom<RawVolume> for Volume {
    type Error = String;
    fn try_from(raw: RawVolume) -> Result<Self, String> {
        let read_only = raw.mode == VolumeMode::Ro;
        Volume::from_parts(raw.host, raw.container, raw.from, read_only)
    }
}

impl Volume {
    /// The one rule for a volume, whichever format (this file's, a KV record's) names
    /// its parts.
    pub fn from_parts(
        host: Option<PathBuf>,
        container: Option<PathBuf>,
        from: Option<String>,
        read_only: bool,
    ) -> Result<Self, String> {
        let absolute = |p: &Path, key: &str| {
            if p.is_absolute() {
                Ok(())
            } else {
                Err(format!(
                    "volume `{key}` must be an absolute path, not `{}`",
                    p.display()
                ))
            }
        };
        match (host, container, from) {
            (None, None, Some(from)) => Ok(Volume::From { container: from, read_only }),
            (host, Some(container), None) => {
                absolute(&container, "container")?;
                match host {
                    Some(host) => {
                        absolute(&host, "host")?;
                        Ok(Volume::Bind { host, container, read_only })
                    }
                    None if read_only => Err("an anonymous volume cannot be read-only".into()),
                    None => Ok(Volume::Anonymous { container }),
                }
            }
            _ => Err(
                "a volume is either { container = PATH } with an optional `host`, or { from = CONTAINER }".into(),
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortMapping {
    pub container: u16,
    /// Published on the host when set; otherwise reachable on the container IP only.
    pub host: Option<u16>,
    #[serde(default)]
    pub protocol: Protocol,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpdatePolicy {
    /// Pull the tag on every reconcile and replace the container when its digest moved.
    pub pull: bool,
    /// Start the replacement before stopping the old container.
    pub eager: bool,
}

impl Default for UpdatePolicy {
    fn default() -> Self {
        Self {
            pull: true,
            eager: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Defaults to the container's name.
    pub name: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Defaults to the container's only port, if it has exactly one.
    pub port: Option<u16>,
    pub check: Option<CheckSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawCheck")]
pub struct CheckSpec {
    pub kind: CheckKind,
    pub interval: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    Http { path: String },
    Tcp,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    #[serde(rename = "type")]
    kind: CheckType,
    path: Option<String>,
    #[serde(default = "default_interval", with = "super::duration_text")]
    interval: Duration,
    #[serde(default = "default_timeout", with = "super::duration_text")]
    timeout: Duration,
}

/// A check's `type`, before its `path` makes it a [`CheckKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckType {
    Http,
    Tcp,
}

fn default_interval() -> Duration {
    CheckSpec::DEFAULT_INTERVAL
}
fn default_timeout() -> Duration {
    CheckSpec::DEFAULT_TIMEOUT
}

impl TryFrom<RawCheck> for CheckSpec {
    type Error = String;
    fn try_from(raw: RawCheck) -> Result<Self, String> {
        CheckSpec::from_parts(raw.kind, raw.path, raw.interval, raw.timeout)
    }
}

impl CheckSpec {
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

    /// The one rule for a check, whichever format (this file's, a KV record's) names
    /// its parts.
    pub fn from_parts(
        kind: CheckType,
        path: Option<String>,
        interval: Duration,
        timeout: Duration,
    ) -> Result<Self, String> {
        let kind = match (kind, path) {
            (CheckType::Http, path) => {
                let path = path.unwrap_or_else(|| "/".into());
                if !path.starts_with('/') {
                    return Err(format!("check `path` must start with `/`, not `{path}`"));
                }
                CheckKind::Http { path }
            }
            (CheckType::Tcp, None) => CheckKind::Tcp,
            (CheckType::Tcp, Some(_)) => return Err("a tcp check takes no `path`".into()),
        };
        if timeout > interval {
            return Err("check `timeout` must not be longer than its `interval`".into());
        }
        Ok(Self {
            kind,
            interval,
            timeout,
        })
    }
}

/// A container declared by a file, with where it was declared (for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredContainer {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub spec: ContainerSpec,
}

/// Everything containers.d declares, plus the problems of the files that were skipped.
#[derive(Debug, Default)]
pub struct ContainersDir {
    pub containers: Vec<DeclaredContainer>,
    /// Files that failed to parse. Their containers are unknown, so callers must
    /// leave whatever those files declared before untouched.
    pub broken_files: Vec<PathBuf>,
    pub diagnostics: Vec<Diagnostic>,
}

/// Reads every `*.toml` in `dir` in name order. A missing directory declares nothing.
pub fn load_dir(dir: &Path) -> ContainersDir {
    let mut out = ContainersDir::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return out,
        Err(e) => {
            out.diagnostics.push(Diagnostic::whole_file(
                dir,
                format!("cannot read directory: {e}"),
            ));
            return out;
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();

    let mut seen: HashMap<ContainerName, (PathBuf, usize)> = HashMap::new();
    for file in files {
        match load_file(&file) {
            Ok(declared) => {
                let mut file_ok = true;
                for d in &declared {
                    if let Some((first_file, first_line)) = seen.get(&d.spec.name) {
                        out.diagnostics.push(Diagnostic {
                            file: file.clone(),
                            position: Some((d.line, d.column)),
                            message: format!(
                                "container `{}` is already declared at {}:{}",
                                d.spec.name.as_str(),
                                first_file.display(),
                                first_line
                            ),
                        });
                        file_ok = false;
                    }
                }
                if file_ok {
                    for d in &declared {
                        seen.insert(d.spec.name.clone(), (d.file.clone(), d.line));
                    }
                    out.containers.extend(declared);
                } else {
                    out.broken_files.push(file);
                }
            }
            Err(d) => {
                out.diagnostics.push(d);
                out.broken_files.push(file);
            }
        }
    }
    out
}

/// Parses one file; duplicate names within it are an error of the file.
pub fn load_file(file: &Path) -> Result<Vec<DeclaredContainer>, Diagnostic> {
    let source = std::fs::read_to_string(file)
        .map_err(|e| Diagnostic::whole_file(file, format!("cannot read: {e}")))?;
    let parsed: ContainersFile = diagnostic::parse_toml(file, &source)?;

    // A second, lenient pass finds where each table starts, for messages that
    // point at a whole container rather than one value.
    #[derive(Deserialize)]
    struct Located {
        #[serde(default)]
        container: Vec<LocatedContainer>,
    }
    #[derive(Deserialize)]
    struct LocatedContainer {
        name: toml::Spanned<String>,
    }
    let located: Located =
        toml::from_str(&source).map_err(|e| Diagnostic::whole_file(file, e.message()))?;

    let mut declared = Vec::new();
    let mut lines: HashMap<&str, usize> = HashMap::new();
    for (spec, loc) in parsed.container.into_iter().zip(&located.container) {
        let (line, col) = diagnostic::line_col(&source, loc.name.span().start);
        if let Some(first) = lines.get(loc.name.get_ref().as_str()) {
            return Err(Diagnostic {
                file: file.to_path_buf(),
                position: Some((line, col)),
                message: format!(
                    "container `{}` is already declared on line {first}",
                    loc.name.get_ref()
                ),
            });
        }
        lines.insert(loc.name.get_ref(), line);
        declared.push(DeclaredContainer {
            file: file.to_path_buf(),
            line,
            column: col,
            spec,
        });
    }
    Ok(declared)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ContainersFile, String> {
        diagnostic::parse_toml(Path::new("web.toml"), s).map_err(|d| d.to_string())
    }

    #[test]
    fn every_dockerup_option_parses() {
        let f = parse(
            r#"
[[container]]
name = "web"
image = "registry.example/web:1.2"
cpu = 512
memory = "2048m"
entrypoint = ["/bin/sh", "-c"]
command = ["httpd -f"]
privileged = true
network = "container:db"
volumes = [
  { host = "/srv/web", container = "/data", mode = "ro" },
  { container = "/cache" },
  { from = "db" },
]
ports = [{ container = 80, host = 8080 }, { container = 53, protocol = "udp" }]
env = { MODE = "prod" }
restart = "on-failure"
update = { pull = false, eager = true }
labels = { team = "infra" }
service = { name = "www", tags = ["v1"], port = 80, check = { type = "http", path = "/health", interval = "5s", timeout = "1s" } }
"#,
        )
        .unwrap();
        let c = &f.container[0];
        assert_eq!(c.memory, Some(MemoryLimit(2048 << 20)));
        assert_eq!(c.network, NetworkMode::Container("db".into()));
        assert_eq!(c.volumes.len(), 3);
        assert!(matches!(
            c.volumes[0],
            Volume::Bind {
                read_only: true,
                ..
            }
        ));
        assert!(matches!(c.volumes[2], Volume::From { .. }));
        assert_eq!(c.ports[1].protocol, Protocol::Udp);
        assert_eq!(c.restart, RestartPolicy::OnFailure);
        assert_eq!(
            c.update,
            UpdatePolicy {
                pull: false,
                eager: true
            }
        );
        let check = c.service.as_ref().unwrap().check.as_ref().unwrap();
        assert_eq!(
            check.kind,
            CheckKind::Http {
                path: "/health".into()
            }
        );
        assert_eq!(check.interval, Duration::from_secs(5));
    }

    #[test]
    fn defaults() {
        let f = parse("[[container]]\nname = \"a\"\nimage = \"busybox:1.36\"\n").unwrap();
        let c = &f.container[0];
        assert_eq!(c.network, NetworkMode::Bridge);
        assert_eq!(c.restart, RestartPolicy::Always);
        assert_eq!(
            c.update,
            UpdatePolicy {
                pull: true,
                eager: false
            }
        );
    }

    #[test]
    fn bad_values_name_the_key_and_position() {
        let cases = [
            (
                "image = \"busybox\"",
                "container[0].image: image `busybox` has no tag",
            ),
            (
                "image = \"b:1\"\nmemory = \"2x\"",
                "container[0].memory: `2x` is not a memory size",
            ),
            ("image = \"b:1\"\nmemory = \"1m\"", "below Docker's minimum"),
            (
                "image = \"b:1\"\ncpu = 1",
                "container[0].cpu: cpu shares 1 out of range",
            ),
            (
                "image = \"b:1\"\nnetwork = \"overlay\"",
                "container[0].network: `overlay` is not a network mode",
            ),
            (
                "image = \"b:1\"\nrestart = \"sometimes\"",
                "container[0].restart: unknown variant `sometimes`",
            ),
            (
                "image = \"b:1\"\nvolumes = [{ host = \"/a\" }]",
                "container[0].volumes[0]: a volume is either",
            ),
            (
                "image = \"b:1\"\nvolumes = [{ container = \"rel\" }]",
                "must be an absolute path",
            ),
            ("image = \"b:1\"\nimmage = \"x\"", "unknown field `immage`"),
            (
                "image = \"b:1\"\nservice = { check = { type = \"tcp\", path = \"/\" } }",
                "a tcp check takes no `path`",
            ),
        ];
        for (body, expected) in cases {
            let err = parse(&format!("[[container]]\nname = \"a\"\n{body}\n")).unwrap_err();
            assert!(err.starts_with("web.toml:"), "{err}");
            assert!(err.contains(expected), "{body:?}: {err}");
        }
    }

    #[test]
    fn bad_name_is_refused() {
        let err = parse("[[container]]\nname = \"-x\"\nimage = \"b:1\"\n").unwrap_err();
        assert!(err.starts_with("web.toml:2:8: container[0].name:"), "{err}");
    }

    #[test]
    fn directory_skips_broken_files_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.toml"),
            "[[container]]\nname = \"a\"\nimage = \"b:1\"\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("b.toml"),
            "[[container]]\nname = \"b\"\nimage = \"b:1\"\noops\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("c.toml"),
            "[[container]]\nname = \"c\"\nimage = \"b:1\"\n\n[[container]]\nname = \"a\"\nimage = \"b:2\"\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not toml").unwrap();
        let loaded = load_dir(dir.path());
        let names: Vec<_> = loaded
            .containers
            .iter()
            .map(|c| c.spec.name.as_str())
            .collect();
        assert_eq!(names, ["a"]);
        assert_eq!(loaded.broken_files.len(), 2);
        let messages: Vec<String> = loaded.diagnostics.iter().map(|d| d.to_string()).collect();
        assert!(messages[0].contains("b.toml:4:"), "{messages:?}");
        assert!(
            messages[1].contains("c.toml:6:8: container `a` is already declared at"),
            "{messages:?}"
        );
    }

    #[test]
    fn duplicate_in_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.toml");
        std::fs::write(&f, "[[container]]\nname = \"a\"\nimage = \"b:1\"\n[[container]]\nname = \"a\"\nimage = \"b:1\"\n").unwrap();
        let err = load_file(&f).unwrap_err().to_string();
        assert!(
            err.ends_with("x.toml:5:8: container `a` is already declared on line 2"),
            "{err}"
        );
    }

    #[test]
    fn missing_directory_declares_nothing() {
        let loaded = load_dir(Path::new("/nonexistent/containers.d"));
        assert!(loaded.containers.is_empty() && loaded.diagnostics.is_empty());
    }

    #[test]
    fn example_directory_in_repo_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/arpanet/containers.d");
        let loaded = load_dir(&dir);
        assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
        assert!(!loaded.containers.is_empty());
    }
}
