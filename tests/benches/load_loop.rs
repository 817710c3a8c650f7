//! `cargo xtask bench loop`: the two tiers as one system. Three gateways behind the two XDP
//! LB nodes, one of them under a real cgroup CPU limit, the same steady load from the client
//! namespace with `weights = "static"` and then `weights = "load"`: the limited gateway's
//! share of requests, client-side p50/p99 latency and failed requests, side by side.
//! Target: p99 with `"load"` at most 0.7x the static p99, with no failed request.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use sluice_e2e::{cgroup::CpuLimit, http_get, in_ns, privileged, World, VIP};

/// Client threads, each one request at a time on a new connection (a new flow each).
const CLIENTS: usize = 4;
/// The limited gateway's CPU.
const LIMIT: f64 = 0.05;
/// How long each phase is measured.
const MEASURE: Duration = Duration::from_secs(15);
/// How long the load weights get to settle before they are measured.
const SETTLE: Duration = Duration::from_secs(20);

/// What one measured phase saw.
struct Phase {
    latencies: Vec<Duration>,
    failed: usize,
    share: f64,
}

impl Phase {
    fn quantile(&self, q: f64) -> Duration {
        let mut l = self.latencies.clone();
        l.sort();
        l.get(((l.len() as f64 * q) as usize).min(l.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    }
}

/// Steady load for the life of the value; `measure` records one window of it.
struct Load {
    stop: Arc<AtomicBool>,
    recording: Arc<AtomicBool>,
    seen: Arc<Mutex<(Vec<Duration>, usize)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(w: &World) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let recording = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new((Vec::new(), 0)));
        let ns = w.ns["c"].clone();
        let (s, r, m) = (stop.clone(), recording.clone(), seen.clone());
        let vip = format!("{VIP}:80").parse().expect("literal");
        let thread = std::thread::spawn(move || {
            in_ns(&ns, || {
                std::thread::scope(|scope| {
                    for _ in 0..CLIENTS {
                        scope.spawn(|| {
                            while !s.load(Ordering::Relaxed) {
                                let t = Instant::now();
                                let ok = matches!(http_get(vip, "/index.html"), Ok((200, _)));
                                if r.load(Ordering::Relaxed) {
                                    if let Ok(mut g) = m.lock() {
                                        if ok {
                                            g.0.push(t.elapsed());
                                        } else {
                                            g.1 += 1;
                                        }
                                    }
                                }
                            }
                        });
                    }
                })
            })
        });
        Load {
            stop,
            recording,
            seen,
            thread: Some(thread),
        }
    }

    fn measure(&self, w: &World) -> Phase {
        let before: Vec<u64> = (1..=3).map(|i| w.gateway_requests(i)).collect();
        if let Ok(mut g) = self.seen.lock() {
            *g = (Vec::new(), 0);
        }
        self.recording.store(true, Ordering::Relaxed);
        std::thread::sleep(MEASURE);
        self.recording.store(false, Ordering::Relaxed);
        let d: Vec<u64> = (1..=3)
            .map(|i| w.gateway_requests(i) - before[i - 1])
            .collect();
        let (latencies, failed) = self
            .seen
            .lock()
            .map(|g| (g.0.clone(), g.1))
            .unwrap_or_default();
        Phase {
            latencies,
            failed,
            share: d[0] as f64 / d.iter().sum::<u64>().max(1) as f64,
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn main() {
    if !privileged() {
        eprintln!("cargo xtask bench loop builds network namespaces: run it as root");
        std::process::exit(1);
    }
    let mut w = World::start();
    let load = Load::start(&w);
    let limit = CpuLimit::new(w.pid("g1").expect("g1"), LIMIT);
    std::thread::sleep(Duration::from_secs(3));
    let fixed = load.measure(&w);
    w.weigh_by_load();
    std::thread::sleep(SETTLE);
    let weighed = load.measure(&w);
    drop(load);
    drop(limit);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "Load-aware weights: three gateways, gateway 1 limited to {LIMIT} CPU by its cgroup;\n\
         {CLIENTS} clients, a new connection per request; each phase measured for {} s.\n",
        MEASURE.as_secs()
    );
    println!("| weights | gateway 1's share | requests | failed | p50 ms | p99 ms |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, p) in [("static", &fixed), ("load", &weighed)] {
        println!(
            "| {name} | {:.2} | {} | {} | {:.2} | {:.2} |",
            p.share,
            p.latencies.len(),
            p.failed,
            ms(p.quantile(0.5)),
            ms(p.quantile(0.99))
        );
    }
    let ratio = ms(weighed.quantile(0.99)) / ms(fixed.quantile(0.99)).max(1e-9);
    println!(
        "| ratio load / static | | | | {:.2}x | {ratio:.2}x |",
        ms(weighed.quantile(0.5)) / ms(fixed.quantile(0.5)).max(1e-9)
    );
    let met = ratio <= 0.7 && fixed.failed == 0 && weighed.failed == 0;
    println!(
        "\ntarget (p99 with load at most 0.7x static, no failed request): {}",
        if met { "met" } else { "missed" }
    );
}
