//! Pooled HTTP/1.1 connections to one upstream target.
//!
//! Each target gets a plain stack of idle connections per worker, and a request takes the
//! most recently used one of its worker's, as a [`Pooled`] guard. The exchange itself runs in the request's task
//! ([`super::exchange`], a plain HTTP/1 client that knows nothing of pools); the guard goes
//! with the response body and, when dropped, puts the connection back if the exchange left
//! it clean (hyper-util's `Pooled<T>` works the same way).

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, Weak},
    task::Poll,
    time::Duration,
};

use hyper::{body::Body as _, Request};
use tokio::net::TcpStream;

use crate::{
    upstream::exchange::{
        self,
        head::{encode_request, RequestFraming},
        Answer, Connection, ExchangeError, Lease, Outgoing,
    },
    upstream::forwarding::Forwarding,
    Body,
};

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
        source: ExchangeError,
    },
    /// On an HTTP/2 upstream's connection.
    #[error("{0}")]
    Http2(#[source] hyper::Error),
    /// The route's client has no connections for this target (pools and clients are built
    /// from the same target list, so this means a bug, not a network fault).
    #[error("no connection pool for target {0}")]
    NoPool(SocketAddr),
}

impl SendError {
    /// No connection could be opened, so nothing was sent: the request may go to another
    /// target.
    pub fn is_connect(&self) -> bool {
        match self {
            SendError::Connect { .. } | SendError::ConnectTimeout(_) => true,
            SendError::Exchange { .. } | SendError::NoPool(_) | SendError::Http2(_) => false,
        }
    }

    /// The connection failed on this host (out of descriptors, buffers or memory): nothing
    /// the target did, so outlier detection does not count it against the target.
    pub fn is_local(&self) -> bool {
        matches!(self, SendError::Connect { source, .. } if sluice_util::probe::is_local_shortage(source))
    }
}

/// Idle connections to one target, most recently used last, in one stack per
/// [`crate::worker`] shard: a connection is reused only by the worker that opened it.
pub struct ConnectionPool {
    addr: SocketAddr,
    connect_timeout: Duration,
    idle_timeout: Duration,
    idle: Box<[Mutex<Vec<IdleConn>>]>,
}

struct IdleConn {
    conn: Connection,
    /// Coarse monotonic ms.
    since: u64,
}

impl ConnectionPool {
    /// An empty pool; idle connections close after `idle_timeout`.
    pub fn new(addr: SocketAddr, connect_timeout: Duration, idle_timeout: Duration) -> Arc<Self> {
        let pool = Arc::new(Self {
            addr,
            connect_timeout,
            idle_timeout,
            idle: (0..crate::worker::shards())
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
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
    /// safe request (GET, HEAD, OPTIONS, TRACE) without a body that meets a pooled connection
    /// the target had already closed (nothing came back) goes again on the next one.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<Body>,
        forwarding: &Forwarding,
    ) -> Result<Answer, SendError> {
        let (parts, mut body) = req.into_parts();
        let mut first = None;
        let framing = if body.is_end_stream() {
            RequestFraming::Empty
        } else if let Some(n) = body.size_hint().exact() {
            RequestFraming::Length(n)
        } else {
            // Unknown length (a chunked upload, an HTTP/2 client's stream): one that has
            // already ended empty, as an HTTP/2 GET's often has, goes without a body rather
            // than chunked. Only what is there now is looked at: a client that uploads only
            // after the response has started must not be waited for.
            let now = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx)));
            match now.await {
                Poll::Ready(None) => RequestFraming::Empty,
                Poll::Ready(Some(Ok(frame))) => {
                    first = frame.into_data().ok().filter(|b| !b.is_empty());
                    if body.is_end_stream() && first.is_none() {
                        RequestFraming::Empty
                    } else {
                        RequestFraming::Chunked
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    return Err(SendError::Exchange {
                        addr: self.addr,
                        source: ExchangeError::RequestBody(e),
                    })
                }
                Poll::Pending => RequestFraming::Chunked,
            }
        };
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut head = Vec::with_capacity(512);
        encode_request(
            &parts.method,
            target,
            &parts.headers,
            framing,
            Some(forwarding),
            &mut head,
        );
        // Only a safe method: an idempotent one (PUT, DELETE) that reached the target may
        // have had its effect before the connection closed.
        let replayable = framing == RequestFraming::Empty && parts.method.is_safe();
        let mut body = (framing != RequestFraming::Empty).then_some(body);
        loop {
            let (conn, reused) = match self.checkout() {
                Some(c) => (c, true),
                None => (self.connect().await?, false),
            };
            let req = Outgoing {
                method: &parts.method,
                head: &head,
                body: body.take(),
                first: first.take(),
                framing,
            };
            match exchange::exchange(conn, req).await {
                Ok(answer) => return Ok(answer),
                Err(f) if f.stale && reused && replayable => {
                    tracing::debug!(addr = %self.addr, "pooled connection was closed; sending again");
                }
                Err(f) => {
                    return Err(SendError::Exchange {
                        addr: self.addr,
                        source: f.error,
                    })
                }
            }
        }
    }

    /// The current thread's stack of idle connections, and its index.
    fn stack(&self) -> (usize, &Mutex<Vec<IdleConn>>) {
        let shard = crate::worker::shard();
        match self.idle.get(shard) {
            Some(s) => (shard, s),
            // Only a pool built before the worker count was set (none in a running
            // gateway) has fewer shards.
            None => (0, &self.idle[0]),
        }
    }

    fn checkout(self: &Arc<Self>) -> Option<Pooled> {
        let now = crate::clock::monotonic_ms();
        let (shard, stack) = self.stack();
        let mut idle = stack.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(c) = idle.pop() {
            if now.saturating_sub(c.since) < self.idle_ms() && c.conn.is_reusable() {
                return Some(self.lend(c.conn, shard));
            }
        }
        None
    }

    fn lend(self: &Arc<Self>, conn: Connection, shard: usize) -> Pooled {
        Pooled {
            conn: Some(conn),
            home: Arc::downgrade(self),
            shard,
        }
    }

    /// Takes back a connection whose exchange ended cleanly, into the stack it was opened for
    /// (wherever its guard is dropped).
    fn check_in(&self, conn: Connection, shard: usize) {
        let Some(stack) = self.idle.get(shard) else {
            return;
        };
        let mut idle = stack.lock().unwrap_or_else(|p| p.into_inner());
        idle.push(IdleConn {
            conn,
            since: crate::clock::monotonic_ms(),
        });
    }

    /// Drops connections idle too long or closed by the target.
    fn prune(&self) {
        let now = crate::clock::monotonic_ms();
        let timeout = self.idle_ms();
        for stack in self.idle.iter() {
            let mut idle = stack.lock().unwrap_or_else(|p| p.into_inner());
            idle.retain(|c| now.saturating_sub(c.since) < timeout && c.conn.is_reusable());
        }
    }

    fn idle_ms(&self) -> u64 {
        self.idle_timeout.as_millis() as u64
    }

    async fn connect(self: &Arc<Self>) -> Result<Pooled, SendError> {
        let stream = dial(self.addr, self.connect_timeout).await?;
        Ok(self.lend(Connection::new(stream), self.stack().0))
    }
}

/// A connection checked out of its pool. Dropped, it goes back to the pool if its exchange
/// left it clean, and closes otherwise.
pub struct Pooled {
    /// `None` only once [`Lease::detach`] has taken it (which consumes the guard).
    conn: Option<Connection>,
    home: Weak<ConnectionPool>,
    /// The pool's stack it goes back to: its worker's.
    shard: usize,
}

impl std::ops::Deref for Pooled {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        // The connection leaves the guard only through `detach`, which consumes it.
        self.conn
            .as_ref()
            .expect("a guard holds its connection until dropped")
    }
}

impl std::ops::DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut Connection {
        self.conn
            .as_mut()
            .expect("a guard holds its connection until dropped")
    }
}

impl Lease for Pooled {
    fn detach(mut self) -> Connection {
        self.conn
            .take()
            .expect("a guard holds its connection until dropped")
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take().filter(Connection::is_clean) else {
            return;
        };
        if let Some(home) = self.home.upgrade() {
            home.check_in(conn, self.shard);
        }
    }
}

/// A TCP connection to a target within `timeout`, with Nagle off.
pub(crate) async fn dial(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, SendError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| SendError::ConnectTimeout(addr))?
        .map_err(|source| SendError::Connect { addr, source })?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

async fn reap(pool: Weak<ConnectionPool>, every: Duration) {
    reap_every(pool, every, ConnectionPool::prune).await
}

/// Calls `prune` on `owner` every `every` until the owner is dropped.
pub(crate) async fn reap_every<T>(owner: Weak<T>, every: Duration, prune: fn(&T)) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match owner.upgrade() {
            Some(o) => prune(&o),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Out of descriptors or memory here is a connect failure (another target may be tried)
    /// but not the target's fault; a refused connection is both.
    #[test]
    fn a_connect_failure_on_this_host_is_told_from_the_targets() {
        let addr: SocketAddr = ([127, 0, 0, 1], 9).into();
        let connect = |errno| SendError::Connect {
            addr,
            source: std::io::Error::from_raw_os_error(errno),
        };
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            let e = connect(errno);
            assert!(e.is_connect() && e.is_local(), "{e}");
        }
        for e in [connect(libc::ECONNREFUSED), connect(libc::EHOSTUNREACH)] {
            assert!(e.is_connect() && !e.is_local(), "{e}");
        }
        assert!(!SendError::ConnectTimeout(addr).is_local());
    }
}
