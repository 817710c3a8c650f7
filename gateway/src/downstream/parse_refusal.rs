//! hyper answers a request head it cannot parse, or finds over the listener's limits, by
//! itself, before the gateway sees a request: a bare 400, 414, 431 or 505 with an empty
//! body, and the connection closes. Every other answer of the gateway is
//! `application/problem+json`, so the socket wrappers ([`crate::downstream::park::ParkIo`],
//! [`ProblemIo`]) put the gateway's own answer in its place on the way out.
//!
//! Only the first write on a hyper connection instance is looked at: a head hyper refuses
//! before anything else was written is answered first, while any later write may be part
//! of a response body (an upstream's body may hold any bytes) or of an HTTP/2 or upgraded
//! stream, and must pass untouched. That covers the first request of every connection,
//! and every request that starts a plain connection's instance again after it parked
//! ([`crate::downstream::park`]); a malformed head that follows other requests on the same
//! instance still gets hyper's own bare answer. Within that first write, hyper's answer is
//! told apart by what the gateway's never lacks: every answer the pipeline makes carries
//! `x-request-id`, and hyper's has none, no body, and a 4xx or 5xx status.

use std::{
    io,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::{Buf, Bytes};
use hyper::StatusCode;

/// A write interceptor: passes writes through, and replaces hyper's own refusal if it is
/// the first thing written.
#[derive(Default)]
pub struct Rewrite {
    /// The gateway's answer still to write, and the length of hyper's that it replaces
    /// (reported as written once the replacement is).
    pending: Option<(Bytes, usize)>,
    /// Something else was written: nothing more is looked at.
    passed: bool,
}

impl Rewrite {
    /// `poll_write` through `inner`, replacing `buf` if it is hyper's refusal.
    pub fn poll_write<W: hyper::rt::Write + ?Sized>(
        &mut self,
        inner: Pin<&mut W>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.pending.is_none() {
            match replacement(buf).filter(|_| !self.passed) {
                Some(answer) => self.pending = Some((answer, buf.len())),
                None => {
                    self.passed = true;
                    return inner.poll_write(cx, buf);
                }
            }
        }
        self.drain(inner, cx)
    }

    /// `poll_write_vectored` through `inner`, replacing the first slice if it is hyper's
    /// refusal.
    pub fn poll_write_vectored<W: hyper::rt::Write + ?Sized>(
        &mut self,
        inner: Pin<&mut W>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.pending.is_none() {
            let first = bufs.first().filter(|_| !self.passed);
            match first.and_then(|b| replacement(b).map(|answer| (answer, b.len()))) {
                Some(refusal) => self.pending = Some(refusal),
                None => {
                    self.passed = true;
                    return inner.poll_write_vectored(cx, bufs);
                }
            }
        }
        self.drain(inner, cx)
    }

    fn drain<W: hyper::rt::Write + ?Sized>(
        &mut self,
        mut inner: Pin<&mut W>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        let Some((answer, replaced)) = &mut self.pending else {
            return Poll::Ready(Ok(0));
        };
        while answer.has_remaining() {
            let n = ready!(inner.as_mut().poll_write(cx, answer))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            answer.advance(n);
        }
        let replaced = *replaced;
        self.pending = None;
        Poll::Ready(Ok(replaced))
    }
}

/// The status of `head` if it may be hyper's refusal: an HTTP/1.x head alone (it ends the
/// buffer) with a 4xx or 5xx status.
fn refused_status(head: &[u8]) -> Option<StatusCode> {
    let rest = head
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| head.strip_prefix(b"HTTP/1.0 "))?;
    let code = rest.get(..3)?;
    if !matches!(code[0], b'4' | b'5') || !head.ends_with(b"\r\n\r\n") {
        return None;
    }
    StatusCode::from_bytes(code).ok()
}

/// The gateway's answer in place of `head`, if `head` is hyper's own refusal.
pub fn replacement(head: &[u8]) -> Option<Bytes> {
    let status = refused_status(head)?;
    let has = |field: &[u8]| {
        head.windows(field.len())
            .any(|w| w.eq_ignore_ascii_case(field))
    };
    if has(b"\r\nx-request-id:") || !has(b"\r\ncontent-length: 0\r\n") {
        return None;
    }
    let detail = match status {
        StatusCode::URI_TOO_LONG => "the request target is too long",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => {
            "the request head has more or larger fields than this listener takes"
        }
        StatusCode::HTTP_VERSION_NOT_SUPPORTED => "the HTTP version is not supported",
        _ => "the request head is malformed",
    };
    let body = crate::pipeline::problem::problem_json(status, detail);
    let answer = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error"),
        body.len(),
    );
    Some(Bytes::from(answer))
}

/// A stream whose writes go through a [`Rewrite`] (the TLS connections'; plain ones are
/// [`crate::downstream::park::ParkIo`]).
pub struct ProblemIo<T> {
    inner: T,
    rewrite: Rewrite,
}

impl<T> ProblemIo<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            rewrite: Rewrite::default(),
        }
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for ProblemIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for ProblemIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.rewrite.poll_write(Pin::new(&mut this.inner), cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.rewrite
            .poll_write_vectored(Pin::new(&mut this.inner), cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_own_refusal_is_replaced() {
        let hyper_400 = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: Mon, 07 Dec 2026 02:00:00 GMT\r\n\r\n";
        let answer = replacement(hyper_400).expect("replaced");
        let text = std::str::from_utf8(&answer).expect("text");
        assert!(
            text.starts_with(
                "HTTP/1.1 400 Bad Request\r\ncontent-type: application/problem+json\r\n"
            ),
            "{text}"
        );
        let (head, body) = text.split_once("\r\n\r\n").expect("head");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(body).expect("JSON");
        assert_eq!(json["status"], 400);
        let hyper_431 =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";
        assert!(replacement(hyper_431).is_some());
        for kept in [
            // The pipeline's own answers carry a request id.
            &b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nx-request-id: ab\r\n\r\n"[..],
            b"HTTP/1.1 404 Not Found\r\nX-Request-Id: ab\r\ncontent-length: 0\r\n\r\n",
            // Not an error, not a head alone, or not empty.
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nx",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 10\r\n\r\n",
            b"garbage",
        ] {
            assert!(
                replacement(kept).is_none(),
                "{}",
                String::from_utf8_lossy(kept)
            );
        }
    }
}
