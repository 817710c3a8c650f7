//! Refused configs: the file, the field path (`route[2].path.regex`) and the reason.
//!
//! Validation and building work on [`FieldError`], which knows the field but not the file;
//! the loader turns it into a [`ConfigError`] with [`FieldError::in_file`]. Nested builders
//! prefix their parent's path with [`FieldError::under`], so a runtime type can be built from
//! its config section alone and still report where the bad value is.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A refused config file: where and why. Displayed as `file: field: reason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {field}: {reason}", file.display())]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// The field path, `line N` for a syntax error, or `-` when the file could not be read.
    pub field: String,
    /// Why.
    pub reason: String,
}

/// A refused value, located by its field path within the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// The field path, e.g. `upstream[0].health.timeout_ms`.
    pub field: String,
    /// Why.
    pub reason: String,
}

impl FieldError {
    /// A refusal of `field` for `reason`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The same refusal seen from a parent section: `prefix.field` (or `prefix` alone when
    /// the field is the whole section).
    #[must_use]
    pub fn under(self, prefix: &str) -> Self {
        let field = if self.field.is_empty() {
            prefix.to_string()
        } else if self.field.starts_with('[') {
            format!("{prefix}{}", self.field)
        } else {
            format!("{prefix}.{}", self.field)
        };
        FieldError { field, ..self }
    }

    /// The refusal of a value read from `file`.
    pub fn in_file(self, file: &Path) -> ConfigError {
        ConfigError {
            file: file.to_owned(),
            field: self.field,
            reason: self.reason,
        }
    }
}

/// `Err(FieldError)` for `field` and `reason`: the shape most checks return.
pub fn refuse<T>(field: impl Into<String>, reason: impl Into<String>) -> Result<T, FieldError> {
    Err(FieldError::new(field, reason))
}

/// Reads `file` and deserializes it. An unreadable file names field `-`; a syntax or type
/// error names the line it starts on.
pub fn read_toml<T: DeserializeOwned>(file: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
        file: file.to_owned(),
        field: "-".into(),
        reason: format!("cannot read: {e}"),
    })?;
    parse_toml(file, &text)
}

/// Deserializes `text`, read from `file`.
pub fn parse_toml<T: DeserializeOwned>(file: &Path, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError {
        file: file.to_owned(),
        field: e
            .span()
            .map(|s| format!("line {}", line_of(text, s.start)))
            .unwrap_or_else(|| "-".into()),
        reason: e.message().to_string(),
    })
}

/// The 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    let at = at.min(text.len());
    text.as_bytes()[..at]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Small {
        name: String,
        port: u16,
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let text = "name = \"a\"\n\nport = 70000\n";
        let e = parse_toml::<Small>(Path::new("x.toml"), text).expect_err("port too large");
        assert_eq!(e.field, "line 3");
        assert!(e.to_string().starts_with("x.toml: line 3: "), "{e}");
    }

    #[test]
    fn unreadable_file_is_field_dash() {
        let e = read_toml::<Small>(Path::new("/nonexistent/x.toml")).expect_err("missing");
        assert_eq!(e.field, "-");
        assert!(e.reason.starts_with("cannot read: "), "{}", e.reason);
    }

    #[test]
    fn field_paths_nest() {
        let e = FieldError::new("timeout_ms", "too long").under("health");
        assert_eq!(e.field, "health.timeout_ms");
        let e = e.under("upstream[2]");
        assert_eq!(e.field, "upstream[2].health.timeout_ms");
        assert_eq!(
            FieldError::new("", "bad").under("route[0]").field,
            "route[0]"
        );
        assert_eq!(
            FieldError::new("[1]", "bad").under("targets").field,
            "targets[1]"
        );
        let c = e.in_file(Path::new("gw.toml"));
        assert_eq!(
            c.to_string(),
            "gw.toml: upstream[2].health.timeout_ms: too long"
        );
    }
}
