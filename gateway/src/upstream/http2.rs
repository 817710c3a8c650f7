//! HTTP/2 upstreams: one multiplexed connection per target and [`crate::worker`], whatever
//! authority a request names. Each request's `:authority` is the Host that was routed on
//! (RFC 9113 §8.3.1), so a pool keyed by authority (hyper-util's) would let clients open a
//! connection per Host spelling; here the connection belongs to the target. Per worker, as
//! a socket is polled by the runtime that opened it: a worker never waits on another's.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use hyper::{body::Incoming, client::conn::http2::SendRequest, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::{clock::monotonic_ms, upstream::http1::SendError, Body};

/// The connections to one HTTP/2 target, one per worker, each opened on first use and again
/// after it closes.
pub struct H2Target {
    addr: SocketAddr,
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// By worker shard.
    slots: Box<[Slot]>,
}

/// One worker's connection to the target.
struct Slot {
    /// The live connection's sender. Held across a connect, so that concurrent requests
    /// wait for one connection rather than each opening its own.
    sender: tokio::sync::Mutex<Option<SendRequest<Body>>>,
    /// Last use (coarse ms): the connection is let go after `idle_timeout` unused.
    last_used: AtomicU64,
}

impl H2Target {
    /// A target at `addr`; its idle connection closes after `idle_timeout`, checked by a
    /// task that ends with the target.
    pub fn new(addr: SocketAddr, connect_timeout: Duration, idle_timeout: Duration) -> Arc<Self> {
        let target = Arc::new(H2Target {
            addr,
            connect_timeout,
            idle_timeout,
            slots: (0..crate::worker::shards())
                .map(|_| Slot {
                    sender: tokio::sync::Mutex::new(None),
                    last_used: AtomicU64::new(monotonic_ms()),
                })
                .collect(),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let every = (idle_timeout / 2).max(Duration::from_millis(100));
            rt.spawn(crate::upstream::http1::reap_every(
                Arc::downgrade(&target),
                every,
                H2Target::prune,
            ));
        }
        target
    }

    /// Sends `req` (an absolute URI naming the `:authority`, no `host` field). A request the
    /// connection never took (it was closing: GOAWAY, or closed under us) goes once more on a
    /// new connection, as nothing of it reached the target.
    pub async fn send(&self, req: Request<Body>) -> Result<Response<Incoming>, SendError> {
        let mut sender = self.sender(false).await?;
        match sender.try_send_request(req).await {
            Ok(resp) => Ok(resp),
            Err(mut e) => match e.take_message() {
                Some(req) => {
                    let mut sender = self.sender(true).await?;
                    sender.send_request(req).await.map_err(SendError::Http2)
                }
                None => Err(SendError::Http2(e.into_error())),
            },
        }
    }

    /// The live connection's sender, or a new connection's (always a new one if `fresh`).
    async fn sender(&self, fresh: bool) -> Result<SendRequest<Body>, SendError> {
        // Shard 0 if the worker count was set after this target was built (never in a
        // running gateway).
        let Some(mine) = self
            .slots
            .get(crate::worker::shard())
            .or(self.slots.first())
        else {
            return Err(SendError::NoPool(self.addr));
        };
        let mut slot = mine.sender.lock().await;
        mine.last_used.store(monotonic_ms(), Relaxed);
        if fresh {
            slot.take();
        }
        if let Some(s) = slot.as_ref().filter(|s| !s.is_closed()) {
            return Ok(s.clone());
        }
        let addr = self.addr;
        let stream = crate::upstream::http1::dial(addr, self.connect_timeout).await?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| SendError::Connect {
                addr,
                source: std::io::Error::other(e),
            })?;
        // Ends once the upstream closes, or once every sender is dropped (idle) and the
        // streams in flight are done.
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "HTTP/2 upstream connection ended");
            }
        });
        *slot = Some(sender.clone());
        Ok(sender)
    }

    /// Lets go of connections unused for the idle timeout.
    fn prune(&self) {
        let idle = self.idle_timeout.as_millis() as u64;
        for s in self.slots.iter() {
            if monotonic_ms().saturating_sub(s.last_used.load(Relaxed)) < idle {
                continue;
            }
            if let Ok(mut slot) = s.sender.try_lock() {
                slot.take();
            }
        }
    }
}
