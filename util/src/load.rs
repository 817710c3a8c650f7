//! A gateway's load report, as `sluice-gateway` writes it on `/readyz` and `sluice-lb` reads
//! it from its readiness probe: ORCA's load report in its `TEXT` header form
//! (`endpoint-load-metrics: TEXT cpu_utilization=0.42, rps_fractional=120.5, …`).
//!
//! A report also carries the gateway's own held estimate of its capacity
//! ([`CapacityEstimate`]). It is made once, where the measurement is, and it only moves when
//! the measurement has moved past a deadband. Every LB node that reads the gateway therefore
//! reads the same number, so they compute the same weights. Estimates made on each LB node
//! from their own samples would differ a little, and a deadband on each node would then hold
//! them apart for good.

use std::time::Duration;

/// The header the report travels in.
pub const HEADER: &str = "endpoint-load-metrics";

/// The largest value a report may carry (a billion requests per second, or a CPU
/// utilization of a billion).
pub const MAX_VALUE: f64 = 1e9;

/// One report.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoadReport {
    /// CPU time over the window per usable CPU (0.0 to about 1.0).
    pub cpu_utilization: f64,
    /// Requests answered per second.
    pub rps: f64,
    /// Requests answered with a 5xx status per second.
    pub eps: f64,
    /// Requests in flight, averaged over the window.
    pub in_flight: f64,
    /// 99th-percentile time to response head, in milliseconds (0 with no requests).
    pub p99_ms: f64,
    /// The CPUs the process may use.
    pub usable_cpus: f64,
    /// The span the report covers.
    #[serde(
        rename = "window_ms",
        serialize_with = "millis",
        deserialize_with = "from_millis"
    )]
    pub window: Duration,
    /// The gateway's held capacity estimate, in requests per second at full use of its
    /// usable CPUs ([`CapacityEstimate`]); `None` until it has one, or from a reporter that
    /// does not make one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<f64>,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

fn from_millis<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    <u64 as serde::Deserialize>::deserialize(d).map(Duration::from_millis)
}

impl LoadReport {
    /// The share of requests answered with a 5xx status.
    pub fn error_ratio(&self) -> f64 {
        if self.rps > 0.0 {
            self.eps / self.rps
        } else {
            0.0
        }
    }

    /// The report as the header's value.
    pub fn header_value(&self) -> String {
        let capacity = self
            .capacity
            // Shortest form that reads back exactly: every reader must see the same value.
            .map(|c| format!(", named_metrics.sluice_capacity={c}"))
            .unwrap_or_default();
        format!(
            "TEXT cpu_utilization={:.3}, rps_fractional={:.1}, eps={:.1}, \
             named_metrics.in_flight={:.2}, named_metrics.p99_ms={:.3}, \
             named_metrics.usable_cpus={:.2}, named_metrics.window_ms={}{capacity}",
            self.cpu_utilization,
            self.rps,
            self.eps,
            self.in_flight,
            self.p99_ms,
            self.usable_cpus,
            self.window.as_millis()
        )
    }

    /// Reads a header value. Fields it does not know are skipped (ORCA has more); `None`
    /// unless it is the `TEXT` form with `cpu_utilization` and `rps_fractional`, every
    /// value a finite number between 0 and [`MAX_VALUE`]: a report comes from another node,
    /// and a value past any real gateway's would only be a lie or a bug.
    pub fn parse(value: &str) -> Option<LoadReport> {
        let fields = value.trim().strip_prefix("TEXT ")?;
        let mut r = LoadReport::default();
        let (mut cpu, mut rps) = (false, false);
        for field in fields.split(',') {
            let (key, raw) = field.trim().split_once('=')?;
            let v: f64 = raw.trim().parse().ok()?;
            if !(0.0..=MAX_VALUE).contains(&v) {
                return None;
            }
            match key.trim() {
                "cpu_utilization" => (r.cpu_utilization, cpu) = (v, true),
                "rps_fractional" => (r.rps, rps) = (v, true),
                "eps" => r.eps = v,
                "named_metrics.in_flight" => r.in_flight = v,
                "named_metrics.p99_ms" => r.p99_ms = v,
                "named_metrics.usable_cpus" => r.usable_cpus = v,
                "named_metrics.window_ms" => r.window = Duration::from_millis(v.min(1e9) as u64),
                // Zero says nothing about capacity: no estimate.
                "named_metrics.sluice_capacity" => r.capacity = (v > 0.0).then_some(v),
                _ => {}
            }
        }
        (cpu && rps).then_some(r)
    }
}

/// How a [`CapacityEstimate`] follows the reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CapacityTuning {
    /// Share of the way toward a new measurement the smoothed estimate takes (0 to 1].
    pub smoothing: f64,
    /// The held estimate moves only when the smoothed one is more than this share away.
    pub deadband: f64,
    /// How much an error counts against capacity, as utilization per error ratio.
    pub error_penalty: f64,
    /// A report below this utilization says too little about capacity: the estimate holds.
    pub min_utilization: f64,
}

impl Default for CapacityTuning {
    fn default() -> Self {
        CapacityTuning {
            smoothing: 0.5,
            deadband: 0.05,
            error_penalty: 1.0,
            min_utilization: 0.01,
        }
    }
}

/// A gateway's capacity: the requests per second it would answer with all of its usable
/// CPUs, as gRPC's weighted round robin estimates it (`rps / (cpu_utilization +
/// error_penalty × error_ratio)`), smoothed, and held until the smoothed value leaves a
/// deadband around the held one. Holding is what keeps a settled pool's tables still, and
/// doing it once, on the gateway, is what makes every reader see the same value.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CapacityEstimate {
    smoothed: Option<f64>,
    held: Option<f64>,
}

impl CapacityEstimate {
    /// Takes in one report; returns the held estimate.
    pub fn update(&mut self, r: &LoadReport, t: &CapacityTuning) -> Option<f64> {
        if r.rps > 0.0 && r.cpu_utilization >= t.min_utilization {
            let busy = r.cpu_utilization + t.error_penalty * r.error_ratio();
            let raw = (r.rps / busy).min(MAX_VALUE);
            if raw.is_finite() && raw > 0.0 {
                let s = match self.smoothed {
                    Some(s) => s + t.smoothing * (raw - s),
                    None => raw,
                };
                self.smoothed = Some(s);
                if !self.held.is_some_and(|h| (s - h).abs() <= t.deadband * h) {
                    // Rounded as the header writes it, so the gateway's own view (status,
                    // metrics) is exactly what its readers parse.
                    self.held = Some(((s * 1e3).round() / 1e3).clamp(1e-3, MAX_VALUE));
                }
            }
        }
        self.held
    }

    /// The held estimate.
    pub fn held(&self) -> Option<f64> {
        self.held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_reads_back_as_written() {
        let r = LoadReport {
            cpu_utilization: 0.42,
            rps: 1234.5,
            eps: 2.5,
            in_flight: 3.25,
            p99_ms: 1.75,
            usable_cpus: 0.5,
            window: Duration::from_millis(5000),
            capacity: Some(2500.125),
        };
        assert_eq!(LoadReport::parse(&r.header_value()), Some(r));
        let without = LoadReport {
            capacity: None,
            ..r
        };
        assert_eq!(LoadReport::parse(&without.header_value()), Some(without));
        // A capacity of zero (or minus zero) is no estimate, not a reason to drop the report.
        for zero in ["0", "-0", "0.000"] {
            let text = format!(
                "TEXT cpu_utilization=0.5, rps_fractional=1, named_metrics.sluice_capacity={zero}"
            );
            let parsed = LoadReport::parse(&text);
            assert!(
                parsed.is_some_and(|p| p.capacity.is_none()),
                "{zero}: {parsed:?}"
            );
        }
        assert!((r.error_ratio() - 2.5 / 1234.5).abs() < 1e-12);
    }

    #[test]
    fn other_orca_fields_are_skipped_and_nonsense_refused() {
        let r = LoadReport::parse(
            "TEXT mem_utilization=0.9, cpu_utilization=0.2, rps_fractional=10, named_metrics.x=1",
        )
        .expect("valid");
        assert_eq!((r.cpu_utilization, r.rps), (0.2, 10.0));
        for bad in [
            "",
            "JSON {\"cpu_utilization\": 0.2}",
            "TEXT cpu_utilization=0.2",
            "TEXT cpu_utilization=NaN, rps_fractional=1",
            "TEXT cpu_utilization=-1, rps_fractional=1",
            "TEXT cpu_utilization=inf, rps_fractional=1",
            "TEXT cpu_utilization=0.5, rps_fractional=1e308",
            "TEXT cpu_utilization=1e-320, rps_fractional=1e10",
            "TEXT cpu_utilization, rps_fractional=1",
        ] {
            assert_eq!(LoadReport::parse(bad), None, "{bad}");
        }
    }

    fn at(cpu: f64, rps: f64) -> LoadReport {
        LoadReport {
            cpu_utilization: cpu,
            rps,
            ..LoadReport::default()
        }
    }

    #[test]
    fn the_estimate_is_smoothed_and_held_within_its_deadband() {
        let t = CapacityTuning::default();
        let mut e = CapacityEstimate::default();
        assert_eq!(e.update(&at(0.5, 500.0), &t), Some(1000.0));
        // Smoothed 1000 → 1020: within 5%, held.
        assert_eq!(e.update(&at(0.5, 520.0), &t), Some(1000.0));
        assert_eq!(e.update(&at(0.5, 480.0), &t), Some(1000.0));
        // A real change: smoothed past the deadband, the held value follows, half the way
        // at the first report (smoothing 0.5 from 990, where the two reports above left it).
        assert_eq!(e.update(&at(0.5, 1000.0), &t), Some(1495.0));
        let mut held = Some(1495.0);
        for _ in 0..10 {
            held = e.update(&at(0.5, 1000.0), &t);
        }
        assert!(
            held.is_some_and(|h| (h - 2000.0).abs() <= 0.05 * 2000.0),
            "{held:?}"
        );
        // Idle, or no requests: the estimate holds.
        assert_eq!(e.update(&at(0.001, 1.0), &t), held);
        assert_eq!(e.update(&at(0.5, 0.0), &t), held);
        // Errors count against it.
        let mut f = CapacityEstimate::default();
        let failing = LoadReport {
            eps: 250.0,
            ..at(0.5, 500.0)
        };
        assert_eq!(f.update(&failing, &t), Some(500.0));
        // A liar's estimate stays a value a report may carry.
        let mut g = CapacityEstimate::default();
        let big = g.update(&at(0.01, MAX_VALUE), &t);
        assert_eq!(big, Some(MAX_VALUE));
        let r = LoadReport {
            capacity: big,
            ..at(0.01, MAX_VALUE)
        };
        assert_eq!(LoadReport::parse(&r.header_value()), Some(r));
    }

    #[test]
    fn noise_within_the_deadband_never_moves_the_held_estimate() {
        let t = CapacityTuning::default();
        let mut e = CapacityEstimate::default();
        let first = e.update(&at(0.5, 500.0), &t);
        // ±3% noise on every sample, 1,000 samples (a deterministic sequence).
        for i in 0..1000u32 {
            let jitter = 1.0 + 0.03 * (((i * 7919) % 201) as f64 / 100.0 - 1.0);
            assert_eq!(e.update(&at(0.5 * jitter, 500.0), &t), first, "sample {i}");
        }
    }
}
