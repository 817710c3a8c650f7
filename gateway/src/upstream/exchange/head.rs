//! Message heads on the upstream wire: the request head written, the response head parsed
//! (RFC 9112: status line, fields, and how the body that follows is framed).

use bytes::{Bytes, BytesMut};
use hyper::{
    header::{HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, COOKIE, TRANSFER_ENCODING},
    http::response,
    HeaderMap, Method, Response, StatusCode, Version,
};

use super::ExchangeError;
use crate::upstream::forwarding::Forwarding;

/// The most fields a response head may carry.
const MAX_FIELDS: usize = 128;
/// The largest response head read, in bytes.
pub const MAX_HEAD: usize = 64 * 1024;

/// How a request body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body.
    Empty,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`, for a body of unknown length.
    Chunked,
}

/// Writes the request head into `out`. The framing fields come from `framing` alone: the
/// client's own `Content-Length` and `Transfer-Encoding` described the client's hop. This
/// hop's `forwarding` fields take the place of the client's of the same names. Cookies go
/// on one line, joined by `; `: an HTTP/2 client may split them into fields of their own
/// (RFC 9113 §8.2.3), which many HTTP/1.1 servers would read only the first of.
pub fn encode_request(
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    framing: RequestFraming,
    forwarding: Option<&Forwarding>,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut had_length = false;
    let mut cookies_written = false;
    for (name, value) in headers {
        if name == CONTENT_LENGTH {
            had_length = true;
            continue;
        }
        if name == COOKIE {
            if !cookies_written {
                cookies_written = true;
                out.extend_from_slice(b"cookie: ");
                for (i, v) in headers.get_all(COOKIE).iter().enumerate() {
                    if i > 0 {
                        out.extend_from_slice(b"; ");
                    }
                    out.extend_from_slice(v.as_bytes());
                }
                out.extend_from_slice(b"\r\n");
            }
            continue;
        }
        if name == TRANSFER_ENCODING
            || (forwarding.is_some() && Forwarding::replaces(name.as_str()))
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(f) = forwarding {
        f.write_lines(out);
    }
    match framing {
        RequestFraming::Empty => {
            // A method that normally carries a body says it has none, as does a request
            // whose client said so.
            if matches!(*method, Method::POST | Method::PUT | Method::PATCH) || had_length {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
        }
        RequestFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa(n, &mut [0; 20]));
            out.extend_from_slice(b"\r\n");
        }
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// `n` in decimal, in `buf`.
fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// How the response body that follows the head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body (HEAD, 204, 304).
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the target closes the connection.
    UntilClose,
}

/// A parsed response head.
pub struct ResponseHead {
    /// Status, version and fields.
    pub parts: response::Parts,
    /// Body delimitation.
    pub framing: ResponseFraming,
    /// The connection may carry another request after this response.
    pub keep_alive: bool,
}

/// Field names and where their values lie in a head; kept with a connection so that parsing
/// a head does not allocate it each time.
pub type FieldSpans = Vec<(HeaderName, std::ops::Range<usize>)>;

/// Parses one response head from the front of `buf`, removing it. `Ok(None)`: incomplete.
/// Interim (1xx) responses other than 101 are returned too; the caller skips them.
pub fn parse_response(
    buf: &mut BytesMut,
    fields: &mut FieldSpans,
    request: &Method,
) -> Result<Option<ResponseHead>, ExchangeError> {
    // Uninitialized slots: filling 128 empty headers (4 KiB) for every response would cost
    // more than parsing a short head.
    let mut raw = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut r = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut r, buf, &mut raw)
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(ExchangeError::InvalidHead("response head too large".into()))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(ExchangeError::InvalidHead(e.to_string())),
    };
    let code = r.code.unwrap_or(0);
    let status = StatusCode::from_u16(code)
        .map_err(|_| ExchangeError::InvalidHead(format!("status {code}")))?;
    let http10 = r.version == Some(0);
    // The field values share the head's bytes instead of being copied one by one.
    let base = buf.as_ptr() as usize;
    fields.clear();
    for h in r.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| ExchangeError::InvalidHead("field name".into()))?;
        let start = h.value.as_ptr() as usize - base;
        fields.push((name, start..start + h.value.len()));
    }
    let head: Bytes = buf.split_to(len).freeze();
    // Room also for what the gateway adds to the response (its request id, the rate-limit
    // headers, a transform's), so that adding them does not grow and rehash the map.
    let mut headers = HeaderMap::with_capacity(fields.len() + 8);
    for (name, range) in fields.drain(..) {
        let value = HeaderValue::from_maybe_shared(head.slice(range))
            .map_err(|_| ExchangeError::InvalidHead(format!("value of {name}")))?;
        headers.append(name, value);
    }
    if http10 && headers.contains_key(TRANSFER_ENCODING) {
        // RFC 9112 §6.1: its framing is faulty.
        return Err(ExchangeError::InvalidHead(
            "transfer-encoding in an HTTP/1.0 response".into(),
        ));
    }
    // An HTTP/1.0 target's connection is not reused even with `keep-alive`: it could not
    // read a chunked request on it.
    let mut keep_alive = !http10
        && !headers
            .get_all(CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
    let framing = framing(&mut headers, status, request, &mut keep_alive)?;
    let (mut parts, ()) = Response::new(()).into_parts();
    parts.status = status;
    parts.version = if http10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    parts.headers = headers;
    Ok(Some(ResponseHead {
        parts,
        framing,
        keep_alive,
    }))
}

/// RFC 9112 §6.3, in its order.
fn framing(
    headers: &mut HeaderMap,
    status: StatusCode,
    request: &Method,
    keep_alive: &mut bool,
) -> Result<ResponseFraming, ExchangeError> {
    if *request == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(ResponseFraming::None);
    }
    if headers.contains_key(TRANSFER_ENCODING) {
        // Transfer-Encoding overrides Content-Length; a message with both is suspect
        // (smuggling), so its connection is not reused, and the length is not passed on.
        if headers.remove(CONTENT_LENGTH).is_some() {
            *keep_alive = false;
        }
        // The last transfer coding decides how the body ends.
        let last = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .rfind(|c| !c.is_empty());
        return Ok(match last {
            Some(c) if c.eq_ignore_ascii_case(b"chunked") => ResponseFraming::Chunked,
            _ => {
                *keep_alive = false;
                ResponseFraming::UntilClose
            }
        });
    }
    let mut length: Option<u64> = None;
    for v in headers.get_all(CONTENT_LENGTH) {
        // A list of identical values is one value (RFC 9110 §8.6); anything else is invalid.
        for part in v.as_bytes().split(|b| *b == b',') {
            let part = part.trim_ascii();
            let n = std::str::from_utf8(part)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| ExchangeError::InvalidHead("content-length".into()))?;
            if length.is_some_and(|l| l != n) {
                return Err(ExchangeError::InvalidHead(
                    "conflicting content-length".into(),
                ));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(n) => ResponseFraming::Length(n),
        None => {
            *keep_alive = false;
            ResponseFraming::UntilClose
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, method: Method) -> Result<Option<ResponseHead>, ExchangeError> {
        parse_response(
            &mut BytesMut::from(text.as_bytes()),
            &mut Vec::new(),
            &method,
        )
    }

    fn framing_of(text: &str) -> (ResponseFraming, bool) {
        let h = parse(text, Method::GET).expect("valid").expect("complete");
        (h.framing, h.keep_alive)
    }

    #[test]
    fn request_head_carries_only_its_own_framing() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("a.test"));
        h.insert("content-length", HeaderValue::from_static("999"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        let mut out = Vec::new();
        encode_request(
            &Method::POST,
            "/x?y=1",
            &h,
            RequestFraming::Length(12),
            None,
            &mut out,
        );
        assert_eq!(
            out,
            b"POST /x?y=1 HTTP/1.1\r\nhost: a.test\r\ncontent-length: 12\r\n\r\n"
        );
        out.clear();
        encode_request(&Method::GET, "/", &h, RequestFraming::Empty, None, &mut out);
        assert_eq!(
            out, b"GET / HTTP/1.1\r\nhost: a.test\r\ncontent-length: 0\r\n\r\n",
            "the client gave a length: an empty body keeps one"
        );
        out.clear();
        let mut bare = HeaderMap::new();
        bare.insert("host", HeaderValue::from_static("a.test"));
        encode_request(
            &Method::GET,
            "/",
            &bare,
            RequestFraming::Empty,
            None,
            &mut out,
        );
        assert_eq!(out, b"GET / HTTP/1.1\r\nhost: a.test\r\n\r\n");
        out.clear();
        encode_request(
            &Method::PUT,
            "/",
            &h,
            RequestFraming::Chunked,
            None,
            &mut out,
        );
        assert_eq!(
            out,
            b"PUT / HTTP/1.1\r\nhost: a.test\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        out.clear();
        encode_request(
            &Method::POST,
            "/",
            &HeaderMap::new(),
            RequestFraming::Empty,
            None,
            &mut out,
        );
        assert_eq!(out, b"POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
    }

    #[test]
    fn split_cookies_go_on_one_line() {
        let mut h = HeaderMap::new();
        h.append("cookie", HeaderValue::from_static("a=1"));
        h.append("x-b", HeaderValue::from_static("2"));
        h.append("cookie", HeaderValue::from_static("b=2"));
        h.append("cookie", HeaderValue::from_static("c=3"));
        let mut out = Vec::new();
        encode_request(&Method::GET, "/", &h, RequestFraming::Empty, None, &mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "GET / HTTP/1.1\r\ncookie: a=1; b=2; c=3\r\nx-b: 2\r\n\r\n"
        );
    }

    #[test]
    fn forwarding_fields_take_the_place_of_the_clients() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("a.test"));
        h.insert("x-request-id", HeaderValue::from_static("forged"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        let id = HeaderValue::from_static("id-1");
        let f = Forwarding::new(
            &h,
            None,
            "192.0.2.1".parse().expect("ip"),
            false,
            "a.test",
            &id,
        );
        let mut out = Vec::new();
        encode_request(
            &Method::GET,
            "/",
            &h,
            RequestFraming::Empty,
            Some(&f),
            &mut out,
        );
        let text = String::from_utf8(out).expect("ascii");
        let names: Vec<&str> = text
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':').map(|(n, _)| n))
            .collect();
        assert_eq!(
            names,
            [
                "host",
                "accept",
                "x-forwarded-for",
                "forwarded",
                "traceparent",
                "x-forwarded-proto",
                "x-request-id",
                "x-forwarded-host"
            ],
            "{text}"
        );
        assert!(text.contains("\r\nx-request-id: id-1\r\n"), "{text}");
        assert!(text.contains("\r\nx-forwarded-proto: http\r\n"), "{text}");
        assert!(
            text.ends_with("\r\n\r\n") && !text.contains("forged"),
            "{text}"
        );
    }

    #[test]
    fn itoa_writes_decimal() {
        for n in [0u64, 7, 10, 12345, u64::MAX] {
            assert_eq!(itoa(n, &mut [0; 20]), n.to_string().as_bytes());
        }
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        use ResponseFraming::*;
        // (head, framing, connection reusable, why)
        let cases = [
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
                Length(5),
                true,
                "length",
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
                Length(5),
                true,
                "same values",
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, Chunked\r\n\r\n",
                Chunked,
                true,
                "chunked last",
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n",
                Chunked,
                false,
                "both: chunked wins and the connection is not reused",
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
                UntilClose,
                false,
                "not chunked last",
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", UntilClose, false, "no framing"),
            (
                "HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n",
                None,
                true,
                "204",
            ),
            ("HTTP/1.1 304 Not Modified\r\n\r\n", None, true, "304"),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 1\r\nconnection: close\r\n\r\n",
                Length(1),
                false,
                "close",
            ),
            (
                "HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n",
                Length(1),
                false,
                "HTTP/1.0",
            ),
            (
                "HTTP/1.0 200 OK\r\ncontent-length: 1\r\nConnection: Keep-Alive\r\n\r\n",
                Length(1),
                false,
                "an HTTP/1.0 target's connection is not reused",
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 1\r\nConnection: close, keep-alive\r\n\r\n",
                Length(1),
                false,
                "close wins",
            ),
        ];
        for (head, framing, reusable, why) in cases {
            assert_eq!(framing_of(head), (framing, reusable), "{why}");
        }
        let head = parse("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", Method::HEAD)
            .expect("valid")
            .expect("complete");
        assert_eq!(head.framing, None, "a HEAD response has no body");
        assert_eq!(
            head.parts.headers["content-length"], "5",
            "but keeps its length"
        );
    }

    #[test]
    fn bad_heads_are_refused() {
        for text in [
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999999\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nbad name: x\r\n\r\n",
            "HTTP/2 200 OK\r\n\r\n",
            "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            "garbage\r\n\r\n",
        ] {
            assert!(parse(text, Method::GET).is_err(), "{text:?}");
        }
        let mut big = String::from("HTTP/1.1 200 OK\r\n");
        while big.len() < MAX_HEAD {
            big.push_str("x-filler: 0123456789012345678901234567890123456789\r\n");
        }
        assert!(
            parse(&big, Method::GET).is_err(),
            "an endless head is cut off"
        );
        assert!(parse("HTTP/1.1 200 OK\r\ncontent-le", Method::GET)
            .expect("valid so far")
            .is_none());
    }

    #[test]
    fn the_head_is_removed_and_the_body_stays() {
        let mut buf =
            BytesMut::from(&b"HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 2\r\n\r\nhi"[..]);
        let head = parse_response(&mut buf, &mut Vec::new(), &Method::GET)
            .expect("valid")
            .expect("complete");
        assert_eq!(&buf[..], b"hi");
        assert_eq!(head.parts.headers["x-a"], "1");
        assert_eq!(head.parts.status, StatusCode::OK);
    }
}
