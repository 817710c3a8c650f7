//! Header rules of a proxy hop: hop-by-hop fields (RFC 9110 §7.6.1) are never forwarded,
//! except the pair a protocol switch needs, and cookies are read without copying.

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use smallvec::SmallVec;

/// Hop-by-hop headers (RFC 9110 section 7.6.1), never forwarded.
/// As header names, so removing them costs no parsing per request.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The position of `name` in [`HOP_BY_HOP`].
fn hop_by_hop_index(name: &str) -> Option<usize> {
    Some(match name {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "trailer" => 6,
        "transfer-encoding" => 7,
        "upgrade" => 8,
        _ => return None,
    })
}

/// Removes the hop-by-hop fields, and those the `Connection` field names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the (few) names notes which hop-by-hop ones are present, comparing names
    // as strings (a `HeaderName` comparison costs more for the non-standard ones); only
    // those are then removed. Most requests carry none, most upstream responses only
    // `Connection: keep-alive`.
    let mut present = 0u16;
    for k in headers.keys() {
        if let Some(i) = hop_by_hop_index(k.as_str()) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    // `Connection` (bit 0) usually lists only `close`, `keep-alive` or `upgrade`: nothing to
    // collect (the last two are removed below anyway, and `close` is removed by name).
    if present & 1 != 0 {
        let mut close = false;
        // Other names listed are rare: collected only when there are some.
        let mut listed: SmallVec<[HeaderName; 2]> = SmallVec::new();
        for v in headers.get_all(header::CONNECTION) {
            for t in v.as_bytes().split(|b| *b == b',') {
                let t = t.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !t.is_empty()
                    && !t.eq_ignore_ascii_case(b"keep-alive")
                    && !t.eq_ignore_ascii_case(b"upgrade")
                {
                    if let Ok(name) = HeaderName::from_bytes(t) {
                        listed.push(name);
                    }
                }
            }
        }
        for name in listed {
            headers.remove(name);
        }
        if close {
            headers.remove("close");
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// The protocol a request asks to switch to (`Upgrade`, with `Connection: upgrade`).
pub fn upgrade_of(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if asks {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// Puts back the two headers an upgrade needs after hop-by-hop removal.
pub fn keep_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// The value of cookie `name`, if the request has it.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_names_are_found_at_their_place() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name.as_str()), Some(i), "{name}");
        }
        assert_eq!(hop_by_hop_index("x-connection"), None);
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(header::CONTENT_TYPE));
    }
}
