//! What a client's request says about itself: its target's path, its host, and the
//! forwarding fields of the proxies in front.

use std::net::IpAddr;

use hyper::{
    header::{HeaderName, HeaderValue, HOST},
    HeaderMap, Method, Request, Uri, Version,
};
use sluice_gateway::{
    config::{ClientIp, EscapedSlashes, PathParameters},
    pipeline::{
        path::{normalize, PathRules},
        policy::client_ip::ClientIpRule,
        target::{host_of, normalized_target},
    },
    upstream::forwarding::Forwarding,
};

use crate::common::Input;

fn rules(bits: u8) -> PathRules {
    PathRules {
        merge_slashes: bits & 1 == 0,
        escaped_slashes: if bits & 2 == 0 {
            EscapedSlashes::Reject
        } else {
            EscapedSlashes::Keep
        },
        parameters: if bits & 4 == 0 {
            PathParameters::Reject
        } else {
            PathParameters::Keep
        },
    }
}

/// Target `path`: path normalization under every combination of the listener's settings.
///
/// Invariants beyond "no panic":
/// - it agrees with a reference made of RFC 3986's own steps: §6.2.2 decoding (unreserved
///   escapes decoded, other hex uppercased) with the listener's refusals, runs of `/`
///   merged when asked, then §5.2.4 `remove_dot_segments` verbatim, where a `..` that would
///   remove nothing is refused instead of clamped (and a `.;`/`..;` segment is refused):
///   the same output for every path it accepts, and a refusal for every path it refuses;
/// - a normalized path is a fixed point of normalization;
/// - it never climbs above the root: it starts with `/` and has no `.` or `..` segment.
pub fn path(data: &[u8]) {
    let mut input = Input::new(data);
    let rules = rules(input.byte());
    let Ok(raw) = std::str::from_utf8(input.rest()) else {
        return;
    };
    let got = normalize(raw, rules);
    let want = reference_normalize(raw, rules);
    match (&got, &want) {
        (Ok(g), Some(w)) => assert_eq!(g.as_ref(), w, "{raw:?} under {rules:?}"),
        (Err(_), None) => {}
        _ => panic!("{raw:?} under {rules:?}: normalized {got:?}, reference {want:?}"),
    }
    if let Ok(once) = got {
        check_normal(&once, rules);
    }
}

/// `path` is its own normalization, and stays under the root.
fn check_normal(path: &str, rules: PathRules) {
    // (It may come back copied: a path with an escape or a `;` is always rebuilt.)
    match normalize(path, rules) {
        Ok(again) => assert_eq!(again, path, "not a fixed point"),
        Err(e) => panic!("{path:?} is refused once normal: {e}"),
    }
    if path == "*" {
        return;
    }
    assert!(path.starts_with('/'), "{path:?}");
    assert!(
        path.split('/').all(|s| s != "." && s != ".."),
        "{path:?} keeps a dot segment"
    );
    if rules.merge_slashes {
        assert!(!path.contains("//"), "{path:?}");
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The reference normalization; `None`: refused.
fn reference_normalize(raw: &str, rules: PathRules) -> Option<String> {
    if raw == "*" {
        return Some(raw.into());
    }
    if !raw.starts_with('/') {
        return None;
    }
    let keep_slashes = rules.escaped_slashes == EscapedSlashes::Keep;
    let keep_parameters = rules.parameters == PathParameters::Keep;
    // §6.2.2.1 and §6.2.2.2.
    let bytes = raw.as_bytes();
    let mut decoded = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let text = std::str::from_utf8(hex).ok()?;
                if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return None;
                }
                let v = u8::from_str_radix(text, 16).ok()?;
                if unreserved(v) {
                    decoded.push(v);
                } else if (v == b'/' || v == b'\\') && !keep_slashes {
                    return None;
                } else {
                    decoded.extend_from_slice(format!("%{v:02X}").as_bytes());
                }
                i += 3;
            }
            b'\\' if !keep_slashes => return None,
            b';' if !keep_parameters => return None,
            b => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    if decoded
        .split(|b| *b == b'/')
        .any(|s| s.starts_with(b".;") || s.starts_with(b"..;"))
    {
        return None;
    }
    if rules.merge_slashes {
        decoded.dedup_by(|a, b| *a == b'/' && *b == b'/');
    }
    let out = remove_dot_segments(&decoded)?;
    String::from_utf8(out).ok()
}

/// RFC 3986 §5.2.4, step by step; `None` where a `..` finds nothing to remove.
fn remove_dot_segments(path: &[u8]) -> Option<Vec<u8>> {
    let mut input = path.to_vec();
    let mut output: Vec<u8> = Vec::new();
    let pop = |output: &mut Vec<u8>| -> Option<()> {
        if output.is_empty() {
            return None;
        }
        let at = output.iter().rposition(|b| *b == b'/').unwrap_or(0);
        output.truncate(at);
        Some(())
    };
    while !input.is_empty() {
        // A: remove "../" or "./"; B: "/./" becomes "/" (the same two bytes go).
        if input.starts_with(b"../") {
            input.drain(..3);
        } else if input.starts_with(b"./") || input.starts_with(b"/./") {
            input.drain(..2);
        } else if input == b"/." {
            input = b"/".to_vec();
        } else if input.starts_with(b"/../") {
            input.drain(..3);
            pop(&mut output)?;
        } else if input == b"/.." {
            input = b"/".to_vec();
            pop(&mut output)?;
        } else if input == b"." || input == b".." {
            input.clear();
        } else {
            let start = usize::from(input.first() == Some(&b'/'));
            let end = input[start..]
                .iter()
                .position(|b| *b == b'/')
                .map_or(input.len(), |p| p + start);
            output.extend(input.drain(..end));
        }
    }
    Some(output)
}

/// Target `host_target`: the Host rules (`host_of`) and the normalized request target
/// (`normalized_target`) of requests built from a fuzzed target, version, method and Host
/// fields.
///
/// Invariants beyond "no panic":
/// - the host routed is lowercase, has no port and no trailing dot, and is empty or a valid
///   `uri-host` (RFC 3986 §3.2.2: a bracketed IPv6 literal, or a reg-name of unreserved
///   characters, escapes and sub-delims, without empty labels), whether it came from Host or
///   from the target's authority;
/// - an HTTP/1.1 request is routed only with exactly one Host field, any request only with
///   at most one, and an authority with userinfo never;
/// - the Host sent upstream in its place names the same host;
/// - the normalized target's path is normal (its own normalization) and keeps the query;
///   `None` ("already normal") only for a target whose path is normal; `*` only for
///   `OPTIONS *`.
pub fn host_target(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.byte();
    let version = [Version::HTTP_10, Version::HTTP_11, Version::HTTP_2][usize::from(flags % 3)];
    let method = [Method::GET, Method::OPTIONS, Method::CONNECT, Method::POST]
        [usize::from(flags >> 2) % 4]
        .clone();
    let Ok(uri) = Uri::try_from(input.field()) else {
        return;
    };
    let mut builder = Request::builder()
        .version(version)
        .method(method.clone())
        .uri(uri.clone());
    let mut hosts = 0;
    for _ in 0..(flags >> 4) % 3 {
        if let Ok(v) = HeaderValue::from_bytes(input.field()) {
            builder = builder.header(HOST, v);
            hosts += 1;
        }
    }
    let Ok(req) = builder.body(()) else {
        return;
    };
    if let Ok(host) = host_of(&req) {
        assert!(hosts <= 1, "{hosts} Host fields accepted");
        if version == Version::HTTP_11 {
            assert_eq!(hosts, 1, "an HTTP/1.1 request without Host accepted");
        }
        if let Some(a) = uri.authority() {
            assert!(!a.as_str().contains('@'), "userinfo accepted: {a}");
        }
        let name = host.as_str();
        assert!(
            !name.bytes().any(|b| b.is_ascii_uppercase()),
            "{name:?} is not lowercase"
        );
        assert!(
            name.is_empty() || valid_host(name),
            "{name:?} is not a host (target {uri}, Host {:?})",
            req.headers().get(HOST)
        );
        if let Some(up) = &host.upstream {
            let up = up.to_str().expect("a host is ASCII").to_ascii_lowercase();
            let up_host = match up.rfind(':') {
                Some(c) if !up[c..].contains(']') => &up[..c],
                _ => &up[..],
            };
            assert_eq!(up_host, name, "the Host sent upstream names another host");
        }
    }
    for bits in [0, 6, 1] {
        let rules = rules(bits);
        let raw = uri.path_and_query().map_or("", |p| p.as_str());
        let result = normalized_target(&uri, &method, rules);
        if uri.path() == "*" && (method != Method::OPTIONS || raw != "*") {
            assert!(result.is_err(), "* accepted for {method} {raw}");
        }
        match result {
            Ok(Some(new)) => {
                check_normal(new.path(), rules);
                assert_eq!(new.query(), uri.query(), "the query changed");
                assert_eq!(new.authority(), uri.authority());
                assert_eq!(new.scheme(), uri.scheme());
            }
            Ok(None) => {
                check_normal(uri.path(), rules);
                assert!(raw.starts_with('/') || raw == "*", "{raw:?} left alone");
            }
            Err(_) => {}
        }
    }
}

/// RFC 3986 §3.2.2 `host`, without a port: an IPv6 literal in brackets, or a reg-name (an
/// IPv4 address is one) without empty labels or a trailing dot.
fn valid_host(h: &str) -> bool {
    if let Some(literal) = h.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return !literal.is_empty()
            && literal
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
    }
    let b = h.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if b
                .get(i + 1..i + 3)
                .is_some_and(|x| x.iter().all(u8::is_ascii_hexdigit)) =>
            {
                i += 3
            }
            c if c.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&c) => i += 1,
            _ => return false,
        }
    }
    h.split('.').all(|label| !label.is_empty())
}

/// The `X-Forwarded-For` and `Forwarded` fields, and `traceparent`, as a fuzzed header line
/// names them.
fn field_name(n: u8) -> HeaderName {
    HeaderName::from_static(
        ["x-forwarded-for", "forwarded", "traceparent", "host"][usize::from(n % 4)],
    )
}

/// The model of an `X-Forwarded-For` entry's address: an address, or one with a port
/// (IPv6 in brackets, which may also stand alone), IPv4-mapped IPv6 read as IPv4.
fn forwarded_entry(entry: &str) -> Option<IpAddr> {
    let bare = |s: &str| s.parse::<IpAddr>().ok();
    let address = if let Some(rest) = entry.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let port_ok = after.is_empty()
            || after
                .strip_prefix(':')
                .is_some_and(|p| p.parse::<u16>().is_ok() && !p.starts_with('+'));
        match bare(inside) {
            Some(IpAddr::V6(v6)) if port_ok => IpAddr::V6(v6),
            _ => return None,
        }
    } else if let Some(a) = bare(entry) {
        a
    } else {
        let (host, port) = entry.rsplit_once(':')?;
        match (host.parse::<std::net::Ipv4Addr>(), port.parse::<u16>()) {
            (Ok(v4), Ok(_)) if !port.starts_with('+') => IpAddr::V4(v4),
            _ => return None,
        }
    };
    Some(match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    })
}

/// Target `forwarded`: the client address read from `X-Forwarded-For` for a trusted proxy
/// (`ClientIpRule::resolve`), and this hop's forwarding fields made from the client's
/// (`Forwarding::new`: earlier `X-Forwarded-For` and `Forwarded` lines kept, this hop's
/// entry appended, `traceparent` kept or replaced).
///
/// Invariants beyond "no panic":
/// - an untrusted peer, or any peer while `xff_depth` is 0, is the client: no header can
///   change that; for a trusted one, the client is the `X-Forwarded-For` entry `xff_depth`
///   from the right (over the lines that are visible ASCII), or the peer;
/// - whatever the client sent, the last `X-Forwarded-For` entry is the peer, and the last
///   `Forwarded` element (read by RFC 7239's grammar, quoted strings included) is exactly
///   this hop's: `for` the peer, `proto`, and the host only when it is plain;
/// - every field is a valid value, and the head lines written for HTTP/1.1 read back
///   (httparse) as exactly those fields, as `apply` sets them for HTTP/2;
/// - `traceparent` is well formed, and keeps a valid incoming trace id and flags.
pub fn forwarded(data: &[u8]) {
    const PROXIES: [&str; 4] = ["10.0.0.0/8", "192.0.2.1", "::1", "2001:db8::/32"];
    let mut input = Input::new(data);
    let flags = input.byte();
    let trusted: Vec<String> = PROXIES
        .iter()
        .enumerate()
        .filter(|(i, _)| flags >> i & 1 == 1)
        .map(|(_, p)| p.to_string())
        .collect();
    let depth = usize::from(flags >> 4 & 3);
    let tls = flags & 0x40 != 0;
    let peer: IpAddr = if flags & 0x80 != 0 {
        let b: [u8; 16] = std::array::from_fn(|_| input.byte());
        IpAddr::from(b)
    } else {
        let b: [u8; 4] = std::array::from_fn(|_| input.byte());
        IpAddr::from(b)
    };
    let host = input.text();
    let mut headers = HeaderMap::new();
    while !input.is_empty() {
        let name = field_name(input.byte());
        if let Ok(v) = HeaderValue::from_bytes(input.field()) {
            headers.append(name, v);
        }
    }
    let rule = ClientIpRule::try_from(&ClientIp {
        trusted_proxies: trusted.clone(),
        xff_depth: depth,
        ipv6_limit_prefix: 64,
    })
    .expect("the fixed proxy list is valid");

    // The client address.
    let canonical = peer.to_canonical();
    let client = rule.resolve(peer, &headers);
    let trusted_peer = trusted.iter().any(|p| {
        let net: ipnet::IpNet = p
            .parse()
            .or_else(|_| p.parse::<IpAddr>().map(ipnet::IpNet::from))
            .expect("a fixed proxy");
        net.contains(&canonical)
    });
    if depth == 0 || !trusted_peer {
        assert_eq!(client, canonical, "the client of an untrusted peer changed");
    } else {
        let entries: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let want = entries
            .len()
            .checked_sub(depth)
            .and_then(|i| forwarded_entry(entries[i]))
            .unwrap_or(canonical);
        assert_eq!(client, want, "entry {depth} from the right of {entries:?}");
    }

    // This hop's fields.
    let id = HeaderValue::from_static("fuzz-id");
    let f = Forwarding::new(&headers, None, peer, tls, &host, &id);
    let ip = canonical.to_string();
    let xff = f.value("x-forwarded-for").expect("always sent");
    let last = xff.rsplit(|b| *b == b',').next().unwrap_or_default();
    assert_eq!(
        last.trim_ascii(),
        ip.as_bytes(),
        "X-Forwarded-For's last entry"
    );
    let fwd = f.value("forwarded").expect("always sent");
    let elements = forwarded_elements(fwd).expect("Forwarded is a valid list");
    let plain_host = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    let mut want = match canonical {
        IpAddr::V4(_) => format!("for={ip}"),
        IpAddr::V6(_) => format!("for=\"[{ip}]\""),
    };
    want.push_str(if tls { ";proto=https" } else { ";proto=http" });
    if plain_host {
        want.push_str(&format!(";host=\"{host}\""));
    }
    assert_eq!(
        elements.last().map(|e| e.trim_ascii()),
        Some(want.as_bytes()),
        "the last Forwarded element is not this hop's: {}",
        String::from_utf8_lossy(fwd)
    );
    // Valid values, written and read back whole.
    let mut lines = Vec::new();
    f.write_lines(&mut lines);
    lines.extend_from_slice(b"\r\n");
    let mut slots = [httparse::EMPTY_HEADER; 16];
    let Ok(httparse::Status::Complete((len, parsed))) = httparse::parse_headers(&lines, &mut slots)
    else {
        panic!(
            "the forwarding lines do not read back: {}",
            String::from_utf8_lossy(&lines)
        );
    };
    assert_eq!(len, lines.len());
    let mut applied = HeaderMap::new();
    f.apply(&mut applied);
    // (Read back without the blanks around it: an HTTP/2 client's earlier line may have
    // them, and they are not part of a field's value.)
    let value = |name: &str| f.value(name).map(<[u8]>::trim_ascii);
    for h in parsed.iter() {
        assert_eq!(value(h.name), Some(h.value), "{} read back", h.name);
        assert!(
            HeaderValue::from_bytes(h.value).is_ok(),
            "{} is not a valid value",
            h.name
        );
        assert_eq!(
            applied.get(h.name).map(|v| v.as_bytes().trim_ascii()),
            Some(h.value),
            "{} as applied",
            h.name
        );
    }
    assert_eq!(applied.len(), parsed.len(), "apply sets other fields");
    // traceparent.
    let tp = f.value("traceparent").expect("always sent");
    assert!(
        well_formed_traceparent(tp),
        "{}",
        String::from_utf8_lossy(tp)
    );
    if let Some(incoming) = headers.get("traceparent").map(HeaderValue::as_bytes) {
        if well_formed_traceparent(incoming) && incoming.starts_with(b"00-") {
            assert_eq!(&tp[3..35], &incoming[3..35], "the trace id is kept");
            assert_eq!(&tp[53..], &incoming[53..], "the flags are kept");
        }
    }
}

/// `00-<32 hex>-<16 hex>-<2 hex>`, lowercase, ids not all zero.
fn well_formed_traceparent(v: &[u8]) -> bool {
    let hex = |s: &[u8]| s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    v.len() == 55
        && v.starts_with(b"00-")
        && v[35] == b'-'
        && v[52] == b'-'
        && hex(&v[3..35])
        && hex(&v[36..52])
        && hex(&v[53..])
        && v[3..35].iter().any(|c| *c != b'0')
        && v[36..52].iter().any(|c| *c != b'0')
}

/// The elements of a `Forwarded` value: split at commas outside quoted strings (RFC 9110
/// §5.6.4, where `\` takes the next byte). `None` if a quoted string is left open.
fn forwarded_elements(v: &[u8]) -> Option<Vec<&[u8]>> {
    let mut elements = Vec::new();
    let (mut start, mut quoted, mut i) = (0, false, 0);
    while i < v.len() {
        match (quoted, v[i]) {
            (true, b'\\') => i += 1,
            (_, b'"') => quoted = !quoted,
            (false, b',') => {
                elements.push(&v[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    elements.push(&v[start.min(v.len())..]);
    (!quoted).then_some(elements)
}
