//! An upgraded connection (WebSocket) joined to its upstream: bytes go both ways until
//! either side closes or nothing moves for the listener's `stream_idle_timeout_ms`. The
//! tunnel holds the client connection's admission (see [`ConnHold`]), so
//! upgraded connections still count against the listener's connection limits.

use std::{
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};

use crate::clock::monotonic_ms;

/// What keeps a client connection's admission (its slot under `max_connections`): held by
/// the connection, and by the tunnel of a request that upgrades it, which outlives hyper's
/// part of the connection. Opaque here: the listener decides what it holds.
#[derive(Clone)]
pub struct ConnHold(pub std::sync::Arc<dyn Send + Sync>);

/// A stream that notes when it last read something.
struct Noted<S> {
    inner: S,
    last: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Noted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.last.store(monotonic_ms(), Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Noted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Joins `client` and `upstream`, `read_ahead` (what the upstream sent right after its 101)
/// going to the client first. Ends when either side closes, or with `TimedOut` once nothing
/// has moved either way for `idle`.
pub async fn join<C, U>(client: C, upstream: U, read_ahead: Bytes, idle: Duration) -> io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let last = Arc::new(AtomicU64::new(monotonic_ms()));
    let mut client = Noted {
        inner: client,
        last: last.clone(),
    };
    let mut upstream = Noted {
        inner: upstream,
        last: last.clone(),
    };
    client.inner.write_all(&read_ahead).await?;
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copy);
    let idle_ms = idle.as_millis() as u64;
    loop {
        let quiet_for = monotonic_ms().saturating_sub(last.load(Relaxed));
        if quiet_for >= idle_ms {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "nothing moved through the tunnel in time",
            ));
        }
        let wait = Duration::from_millis(idle_ms - quiet_for);
        tokio::select! {
            r = &mut copy => return r.map(|_| ()),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
