//! What the parts of one client connection know of each other: the socket wrapper, the
//! service that starts requests, the connection's driver ([`crate::downstream::park`] or
//! [`crate::downstream::watchdog`]) and the listener's [`crate::downstream::watchdog::Admission`], which may ask an
//! idle connection to close.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{
            AtomicBool, AtomicU32, AtomicU64,
            Ordering::{Acquire, Relaxed, Release},
        },
        Arc, Weak,
    },
    task::Context,
};

use hyper::{body::Incoming, Request};

/// What the socket wrapper, the service and the driver of one connection know of each
/// other. A plain HTTP/1.1 connection's are all polled by its one task; HTTP/2 streams and
/// the listener's admission run on other threads, so the counts that decide whether the
/// connection is idle are read with acquire and written with release ordering.
#[derive(Debug)]
pub struct Idle {
    /// The client (for logs; kept here, off the connection's task, which stays small).
    pub(crate) peer: SocketAddr,
    /// The last read from the socket found nothing.
    pub(crate) read_blocked: AtomicBool,
    /// Requests whose response head is not yet produced.
    pub(crate) in_flight: AtomicU32,
    /// Requests started on the current hyper instance.
    pub(crate) started: AtomicU32,
    /// The latest request had a body (hyper may still be reading or draining it).
    pub(crate) latest_had_body: AtomicBool,
    /// The latest request ends the connection (`Connection: close`, or HTTP/1.0): hyper
    /// will close it after the response, and its shutdown must not be skipped.
    pub(crate) closing: AtomicBool,
    /// A request on this hyper instance asked for an upgrade (`Upgrade`, or CONNECT): hyper
    /// keeps a pending upgrade for it until the connection ends, and stopping would hand the
    /// socket to that upgrade instead of back to us.
    pub(crate) upgrade_asked: AtomicBool,
    /// hyper was asked to stop so that the connection can be parked.
    pub(crate) parking: AtomicBool,
    /// The connection waits for a request (no request started since it began waiting):
    /// it may be closed to admit another at `max_connections`.
    pub(crate) waiting: AtomicBool,
    /// A request has started on the connection (its first-request deadline is past).
    pub(crate) served_any: AtomicBool,
    /// The latest request was HTTP/2 (its idle deadline is `http2_idle_timeout_ms`).
    http2: AtomicBool,
    /// Requests hold their [`ActiveRequest`] until their response body ends, and the end is
    /// timed in `quiet_since` (connections watched by [`crate::downstream::watchdog`]).
    pub(crate) watched: AtomicBool,
    /// When the connection last became quiet (coarse monotonic ms).
    pub(crate) quiet_since: AtomicU64,
    /// Asked to close to make room for a new connection.
    pub(crate) evicted: AtomicBool,
    /// The connection's task, woken by an eviction.
    pub(crate) task: std::sync::Mutex<Option<std::task::Waker>>,
    /// `task` holds the connection's waker.
    pub(crate) task_registered: AtomicBool,
    /// A watched connection's responses still streaming, each with its own clock.
    pub(crate) responses: std::sync::Mutex<Vec<Weak<ResponseClock>>>,
    /// Since when a write to the client has been blocked (coarse ms; 0: not blocked).
    pub(crate) write_stalled_since: AtomicU64,
}

impl Idle {
    /// The state of a new connection from `peer`.
    pub fn new(peer: SocketAddr) -> Self {
        Self {
            peer,
            read_blocked: AtomicBool::new(false),
            in_flight: AtomicU32::new(0),
            started: AtomicU32::new(0),
            latest_had_body: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            upgrade_asked: AtomicBool::new(false),
            parking: AtomicBool::new(false),
            waiting: AtomicBool::new(true),
            served_any: AtomicBool::new(false),
            http2: AtomicBool::new(false),
            watched: AtomicBool::new(false),
            quiet_since: AtomicU64::new(crate::clock::monotonic_ms()),
            evicted: AtomicBool::new(false),
            task: std::sync::Mutex::new(None),
            task_registered: AtomicBool::new(false),
            responses: std::sync::Mutex::new(Vec::new()),
            write_stalled_since: AtomicU64::new(0),
        }
    }

    /// A clock for a response about to stream on this (watched) connection.
    pub fn track_response(&self) -> Arc<ResponseClock> {
        let clock = Arc::new(ResponseClock {
            owed_since: AtomicU64::new(crate::clock::monotonic_ms().max(1)),
        });
        let mut all = self.responses.lock().unwrap_or_else(|p| p.into_inner());
        if all.len() >= 32 {
            all.retain(|w| w.strong_count() > 0);
        }
        all.push(Arc::downgrade(&clock));
        clock
    }

    /// Since when the longest-stalled response has had data its client did not take (coarse
    /// ms): each response counts on its own, so one that streams or waits for its upstream
    /// does not hide another the client stopped reading. `None` if none is owed.
    pub fn stalled_since(&self) -> Option<u64> {
        let all = self.responses.lock().unwrap_or_else(|p| p.into_inner());
        all.iter()
            .filter_map(Weak::upgrade)
            .map(|c| c.owed_since.load(Relaxed))
            .filter(|&t| t != 0)
            .min()
    }

    /// Notes a write to the client that could not proceed (`blocked`) or did.
    pub(crate) fn write_blocked(&self, blocked: bool) {
        let since = self.write_stalled_since.load(Relaxed);
        if blocked && since == 0 {
            self.write_stalled_since
                .store(crate::clock::monotonic_ms().max(1), Relaxed);
        } else if !blocked && since != 0 {
            self.write_stalled_since.store(0, Relaxed);
        }
    }

    /// Has the connection's requests hold their slot to the end of their response bodies,
    /// and time when it goes quiet (for [`crate::downstream::watchdog`]).
    pub fn watch(&self) {
        self.watched.store(true, Relaxed);
        self.quiet();
    }

    /// Like [`Idle::watch`], but quiet since the connection began (nothing was served).
    pub fn watch_from_start(&self) {
        self.watched.store(true, Relaxed);
    }

    /// Notes a park: the connection waits for its next request from now.
    pub(crate) fn park(&self) {
        self.waiting.store(true, Relaxed);
        self.quiet();
    }

    /// Whether a request on the current hyper instance asked for an upgrade.
    pub fn upgrade_asked(&self) -> bool {
        self.upgrade_asked.load(Relaxed)
    }

    /// Whether requests are watched to the end of their bodies.
    pub fn is_watched(&self) -> bool {
        self.watched.load(Relaxed)
    }

    /// Notes that the connection has nothing in flight from now on.
    pub(crate) fn quiet(&self) {
        self.quiet_since
            .store(crate::clock::monotonic_ms(), Relaxed);
    }

    /// When it went quiet (coarse ms), or `None` while a request is in flight.
    pub fn quiet_since(&self) -> Option<u64> {
        (self.in_flight.load(Acquire) == 0).then(|| self.quiet_since.load(Relaxed))
    }

    /// Whether a request has started on the connection.
    pub fn served_any(&self) -> bool {
        self.served_any.load(Relaxed)
    }

    /// Whether the latest request came over HTTP/2.
    pub fn is_http2(&self) -> bool {
        self.http2.load(Relaxed)
    }

    /// Whether closing it now would cut no request: it waits for one (or, watched, has
    /// none in flight).
    pub fn evictable(&self) -> bool {
        // (A plain HTTP/1.1 connection between requests is not: it may still be writing a
        // response; it parks within a sweep tick, and then it is.)
        self.in_flight.load(Acquire) == 0
            && (self.waiting.load(Relaxed) || self.watched.load(Relaxed))
    }

    /// The client.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Whether it was asked to close.
    pub fn is_evicted(&self) -> bool {
        self.evicted.load(Relaxed)
    }

    /// Notes that the connection's driver is gone: it is never picked for eviction.
    pub fn ended(&self) {
        self.evicted.store(true, Relaxed);
    }

    /// Asks the connection to close.
    pub fn evict(&self) {
        self.evicted.store(true, Relaxed);
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = task {
            w.wake();
        }
    }

    /// Whether it was asked to close; if not, the task of `cx` (the connection's one task,
    /// for its whole life) is woken when it is.
    pub fn poll_evicted(&self, cx: &Context<'_>) -> bool {
        if self.evicted.load(Relaxed) {
            return true;
        }
        // One task drives a connection for its life, so its waker is registered once; later
        // polls cost an atomic load, not a lock.
        if !self.task_registered.load(Relaxed) {
            *self.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(cx.waker().clone());
            self.task_registered.store(true, Relaxed);
        }
        // An eviction between the first check and the registration.
        self.evicted.load(Relaxed)
    }

    /// Notes a request starting; the guard marks its response head as produced when dropped.
    pub fn start(self: &Arc<Self>, req: &Request<Incoming>) -> ActiveRequest {
        use hyper::body::Body as _;
        self.in_flight.fetch_add(1, Release);
        self.started.fetch_add(1, Relaxed);
        self.waiting.store(false, Relaxed);
        self.served_any.store(true, Relaxed);
        self.http2
            .store(req.version() == hyper::Version::HTTP_2, Relaxed);
        self.latest_had_body
            .store(!req.body().is_end_stream(), Relaxed);
        let closing = req.version() < hyper::Version::HTTP_11
            || req
                .headers()
                .get_all(hyper::header::CONNECTION)
                .iter()
                .any(|v| {
                    v.as_bytes()
                        .split(|b| *b == b',')
                        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
                });
        self.closing.store(closing, Relaxed);
        if req.method() == hyper::Method::CONNECT
            || req.headers().contains_key(hyper::header::UPGRADE)
        {
            self.upgrade_asked.store(true, Relaxed);
        }
        ActiveRequest(self.clone())
    }

    /// hyper may stop: it has served a request that keeps the connection alive, owes no
    /// response head, reads no request body, and found the socket empty. Asked to stop now,
    /// it finishes the response body in progress (if any), flushes, and stops without having
    /// told the client anything (no `Connection: close`: every head is already written).
    pub(crate) fn is_idle(&self) -> bool {
        self.started.load(Relaxed) > 0
            && self.in_flight.load(Relaxed) == 0
            && !self.latest_had_body.load(Relaxed)
            && !self.closing.load(Relaxed)
            && !self.upgrade_asked.load(Relaxed)
            && self.read_blocked.load(Relaxed)
    }

    pub(crate) fn reset(&self) {
        self.started.store(0, Relaxed);
        self.upgrade_asked.store(false, Relaxed);
        self.parking.store(false, Relaxed);
        self.read_blocked.store(false, Relaxed);
    }
}

/// Held by a request's future until its response head exists (on a watched connection,
/// until its response body ends).
pub struct ActiveRequest(Arc<Idle>);

impl ActiveRequest {
    /// Whether its connection is watched (see [`Idle::watch`]).
    pub fn is_watched(&self) -> bool {
        self.0.is_watched()
    }

    /// Its connection's state.
    pub fn idle(&self) -> &Idle {
        &self.0
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        // The time first, so that whoever sees no request in flight sees when that began.
        // (A plain connection's quiet time is noted when it parks: only then may it be
        // evicted.)
        if self.0.is_watched() {
            self.0.quiet();
        }
        self.0.in_flight.fetch_sub(1, Release);
    }
}

/// One streaming response's clock: since when it has held data its client has not pulled
/// (coarse ms; 0: the client is pulling, or the response waits for its upstream).
#[derive(Debug)]
pub struct ResponseClock {
    /// See above.
    pub owed_since: AtomicU64,
}
