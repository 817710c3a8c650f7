//! Running the gateway: listeners (on the main thread, or on worker threads: `workers.rs`),
//! the admin API (`admin.rs`) and its dashboard page (`dashboard/`), reloads (`reload.rs`)
//! and graceful shutdown.

mod admin;
mod dashboard;
mod reload;
mod workers;

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

use sluice_util::control::{Asked, ControlSignals, FileWatch, WATCH_INTERVAL};

use self::reload::{reload, reload_tls, TlsListener};
use crate::{
    downstream::{
        listener::{self, TlsState},
        watchdog::Admission,
    },
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

/// Runs the gateway with the config at `path` until SIGTERM or SIGINT, with `workers`
/// workers (what its load report counts as its CPUs, at most). One worker serves on the
/// calling thread's runtime (which must be a current-thread one); more get a thread each.
pub async fn run(path: PathBuf, workers: usize) -> Result<()> {
    let workers = workers.max(1);
    // Before any pool is built: pools keep a shard per worker thread.
    let runtimes = workers::Runtimes::build(workers)?;
    // Stamped before it is read: a change made while the gateway starts is reloaded.
    let mut watch = FileWatch::new(&path);
    let Generation { runtime, tls } = generation::load(&path, 1, None)?;
    watch.also(read_with(&runtime.config));
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
    let (serving, mut tls_listeners) = start_listeners(&gw, tls, &stop_rx, runtimes, workers)?;
    let admin_addr = gw.runtime.load().config.admin.listen;
    let admin = TcpListener::bind(admin_addr)
        .await
        .with_context(|| format!("admin listener on {admin_addr}"))?;
    info!(address = %admin.local_addr().unwrap_or(admin_addr), "admin API");
    tokio::spawn(admin::serve_admin(admin, gw.clone()));
    serve_until_stopped(&path, watch, &gw, &mut tls_listeners).await?;
    shut_down(&gw, stop_tx, serving).await;
    Ok(())
}

/// Where the listeners' accept loops run.
enum Serving {
    /// On this runtime (one worker).
    Here(Vec<JoinHandle<()>>),
    /// On worker threads.
    Workers(workers::Workers),
}

/// Binds every listener (a socket per worker) and starts its accept loops; TLS ones get a
/// config that reloads swap.
fn start_listeners(
    gw: &Arc<Gateway>,
    tls: Vec<Option<Arc<rustls::ServerConfig>>>,
    stop: &watch::Receiver<bool>,
    runtimes: workers::Runtimes,
    workers: usize,
) -> Result<(Serving, Vec<TlsListener>)> {
    let rt = gw.runtime.load();
    let mut here = Vec::new();
    let mut per_worker: Vec<Vec<workers::Socket>> = (0..workers).map(|_| Vec::new()).collect();
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
        let context = || format!("listener {} on {}", l.name, l.address);
        let admission = Admission::new(l, gw.metrics.clone());
        if workers > 1 && l.address.port() != 0 {
            listener::check_free(l, l.address).with_context(context)?;
        }
        let first = listener::bind(l, l.address, workers > 1).with_context(context)?;
        // The port the others bind (the one the system gave for port 0).
        let address = first.local_addr().with_context(context)?;
        info!(listener = %l.name, %address, workers, "listening");
        if workers == 1 {
            here.push(tokio::spawn(listener::serve(
                first,
                l.clone(),
                state,
                gw.runtime.clone(),
                gw.metrics.clone(),
                admission,
                stop.clone(),
            )));
            continue;
        }
        // The others on the port the first got (port 0 in tests).
        let mut socket = Some(first);
        for sockets in per_worker.iter_mut() {
            let listening = match socket.take() {
                Some(s) => s,
                None => listener::bind(l, address, true).with_context(context)?,
            };
            sockets.push(workers::Socket {
                listener: listening.into_std().with_context(context)?,
                config: l.clone(),
                tls: state.clone(),
                admission: admission.clone(),
            });
        }
    }
    let serving = if workers == 1 {
        Serving::Here(here)
    } else {
        Serving::Workers(workers::Workers::start(
            runtimes,
            per_worker,
            &gw.runtime,
            &gw.metrics,
            stop,
        )?)
    };
    Ok((serving, tls_listeners))
}

/// The files the config in force reads besides itself, which a change to reloads as a
/// change to the config does: the admin token file (certificates are watched per listener,
/// and swapped without a reload).
fn read_with(config: &crate::config::Config) -> Vec<PathBuf> {
    config.admin.token_file.iter().cloned().collect()
}

/// Reloads on SIGHUP and on changes to the config file or the files it reads, until
/// SIGTERM or SIGINT.
async fn serve_until_stopped(
    path: &std::path::Path,
    mut watch: FileWatch,
    gw: &Gateway,
    tls_listeners: &mut [TlsListener],
) -> Result<()> {
    let mut signals = ControlSignals::new().context("signal handlers")?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut look = tokio::time::interval(WATCH_INTERVAL);
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            asked = signals.recv() => {
                if asked == Asked::Stop {
                    return Ok(());
                }
                watch.reading(path);
                reload(path, gw, tls_listeners, "SIGHUP");
                watch.also(read_with(&gw.runtime.load().config));
            }
            _ = look.tick() => {
                if watch.settled_change(path) {
                    reload(path, gw, tls_listeners, "file change");
                    watch.also(read_with(&gw.runtime.load().config));
                }
            }
            _ = tick.tick() => reload_tls(gw, tls_listeners),
        }
    }
}

/// 1. Readiness fails, so the L4 tier sends no new flows. 2. Listeners close.
/// 3. In-flight requests finish, up to the deadline; connections end politely
///    (HTTP/2 GOAWAY, HTTP/1.1 `Connection: close`).
async fn shut_down(gw: &Gateway, stop: watch::Sender<bool>, mut serving: Serving) {
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
    match &mut serving {
        Serving::Here(accept_loops) => {
            for a in accept_loops.drain(..) {
                let _ = a.await;
            }
        }
        Serving::Workers(w) => w.stopped_accepting().await,
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
    if let Serving::Workers(w) = serving {
        w.exit();
    }
}
