//! The engine's images, listed once per pass: which ID a reference names here.

use std::collections::HashMap;

/// Every local image by the references that name it (tags and digests, normalized).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalImages {
    by_reference: HashMap<String, String>,
    ids: Vec<String>,
}

impl LocalImages {
    pub fn from_summaries(images: &[bollard::models::ImageSummary]) -> Self {
        let mut local = Self::default();
        for i in images {
            for r in i.repo_tags.iter().chain(&i.repo_digests) {
                // `<none>:<none>` names nothing.
                if !r.starts_with("<none>") {
                    local.by_reference.insert(normalize(r), i.id.clone());
                }
            }
            local.ids.push(i.id.clone());
        }
        local
    }

    /// For tests: images given as (reference, id).
    pub fn of(images: &[(&str, &str)]) -> Self {
        let mut local = Self::default();
        for (r, id) in images {
            local.by_reference.insert(normalize(r), id.to_string());
            if !local.ids.iter().any(|i| i == id) {
                local.ids.push(id.to_string());
            }
        }
        local
    }

    /// The ID `reference` resolves to here, as `docker image inspect REFERENCE` would
    /// find it: by tag or digest (`busybox` is `docker.io/library/busybox:latest`), or
    /// by ID or a prefix of one of at least 12 hex digits.
    pub fn id(&self, reference: &str) -> Option<&str> {
        if let Some(id) = self.by_reference.get(&normalize(reference)) {
            return Some(id);
        }
        let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
        if hex.len() < 12 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut found = self
            .ids
            .iter()
            .filter(|id| id.trim_start_matches("sha256:").starts_with(hex));
        match (found.next(), found.next()) {
            (Some(id), None) => Some(id),
            _ => None,
        }
    }
}

/// A reference in Docker's full form: a registry (docker.io when none is named),
/// `library/` for official images, and `:latest` when neither tag nor digest is given.
pub fn normalize(reference: &str) -> String {
    let (name, digest) = match reference.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (reference, None),
    };
    // A tag follows the last `:` after the last `/` (a registry's port comes before).
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let (repo, tag) = match name[last_slash..].rfind(':') {
        Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
        None => (name, None),
    };
    // The first component names a registry when it looks like a host (Docker's rule);
    // otherwise the image is on docker.io, where a one-component name is `library/`'s.
    let (domain, rest) = match repo.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (first, rest)
        }
        _ => ("docker.io", repo),
    };
    let domain = if domain == "index.docker.io" {
        "docker.io"
    } else {
        domain
    };
    let repo = if domain == "docker.io" && !rest.contains('/') {
        format!("{domain}/library/{rest}")
    } else {
        format!("{domain}/{rest}")
    };
    match (tag, digest) {
        (_, Some(d)) => format!("{repo}@{d}"),
        (Some(t), None) => format!("{repo}:{t}"),
        (None, None) => format!("{repo}:latest"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_normalized_as_docker_does() {
        for (short, full) in [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1", "docker.io/library/busybox:1"),
            ("docker.io/library/busybox:1", "docker.io/library/busybox:1"),
            ("library/busybox:1", "docker.io/library/busybox:1"),
            (
                "index.docker.io/library/busybox",
                "docker.io/library/busybox:latest",
            ),
            ("me/app:v2", "docker.io/me/app:v2"),
            ("127.0.0.1:5000/app:v2", "127.0.0.1:5000/app:v2"),
            ("127.0.0.1:5000/app", "127.0.0.1:5000/app:latest"),
            ("localhost/app", "localhost/app:latest"),
            ("quay.io/a/b:c", "quay.io/a/b:c"),
            (
                "busybox@sha256:abcd",
                "docker.io/library/busybox@sha256:abcd",
            ),
            (
                "busybox:1@sha256:abcd",
                "docker.io/library/busybox@sha256:abcd",
            ),
        ] {
            assert_eq!(normalize(short), full, "{short}");
        }
    }

    #[test]
    fn a_reference_finds_its_image_by_tag_digest_or_id() {
        let id = format!("sha256:{}", "ab12".repeat(16));
        let other = format!("sha256:{}", "cd34".repeat(16));
        let images = LocalImages::of(&[
            ("busybox:latest", &id),
            ("arpanet-test:1", &other),
            ("busybox@sha256:feed", &id),
        ]);
        assert_eq!(images.id("busybox"), Some(id.as_str()));
        assert_eq!(
            images.id("docker.io/library/busybox:latest"),
            Some(id.as_str())
        );
        assert_eq!(images.id("busybox@sha256:feed"), Some(id.as_str()));
        assert_eq!(images.id("arpanet-test:1"), Some(other.as_str()));
        assert_eq!(images.id("arpanet-test:2"), None);
        assert_eq!(images.id("busybox:1"), None);
        assert_eq!(images.id(&id), Some(id.as_str()));
        assert_eq!(images.id(&"cd34".repeat(4)), Some(other.as_str()));
        assert_eq!(images.id("cd34"), None, "too short a prefix to be an ID");
    }
}
