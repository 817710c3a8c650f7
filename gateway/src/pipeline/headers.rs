//! Header rules of a proxy hop: hop-by-hop fields (RFC 9110 §7.6.1) are never forwarded,
//! except the pair a WebSocket switch needs; request fields the gateway would read one way
//! and an upstream another are refused or dropped ([`check_request_fields`]); and cookies
//! are read without copying.

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use smallvec::SmallVec;

use crate::config::Underscores;

/// Hop-by-hop headers (RFC 9110 section 7.6.1, and `HTTP2-Settings`, which only an `h2c`
/// upgrade on this hop uses: RFC 7540 §3.2.1), never forwarded.
/// As header names, so removing them costs no parsing per request.
static HOP_BY_HOP: [HeaderName; 10] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("http2-settings"),
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
        "http2-settings" => 9,
        _ => return None,
    })
}

/// Cleans an upstream's answer before it is relayed: its hop-by-hop fields go, and so does
/// any `endpoint-load-metrics`. That field is the gateway's own load report, which the L4
/// agents weigh the gateway by: an upstream's, relayed, would speak for the gateway (to a
/// health check pointed at a proxied path, or to anyone).
pub fn clean_response(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
    headers.remove(&crate::load::HEADER);
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

/// The protocol switch a request asks for (`Upgrade`, with `Connection: upgrade`), if it is
/// one the gateway forwards: WebSocket only, named alone.
///
/// Any other switch is the end of routing: after an `h2c` upgrade, say, the client would
/// speak HTTP/2 straight to the upstream, every later request unseen by the router and the
/// policies. So any other `Upgrade` is dropped with the hop-by-hop fields and the request is
/// served as a plain one, as RFC 9110 §7.8 lets a server do.
pub fn upgrade_of(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !asks {
        return None;
    }
    let mut offered = headers.get_all(header::UPGRADE).iter();
    let protocol = offered.next()?;
    (offered.next().is_none() && is_websocket(protocol)).then(|| protocol.clone())
}

/// Whether an `Upgrade` value names WebSocket (RFC 6455 §4.1: the token is
/// case-insensitive).
pub fn is_websocket(protocol: &HeaderValue) -> bool {
    protocol
        .as_bytes()
        .trim_ascii()
        .eq_ignore_ascii_case(b"websocket")
}

/// Why a request's header fields are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FieldRefusal {
    /// A field name with an underscore, on a listener that refuses them.
    #[error("a header field name has an underscore (this listener refuses them)")]
    Underscore,
    /// More than one `Authorization` field: the gateway checks one credential, and an
    /// upstream could read another.
    #[error("more than one Authorization field")]
    TwoCredentials,
    /// `Transfer-Encoding` names `chunked` more than once.
    #[error("Transfer-Encoding names chunked more than once")]
    ChunkedTwice,
    /// `Transfer-Encoding` names a coding besides `chunked`, which the gateway does not
    /// decode (and would otherwise drop unnoticed when it frames the body anew).
    #[error("Transfer-Encoding names a coding other than chunked")]
    UnknownCoding,
}

/// Checks a request's fields before anything reads them, so that the router, the policies
/// and the upstream all see one reading of the request:
/// - a field name with an underscore is dropped, refused or kept as the listener says: CGI,
///   WSGI, Rack and PHP servers read `X_Consumer_Id` as `X-Consumer-Id`, the name of a field
///   the gateway sets itself (nginx drops them too, by default);
/// - a second `Authorization` is refused;
/// - `Transfer-Encoding` may only be `chunked`, once (hyper has already refused one that does
///   not end in `chunked`).
pub fn check_request_fields(
    headers: &mut HeaderMap,
    underscores: Underscores,
) -> Result<(), FieldRefusal> {
    // One pass over the distinct names, which are few; most requests have nothing to do.
    let (mut underscored, mut coded) = (false, false);
    for k in headers.keys() {
        let name = k.as_str();
        if name.as_bytes().contains(&b'_') {
            underscored = true;
        } else if name == "transfer-encoding" {
            coded = true;
        }
    }
    if coded {
        let mut chunked = 0;
        for v in headers.get_all(header::TRANSFER_ENCODING) {
            for t in v.as_bytes().split(|b| *b == b',') {
                let t = t.trim_ascii();
                if t.eq_ignore_ascii_case(b"chunked") {
                    chunked += 1;
                } else if !t.is_empty() {
                    return Err(FieldRefusal::UnknownCoding);
                }
            }
        }
        if chunked > 1 {
            return Err(FieldRefusal::ChunkedTwice);
        }
    }
    // Only a map holding some name twice can hold two credentials.
    if headers.keys_len() != headers.len()
        && headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .nth(1)
            .is_some()
    {
        return Err(FieldRefusal::TwoCredentials);
    }
    if underscored {
        match underscores {
            Underscores::Keep => {}
            Underscores::Reject => return Err(FieldRefusal::Underscore),
            Underscores::Drop => {
                let names: SmallVec<[HeaderName; 2]> = headers
                    .keys()
                    .filter(|k| k.as_str().as_bytes().contains(&b'_'))
                    .cloned()
                    .collect();
                for name in names {
                    headers.remove(name);
                }
            }
        }
    }
    Ok(())
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

    fn map(fields: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in fields {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn only_a_websocket_switch_is_kept() {
        for (upgrade, kept) in [
            ("websocket", true),
            ("WebSocket", true),
            (" websocket ", true),
            ("h2c", false),
            ("websocket, h2c", false),
            ("TLS/1.2", false),
        ] {
            let h = map(&[("connection", "Upgrade"), ("upgrade", upgrade)]);
            assert_eq!(upgrade_of(&h).is_some(), kept, "{upgrade}");
        }
        let two = map(&[
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("upgrade", "h2c"),
        ]);
        assert_eq!(upgrade_of(&two), None);
        assert_eq!(upgrade_of(&map(&[("upgrade", "websocket")])), None);
    }

    #[test]
    fn request_fields_are_read_one_way() {
        use FieldRefusal::*;
        for (fields, how, expected, left) in [
            (vec![("x-a", "1")], Underscores::Drop, Ok(()), 1),
            (
                vec![("x_consumer_id", "root"), ("x-a", "1")],
                Underscores::Drop,
                Ok(()),
                1,
            ),
            (
                vec![("x_consumer_id", "root")],
                Underscores::Keep,
                Ok(()),
                1,
            ),
            (
                vec![("x_consumer_id", "root")],
                Underscores::Reject,
                Err(Underscore),
                1,
            ),
            (
                vec![("transfer-encoding", "chunked")],
                Underscores::Drop,
                Ok(()),
                1,
            ),
            (
                vec![("transfer-encoding", "Chunked")],
                Underscores::Drop,
                Ok(()),
                1,
            ),
            (
                vec![("transfer-encoding", "gzip, chunked")],
                Underscores::Drop,
                Err(UnknownCoding),
                1,
            ),
            (
                vec![
                    ("transfer-encoding", "chunked"),
                    ("transfer-encoding", "chunked"),
                ],
                Underscores::Drop,
                Err(ChunkedTwice),
                2,
            ),
            (
                vec![("transfer-encoding", "chunked, chunked")],
                Underscores::Drop,
                Err(ChunkedTwice),
                1,
            ),
            (
                vec![("authorization", "Bearer a"), ("authorization", "Bearer b")],
                Underscores::Drop,
                Err(TwoCredentials),
                2,
            ),
            (
                vec![
                    ("authorization", "Bearer a"),
                    ("accept", "1"),
                    ("accept", "2"),
                ],
                Underscores::Drop,
                Ok(()),
                3,
            ),
        ] {
            let mut h = HeaderMap::new();
            for (k, v) in &fields {
                h.append(*k, HeaderValue::from_static(v));
            }
            assert_eq!(check_request_fields(&mut h, how), expected, "{fields:?}");
            assert_eq!(h.len(), left, "{fields:?} left {h:?}");
        }
    }
}
