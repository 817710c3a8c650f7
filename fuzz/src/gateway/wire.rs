//! What an upstream sends back: the response head and the body's framing.

use bytes::BytesMut;
use hyper::{
    header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING},
    HeaderMap, Method, StatusCode, Version,
};
use sluice_gateway::{
    fuzzing::decode_body,
    upstream::exchange::head::{parse_response, ResponseFraming, ResponseHead, MAX_HEAD},
};

use crate::common::Input;

/// Target `response_head`: `parse_response` on an upstream's bytes, for a GET, HEAD, POST
/// or CONNECT request.
///
/// Invariants beyond "no panic":
/// - a complete head is taken from the front of the buffer and the body's bytes stay;
///   an incomplete one takes nothing, and so does every prefix of a complete one (the head
///   arrives in any pieces);
/// - the framing follows RFC 9112 §6.3: none for HEAD, 1xx, 204 and 304; chunked only when
///   chunked is the last transfer coding, and then no `Content-Length` is passed on; a
///   length only from `Content-Length` values that all agree; anything read until close, or
///   from HTTP/1.0, or with `Connection: close`, never reused;
/// - the parsed head, written out again, parses to the same status, fields and framing.
pub fn response_head(data: &[u8]) {
    let mut input = Input::new(data);
    let method = [Method::GET, Method::HEAD, Method::POST, Method::CONNECT]
        [input.byte() as usize % 4]
        .clone();
    let wire = input.rest();
    let mut buf = BytesMut::from(wire);
    let head = match parse_response(&mut buf, &mut Vec::new(), &method) {
        Err(_) => return,
        Ok(None) => {
            assert_eq!(&buf[..], wire, "an incomplete head takes nothing");
            assert!(wire.len() < MAX_HEAD, "a head past the limit is refused");
            return;
        }
        Ok(Some(head)) => head,
    };
    let taken = wire.len() - buf.len();
    assert_eq!(&buf[..], &wire[taken..], "the bytes after the head stay");
    let raw = &wire[..taken];
    assert!(
        raw.ends_with(b"\n\n") || raw.ends_with(b"\n\r\n"),
        "a head ends with an empty line"
    );
    // Any prefix of it is still incomplete (a sample of them for long heads).
    let step = (taken / 64).max(1);
    for cut in (0..taken).step_by(step).filter(|c| *c < MAX_HEAD) {
        let mut part = BytesMut::from(&wire[..cut]);
        let r = parse_response(&mut part, &mut Vec::new(), &method);
        assert!(
            matches!(r, Ok(None)),
            "the first {cut} bytes of a valid head are not incomplete: {:?}",
            r.err()
        );
    }
    check_framing(&head, &method);
    // Written out again, it reads the same.
    let mut again = format!(
        "HTTP/1.{} {} X\r\n",
        u8::from(head.parts.version == Version::HTTP_11),
        head.parts.status.as_u16()
    )
    .into_bytes();
    for (name, value) in &head.parts.headers {
        again.extend_from_slice(name.as_str().as_bytes());
        again.extend_from_slice(b": ");
        again.extend_from_slice(value.as_bytes());
        again.extend_from_slice(b"\r\n");
    }
    again.extend_from_slice(b"\r\n");
    let mut buf = BytesMut::from(&again[..]);
    let second = parse_response(&mut buf, &mut Vec::new(), &method)
        .unwrap_or_else(|e| panic!("the head written out again is refused: {e}"))
        .expect("the head written out again is complete");
    assert!(buf.is_empty());
    assert_eq!(second.parts.status, head.parts.status);
    assert_eq!(second.parts.version, head.parts.version);
    assert!(
        same_fields(&second.parts.headers, &head.parts.headers),
        "fields differ when read again"
    );
    assert_eq!(
        second.framing, head.framing,
        "framing differs when read again"
    );
}

fn same_fields(a: &HeaderMap, b: &HeaderMap) -> bool {
    a.len() == b.len() && a.iter().zip(b.iter()).all(|(x, y)| x == y)
}

/// Comma-separated list members of every `name` field, trimmed, empty ones left out.
fn list(headers: &HeaderMap, name: &hyper::header::HeaderName) -> Vec<Vec<u8>> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|m| m.trim_ascii().to_vec())
        .filter(|m| !m.is_empty())
        .collect()
}

fn check_framing(head: &ResponseHead, method: &Method) {
    let h = &head.parts.headers;
    let status = head.parts.status;
    let http10 = head.parts.version == Version::HTTP_10;
    if http10 {
        assert!(
            !head.keep_alive,
            "an HTTP/1.0 target's connection is not reused"
        );
        assert!(
            !h.contains_key(TRANSFER_ENCODING),
            "HTTP/1.0 with transfer-encoding"
        );
    }
    if list(h, &CONNECTION)
        .iter()
        .any(|t| t.eq_ignore_ascii_case(b"close"))
    {
        assert!(!head.keep_alive, "connection: close is reused");
    }
    if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        assert_eq!(
            head.framing,
            ResponseFraming::None,
            "a response without a body"
        );
        return;
    }
    match head.framing {
        ResponseFraming::None => panic!("no body for {status} to {method}"),
        ResponseFraming::Chunked => {
            let codings = list(h, &TRANSFER_ENCODING);
            assert!(
                codings
                    .last()
                    .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked")),
                "chunked framing without chunked last"
            );
            assert!(
                !h.contains_key(CONTENT_LENGTH),
                "a length beside chunked is passed on"
            );
        }
        ResponseFraming::Length(n) => {
            assert!(
                !h.contains_key(TRANSFER_ENCODING),
                "a length beside a transfer coding"
            );
            let values: Vec<Vec<u8>> = h
                .get_all(CONTENT_LENGTH)
                .iter()
                .flat_map(|v| v.as_bytes().split(|b| *b == b','))
                .map(|m| m.trim_ascii().to_vec())
                .collect();
            assert!(!values.is_empty());
            for v in values {
                assert!(v.iter().all(u8::is_ascii_digit), "content-length {v:?}");
                let text = String::from_utf8(v).expect("digits");
                assert_eq!(text.parse::<u64>().ok(), Some(n), "content-length {text}");
            }
        }
        ResponseFraming::UntilClose => {
            assert!(
                !head.keep_alive,
                "a body read until close, on a reused connection"
            );
            assert!(
                h.contains_key(TRANSFER_ENCODING) || !h.contains_key(CONTENT_LENGTH),
                "read until close despite a length"
            );
        }
    }
}

/// Target `chunked_body`: the response body decoder, mostly on chunked bodies, the bytes
/// arriving in pieces the fuzzer chooses.
///
/// The decoder drops chunk boundaries and extensions, so the bytes it read cannot be
/// rebuilt from what it produced; the invariants are instead:
/// - it agrees with a plain whole-buffer reference decoder written from RFC 9112 §7.1 (and
///   the decoder's documented limits: a chunk-size line of at most 1023 bytes, a trailer
///   section found within 64 KiB, at most 64 trailer fields): the same data, the same
///   trailers, the same end (and so the same bytes left for the next response), the same
///   verdict on incomplete and invalid input;
/// - how the bytes are split does not matter;
/// - the body and trailers, encoded again in the canonical form (one chunk, uppercase hex,
///   no extensions), decode to themselves, and that form is a fixed point: decoding and
///   encoding it again gives the same bytes;
/// - a `Content-Length` body is exactly its length, and a body read until close is
///   everything.
pub fn chunked_body(data: &[u8]) {
    let mut input = Input::new(data);
    let framing = match input.byte() % 8 {
        6 => ResponseFraming::Length(u64::from(input.u16())),
        7 => ResponseFraming::UntilClose,
        _ => ResponseFraming::Chunked,
    };
    let mut cuts = Vec::new();
    let mut at = 0;
    for _ in 0..input.byte() % 8 {
        at += usize::from(input.byte());
        cuts.push(at);
    }
    let wire = input.rest();
    let split = decode_body(framing, wire, &cuts);
    let whole = decode_body(framing, wire, &[]);
    match (&split, &whole) {
        (Ok(s), Ok(w)) => {
            assert_eq!(s.data, w.data, "data depends on the split");
            assert_eq!(s.trailers, w.trailers, "trailers depend on the split");
            assert_eq!(
                (s.consumed, s.done),
                (w.consumed, w.done),
                "end depends on the split"
            );
        }
        (Err(_), Err(_)) => {}
        _ => panic!(
            "the split {cuts:?} changes the verdict: split {:?}, whole {:?}",
            split.as_ref().err(),
            whole.as_ref().err()
        ),
    }
    match framing {
        ResponseFraming::Length(n) => {
            let w = whole.expect("a length-framed body never fails");
            let want = wire.len().min(n as usize);
            assert_eq!(w.data, &wire[..want]);
            assert_eq!((w.consumed, w.done), (want, wire.len() as u64 >= n));
        }
        ResponseFraming::UntilClose => {
            let w = whole.expect("a body until close never fails");
            assert_eq!((&w.data[..], w.consumed, w.done), (wire, wire.len(), false));
        }
        _ => {
            let reference = reference_chunked(wire);
            match (&reference, whole) {
                (Reference::Invalid, Err(_)) => {}
                (Reference::Invalid, Ok(w)) => {
                    panic!("invalid chunked body accepted: {w:?}")
                }
                (_, Err(e)) => panic!("valid chunked body refused ({e}): {reference:?}"),
                (Reference::Incomplete { data }, Ok(w)) => {
                    assert!(!w.done, "an incomplete body ended");
                    assert_eq!(&w.data, data, "data of an incomplete body");
                }
                (
                    Reference::Complete {
                        data,
                        trailers,
                        consumed,
                    },
                    Ok(w),
                ) => {
                    assert!(w.done, "a complete body did not end");
                    assert_eq!(&w.data, data, "data");
                    assert_eq!(&w.trailers, trailers, "trailers");
                    assert_eq!(w.consumed, *consumed, "where the body ends");
                    round_trip(&w.data, w.trailers.as_ref());
                }
            }
        }
    }
}

/// The canonical chunked form of a body: one chunk, then the trailers.
fn encode(data: &[u8], trailers: Option<&HeaderMap>) -> Vec<u8> {
    let mut out = Vec::new();
    if !data.is_empty() {
        out.extend_from_slice(format!("{:X}\r\n", data.len()).as_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn round_trip(data: &[u8], trailers: Option<&HeaderMap>) {
    let canonical = encode(data, trailers);
    let again = decode_body(ResponseFraming::Chunked, &canonical, &[])
        .unwrap_or_else(|e| panic!("the canonical form is refused: {e}"));
    assert!(again.done && again.consumed == canonical.len());
    assert_eq!(again.data, data, "data changes in the canonical form");
    // An empty trailer section is no trailers.
    let kept = trailers.filter(|t| !t.is_empty());
    assert_eq!(again.trailers.as_ref().filter(|t| !t.is_empty()), kept);
    assert_eq!(
        encode(&again.data, again.trailers.as_ref()),
        canonical,
        "the canonical form is not a fixed point"
    );
}

/// What the reference decoder made of a chunked body.
#[derive(Debug)]
enum Reference {
    /// The body ended after `consumed` bytes.
    Complete {
        data: Vec<u8>,
        trailers: Option<HeaderMap>,
        consumed: usize,
    },
    /// Valid so far; `data` is what arrived of it.
    Incomplete { data: Vec<u8> },
    /// Not a chunked body.
    Invalid,
}

/// The longest chunk-size line, CRLF not counted.
const MAX_LINE: usize = 1023;
/// The trailer section's final CRLF CRLF must start within this many bytes.
const MAX_TRAILER_SECTION: usize = 64 * 1024;

/// RFC 9112 §7.1 on the whole buffer, plainly:
/// `*chunk last-chunk trailer-section CRLF`, `chunk = chunk-size [ chunk-ext ] CRLF
/// chunk-data CRLF`, with `chunk-size = 1*HEXDIG` (at most 16 digits), optional blanks, and
/// an extension of no control bytes but tab.
fn reference_chunked(wire: &[u8]) -> Reference {
    let mut data = Vec::new();
    let mut at = 0;
    loop {
        let rest = &wire[at..];
        let Some(line_len) = rest.windows(2).position(|w| w == b"\r\n") else {
            // The line is at least this long, whatever comes next.
            let known = rest.len() - usize::from(rest.ends_with(b"\r"));
            return if known > MAX_LINE {
                Reference::Invalid
            } else {
                Reference::Incomplete { data }
            };
        };
        if line_len > MAX_LINE {
            return Reference::Invalid;
        }
        let Some(size) = chunk_size_line(&rest[..line_len]) else {
            return Reference::Invalid;
        };
        at += line_len + 2;
        if size == 0 {
            break;
        }
        let available = wire.len() - at;
        if (available as u64) < size {
            data.extend_from_slice(&wire[at..]);
            return Reference::Incomplete { data };
        }
        let size = size as usize;
        data.extend_from_slice(&wire[at..at + size]);
        at += size;
        match &wire[at..] {
            [] | [_] => return Reference::Incomplete { data },
            [b'\r', b'\n', ..] => at += 2,
            _ => return Reference::Invalid,
        }
    }
    // The trailer section.
    let rest = &wire[at..];
    if rest.starts_with(b"\r\n") {
        return Reference::Complete {
            data,
            trailers: None,
            consumed: at + 2,
        };
    }
    let Some(start) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
        // How much of the end could still begin the final CRLF CRLF.
        let open = (1..=3)
            .rev()
            .find(|n| rest.ends_with(&b"\r\n\r\n"[..*n]))
            .unwrap_or(0);
        return if rest.len() - open >= MAX_TRAILER_SECTION {
            Reference::Invalid
        } else {
            Reference::Incomplete { data }
        };
    };
    if start >= MAX_TRAILER_SECTION {
        return Reference::Invalid;
    }
    let block = &rest[..start + 4];
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let Ok(httparse::Status::Complete((_, parsed))) = httparse::parse_headers(block, &mut fields)
    else {
        return Reference::Invalid;
    };
    let mut trailers = HeaderMap::new();
    for f in parsed.iter() {
        let (Ok(name), Ok(value)) = (
            hyper::header::HeaderName::from_bytes(f.name.as_bytes()),
            hyper::header::HeaderValue::from_bytes(f.value),
        ) else {
            return Reference::Invalid;
        };
        trailers.append(name, value);
    }
    Reference::Complete {
        data,
        trailers: Some(trailers),
        consumed: at + start + 4,
    }
}

/// `chunk-size [ BWS ";" chunk-ext ]`, the size.
fn chunk_size_line(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if !(1..=16).contains(&digits) {
        return None;
    }
    let after = line[digits..]
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .map_or(&[][..], |p| &line[digits + p..]);
    let ext_ok = match after.split_first() {
        None => true,
        Some((b';', _)) => after.iter().all(|b| !b.is_ascii_control() || *b == b'\t'),
        Some(_) => false,
    };
    let text = std::str::from_utf8(&line[..digits]).ok()?;
    ext_ok.then(|| u64::from_str_radix(text, 16).ok()).flatten()
}
