//! The request on its way to the target: the rest of its head, then its body, framed by
//! length or chunked. A target may answer before the body is all there (a full-duplex
//! service streams its answer while it reads), so the response body keeps the upload going.

use std::{
    collections::VecDeque,
    io::{self, IoSlice},
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::{Buf, Bytes};
use hyper::body::Body as _;
use tokio::net::TcpStream;

use super::{head::RequestFraming, ExchangeError};
use crate::Body;

/// A request body being written.
pub(crate) struct Upload {
    body: Option<Body>,
    /// Encoded bytes not yet written, in order.
    out: VecDeque<Bytes>,
    framing: RequestFraming,
    /// Bytes the declared `Content-Length` still expects.
    left: u64,
}

impl Upload {
    /// `body` framed by `framing`; `first` is a chunk already taken from it.
    pub(crate) fn new(body: Option<Body>, first: Option<Bytes>, framing: RequestFraming) -> Self {
        let mut up = Self {
            body,
            out: VecDeque::new(),
            framing,
            left: match framing {
                RequestFraming::Length(n) => n,
                _ => 0,
            },
        };
        if let Some(first) = first {
            // A chunked body's first chunk is never too long.
            let _ = up.push_data(first);
        }
        up
    }

    /// The whole body is written.
    pub(crate) fn is_done(&self) -> bool {
        self.body.is_none() && self.out.is_empty()
    }

    /// Writes what is left of `head`, then the body; ready once all of it is written.
    pub(crate) fn poll_write(
        &mut self,
        stream: &TcpStream,
        head: &mut &[u8],
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), ExchangeError>> {
        loop {
            if !head.is_empty() || !self.out.is_empty() {
                let mut slices = [IoSlice::new(&[]); 4];
                let parts = std::iter::once(*head)
                    .filter(|h| !h.is_empty())
                    .chain(self.out.iter().map(|b| &b[..]));
                let mut n = 0;
                for (s, b) in slices.iter_mut().zip(parts) {
                    *s = IoSlice::new(b);
                    n += 1;
                }
                match stream.try_write_vectored(&slices[..n]) {
                    Ok(0) => {
                        return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()))
                    }
                    Ok(written) => {
                        let from_head = written.min(head.len());
                        *head = &head[from_head..];
                        advance(&mut self.out, written - from_head);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        ready!(stream.poll_write_ready(cx))?
                    }
                    Err(e) => return Poll::Ready(Err(e.into())),
                }
                continue;
            }
            let Some(body) = self.body.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            match ready!(Pin::new(body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    // Request trailers are not passed on (as with hyper's client): the
                    // gateway strips `Trailer`, and a trailer could smuggle a field the
                    // policies set, such as the consumer's identity, to a target that merges
                    // trailers into the head.
                    if let Ok(data) = frame.into_data() {
                        self.push_data(data)?;
                    }
                }
                None => {
                    match self.framing {
                        RequestFraming::Chunked => {
                            self.out.push_back(Bytes::from_static(b"0\r\n\r\n"))
                        }
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
        if data.is_empty() {
            // An empty chunk would read as the last one.
            return Ok(());
        }
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
                if self.left == 0 {
                    // All the declared bytes: done, without waiting for the stream's end.
                    self.body = None;
                }
            }
        }
        Ok(())
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

#[cfg(test)]
mod wire_tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use hyper::body::Frame;
    use tokio::io::AsyncReadExt as _;

    /// A body that yields the given frames.
    struct Frames(VecDeque<Frame<Bytes>>);

    impl hyper::body::Body for Frames {
        type Data = Bytes;
        type Error = Box<dyn std::error::Error + Send + Sync>;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    /// What the target receives for `frames` sent with `framing` after `head`.
    async fn wire(framing: RequestFraming, frames: Vec<Frame<Bytes>>) -> Result<Vec<u8>, String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let client = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let (mut target, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let body = Frames(frames.into()).boxed();
        let mut up = Upload::new(Some(body), None, framing);
        let mut head: &[u8] = b"HEAD\r\n\r\n";
        std::future::poll_fn(|cx| up.poll_write(&client, &mut head, cx))
            .await
            .map_err(|e| e.to_string())?;
        assert!(up.is_done());
        drop(client);
        let mut got = Vec::new();
        target
            .read_to_end(&mut got)
            .await
            .map_err(|e| e.to_string())?;
        Ok(got)
    }

    #[tokio::test]
    async fn a_chunked_upload_ends_without_the_clients_trailers() {
        let mut trailers = hyper::HeaderMap::new();
        trailers.insert(
            "x-consumer-id",
            hyper::header::HeaderValue::from_static("admin"),
        );
        let got = wire(
            RequestFraming::Chunked,
            vec![
                Frame::data(Bytes::from_static(b"hello")),
                Frame::data(Bytes::from_static(b"")),
                Frame::data(Bytes::from_static(b", world!")),
                Frame::trailers(trailers),
            ],
        )
        .await
        .expect("sent");
        assert_eq!(got, b"HEAD\r\n\r\n5\r\nhello\r\n8\r\n, world!\r\n0\r\n\r\n");
    }

    #[tokio::test]
    async fn a_length_framed_upload_is_sent_as_it_is_and_held_to_its_length() {
        let got = wire(
            RequestFraming::Length(7),
            vec![
                Frame::data(Bytes::from_static(b"abc")),
                Frame::data(Bytes::from_static(b"defg")),
            ],
        )
        .await
        .expect("sent");
        assert_eq!(got, b"HEAD\r\n\r\nabcdefg");
        let long = wire(
            RequestFraming::Length(2),
            vec![Frame::data(Bytes::from_static(b"abc"))],
        )
        .await;
        assert!(long.is_err_and(|e| e.contains("longer than")));
        let short = wire(
            RequestFraming::Length(9),
            vec![Frame::data(Bytes::from_static(b"abc"))],
        )
        .await;
        assert!(short.is_err_and(|e| e.contains("ended before")));
    }
}
