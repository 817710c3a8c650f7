//! The request's target as the gateway routes it: its host, after the authority rules of
//! RFC 9112 §3.2 and RFC 9113 §8.3.1, and its path, normalized (see [`super::path`]).

use hyper::{
    header::{self, HeaderValue},
    Request, Uri,
};

use super::path::{self, PathError, PathRules};

/// Where the host ends in a Host value that is `uri-host [":" port]` (RFC 3986 §3.2.2–3.2.3)
/// or empty (what a request whose target has no authority sends); `None` for anything else.
/// An IPv6 literal's host keeps its brackets. Checked in place: `http`'s `Authority` parser
/// would copy the value.
fn host_end(h: &[u8]) -> Option<usize> {
    let (host, port, end) = match h.first() {
        Some(b'[') => match h.iter().position(|b| *b == b']') {
            Some(end) => {
                let literal = &h[1..end];
                if literal.is_empty()
                    || !literal
                        .iter()
                        .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
                {
                    return None;
                }
                (&h[..0], &h[end + 1..], end + 1)
            }
            None => return None,
        },
        _ => match h.iter().rposition(|b| *b == b':') {
            Some(colon) => (&h[..colon], &h[colon..], colon),
            None => (h, &h[..0], h.len()),
        },
    };
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    // No empty label (`a..b`, `.a`, `.`): one trailing dot (a fully qualified name) at most.
    let labels = host.strip_suffix(b".").unwrap_or(host);
    if !host.is_empty() && labels.split(|b| *b == b'.').any(<[u8]>::is_empty) {
        return None;
    }
    // reg-name / IPv4: unreserved, pct-encoded and sub-delims.
    let mut rest = host;
    let host_ok = loop {
        match rest.split_first() {
            None => break true,
            Some((b'%', tail)) => match tail {
                [a, b, more @ ..] if a.is_ascii_hexdigit() && b.is_ascii_hexdigit() => rest = more,
                _ => break false,
            },
            Some((b, tail)) if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(b) => {
                rest = tail
            }
            Some(_) => break false,
        }
    };
    (port_ok && host_ok).then_some(end)
}

/// The request's host, lowercase, without its port or a trailing dot.
pub enum HostName {
    /// The first `.1` bytes of the client's Host value, already lowercase (no copy).
    Shared(HeaderValue, usize),
    /// Anything else (an HTTP/2 or absolute-form authority, or a Host with capitals).
    Owned(String),
}

/// The request's host as routed, and the Host the upstream gets when it is not the client's
/// field as it came.
pub struct RequestHost {
    /// The host, lowercase, without its port or a trailing dot.
    pub name: HostName,
    /// The routed authority, for a request that carried it in its target (it replaces the
    /// client's Host) or whose host ended in a dot (dropped, as for routing).
    pub upstream: Option<HeaderValue>,
}

impl RequestHost {
    /// As text.
    pub fn as_str(&self) -> &str {
        self.name.as_str()
    }
}

impl HostName {
    /// As text.
    pub fn as_str(&self) -> &str {
        match self {
            HostName::Shared(v, end) => v
                .as_bytes()
                .get(..*end)
                .and_then(|h| std::str::from_utf8(h).ok())
                .unwrap_or(""),
            HostName::Owned(s) => s,
        }
    }
}

/// The request's host, after the authority rules of RFC 9112 §3.2 and RFC 9113 §8.3.1:
/// - one Host field at most, and exactly one in HTTP/1.1 (absolute-form too);
/// - a Host value is `host[:port]`;
/// - an authority in the target (HTTP/2 `:authority`, HTTP/1.1 absolute-form) wins over
///   Host, may not carry userinfo (RFC 9110 §4.2.4), and over HTTP/2 must equal a Host
///   field sent beside it.
///
/// `Err` says why the request is refused with 400.
pub fn host_of<B>(req: &Request<B>) -> Result<RequestHost, &'static str> {
    let mut fields = req.headers().get_all(header::HOST).iter();
    let header = fields.next();
    if fields.next().is_some() {
        return Err("more than one Host header");
    }
    if header.is_none() && req.version() == hyper::Version::HTTP_11 {
        return Err("an HTTP/1.1 request needs a Host header");
    }
    let header = match header {
        Some(v) => Some((v, host_end(v.as_bytes()).ok_or("invalid Host header")?)),
        None => None,
    };
    if let Some(a) = req.uri().authority() {
        if a.as_str().contains('@') {
            return Err("the request target's authority has userinfo");
        }
        // The rules of a Host value hold for it too (`http` parses `[::1]00` or `a..b` as
        // an authority): what is routed is what the upstream is told.
        if a.host().is_empty() || host_end(a.as_str().as_bytes()) != Some(a.host().len()) {
            return Err("the request target's authority is not host[:port]");
        }
        if req.version() == hyper::Version::HTTP_2 {
            if let Some((v, _)) = header {
                if !v.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()) {
                    return Err("the host header differs from :authority");
                }
            }
        }
        // Without userinfo, the authority is the host and then the port, if any.
        let (host, port) = a.as_str().split_at(a.host().len());
        let host = host.strip_suffix('.').unwrap_or(host);
        return Ok(RequestHost {
            name: HostName::Owned(host.to_ascii_lowercase()),
            upstream: HeaderValue::from_str(&format!("{host}{port}")).ok(),
        });
    }
    let Some((value, mut end)) = header else {
        return Ok(RequestHost {
            name: HostName::Owned(String::new()),
            upstream: None,
        });
    };
    // `api.example.` names the same host as `api.example` (a fully qualified name): it is
    // routed and forwarded as such, or it would miss a host-specific route and its policies.
    let mut upstream = None;
    let bytes = value.as_bytes();
    if bytes[..end].ends_with(b".") {
        upstream = HeaderValue::from_bytes(&[&bytes[..end - 1], &bytes[end..]].concat()).ok();
        end -= 1;
    }
    let host = &bytes[..end];
    let name = if host.iter().any(u8::is_ascii_uppercase) {
        // Host characters are ASCII (checked by `host_end`).
        HostName::Owned(String::from_utf8_lossy(host).to_ascii_lowercase())
    } else {
        HostName::Shared(value.clone(), end)
    };
    Ok(RequestHost { name, upstream })
}

/// The target's path normalized (see [`super::path`]), with its query as it came; `None`
/// when it is already normal. An empty path (`http://h?q` in absolute form, or an HTTP/2
/// `:path` of `?q`) is `/`, which is what it is routed as; `*` is only for `OPTIONS`.
pub fn normalized_target(
    uri: &Uri,
    method: &hyper::Method,
    rules: PathRules,
) -> Result<Option<Uri>, PathError> {
    let raw = uri.path_and_query().map_or("", |p| p.as_str());
    if uri.path() == "*" && (method != hyper::Method::OPTIONS || raw != "*") {
        return Err(PathError::NotAbsolute);
    }
    let normal = path::normalize(uri.path(), rules)?;
    let starts_with_path = raw.starts_with('/') || raw == "*";
    if matches!(normal, std::borrow::Cow::Borrowed(_)) && starts_with_path {
        return Ok(None);
    }
    let target = match uri.query() {
        Some(q) => format!("{normal}?{q}"),
        None => normal.into_owned(),
    };
    let mut parts = uri.clone().into_parts();
    // Normalization adds only unreserved characters and escapes: still a valid target.
    parts.path_and_query =
        Some(hyper::http::uri::PathAndQuery::try_from(target).map_err(|_| PathError::Invalid)?);
    Uri::from_parts(parts)
        .map(Some)
        .map_err(|_| PathError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_lowercase_without_port() {
        for (raw, want) in [
            ("Example.COM:8080", "example.com"),
            ("api.test", "api.test"),
            ("api.test:443", "api.test"),
            ("[2001:DB8::1]:443", "[2001:db8::1]"),
            ("[::1]", "[::1]"),
            ("api.test.", "api.test"),
            ("API.test.:8080", "api.test"),
        ] {
            let req = Request::builder()
                .header(header::HOST, raw)
                .body(())
                .expect("request");
            let host = host_of(&req).expect("valid Host");
            assert_eq!(host.as_str(), want, "{raw}");
            assert_eq!(
                matches!(host.name, HostName::Shared(..)),
                raw.bytes().all(|b| !b.is_ascii_uppercase()),
                "{raw}: no copy unless lowercasing"
            );
        }
        // Absolute-form: the target's authority wins over Host.
        for (uri, want) in [
            ("http://H2.Example:80/x", "h2.example"),
            ("http://[2001:db8::1]:8443/", "[2001:db8::1]"),
            ("http://api.test./", "api.test"),
        ] {
            let req = Request::builder()
                .uri(uri)
                .header(header::HOST, "other")
                .body(())
                .expect("request");
            assert_eq!(host_of(&req).expect("valid").as_str(), want, "{uri}");
        }
        let req = Request::builder()
            .version(hyper::Version::HTTP_10)
            .body(())
            .expect("request");
        assert_eq!(
            host_of(&req).expect("valid").as_str(),
            "",
            "HTTP/1.0 without Host"
        );
    }

    #[test]
    fn authority_rules_of_rfc_9112_and_9113() {
        use hyper::Version;
        let refused = |version: Version, uri: &str, hosts: &[&str]| {
            let mut b = Request::builder().version(version).uri(uri);
            for h in hosts {
                b = b.header(header::HOST, *h);
            }
            host_of(&b.body(()).expect("request")).is_err()
        };
        // HTTP/1.1: exactly one Host, even in absolute-form.
        assert!(refused(Version::HTTP_11, "/", &[]));
        assert!(refused(Version::HTTP_11, "http://a.test/", &[]));
        assert!(refused(Version::HTTP_11, "/", &["a.test", "a.test"]));
        assert!(refused(Version::HTTP_10, "/", &["a.test", "b.test"]));
        assert!(!refused(Version::HTTP_11, "http://a.test/", &["b.test"]));
        // No userinfo in an authority.
        assert!(refused(
            Version::HTTP_11,
            "http://evil@a.test/",
            &["a.test"]
        ));
        assert!(refused(Version::HTTP_2, "http://u:p@a.test/", &[]));
        // An authority obeys the Host rules (found by the host_target fuzz target).
        assert!(refused(Version::HTTP_11, "http://[2002:db8::1]00/", &["x"]));
        assert!(refused(Version::HTTP_2, "http://a..b/", &[]));
        assert!(refused(Version::HTTP_2, "http://a.test:8x/", &[]));
        assert!(!refused(Version::HTTP_2, "http://a.test.:8443/", &[]));
        // HTTP/2: host, when sent, equals :authority (case aside).
        assert!(refused(Version::HTTP_2, "http://a.test/", &["b.test"]));
        assert!(refused(Version::HTTP_2, "http://a.test/", &["a.test:443"]));
        assert!(!refused(Version::HTTP_2, "http://a.test/", &["A.test"]));
        assert!(!refused(Version::HTTP_2, "http://a.test/", &[]));
        assert!(!refused(Version::HTTP_2, "/", &["a.test"]));
    }

    #[test]
    fn host_headers_are_host_and_port_only() {
        for ok in [
            "",
            "test.local",
            "test.local:8080",
            "198.51.100.1",
            "198.51.100.1:80",
            "[2001:db8::1]",
            "[2001:db8::1]:443",
            "[::ffff:192.0.2.1]",
            "a,for=6.6.6.6",
            "caf%C3%A9.example",
            "host:",
        ] {
            assert!(host_end(ok.as_bytes()).is_some(), "{ok:?}");
        }
        for bad in [
            "a\";by=x,for=6.6.6.6;host=\"b",
            "user@host",
            "host:80x",
            "[2001:db8::1",
            "[]",
            "[g::1]",
            "[::1]x",
            "a b",
            "a/b",
            "bad%zz",
            "a:1:2",
            ".",
            "a..b",
            ".a",
            "a.b..",
            ".:80",
        ] {
            assert!(host_end(bad.as_bytes()).is_none(), "{bad:?}");
        }
    }
}
