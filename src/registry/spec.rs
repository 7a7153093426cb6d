//! The OCI Distribution API's wire: repository names, tags, digests and references as
//! the spec's grammar has them (`spec.md`, "Pulling manifests"), so nothing else ever
//! becomes a file name, a KV key or a URL.

use std::fmt;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// A repository name: path components of `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` joined by
/// `/`, at most 255 characters in all.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RepoName(String);

impl RepoName {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > 255 {
            return Err(format!(
                "`{}` is not a repository name (1 to 255 characters)",
                s.escape_debug()
            ));
        }
        if s.split('/').all(component) {
            Ok(Self(s.to_string()))
        } else {
            Err(format!(
                "`{}` is not a repository name (lowercase letters and digits, separated by `.`, `_`, `__`, `-` and `/`)",
                s.escape_debug()
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn component(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &s[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// A tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tag(String);

impl Tag {
    pub fn parse(s: &str) -> Result<Self, String> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 128
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b[1..]
                .iter()
                .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(format!(
                "`{}` is not a tag (up to 128 of letters, digits, `_`, `.`, `-`, not starting with `.` or `-`)",
                s.escape_debug()
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A content digest. Only `sha256` is supported (what Docker and the OCI image spec
/// write); its hex is 64 lowercase digits, so it is safe as a file name and a KV key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(String);

/// Why a digest is refused: not one at all (`DIGEST_INVALID`), or an algorithm this
/// registry does not compute (`UNSUPPORTED`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("`{0}` is not a digest (`sha256:` and 64 lowercase hex digits)")]
    Invalid(String),
    #[error("digest algorithm `{0}` is not supported (only sha256)")]
    Unsupported(String),
}

impl Digest {
    pub fn parse(s: &str) -> Result<Self, DigestError> {
        let Some((algo, hex)) = s.split_once(':') else {
            return Err(DigestError::Invalid(s.escape_debug().to_string()));
        };
        // The spec's grammar: algorithm `[a-z0-9]+([+._-][a-z0-9]+)*`, encoded
        // `[a-zA-Z0-9=_-]+`.
        let algo_ok = !algo.is_empty()
            && algo
                .bytes()
                .all(|c| alnum(c) || matches!(c, b'+' | b'.' | b'_' | b'-'));
        let hex_ok_grammar = !hex.is_empty()
            && hex
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'=' | b'_' | b'-'));
        if !algo_ok || !hex_ok_grammar {
            return Err(DigestError::Invalid(s.escape_debug().to_string()));
        }
        if algo != "sha256" {
            return Err(DigestError::Unsupported(algo.to_string()));
        }
        if hex.len() != 64 || !hex.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(DigestError::Invalid(s.escape_debug().to_string()));
        }
        Ok(Self(s.to_string()))
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest as _;
        Self(format!("sha256:{}", hex(&sha2::Sha256::digest(bytes))))
    }

    pub fn from_sha256(hash: &[u8]) -> Self {
        Self(format!("sha256:{}", hex(hash)))
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a manifest URL names: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl Reference {
    /// A reference with a `:` is a digest; anything else must be a tag.
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        if s.contains(':') {
            Digest::parse(s)
                .map(Self::Digest)
                .map_err(ReferenceError::Digest)
        } else {
            Tag::parse(s).map(Self::Tag).map_err(ReferenceError::Tag)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("{0}")]
    Tag(String),
    #[error("{0}")]
    Digest(DigestError),
}

/// The spec's error codes ("Error Codes"), and `UNAVAILABLE` for the answers outside
/// it: the spec binds 4XX bodies to its list, and a 503 (the catalog cannot be read) or
/// 507 (the disk is full) is no 4XX; Docker's registry uses `UNAVAILABLE` for its 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    Unavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BlobUnknown => "BLOB_UNKNOWN",
            Self::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            Self::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            Self::DigestInvalid => "DIGEST_INVALID",
            Self::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            Self::ManifestInvalid => "MANIFEST_INVALID",
            Self::ManifestUnknown => "MANIFEST_UNKNOWN",
            Self::NameInvalid => "NAME_INVALID",
            Self::NameUnknown => "NAME_UNKNOWN",
            Self::SizeInvalid => "SIZE_INVALID",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::Denied => "DENIED",
            Self::Unsupported => "UNSUPPORTED",
            Self::TooManyRequests => "TOOMANYREQUESTS",
            Self::Unavailable => "UNAVAILABLE",
        }
    }

    /// The usual status of the code. The spec's table names no status per code; these
    /// are its endpoint table's and Docker's registry's (`MANIFEST_BLOB_UNKNOWN` is a
    /// 400 there: the request, not the URL, names what is missing). An answer may
    /// differ: an out-of-order chunk is `BLOB_UPLOAD_INVALID` with 416, a manifest over
    /// the limit `SIZE_INVALID` with 413.
    pub fn status(self) -> StatusCode {
        match self {
            Self::BlobUnknown
            | Self::BlobUploadUnknown
            | Self::ManifestUnknown
            | Self::NameUnknown => StatusCode::NOT_FOUND,
            Self::BlobUploadInvalid
            | Self::DigestInvalid
            | Self::ManifestBlobUnknown
            | Self::ManifestInvalid
            | Self::NameInvalid
            | Self::SizeInvalid => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Denied => StatusCode::FORBIDDEN,
            Self::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            Self::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error answer: `{"errors":[{"code":..,"message":..,"detail":..}]}` with `status`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RegistryError {
    pub code: ErrorCode,
    pub message: String,
    pub status: StatusCode,
    pub detail: Option<serde_json::Value>,
}

impl RegistryError {
    /// An error with its code's usual status.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            status: code.status(),
            detail: None,
        }
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn with_detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = Some(detail);
        self
    }

    /// The catalog (Consul) or the disk failed: 503, nothing changed on purpose.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }

    /// The store's disk is full: 507 and one line naming the directory.
    pub fn disk_full(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message).with_status(StatusCode::INSUFFICIENT_STORAGE)
    }
}

impl From<DigestError> for RegistryError {
    /// The spec answers 400 for both a malformed digest and an unsupported algorithm.
    fn from(e: DigestError) -> Self {
        match e {
            DigestError::Invalid(_) => Self::new(ErrorCode::DigestInvalid, e.to_string()),
            DigestError::Unsupported(_) => Self::new(ErrorCode::Unsupported, e.to_string())
                .with_status(StatusCode::BAD_REQUEST),
        }
    }
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let mut error = serde_json::json!({ "code": self.code.as_str(), "message": self.message });
        if let Some(detail) = self.detail {
            error["detail"] = detail;
        }
        let body = serde_json::json!({ "errors": [error] });
        (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_vec(&body).expect("serializable"),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names_follow_the_spec_grammar() {
        for good in [
            "a",
            "app",
            "library/busybox",
            "a.b_c__d---e/f0",
            "x/y/z",
            "0",
        ] {
            assert!(RepoName::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "App",
            "a/",
            "/a",
            "a//b",
            "a..b",
            "a___b",
            "-a",
            "a-",
            "../etc",
            "a/../b",
            "a%2f",
            "a b",
            &"a".repeat(256),
        ] {
            assert!(RepoName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tags_follow_the_spec_grammar() {
        for good in ["v2", "latest", "_x", "1.0-rc_1", &"a".repeat(128)] {
            assert!(Tag::parse(good).is_ok(), "{good}");
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", "..", &"a".repeat(129)] {
            assert!(Tag::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn digests_are_sha256_and_64_lowercase_hex() {
        let d = Digest::of(b"hello");
        assert_eq!(
            d.as_str(),
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(Digest::parse(d.as_str()), Ok(d.clone()));
        assert_eq!(d.hex().len(), 64);
        assert!(matches!(
            Digest::parse(&format!("sha512:{}", "a".repeat(128))),
            Err(DigestError::Unsupported(_))
        ));
        for bad in [
            "sha256",
            "sha256:",
            "sha256:abc",
            &format!("sha256:{}", "A".repeat(64)),
            &format!("sha256:{}/", "a".repeat(63)),
            &format!("sha256:../{}", "a".repeat(61)),
            &format!("SHA256:{}", "a".repeat(64)),
        ] {
            assert!(
                matches!(Digest::parse(bad), Err(DigestError::Invalid(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn references_are_tags_or_digests() {
        assert_eq!(
            Reference::parse("v2"),
            Ok(Reference::Tag(Tag::parse("v2").unwrap()))
        );
        assert!(matches!(
            Reference::parse(Digest::of(b"x").as_str()),
            Ok(Reference::Digest(_))
        ));
        assert!(Reference::parse("sha256:zz").is_err());
        assert!(Reference::parse("..").is_err());
    }
}
