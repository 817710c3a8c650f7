//! Who may change state through an admin API (both daemons'): a drain, a weight, a block.
//!
//! Reads (`/readyz`, `/metrics`, `/status`, the dashboards) stay open to whoever reaches the
//! listener: the L4 agents probe and pull them, and Prometheus scrapes them. A request that
//! changes state is taken:
//! - with `admin.token_file` set, only with `Authorization: Bearer <that token>`, from any
//!   address (loopback included: another local user is not the operator);
//! - without it, only from a loopback peer (the CLI on the same host), so that an admin
//!   listener bound where the L4 tier reaches it does not let that network drain the node.

use std::{net::IpAddr, path::Path};

use subtle::ConstantTimeEq;

/// Fewest bytes a token may have: 128 bits of hex.
pub const MIN_TOKEN_LEN: usize = 32;
/// Most bytes a token file may have.
pub const MAX_FILE_LEN: usize = 4096;

/// The shared secret state-changing requests must present.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    text: Vec<u8>,
    /// SHA-256 of `text`: what a presented value's own digest is compared with, so that the
    /// comparison takes the same time whatever the value's length (comparing the values
    /// themselves would end early on a length that differs, and tell the token's length).
    digest: [u8; 32],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

impl Token {
    /// The token in `text`, without its trailing newline: at least [`MIN_TOKEN_LEN`]
    /// visible ASCII characters (what a header value can carry as it is).
    pub fn parse(text: &[u8]) -> Result<Token, String> {
        let end = text
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        let token = &text[..end];
        if let Some(b) = token.iter().find(|b| !b.is_ascii_graphic()) {
            return Err(format!(
                "the token holds byte {b:#04x}: only visible ASCII (e.g. `openssl rand -hex 32`)"
            ));
        }
        if token.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "the token has {} characters, fewer than {MIN_TOKEN_LEN} (e.g. `openssl rand -hex 32`)",
                token.len()
            ));
        }
        Ok(Token {
            text: token.to_vec(),
            digest: sha256(token),
        })
    }

    /// Reads the token file at `path`: at most [`MAX_FILE_LEN`] bytes (a path to anything
    /// else, such as a device, is refused rather than read on), and kept from other users:
    /// one every user may read or write is refused, as sshd refuses such a key, since any
    /// local user could then make the changes the token guards (loopback included).
    pub fn read(path: &Path) -> Result<Token, String> {
        use std::{io::Read, os::unix::fs::PermissionsExt};
        let at = |e: String| format!("{}: {e}", path.display());
        let file = std::fs::File::open(path).map_err(|e| at(e.to_string()))?;
        let mode = file
            .metadata()
            .map_err(|e| at(e.to_string()))?
            .permissions()
            .mode();
        if mode & 0o006 != 0 {
            return Err(at(format!(
                "every user may read or write it (mode {:04o}): keep it from other users \
                 (chmod 600, or 640 for the daemon's group)",
                mode & 0o7777
            )));
        }
        let mut text = Vec::new();
        file.take(MAX_FILE_LEN as u64 + 1)
            .read_to_end(&mut text)
            .map_err(|e| at(e.to_string()))?;
        if text.len() > MAX_FILE_LEN {
            return Err(at(format!(
                "more than {MAX_FILE_LEN} bytes: not a token file"
            )));
        }
        Token::parse(&text).map_err(at)
    }

    /// The `Authorization` header value that presents this token.
    pub fn header_value(&self) -> String {
        format!("Bearer {}", String::from_utf8_lossy(&self.text))
    }

    /// Whether an `Authorization` header value presents this token (their digests compared
    /// in constant time; the scheme's case is free, as RFC 9110 says).
    fn presented_by(&self, authorization: &[u8]) -> bool {
        let Some((scheme, value)) = split_once(authorization, b' ') else {
            return false;
        };
        scheme.eq_ignore_ascii_case(b"bearer") && bool::from(sha256(value).ct_eq(&self.digest))
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

fn split_once(bytes: &[u8], at: u8) -> Option<(&[u8], &[u8])> {
    let i = bytes.iter().position(|b| *b == at)?;
    Some((&bytes[..i], &bytes[i + 1..]))
}

/// Why a state-changing request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A token is configured and the request presents none, or another one: 401.
    Unauthenticated,
    /// No token is configured and the request comes from another host: 403.
    NotLocal,
}

impl Refusal {
    /// The HTTP status.
    pub fn status(self) -> u16 {
        match self {
            Refusal::Unauthenticated => 401,
            Refusal::NotLocal => 403,
        }
    }

    /// The problem's detail.
    pub fn detail(self) -> &'static str {
        match self {
            Refusal::Unauthenticated => {
                "this request changes state: it needs Authorization: Bearer with the admin token (admin.token_file)"
            }
            Refusal::NotLocal => {
                "this request changes state: without admin.token_file it is taken only from this host (loopback)"
            }
        }
    }

    /// The `WWW-Authenticate` challenge a 401 carries (RFC 6750).
    pub const CHALLENGE: &'static str = "Bearer realm=\"sluice-admin\"";

    /// The `WWW-Authenticate` value this refusal's answer carries, if any.
    pub fn challenge(self) -> Option<&'static str> {
        (self == Refusal::Unauthenticated).then_some(Self::CHALLENGE)
    }
}

/// Query parameter `key` of an admin request as a whole number, `None` when absent. `Err`
/// (for a 400) when it is there but no whole number, or there twice, rather than read as
/// absent.
pub fn number_param(query: &str, key: &str) -> Result<Option<u64>, String> {
    let mut values = query
        .split('&')
        .filter_map(|kv| kv.strip_prefix(key)?.strip_prefix('='));
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(v), None) => v
            .parse()
            .map(Some)
            .map_err(|_| format!("query parameter {key}: {v:?} is not a whole number")),
        (Some(_), Some(_)) => Err(format!("query parameter {key}: given more than once")),
    }
}

/// Whether a request from `peer` may go ahead under `token`: a read (GET, HEAD) always,
/// anything else as a change ([`check_change`], on its `Authorization` fields). The one
/// gate both admin APIs put in front of their routes.
pub fn check_request(
    peer: IpAddr,
    method: &http::Method,
    headers: &http::HeaderMap,
    token: Option<&Token>,
) -> Result<(), Refusal> {
    if matches!(*method, http::Method::GET | http::Method::HEAD) {
        return Ok(());
    }
    let presented = headers
        .get_all(http::header::AUTHORIZATION)
        .iter()
        .map(http::HeaderValue::as_bytes);
    check_change(peer, presented, token)
}

/// Whether a state-changing request from `peer` with these `Authorization` header values
/// (the request's every one: two of them present nothing) may go ahead under `token`.
pub fn check_change<'a>(
    peer: IpAddr,
    authorization: impl IntoIterator<Item = &'a [u8]>,
    token: Option<&Token>,
) -> Result<(), Refusal> {
    let mut values = authorization.into_iter();
    let presented = match (values.next(), values.next()) {
        (Some(one), None) => Some(one),
        _ => None,
    };
    match token {
        Some(t) if presented.is_some_and(|a| t.presented_by(a)) => Ok(()),
        Some(_) => Err(Refusal::Unauthenticated),
        None if is_loopback(peer) => Ok(()),
        None => Err(Refusal::NotLocal),
    }
}

/// Loopback, including an IPv4 loopback peer on a dual-stack socket (`::ffff:127.0.0.1`).
fn is_loopback(peer: IpAddr) -> bool {
    match peer {
        IpAddr::V4(a) => a.is_loopback(),
        IpAddr::V6(a) => a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_token_file_is_checked_and_trimmed() {
        let t = Token::parse(format!("{SECRET}\n").as_bytes()).expect("valid");
        assert_eq!(t.header_value(), format!("Bearer {SECRET}"));
        assert!(Token::parse(b"short\n")
            .expect_err("short")
            .contains("fewer than 32"));
        assert!(Token::parse(format!("{SECRET} x").as_bytes())
            .expect_err("space")
            .contains("0x20"));
        assert!(Token::parse(b"").is_err());
        assert!(
            format!("{t:?}").find(SECRET).is_none(),
            "Debug shows the secret"
        );

        let dir = std::env::temp_dir().join(format!("sluice-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (small, big) = (dir.join("small"), dir.join("big"));
        let (shared, open) = (dir.join("group"), dir.join("open"));
        let private = |path: &Path, text: &[u8], mode: u32| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(path, text).expect("write");
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        };
        private(&small, format!("{SECRET}\n").as_bytes(), 0o600);
        private(&big, &[b'a'; MAX_FILE_LEN + 1], 0o600);
        private(&shared, SECRET.as_bytes(), 0o640);
        private(&open, SECRET.as_bytes(), 0o644);
        let (read_small, read_big) = (Token::read(&small), Token::read(&big));
        let (read_shared, read_open) = (Token::read(&shared), Token::read(&open));
        private(&open, SECRET.as_bytes(), 0o602);
        let read_writable = Token::read(&open);
        let missing = Token::read(&dir.join("missing"));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(read_small, Ok(t.clone()));
        assert_eq!(read_shared, Ok(t));
        assert!(read_big.expect_err("big").contains("more than 4096 bytes"));
        for (read, mode) in [(read_open, "0644"), (read_writable, "0602")] {
            let e = read.expect_err("a token file other users can reach");
            assert!(
                e.contains(&format!("every user may read or write it (mode {mode})")),
                "{e}"
            );
        }
        assert!(missing.expect_err("missing").contains("missing"));
    }

    #[test]
    fn changes_need_the_token_or_loopback() {
        let t = Token::parse(SECRET.as_bytes()).expect("valid");
        let local: IpAddr = "127.0.0.1".parse().expect("literal");
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().expect("literal");
        let remote: IpAddr = "10.0.0.9".parse().expect("literal");
        let good = format!("Bearer {SECRET}");
        let lower = format!("bearer {SECRET}");
        // With a token: it, from anywhere; nothing else, from anywhere.
        for peer in [local, remote] {
            assert_eq!(check_change(peer, Some(good.as_bytes()), Some(&t)), Ok(()));
            assert_eq!(check_change(peer, Some(lower.as_bytes()), Some(&t)), Ok(()));
            assert_eq!(
                check_change(peer, [good.as_bytes(), good.as_bytes()], Some(&t)),
                Err(Refusal::Unauthenticated),
                "two Authorization fields"
            );
            for bad in [
                None,
                Some(&b"Bearer"[..]),
                Some(&b"Bearer 0123456789abcdef0123456789abcdeF"[..]),
                Some(format!("Basic {SECRET}").as_bytes()),
                Some(format!("Bearer {SECRET}x").as_bytes()),
                Some(format!("Bearer  {SECRET}").as_bytes()),
            ] {
                assert_eq!(
                    check_change(peer, bad, Some(&t)),
                    Err(Refusal::Unauthenticated),
                    "{:?}",
                    bad.map(String::from_utf8_lossy)
                );
            }
        }
        // Without: loopback only, whatever it presents.
        assert_eq!(check_change(local, None::<&[u8]>, None), Ok(()));
        assert_eq!(check_change(mapped, None::<&[u8]>, None), Ok(()));
        assert_eq!(
            check_change(remote, Some(good.as_bytes()), None),
            Err(Refusal::NotLocal)
        );
        // Reads pass the gate whatever they present; a change is checked.
        let none = http::HeaderMap::new();
        for method in [http::Method::GET, http::Method::HEAD] {
            assert_eq!(check_request(remote, &method, &none, Some(&t)), Ok(()));
        }
        for method in [http::Method::POST, http::Method::PUT, http::Method::DELETE] {
            assert_eq!(
                check_request(remote, &method, &none, Some(&t)).map_err(Refusal::challenge),
                Err(Some(Refusal::CHALLENGE))
            );
        }
    }
}
