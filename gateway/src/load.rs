//! The gateway's load report: how busy this process is, for the L4 agents that probe its
//! readiness (`/readyz` carries it) and for `/metrics`.
//!
//! Once a second [`LoadMeter::sample`] reads what is counted anyway (the process's CPU time,
//! and the request counters and latency histograms of [`Metrics`]) and the report covers the
//! last [`WINDOW`]: nothing is added to a request's path. The fields follow ORCA's load
//! report (`cpu_utilization`, `rps_fractional`, `eps`, `named_metrics`), in its `TEXT`
//! header form, `endpoint-load-metrics`, so a gRPC or Envoy client could read it too.
//!
//! - `cpu_utilization`: CPU time used over the window divided by the CPUs the process may
//!   use: the fewest of its worker threads, the machine's CPUs and its cgroup's `cpu.max`
//!   quota (re-read at every sample, so a changed limit counts at once). It may pass 1.0
//!   briefly: threads other than the workers (the blocking pool) use CPU too.
//! - `rps_fractional` and `eps`: requests answered per second, and those answered 5xx.
//! - `named_metrics.in_flight`: requests in flight, averaged over the window (by Little's
//!   law, the time requests spent in the gateway divided by the window's length).
//! - `named_metrics.p99_ms`: the 99th percentile of time to response head over the window,
//!   interpolated within the histogram's buckets.
//! - `named_metrics.sluice_capacity`: the requests per second this gateway would answer with all of
//!   its usable CPUs, smoothed and held within a 5% deadband
//!   ([`sluice_util::load::CapacityEstimate`]). The L4 agents weigh the gateways by it, and
//!   since it is estimated here, once, they all read the same value.

use std::{
    collections::VecDeque,
    sync::Mutex,
    time::{Duration, Instant},
};

pub use sluice_util::load::LoadReport;
use sluice_util::load::{CapacityEstimate, CapacityTuning};

use crate::metrics::{Metrics, Totals};

/// How far back a report looks.
pub const WINDOW: Duration = Duration::from_secs(5);

/// The header `/readyz` carries the report in.
pub const HEADER: hyper::header::HeaderName =
    hyper::header::HeaderName::from_static(sluice_util::load::HEADER);

/// The report as Prometheus gauges.
pub fn render(r: &LoadReport, out: &mut String) {
    use std::fmt::Write;
    for (name, help, value) in [
        (
            "cpu_utilization",
            "CPU time over the report window per usable CPU.",
            r.cpu_utilization,
        ),
        (
            "requests_per_second",
            "Requests answered per second over the report window.",
            r.rps,
        ),
        (
            "errors_per_second",
            "Requests answered 5xx per second over the report window.",
            r.eps,
        ),
        (
            "in_flight",
            "Requests in flight, averaged over the report window.",
            r.in_flight,
        ),
        (
            "p99_seconds",
            "99th-percentile time to response head over the report window.",
            r.p99_ms / 1e3,
        ),
        (
            "usable_cpus",
            "CPUs the process may use (workers, machine, cgroup cpu.max).",
            r.usable_cpus,
        ),
        (
            "capacity_requests_per_second",
            "Held estimate of the requests per second all usable CPUs would answer (0 before there is one).",
            r.capacity.unwrap_or(0.0),
        ),
    ] {
        let _ = write!(
            out,
            "# HELP sluice_gateway_load_{name} {help}\n# TYPE sluice_gateway_load_{name} gauge\nsluice_gateway_load_{name} {value}\n"
        );
    }
}

/// What is read at one sample.
#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    cpu: Duration,
    totals: Totals,
}

/// Samples the counters and keeps the report of the last [`WINDOW`].
pub struct LoadMeter {
    workers: usize,
    samples: Mutex<VecDeque<Sample>>,
    capacity: Mutex<CapacityEstimate>,
    report: Mutex<LoadReport>,
}

impl LoadMeter {
    /// A meter for a process running `workers` worker threads.
    pub fn new(workers: usize) -> Self {
        LoadMeter {
            workers: workers.max(1),
            samples: Mutex::new(VecDeque::new()),
            capacity: Mutex::new(CapacityEstimate::default()),
            report: Mutex::new(LoadReport::default()),
        }
    }

    /// The latest report.
    pub fn report(&self) -> LoadReport {
        self.report.lock().map(|r| *r).unwrap_or_default()
    }

    /// Reads the counters now and updates the report.
    pub fn sample(&self, metrics: &Metrics) {
        let now = Sample {
            at: Instant::now(),
            cpu: process_cpu_time().unwrap_or_default(),
            totals: metrics.totals(),
        };
        let usable = usable_cpus(self.workers, cpu_quota());
        let Ok(mut samples) = self.samples.lock() else {
            return;
        };
        while samples
            .front()
            .is_some_and(|s| now.at.duration_since(s.at) > WINDOW + Duration::from_millis(500))
        {
            samples.pop_front();
        }
        let mut report = samples.front().map(|oldest| between(oldest, &now, usable));
        samples.push_back(now);
        drop(samples);
        if let (Some(report), Ok(mut estimate)) = (report.as_mut(), self.capacity.lock()) {
            report.capacity = estimate.update(report, &CapacityTuning::default());
        }
        if let (Some(report), Ok(mut r)) = (report, self.report.lock()) {
            *r = report;
        }
    }

    /// Samples `metrics` every second until the process ends.
    pub async fn run(self: std::sync::Arc<Self>, metrics: std::sync::Arc<Metrics>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.sample(&metrics);
        }
    }
}

/// The report of what happened between two samples.
fn between(old: &Sample, new: &Sample, usable_cpus: f64) -> LoadReport {
    let span = new.at.duration_since(old.at);
    let secs = span.as_secs_f64().max(1e-3);
    let d = new.totals.since(&old.totals);
    LoadReport {
        cpu_utilization: new.cpu.saturating_sub(old.cpu).as_secs_f64() / secs / usable_cpus,
        rps: d.requests as f64 / secs,
        eps: d.errors as f64 / secs,
        in_flight: d.duration_sum / secs,
        p99_ms: d.quantile(0.99) * 1e3,
        usable_cpus,
        window: span,
        capacity: None,
    }
}

/// The CPUs the process may use: its workers, the machine's CPUs and its cgroup's quota,
/// whichever is fewest.
fn usable_cpus(workers: usize, quota: Option<f64>) -> f64 {
    let machine = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpus = workers.min(machine) as f64;
    match quota {
        Some(q) if q > 0.0 => cpus.min(q),
        _ => cpus,
    }
}

/// User plus system CPU time of the whole process.
fn process_cpu_time() -> Option<Duration> {
    // SAFETY: getrusage fills the struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return None;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Some(tv(ru.ru_utime) + tv(ru.ru_stime))
}

/// The process's cgroup CPU quota in CPUs, from cgroup v2's `cpu.max` or v1's
/// `cpu.cfs_quota_us` / `cpu.cfs_period_us` (hybrid hosts keep the cpu controller on v1);
/// `None` when there is none or it cannot be read. Parent cgroups' limits are not walked:
/// the limit is set where the gateway is placed.
fn cpu_quota() -> Option<f64> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    quota_files(&mounts, &cgroups)
        .into_iter()
        .find_map(|file| match file {
            QuotaFile::V2(max) => parse_cpu_max(&std::fs::read_to_string(max).ok()?),
            QuotaFile::V1 { quota, period } => {
                let read = |p: &std::path::Path| std::fs::read_to_string(p).ok();
                parse_cfs(&read(&quota)?, &read(&period)?)
            }
        })
}

/// Where a process's CPU quota is written.
#[derive(Debug, PartialEq)]
enum QuotaFile {
    /// cgroup v2: `cpu.max`.
    V2(std::path::PathBuf),
    /// cgroup v1: the CFS quota and period.
    V1 {
        quota: std::path::PathBuf,
        period: std::path::PathBuf,
    },
}

/// The quota files of the process whose `/proc/self/cgroup` is `cgroups`, on the cgroup
/// file systems `mounts` lists.
fn quota_files(mounts: &str, cgroups: &str) -> Vec<QuotaFile> {
    let path_of = |wanted: Option<&str>| {
        cgroups.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
            let matches = match wanted {
                None => controllers.is_empty(),
                Some(c) => controllers.split(',').any(|x| x == c),
            };
            matches.then(|| path.trim_start_matches('/').to_string())
        })
    };
    let mut files = Vec::new();
    for m in mounts.lines() {
        let f: Vec<&str> = m.split_whitespace().collect();
        let (Some(dir), Some(kind), Some(opts)) = (f.get(1), f.get(2), f.get(3)) else {
            continue;
        };
        let dir = std::path::Path::new(dir);
        if *kind == "cgroup2" {
            if let Some(p) = path_of(None) {
                files.push(QuotaFile::V2(dir.join(p).join("cpu.max")));
            }
        } else if *kind == "cgroup" && opts.split(',').any(|o| o == "cpu") {
            if let Some(p) = path_of(Some("cpu")) {
                files.push(QuotaFile::V1 {
                    quota: dir.join(&p).join("cpu.cfs_quota_us"),
                    period: dir.join(&p).join("cpu.cfs_period_us"),
                });
            }
        }
    }
    files
}

/// v1: a quota of -1 is none.
fn parse_cfs(quota: &str, period: &str) -> Option<f64> {
    let quota: f64 = quota.trim().parse().ok()?;
    let period: f64 = period.trim().parse().ok()?;
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

/// `"50000 100000"` → 0.5 CPUs; `"max 100000"` → no limit.
fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut fields = text.split_whitespace();
    let quota: f64 = fields.next()?.parse().ok()?;
    let period: f64 = fields.next().unwrap_or("100000").parse().ok()?;
    (period > 0.0).then(|| quota / period)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::BOUNDS;

    fn totals(requests: u64, errors: u64, duration_sum: f64, le: &[u64]) -> Totals {
        let mut buckets = [0; BOUNDS.len()];
        for (b, n) in buckets.iter_mut().zip(le) {
            *b = *n;
        }
        Totals {
            requests,
            errors,
            duration_sum,
            buckets,
        }
    }

    #[test]
    fn quota_files_on_v2_and_hybrid_hosts() {
        let v2 = quota_files(
            "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n",
            "0::/system.slice/gw.service\n",
        );
        assert_eq!(
            v2,
            [QuotaFile::V2(
                "/sys/fs/cgroup/system.slice/gw.service/cpu.max".into()
            )]
        );
        let hybrid = quota_files(
            "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\n\
             cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n",
            "4:memory:/x\n2:cpu,cpuacct:/gw\n0::/\n",
        );
        assert_eq!(
            hybrid,
            [
                QuotaFile::V1 {
                    quota: "/sys/fs/cgroup/cpu,cpuacct/gw/cpu.cfs_quota_us".into(),
                    period: "/sys/fs/cgroup/cpu,cpuacct/gw/cpu.cfs_period_us".into(),
                },
                QuotaFile::V2("/sys/fs/cgroup/unified/cpu.max".into()),
            ]
        );
        assert_eq!(parse_cfs("-1\n", "100000\n"), None);
        assert_eq!(parse_cfs("25000\n", "100000\n"), Some(0.25));
    }

    #[test]
    fn cpu_max_is_quota_over_period() {
        assert_eq!(parse_cpu_max("50000 100000\n"), Some(0.5));
        assert_eq!(parse_cpu_max("200000 100000"), Some(2.0));
        assert_eq!(parse_cpu_max("max 100000"), None);
        assert_eq!(parse_cpu_max(""), None);
        assert_eq!(usable_cpus(1, Some(0.5)), 0.5);
        assert_eq!(usable_cpus(1, Some(4.0)), 1.0);
        assert_eq!(usable_cpus(1, None), 1.0);
    }

    #[test]
    fn a_window_of_two_samples() {
        let t0 = Instant::now();
        let old = Sample {
            at: t0,
            cpu: Duration::from_millis(1000),
            totals: totals(100, 1, 0.5, &[100; BOUNDS.len()]),
        };
        // 2 s later: 1000 more requests, 10 of them 5xx, 4 s spent in flight in all, and
        // of the new ones 980 within 1 ms, 10 more within 2.5 ms, the last 10 within 5 ms.
        let mut le = [1100; BOUNDS.len()];
        le[0] = 1080;
        le[1] = 1090;
        let new = Sample {
            at: t0 + Duration::from_secs(2),
            cpu: Duration::from_millis(2000),
            totals: totals(1100, 11, 4.5, &le),
        };
        let r = between(&old, &new, 1.0);
        assert!((r.cpu_utilization - 0.5).abs() < 1e-9, "{r:?}");
        assert!((r.rps - 500.0).abs() < 1e-9, "{r:?}");
        assert!((r.eps - 5.0).abs() < 1e-9, "{r:?}");
        assert!((r.error_ratio() - 0.01).abs() < 1e-9, "{r:?}");
        assert!((r.in_flight - 2.0).abs() < 1e-9, "{r:?}");
        // The 990th of 1000 is the 10th of the 10 in (1, 2.5] ms: its top.
        assert!((r.p99_ms - 2.5).abs() < 1e-6, "{r:?}");
        assert_eq!(r.window, Duration::from_secs(2));
        let header = r.header_value();
        assert!(
            header.starts_with("TEXT cpu_utilization=0.500, rps_fractional=500.0, eps=5.0, named_metrics.in_flight=2.00, named_metrics.p99_ms=2.500"),
            "{header}"
        );
    }

    #[test]
    fn no_requests_no_latency() {
        let t0 = Instant::now();
        let s = |at: Instant| Sample {
            at,
            cpu: Duration::ZERO,
            totals: totals(5, 0, 0.1, &[5; BOUNDS.len()]),
        };
        let r = between(&s(t0), &s(t0 + Duration::from_secs(1)), 2.0);
        assert_eq!((r.rps, r.eps, r.p99_ms, r.in_flight), (0.0, 0.0, 0.0, 0.0));
    }
}
