//! Errors in configuration files, always reported as `FILE:LINE:COL: message`.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// One problem in one file, with where it is when that is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based line and column; `None` when the whole file is at fault (unreadable).
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl Diagnostic {
    pub fn whole_file(file: &Path, message: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            position: None,
            message: message.into(),
        }
    }

    pub fn at_offset(file: &Path, source: &str, offset: usize, message: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            position: Some(line_col(source, offset)),
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, col)) => {
                write!(f, "{}:{line}:{col}: {}", self.file.display(), self.message)
            }
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for Diagnostic {}

/// Every problem found, one per line, so `arpanet check` can show them all at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

impl From<Diagnostic> for Diagnostics {
    fn from(d: Diagnostic) -> Self {
        Self(vec![d])
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = &source[..source.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Parses TOML into `T`, naming the key path (e.g. `node.join[1].address`) and the
/// position of the offending key or value in the error.
pub fn parse_toml<T: DeserializeOwned>(file: &Path, source: &str) -> Result<T, Diagnostic> {
    let deserializer =
        toml::Deserializer::parse(source).map_err(|e| from_toml(file, source, &e, ""))?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        from_toml(file, source, e.inner(), &path)
    })
}

fn from_toml(file: &Path, source: &str, err: &toml::de::Error, path: &str) -> Diagnostic {
    let message = err.message().trim_end();
    // serde names the unknown key itself; repeating its path would only add noise.
    let message = if path.is_empty() || message.starts_with("unknown field") {
        message.to_string()
    } else {
        format!("{path}: {message}")
    };
    match err.span() {
        Some(span) => Diagnostic::at_offset(file, source, span.start, message),
        None => Diagnostic::whole_file(file, message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters_from_one() {
        let s = "a = 1\nbé = 2\n";
        assert_eq!(line_col(s, 0), (1, 1));
        assert_eq!(line_col(s, 6), (2, 1));
        // 'é' is two bytes but one column.
        assert_eq!(line_col(s, 9), (2, 3));
        assert_eq!(line_col(s, 1000), (3, 1));
    }
}
