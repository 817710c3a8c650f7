//! The response body, read from the upstream connection as the client's side pulls it, and
//! the connection's return to its pool once the body has ended.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf, Bytes, BytesMut};
use hyper::{
    body::{Frame, SizeHint},
    header::{HeaderName, HeaderValue},
    HeaderMap,
};

use super::{head::ResponseFraming, upload::Upload, ExchangeError, Lease};

/// The longest chunk-size line accepted (chunk extensions included).
const MAX_CHUNK_LINE: usize = 1024;
/// The most trailer fields accepted.
const MAX_TRAILERS: usize = 64;

/// Where a body decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decode {
    /// `Content-Length` bytes still to come.
    Length(u64),
    /// Everything until the target closes.
    UntilClose,
    /// Expecting a chunk-size line.
    ChunkSize,
    /// Bytes of the current chunk still to come.
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    /// The trailer section after the last chunk.
    Trailers,
    /// The body has ended.
    Done,
}

/// One step of decoding.
#[derive(Debug)]
pub(crate) enum Progress {
    /// A frame to pass on.
    Frame(Frame<Bytes>),
    /// More bytes are needed.
    More,
    /// The body ended.
    Done,
}

impl Decode {
    pub(crate) fn new(framing: ResponseFraming) -> Self {
        match framing {
            ResponseFraming::None | ResponseFraming::Length(0) => Decode::Done,
            ResponseFraming::Length(n) => Decode::Length(n),
            ResponseFraming::Chunked => Decode::ChunkSize,
            ResponseFraming::UntilClose => Decode::UntilClose,
        }
    }

    /// Decodes what it can from the front of `buf`.
    pub(crate) fn step(&mut self, buf: &mut BytesMut) -> Result<Progress, ExchangeError> {
        loop {
            match *self {
                Decode::Done => return Ok(Progress::Done),
                // A length-framed body and a chunk's data are taken the same way; only what
                // follows their last byte differs.
                Decode::Length(left) | Decode::ChunkData(left) => {
                    if buf.is_empty() {
                        return Ok(Progress::More);
                    }
                    let n = (buf.len() as u64).min(left);
                    *self = match (*self, left - n) {
                        (Decode::Length(_), 0) => Decode::Done,
                        (Decode::Length(_), rest) => Decode::Length(rest),
                        (_, 0) => Decode::ChunkEnd,
                        (_, rest) => Decode::ChunkData(rest),
                    };
                    return Ok(Progress::Frame(Frame::data(
                        buf.split_to(n as usize).freeze(),
                    )));
                }
                Decode::UntilClose => {
                    if buf.is_empty() {
                        return Ok(Progress::More);
                    }
                    return Ok(Progress::Frame(Frame::data(buf.split().freeze())));
                }
                Decode::ChunkSize => {
                    let Some(end) = find_crlf(buf, MAX_CHUNK_LINE) else {
                        // Too long only once the bytes show it: a CR at the end may yet be
                        // the line's end (a line that arrived whole was taken).
                        if buf.len() - open_end(buf, b"\r\n") >= MAX_CHUNK_LINE {
                            return Err(ExchangeError::InvalidBody("chunk-size line too long"));
                        }
                        return Ok(Progress::More);
                    };
                    let size = chunk_size(&buf[..end])?;
                    buf.advance(end + 2);
                    *self = if size == 0 {
                        Decode::Trailers
                    } else {
                        Decode::ChunkData(size)
                    };
                }
                Decode::ChunkEnd => {
                    if buf.len() < 2 {
                        return Ok(Progress::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ExchangeError::InvalidBody("no CRLF after chunk data"));
                    }
                    buf.advance(2);
                    *self = Decode::ChunkSize;
                }
                Decode::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        *self = Decode::Done;
                        continue;
                    }
                    let limit = super::head::MAX_HEAD;
                    let Some(end) = buf.windows(4).take(limit).position(|w| w == b"\r\n\r\n")
                    else {
                        // As for the chunk-size line: too large once no end can still
                        // begin within the limit.
                        if buf.len() - open_end(buf, b"\r\n\r\n") >= limit {
                            return Err(ExchangeError::InvalidBody("trailers too large"));
                        }
                        return Ok(Progress::More);
                    };
                    let trailers = trailers(&buf[..end + 4])?;
                    buf.advance(end + 4);
                    *self = Decode::Done;
                    return Ok(Progress::Frame(Frame::trailers(trailers)));
                }
            }
        }
    }

    /// The exact number of bytes left, when known.
    fn exact(&self) -> Option<u64> {
        match self {
            Decode::Done => Some(0),
            Decode::Length(n) => Some(*n),
            _ => None,
        }
    }
}

/// How many of `buf`'s last bytes could begin `end` (a proper prefix of it).
fn open_end(buf: &[u8], end: &[u8]) -> usize {
    (1..end.len())
        .rev()
        .find(|n| buf.ends_with(&end[..*n]))
        .unwrap_or(0)
}

fn find_crlf(buf: &[u8], limit: usize) -> Option<usize> {
    buf.windows(2).take(limit).position(|w| w == b"\r\n")
}

/// `1*HEXDIG [ BWS ";" chunk-ext ]` (RFC 9112 §7.1); the extension may hold no control
/// bytes but tab (no bare CR or LF, which other parsers might read as a line end).
fn chunk_size(line: &[u8]) -> Result<u64, ExchangeError> {
    let bad = || ExchangeError::InvalidBody("chunk size");
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(bad());
    }
    let rest = &line[digits..];
    let rest = &rest[rest
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t'))
        .count()..];
    if !rest.is_empty() && rest[0] != b';' {
        return Err(bad());
    }
    if rest.iter().any(|b| b.is_ascii_control() && *b != b'\t') {
        return Err(bad());
    }
    let mut size = 0u64;
    for b in &line[..digits] {
        // Sixteen hex digits fit in a u64.
        size = size << 4 | u64::from((*b as char).to_digit(16).unwrap_or(0));
    }
    Ok(size)
}

fn trailers(block: &[u8]) -> Result<HeaderMap, ExchangeError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILERS];
    let bad = || ExchangeError::InvalidBody("trailer fields");
    let parsed = match httparse::parse_headers(block, &mut fields) {
        Ok(httparse::Status::Complete((_, parsed))) => parsed,
        _ => return Err(bad()),
    };
    let mut map = HeaderMap::with_capacity(parsed.len());
    for f in parsed {
        let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| bad())?;
        let value = HeaderValue::from_bytes(f.value).map_err(|_| bad())?;
        map.append(name, value);
    }
    Ok(map)
}

/// A response body read straight from its upstream connection, which also finishes sending
/// the request body if the target answered before it had all of it.
pub struct ResponseBody<C> {
    conn: Option<C>,
    decode: Decode,
    keep_alive: bool,
    upload: Option<Upload>,
}

impl<C: Lease> ResponseBody<C> {
    /// The body that follows a response head read on `conn`.
    pub(crate) fn new(
        conn: C,
        framing: ResponseFraming,
        keep_alive: bool,
        upload: Option<Upload>,
    ) -> Self {
        let mut body = Self {
            conn: Some(conn),
            decode: Decode::new(framing),
            keep_alive,
            upload,
        };
        if body.decode == Decode::Done {
            body.finish();
        }
        body
    }

    /// The body ended: the connection is marked clean if it can carry another request, and
    /// let go (its lender decides what becomes of it). Bytes after the body's end mean the
    /// target broke framing, and a request body not yet all sent is abandoned: either way
    /// the connection stays unclean and closes.
    fn finish(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if self.keep_alive && self.upload.is_none() && conn.buf.is_empty() {
            conn.trim();
            conn.clean = true;
        }
    }
}

impl<C: Lease> hyper::body::Body for ResponseBody<C> {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let (Some(up), Some(conn)) = (this.upload.as_mut(), this.conn.as_ref()) {
            match up.poll_write(&conn.stream, &mut &[][..], cx) {
                Poll::Ready(Ok(())) => this.upload = None,
                Poll::Ready(Err(e)) => {
                    // The response goes on; the connection will not be reused.
                    tracing::debug!(error = %e, "request body not sent whole");
                    this.upload = None;
                    this.keep_alive = false;
                }
                Poll::Pending => {}
            }
        }
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.decode.step(&mut conn.buf) {
                Ok(Progress::Frame(f)) => {
                    if this.decode == Decode::Done {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(f)));
                }
                Ok(Progress::Done) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Progress::More) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
            match std::task::ready!(conn.poll_fill(cx)) {
                Ok(0) if this.decode == Decode::UntilClose => {
                    this.decode = Decode::Done;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(ExchangeError::InvalidBody(
                        "connection closed before the body's end",
                    )
                    .into())));
                }
                Ok(_) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(ExchangeError::Io(e).into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decode == Decode::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.decode.exact() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// What decoding a body produced.
    struct Decoded {
        data: Vec<u8>,
        trailers: Option<HeaderMap>,
        /// Bytes after the body.
        left: Vec<u8>,
        done: bool,
    }

    /// Decodes a body fed in the given pieces.
    fn decode_in_pieces(
        framing: ResponseFraming,
        pieces: &[&[u8]],
    ) -> Result<Decoded, ExchangeError> {
        let mut d = Decode::new(framing);
        let mut buf = BytesMut::new();
        let (mut data, mut trailers) = (Vec::new(), None);
        for piece in pieces {
            buf.extend_from_slice(piece);
            while let Progress::Frame(f) = d.step(&mut buf)? {
                match f.into_data() {
                    Ok(b) => data.extend_from_slice(&b),
                    Err(f) => trailers = f.into_trailers().ok(),
                }
            }
        }
        Ok(Decoded {
            data,
            trailers,
            left: buf.to_vec(),
            done: d == Decode::Done,
        })
    }

    fn chunked(body: &[u8], sizes: &mut impl Iterator<Item = usize>) -> Vec<u8> {
        let mut wire = Vec::new();
        let mut rest = body;
        while !rest.is_empty() {
            let n = sizes.next().unwrap_or(1).clamp(1, rest.len());
            wire.extend_from_slice(format!("{n:X};ext=1\r\n").as_bytes());
            wire.extend_from_slice(&rest[..n]);
            wire.extend_from_slice(b"\r\n");
            rest = &rest[n..];
        }
        wire.extend_from_slice(b"0\r\nx-sum: 7\r\n\r\n");
        wire
    }

    /// Random bodies, chunked at random and fed in random pieces, decode to themselves
    /// (the reference is the body itself), with the trailer, and stop exactly at the end.
    #[test]
    fn chunked_bodies_decode_however_they_are_split() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..500 {
            let len = rng.gen_range(0..3000);
            let body: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            let mut sizes = std::iter::repeat_with(|| rng.gen_range(1..700)).take(100);
            let mut wire = chunked(&body, &mut sizes);
            wire.extend_from_slice(b"NEXT");
            let mut pieces = Vec::new();
            let mut at = 0;
            while at < wire.len() {
                let n = rng.gen_range(1..=64).min(wire.len() - at);
                pieces.push(&wire[at..at + n]);
                at += n;
            }
            let d = decode_in_pieces(ResponseFraming::Chunked, &pieces).expect("valid");
            assert_eq!(d.data, body);
            assert!(d.done);
            assert_eq!(d.left, b"NEXT", "the decoder stops at the body's end");
            assert_eq!(d.trailers.expect("trailers")["x-sum"], "7");
        }
    }

    #[test]
    fn length_bodies_stop_at_their_length() {
        let d =
            decode_in_pieces(ResponseFraming::Length(5), &[b"he", b"llo", b"extra"]).expect("ok");
        assert_eq!(
            (&d.data[..], &d.left[..], d.done),
            (&b"hello"[..], &b"extra"[..], true)
        );
        let d = decode_in_pieces(ResponseFraming::UntilClose, &[b"a", b"b"]).expect("ok");
        assert_eq!((&d.data[..], d.done), (&b"ab"[..], false));
    }

    /// A chunk-size line and a trailer section at their limits are taken however they
    /// arrive: split just before the LF of their last CRLF, they used to be refused as too
    /// long (the chunked_body fuzz target's reference decoder found the first:
    /// `fuzz/regressions/chunked_body/`).
    #[test]
    fn lines_at_the_limit_are_taken_however_split() {
        let mut line = b"5;".to_vec();
        line.resize(MAX_CHUNK_LINE - 1, b'a');
        let mut trailer = b"x-a: ".to_vec();
        trailer.resize(super::super::head::MAX_HEAD - 1, b'b');
        for (head, tail) in [
            (
                [&line[..], b"\r"].concat(),
                b"\nhello\r\n0\r\n\r\n".to_vec(),
            ),
            (
                [&b"5\r\nhello\r\n0\r\n"[..], &trailer, b"\r\n\r"].concat(),
                b"\n".to_vec(),
            ),
        ] {
            let whole = decode_in_pieces(ResponseFraming::Chunked, &[&[&head[..], &tail].concat()])
                .expect("taken whole");
            let split =
                decode_in_pieces(ResponseFraming::Chunked, &[&head, &tail]).expect("taken split");
            assert!(whole.done && split.done);
            assert_eq!(
                (whole.data, split.data),
                (b"hello".to_vec(), b"hello".to_vec())
            );
        }
        // One byte more is too long, however it arrives.
        line.push(b'a');
        let wire = [&line[..], b"\r\n5\r\nhello\r\n0\r\n\r\n"].concat();
        assert!(decode_in_pieces(ResponseFraming::Chunked, &[&wire]).is_err());
        assert!(decode_in_pieces(ResponseFraming::Chunked, &[&line, b"\r", b"\n"]).is_err());
    }

    #[test]
    fn broken_chunked_bodies_are_refused() {
        for wire in [
            &b"zz\r\n"[..],
            b"5 x\r\nhello\r\n",
            b"11111111111111111\r\n",
            b"5\r\nhelloXX",
            b"0\r\nbad field\r\n\r\n",
            b"5\n\r\nhello\r\n",
            b"5\r\r\nhello\r\n",
            b"5;a\nb\r\nhello\r\n",
            b"5\x0c\r\nhello\r\n",
        ] {
            assert!(
                decode_in_pieces(ResponseFraming::Chunked, &[wire]).is_err(),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
        let long = vec![b'1'; MAX_CHUNK_LINE + 1];
        assert!(decode_in_pieces(ResponseFraming::Chunked, &[&long]).is_err());
        let long = vec![b'1'; MAX_CHUNK_LINE];
        assert!(decode_in_pieces(ResponseFraming::Chunked, &[&long]).is_err());
        assert_eq!(chunk_size(b"fF ; a=b").expect("ext"), 255);
        assert_eq!(chunk_size(b"ffffffffffffffff").expect("max"), u64::MAX);
    }
}
