//! What every check shares: reading structured values from a fuzzer's bytes, the rule that a
//! config refusal names its field, and replaying saved inputs in a crate's `cargo test`.

use std::path::Path;

/// A target's check: the fuzzer's bytes in, a panic when an invariant breaks.
pub type Check = fn(&[u8]);

/// Values read from a fuzzer's bytes, front to back. Once the bytes run out every read gives
/// zero or nothing, so that every input means something and a mutation of one value seldom
/// shifts the others.
pub struct Input<'a>(&'a [u8]);

/// Ends a [`Input::field`]: a byte that is never part of valid UTF-8.
pub const SEPARATOR: u8 = 0xff;

impl<'a> Input<'a> {
    /// The bytes to read from.
    pub fn new(data: &'a [u8]) -> Self {
        Input(data)
    }

    /// One byte (0 when none is left).
    pub fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    /// A flag: the low bit of one byte.
    pub fn flag(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    /// Up to `n` bytes.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    /// A big-endian `u16` (missing bytes are zero).
    pub fn u16(&mut self) -> u16 {
        u16::from(self.byte()) << 8 | u16::from(self.byte())
    }

    /// The bytes up to the next [`SEPARATOR`] (which is skipped), or all that is left.
    pub fn field(&mut self) -> &'a [u8] {
        match self.0.iter().position(|b| *b == SEPARATOR) {
            Some(at) => {
                let field = &self.0[..at];
                self.0 = &self.0[at + 1..];
                field
            }
            None => self.rest(),
        }
    }

    /// A [`Self::field`] as text (invalid UTF-8 replaced).
    pub fn text(&mut self) -> String {
        String::from_utf8_lossy(self.field()).into_owned()
    }

    /// Everything that is left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }

    /// Whether nothing is left.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Whether `field` says where a refused config is wrong: `line N` (a syntax or type error,
/// with `N` a line of `text`), a field path such as `vip[1].backends[0].weight` or
/// `route[2].path.regex`, or both (`vip[0].protocol (line 13)`, a type error whose line
/// shows its field). Never empty, and never `-` (which only an unreadable file gets).
pub fn names_a_field(field: &str, text: &str) -> bool {
    let is_line = |n: &str| {
        let lines = text.lines().count().max(1) + 1;
        n.parse::<usize>().is_ok_and(|n| (1..=lines).contains(&n))
    };
    // The field-and-line form first: a key may itself be called `line` (`line (line 1)`,
    // found by the lb_config fuzz target).
    if let Some((path, n)) = field
        .strip_suffix(')')
        .and_then(|f| f.rsplit_once(" (line "))
    {
        return is_line(n) && names_a_field(path, "");
    }
    if let Some(n) = field.strip_prefix("line ") {
        return is_line(n);
    }
    !field.is_empty()
        && field.split('.').all(|segment| {
            // `name` then any number of `[index]`.
            let (name, mut indices) = segment.split_at(segment.find('[').unwrap_or(segment.len()));
            let name_ok = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            while let Some(rest) = indices.strip_prefix('[') {
                let Some((index, after)) = rest.split_once(']') else {
                    return false;
                };
                if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
                    return false;
                }
                indices = after;
            }
            name_ok && indices.is_empty()
        })
}

/// A refused config says where and why: the file, a field (see [`names_a_field`]) and a
/// reason, displayed as `file: field: reason`.
pub fn check_refusal(e: &sluice_util::ConfigError, path: &Path, text: &str) {
    assert_eq!(e.file, path, "{e}");
    assert!(
        names_a_field(&e.field, text),
        "the refusal names no field: {e}"
    );
    assert!(
        !e.reason.trim().is_empty(),
        "the refusal gives no reason: {e}"
    );
    assert!(
        e.to_string()
            .starts_with(&format!("{}: {}: ", path.display(), e.field)),
        "{e}"
    );
}

/// Feeds every file in `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` under
/// `fuzz_dir` to `check` (the function the target calls), naming each file before its turn
/// so that a failing one is known. Returns how many files ran.
pub fn replay(fuzz_dir: &Path, target: &str, check: impl Fn(&[u8])) -> usize {
    let mut ran = 0;
    for kind in ["corpus", "regressions"] {
        let dir = fuzz_dir.join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        for file in files.iter().filter(|f| f.is_file()) {
            let data = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            eprintln!("replaying {}", file.display());
            check(&data);
            ran += 1;
        }
    }
    ran
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_paths() {
        for ok in [
            "route[2].path.regex",
            "vip[1].backends[0].weight",
            "node",
            "line 1",
            "jwt_issuer[0].keys[0].file",
            "vip[0].protocol (line 2)",
        ] {
            assert!(names_a_field(ok, "a\nb"), "{ok}");
        }
        for bad in [
            "",
            "-",
            "line 0",
            "line 9",
            "a..b",
            "a[",
            "a[x]",
            "[0]",
            "a b",
            "a (line 9)",
            "a..b (line 1)",
            "(line 1)",
        ] {
            assert!(!names_a_field(bad, "a\nb"), "{bad}");
        }
    }

    #[test]
    fn input_runs_out_gracefully() {
        let mut i = Input::new(b"\x01ab\xffcd");
        assert_eq!(i.byte(), 1);
        assert_eq!(i.field(), b"ab");
        assert_eq!(i.text(), "cd");
        assert_eq!((i.byte(), i.u16(), i.field()), (0, 0, &b""[..]));
        assert!(i.is_empty());
    }
}
