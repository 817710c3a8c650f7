//! The gateway's Prometheus metrics.
//!
//! Hand-rolled rather than through a registry crate: a handful of families, label sets known
//! at request time, and one text renderer; nothing a dependency would simplify.

use std::{
    collections::BTreeMap,
    fmt::Write,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Mutex,
    },
    time::Duration,
};

/// Histogram bucket bounds in seconds.
pub const BOUNDS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Default, Clone)]
struct Histogram {
    buckets: [u64; BOUNDS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (i, b) in BOUNDS.iter().enumerate() {
            if secs <= *b {
                self.buckets[i] += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }
}

/// What is counted for one route.
#[derive(Default)]
struct RouteCounts {
    /// Requests by method label and status.
    requests: BTreeMap<&'static str, BTreeMap<u16, u64>>,
    /// Time from request to response head.
    duration: Histogram,
}

/// Counts by route and by upstream, so a request is counted without allocating once its
/// route and upstream have been seen.
#[derive(Default)]
struct Inner {
    routes: BTreeMap<String, RouteCounts>,
    upstreams: BTreeMap<String, Histogram>,
}

fn write_histogram(o: &mut String, name: &str, label: &str, value: &str, h: &Histogram) {
    for (b, n) in BOUNDS.iter().zip(h.buckets) {
        let _ = writeln!(o, "{name}_bucket{{{label}=\"{value}\",le=\"{b}\"}} {n}");
    }
    let _ = writeln!(
        o,
        "{name}_bucket{{{label}=\"{value}\",le=\"+Inf\"}} {}",
        h.count
    );
    let _ = writeln!(o, "{name}_sum{{{label}=\"{value}\"}} {}", h.sum);
    let _ = writeln!(o, "{name}_count{{{label}=\"{value}\"}} {}", h.count);
}

/// The `method` label: the standard methods by name, any other as `other`. A client may
/// send any token as a method, and each new label value would be a series kept forever.
pub fn method_label(method: &hyper::Method) -> &'static str {
    use hyper::Method as M;
    match *method {
        M::GET => "GET",
        M::HEAD => "HEAD",
        M::POST => "POST",
        M::PUT => "PUT",
        M::DELETE => "DELETE",
        M::CONNECT => "CONNECT",
        M::OPTIONS => "OPTIONS",
        M::TRACE => "TRACE",
        M::PATCH => "PATCH",
        _ => "other",
    }
}

/// Request totals since start over every route: what a load report is computed from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    /// Requests answered.
    pub requests: u64,
    /// Of those, answered with a 5xx status.
    pub errors: u64,
    /// Seconds from request to response head, summed.
    pub duration_sum: f64,
    /// Requests answered within each of [`BOUNDS`] (cumulative).
    pub buckets: [u64; BOUNDS.len()],
}

impl Totals {
    /// What was counted after `old`.
    pub fn since(&self, old: &Totals) -> Totals {
        let mut buckets = self.buckets;
        for (b, o) in buckets.iter_mut().zip(old.buckets) {
            *b = b.saturating_sub(o);
        }
        Totals {
            requests: self.requests.saturating_sub(old.requests),
            errors: self.errors.saturating_sub(old.errors),
            duration_sum: (self.duration_sum - old.duration_sum).max(0.0),
            buckets,
        }
    }

    /// The `q` quantile of time to response head in seconds, interpolated within its bucket
    /// (0 with no requests; the last bound for what lies beyond it).
    pub fn quantile(&self, q: f64) -> f64 {
        if self.requests == 0 {
            return 0.0;
        }
        let target = q * self.requests as f64;
        let (mut below_count, mut below_bound) = (0u64, 0.0);
        for (n, bound) in self.buckets.iter().zip(BOUNDS) {
            if *n as f64 >= target && *n > below_count {
                let share = (target - below_count as f64) / (*n - below_count) as f64;
                return below_bound + share.clamp(0.0, 1.0) * (bound - below_bound);
            }
            (below_count, below_bound) = (*n, bound);
        }
        BOUNDS[BOUNDS.len() - 1]
    }
}

/// Adds one route's counts to `t`.
fn add_route(t: &mut Totals, counts: &RouteCounts) {
    for by_status in counts.requests.values() {
        for (status, n) in by_status {
            t.requests += n;
            if *status >= 500 {
                t.errors += n;
            }
        }
    }
    t.duration_sum += counts.duration.sum;
    for (b, n) in t.buckets.iter_mut().zip(counts.duration.buckets) {
        *b += n;
    }
}

/// All gateway metrics.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    /// Open client connections.
    pub active_connections: AtomicU64,
    /// Idle HTTP/1.1 connections parked without buffers (a subset of the open ones).
    pub parked_connections: AtomicU64,
    /// Config generation in force.
    pub config_generation: AtomicU64,
    /// Whether the last reload was applied.
    pub last_reload_ok: AtomicBool,
    /// Reloads applied.
    pub reloads_ok: AtomicU64,
    /// Reloads refused.
    pub reloads_failed: AtomicU64,
    /// Why the config in force is not the one on disk: the config file's refusal, else a
    /// listener's certificate files' (each source is reported until it is itself mended).
    pub last_reload_error: Mutex<Option<String>>,
    /// The config file's refusal, while the file on disk is refused.
    pub config_refused: Mutex<Option<String>>,
    /// Per-consumer usage.
    pub analytics: crate::analytics::Analytics,
    /// Refusals per client, for abuse detection.
    pub shield: crate::shield::Shield,
    /// Connections the gateway closed or refused, by [`Closed`] reason.
    pub closed: [AtomicU64; Closed::ALL.len()],
    /// Connections accepted, by [`crate::worker`] shard (the kernel's spread over workers).
    accepted: PerShard,
}

/// A counter per [`crate::worker`] shard, sized when built (after the worker count is set).
struct PerShard(Box<[AtomicU64]>);

impl Default for PerShard {
    fn default() -> Self {
        PerShard(
            (0..crate::worker::shards())
                .map(|_| AtomicU64::new(0))
                .collect(),
        )
    }
}

/// Why the gateway closed or refused a client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// A phase's deadline passed (TLS handshake, first request, keep-alive or HTTP/2 idle).
    Deadline,
    /// The client stopped taking a response (`stream_idle_timeout_ms`).
    Stalled,
    /// Closed while idle to admit a new connection at `max_connections`.
    Evicted,
    /// Refused at `max_connections` with no idle connection to close.
    OverLimit,
    /// Refused at `max_connections_per_client`.
    OverClientLimit,
}

impl Closed {
    /// Every reason, in counter order.
    pub const ALL: [Closed; 5] = [
        Closed::Deadline,
        Closed::Stalled,
        Closed::Evicted,
        Closed::OverLimit,
        Closed::OverClientLimit,
    ];

    fn label(self) -> &'static str {
        match self {
            Closed::Deadline => "deadline",
            Closed::Stalled => "stalled",
            Closed::Evicted => "evicted",
            Closed::OverLimit => "over_limit",
            Closed::OverClientLimit => "over_client_limit",
        }
    }
}

impl Metrics {
    /// A new set, with the first config counted as generation 1.
    pub fn new() -> Self {
        let m = Metrics::default();
        m.config_generation.store(1, Ordering::Relaxed);
        m.last_reload_ok.store(true, Ordering::Relaxed);
        m
    }

    /// Counts a connection closed or refused for `why`.
    pub fn closed(&self, why: Closed) {
        self.closed[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Records a finished request (its method counted under [`method_label`]).
    pub fn request(&self, route: &str, method: &hyper::Method, status: u16, took: Duration) {
        let Ok(mut i) = self.inner.lock() else { return };
        let r = counted!(i.routes, route);
        *r.requests
            .entry(method_label(method))
            .or_default()
            .entry(status)
            .or_default() += 1;
        r.duration.observe(took.as_secs_f64());
    }

    /// Request totals over every route, read once per load sample.
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        let Ok(i) = self.inner.lock() else { return t };
        for counts in i.routes.values() {
            add_route(&mut t, counts);
        }
        t
    }

    /// Request totals of each route, read once a second for the dashboard.
    pub fn route_totals(&self) -> Vec<(String, Totals)> {
        let Ok(i) = self.inner.lock() else {
            return Vec::new();
        };
        i.routes
            .iter()
            .map(|(name, counts)| {
                let mut t = Totals::default();
                add_route(&mut t, counts);
                (name.clone(), t)
            })
            .collect()
    }

    /// Records the time an upstream took to answer with a response head.
    pub fn upstream(&self, pool: &str, took: Duration) {
        let Ok(mut i) = self.inner.lock() else { return };
        counted!(i.upstreams, pool).observe(took.as_secs_f64());
    }

    /// Counts a connection accepted on the current thread's worker.
    pub fn accepted(&self) {
        if let Some(n) = self.accepted.0.get(crate::worker::shard()) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Prometheus text.
    pub fn render(&self) -> String {
        let mut o = String::new();
        self.render_requests(&mut o);
        self.render_gauges(&mut o);
        o
    }

    /// The request and upstream families, by route and pool.
    fn render_requests(&self, o: &mut String) {
        let esc = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"");
        if let Ok(i) = self.inner.lock() {
            o.push_str("# HELP sluice_gateway_requests_total Requests served, by route, method and status.\n# TYPE sluice_gateway_requests_total counter\n");
            for (route, counts) in &i.routes {
                for (method, by_status) in &counts.requests {
                    for (status, n) in by_status {
                        let _ = writeln!(o, "sluice_gateway_requests_total{{route=\"{}\",method=\"{}\",status=\"{status}\"}} {n}", esc(route), esc(method));
                    }
                }
            }
            o.push_str("# HELP sluice_gateway_request_duration_seconds Time from request to response head.\n# TYPE sluice_gateway_request_duration_seconds histogram\n");
            for (route, counts) in &i.routes {
                write_histogram(
                    o,
                    "sluice_gateway_request_duration_seconds",
                    "route",
                    &esc(route),
                    &counts.duration,
                );
            }
            o.push_str("# HELP sluice_gateway_upstream_duration_seconds Time an upstream took to answer with a response head.\n# TYPE sluice_gateway_upstream_duration_seconds histogram\n");
            for (pool, h) in &i.upstreams {
                write_histogram(
                    o,
                    "sluice_gateway_upstream_duration_seconds",
                    "upstream",
                    &esc(pool),
                    h,
                );
            }
        }
    }

    /// Connections and config reloads.
    fn render_gauges(&self, o: &mut String) {
        let g = |o: &mut String, name: &str, kind: &str, help: &str, v: u64| {
            let _ = write!(
                o,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
            );
        };
        g(
            o,
            "sluice_gateway_active_connections",
            "gauge",
            "Open client connections.",
            self.active_connections.load(Ordering::Relaxed),
        );
        g(
            o,
            "sluice_gateway_parked_connections",
            "gauge",
            "Idle keep-alive connections held without buffers between requests.",
            self.parked_connections.load(Ordering::Relaxed),
        );
        o.push_str("# HELP sluice_gateway_connections_accepted_total Client connections accepted, by worker.\n# TYPE sluice_gateway_connections_accepted_total counter\n");
        // With worker threads, shard 0 is the main thread's, which accepts nothing.
        let skip = usize::from(self.accepted.0.len() > 1);
        for (w, n) in self.accepted.0.iter().enumerate().skip(skip) {
            let _ = writeln!(
                o,
                "sluice_gateway_connections_accepted_total{{worker=\"{}\"}} {}",
                w - skip,
                n.load(Ordering::Relaxed)
            );
        }
        o.push_str("# HELP sluice_gateway_connections_closed_total Client connections the gateway closed or refused, by reason.\n# TYPE sluice_gateway_connections_closed_total counter\n");
        for why in Closed::ALL {
            let _ = writeln!(
                o,
                "sluice_gateway_connections_closed_total{{reason=\"{}\"}} {}",
                why.label(),
                self.closed[why as usize].load(Ordering::Relaxed)
            );
        }
        g(
            o,
            "sluice_gateway_config_generation",
            "gauge",
            "Config generation in force.",
            self.config_generation.load(Ordering::Relaxed),
        );
        g(
            o,
            "sluice_gateway_config_last_reload_success",
            "gauge",
            "1 if the last reload was applied.",
            u64::from(self.last_reload_ok.load(Ordering::Relaxed)),
        );
        o.push_str("# HELP sluice_gateway_config_reloads_total Config reloads, by result.\n# TYPE sluice_gateway_config_reloads_total counter\n");
        let _ = writeln!(
            o,
            "sluice_gateway_config_reloads_total{{result=\"ok\"}} {}",
            self.reloads_ok.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "sluice_gateway_config_reloads_total{{result=\"error\"}} {}",
            self.reloads_failed.load(Ordering::Relaxed)
        );
    }
}
