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
/// error names the field it is in, when the line shows one, and the line.
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
            .map(|s| field_at(text, s.start))
            .unwrap_or_else(|| "-".into()),
        reason: e.message().to_string(),
    })
}

/// The field at byte offset `at` of `text`, as the checks name fields (`vip[1].protocol`),
/// with its line: `vip[1].protocol (line 13)`. Read from the text around it (the key
/// before `=` on that line, under the last table header above it), since the parser's
/// error carries only where it is; just the line when the line is not `key = value`.
fn field_at(text: &str, at: usize) -> String {
    let line = line_of(text, at);
    let lines: Vec<&str> = text.lines().collect();
    let Some(this) = lines.get(line - 1) else {
        return format!("line {line}");
    };
    let key = this
        .split_once('=')
        .map(|(k, _)| k.trim())
        .filter(|k| is_key(k));
    let Some(key) = key else {
        return format!("line {line}");
    };
    // The table the line is in: the last header above it, `[[name]]` counted among its
    // namesakes for its index.
    let header = |l: &str| -> Option<(String, bool)> {
        // (A comment may follow a header; a bare key has no `#`.)
        let l = l.split('#').next().unwrap_or_default().trim();
        if let Some(name) = l.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
            return is_key(name.trim()).then(|| (name.trim().to_string(), true));
        }
        let name = l.strip_prefix('[')?.strip_suffix(']')?.trim();
        is_key(name).then(|| (name.to_string(), false))
    };
    let above = &lines[..line - 1];
    // The index of the last `[[name]]` among the first `upto` lines, if there is one.
    let index_of = |name: &str, upto: usize| {
        let n = above[..upto]
            .iter()
            .filter(|l| header(l).is_some_and(|(h, array)| array && h == name))
            .count();
        n.checked_sub(1)
    };
    let table = above.iter().rposition(|l| header(l).is_some());
    let prefix = match table.and_then(|i| Some((i, header(above[i])?))) {
        None => String::new(),
        Some((i, (name, true))) => format!("{name}[{}].", index_of(&name, i + 1).unwrap_or(0)),
        // `[route.request_transform]` belongs to the last `[[route]]` above it.
        Some((i, (name, false))) => match name.split_once('.') {
            Some((parent, rest)) => match index_of(parent, i) {
                Some(k) => format!("{parent}[{k}].{rest}."),
                None => format!("{name}."),
            },
            None => format!("{name}."),
        },
    };
    format!("{prefix}{key} (line {line})")
}

/// Whether `k` is a bare or dotted TOML key that reads as a field path as it is (`a`,
/// `a.b_c-d`): each part a name, starting with a letter or `_` as the config's field names
/// do (a quoted key, `1a`, a value, a comment or an array line is not).
fn is_key(k: &str) -> bool {
    !k.is_empty()
        && k.split('.').all(|part| {
            part.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
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
    fn syntax_errors_name_the_field_and_the_line() {
        let text = "name = \"a\"\n\nport = 70000\n";
        let e = parse_toml::<Small>(Path::new("x.toml"), text).expect_err("port too large");
        assert_eq!(e.field, "port (line 3)");
        assert!(e.to_string().starts_with("x.toml: port (line 3): "), "{e}");
        // Not a `key = value` line: the line alone.
        let e =
            parse_toml::<Small>(Path::new("x.toml"), "name = \"a\"\n[oops\n").expect_err("syntax");
        assert_eq!(e.field, "line 2");
    }

    #[test]
    fn fields_are_named_under_their_table_and_index() {
        let text = "top = 1\n[one]\na = 1\n[[many]]\nb = 1\n# a comment\n[[many]] # the second\nb = 2\n[[other]]\n[[many]]\n  b = 3\n[many.sub]\nc = 1\n\"quoted\" = 2\n";
        let at = |needle: &str| text.find(needle).expect("in the text");
        assert_eq!(field_at(text, at("top")), "top (line 1)");
        assert_eq!(field_at(text, at("a = 1") + 4), "one.a (line 3)");
        assert_eq!(field_at(text, at("b = 1") + 4), "many[0].b (line 5)");
        assert_eq!(field_at(text, at("b = 2") + 4), "many[1].b (line 8)");
        assert_eq!(field_at(text, at("b = 3") + 4), "many[2].b (line 11)");
        assert_eq!(field_at(text, at("# a")), "line 6");
        assert_eq!(field_at(text, at("c = 1") + 4), "many[2].sub.c (line 13)");
        assert_eq!(field_at(text, at("\"quoted")), "line 14");
        // Keys that are no field name: the line alone (found by the config fuzz targets).
        for line in ["1l_sourcetl = 1", "a.0.b = 1", "a..b = 1", "a. = 1"] {
            assert_eq!(field_at(line, 0), "line 1", "{line}");
        }
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
