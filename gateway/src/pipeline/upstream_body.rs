//! An upstream's response body, held to the route's `timeouts.read_idle_ms` between
//! frames once the head has arrived (`request_ms` ends there). Without it an upstream that
//! sends a head and then nothing would hold the client's connection, the upstream
//! connection, the route's concurrency slots and any buffered transform's budget for good;
//! nginx's `proxy_read_timeout` and Envoy's stream idle timeout close the same gap.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use super::client_body::IdleTimer;
use crate::Body;
use bytes::Bytes;
use hyper::body::{Frame, SizeHint};

/// Why a response body was cut short.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent nothing of its response body within the route's read_idle_ms")]
pub struct UpstreamStalled;

/// `inner`, failing once it gives nothing for `idle`.
pub struct IdleBody {
    inner: Body,
    idle: IdleTimer,
}

impl IdleBody {
    /// Wraps `inner`.
    pub fn new(inner: Body, idle: Duration) -> Self {
        IdleBody {
            inner,
            idle: IdleTimer::new(idle),
        }
    }
}

impl hyper::body::Body for IdleBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if polled.is_pending() {
            if this.idle.expired(cx) {
                tracing::warn!(
                    idle_ms = this.idle.idle().as_millis() as u64,
                    "upstream response body stalled: cut short"
                );
                return Poll::Ready(Some(Err(Box::new(UpstreamStalled))));
            }
            return Poll::Pending;
        }
        this.idle.frame();
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A body that sends one frame, then nothing: the frame passes, then the wait ends in
    /// an error after `idle`, not before; one that ends is passed through as it is.
    #[tokio::test]
    async fn a_body_that_goes_quiet_is_cut_after_the_idle_time() {
        use futures_util::StreamExt;
        type Item = Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>;
        let frames = futures_util::stream::iter([Ok(Frame::data(Bytes::from_static(b"abc")))])
            .chain(futures_util::stream::pending::<Item>());
        let quiet = BodyExt::boxed(http_body_util::StreamBody::new(frames));
        let idle = Duration::from_millis(300);
        let mut body = IdleBody::new(quiet, idle);
        let first = body.frame().await.expect("a frame").expect("ok");
        assert_eq!(first.into_data().ok(), Some(Bytes::from_static(b"abc")));
        let started = std::time::Instant::now();
        let cut = body.frame().await.expect("an end").expect_err("cut");
        assert!(cut.is::<UpstreamStalled>(), "{cut}");
        let waited = started.elapsed();
        assert!(waited >= idle && waited < idle * 10, "{waited:?}");

        let whole = IdleBody::new(crate::full("done"), Duration::from_secs(5));
        let bytes = whole.collect().await.expect("whole").to_bytes();
        assert_eq!(bytes, Bytes::from_static(b"done"));
    }
}
