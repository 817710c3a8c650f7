//! The dashboard page the gateway's admin listener serves at `/`: routes with their
//! request rate, error ratio and p99, upstream health and ejections, the top consumers, and
//! the config generation with its last reload. The files are embedded; the page polls
//! `/dashboard/state` once a second (see [`sluice_util::dashboard`]).

use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use serde::Serialize;
use sluice_util::{
    dashboard::{shared_asset, unix_ms, Asset, History, HistoryView},
    load::LoadReport,
};

use super::Gateway;
use crate::metrics::Totals;

/// Seconds of history kept for the sparklines.
pub const HISTORY_SECONDS: usize = 300;

/// The page.
const PAGE: Asset = Asset {
    content_type: "text/html; charset=utf-8",
    body: include_str!("page.html"),
};

/// The page's own script.
const SCRIPT: Asset = Asset {
    content_type: "text/javascript; charset=utf-8",
    body: include_str!("gateway.js"),
};

/// The embedded file served at `path`, if any.
pub fn asset(path: &str) -> Option<Asset> {
    match path {
        "/" | "/dashboard" | "/dashboard/" => Some(PAGE),
        "/dashboard/gateway.js" => Some(SCRIPT),
        other => shared_asset(other),
    }
}

/// The answer to `GET /dashboard/state`.
#[derive(Debug, Serialize)]
pub struct State {
    /// The gateway's version.
    pub version: &'static str,
    /// Readiness fails: the L4 tier sends no new flows.
    pub draining: bool,
    /// Open client connections.
    pub connections: u64,
    /// The config in force and the last reload.
    pub config: ConfigView,
    /// The last load report (what the L4 agents read on `/readyz`).
    pub load: LoadReport,
    /// Each route over the last second, and since start.
    pub routes: Vec<RouteView>,
    /// Every upstream target.
    pub upstreams: Vec<TargetView>,
    /// The top consumers and routes of the last five minutes (`/analytics/top`).
    pub top: serde_json::Value,
    /// The samples after the page's last one.
    pub history: HistoryView,
}

/// The config generation and the last reload.
#[derive(Debug, Serialize)]
pub struct ConfigView {
    /// Generation in force.
    pub generation: u64,
    /// Whether the last reload was applied.
    pub last_reload_ok: bool,
    /// Why it was refused, if it was.
    pub last_error: Option<String>,
    /// Reloads applied.
    pub reloads_ok: u64,
    /// Reloads refused.
    pub reloads_failed: u64,
}

/// A route.
#[derive(Debug, Serialize)]
pub struct RouteView {
    /// Its name.
    pub route: String,
    /// Requests since start.
    pub requests: u64,
    /// Of those, answered 5xx.
    pub errors: u64,
}

/// An upstream target.
#[derive(Debug, Serialize)]
pub struct TargetView {
    /// The upstream's name.
    pub upstream: String,
    /// The target's address.
    pub target: String,
    /// Passing its active health check.
    pub healthy: bool,
    /// Ejected by outlier detection now.
    pub ejected: bool,
    /// Ejections since it was configured.
    pub ejections: u32,
    /// Its weight (0: configured out).
    pub weight: u32,
    /// Requests in flight.
    pub in_flight: usize,
    /// Smoothed response-head latency in milliseconds (none before a first response).
    pub latency_ms: Option<f64>,
}

/// Each route's requests per second, error ratio and p99 over the last second.
fn route_rates(
    now: &[(String, Totals)],
    before: &[(String, Totals)],
    dt: f64,
) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    let mut total = 0.0;
    for (name, t) in now {
        let d = match before.iter().find(|(n, _)| n == name) {
            Some((_, old)) => t.since(old),
            None => t.clone(),
        };
        let rps = d.requests as f64 / dt;
        total += rps;
        out.push((format!("route/{name}/rps"), rps));
        if d.requests > 0 {
            out.push((
                format!("route/{name}/errors"),
                d.errors as f64 / d.requests as f64,
            ));
            out.push((format!("route/{name}/p99_ms"), d.quantile(0.99) * 1e3));
        }
    }
    out.push(("total/rps".to_string(), total));
    out
}

/// Samples every route once a second into the history until the gateway stops.
pub(super) async fn sample(gw: Arc<Gateway>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut before: Option<(tokio::time::Instant, Vec<(String, Totals)>)> = None;
    loop {
        tick.tick().await;
        let now = tokio::time::Instant::now();
        let totals = gw.metrics.route_totals();
        if let Some((then, old)) = &before {
            let dt = now.duration_since(*then).as_secs_f64().max(1e-3);
            let values = route_rates(&totals, old, dt);
            if let Ok(mut h) = gw.history.lock() {
                h.push(unix_ms(), values.iter().map(|(k, v)| (k.as_str(), *v)));
            }
        }
        before = Some((now, totals));
    }
}

impl Gateway {
    /// The page's answer, with the history after `since`.
    pub(super) fn dashboard(&self, since: Option<u64>) -> State {
        let m = &self.metrics;
        let rt = self.runtime.load();
        let upstreams = rt
            .pools
            .iter()
            .flat_map(|p| {
                p.targets.iter().map(|t| {
                    let ewma = t.ewma_us.load(Ordering::Relaxed);
                    TargetView {
                        upstream: p.name.clone(),
                        target: t.addr.to_string(),
                        healthy: t.healthy.load(Ordering::Relaxed),
                        ejected: t.healthy.load(Ordering::Relaxed) && t.weight > 0 && !t.usable(),
                        ejections: t.ejections.load(Ordering::Relaxed),
                        weight: t.weight,
                        in_flight: t.in_flight.load(Ordering::Relaxed),
                        latency_ms: (ewma > 0).then(|| ewma as f64 / 1e3),
                    }
                })
            })
            .collect();
        State {
            version: env!("CARGO_PKG_VERSION"),
            draining: self.draining.load(Ordering::Relaxed),
            connections: m.active_connections.load(Ordering::Relaxed),
            config: ConfigView {
                generation: m.config_generation.load(Ordering::Relaxed),
                last_reload_ok: m.last_reload_ok.load(Ordering::Relaxed),
                last_error: m.last_reload_error.lock().ok().and_then(|e| e.clone()),
                reloads_ok: m.reloads_ok.load(Ordering::Relaxed),
                reloads_failed: m.reloads_failed.load(Ordering::Relaxed),
            },
            load: self.load.report(),
            routes: m
                .route_totals()
                .into_iter()
                .map(|(route, t)| RouteView {
                    route,
                    requests: t.requests,
                    errors: t.errors,
                })
                .collect(),
            upstreams,
            top: m.analytics.top(5, 10),
            history: self
                .history
                .lock()
                .map(|h| h.since(since))
                .unwrap_or_default(),
        }
    }
}

/// A new history for a gateway.
pub(super) fn history() -> std::sync::Mutex<History> {
    std::sync::Mutex::new(History::new(HISTORY_SECONDS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_embedded_files() {
        let mut named = 0;
        for attr in ["src=\"", "href=\""] {
            for part in PAGE.body.split(attr).skip(1) {
                let url = part.split('"').next().unwrap_or_default();
                assert!(asset(url).is_some(), "{url} is not served");
                named += 1;
            }
        }
        assert_eq!(named, 4);
        assert!(!PAGE.body.contains("<script>"));
    }

    #[test]
    fn rates_are_per_second_over_what_changed() {
        let t = |requests, errors| Totals {
            requests,
            errors,
            buckets: [requests; crate::metrics::BOUNDS.len()],
            ..Default::default()
        };
        let before = vec![("a".to_string(), t(10, 0))];
        let now = vec![("a".to_string(), t(30, 5)), ("b".to_string(), t(4, 0))];
        let rates = route_rates(&now, &before, 2.0);
        let get = |k: &str| rates.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
        assert_eq!(get("route/a/rps"), Some(10.0));
        assert_eq!(get("route/a/errors"), Some(0.25));
        assert_eq!(get("route/b/rps"), Some(2.0));
        assert_eq!(get("total/rps"), Some(12.0));
        assert!(get("route/a/p99_ms").is_some_and(|v| v <= 1.0));
    }
}
