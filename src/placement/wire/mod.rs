//! What arpanet writes for other processes to read: the records in Consul KV (read by
//! every node, of whatever release it runs) and the cluster API's bodies. These are
//! their own structs, apart from the containers.d schema (`config::containers`) and the
//! internal types (`placement`), in the way netavark keeps `types.rs` apart from
//! `internal_types.rs`: an edit of the TOML schema or of an internal type changes no
//! record, and a record's format changes only here, under a new version.
//!
//! Versions. Every record and body may carry `"v": N`; one without it is version 1,
//! which is the shape arpanet wrote before records had versions. A reader checks the
//! version before anything else, so a record of a newer release is one clear error
//! ([`WireError::NewerVersion`]) rather than an unknown field somewhere inside.
//!
//! Writers write the oldest version that can say what they mean, and leave out `v`
//! for version 1: releases from before versions deny unknown fields (a `"v": 1` would
//! make every record unreadable to them), so during an upgrade from one of them both
//! releases read each other's records. A release that adds a field writes `"v": 2` on
//! the records that use it.
//!
//! Unknown fields stay refused: a reader that skipped a field it does not know would run
//! something other than what was asked (a dropped `privileged = false` default is
//! harmless, a dropped limit or read-only mode is not). A new field therefore comes with
//! a new version, which older readers refuse by name.

pub mod records;
pub mod spec;

use serde::de::DeserializeOwned;

use crate::http::{field_error, parse_json};
use serde::{Deserialize, Serialize};

pub use records::{
    ConstraintsV1, CreateServiceV1, RoleV1, ScaleV1, ServiceDefV1, ServiceDefV2, ServiceRecord,
    TemplateRowV1, UpdateConfigV2, UpdateServiceV1,
};
pub use spec::ContainerSpecV1;

/// The newest version this release reads of records that have only version 1.
pub const READS_UP_TO: u64 = 1;

/// Why a record or body is not one this release can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Not JSON, or a value its field refuses: the field's path, then why.
    #[error("{0}")]
    Json(String),
    #[error(
        "record version {found} is newer than this arpanet reads (up to {newest}); upgrade this node"
    )]
    NewerVersion { found: u64, newest: u64 },
    #[error("v: `{0}` is not a record version (a whole number from 1)")]
    BadVersion(String),
    /// A field whose value is well-formed alone but not with the others.
    #[error("{field}: {message}")]
    Field { field: String, message: String },
}

impl WireError {
    pub fn at(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Field {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error, seen from the record that holds `parent`.
    pub fn within(self, parent: &str) -> Self {
        match self {
            Self::Field { field, message } => Self::Field {
                field: format!("{parent}.{field}"),
                message,
            },
            other => other,
        }
    }
}

/// The version a record says it is, taken out of it so that the version's own struct
/// (which denies unknown fields) reads the rest.
fn take_version(value: &mut serde_json::Value, newest: u64) -> Result<u64, WireError> {
    let Some(v) = value.as_object_mut().and_then(|o| o.remove("v")) else {
        return Ok(1);
    };
    match v.as_u64() {
        Some(n) if (1..=newest).contains(&n) => Ok(n),
        Some(n) if n > newest => Err(WireError::NewerVersion { found: n, newest }),
        _ => Err(WireError::BadVersion(v.to_string())),
    }
}

/// A record of a type with versions up to `newest`: its version, and the JSON of the
/// rest for that version's struct.
pub fn versioned(bytes: &[u8], newest: u64) -> Result<(u64, serde_json::Value), WireError> {
    let mut value: serde_json::Value = parse_json(bytes).map_err(WireError::Json)?;
    let v = take_version(&mut value, newest)?;
    Ok((v, value))
}

/// One version's struct from [`versioned`]'s JSON, with the path of the field that is
/// wrong.
pub fn read_as<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, WireError> {
    serde_path_to_error::deserialize(value).map_err(|e| WireError::Json(field_error(e)))
}

/// A record or body of version 1 (the only one so far) from JSON, with the path of the
/// field that is wrong.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    let value: serde_json::Value = parse_json(bytes).map_err(WireError::Json)?;
    decode_value(value)
}

pub fn decode_value<T: DeserializeOwned>(mut value: serde_json::Value) -> Result<T, WireError> {
    take_version(&mut value, READS_UP_TO)?;
    read_as(value)
}

/// A record as written: version 1, so without `v` (see the module's notes).
pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    serde_json::to_vec(record).expect("a wire record always serializes")
}

/// A wire type where serde expects one (an API answer the CLI reads), with its version
/// checked first as [`decode`] does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<T>(pub T);

impl<'de, T: DeserializeOwned> Deserialize<'de> for Record<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        decode_value(value)
            .map(Record)
            .map_err(serde::de::Error::custom)
    }
}

impl<T: Serialize> Serialize for Record<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_version_is_one_and_a_newer_one_is_refused_by_number() {
        let one: ScaleV1 = decode(br#"{"replicas":2}"#).unwrap();
        assert_eq!(one.replicas, 2);
        let one: ScaleV1 = decode(br#"{"v":1,"replicas":2}"#).unwrap();
        assert_eq!(one.replicas, 2);
        // A newer record's new fields never get as far as an "unknown field".
        let e = decode::<ScaleV1>(br#"{"v":2,"replicas":2,"surge":1}"#).unwrap_err();
        assert_eq!(
            e,
            WireError::NewerVersion {
                found: 2,
                newest: 1
            }
        );
        assert_eq!(
            e.to_string(),
            "record version 2 is newer than this arpanet reads (up to 1); upgrade this node"
        );
        for bad in [r#""1""#, "0", "-1", "1.5", "null"] {
            let e =
                decode::<ScaleV1>(format!(r#"{{"v":{bad},"replicas":2}}"#).as_bytes()).unwrap_err();
            assert!(matches!(e, WireError::BadVersion(_)), "{bad}: {e}");
        }
    }

    #[test]
    fn errors_name_the_field_and_unknown_fields_are_refused() {
        let e = decode::<ScaleV1>(br#"{"replicas":"two"}"#).unwrap_err();
        assert!(e.to_string().starts_with("replicas: "), "{e}");
        let e = decode::<ScaleV1>(br#"{"replicas":2,"replica":3}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `replica`"), "{e}");
        let e = decode::<ScaleV1>(br#"{"replicas":"#).unwrap_err();
        assert!(e.to_string().contains("EOF"), "{e}");
    }

    #[test]
    fn version_one_is_written_without_v() {
        let bytes = encode(&ScaleV1 { replicas: 3 });
        assert_eq!(bytes, br#"{"replicas":3}"#);
        let Record(back): Record<ScaleV1> = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back.replicas, 3);
        let e = serde_json::from_slice::<Record<ScaleV1>>(br#"{"v":7,"replicas":3}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("record version 7 is newer"), "{e}");
    }
}
