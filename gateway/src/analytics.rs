//! Usage analytics: per-consumer counters and latency for `/metrics`, and a rolling
//! per-minute record behind `GET /analytics/top`.
//!
//! Cardinality is bounded: the first `max_consumers` consumers seen get their own label, the
//! rest are counted as `other`; routes are bounded by the config. So memory is bounded by
//! (consumers + 1) × routes × minutes.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    fmt::Write,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

/// Latency buckets: 50 µs × 1.25^i, so a quantile is known to within 25%.
const BUCKETS: usize = 64;

fn bucket(took: Duration) -> usize {
    let us = took.as_secs_f64() * 1e6;
    if us <= 50.0 {
        return 0;
    }
    (((us / 50.0).ln() / 1.25f64.ln()).ceil() as usize).min(BUCKETS - 1)
}

fn bucket_ms(i: usize) -> f64 {
    0.05 * 1.25f64.powi(i as i32)
}

/// Prometheus buckets for the per-consumer histogram, seconds.
const PROM_BOUNDS: [f64; 8] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

#[derive(Clone)]
struct Stat {
    requests: u64,
    errors: u64,
    latency: [u32; BUCKETS],
}

impl Default for Stat {
    fn default() -> Self {
        Stat {
            requests: 0,
            errors: 0,
            latency: [0; BUCKETS],
        }
    }
}

impl Stat {
    fn add(&mut self, other: &Stat) {
        self.requests += other.requests;
        self.errors += other.errors;
        for (a, b) in self.latency.iter_mut().zip(other.latency.iter()) {
            *a += b;
        }
    }

    fn p99_ms(&self) -> f64 {
        let want = (self.requests as f64 * 0.99).ceil() as u64;
        let mut seen = 0u64;
        for (i, n) in self.latency.iter().enumerate() {
            seen += *n as u64;
            if seen >= want {
                return bucket_ms(i);
            }
        }
        bucket_ms(BUCKETS - 1)
    }
}

#[derive(Default)]
struct PromStat {
    by_class: [u64; 5],
    buckets: [u64; PROM_BOUNDS.len()],
    count: u64,
    sum: f64,
}

/// One minute of requests by (consumer label, route).
type Minute = (u64, HashMap<Arc<str>, HashMap<Arc<str>, Stat>>);

#[derive(Default)]
struct Inner {
    labels: HashSet<Arc<str>>,
    prom: BTreeMap<Arc<str>, BTreeMap<Arc<str>, PromStat>>,
    minutes: VecDeque<Minute>,
}

/// The analytics of a running gateway.
pub struct Analytics {
    inner: Mutex<Inner>,
    max_consumers: AtomicUsize,
    minutes: AtomicUsize,
}

impl Default for Analytics {
    fn default() -> Self {
        let d = crate::config::Analytics::default();
        Analytics {
            inner: Mutex::default(),
            max_consumers: AtomicUsize::new(d.max_consumers),
            minutes: AtomicUsize::new(d.minutes),
        }
    }
}

fn minute_now() -> u64 {
    crate::clock::unix_secs() / 60
}

impl Analytics {
    /// Takes the limits of a new config.
    pub fn configure(&self, c: &crate::config::Analytics) {
        self.max_consumers.store(c.max_consumers, Ordering::Relaxed);
        self.minutes.store(c.minutes.max(1), Ordering::Relaxed);
    }

    /// Records one request. `consumer` is `None` when nobody was authenticated.
    pub fn record(&self, consumer: Option<&Arc<str>>, route: &str, status: u16, took: Duration) {
        // Requests that matched no route are the 404 counter's business, not usage.
        if route == "-" {
            return;
        }
        let Ok(mut g) = self.inner.lock() else { return };
        let inner = &mut *g;
        // Nothing is allocated for a (route, consumer) pair seen before.
        let consumer: &str = match consumer {
            None => "-",
            Some(c) if inner.labels.contains(c) => c,
            Some(c) if inner.labels.len() < self.max_consumers.load(Ordering::Relaxed) => {
                inner.labels.insert(c.clone());
                c
            }
            Some(_) => "other",
        };
        if consumer != "-" {
            let by_route = counted!(inner.prom, consumer);
            let p = counted!(by_route, route);
            p.by_class[(status / 100).clamp(1, 5) as usize - 1] += 1;
            let secs = took.as_secs_f64();
            for (i, b) in PROM_BOUNDS.iter().enumerate() {
                if secs <= *b {
                    p.buckets[i] += 1;
                }
            }
            p.count += 1;
            p.sum += secs;
        }
        let now = minute_now();
        let keep = self.minutes.load(Ordering::Relaxed) as u64;
        while inner
            .minutes
            .front()
            .is_some_and(|(m, _)| m.saturating_add(keep) <= now)
        {
            inner.minutes.pop_front();
        }
        if inner.minutes.back().is_none_or(|(m, _)| *m != now) {
            inner.minutes.push_back((now, HashMap::new()));
        }
        let Some((_, routes)) = inner.minutes.back_mut() else {
            return;
        };
        let by_consumer = counted!(routes, route);
        let s = counted!(by_consumer, consumer);
        s.requests += 1;
        if status >= 500 || status == 429 {
            s.errors += 1;
        }
        s.latency[bucket(took)] += 1;
    }

    /// Appends the per-consumer families to a Prometheus text body.
    pub fn render(&self, o: &mut String) {
        let Ok(g) = self.inner.lock() else { return };
        // Consumer ids may come from token claims: escape them.
        let esc = |v: &str| {
            v.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n")
        };
        o.push_str("# HELP sluice_gateway_consumer_requests_total Requests of authenticated consumers, by consumer, route and status class.\n# TYPE sluice_gateway_consumer_requests_total counter\n");
        let pairs = || {
            g.prom
                .iter()
                .flat_map(|(c, by_route)| by_route.iter().map(move |(r, p)| (c, r, p)))
        };
        for (c, r, p) in pairs() {
            let c = esc(c);
            for (i, n) in p.by_class.iter().enumerate().filter(|(_, n)| **n > 0) {
                let _ = writeln!(
                    o,
                    "sluice_gateway_consumer_requests_total{{consumer=\"{c}\",route=\"{r}\",class=\"{}xx\"}} {n}",
                    i + 1
                );
            }
        }
        o.push_str("# HELP sluice_gateway_consumer_request_duration_seconds Time from an authenticated consumer's request to its response head.\n# TYPE sluice_gateway_consumer_request_duration_seconds histogram\n");
        for (c, r, p) in pairs() {
            let c = esc(c);
            let l = format!("consumer=\"{c}\",route=\"{r}\"");
            for (b, n) in PROM_BOUNDS.iter().zip(p.buckets) {
                let _ = writeln!(
                    o,
                    "sluice_gateway_consumer_request_duration_seconds_bucket{{{l},le=\"{b}\"}} {n}"
                );
            }
            let _ = writeln!(
                o,
                "sluice_gateway_consumer_request_duration_seconds_bucket{{{l},le=\"+Inf\"}} {}",
                p.count
            );
            let _ = writeln!(
                o,
                "sluice_gateway_consumer_request_duration_seconds_sum{{{l}}} {}",
                p.sum
            );
            let _ = writeln!(
                o,
                "sluice_gateway_consumer_request_duration_seconds_count{{{l}}} {}",
                p.count
            );
        }
    }

    /// The top consumers and routes over the last `minutes`, by requests, at most `limit` each.
    pub fn top(&self, minutes: u64, limit: usize) -> serde_json::Value {
        let Ok(g) = self.inner.lock() else {
            return serde_json::json!({});
        };
        let now = minute_now();
        let mut consumers: HashMap<Arc<str>, Stat> = HashMap::new();
        let mut routes: HashMap<Arc<str>, Stat> = HashMap::new();
        for (m, map) in &g.minutes {
            if m.saturating_add(minutes.max(1)) <= now {
                continue;
            }
            for (r, by_consumer) in map {
                for (c, s) in by_consumer {
                    if &**c != "-" {
                        consumers.entry(c.clone()).or_default().add(s);
                    }
                    routes.entry(r.clone()).or_default().add(s);
                }
            }
        }
        let list = |m: HashMap<Arc<str>, Stat>, key: &str| {
            let mut v: Vec<_> = m.into_iter().collect();
            v.sort_by(|a, b| b.1.requests.cmp(&a.1.requests).then(a.0.cmp(&b.0)));
            v.into_iter()
                .take(limit)
                .map(|(name, s)| {
                    serde_json::json!({
                        key: &*name,
                        "requests": s.requests,
                        "errors": s.errors,
                        "error_rate": if s.requests == 0 { 0.0 } else { s.errors as f64 / s.requests as f64 },
                        "p99_ms": s.p99_ms(),
                    })
                })
                .collect::<Vec<_>>()
        };
        serde_json::json!({
            "minutes": minutes.max(1),
            "consumers": list(consumers, "consumer"),
            "routes": list(routes, "route"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumers_beyond_the_cap_are_other_and_p99_is_close() {
        let a = Analytics::default();
        a.configure(&crate::config::Analytics {
            max_consumers: 2,
            minutes: 5,
        });
        for i in 0..10 {
            let c: Arc<str> = Arc::from(format!("c{i}").as_str());
            for _ in 0..(10 - i) {
                a.record(
                    Some(&c),
                    "r",
                    if i == 0 { 500 } else { 200 },
                    Duration::from_millis(10),
                );
            }
        }
        let top = a.top(5, 10);
        let names: Vec<&str> = top["consumers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["consumer"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["other", "c0", "c1"]);
        assert_eq!(top["consumers"][1]["error_rate"], 1.0);
        let p99 = top["routes"][0]["p99_ms"].as_f64().unwrap();
        assert!((10.0..12.5).contains(&p99), "{p99}");
    }
}
