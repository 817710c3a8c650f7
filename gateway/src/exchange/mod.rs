//! One HTTP/1.1 exchange with an upstream target, driven inside the request's own task.
//!
//! hyper's client runs each connection in a task of its own and talks to it through channels:
//! a request crosses to that task, its response and every body chunk cross back. For a proxy
//! whose upstream answers in microseconds that hand-off was the largest part of the gateway's
//! own CPU time per request (see `ARCHITECTURE.md`). Here the request's task writes the head
//! (and streams the body), parses the response head with `httparse` (the parser hyper uses),
//! and the response body reads the socket directly as the client's connection pulls it.
//! HTTP/2 upstreams still go through hyper-util's client.

mod body;
pub mod head;

use std::{
    collections::VecDeque,
    io::{self, IoSlice},
    pin::Pin,
    sync::Weak,
    task::{ready, Context, Poll},
};

use bytes::{Buf, Bytes, BytesMut};
use hyper::{body::Body as _, Method, Response, StatusCode};
use tokio::net::TcpStream;

pub use body::ResponseBody;
use head::RequestFraming;

use crate::{connections::Connections, Body};

/// Read-buffer growth step.
const READ_CHUNK: usize = 8 * 1024;

/// Why an exchange failed on an open connection.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// Reading or writing the socket failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The target closed the connection before a whole response head.
    #[error("connection closed before a response")]
    Closed,
    /// The response head is not valid HTTP/1.x.
    #[error("invalid response head: {0}")]
    InvalidHead(String),
    /// The response body's framing is broken.
    #[error("invalid response body: {0}")]
    InvalidBody(&'static str),
    /// The client's request body failed, or did not match its declared length.
    #[error("request body: {0}")]
    RequestBody(Box<dyn std::error::Error + Send + Sync>),
}

/// A connection to a target with its read buffer; the buffer is empty between exchanges.
pub struct UpstreamConn {
    stream: TcpStream,
    buf: BytesMut,
    fields: head::FieldSpans,
}

impl UpstreamConn {
    /// A freshly opened connection.
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: BytesMut::new(),
            fields: Vec::new(),
        }
    }

    /// Whether an idle connection can take a request: it must have nothing to read. Data or
    /// end-of-stream on an idle connection means the target closed it (or broke framing).
    /// tokio answers from its readiness state, so a quiet socket costs no system call.
    pub fn is_reusable(&self) -> bool {
        self.buf.is_empty()
            && matches!(self.stream.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Reads what is available into the buffer; `Ok(0)` is end-of-stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        // Through `AsyncRead`: a short read clears tokio's readiness, so the idle check and
        // the next read cost no system call until epoll reports new data.
        tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.buf)
    }

    /// Drops a large read buffer before the connection idles in a pool.
    fn trim(&mut self) {
        if self.buf.capacity() > 8 * READ_CHUNK {
            self.buf = BytesMut::new();
        }
    }
}

/// The connection taken over by a protocol switch (101), with what the target already sent.
pub struct Upgraded {
    /// The connection.
    pub stream: TcpStream,
    /// Bytes read past the 101 head, to hand on first.
    pub read_ahead: Bytes,
}

/// What an exchange produced.
pub struct Answer {
    /// The response; its body reads the connection.
    pub response: Response<Body>,
    /// Set when the target switched protocols.
    pub upgraded: Option<Upgraded>,
}

/// A failed exchange, and whether it may be repeated on another connection.
pub struct Failed {
    /// Cause.
    pub error: ExchangeError,
    /// Nothing came back: a reused connection the target had already closed.
    pub stale: bool,
}

/// A request ready for the wire: its head once encoded (sent again as it is), and its body.
pub struct Outgoing<'a> {
    /// Method (decides whether the response has a body).
    pub method: &'a Method,
    /// Encoded head.
    pub head: &'a [u8],
    /// Body, when the framing is not [`RequestFraming::Empty`].
    pub body: Option<Body>,
    /// How the body is framed.
    pub framing: RequestFraming,
}

/// Sends `req` on `conn` and reads the response head. The response body hands `conn` back
/// to `home` once it has been read to its end, if the connection can be reused.
pub async fn exchange(
    conn: UpstreamConn,
    req: Outgoing<'_>,
    home: Weak<Connections>,
) -> Result<Answer, Failed> {
    let mut ex = Exchange {
        conn: Some(conn),
        head: req.head,
        out: VecDeque::new(),
        body: req.body,
        framing: req.framing,
        left: match req.framing {
            RequestFraming::Length(n) => n,
            _ => 0,
        },
        sent: false,
        write_error: None,
        received: false,
    };
    let head = std::future::poll_fn(|cx| ex.poll_head(cx, req.method)).await?;
    let Some(mut conn) = ex.conn.take() else {
        return Err(Failed {
            error: ExchangeError::Closed,
            stale: false,
        });
    };
    if head.parts.status == StatusCode::SWITCHING_PROTOCOLS {
        let read_ahead = conn.buf.split().freeze();
        return Ok(Answer {
            response: Response::from_parts(head.parts, crate::problem::full(Bytes::new())),
            upgraded: Some(Upgraded {
                stream: conn.stream,
                read_ahead,
            }),
        });
    }
    // A target that answered before the whole request was sent gets no further requests on
    // this connection: the rest of the upload is abandoned.
    let keep_alive = head.keep_alive && ex.sent;
    let body = ResponseBody::new(conn, head.framing, keep_alive, home);
    Ok(Answer {
        response: Response::from_parts(head.parts, http_body_util::BodyExt::boxed(body)),
        upgraded: None,
    })
}

struct Exchange<'a> {
    conn: Option<UpstreamConn>,
    /// What is left to write of the head, then of the body.
    head: &'a [u8],
    out: VecDeque<Bytes>,
    body: Option<Body>,
    framing: RequestFraming,
    /// Bytes the declared `Content-Length` still expects.
    left: u64,
    /// The whole request is written.
    sent: bool,
    /// Writing failed; the response may still be read (a target may answer and close).
    write_error: Option<ExchangeError>,
    /// Some response bytes arrived.
    received: bool,
}

impl Exchange<'_> {
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        method: &Method,
    ) -> Poll<Result<head::ResponseHead, Failed>> {
        if !self.sent && self.write_error.is_none() {
            match self.poll_send(cx) {
                Poll::Ready(Ok(())) => self.sent = true,
                Poll::Ready(Err(e @ ExchangeError::RequestBody(_))) => {
                    return Poll::Ready(Err(Failed {
                        error: e,
                        stale: false,
                    }))
                }
                Poll::Ready(Err(e)) => self.write_error = Some(e),
                Poll::Pending => {}
            }
        }
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Err(Failed {
                error: ExchangeError::Closed,
                stale: false,
            }));
        };
        loop {
            match head::parse_response(&mut conn.buf, &mut conn.fields, method) {
                // Interim responses (100 Continue, 103 Early Hints) are not passed on.
                Ok(Some(h))
                    if h.parts.status.is_informational()
                        && h.parts.status != StatusCode::SWITCHING_PROTOCOLS =>
                {
                    continue
                }
                Ok(Some(h)) => return Poll::Ready(Ok(h)),
                Ok(None) => {}
                Err(error) => {
                    return Poll::Ready(Err(Failed {
                        error,
                        stale: false,
                    }))
                }
            }
            match conn.poll_fill(cx) {
                Poll::Pending => {
                    return match self.write_error.take() {
                        // Nothing to read yet and nothing more can be written.
                        Some(error) => Poll::Ready(Err(Failed {
                            stale: !self.received && stale_io(&error),
                            error,
                        })),
                        None => Poll::Pending,
                    };
                }
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(Failed {
                        error: self.write_error.take().unwrap_or(ExchangeError::Closed),
                        stale: !self.received,
                    }))
                }
                Poll::Ready(Ok(_)) => self.received = true,
                Poll::Ready(Err(e)) => {
                    let error = ExchangeError::Io(e);
                    return Poll::Ready(Err(Failed {
                        stale: !self.received && stale_io(&error),
                        error,
                    }));
                }
            }
        }
    }

    /// Writes the head and the body; ready once all of it is written.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ExchangeError>> {
        loop {
            if !self.head.is_empty() || !self.out.is_empty() {
                let Some(conn) = self.conn.as_mut() else {
                    return Poll::Ready(Err(ExchangeError::Closed));
                };
                let mut slices = [IoSlice::new(&[]); 4];
                let parts = std::iter::once(self.head)
                    .filter(|h| !h.is_empty())
                    .chain(self.out.iter().map(|b| &b[..]));
                let mut n = 0;
                for (s, b) in slices.iter_mut().zip(parts) {
                    *s = IoSlice::new(b);
                    n += 1;
                }
                match conn.stream.try_write_vectored(&slices[..n]) {
                    Ok(written) => {
                        let from_head = written.min(self.head.len());
                        self.head = &self.head[from_head..];
                        advance(&mut self.out, written - from_head);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        ready!(conn.stream.poll_write_ready(cx))?
                    }
                    Err(e) => return Poll::Ready(Err(e.into())),
                }
                continue;
            }
            let Some(body) = self.body.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            match ready!(Pin::new(body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) => self.push_data(data)?,
                    // Trailers go out with the last chunk; a length-framed body drops them.
                    Err(frame) => {
                        if let (Ok(trailers), RequestFraming::Chunked) =
                            (frame.into_trailers(), self.framing)
                        {
                            self.finish_chunked(Some(&trailers));
                            self.body = None;
                        }
                    }
                },
                None => {
                    match self.framing {
                        RequestFraming::Chunked => self.finish_chunked(None),
                        RequestFraming::Length(_) if self.left != 0 => {
                            return Poll::Ready(Err(ExchangeError::RequestBody(
                                "ended before its content-length".into(),
                            )))
                        }
                        _ => {}
                    }
                    self.body = None;
                }
                Some(Err(e)) => return Poll::Ready(Err(ExchangeError::RequestBody(e))),
            }
        }
    }

    fn push_data(&mut self, data: Bytes) -> Result<(), ExchangeError> {
        match self.framing {
            RequestFraming::Chunked => {
                self.out
                    .push_back(Bytes::from(format!("{:x}\r\n", data.len())));
                self.out.push_back(data);
                self.out.push_back(Bytes::from_static(b"\r\n"));
            }
            _ => {
                let n = data.len() as u64;
                if n > self.left {
                    return Err(ExchangeError::RequestBody(
                        "longer than its content-length".into(),
                    ));
                }
                self.left -= n;
                self.out.push_back(data);
            }
        }
        Ok(())
    }

    fn finish_chunked(&mut self, trailers: Option<&hyper::HeaderMap>) {
        let mut end = b"0\r\n".to_vec();
        for (name, value) in trailers.into_iter().flatten() {
            end.extend_from_slice(name.as_str().as_bytes());
            end.extend_from_slice(b": ");
            end.extend_from_slice(value.as_bytes());
            end.extend_from_slice(b"\r\n");
        }
        end.extend_from_slice(b"\r\n");
        self.out.push_back(Bytes::from(end));
    }
}

/// Drops `n` written bytes from the front of `out`.
fn advance(out: &mut VecDeque<Bytes>, mut n: usize) {
    while n > 0 {
        let Some(front) = out.front_mut() else { return };
        if n >= front.len() {
            n -= front.len();
            out.pop_front();
        } else {
            front.advance(n);
            n = 0;
        }
    }
    while out.front().is_some_and(Bytes::is_empty) {
        out.pop_front();
    }
}

/// Errors that mean the target had closed the connection before this request reached it.
fn stale_io(e: &ExchangeError) -> bool {
    match e {
        ExchangeError::Closed => true,
        ExchangeError::Io(e) => matches!(
            e.kind(),
            io::ErrorKind::BrokenPipe
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_walks_across_buffers() {
        let mut out: VecDeque<Bytes> = [&b"ab"[..], b"cde", b"f"]
            .into_iter()
            .map(Bytes::from_static)
            .collect();
        advance(&mut out, 3);
        assert_eq!(out, [Bytes::from_static(b"de"), Bytes::from_static(b"f")]);
        advance(&mut out, 2);
        assert_eq!(out, [Bytes::from_static(b"f")]);
        advance(&mut out, 1);
        assert!(out.is_empty());
    }
}
