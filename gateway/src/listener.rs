//! Listener: binds (optionally with `IP_FREEBIND`, for a VIP not yet on `lo`), accepts within
//! the connection limit, and serves HTTP/1.1 and h2c (prior knowledge) on each connection
//! with the head-size, header-count and header-read-timeout limits. Plain HTTP/1.1
//! connections are parked between requests ([`crate::park`]).

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
    net::{TcpListener, TcpSocket},
    sync::{watch, Semaphore},
};
use tracing::{debug, warn};

use crate::{
    config::Listener,
    metrics::Metrics,
    park::{self, Idle, Plain},
    proxy::{self, Conn, Runtime},
};

/// Binds a listener socket.
pub fn bind(l: &Listener) -> std::io::Result<TcpListener> {
    let socket = if l.address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if l.freebind {
        let one: libc::c_int = 1;
        let (level, opt) = if l.address.is_ipv4() {
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
    socket.bind(l.address)?;
    socket.listen(1024)
}

/// What serves one client connection's requests: the gateway's per-connection service.
pub trait ConnService:
    hyper::service::Service<
        Request<Incoming>,
        Response = hyper::Response<crate::Body>,
        Future: Send + 'static,
        Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    > + Unpin
    + Send
    + 'static
{
}

impl<S> ConnService for S where
    S: hyper::service::Service<
            Request<Incoming>,
            Response = hyper::Response<crate::Body>,
            Future: Send + 'static,
            Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        > + Unpin
        + Send
        + 'static
{
}

/// The TLS config new connections of a listener get; swapped when files change.
pub type TlsState = Arc<ArcSwap<rustls::ServerConfig>>;

/// The request header fields hyper's HTTP/1 server accepts when not told otherwise.
const HYPER_MAX_HEADERS: usize = 100;

/// Accepts and serves connections until `stop` changes; each connection then ends politely
/// (GOAWAY, `Connection: close`) once its in-flight requests are done.
pub async fn serve(
    listener: TcpListener,
    config: Listener,
    tls: Option<TlsState>,
    runtime: Arc<ArcSwap<Runtime>>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(config.header_read_timeout_ms))
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
        .max_header_list_size(config.max_header_bytes as u32);
    let builder = Arc::new(builder);
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(config.header_read_timeout_ms))
        .max_buf_size(config.max_header_bytes.max(8192));
    if config.max_headers != HYPER_MAX_HEADERS {
        h1.max_headers(config.max_headers);
    }
    let handshake_limit = Duration::from_millis(config.header_read_timeout_ms);
    let plain = Arc::new(Plain {
        http1: h1,
        auto: builder.clone(),
        wait: handshake_limit,
        metrics: metrics.clone(),
        sweep: Arc::new(park::Sweep::default()),
        stop: stop.clone(),
    });
    tokio::spawn(plain.sweep.clone().run(stop.clone()));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "accept");
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "connection limit reached; closing");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            peer,
            tls: tls.is_some(),
            max_body: config.max_body_bytes,
        };
        let runtime = runtime.clone();
        let service_metrics = metrics.clone();
        let idle = Arc::new(Idle::new(peer));
        let service_idle = idle.clone();
        let serve_request = move |req: Request<Incoming>| {
            // The generation in force now serves this request to the end.
            let rt = runtime.load_full();
            let metrics = service_metrics.clone();
            let in_flight = service_idle.start(&req);
            async move {
                let response = proxy::handle(rt, metrics, conn, req).await;
                drop(in_flight);
                Ok::<_, std::convert::Infallible>(response)
            }
        };
        let guard = ConnGuard {
            metrics: metrics.clone(),
            _permit: permit,
        };
        guard
            .metrics
            .active_connections
            .fetch_add(1, Ordering::Relaxed);
        let (builder, stop) = (builder.clone(), stop.clone());
        // Two task shapes, so that a plain connection's task does not carry the size of a
        // TLS one (a task's future is allocated whole for the connection's lifetime).
        match &tls {
            None => {
                // hyper keeps one slot for the request future in each connection instance: a
                // plain connection's instance lives only while it is busy (see park.rs), so
                // the future goes there as it is, with no allocation per request while the
                // connection stays busy.
                tokio::spawn(park::Connection::new(
                    stream,
                    hyper::service::service_fn(serve_request),
                    idle,
                    plain.clone(),
                    guard,
                ));
            }
            Some(state) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(state.load_full());
                // A TLS connection keeps its hyper instance for life, idle or not: the request
                // future (kilobytes) is boxed per request rather than held in each one.
                let service = hyper::service::service_fn(move |req| Box::pin(serve_request(req)));
                tokio::spawn(async move {
                    let _guard = guard;
                    match tokio::time::timeout(handshake_limit, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => {
                            serve_conn(TokioIo::new(s), &builder, service, stop, peer).await
                        }
                        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

/// Counts a connection while it lives and holds its slot.
struct ConnGuard {
    metrics: Arc<Metrics>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.metrics
            .active_connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one connection; when `stop` changes it ends politely (HTTP/2 GOAWAY, HTTP/1.1
/// `Connection: close` on the response in flight) and waits for in-flight requests.
pub(crate) async fn serve_conn<I, S>(
    io: I,
    builder: &auto::Builder<TokioExecutor>,
    service: S,
    mut stop: watch::Receiver<bool>,
    peer: SocketAddr,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: ConnService,
{
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        debug!(%peer, error = %e, "connection ended");
    }
}

/// The address a listener actually bound (for port 0 in tests).
pub fn local(l: &TcpListener) -> Option<SocketAddr> {
    l.local_addr().ok()
}
