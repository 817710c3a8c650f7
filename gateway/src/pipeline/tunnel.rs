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
use hyper::{header::HeaderValue, Response};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};

use super::{
    error::ProxyError,
    facts::Held,
    headers::{clean_response, is_websocket, keep_upgrade},
};
use crate::{clock::monotonic_ms, upstream::exchange::Upgraded, Body};

/// What keeps a client connection's admission (its slot under `max_connections`): held by
/// the connection, and by the tunnel of a request that upgrades it, which outlives hyper's
/// part of the connection. Opaque here: the listener decides what it holds.
#[derive(Clone)]
pub struct ConnHold(pub Arc<dyn Send + Sync>);

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

/// What an upgraded connection's tunnel keeps for its life, and its idle limit.
pub struct Tunnel {
    /// The request's concurrency slots.
    pub held: Option<Arc<Held>>,
    /// The client connection's admission.
    pub hold: Option<ConnHold>,
    /// How long the tunnel may carry nothing.
    pub idle: Duration,
}

/// Answers 101 to the client and joins the two upgraded connections.
pub fn switch_protocols(
    resp: Response<Body>,
    upstream: Option<Upgraded>,
    client: Option<hyper::upgrade::OnUpgrade>,
    protocol: Option<HeaderValue>,
    tunnel: Tunnel,
) -> Response<Body> {
    let (Some(client), Some(protocol), Some(upstream)) = (client, protocol, upstream) else {
        return ProxyError::UnaskedSwitch.into_response();
    };
    // The switch must be to the protocol asked for, the only one forwarded (`upgrade_of`):
    // a tunnel of anything else would carry what the gateway never agreed to relay.
    let agreed = resp
        .headers()
        .get(hyper::header::UPGRADE)
        .is_some_and(is_websocket);
    if !agreed {
        return ProxyError::UnaskedSwitch.into_response();
    }
    let (mut rp, _) = resp.into_parts();
    clean_response(&mut rp.headers);
    keep_upgrade(&mut rp.headers, protocol);
    tokio::spawn(async move {
        // Concurrency slots and the connection's admission stay taken while the tunnel is
        // open.
        let _kept = (tunnel.held, tunnel.hold);
        match client.await {
            Ok(c) => {
                let c = hyper_util::rt::TokioIo::new(c);
                let Upgraded { stream, read_ahead } = upstream;
                if let Err(e) = join(c, stream, read_ahead, tunnel.idle).await {
                    tracing::debug!(error = %e, "upgraded connection ended");
                }
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
    Response::from_parts(rp, crate::full(Bytes::new()))
}
