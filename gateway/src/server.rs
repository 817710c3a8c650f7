//! Running the gateway: listeners, the admin API, reloads and graceful shutdown.

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};
use arc_swap::ArcSwap;
use hyper::{body::Incoming, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::{
    net::TcpListener,
    signal::unix::{signal, SignalKind},
    sync::watch,
};
use tracing::{error, info};

use crate::{
    config::{self, Config},
    downstream::listener::{self, TlsState},
    metrics::Metrics,
    pipeline::problem::{full, problem},
    pipeline::proxy::Runtime,
    Body,
};

/// Shared state of a running gateway.
pub struct Gateway {
    runtime: Arc<ArcSwap<Runtime>>,
    metrics: Arc<Metrics>,
    draining: AtomicBool,
}

impl Gateway {
    fn admin(&self, req: &Request<Incoming>) -> Response<Body> {
        let text = |status: StatusCode, body: &str| {
            let mut r = Response::new(full(body.to_string()));
            *r.status_mut() = status;
            r
        };
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
            (&Method::GET, "/readyz") => {
                if self.draining.load(Ordering::Relaxed) {
                    problem(StatusCode::SERVICE_UNAVAILABLE, "draining")
                } else {
                    text(StatusCode::OK, "ready\n")
                }
            }
            (&Method::GET, "/metrics") => {
                let mut body = self.metrics.render();
                let rt = self.runtime.load();
                upstream_metrics(&mut body, &rt);
                policy_metrics(&mut body, &rt);
                self.metrics.analytics.render(&mut body);
                let mut r = text(StatusCode::OK, &body);
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                r
            }
            (&Method::GET, "/analytics/top") => {
                let q = req.uri().query().unwrap_or("");
                let num = |k: &str, d: u64| {
                    crate::pipeline::router::query_value(q, k)
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(d)
                };
                let top = self
                    .metrics
                    .analytics
                    .top(num("minutes", 5), num("limit", 10) as usize);
                let mut r = text(StatusCode::OK, &top.to_string());
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("application/json"),
                );
                r
            }
            (&Method::POST, "/drain") => {
                self.draining.store(true, Ordering::Relaxed);
                info!("draining: readiness now fails, so the L4 tier stops sending new flows");
                text(StatusCode::OK, "draining\n")
            }
            _ => problem(
                StatusCode::NOT_FOUND,
                &format!("no admin route for {} {}", req.method(), req.uri().path()),
            ),
        }
    }
}

/// Rate-limit decisions, local key counts and shared-store failures.
fn policy_metrics(out: &mut String, rt: &Runtime) {
    use std::fmt::Write;
    let mut limits: Vec<_> = rt.policies.limits.values().collect();
    limits.sort_by(|a, b| a.config.name.cmp(&b.config.name));
    let _ = writeln!(
        out,
        "# TYPE sluice_gateway_rate_limit_requests_total counter"
    );
    for l in &limits {
        for (result, n) in [("allowed", &l.allowed), ("limited", &l.limited)] {
            let _ = writeln!(
                out,
                "sluice_gateway_rate_limit_requests_total{{limit=\"{}\",result=\"{result}\"}} {}",
                l.config.name,
                n.load(Ordering::Relaxed)
            );
        }
    }
    let _ = writeln!(out, "# TYPE sluice_gateway_rate_limit_local_keys gauge");
    for l in &limits {
        let _ = writeln!(
            out,
            "sluice_gateway_rate_limit_local_keys{{limit=\"{}\"}} {}",
            l.config.name,
            l.local_keys()
        );
    }
    if let Some(r) = &rt.policies.redis {
        let _ = writeln!(
            out,
            "# TYPE sluice_gateway_rate_limit_store_failures_total counter"
        );
        for (outcome, n) in [
            ("fail_open", &r.failed_open),
            ("fail_closed", &r.failed_closed),
        ] {
            let _ = writeln!(
                out,
                "sluice_gateway_rate_limit_store_failures_total{{outcome=\"{outcome}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
    }
}

/// Health of every upstream target: 1 while it may get new requests.
fn upstream_metrics(out: &mut String, rt: &Runtime) {
    use std::fmt::Write;
    out.push_str("# HELP sluice_gateway_upstream_healthy 1 if the target passes its health check and is not ejected.\n# TYPE sluice_gateway_upstream_healthy gauge\n");
    let mut seen = std::collections::HashSet::new();
    for (pool, _, _) in rt.routes.iter().flat_map(|r| r.targets.iter()) {
        if !seen.insert(pool.name.clone()) {
            continue;
        }
        for t in &pool.targets {
            let _ = writeln!(
                out,
                "sluice_gateway_upstream_healthy{{upstream=\"{}\",target=\"{}\"}} {}",
                pool.name,
                t.addr,
                u8::from(t.usable())
            );
        }
    }
}

async fn serve_admin(listener: TcpListener, gw: Arc<Gateway>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let gw = gw.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let r = gw.admin(&req);
                async move { Ok::<_, std::convert::Infallible>(r) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Modification time and size of a file.
type Stamp = Option<(SystemTime, u64)>;

fn stamps(files: &[PathBuf]) -> Option<Vec<Stamp>> {
    Some(files.iter().map(|f| stamp(f)).collect())
}

/// Rebuilds the TLS config of every listener whose certificate, key or CA files changed
/// (from the config in force). A broken file keeps the previous config.
fn reload_tls(gw: &Gateway, states: &mut [(usize, TlsState, Option<Vec<Stamp>>)]) {
    let rt = gw.runtime.load();
    for (i, state, seen) in states.iter_mut() {
        let Some(tls) = rt.config.listeners.get(*i).and_then(|l| l.tls.as_ref()) else {
            continue;
        };
        let now = stamps(&crate::downstream::tls::files(tls));
        if now == *seen {
            continue;
        }
        *seen = now;
        match crate::downstream::tls::server_config(tls) {
            Ok(sc) => {
                state.store(sc);
                info!(listener = *i, "TLS certificates reloaded");
            }
            Err(e) => {
                error!(listener = *i, field = %e.field, error = %e.reason, "TLS files refused; the previous certificates stay in use")
            }
        }
    }
}

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Loads `path` and, if valid, makes it the runtime new requests start on.
fn reload(path: &Path, gw: &Gateway, why: &str) {
    match config::load(path) {
        Ok(c) => {
            let old = gw.runtime.load_full();
            let generation = old.generation + 1;
            let analytics = c.analytics.clone();
            let rt = match Runtime::new(c, generation, Some(&old)) {
                Ok(rt) => rt,
                Err(e) => {
                    gw.metrics.last_reload_ok.store(false, Ordering::Relaxed);
                    gw.metrics.reloads_failed.fetch_add(1, Ordering::Relaxed);
                    error!(trigger = why, error = %e, "config refused; the last valid config stays in force");
                    return;
                }
            };
            gw.metrics.analytics.configure(&analytics);
            gw.runtime.store(Arc::new(rt));
            gw.metrics
                .config_generation
                .store(generation, Ordering::Relaxed);
            gw.metrics.last_reload_ok.store(true, Ordering::Relaxed);
            gw.metrics.reloads_ok.fetch_add(1, Ordering::Relaxed);
            info!(trigger = why, generation, "config reloaded");
        }
        Err(e) => {
            gw.metrics.last_reload_ok.store(false, Ordering::Relaxed);
            gw.metrics.reloads_failed.fetch_add(1, Ordering::Relaxed);
            error!(trigger = why, error = %e, "config refused; the last valid config stays in force");
        }
    }
}

/// Runs the gateway with the config at `path` until SIGTERM or SIGINT.
pub async fn run(path: PathBuf) -> Result<()> {
    let config: Config = config::load(&path)?;
    let metrics = Arc::new(Metrics::new());
    metrics.analytics.configure(&config.analytics);
    let first = Runtime::new(config.clone(), 1, None).map_err(|e| anyhow::anyhow!("{e}"))?;
    let gw = Arc::new(Gateway {
        runtime: Arc::new(ArcSwap::from_pointee(first)),
        metrics: metrics.clone(),
        draining: AtomicBool::new(false),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut accept_loops = Vec::new();
    let mut tls_states: Vec<(usize, TlsState, Option<Vec<Stamp>>)> = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let tls = match &l.tls {
            Some(t) => {
                let sc = crate::downstream::tls::server_config(t).map_err(|e| {
                    anyhow::anyhow!("listener {}: tls.{}: {}", l.name, e.field, e.reason)
                })?;
                let state: TlsState = Arc::new(ArcSwap::new(sc));
                tls_states.push((i, state.clone(), stamps(&crate::downstream::tls::files(t))));
                Some(state)
            }
            None => None,
        };
        let socket =
            listener::bind(l).with_context(|| format!("listener {} on {}", l.name, l.address))?;
        let bound = listener::local(&socket).unwrap_or(l.address);
        info!(listener = %l.name, address = %bound, "listening");
        accept_loops.push(tokio::spawn(listener::serve(
            socket,
            l.clone(),
            tls,
            gw.runtime.clone(),
            metrics.clone(),
            stop_rx.clone(),
        )));
    }
    let admin = TcpListener::bind(config.admin.listen)
        .await
        .with_context(|| format!("admin listener on {}", config.admin.listen))?;
    let bound = admin.local_addr().unwrap_or(config.admin.listen);
    info!(address = %bound, "admin API");
    tokio::spawn(serve_admin(admin, gw.clone()));

    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut seen = stamp(&path);
    loop {
        tokio::select! {
            _ = hup.recv() => { seen = stamp(&path); reload(&path, &gw, "SIGHUP"); }
            _ = tick.tick() => {
                let now = stamp(&path);
                if now != seen {
                    seen = now;
                    reload(&path, &gw, "file change");
                }
                reload_tls(&gw, &mut tls_states);
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    // 1. Readiness fails, so the L4 tier sends no new flows. 2. Listeners close.
    // 3. In-flight requests finish, up to the deadline; connections end politely
    //    (HTTP/2 GOAWAY, HTTP/1.1 `Connection: close`).
    gw.draining.store(true, Ordering::Relaxed);
    let delay = Duration::from_millis(gw.runtime.load().config.admin.drain_delay_ms);
    if !delay.is_zero() {
        info!(
            delay_ms = delay.as_millis() as u64,
            "readiness fails; listeners close after the drain delay"
        );
        tokio::time::sleep(delay).await;
    }
    let _ = stop_tx.send(true);
    for a in accept_loops {
        let _ = a.await;
    }
    let deadline = Duration::from_millis(gw.runtime.load().config.admin.shutdown_deadline_ms);
    info!(deadline_ms = deadline.as_millis() as u64, "shutting down");
    let started = std::time::Instant::now();
    while metrics.active_connections.load(Ordering::Relaxed) > 0 {
        if started.elapsed() >= deadline {
            info!("shutdown deadline reached; closing the remaining connections");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
