//! Listener: binds (optionally with `IP_FREEBIND`, for a VIP not yet on `lo`), accepts within
//! the connection limit, and serves HTTP/1.1 and h2c (prior knowledge) on each connection
//! with the head-size, header-count and header-read-timeout limits.

use std::{
    net::SocketAddr,
    os::fd::AsRawFd,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use arc_swap::ArcSwap;
use hyper::{body::Incoming, Request};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::{
    net::{TcpListener, TcpSocket},
    sync::{watch, Semaphore},
};
use tracing::{debug, warn};

use crate::{
    config::Listener,
    metrics::Metrics,
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

/// Accepts and serves connections until `stop` changes. Connections are registered with
/// `graceful`, which ends them politely at shutdown (GOAWAY, `Connection: close`).
pub async fn serve(
    listener: TcpListener,
    config: Listener,
    runtime: Arc<ArcSwap<Runtime>>,
    metrics: Arc<Metrics>,
    graceful: Arc<GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let local = listener.local_addr().unwrap_or(config.address);
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
            local: stream.local_addr().unwrap_or(local),
            tls: false,
            max_body: config.max_body_bytes,
        };
        let runtime = runtime.clone();
        let service_metrics = metrics.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            // The generation in force now serves this request to the end.
            let rt = runtime.load_full();
            let metrics = service_metrics.clone();
            async move { Ok::<_, std::convert::Infallible>(proxy::handle(rt, metrics, conn, req).await) }
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_millis(config.header_read_timeout_ms))
            .max_buf_size(config.max_header_bytes.max(8192))
            .max_headers(config.max_headers);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(config.max_header_bytes as u32);
        // Watched here, not inside the task, so the task holds no handle on `graceful` and
        // shutdown can take it back.
        let conn = graceful.watch(
            builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned(),
        );
        let metrics = metrics.clone();
        tokio::spawn(async move {
            metrics.active_connections.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "connection ended");
            }
            metrics.active_connections.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
}

/// The address a listener actually bound (for port 0 in tests).
pub fn local(l: &TcpListener) -> Option<SocketAddr> {
    l.local_addr().ok()
}
