//! Idle HTTP/1.1 keep-alive connections, parked without hyper's buffers.
//!
//! hyper keeps an 8 KiB read and an 8 KiB write buffer in a connection for as long as it
//! serves it. Like nginx, which frees a keep-alive connection's buffers between requests, the
//! gateway ends hyper's part of a plain HTTP/1.1 connection once the connection is idle — its
//! last response handed over, nothing left to read — and keeps only the socket and the
//! service. The next request's bytes start hyper again. A connection that has carried one
//! request parks at once; a reused one after a tick of idleness ([`SWEEP_TICK`]). A connection costs about a kilobyte
//! while it waits instead of some 17.
//!
//! hyper is asked to stop only when it owes the client no response head, reads no request
//! body, and was not asked to close or upgrade (see `Idle::is_idle`), so stopping never adds
//! `Connection: close` to a response, and no bytes are lost: hyper finishes the response in
//! progress and flushes before it shuts the stream down (which [`ParkIo`] then skips), and
//! hands back what it had read but not parsed.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicU32, Ordering::Relaxed},
        Arc,
    },
    task::{ready, Context, Poll},
    time::Duration,
};

use bytes::{Buf, Bytes};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{
    io::ReadBuf,
    net::TcpStream,
    sync::watch,
    time::{Instant, Sleep},
};
use tracing::debug;

use crate::{
    downstream::conn_state::Idle, downstream::parse_refusal::Rewrite, downstream::refusal,
    downstream::service::ConnService,
};

/// The socket as hyper sees it: first the bytes hyper had read but not parsed when it last
/// stopped, then the stream. Its shutdown is skipped while parking, and hyper's own answer
/// to a head it refused is replaced by the gateway's problem+json ([`Rewrite`]).
pub struct ParkIo {
    stream: TokioIo<TcpStream>,
    prefix: Bytes,
    idle: Arc<Idle>,
    rewrite: Rewrite,
}

impl hyper::rt::Read for ParkIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        let r = Pin::new(&mut this.stream).poll_read(cx, buf);
        this.idle.read_blocked.store(r.is_pending(), Relaxed);
        r
    }
}

impl hyper::rt::Write for ParkIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = this.rewrite.poll_write(Pin::new(&mut this.stream), cx, buf);
        this.idle.write_blocked(r.is_pending());
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = this
            .rewrite
            .poll_write_vectored(Pin::new(&mut this.stream), cx, bufs);
        this.idle.write_blocked(r.is_pending());
        r
    }

    fn is_write_vectored(&self) -> bool {
        hyper::rt::Write::is_write_vectored(&self.stream)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.idle.parking.load(Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

/// The client preface of HTTP/2 (RFC 9113, 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What every plain connection of one listener shares.
pub struct Plain {
    /// Serves HTTP/1.1, parked between requests.
    pub http1: http1::Builder,
    /// Serves everything else (HTTP/2 by prior knowledge).
    pub auto: Arc<auto::Builder<TokioExecutor>>,
    /// The listener's connection deadlines.
    pub deadlines: crate::downstream::watchdog::Deadlines,
    /// Counts parked connections.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Wakes busy connections that went idle, so that they park after a tick.
    pub sweep: Arc<Sweep>,
    /// Changes when the gateway stops.
    pub stop: watch::Receiver<bool>,
}

/// How long a connection that has served more than one request stays idle before it parks.
///
/// Parking right away costs a hyper connection set-up per request, about 6 % of the plain
/// route's throughput under load. A connection that has carried only one request (most idle
/// keep-alive connections) parks at once; one that is being reused parks only after it has
/// been idle for between one and two ticks of [`Sweep`], so a busy connection never does.
pub const SWEEP_TICK: Duration = Duration::from_millis(250);

/// An epoch no connection has seen (epochs wrap after 2^32 ticks, some 34 years).
const NEVER: u32 = u32::MAX;

/// A listener's clock of ticks, and the connections to wake at the next one.
#[derive(Default)]
pub struct Sweep {
    epoch: AtomicU32,
    waiting: std::sync::Mutex<Vec<std::task::Waker>>,
}

impl Sweep {
    fn epoch(&self) -> u32 {
        // Never `NEVER`: that value is skipped.
        self.epoch.load(Relaxed)
    }

    fn wake_me(&self, waker: &std::task::Waker) {
        let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        w.push(waker.clone());
    }

    /// Ticks every [`SWEEP_TICK`] until `stop` changes.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(SWEEP_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let next = self.epoch.load(Relaxed).wrapping_add(1);
            self.epoch
                .store(if next == NEVER { 0 } else { next }, Relaxed);
            let woken =
                std::mem::take(&mut *self.waiting.lock().unwrap_or_else(|p| p.into_inner()));
            for w in woken {
                w.wake();
            }
        }
    }
}

type Service<S> = http1::UpgradeableConnection<ParkIo, S>;

/// Resolves when the gateway stops, cheaply when polled often.
struct StopSignal {
    /// Waits for the stop.
    changed: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// `changed` has been polled: it keeps the task's waker registered until the gateway
    /// stops (one task, so its waker never changes).
    armed: bool,
    /// Tells whether `changed` is worth polling again.
    seen: watch::Receiver<bool>,
}

impl StopSignal {
    fn new(stop: &watch::Receiver<bool>) -> Self {
        let mut rx = stop.clone();
        StopSignal {
            // Unconstrained: a poll cut short by tokio's task budget would return Pending
            // without registering the waker, and an armed signal would then miss the stop.
            changed: Box::pin(tokio::task::unconstrained(async move {
                let _ = rx.changed().await;
            })),
            armed: false,
            seen: stop.clone(),
        }
    }

    /// Whether the gateway is stopping. Once armed, `changed` is polled again only when the
    /// watched value has changed or its sender is gone (an atomic load), not on every
    /// wake-up of a busy connection.
    fn poll(&mut self, cx: &mut Context<'_>) -> bool {
        if self.armed && matches!(self.seen.has_changed(), Ok(false)) {
            return false;
        }
        self.armed = true;
        self.changed.as_mut().poll(cx).is_ready()
    }
}

/// One plain connection, as its task. Written out as a state machine rather than an
/// `async fn` so that what a parked connection keeps is exactly these fields: about 300
/// bytes, with hyper's state boxed and present only while hyper runs.
pub struct PlainConnection<S: hyper::service::HttpService<Incoming>, G> {
    /// The socket while no hyper instance holds it.
    stream: Option<TcpStream>,
    /// The service while no hyper instance holds it.
    service: Option<S>,
    phase: Phase<S>,
    idle: Arc<Idle>,
    plain: Arc<Plain>,
    /// The deadline of the current phase: the first request (from the start), the next
    /// request's first bytes (keep-alive), or the head that began arriving.
    timer: Pin<Box<Sleep>>,
    /// Tells when the gateway stops.
    stopped: StopSignal,
    stopping: bool,
    /// Counted in `parked_connections`.
    parked: bool,
    /// Requests served by earlier hyper instances of this connection.
    served: u32,
    /// When hyper was last seen idle without parking: the sweep epoch, and the requests
    /// started then (`NEVER` epoch: not seen idle).
    idle_since: (u32, u32),
    /// The sweep epoch in which this connection last asked to be woken (or `NEVER`).
    sweep_asked: u32,
    /// The write stall (its start, coarse ms) the timer is set for.
    stall_armed: u64,
    _guard: G,
}

enum Phase<S: hyper::service::HttpService<Incoming>> {
    /// Waiting for bytes: the first ones (`fresh`, protocol not yet known) or the next
    /// request's.
    Waiting { fresh: bool },
    /// hyper serves HTTP/1.1.
    Http1(Pin<Box<Service<S>>>),
    /// The general server, for HTTP/2 by prior knowledge.
    Other(Pin<Box<dyn Future<Output = ()> + Send>>),
}

impl<S, G> PlainConnection<S, G>
where
    S: ConnService,
    G: Unpin,
{
    /// A connection just accepted. `idle` must be the one `service` reports to; `guard` is
    /// held for the connection's life.
    pub fn new(
        stream: TcpStream,
        service: S,
        idle: Arc<Idle>,
        plain: Arc<Plain>,
        guard: G,
    ) -> Self {
        let stopped = StopSignal::new(&plain.stop);
        Self {
            stream: Some(stream),
            service: Some(service),
            phase: Phase::Waiting { fresh: true },
            idle,
            timer: Box::pin(tokio::time::sleep(plain.deadlines.first_request)),
            plain,
            stopped,
            stopping: false,
            parked: false,
            served: 0,
            idle_since: (NEVER, 0),
            sweep_asked: NEVER,
            stall_armed: 0,
            _guard: guard,
        }
    }

    /// Leaves the parked count (if in it).
    fn unpark(&mut self) {
        if std::mem::take(&mut self.parked) {
            self.plain.metrics.parked_connections.fetch_sub(1, Relaxed);
        }
    }

    /// Waits for bytes; `Ready(false)` ends the connection.
    fn poll_wait(&mut self, cx: &mut Context<'_>, fresh: bool) -> Poll<bool> {
        if self.stopped.poll(cx) || self.idle.poll_evicted(cx) {
            return Poll::Ready(false);
        }
        if self.timer.as_mut().poll(cx).is_ready() {
            debug!(peer = %self.idle.peer, "nothing received in time; closing");
            self.plain.metrics.closed(crate::metrics::Closed::Deadline);
            // A fresh connection's first-request deadline (a parked one's keep-alive wait
            // is no one's fault).
            if fresh {
                refusal::deadline(&self.plain.metrics, self.idle.peer);
            }
            return Poll::Ready(false);
        }
        let Some(stream) = &self.stream else {
            return Poll::Ready(false);
        };
        if let Err(e) = ready!(stream.poll_read_ready(cx)) {
            debug!(peer = %self.idle.peer, error = %e, "waiting connection");
            return Poll::Ready(false);
        }
        if !fresh {
            // The next request began: its head is due within the head timeout, and the
            // connection is no longer the idlest to close under pressure.
            self.idle.quiet();
            self.timer
                .as_mut()
                .reset(Instant::now() + self.plain.deadlines.header_read);
            return Poll::Ready(true);
        }
        // Which protocol: anything that is not the start of the HTTP/2 preface is HTTP/1.
        let mut first = [0u8; H2_PREFACE.len()];
        let mut buf = ReadBuf::new(&mut first);
        let n = match ready!(stream.poll_peek(cx, &mut buf)) {
            Ok(0) | Err(_) => return Poll::Ready(false),
            Ok(n) => n,
        };
        if first[..n] != H2_PREFACE[..n] {
            return Poll::Ready(true);
        }
        let (Some(stream), Some(service)) = (self.stream.take(), self.service.take()) else {
            return Poll::Ready(false);
        };
        let plain = self.plain.clone();
        let idle = self.idle.clone();
        // Its first-request deadline still counts from the connection's start.
        idle.watch_from_start();
        self.phase = Phase::Other(Box::pin(async move {
            let deadlines = plain.deadlines;
            crate::downstream::watchdog::serve(
                TokioIo::new(stream),
                &plain.auto,
                service,
                plain.stop.clone(),
                idle,
                deadlines,
                &plain.metrics,
            )
            .await
        }));
        Poll::Ready(true)
    }

    fn start_http1(&mut self, prefix: Bytes) -> bool {
        self.unpark();
        let (Some(stream), Some(service)) = (self.stream.take(), self.service.take()) else {
            return false;
        };
        self.idle.reset();
        let io = ParkIo {
            stream: TokioIo::new(stream),
            prefix,
            idle: self.idle.clone(),
            rewrite: Rewrite::default(),
        };
        self.phase = Phase::Http1(Box::pin(
            self.plain
                .http1
                .serve_connection(io, service)
                .with_upgrades(),
        ));
        true
    }

    /// Drives hyper; `Ready(true)` means it stopped to park the connection.
    fn poll_http1(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        let Phase::Http1(conn) = &mut self.phase else {
            return Poll::Ready(false);
        };
        if !self.stopping && self.stopped.poll(cx) {
            // Ends politely: `Connection: close` on a response in flight.
            self.stopping = true;
            self.idle.parking.store(false, Relaxed);
            conn.as_mut().graceful_shutdown();
        }
        // Until its first request starts, a restarted hyper is held to the deadline of the
        // wait it came from (hyper's own head timer starts anew with each instance).
        if self.idle.started.load(Relaxed) == 0 {
            if self.timer.as_mut().poll(cx).is_ready() {
                debug!(peer = %self.idle.peer, "request head not received in time; closing");
                self.plain.metrics.closed(crate::metrics::Closed::Deadline);
                refusal::deadline(&self.plain.metrics, self.idle.peer);
                return Poll::Ready(false);
            }
            // A head still arriving may be closed to admit another connection.
            if self.idle.poll_evicted(cx) {
                return Poll::Ready(false);
            }
        }
        let mut result = conn.as_mut().poll(cx);
        if result.is_pending()
            && client_stalled(
                &self.idle,
                &mut self.timer,
                &mut self.stall_armed,
                self.plain.deadlines.stream_idle,
                cx,
            )
        {
            debug!(peer = %self.idle.peer, "the client took no response data in time; closing");
            self.plain.metrics.closed(crate::metrics::Closed::Stalled);
            return Poll::Ready(false);
        }
        if result.is_pending()
            && !self.stopping
            && !self.idle.parking.load(Relaxed)
            && self.idle.is_idle()
            && ready_to_park(
                self.served,
                &self.idle,
                &self.plain.sweep,
                &mut self.idle_since,
                &mut self.sweep_asked,
                cx,
            )
        {
            self.idle.parking.store(true, Relaxed);
            conn.as_mut().graceful_shutdown();
            result = conn.as_mut().poll(cx);
        }
        if let Err(e) = ready!(result) {
            debug!(peer = %self.idle.peer, error = %e, "connection ended");
            // This instance started for bytes that arrived: with no request started on it,
            // a head was pending.
            let head_pending = self.idle.started.load(Relaxed) == 0;
            refusal::ended_with(&self.plain.metrics, self.idle.peer, &e, head_pending);
            return Poll::Ready(false);
        }
        self.park_after_http1()
    }

    /// hyper stopped: park the connection, or serve at once a request already arriving,
    /// unless it ended (closed by the client or by hyper, or upgraded).
    fn park_after_http1(&mut self) -> Poll<bool> {
        if self.stopping || !self.idle.parking.load(Relaxed) {
            return Poll::Ready(false); // closed by the client or by hyper, or upgraded
        }
        let Phase::Http1(conn) =
            std::mem::replace(&mut self.phase, Phase::Waiting { fresh: false })
        else {
            return Poll::Ready(false);
        };
        let Some(parts) = Pin::into_inner(conn).into_parts() else {
            return Poll::Ready(false);
        };
        self.stream = Some(parts.io.stream.into_inner());
        self.service = Some(parts.service);
        self.served = self.served.saturating_add(self.idle.started.load(Relaxed));
        self.idle_since = (NEVER, 0);
        // Even empty, `read_buf` shares hyper's whole read buffer: copy what it holds.
        if !parts.read_buf.is_empty() {
            // Part of the next request had arrived: serve it now, its head due within the
            // wait from now.
            let prefix = Bytes::copy_from_slice(&parts.read_buf);
            drop(parts.read_buf);
            self.timer
                .as_mut()
                .reset(Instant::now() + self.plain.deadlines.header_read);
            return Poll::Ready(self.start_http1(prefix));
        }
        drop(parts.read_buf);
        self.timer
            .as_mut()
            .reset(Instant::now() + self.plain.deadlines.keepalive);
        self.idle.park();
        self.plain.metrics.parked_connections.fetch_add(1, Relaxed);
        self.parked = true;
        Poll::Ready(true)
    }
}

/// Whether an idle HTTP/1.1 connection should park now: at once after its first request;
/// once reused, when it has been idle through a whole sweep tick (`idle_since` notes when it
/// went idle; the sweep is asked to wake it at most once a tick).
fn ready_to_park(
    served: u32,
    idle: &Idle,
    sweep: &Sweep,
    idle_since: &mut (u32, u32),
    sweep_asked: &mut u32,
    cx: &mut Context<'_>,
) -> bool {
    let started = idle.started.load(Relaxed);
    if served.saturating_add(started) <= 1 {
        return true;
    }
    let epoch = sweep.epoch();
    let park = match *idle_since {
        (since, s) if since != NEVER && s == started => epoch.wrapping_sub(since) >= 2,
        _ => {
            *idle_since = (epoch, started);
            false
        }
    };
    if !park && *sweep_asked != epoch {
        sweep.wake_me(cx.waker());
        *sweep_asked = epoch;
    }
    park
}

/// Whether a write to the client has been blocked for `stream_idle` (it does not read its
/// response); if for less, `timer` (set for the stall that began at `armed`) wakes the task
/// when it would be.
fn client_stalled(
    idle: &Idle,
    timer: &mut Pin<Box<Sleep>>,
    armed: &mut u64,
    stream_idle: Duration,
    cx: &mut Context<'_>,
) -> bool {
    let since = idle.write_stalled_since.load(Relaxed);
    if since == 0 || idle.started.load(Relaxed) == 0 {
        return false;
    }
    let due = since.saturating_add(stream_idle.as_millis() as u64);
    let now = crate::clock::monotonic_ms();
    if now >= due {
        return true;
    }
    if *armed != since {
        *armed = since;
        timer
            .as_mut()
            .reset(Instant::now() + Duration::from_millis(due - now));
    }
    // The timer firing is the deadline, whatever the coarse clock (it may lag a tick) says.
    timer.as_mut().poll(cx).is_ready()
}

impl<S: hyper::service::HttpService<Incoming>, G> Drop for PlainConnection<S, G> {
    fn drop(&mut self) {
        // An upgraded socket lives on in its tunnel (which keeps the state alive): nothing
        // is left here to close for a newcomer.
        self.idle.ended();
        if self.parked {
            self.plain.metrics.parked_connections.fetch_sub(1, Relaxed);
        }
    }
}

impl<S, G> Future for PlainConnection<S, G>
where
    S: ConnService,
    G: Unpin,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            match &mut this.phase {
                Phase::Waiting { fresh } => {
                    let fresh = *fresh;
                    if !ready!(this.poll_wait(cx, fresh)) {
                        return Poll::Ready(());
                    }
                    if matches!(this.phase, Phase::Waiting { .. })
                        && !this.start_http1(Bytes::new())
                    {
                        return Poll::Ready(());
                    }
                }
                Phase::Http1(_) => {
                    if !ready!(this.poll_http1(cx)) {
                        return Poll::Ready(());
                    }
                }
                Phase::Other(fut) => return fut.as_mut().poll(cx),
            }
        }
    }
}
