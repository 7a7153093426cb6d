//! What a manifest refers to: an image manifest's config and layers (blobs), an index's
//! manifests. Read from the manifest's JSON as the OCI image spec and Docker's schema 2
//! lay it out, so the `/v2/` routes (which check that the referents exist) and the
//! listings (which sum sizes and find holders) read descriptors the same way.

use super::spec::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// One descriptor: what it names and how large that is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub digest: Digest,
    pub size: u64,
}

/// What a manifest refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contents {
    /// An image: its blobs, the config first.
    Image {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
    /// An index (multi-platform): manifests of the same repository.
    Index { manifests: Vec<Descriptor> },
}

impl Contents {
    /// The blobs an image needs, the config first; none for an index (its manifests
    /// are manifests, not blobs).
    pub fn blobs(&self) -> Vec<&Descriptor> {
        match self {
            Self::Image { config, layers } => std::iter::once(config).chain(layers).collect(),
            Self::Index { .. } => Vec::new(),
        }
    }

    /// What an image's blobs weigh together (config and layers, as stored, compressed);
    /// 0 for an index.
    pub fn blob_size(&self) -> u64 {
        self.blobs().iter().map(|d| d.size).sum()
    }
}

pub fn is_image(media_type: &str) -> bool {
    [OCI_MANIFEST, DOCKER_MANIFEST].contains(&media_type)
}

pub fn is_index(media_type: &str) -> bool {
    [OCI_INDEX, DOCKER_LIST].contains(&media_type)
}

/// A descriptor's digest, checked by the spec's grammar.
pub fn descriptor_digest(descriptor: &serde_json::Value) -> Result<Digest, String> {
    let digest = descriptor
        .get("digest")
        .and_then(|d| d.as_str())
        .ok_or("a descriptor has no digest")?;
    Digest::parse(digest).map_err(|e| e.to_string())
}

/// A descriptor's digest and size.
pub fn descriptor(descriptor: &serde_json::Value) -> Result<Descriptor, String> {
    let digest = descriptor_digest(descriptor)?;
    let size = descriptor
        .get("size")
        .and_then(|s| s.as_u64())
        .ok_or_else(|| format!("the descriptor of {digest} has no size"))?;
    Ok(Descriptor { digest, size })
}

/// What the manifest of `media_type` refers to; `None` for a media type that is neither
/// an image nor an index (the registry stores those, but they name nothing it knows).
pub fn contents(media_type: &str, json: &serde_json::Value) -> Result<Option<Contents>, String> {
    if is_image(media_type) {
        let config = json
            .get("config")
            .ok_or("an image manifest needs a config")?;
        let layers = json
            .get("layers")
            .and_then(|l| l.as_array())
            .ok_or("an image manifest needs a layers array")?;
        Ok(Some(Contents::Image {
            config: descriptor(config)?,
            layers: layers.iter().map(descriptor).collect::<Result<_, _>>()?,
        }))
    } else if is_index(media_type) {
        let manifests = json
            .get("manifests")
            .and_then(|l| l.as_array())
            .ok_or("an index needs a manifests array")?;
        Ok(Some(Contents::Index {
            manifests: manifests.iter().map(descriptor).collect::<Result<_, _>>()?,
        }))
    } else {
        Ok(None)
    }
}

/// [`contents`] of a manifest's bytes.
pub fn contents_of(media_type: &str, bytes: &[u8]) -> Result<Option<Contents>, String> {
    let json: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("the manifest is not JSON: {e}"))?;
    contents(media_type, &json)
}

/// A manifest's config digest and every digest any of its descriptors names, whatever
/// its media type (config, layers, manifests, blobs, subject, schema 1's fsLayers): what
/// garbage collection keeps, so a shape it does not know keeps more, never less.
pub fn all_references(bytes: &[u8]) -> Result<(Option<Digest>, Vec<Digest>), String> {
    let json: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("the manifest is not JSON: {e}"))?;
    let Some(obj) = json.as_object() else {
        return Err("the manifest is not a JSON object".to_string());
    };
    let list = |name: &str| -> Result<Vec<&serde_json::Value>, String> {
        match obj.get(name) {
            None | Some(serde_json::Value::Null) => Ok(Vec::new()),
            Some(serde_json::Value::Array(a)) => Ok(a.iter().collect()),
            Some(_) => Err(format!("`{name}` is not an array")),
        }
    };
    let config = match obj.get("config") {
        None | Some(serde_json::Value::Null) => None,
        Some(c) => Some(descriptor_digest(c)?),
    };
    let mut refs: Vec<Digest> = config.iter().cloned().collect();
    for name in ["layers", "manifests", "blobs"] {
        for d in list(name)? {
            refs.push(descriptor_digest(d)?);
        }
    }
    if let Some(subject) = obj.get("subject").filter(|s| !s.is_null()) {
        refs.push(descriptor_digest(subject)?);
    }
    for layer in list("fsLayers")? {
        let sum = layer.get("blobSum").and_then(|v| v.as_str());
        refs.push(
            Digest::parse(sum.ok_or("an fsLayer has no blobSum")?).map_err(|e| e.to_string())?,
        );
    }
    Ok((config, refs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::of(&[n])
    }

    #[test]
    fn an_image_names_its_config_then_its_layers() {
        let bytes = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": "x", "digest": d(1).as_str(), "size": 100},
            "layers": [
                {"mediaType": "y", "digest": d(2).as_str(), "size": 2000},
                {"mediaType": "y", "digest": d(3).as_str(), "size": 30000},
            ],
        }))
        .unwrap();
        let c = contents_of(DOCKER_MANIFEST, &bytes).unwrap().unwrap();
        let digests: Vec<&Digest> = c.blobs().iter().map(|b| &b.digest).collect();
        assert_eq!(digests, vec![&d(1), &d(2), &d(3)]);
        assert_eq!(c.blob_size(), 32100);
        assert_eq!(
            contents_of(OCI_MANIFEST, &bytes).unwrap(),
            Some(c),
            "OCI and Docker's schema 2 read alike"
        );
    }

    #[test]
    fn an_index_names_manifests_and_no_blobs() {
        let bytes = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"digest": d(4).as_str(), "size": 500, "platform": {}}],
        }))
        .unwrap();
        let c = contents_of(OCI_INDEX, &bytes).unwrap().unwrap();
        assert_eq!(
            c,
            Contents::Index {
                manifests: vec![Descriptor {
                    digest: d(4),
                    size: 500
                }]
            }
        );
        assert!(c.blobs().is_empty());
        assert_eq!(c.blob_size(), 0);
        assert_eq!(contents_of("application/x-other", &bytes), Ok(None));
    }

    #[test]
    fn bad_descriptors_say_what_is_wrong() {
        let image = |config: serde_json::Value| {
            serde_json::to_vec(&serde_json::json!({"config": config, "layers": []})).unwrap()
        };
        assert_eq!(
            contents_of(OCI_MANIFEST, &image(serde_json::json!({"size": 1}))),
            Err("a descriptor has no digest".into())
        );
        let e = contents_of(
            OCI_MANIFEST,
            &image(serde_json::json!({"digest": "sha256:../x", "size": 1})),
        )
        .unwrap_err();
        assert!(e.contains("is not a digest"), "{e}");
        let e = contents_of(
            OCI_MANIFEST,
            &image(serde_json::json!({"digest": d(1).as_str()})),
        )
        .unwrap_err();
        assert!(e.ends_with("has no size"), "{e}");
        assert!(contents_of(OCI_MANIFEST, b"{}").is_err());
        assert!(contents_of(OCI_INDEX, b"{}").is_err());
        assert!(contents_of(OCI_INDEX, b"nonsense").is_err());
    }
}
