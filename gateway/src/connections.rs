//! Pooled HTTP/1.1 connections to one upstream target.
//!
//! hyper-util's pooled client serves any scheme and authority: every request hashes its
//! authority into a map of pools, builds a checkout future and rewrites its URI. The gateway
//! knows its targets in advance, so each target gets a plain stack of idle connections on
//! hyper's own connection API, and a request takes the most recently used one. (In a profile
//! of the plain proxy route, hyper-util's client was about a seventh of the gateway's own CPU
//! time.) HTTP/2 upstreams keep hyper-util's client, which multiplexes on one connection.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, Weak},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use hyper::{
    body::{Body as _, Frame, Incoming, SizeHint},
    client::conn::http1::{self, SendRequest},
    Request, Response,
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

use crate::Body;

/// Why a request could not be exchanged with the target.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be opened.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// Target.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// Opening a connection took longer than the route allows.
    #[error("connecting to {0} timed out")]
    ConnectTimeout(SocketAddr),
    /// The exchange failed on an open connection.
    #[error("exchange with {addr}: {source}")]
    Exchange {
        /// Target.
        addr: SocketAddr,
        /// Cause.
        source: hyper::Error,
    },
    /// Through hyper-util's client (HTTP/2 upstreams).
    #[error("{0}")]
    Http2(#[from] hyper_util::client::legacy::Error),
}

impl SendError {
    /// No connection could be opened, so nothing was sent: the request may go to another
    /// target.
    pub fn is_connect(&self) -> bool {
        match self {
            SendError::Connect { .. } | SendError::ConnectTimeout(_) => true,
            SendError::Exchange { .. } => false,
            SendError::Http2(e) => e.is_connect(),
        }
    }
}

/// Idle connections to one target, most recently used last.
pub struct Connections {
    addr: SocketAddr,
    connect_timeout: Duration,
    idle_timeout: Duration,
    idle: Mutex<Vec<IdleConn>>,
}

struct IdleConn {
    sender: SendRequest<Body>,
    /// Coarse monotonic ms.
    since: u64,
}

impl Connections {
    /// An empty pool; idle connections close after `idle_timeout`.
    pub fn new(addr: SocketAddr, connect_timeout: Duration, idle_timeout: Duration) -> Arc<Self> {
        let pool = Arc::new(Self {
            addr,
            connect_timeout,
            idle_timeout,
            idle: Mutex::new(Vec::new()),
        });
        // The reaper ends with the pool (a config generation's routes own their pools).
        let weak = Arc::downgrade(&pool);
        let every = (idle_timeout / 2).max(Duration::from_millis(100));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(reap(weak, every));
        }
        pool
    }

    /// Sends `req` (origin-form URI, `Host` set) on an idle connection or a new one. A
    /// request that found its pooled connection closed before it was sent goes on the next.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<Body>,
    ) -> Result<(Response<Incoming>, Checkin), SendError> {
        loop {
            // `checkout` hands out only connections ready for a request; a new one takes its
            // first request as soon as it is open.
            let (mut sender, reused) = match self.checkout() {
                Some(s) => (s, true),
                None => (self.connect().await?, false),
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let checkin = Checkin {
                        sender: Some(sender),
                        home: Arc::downgrade(self),
                    };
                    return Ok((resp, checkin));
                }
                Err(mut e) => match e.take_message() {
                    Some(back) if reused => req = back,
                    _ => {
                        return Err(SendError::Exchange {
                            addr: self.addr,
                            source: e.into_error(),
                        })
                    }
                },
            }
        }
    }

    fn checkout(&self) -> Option<SendRequest<Body>> {
        let now = crate::clock::monotonic_ms();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(c) = idle.pop() {
            if c.sender.is_ready() && now.saturating_sub(c.since) < self.idle_ms() {
                return Some(c.sender);
            }
        }
        None
    }

    fn checkin(self: Arc<Self>, mut sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        if !sender.is_ready() {
            // Still sending the request body (the target answered before reading it all), or
            // not caught up with the response's end: pooled once it can take a request, so
            // that no request waits behind another's upload.
            let (home, limit) = (Arc::downgrade(&self), self.idle_timeout);
            drop(self);
            tokio::spawn(async move {
                if let Ok(Ok(())) = tokio::time::timeout(limit, sender.ready()).await {
                    if let Some(home) = home.upgrade() {
                        home.push(sender);
                    }
                }
            });
            return;
        }
        self.push(sender);
    }

    fn push(&self, sender: SendRequest<Body>) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.push(IdleConn {
            sender,
            since: crate::clock::monotonic_ms(),
        });
    }

    /// Drops connections idle too long or closed by the target.
    fn prune(&self) {
        let now = crate::clock::monotonic_ms();
        let timeout = self.idle_ms();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|c| !c.sender.is_closed() && now.saturating_sub(c.since) < timeout);
    }

    fn idle_ms(&self) -> u64 {
        self.idle_timeout.as_millis() as u64
    }

    async fn connect(&self) -> Result<SendRequest<Body>, SendError> {
        let addr = self.addr;
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| SendError::ConnectTimeout(addr))?
            .map_err(|source| SendError::Connect { addr, source })?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| SendError::Exchange { addr, source })?;
        tokio::spawn(async move {
            // With upgrades: a 101 hands the connection to the WebSocket tunnel.
            if let Err(e) = conn.with_upgrades().await {
                debug!(%addr, error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
    }
}

async fn reap(pool: Weak<Connections>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match pool.upgrade() {
            Some(p) => p.prune(),
            None => return,
        }
    }
}

/// A connection lent to one exchange; it goes back to its pool only through
/// [`PooledBody`], once the response body has been read to its end.
pub struct Checkin {
    sender: Option<SendRequest<Body>>,
    home: Weak<Connections>,
}

impl Checkin {
    fn give_back(&mut self) {
        if let (Some(sender), Some(home)) = (self.sender.take(), self.home.upgrade()) {
            Connections::checkin(home, sender);
        }
    }
}

/// A response body that returns its connection to the pool when read to the end. Dropped
/// earlier, the connection is closed: what is left of the body cannot be skipped cheaply.
pub struct PooledBody {
    inner: Incoming,
    checkin: Checkin,
    ended: bool,
}

impl PooledBody {
    /// `inner` read over the connection `checkin` lent.
    pub fn new(inner: Incoming, checkin: Checkin) -> Self {
        Self {
            inner,
            checkin,
            ended: false,
        }
    }
}

impl hyper::body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        // The end: no more frames, or trailers (always the last frame).
        if let Poll::Ready(None) = &polled {
            self.ended = true;
        }
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            self.ended |= frame.is_trailers();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        if self.ended || self.inner.is_end_stream() {
            self.checkin.give_back();
        }
    }
}
