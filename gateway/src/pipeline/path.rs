//! Request-path normalization, done once before routing: what the router matched is exactly
//! what the upstream receives.
//!
//! An upstream that resolves `..` or decodes `%2e` itself would otherwise serve a path the
//! gateway never routed (`/pub/../private` matching a `/pub` route). The steps are Envoy's
//! `normalize_path` and `merge_slashes`, and RFC 3986:
//! - percent-encoded unreserved characters are decoded (§2.3, §6.2.2.2), and what stays
//!   encoded gets uppercase hex (§6.2.2.1); a `%` not followed by two hex digits is refused;
//! - an encoded slash (`%2F`, `%5C`) or a backslash is refused, or kept unchanged when the
//!   listener says so (Envoy's `path_with_escaped_slashes_action`);
//! - `;` segment parameters are refused, or kept when the listener says so (but never on a
//!   dot segment);
//! - `//` runs become one `/` (a setting, on by default);
//! - dot segments are removed (§5.2.4), after decoding, so `%2e%2e` is `..`; a path that
//!   climbs above the root is refused rather than clamped, and so is a dot segment with
//!   parameters (`..;`), which some upstreams resolve as `..`.
//!
//! The result is a fixed point: normalizing it again changes nothing.

use std::borrow::Cow;

use crate::config::{EscapedSlashes, PathParameters};

/// A listener's normalization settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathRules {
    /// Merge runs of `/` into one.
    pub merge_slashes: bool,
    /// Encoded slashes and backslashes.
    pub escaped_slashes: EscapedSlashes,
    /// `;` parameters in path segments.
    pub parameters: PathParameters,
}

impl Default for PathRules {
    fn default() -> Self {
        PathRules {
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Reject,
            parameters: PathParameters::Reject,
        }
    }
}

/// Why a path was refused (each is answered 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `..` segments climb above `/`.
    #[error("the path climbs above the root")]
    AboveRoot,
    /// `%2F` or `%5C` while they are refused.
    #[error("the path contains an encoded slash (%2F or %5C)")]
    EncodedSlash,
    /// `\` while it is refused.
    #[error("the path contains a backslash")]
    Backslash,
    /// `%` without two hex digits after it.
    #[error("the path has a malformed percent-encoding")]
    BadEscape,
    /// Not starting with `/` (nor the `*` of `OPTIONS`).
    #[error("the path does not start with '/'")]
    NotAbsolute,
    /// `.;` or `..;`: a dot segment with path parameters, which Tomcat and Jetty read as a
    /// dot segment (`/pub/..;/private`).
    #[error("the path has a dot segment with parameters (..;)")]
    DotParameters,
    /// `;` in a path while path parameters are refused.
    #[error("the path has segment parameters (;)")]
    Parameters,
    /// The normalized target could not be made into a URI again.
    #[error("the request target cannot be normalized")]
    Invalid,
}

/// Whether `path` may need changing: it has an escape, a backslash, a dot segment's start or
/// an empty segment. Most paths have none and are returned as they are, without a copy.
fn needs_work(path: &[u8]) -> bool {
    let mut prev = 0u8;
    for &b in path {
        if b == b'%' || b == b'\\' || b == b';' || (prev == b'/' && (b == b'.' || b == b'/')) {
            return true;
        }
        prev = b;
    }
    false
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Decodes what §2.3 allows and uppercases the rest; refuses encoded slashes and backslashes
/// unless they are kept.
fn decode(path: &[u8], rules: PathRules) -> Result<Vec<u8>, PathError> {
    let keep = rules.escaped_slashes == EscapedSlashes::Keep;
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while let Some(&b) = path.get(i) {
        match b {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    path.get(i + 1).copied().and_then(hex),
                    path.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let v = hi << 4 | lo;
                if unreserved(v) {
                    out.push(v);
                } else if (v == b'/' || v == b'\\') && !keep {
                    return Err(PathError::EncodedSlash);
                } else {
                    out.push(b'%');
                    out.extend_from_slice(format!("{v:02X}").as_bytes());
                }
                i += 3;
            }
            b'\\' if !keep => return Err(PathError::Backslash),
            b';' if rules.parameters == PathParameters::Reject => {
                return Err(PathError::Parameters)
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// The normalized form of `path` (no query), borrowed when it is already normal. `*` (the
/// asterisk-form of `OPTIONS`) is left alone.
pub fn normalize(path: &str, rules: PathRules) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if path == "*" {
        return Ok(Cow::Borrowed(path));
    }
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if !needs_work(bytes) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode(bytes, rules)?;
    // Segments after the leading '/'; the last one tells whether a '/' ends the path.
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut trailing = false;
    let mut parts = decoded[1..].split(|b| *b == b'/').peekable();
    while let Some(seg) = parts.next() {
        let last = parts.peek().is_none();
        match seg {
            b"." => trailing = true,
            b".." => {
                kept.pop().ok_or(PathError::AboveRoot)?;
                trailing = true;
            }
            b"" if last => trailing = true,
            b"" if rules.merge_slashes => {}
            _ if seg.starts_with(b".;") || seg.starts_with(b"..;") => {
                return Err(PathError::DotParameters)
            }
            _ => {
                kept.push(seg);
                trailing = false;
            }
        }
    }
    let mut out = Vec::with_capacity(decoded.len());
    for seg in &kept {
        out.push(b'/');
        out.extend_from_slice(seg);
    }
    if trailing || kept.is_empty() {
        out.push(b'/');
    }
    // Only ASCII was decoded or added, and input bytes were split at ASCII '/': still UTF-8.
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| PathError::BadEscape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    const KEEP: PathRules = PathRules {
        merge_slashes: true,
        escaped_slashes: EscapedSlashes::Keep,
        parameters: PathParameters::Keep,
    };

    fn n(p: &str) -> Result<String, PathError> {
        normalize(p, PathRules::default()).map(Cow::into_owned)
    }

    #[test]
    fn rfc_3986_dot_segments_and_decoding() {
        for (raw, want) in [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/./b", "/a/b"),
            ("/a/b/../c", "/a/c"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/..", "/"),
            ("/.", "/"),
            ("/pub/../private/secret.txt", "/private/secret.txt"),
            ("/pub/%2e%2e/private", "/private"),
            ("/pub/%2E%2E/private", "/private"),
            ("/pub/.%2e/private", "/private"),
            ("/pub/%2e./private", "/private"),
            ("/pub/./../private", "/private"),
            ("/pub//../private", "/private"),
            ("/%7Euser/%61b%63", "/~user/abc"),
            ("/a%3fb/%3a", "/a%3Fb/%3A"),
            ("/a%252e%252e/x", "/a%252e%252e/x"),
            ("/a//b///c", "/a/b/c"),
            ("//a", "/a"),
            ("/a//", "/a/"),
            ("/..a/a..b/.../x", "/..a/a..b/.../x"),
            ("/.well-known/x", "/.well-known/x"),
            ("*", "*"),
        ] {
            assert_eq!(n(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn refusals() {
        for (raw, why) in [
            ("/..", PathError::AboveRoot),
            ("/a/../..", PathError::AboveRoot),
            ("/%2e%2e/x", PathError::AboveRoot),
            ("/pub/..%2fprivate", PathError::EncodedSlash),
            ("/pub/..%2Fprivate", PathError::EncodedSlash),
            ("/a%5c..%5cb", PathError::EncodedSlash),
            ("/a\\b", PathError::Backslash),
            ("/a%zz", PathError::BadEscape),
            ("/a%2", PathError::BadEscape),
            ("/a%", PathError::BadEscape),
            ("/pub/..;/private", PathError::Parameters),
            ("/admin;x=1/secret", PathError::Parameters),
            ("/a/b;", PathError::Parameters),
            ("a/b", PathError::NotAbsolute),
        ] {
            assert_eq!(n(raw), Err(why), "{raw}");
        }
    }

    #[test]
    fn kept_slashes_and_unmerged_runs() {
        let keep = |p| normalize(p, KEEP).map(Cow::into_owned);
        assert_eq!(keep("/a%2fb").as_deref(), Ok("/a%2Fb"));
        assert_eq!(keep("/a%5Cb").as_deref(), Ok("/a%5Cb"));
        assert_eq!(keep("/a\\b").as_deref(), Ok("/a\\b"));
        // A kept %2F is data inside a segment, never a separator for `..`.
        assert_eq!(
            keep("/pub/..%2fprivate").as_deref(),
            Ok("/pub/..%2Fprivate")
        );
        // Kept parameters, but never on a dot segment.
        assert_eq!(keep("/a;v=1/b").as_deref(), Ok("/a;v=1/b"));
        assert_eq!(keep("/pub/..;/x"), Err(PathError::DotParameters));
        assert_eq!(keep("/pub/%2e%2e;x=1/x"), Err(PathError::DotParameters));
        assert_eq!(keep("/pub/.;/x"), Err(PathError::DotParameters));
        let unmerged = PathRules {
            merge_slashes: false,
            ..PathRules::default()
        };
        let raw = |p| normalize(p, unmerged).map(Cow::into_owned);
        assert_eq!(raw("/a//b").as_deref(), Ok("/a//b"));
        assert_eq!(raw("/a//../b").as_deref(), Ok("/a/b"));
    }

    #[test]
    fn normal_paths_are_not_copied() {
        for p in ["/", "/api/v1/users", "/a.b/c.d", "/x-y_z~"] {
            assert!(matches!(
                normalize(p, PathRules::default()),
                Ok(Cow::Borrowed(_))
            ));
        }
    }

    /// Random paths from a small alphabet rich in the tricky pieces: the output never holds
    /// a dot segment, an empty segment or an escape of an unreserved character, never climbs
    /// above the root, and is its own normalization.
    #[test]
    fn normalization_is_a_fixed_point_that_stays_under_the_root() {
        const PIECES: &[&str] = &[
            "/", "a", ".", "..", "%2e", "%2E", "%2f", "%5c", "\\", "%41", "%7e", "%3f", "%", "%zz",
            "b", "//", "~", ";", ";x",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for rules in [
            PathRules::default(),
            KEEP,
            PathRules {
                merge_slashes: false,
                escaped_slashes: EscapedSlashes::Keep,
                parameters: PathParameters::Keep,
            },
        ] {
            for _ in 0..20_000 {
                let len = rng.gen_range(0..12);
                let mut p = String::from("/");
                for _ in 0..len {
                    p.push_str(PIECES[rng.gen_range(0..PIECES.len())]);
                }
                let Ok(once) = normalize(&p, rules) else {
                    continue;
                };
                let twice = normalize(&once, rules).expect("a normal path is valid");
                assert_eq!(once, twice, "{p}");
                assert!(once.starts_with('/'), "{p} -> {once}");
                for seg in once.split('/').skip(1) {
                    assert!(seg != "." && seg != "..", "{p} -> {once}");
                }
                if rules.merge_slashes {
                    assert!(!once.contains("//"), "{p} -> {once}");
                }
                // What stays escaped is uppercase and never an unreserved character.
                for esc in once.split('%').skip(1) {
                    let code = &esc.as_bytes()[..2];
                    assert!(code
                        .iter()
                        .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()));
                    let v = u8::from_str_radix(&esc[..2], 16).expect("hex");
                    assert!(!unreserved(v), "{p} -> {once}");
                }
            }
        }
    }
}
