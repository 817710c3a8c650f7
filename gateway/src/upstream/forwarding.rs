//! The request fields this hop adds: `X-Forwarded-For`, `-Proto` and `-Host`, RFC 7239
//! `Forwarded`, `X-Request-Id` and a W3C `traceparent`.
//!
//! They are made once per request, in one buffer. An HTTP/1.1 upstream gets
//! them written straight into the request head (`exchange::head`), in place of any the
//! client sent, without a header-map insertion each; an HTTP/2 upstream gets them in the
//! header map, which hyper writes.

use std::net::IpAddr;

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};

/// `X-Request-Id`, read from the client and sent both ways.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The names of the fields this hop sets, lowercase.
pub const NAMES: [&str; 6] = [
    "x-forwarded-for",
    "forwarded",
    "traceparent",
    "x-forwarded-proto",
    "x-request-id",
    "x-forwarded-host",
];

/// Room for the three built values of a usual request: one allocation, sized once.
/// (A `SmallVec` on the stack was tried: its appends are out-of-line calls, and cost
/// more than the allocation they save, besides growing the request's future.)
const VALUES_CAPACITY: usize = 192;

/// The forwarding fields of one request.
pub struct Forwarding {
    /// The `X-Forwarded-For`, `Forwarded` and `traceparent` values, one after the other.
    values: Vec<u8>,
    /// Where each of the three ends in `values`.
    ends: [usize; 3],
    /// `http` or `https`.
    proto: &'static str,
    /// The request's id (the client's, or one made for it).
    request_id: HeaderValue,
    /// The client's `Host`, passed on as `X-Forwarded-Host`.
    host: Option<HeaderValue>,
}

impl Forwarding {
    /// The fields for a request with `headers` and the target's `authority` (HTTP/2 and
    /// absolute-form requests), from `peer` (the packet's source, which DSR keeps as the
    /// real client), whose host name is `host`.
    pub fn new(
        headers: &HeaderMap,
        authority: Option<&str>,
        peer: IpAddr,
        tls: bool,
        host: &str,
        request_id: &HeaderValue,
    ) -> Self {
        // An IPv4 client on a dual-stack listener is written as IPv4, as policies see it.
        let peer = peer.to_canonical();
        let proto = if tls { "https" } else { "http" };
        let mut values = Vec::with_capacity(VALUES_CAPACITY);
        // Earlier hops' lines, all of them, joined; a line that is not visible ASCII is
        // dropped (strict parsers would discard the whole field, this hop's entry with it).
        // A `Forwarded` line with an unclosed quoted string would swallow this hop's entry.
        let earlier = |values: &mut Vec<u8>, name: &HeaderName| {
            for v in headers.get_all(name) {
                if v.to_str().is_ok_and(|t| !t.trim().is_empty()) && quotes_balance(v.as_bytes()) {
                    values.extend_from_slice(v.as_bytes());
                    values.extend_from_slice(b", ");
                }
            }
        };
        earlier(&mut values, &X_FORWARDED_FOR);
        // The address in text once, for both fields.
        let ip_at = values.len();
        write_ip(&mut values, peer);
        let ip = ip_at..values.len();
        let xff = values.len();
        earlier(&mut values, &header::FORWARDED);
        values.extend_from_slice(b"for=");
        // An IPv6 address quoted, in brackets.
        let v6 = peer.is_ipv6();
        if v6 {
            values.extend_from_slice(b"\"[");
        }
        values.extend_from_within(ip);
        if v6 {
            values.extend_from_slice(b"]\"");
        }
        values.extend_from_slice(b";proto=");
        values.extend_from_slice(proto.as_bytes());
        // Only a host made of host characters: a quote in a client's Host would otherwise
        // end the quoted string and let it append a forged `for=` entry.
        let plain_host = host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
        if !host.is_empty() && plain_host {
            values.extend_from_slice(b";host=\"");
            values.extend_from_slice(host.as_bytes());
            values.extend_from_slice(b"\"");
        }
        let forwarded = values.len();
        values.extend_from_slice(&traceparent(headers.get(TRACEPARENT)));
        let trace = values.len();
        Forwarding {
            values,
            ends: [xff, forwarded, trace],
            proto,
            request_id: request_id.clone(),
            // An HTTP/2 client sends no Host: its `:authority` stands in.
            host: headers
                .get(header::HOST)
                .cloned()
                .or_else(|| authority.and_then(|a| HeaderValue::from_str(a).ok())),
        }
    }

    /// Whether a client's field of this name gives way to this hop's. (Its earlier
    /// `X-Forwarded-For` and `Forwarded` lines are already part of this hop's values.)
    /// Names are compared as `HeaderName`s keep them: lowercase. (The same set as
    /// [`NAMES`], matched by length first: this runs for every field of every request.)
    pub fn replaces(name: &str) -> bool {
        matches!(
            name,
            "x-forwarded-for"
                | "forwarded"
                | "x-forwarded-proto"
                | "x-forwarded-host"
                | "x-request-id"
                | "traceparent"
        )
    }

    /// The value this hop sends for `name` (any case), if it sends one.
    pub fn value(&self, name: &str) -> Option<&[u8]> {
        self.fields()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The fields, as names and values.
    fn fields(&self) -> impl Iterator<Item = (&'static str, &[u8])> {
        let [xff, forwarded, trace] = self.ends;
        [
            ("x-forwarded-for", &self.values[..xff]),
            ("forwarded", &self.values[xff..forwarded]),
            ("traceparent", &self.values[forwarded..trace]),
            ("x-forwarded-proto", self.proto.as_bytes()),
            ("x-request-id", self.request_id.as_bytes()),
        ]
        .into_iter()
        .chain(
            self.host
                .as_ref()
                .map(|h| ("x-forwarded-host", h.as_bytes())),
        )
    }

    /// Appends the fields as `name: value` lines of an HTTP/1.1 head.
    pub fn write_lines(&self, out: &mut Vec<u8>) {
        for (name, value) in self.fields() {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Sets the fields in `headers` in place of the client's (for an HTTP/2 upstream). A
    /// client's field this hop has no value for is removed too, as on HTTP/1.1.
    pub fn apply(&self, headers: &mut HeaderMap) {
        // `insert` replaces the client's field; only X-Forwarded-Host may have no value here.
        if self.host.is_none() {
            headers.remove("x-forwarded-host");
        }
        for (name, value) in self.fields() {
            match HeaderValue::from_bytes(value) {
                Ok(v) => {
                    headers.insert(HeaderName::from_static(name), v);
                }
                Err(_) => {
                    headers.remove(name);
                }
            }
        }
    }
}

/// Whether every quoted string in `v` is closed (RFC 9110 §5.6.4: `\` escapes the next byte
/// inside one).
fn quotes_balance(v: &[u8]) -> bool {
    let mut quoted = false;
    let mut bytes = v.iter();
    while let Some(b) = bytes.next() {
        match (quoted, b) {
            (true, b'\\') => {
                bytes.next();
            }
            (_, b'"') => quoted = !quoted,
            _ => {}
        }
    }
    !quoted
}

/// Lowercase hex digits of `v`, most significant first, into `out` (`out.len()` digits).
fn hex_into(mut v: u128, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = DIGITS[(v & 0xf) as usize];
        v >>= 4;
    }
}

/// 32 random lowercase hex digits (a request or trace id).
pub fn random_id() -> HeaderValue {
    let mut buf = [0u8; 32];
    hex_into(rand::random::<u128>(), &mut buf);
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// An address in its usual text form (what `Display` writes), without a formatter.
fn write_ip(buf: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            // Written backwards into 15 bytes, then appended at once.
            let mut text = [0u8; 15];
            let mut at = text.len();
            for (i, octet) in v4.octets().iter().rev().enumerate() {
                if i > 0 {
                    at -= 1;
                    text[at] = b'.';
                }
                let mut n = *octet;
                loop {
                    at -= 1;
                    text[at] = b'0' + n % 10;
                    n /= 10;
                    if n == 0 {
                        break;
                    }
                }
            }
            buf.extend_from_slice(&text[at..]);
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write as _;
            let mut s = String::with_capacity(39);
            let _ = write!(s, "{v6}");
            buf.extend_from_slice(s.as_bytes());
        }
    }
}

/// A W3C trace-parent: kept if valid (version 00, non-zero ids) with a new span id for our
/// hop, else a new trace.
fn traceparent(incoming: Option<&HeaderValue>) -> [u8; 55] {
    // "00-" trace(32) "-" span(16) "-" flags(2)
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-01";
    let span = rand::random::<u64>().max(1) as u128;
    hex_into(span, &mut out[36..52]);
    let kept = incoming.map(HeaderValue::as_bytes).filter(|v| {
        let hex = |s: &[u8]| s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
        v.len() == 55
            && v.starts_with(b"00-")
            && v[35] == b'-'
            && v[52] == b'-'
            && hex(&v[3..35])
            && hex(&v[36..52])
            && hex(&v[53..55])
            && v[3..35].iter().any(|c| *c != b'0')
            && v[36..52].iter().any(|c| *c != b'0')
    });
    match kept {
        Some(v) => {
            out[3..35].copy_from_slice(&v[3..35]);
            out[53..55].copy_from_slice(&v[53..55]);
        }
        None => hex_into(rand::random::<u128>().max(1), &mut out[3..35]),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn well_formed(tp: &str) -> bool {
        let p: Vec<&str> = tp.split('-').collect();
        let hex =
            |s: &str, n| s.len() == n && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
        p.len() == 4
            && p[0] == "00"
            && hex(p[1], 32)
            && hex(p[2], 16)
            && hex(p[3], 2)
            && p[1] != "0".repeat(32)
            && p[2] != "0".repeat(16)
    }

    #[test]
    fn a_valid_traceparent_keeps_its_trace_and_flags_with_a_new_span() {
        let incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
        let out = traceparent(Some(&HeaderValue::from_static(incoming)));
        let out = std::str::from_utf8(&out).expect("ascii");
        assert!(well_formed(out), "{out}");
        assert!(
            out.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
            "{out}"
        );
        assert!(out.ends_with("-00"), "{out}");
        assert_ne!(&out[36..52], "b7ad6b7169203331");
    }

    #[test]
    fn an_invalid_traceparent_starts_a_new_trace() {
        for bad in [
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00_0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331_01",
            "",
        ] {
            let out = traceparent(HeaderValue::from_str(bad).ok().as_ref());
            let out = std::str::from_utf8(&out).expect("ascii");
            assert!(well_formed(out), "{bad} -> {out}");
            assert!(!out.contains("0af7651916cd43dd"), "{bad} -> {out}");
            assert!(out.ends_with("-01"), "a new trace is sampled: {out}");
        }
        assert!(well_formed(
            std::str::from_utf8(&traceparent(None)).expect("ascii")
        ));
    }

    #[test]
    fn ids_are_32_lowercase_hex_digits() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100 {
            let id = random_id().to_str().expect("ascii").to_string();
            assert_eq!(id.len(), 32);
            assert!(
                id.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')),
                "{id}"
            );
            seen.insert(id);
        }
        assert_eq!(seen.len(), 100);
        let mut out = [0u8; 8];
        hex_into(0xdead_beef, &mut out);
        assert_eq!(&out, b"deadbeef");
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "10.9.8.7",
            "192.168.100.255",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
            "::ffff:192.0.2.1",
        ] {
            let ip: std::net::IpAddr = ip.parse().expect("ip");
            let mut buf = b"x".to_vec();
            write_ip(&mut buf, ip);
            assert_eq!(buf.remove(0), b'x', "appends");
            assert_eq!(&buf[..], ip.to_string().as_bytes());
        }
    }

    #[test]
    fn fields_join_earlier_hops_and_replace_the_clients_own() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("api.test:8080"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.7"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("198.51.100.2"));
        h.insert(
            header::FORWARDED,
            HeaderValue::from_static("for=203.0.113.7"),
        );
        h.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
        h.insert("x-forwarded-proto", HeaderValue::from_static("gopher"));
        let id = HeaderValue::from_static("req-1");
        let peer: IpAddr = "::ffff:192.0.2.9".parse().expect("ip");
        let f = Forwarding::new(&h, None, peer, true, "api.test", &id);
        let mut out = Vec::new();
        f.write_lines(&mut out);
        let text = String::from_utf8(out).expect("ascii");
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert_eq!(
            lines[0],
            "x-forwarded-for: 203.0.113.7, 198.51.100.2, 192.0.2.9"
        );
        assert_eq!(
            lines[1],
            "forwarded: for=203.0.113.7, for=192.0.2.9;proto=https;host=\"api.test\""
        );
        assert!(
            lines[2].starts_with("traceparent: 00-0af7651916cd43dd8448eb211c80319c-"),
            "{}",
            lines[2]
        );
        assert_eq!(
            &lines[3..],
            [
                "x-forwarded-proto: https",
                "x-request-id: req-1",
                "x-forwarded-host: api.test:8080",
                ""
            ]
        );
        // The same fields through a header map (HTTP/2 upstreams), replacing the client's.
        f.apply(&mut h);
        assert_eq!(h.get_all(X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "api.test:8080");
        assert_eq!(
            h[header::FORWARDED],
            lines[1].trim_start_matches("forwarded: ")
        );
        for name in NAMES {
            assert!(Forwarding::replaces(name), "{name}");
        }
        assert!(!Forwarding::replaces("host"));
        assert_eq!(f.value("X-Forwarded-Proto"), Some(&b"https"[..]));
    }

    #[test]
    fn an_ipv6_client_is_quoted_in_forwarded_and_a_host_with_a_quote_is_left_out() {
        let id = HeaderValue::from_static("r");
        let f = Forwarding::new(
            &HeaderMap::new(),
            None,
            "2001:db8::7".parse().expect("ip"),
            false,
            "a\"b",
            &id,
        );
        let mut out = Vec::new();
        f.write_lines(&mut out);
        let text = String::from_utf8(out).expect("ascii");
        assert!(
            text.starts_with(
                "x-forwarded-for: 2001:db8::7\r\nforwarded: for=\"[2001:db8::7]\";proto=http\r\n"
            ),
            "{text}"
        );
        assert!(!text.contains("x-forwarded-host"), "{text}");
    }

    #[test]
    fn an_earlier_forwarded_line_with_an_open_quote_is_dropped() {
        let mut h = HeaderMap::new();
        h.append(
            header::FORWARDED,
            HeaderValue::from_static("for=192.0.2.1;host=\"a"),
        );
        h.append(
            header::FORWARDED,
            HeaderValue::from_static("for=192.0.2.2;host=\"b\\\"c\""),
        );
        let id = HeaderValue::from_static("r");
        let f = Forwarding::new(&h, None, "192.0.2.9".parse().expect("ip"), false, "", &id);
        assert_eq!(
            f.value("forwarded"),
            Some(&b"for=192.0.2.2;host=\"b\\\"c\", for=192.0.2.9;proto=http"[..])
        );
        assert!(
            quotes_balance(b"") && quotes_balance(b"a=\"x,y\"") && !quotes_balance(b"a=\"x\\\"")
        );
    }

    #[test]
    fn without_a_host_the_authority_is_the_forwarded_host_and_apply_removes_the_clients() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-host", HeaderValue::from_static("evil.test"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("gopher"));
        let id = HeaderValue::from_static("r");
        let peer: IpAddr = "192.0.2.9".parse().expect("ip");
        let f = Forwarding::new(&h, Some("api.test:8443"), peer, true, "api.test", &id);
        assert_eq!(f.value("x-forwarded-host"), Some(&b"api.test:8443"[..]));
        f.apply(&mut h);
        assert_eq!(h["x-forwarded-host"], "api.test:8443");
        assert_eq!(h["x-forwarded-proto"], "https");
        // Neither a Host nor an authority: no X-Forwarded-Host at all, not the client's.
        let f = Forwarding::new(&h, None, peer, true, "", &id);
        f.apply(&mut h);
        assert!(h.get("x-forwarded-host").is_none(), "{h:?}");
    }
}
