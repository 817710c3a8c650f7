//! Listener: binds (optionally with `IP_FREEBIND`, for a VIP not yet on `lo`), admits
//! connections within the connection limits ([`crate::downstream::watchdog::Admission`]), and serves
//! HTTP/1.1 and h2c (prior knowledge) on each with the head-size and header-count limits and
//! a deadline on every phase. Plain HTTP/1.1 connections are parked between requests
//! ([`crate::downstream::park`]); TLS and HTTP/2 ones are watched by [`crate::downstream::watchdog::serve`].

use std::{
    net::SocketAddr,
    os::fd::AsRawFd,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use arc_swap::ArcSwap;
use hyper::server::conn::http1;
use hyper::{body::Incoming, Request};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    net::{TcpListener, TcpSocket, TcpStream},
    sync::watch,
};
use tracing::{debug, warn};

use crate::{
    config::Listener,
    downstream::conn_state::Idle,
    downstream::park::{self, Plain},
    downstream::parse_refusal::ProblemIo,
    downstream::refusal,
    downstream::watchdog::{Admission, Admit, Admitted, Deadlines, Tracked},
    metrics::{Closed, Metrics},
    pipeline::tunnel::ConnHold,
    pipeline::{self, Conn, Runtime},
};

/// Binds a socket of listener `l` to `address` (`l.address`, or the port it was given when
/// that was 0) and listens. `reuse_port`: one of several sockets on the address, one per
/// worker (`SO_REUSEPORT`; the kernel spreads new connections over them).
pub fn bind(l: &Listener, address: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    bound(l, address, reuse_port)?.listen(1024)
}

/// Fails if anything already listens on `address`, as a bind of one socket would: a group
/// of `SO_REUSEPORT` sockets would otherwise share it with another process of the same user
/// (a second gateway, or one still draining), each taking part of the connections.
pub fn check_free(l: &Listener, address: SocketAddr) -> std::io::Result<()> {
    bound(l, address, false).map(drop)
}

/// A socket of listener `l` bound to `address`, not yet listening.
fn bound(l: &Listener, address: SocketAddr, reuse_port: bool) -> std::io::Result<TcpSocket> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    if l.freebind {
        let one: libc::c_int = 1;
        let (level, opt) = if address.is_ipv4() {
            (libc::IPPROTO_IP, libc::IP_FREEBIND)
        } else {
            (libc::IPPROTO_IPV6, libc::IPV6_FREEBIND)
        };
        // SAFETY: setting an int option on a socket we own.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                level,
                opt,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    socket.bind(address)?;
    Ok(socket)
}

/// The TLS config new connections of a listener get; swapped when files change.
pub type TlsState = Arc<ArcSwap<rustls::ServerConfig>>;

/// The request header fields hyper's HTTP/1 server accepts when not told otherwise.
const HYPER_MAX_HEADERS: usize = 100;

/// hyper's connection builders for a listener: the auto (HTTP/1.1 and HTTP/2) one for TLS
/// and HTTP/2 connections, and the HTTP/1.1 one for parked plain connections.
fn http_builders(
    config: &Listener,
    deadlines: &Deadlines,
) -> (Arc<auto::Builder<TokioExecutor>>, http1::Builder) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Over TLS, hyper's head timer starts when the connection starts waiting for a request,
    // so it also bounds keep-alive: it gets the longer of the two, and the watchdog holds
    // the connection to its keep-alive deadline.
    let tls_head = deadlines.header_read.max(deadlines.keepalive);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(tls_head)
        .max_buf_size(config.max_header_bytes.max(8192));
    // hyper's own limit is 100 fields. Given any limit, even 100, hyper fills that many
    // header slots before every parse (on the heap above 100); without one it parses into
    // uninitialized slots. So the limit is set only when it differs.
    if config.max_headers != HYPER_MAX_HEADERS {
        builder.http1().max_headers(config.max_headers);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX));
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(deadlines.header_read)
        .max_buf_size(config.max_header_bytes.max(8192));
    if config.max_headers != HYPER_MAX_HEADERS {
        h1.max_headers(config.max_headers);
    }
    (Arc::new(builder), h1)
}

/// Accepts and serves connections until `stop` changes; each connection then ends politely
/// (GOAWAY, `Connection: close`) once its in-flight requests are done. `admission` is the
/// listener's, shared by its sockets on every worker (`max_connections` counts them all).
pub async fn serve(
    listener: TcpListener,
    config: Listener,
    tls: Option<TlsState>,
    runtime: Arc<ArcSwap<Runtime>>,
    metrics: Arc<Metrics>,
    admission: Arc<Admission>,
    mut stop: watch::Receiver<bool>,
) {
    let deadlines = Deadlines::of(&config);
    let (builder, h1) = http_builders(&config, &deadlines);
    let plain = Arc::new(Plain {
        http1: h1,
        auto: builder.clone(),
        deadlines,
        metrics: metrics.clone(),
        sweep: Arc::new(park::Sweep::default()),
        stop: stop.clone(),
    });
    tokio::spawn(plain.sweep.clone().run(stop.clone()));
    let shared = Arc::new(Accepted {
        conn: Conn {
            peer: SocketAddr::from(([0, 0, 0, 0], 0)),
            tls: tls.is_some(),
            max_body: config.max_body_bytes,
            body_idle: Duration::from_millis(config.body_read_timeout_ms),
            max_headers: config.max_headers,
            tunnel_idle: deadlines.stream_idle,
            underscores: config.underscores_in_headers,
            paths: crate::pipeline::path::PathRules {
                merge_slashes: config.merge_slashes,
                escaped_slashes: config.escaped_slashes,
                parameters: config.path_parameters,
            },
        },
        handshake: Duration::from_millis(config.tls_handshake_timeout_ms),
        deadlines,
        tls,
        runtime,
        metrics,
        builder,
        plain,
        stop: stop.clone(),
        admission,
    });
    let mut backoff = sluice_util::accept::AcceptBackoff::default();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                shared.metrics.accepted();
                a
            }
            Err(e) => {
                if let Some(failures) = backoff.failed(&e).await {
                    warn!(listener = %config.name, error = %e, failures, "accept failed; pausing");
                }
                continue;
            }
        };
        let idle = Arc::new(Idle::new(peer));
        // Admitted at once while there is room; a full listener closes an idle connection
        // first, and the newcomer waits for its slot in a task of its own.
        match shared.admission.admit(peer, &idle) {
            Admit::Now(admitted) => shared.start(stream, idle, admitted),
            Admit::Later(pending) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Some(admitted) = pending.ready().await {
                        shared.start(stream, idle, admitted);
                    }
                });
            }
            Admit::Refused => drop(stream),
        }
    }
}

/// What every accepted connection of a listener shares.
struct Accepted {
    /// The listener's facts; `peer` is set per connection.
    conn: Conn,
    handshake: Duration,
    deadlines: Deadlines,
    tls: Option<TlsState>,
    runtime: Arc<ArcSwap<Runtime>>,
    metrics: Arc<Metrics>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    plain: Arc<Plain>,
    stop: watch::Receiver<bool>,
    admission: Arc<Admission>,
}

impl Accepted {
    /// Serves an admitted connection in a task of its own.
    fn start(&self, stream: TcpStream, idle: Arc<Idle>, admitted: Admitted) {
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            peer: idle.peer(),
            ..self.conn
        };
        let guard = Arc::new(ConnGuard {
            metrics: self.metrics.clone(),
            _admitted: admitted,
        });
        guard
            .metrics
            .active_connections
            .fetch_add(1, Ordering::Relaxed);
        let runtime = self.runtime.clone();
        let service_metrics = self.metrics.clone();
        let service_idle = idle.clone();
        let hold = ConnHold(guard.clone());
        let serve_request = move |mut req: Request<Incoming>| {
            // The generation in force now serves this request to the end.
            let rt = runtime.load_full();
            let metrics = service_metrics.clone();
            let in_flight = service_idle.start(&req);
            if service_idle.upgrade_asked() {
                // An upgrade's tunnel outlives hyper's connection: it keeps the slot.
                req.extensions_mut().insert(hold.clone());
            }
            async move {
                let response = pipeline::handle(rt, metrics, conn, req).await;
                // A watched connection stays busy until the response body ends.
                let response = if in_flight.is_watched() {
                    Tracked::wrap(response, in_flight)
                } else {
                    drop(in_flight);
                    response
                };
                Ok::<_, std::convert::Infallible>(response)
            }
        };
        // Two task shapes, so that a plain connection's task does not carry the size of a
        // TLS one (a task's future is allocated whole for the connection's lifetime).
        match &self.tls {
            None => {
                // hyper keeps one slot for the request future in each connection instance: a
                // plain connection's instance lives only while it is busy (see park.rs), so
                // the future goes there as it is, with no allocation per request while the
                // connection stays busy.
                tokio::spawn(park::PlainConnection::new(
                    stream,
                    hyper::service::service_fn(serve_request),
                    idle,
                    self.plain.clone(),
                    guard,
                ));
            }
            Some(state) => self.start_tls(state, stream, idle, guard, serve_request),
        }
    }

    /// Serves a TLS connection: the handshake within its deadline (or until the connection
    /// is evicted), then HTTP/1.1 or HTTP/2 under the watchdog.
    fn start_tls<F, R>(
        &self,
        state: &TlsState,
        stream: TcpStream,
        idle: Arc<Idle>,
        guard: Arc<ConnGuard>,
        serve_request: F,
    ) where
        F: Fn(Request<Incoming>) -> R + Send + Sync + Unpin + 'static,
        R: std::future::Future<
                Output = Result<hyper::Response<crate::Body>, std::convert::Infallible>,
            > + Send
            + 'static,
    {
        let acceptor = tokio_rustls::TlsAcceptor::from(state.load_full());
        // A TLS connection keeps its hyper instance for life, idle or not: the request
        // future (kilobytes) is boxed per request rather than held in each one.
        let service = hyper::service::service_fn(move |req| Box::pin(serve_request(req)));
        let (builder, stop) = (self.builder.clone(), self.stop.clone());
        let (handshake, deadlines) = (self.handshake, self.deadlines);
        tokio::spawn(async move {
            let peer = idle.peer();
            let evicted = std::future::poll_fn(|cx| {
                if idle.poll_evicted(cx) {
                    std::task::Poll::Ready(())
                } else {
                    std::task::Poll::Pending
                }
            });
            let handshake = tokio::time::timeout(handshake, acceptor.accept(stream));
            let stream = tokio::select! {
                r = handshake => r,
                _ = evicted => return,
            };
            match stream {
                Ok(Ok(s)) => {
                    // The first-request deadline counts from the handshake's end.
                    idle.watch();
                    let metrics = guard.metrics.clone();
                    crate::downstream::watchdog::serve(
                        ProblemIo::new(TokioIo::new(s)),
                        &builder,
                        service,
                        stop,
                        idle,
                        deadlines,
                        &metrics,
                    )
                    .await
                }
                Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => {
                    debug!(%peer, "TLS handshake timed out");
                    guard.metrics.closed(Closed::Deadline);
                    refusal::deadline(&guard.metrics, peer);
                }
            }
            drop(guard);
        });
    }
}

/// Counts a connection while it lives and holds its admission.
struct ConnGuard {
    metrics: Arc<Metrics>,
    _admitted: Admitted,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.metrics
            .active_connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}
