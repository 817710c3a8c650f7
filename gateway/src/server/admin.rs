//! The admin API: the dashboard page, liveness, readiness (which fails while draining),
//! Prometheus metrics, the usage analytics, the shield's block candidates, and the drain
//! switch. Requests a browser could have been made to send from another site are refused
//! with 403 (see [`sluice_util::dashboard::refusal`]).

use std::{sync::atomic::Ordering, sync::Arc};

use hyper::{body::Incoming, header::HeaderValue, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sluice_util::{admin, dashboard, shield};
use tokio::net::TcpListener;
use tracing::info;

use super::Gateway;
use crate::{
    full, load,
    pipeline::{problem::problem, Runtime},
    Body,
};

impl Gateway {
    /// Answers one admin request.
    pub(super) fn admin(&self, req: &Request<Incoming>, peer: std::net::IpAddr) -> Response<Body> {
        let text = |status: StatusCode, body: &str| {
            let mut r = Response::new(full(body.to_string()));
            *r.status_mut() = status;
            r
        };
        let header =
            |name: hyper::header::HeaderName| req.headers().get(name).and_then(|v| v.to_str().ok());
        let view = dashboard::RequestView {
            method: req.method().as_str(),
            host: header(hyper::header::HOST).or_else(|| req.uri().authority().map(|a| a.as_str())),
            origin: header(hyper::header::ORIGIN),
            fetch_site: req
                .headers()
                .get("sec-fetch-site")
                .and_then(|v| v.to_str().ok()),
            user_agent: header(hyper::header::USER_AGENT),
        };
        let rt = self.runtime.load();
        if let Some(why) = dashboard::refusal(view, &rt.config.admin.host_names) {
            return problem(StatusCode::FORBIDDEN, &why);
        }
        if let Err(refusal) =
            admin::check_request(peer, req.method(), req.headers(), rt.admin_token.as_ref())
        {
            return admin_refusal(refusal);
        }
        if req.method() == Method::GET {
            if let Some(asset) = super::dashboard::asset(req.uri().path()) {
                let mut r = Response::new(full(asset.body));
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    HeaderValue::from_static(asset.content_type),
                );
                for (k, v) in dashboard::PAGE_HEADERS {
                    r.headers_mut().insert(*k, HeaderValue::from_static(v));
                }
                return r;
            }
        }
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/dashboard/state") => {
                let since = match dashboard::since_param(req.uri().query().unwrap_or("")) {
                    Ok(since) => since,
                    Err(e) => return problem(StatusCode::BAD_REQUEST, &e),
                };
                match serde_json::to_string(&self.dashboard(since)) {
                    Ok(json) => {
                        let mut r = text(StatusCode::OK, &json);
                        r.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            HeaderValue::from_static("application/json"),
                        );
                        r.headers_mut().insert(
                            hyper::header::CACHE_CONTROL,
                            HeaderValue::from_static("no-store"),
                        );
                        r
                    }
                    Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                }
            }
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
            (&Method::GET, "/readyz") => {
                let mut r = if self.draining.load(Ordering::Relaxed) {
                    problem(StatusCode::SERVICE_UNAVAILABLE, "draining")
                } else {
                    text(StatusCode::OK, "ready\n")
                };
                // One probe brings readiness and load together (see `crate::load`); nothing
                // until a first window has been measured, rather than a report of zeros.
                let report = self.load.report();
                if !report.window.is_zero() {
                    if let Ok(v) = HeaderValue::from_str(&report.header_value()) {
                        r.headers_mut().insert(load::HEADER, v);
                    }
                }
                r
            }
            (&Method::GET, "/metrics") => {
                let mut body = self.metrics.render();
                load::render(&self.load.report(), &mut body);
                let rt = self.runtime.load();
                upstream_metrics(&mut body, &rt);
                policy_metrics(&mut body, &rt);
                self.metrics.analytics.render(&mut body);
                self.metrics.shield.render(&mut body);
                let mut r = text(StatusCode::OK, &body);
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                r
            }
            (&Method::GET, "/analytics/top") => {
                let q = req.uri().query().unwrap_or("");
                let number =
                    |key, default| admin::number_param(q, key).map(|v| v.unwrap_or(default));
                let (minutes, limit) = match (number("minutes", 5), number("limit", 10)) {
                    (Ok(m), Ok(l)) => (m, l),
                    (Err(e), _) | (_, Err(e)) => return problem(StatusCode::BAD_REQUEST, &e),
                };
                let top = self.metrics.analytics.top(minutes, limit as usize);
                let mut r = text(StatusCode::OK, &top.to_string());
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("application/json"),
                );
                r
            }
            (&Method::GET, shield::PATH) => {
                let answer = self.metrics.shield.candidates();
                match serde_json::to_string(&answer) {
                    Ok(json) => {
                        let mut r = text(StatusCode::OK, &json);
                        // The agents check the type: see `MEDIA_TYPE`.
                        r.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            HeaderValue::from_static(crate::shield::MEDIA_TYPE),
                        );
                        r
                    }
                    Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                }
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

/// The problem a refused state change gets; a 401 carries its challenge.
fn admin_refusal(refusal: admin::Refusal) -> Response<Body> {
    let status = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::FORBIDDEN);
    let mut r = problem(status, refusal.detail());
    if let Some(challenge) = refusal.challenge() {
        r.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
    }
    r
}

/// Rate-limit decisions, local key counts and shared-store failures.
fn policy_metrics(out: &mut String, rt: &Runtime) {
    use std::fmt::Write;
    let mut limits: Vec<_> = rt.policies.limits.values().collect();
    limits.sort_by(|a, b| a.config.name.cmp(&b.config.name));
    out.push_str("# HELP sluice_gateway_rate_limit_requests_total Rate-limit decisions, by limit and result (limited: answered 429).\n# TYPE sluice_gateway_rate_limit_requests_total counter\n");
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
    out.push_str("# HELP sluice_gateway_rate_limit_local_keys Keys a limit holds in this process now (a local limit's counters, a shared limit's leases).\n# TYPE sluice_gateway_rate_limit_local_keys gauge\n");
    for l in &limits {
        let _ = writeln!(
            out,
            "sluice_gateway_rate_limit_local_keys{{limit=\"{}\"}} {}",
            l.config.name,
            l.local_keys()
        );
    }
    out.push_str("# HELP sluice_gateway_rate_limit_store_calls_total Calls a shared limit made to its store (one per request, or one per lease).\n# TYPE sluice_gateway_rate_limit_store_calls_total counter\n");
    for l in limits
        .iter()
        .filter(|l| l.config.store == crate::config::policy::Store::Redis)
    {
        let _ = writeln!(
            out,
            "sluice_gateway_rate_limit_store_calls_total{{limit=\"{}\"}} {}",
            l.config.name,
            l.store_calls.load(Ordering::Relaxed)
        );
    }
    if let Some(r) = &rt.policies.redis {
        out.push_str("# HELP sluice_gateway_rate_limit_store_failures_total Shared-store (Redis) calls that failed, by what the request got (on_failure).\n# TYPE sluice_gateway_rate_limit_store_failures_total counter\n");
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
    // One entry per pool: the generation keeps each once.
    for pool in &rt.pools {
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

/// Serves the admin API on `listener`.
pub(super) async fn serve_admin(listener: TcpListener, gw: Arc<Gateway>) {
    use sluice_util::accept::{AcceptBackoff, ADMIN_CONNECTIONS, ADMIN_HEAD_TIMEOUT};
    let room = Arc::new(tokio::sync::Semaphore::new(ADMIN_CONNECTIONS));
    let mut backoff = AcceptBackoff::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                if let Some(failures) = backoff.failed(&e).await {
                    tracing::warn!(listener = "admin", error = %e, failures, "accept failed; pausing");
                }
                continue;
            }
        };
        let Ok(slot) = room.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let gw = gw.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                let mut r = gw.admin(&req, peer.ip());
                // No answer of this API may be sniffed into something a browser would run.
                r.headers_mut().insert(
                    hyper::header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                );
                async move { Ok::<_, std::convert::Infallible>(r) }
            });
            // hyper's head timer runs from the start of each wait for a request, so it
            // bounds an idle connection as well as a slow head.
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(ADMIN_HEAD_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
