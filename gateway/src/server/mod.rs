//! Running the gateway: listeners, the admin API (`admin.rs`) and its dashboard page
//! (`dashboard/`), reloads (`reload.rs`) and graceful shutdown.

mod admin;
mod dashboard;
mod reload;

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{Context as _, Result};
use arc_swap::ArcSwap;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tracing::info;

use sluice_util::control::{stamp, Asked, ControlSignals, Stamp};

use self::reload::{reload, reload_tls, TlsListener};
use crate::{
    downstream::listener::{self, TlsState},
    generation::{self, Generation},
    load::LoadMeter,
    metrics::Metrics,
    pipeline::Runtime,
};

/// Shared state of a running gateway.
pub struct Gateway {
    runtime: Arc<ArcSwap<Runtime>>,
    metrics: Arc<Metrics>,
    load: Arc<LoadMeter>,
    draining: AtomicBool,
    /// The last minutes of per-route rates, for the dashboard.
    history: std::sync::Mutex<sluice_util::dashboard::History>,
}

/// Runs the gateway with the config at `path` until SIGTERM or SIGINT, on `workers` worker
/// threads (what its load report counts as its CPUs, at most).
pub async fn run(path: PathBuf, workers: usize) -> Result<()> {
    // Stamped before it is read: a change made while the gateway starts is reloaded.
    let seen = stamp(&path);
    let Generation { runtime, tls } = generation::load(&path, 1, None)?;
    runtime.start();
    let metrics = Arc::new(Metrics::new());
    metrics.analytics.configure(&runtime.config.analytics);
    metrics.shield.configure(
        &runtime.config.shield,
        runtime.policies.client_ip.trusted_proxies(),
    );
    let load = Arc::new(LoadMeter::new(workers));
    tokio::spawn(load.clone().run(metrics.clone()));
    let gw = Arc::new(Gateway {
        runtime: Arc::new(ArcSwap::from_pointee(runtime)),
        metrics,
        load,
        draining: AtomicBool::new(false),
        history: dashboard::history(),
    });
    tokio::spawn(dashboard::sample(gw.clone()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (accept_loops, mut tls_listeners) = start_listeners(&gw, tls, &stop_rx)?;
    let admin_addr = gw.runtime.load().config.admin.listen;
    let admin = TcpListener::bind(admin_addr)
        .await
        .with_context(|| format!("admin listener on {admin_addr}"))?;
    info!(address = %admin.local_addr().unwrap_or(admin_addr), "admin API");
    tokio::spawn(admin::serve_admin(admin, gw.clone()));
    serve_until_stopped(&path, seen, &gw, &mut tls_listeners).await?;
    shut_down(&gw, stop_tx, accept_loops).await;
    Ok(())
}

/// Binds every listener and starts its accept loop; TLS ones get a config that reloads swap.
fn start_listeners(
    gw: &Arc<Gateway>,
    tls: Vec<Option<Arc<rustls::ServerConfig>>>,
    stop: &watch::Receiver<bool>,
) -> Result<(Vec<JoinHandle<()>>, Vec<TlsListener>)> {
    let rt = gw.runtime.load();
    let mut accept_loops = Vec::new();
    let mut tls_listeners = Vec::new();
    for ((i, l), sc) in rt.config.listeners.iter().enumerate().zip(tls) {
        let state = match (sc, &l.tls) {
            (Some(sc), Some(files)) => {
                let state: TlsState = Arc::new(ArcSwap::new(sc));
                tls_listeners.push(TlsListener::new(i, state.clone(), files));
                Some(state)
            }
            _ => None,
        };
        let socket =
            listener::bind(l).with_context(|| format!("listener {} on {}", l.name, l.address))?;
        let bound = listener::local(&socket).unwrap_or(l.address);
        info!(listener = %l.name, address = %bound, "listening");
        accept_loops.push(tokio::spawn(listener::serve(
            socket,
            l.clone(),
            state,
            gw.runtime.clone(),
            gw.metrics.clone(),
            stop.clone(),
        )));
    }
    Ok((accept_loops, tls_listeners))
}

/// Reloads on SIGHUP and on file changes, until SIGTERM or SIGINT.
async fn serve_until_stopped(
    path: &std::path::Path,
    mut seen: Stamp,
    gw: &Gateway,
    tls_listeners: &mut [TlsListener],
) -> Result<()> {
    let mut signals = ControlSignals::new().context("signal handlers")?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            asked = signals.recv() => {
                if asked == Asked::Stop {
                    return Ok(());
                }
                seen = stamp(path);
                reload(path, gw, tls_listeners, "SIGHUP");
            }
            _ = tick.tick() => {
                let now = stamp(path);
                if now != seen {
                    seen = now;
                    reload(path, gw, tls_listeners, "file change");
                }
                reload_tls(gw, tls_listeners);
            }
        }
    }
}

/// 1. Readiness fails, so the L4 tier sends no new flows. 2. Listeners close.
/// 3. In-flight requests finish, up to the deadline; connections end politely
///    (HTTP/2 GOAWAY, HTTP/1.1 `Connection: close`).
async fn shut_down(gw: &Gateway, stop: watch::Sender<bool>, accept_loops: Vec<JoinHandle<()>>) {
    gw.draining.store(true, Ordering::Relaxed);
    let delay = Duration::from_millis(gw.runtime.load().config.admin.drain_delay_ms);
    if !delay.is_zero() {
        info!(
            delay_ms = delay.as_millis() as u64,
            "readiness fails; listeners close after the drain delay"
        );
        tokio::time::sleep(delay).await;
    }
    let _ = stop.send(true);
    for a in accept_loops {
        let _ = a.await;
    }
    let deadline = Duration::from_millis(gw.runtime.load().config.admin.shutdown_deadline_ms);
    info!(deadline_ms = deadline.as_millis() as u64, "shutting down");
    let started = std::time::Instant::now();
    while gw.metrics.active_connections.load(Ordering::Relaxed) > 0 {
        if started.elapsed() >= deadline {
            info!("shutdown deadline reached; closing the remaining connections");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
