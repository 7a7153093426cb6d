//! Checks a `docker save` tarball against the image ID before it is loaded. The torrent's
//! piece hashes already say the bytes are the ones the pusher hashed; this says they
//! are the image the record names: the config's SHA-256 is the image ID, and each layer
//! hashes to the diff ID that config lists. Works for the legacy layout (Docker 20.10:
//! `ID.json`, `X/layer.tar`) and the OCI one (Docker 25+: `blobs/sha256/...`).
//!
//! The manifest's RepoTags are the tags the pushing node's Docker gave the image. They
//! are not covered by the image ID, but the torrent's piece hashes tie them to the
//! bytes the holders have, and holders are nodes (a peer is a node's overlay address),
//! so they are what a pulled image may be tagged as. A record's tags in KV are only an
//! index: anyone who can write KV can write them.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, anyhow, bail};
use serde::Deserialize;
use sha2::{Digest, Sha256};

#[derive(Deserialize)]
struct ManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
}

/// At most this much of manifest.json and the config is kept in memory.
const SMALL: usize = 4 << 20;

#[derive(Deserialize)]
struct ImageConfig {
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

/// Reads the tarball once, hashing every member, then checks the chain
/// ID -> config -> layers. Returns the manifest's RepoTags, or a one-line reason when
/// anything differs.
pub fn verify(path: &Path, image_id: &str) -> anyhow::Result<Vec<String>> {
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut archive = tar::Archive::new(std::io::BufReader::with_capacity(1 << 20, file));
    let mut digests: HashMap<String, String> = HashMap::new();
    let mut small: HashMap<String, Vec<u8>> = HashMap::new();
    let mut buf = vec![0u8; 1 << 20];
    for entry in archive.entries().context("read the tarball")? {
        let mut entry = entry.context("read the tarball")?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()
            .context("a member's name")?
            .display()
            .to_string();
        let mut hasher = Sha256::new();
        let mut keep = Vec::new();
        loop {
            let n = entry
                .read(&mut buf)
                .with_context(|| format!("read {name}"))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            // manifest.json and configs are small; layers are only hashed.
            if keep.len() < SMALL {
                keep.extend_from_slice(&buf[..n]);
            }
        }
        let digest = hex(&hasher.finalize());
        digests.insert(name.clone(), digest);
        if keep.len() < SMALL {
            small.insert(name, keep);
        }
    }
    let manifest = small
        .get("manifest.json")
        .ok_or_else(|| anyhow!("no manifest.json: not a `docker save` tarball"))?;
    let manifest = one_image(manifest)?;
    let entry = &manifest;
    let want = crate::imagesync::id_hex(image_id);
    let config_digest = digests
        .get(&entry.config)
        .ok_or_else(|| anyhow!("the config {} is missing", entry.config))?;
    if config_digest != want {
        bail!(
            "the image config hashes to {}, not the image ID {}",
            short(config_digest),
            short(want)
        );
    }
    let config: ImageConfig = serde_json::from_slice(&small[&entry.config])
        .with_context(|| format!("the config {} does not parse", entry.config))?;
    if config.rootfs.diff_ids.len() != entry.layers.len() {
        bail!(
            "the config lists {} layers, the manifest {}",
            config.rootfs.diff_ids.len(),
            entry.layers.len()
        );
    }
    for (layer, diff_id) in entry.layers.iter().zip(&config.rootfs.diff_ids) {
        let got = digests
            .get(layer)
            .ok_or_else(|| anyhow!("the layer {layer} is missing"))?;
        if got != crate::imagesync::id_hex(diff_id) {
            bail!(
                "the layer {layer} hashes to {}, not {}",
                short(got),
                short(crate::imagesync::id_hex(diff_id))
            );
        }
    }
    Ok(entry.repo_tags.clone().unwrap_or_default())
}

fn one_image(manifest: &[u8]) -> anyhow::Result<ManifestEntry> {
    let mut manifest: Vec<ManifestEntry> =
        serde_json::from_slice(manifest).context("manifest.json does not parse")?;
    if manifest.len() != 1 {
        bail!("manifest.json lists {} images, not one", manifest.len());
    }
    Ok(manifest.pop().expect("one"))
}

/// The RepoTags of a tarball's manifest, skipping over the layers (for a tarball already
/// checked, whose image Docker has). An unfinished tarball has no manifest yet: an error.
pub fn repo_tags(path: &Path) -> anyhow::Result<Vec<String>> {
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut archive = tar::Archive::new(file);
    for entry in archive.entries_with_seek().context("read the tarball")? {
        let entry = entry.context("read the tarball")?;
        if entry.path().context("a member's name")?.as_os_str() != "manifest.json" {
            continue;
        }
        let mut bytes = Vec::new();
        entry
            .take(SMALL as u64)
            .read_to_end(&mut bytes)
            .context("read manifest.json")?;
        return Ok(one_image(&bytes)?.repo_tags.unwrap_or_default());
    }
    bail!("no manifest.json in {}", path.display())
}

fn short(hex: &str) -> &str {
    &hex[..hex.len().min(12)]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tarball in the legacy layout with one layer; returns (path, image ID).
    fn tarball(dir: &Path, layer: &[u8]) -> (std::path::PathBuf, String) {
        tagged_tarball(dir, layer, "null")
    }

    /// The same, its manifest's RepoTags `tags` (JSON).
    fn tagged_tarball(dir: &Path, layer: &[u8], tags: &str) -> (std::path::PathBuf, String) {
        let diff = hex(&Sha256::digest(layer));
        let config = format!(r#"{{"rootfs":{{"type":"layers","diff_ids":["sha256:{diff}"]}}}}"#);
        let id = hex(&Sha256::digest(config.as_bytes()));
        let manifest =
            format!(r#"[{{"Config":"{id}.json","RepoTags":{tags},"Layers":["l1/layer.tar"]}}]"#);
        let path = dir.join("image.tar");
        let mut builder = tar::Builder::new(std::fs::File::create(&path).unwrap());
        for (name, data) in [
            ("l1/layer.tar", layer.to_vec()),
            (&format!("{id}.json") as &str, config.into_bytes()),
            ("manifest.json", manifest.into_bytes()),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, name, data.as_slice())
                .unwrap();
        }
        builder.finish().unwrap();
        (path, format!("sha256:{id}"))
    }

    #[test]
    fn an_intact_image_passes() {
        let dir = tempfile::tempdir().unwrap();
        let (path, id) = tarball(dir.path(), b"layer bytes");
        assert!(verify(&path, &id).unwrap().is_empty());
        assert!(repo_tags(&path).unwrap().is_empty());
    }

    #[test]
    fn the_tags_a_tarball_carries_are_its_manifests() {
        let dir = tempfile::tempdir().unwrap();
        let (path, id) = tagged_tarball(dir.path(), b"layer", r#"["web:1","web:latest"]"#);
        assert_eq!(verify(&path, &id).unwrap(), ["web:1", "web:latest"]);
        assert_eq!(repo_tags(&path).unwrap(), ["web:1", "web:latest"]);
        // A tarball cut off before its manifest names no tag.
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..1024]).unwrap();
        assert!(repo_tags(&path).is_err());
    }

    #[test]
    fn a_changed_layer_or_another_id_fails_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let (path, id) = tarball(dir.path(), b"layer bytes");
        let other = format!("sha256:{}", "0".repeat(64));
        let e = verify(&path, &other).unwrap_err().to_string();
        assert!(e.contains("not the image ID 000000000000"), "{e}");

        // Flip one byte of the layer's contents (the first member's data block).
        let mut bytes = std::fs::read(&path).unwrap();
        let at = 512 + 2;
        bytes[at] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let e = verify(&path, &id).unwrap_err().to_string();
        assert!(e.contains("the layer l1/layer.tar hashes to"), "{e}");
    }

    #[test]
    fn not_a_docker_save_tarball() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.tar");
        std::fs::write(&path, vec![0u8; 1024]).unwrap();
        let e = verify(&path, "sha256:00").unwrap_err().to_string();
        assert!(e.contains("no manifest.json"), "{e}");
    }
}
