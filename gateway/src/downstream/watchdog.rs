//! Deadlines on every phase of a client connection, and room made for new connections by
//! closing idle ones.
//!
//! Which deadline guards which phase:
//! - TLS handshake: `tls_handshake_timeout_ms` (listener.rs);
//! - protocol detection, the HTTP/2 preface and SETTINGS, and the first request head:
//!   `first_request_timeout_ms`, from the connection's start (after TLS);
//! - a request head once begun: `header_read_timeout_ms` (hyper's HTTP/1.1 head timer);
//! - HTTP/1.1 waiting for the next request: `keepalive_timeout_ms`;
//! - HTTP/2 with no request in flight: `http2_idle_timeout_ms`, then GOAWAY and close;
//! - a response the client stops taking (it does not read, or withholds HTTP/2 flow-control
//!   credit) while nothing waits for an upstream: `stream_idle_timeout_ms`, then closed.
//!
//! Plain HTTP/1.1 connections keep theirs in [`crate::downstream::park`]; every other connection (TLS,
//! HTTP/2 by prior knowledge) is served through [`serve`], which watches the connection's
//! [`Idle`] state. At `max_connections`, [`Admission`] closes the connection that has been
//! idle longest, as Envoy's overload manager shortens idle timeouts under pressure, rather
//! than turning the newcomer away.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{atomic::Ordering, Arc, Mutex, Weak},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use hyper_util::{rt::TokioExecutor, server::conn::auto};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tracing::debug;

use crate::{
    clock::monotonic_ms,
    downstream::conn_state::{ActiveRequest, Idle, ResponseClock},
    downstream::refusal,
    downstream::service::ConnService,
    metrics::{Closed, Metrics},
    Body,
};

/// How long a connection closed for idleness has to finish (GOAWAY exchange, the last
/// response's flush) before it is dropped.
const GRACE: Duration = Duration::from_secs(1);

/// A listener's connection deadlines.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// Connection start to the first request head.
    pub first_request: Duration,
    /// A request head once begun.
    pub header_read: Duration,
    /// HTTP/1.1 waiting for the next request.
    pub keepalive: Duration,
    /// HTTP/2 with no request in flight.
    pub http2_idle: Duration,
    /// A response the client has stopped taking.
    pub stream_idle: Duration,
}

impl Deadlines {
    /// From a listener's config.
    pub fn of(l: &crate::config::Listener) -> Self {
        let ms = Duration::from_millis;
        Deadlines {
            first_request: ms(l.first_request_timeout_ms),
            header_read: ms(l.header_read_timeout_ms),
            keepalive: ms(l.keepalive_timeout_ms),
            http2_idle: ms(l.http2_idle_timeout_ms),
            stream_idle: ms(l.stream_idle_timeout_ms),
        }
    }

    /// How often a busy connection is looked at again.
    fn recheck(&self) -> Duration {
        self.first_request
            .min(self.keepalive)
            .min(self.http2_idle)
            .min(self.stream_idle)
    }

    /// How long `idle` may stay quiet in the phase it is in.
    fn quiet_limit(&self, idle: &Idle) -> Duration {
        if !idle.served_any() {
            self.first_request
        } else if idle.is_http2() {
            self.http2_idle
        } else {
            self.keepalive
        }
    }
}

/// When the quiet connection `idle` is due to close (coarse ms), or `None` while busy.
fn due(idle: &Idle, deadlines: &Deadlines) -> Option<u64> {
    let since = idle.quiet_since()?;
    Some(since.saturating_add(deadlines.quiet_limit(idle).as_millis() as u64))
}

/// When the busy connection `idle`, whose client takes nothing, is due to close.
fn stall_due(idle: &Idle, deadlines: &Deadlines) -> Option<u64> {
    let since = idle.stalled_since()?;
    Some(since.saturating_add(deadlines.stream_idle.as_millis() as u64))
}

/// Serves one watched connection (see [`Idle::watch`]) until it ends: politely when `stop`
/// changes (GOAWAY, `Connection: close` on the response in flight); closed when it stays
/// quiet past its phase's deadline or is evicted (HTTP/2 gets GOAWAY, then a grace period).
pub async fn serve<I, S>(
    io: I,
    builder: &auto::Builder<TokioExecutor>,
    service: S,
    mut stop: watch::Receiver<bool>,
    idle: Arc<Idle>,
    deadlines: Deadlines,
    metrics: &Metrics,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: ConnService,
{
    /// Marks the connection's end however `serve` returns.
    struct Ended<'a>(&'a Idle);
    impl Drop for Ended<'_> {
        fn drop(&mut self) {
            self.0.ended();
        }
    }
    let _ended = Ended(&idle);
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    // Set once the connection was asked to end: then only the grace period is watched.
    let mut closing: Option<tokio::time::Instant> = None;
    let peer = idle.peer();
    loop {
        let check = next_check(closing, &idle, &deadlines);
        let evicted = std::future::poll_fn(|cx| {
            if idle.poll_evicted(cx) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!(%peer, error = %e, "connection ended");
                    // Once the watchdog asked it to end, what follows is its doing.
                    if closing.is_none() {
                        refusal::ended_with(metrics, peer, &*e, !idle.served_any());
                    }
                }
                return;
            }
            _ = stop.changed(), if closing.is_none() => {
                conn.as_mut().graceful_shutdown();
                // The gateway's shutdown deadline bounds what is left.
                if let Err(e) = conn.await {
                    debug!(%peer, error = %e, "connection ended");
                }
                return;
            }
            _ = evicted, if closing.is_none() => {
                debug!(%peer, "idle connection closed to admit another");
                conn.as_mut().graceful_shutdown();
                closing = Some(tokio::time::Instant::now() + GRACE);
            }
            _ = tokio::time::sleep_until(check) => {
                match on_timer(closing.is_some(), &idle, &deadlines, metrics) {
                    Tick::Close => return,
                    Tick::ShutDown => {
                        conn.as_mut().graceful_shutdown();
                        closing = Some(tokio::time::Instant::now() + GRACE);
                    }
                    Tick::Grace => closing = Some(tokio::time::Instant::now() + GRACE),
                    Tick::Wait => {}
                }
            }
        }
    }
}

/// When the watchdog looks at a connection next: the end of its grace period once it is
/// closing; else its phase's deadline; else, busy, after the shortest deadline or when a
/// stall would be due.
fn next_check(
    closing: Option<tokio::time::Instant>,
    idle: &Idle,
    deadlines: &Deadlines,
) -> tokio::time::Instant {
    let at_ms = |at: u64| {
        tokio::time::Instant::now() + Duration::from_millis(at.saturating_sub(monotonic_ms()))
    };
    match (closing, due(idle, deadlines)) {
        (Some(at), _) => at,
        (None, Some(at)) => at_ms(at),
        (None, None) => match stall_due(idle, deadlines) {
            Some(at) => at_ms(at).min(tokio::time::Instant::now() + deadlines.recheck()),
            None => tokio::time::Instant::now() + deadlines.recheck(),
        },
    }
}

/// What a watched connection's timer decided.
enum Tick {
    /// Close it now.
    Close,
    /// Ask it to end (GOAWAY) and give it a grace period.
    ShutDown,
    /// A request got in before the GOAWAY: another grace period for it to finish.
    Grace,
    /// Nothing is due yet.
    Wait,
}

fn on_timer(closing: bool, idle: &Idle, deadlines: &Deadlines, metrics: &Metrics) -> Tick {
    let peer = idle.peer();
    let stalled = || stall_due(idle, deadlines).is_some_and(|at| at <= monotonic_ms());
    if closing {
        if idle.quiet_since().is_some() {
            debug!(%peer, "closed after its grace period");
            return Tick::Close;
        }
        // Streams let in before the GOAWAY took hold are held to the stall deadline too.
        if stalled() {
            debug!(%peer, "the client took no response data in time; closing");
            metrics.closed(Closed::Stalled);
            return Tick::Close;
        }
        return Tick::Grace;
    }
    if due(idle, deadlines).is_some_and(|at| at <= monotonic_ms()) {
        debug!(%peer, "connection quiet past its deadline; closing");
        metrics.closed(Closed::Deadline);
        // The first request's deadline: a client holding a connection without a head. (A
        // keep-alive or HTTP/2 idle wait is no one's fault.)
        if !idle.served_any() {
            refusal::deadline(metrics, peer);
        }
        return Tick::ShutDown;
    }
    if stalled() {
        // A graceful end would wait for the response the client does not take.
        debug!(%peer, "the client took no response data in time; closing");
        metrics.closed(Closed::Stalled);
        return Tick::Close;
    }
    Tick::Wait
}

/// A response body that holds its request's [`ActiveRequest`] until it ends, so a watched
/// connection counts as busy while a response streams, and keeps the response's clock: set
/// when it holds data (the head at first, then each piece) until the client pulls again.
pub struct Tracked {
    body: Body,
    _in_flight: ActiveRequest,
    clock: Arc<ResponseClock>,
}

impl Tracked {
    /// `resp` with `in_flight` held by its body.
    pub fn wrap(resp: hyper::Response<Body>, in_flight: ActiveRequest) -> hyper::Response<Body> {
        use http_body_util::BodyExt as _;
        resp.map(|body| {
            let clock = in_flight.idle().track_response();
            Tracked {
                body,
                _in_flight: in_flight,
                clock,
            }
            .boxed()
        })
    }
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        // Polled: the client has taken what there was (or hyper has room for more).
        this.clock.owed_since.store(0, Ordering::Relaxed);
        let r = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &r {
            this.clock
                .owed_since
                .store(monotonic_ms().max(1), Ordering::Relaxed);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Admits a listener's connections: `max_connections` in all, and at most
/// `max_connections_per_client` from one client (an IPv4 address or an IPv6 /64).
pub struct Admission {
    slots: Arc<Semaphore>,
    max: usize,
    /// Every admitted connection's state, to find an idle one to close.
    live: Mutex<Vec<Weak<Idle>>>,
    /// Where the next eviction scan starts in `live`.
    cursor: std::sync::atomic::AtomicUsize,
    /// Open connections by client address, when limited.
    per_client: Option<(usize, Mutex<HashMap<IpAddr, usize>>)>,
    metrics: Arc<Metrics>,
}

/// What an admitted connection holds for its life.
pub struct Admitted {
    _slot: OwnedSemaphorePermit,
    _client: Option<ClientCount>,
}

/// One connection counted against its client address; uncounted when dropped.
struct ClientCount(Arc<Admission>, IpAddr);

impl Drop for ClientCount {
    fn drop(&mut self) {
        if let Some((_, counts)) = &self.0.per_client {
            let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = c.get_mut(&self.1) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    c.remove(&self.1);
                }
            }
        }
    }
}

/// The outcome of [`Admission::admit`].
pub enum Admit {
    /// Admitted.
    Now(Admitted),
    /// An idle connection is closing to make room: [`Pending::ready`] waits for its slot.
    Later(Pending),
    /// Refused.
    Refused,
}

/// A connection waiting for the slot an evicted one frees.
pub struct Pending {
    admission: Arc<Admission>,
    client: Option<ClientCount>,
    idle: Arc<Idle>,
}

impl Pending {
    /// The admission, or `None` (counted) if no slot came free in time.
    pub async fn ready(self) -> Option<Admitted> {
        let a = &self.admission;
        match tokio::time::timeout(SLOT_WAIT, a.slots.clone().acquire_owned()).await {
            Ok(Ok(slot)) => Some(a.admitted(slot, self.client, &self.idle)),
            _ => {
                a.metrics.closed(Closed::OverLimit);
                None
            }
        }
    }
}

/// Most registry entries one eviction looks at.
const EVICTION_SCAN: usize = 1024;
/// Idle connections compared per eviction: the oldest of them is closed.
const EVICTION_CANDIDATES: usize = 32;

/// How long a newcomer waits for the slot of the idle connection closed for it.
const SLOT_WAIT: Duration = Duration::from_secs(2);

impl Admission {
    /// Limits from a listener's config.
    pub fn new(l: &crate::config::Listener, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Admission {
            slots: Arc::new(Semaphore::new(l.max_connections)),
            max: l.max_connections,
            live: Mutex::new(Vec::new()),
            cursor: std::sync::atomic::AtomicUsize::new(0),
            per_client: l
                .max_connections_per_client
                .map(|n| (n, Mutex::new(HashMap::new()))),
            metrics,
        })
    }

    /// Counts a connection from `ip` if its client is under its limit.
    fn count_client(self: &Arc<Self>, ip: IpAddr) -> Result<Option<ClientCount>, ()> {
        let Some((limit, counts)) = &self.per_client else {
            return Ok(None);
        };
        // One client is one IPv4 address or one IPv6 /64 (a host usually has a whole /64).
        let ip = match ip.to_canonical() {
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) & !(u64::MAX as u128)).into()),
            v4 => v4,
        };
        let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = c.entry(ip).or_insert(0);
        if *n >= *limit {
            return Err(());
        }
        *n += 1;
        Ok(Some(ClientCount(self.clone(), ip)))
    }

    /// Admits a connection from `peer` whose state is `idle`: at once while a slot is free;
    /// at `max_connections`, once the longest-idle connection, closed for it, has freed its
    /// slot. Refusals are counted.
    pub fn admit(self: &Arc<Self>, peer: SocketAddr, idle: &Arc<Idle>) -> Admit {
        let Ok(client) = self.count_client(peer.ip()) else {
            debug!(%peer, "per-client connection limit reached; closing");
            self.metrics.closed(Closed::OverClientLimit);
            return Admit::Refused;
        };
        match self.slots.clone().try_acquire_owned() {
            Ok(slot) => Admit::Now(self.admitted(slot, client, idle)),
            Err(_) if self.evict_one() => Admit::Later(Pending {
                admission: self.clone(),
                client,
                idle: idle.clone(),
            }),
            Err(_) => {
                debug!(%peer, "connection limit reached, none idle; closing");
                self.metrics.closed(Closed::OverLimit);
                Admit::Refused
            }
        }
    }

    fn admitted(
        &self,
        slot: OwnedSemaphorePermit,
        client: Option<ClientCount>,
        idle: &Arc<Idle>,
    ) -> Admitted {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        // Entries of closed connections are dropped once they outnumber the limit.
        if live.len() >= 2 * self.max + 64 {
            live.retain(|w| w.strong_count() > 0);
        }
        live.push(Arc::downgrade(idle));
        drop(live);
        Admitted {
            _slot: slot,
            _client: client,
        }
    }

    /// Closes the connection quiet the longest among those looked at; false if none is
    /// idle. At most [`EVICTION_SCAN`] entries are looked at per call, from where the last
    /// call stopped (as Redis samples for LRU eviction): a flood of newcomers against a
    /// listener full of busy connections costs each a bounded scan, not one of every
    /// connection.
    fn evict_one(&self) -> bool {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let n = live.len();
        if n == 0 {
            return false;
        }
        let mut cursor = self.cursor.load(Ordering::Relaxed) % n;
        let mut oldest: Option<(u64, Arc<Idle>)> = None;
        let mut candidates = 0;
        for _ in 0..n.min(EVICTION_SCAN) {
            if let Some(i) = live[cursor].upgrade() {
                if i.evictable() && !i.is_evicted() {
                    let since = i.quiet_since().unwrap_or(u64::MAX);
                    if oldest.as_ref().is_none_or(|(s, _)| since < *s) {
                        oldest = Some((since, i));
                    }
                    candidates += 1;
                    if candidates == EVICTION_CANDIDATES {
                        break;
                    }
                }
            }
            cursor = (cursor + 1) % n;
        }
        self.cursor.store(cursor, Ordering::Relaxed);
        // Dead entries go once they outnumber the limit.
        if n >= 2 * self.max + 64 {
            live.retain(|w| w.strong_count() > 0);
        }
        drop(live);
        let Some((_, i)) = oldest else {
            return false;
        };
        debug!(peer = %i.peer(), "closing the longest-idle connection to admit another");
        i.evict();
        self.metrics.closed(Closed::Evicted);
        true
    }
}
