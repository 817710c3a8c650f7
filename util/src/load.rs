//! A gateway's load report, as `sluice-gateway` writes it on `/readyz` and `sluice-lb` reads
//! it from its readiness probe: ORCA's load report in its `TEXT` header form
//! (`endpoint-load-metrics: TEXT cpu_utilization=0.42, rps_fractional=120.5, …`).

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
        format!(
            "TEXT cpu_utilization={:.3}, rps_fractional={:.1}, eps={:.1}, \
             named_metrics.in_flight={:.2}, named_metrics.p99_ms={:.3}, \
             named_metrics.usable_cpus={:.2}, named_metrics.window_ms={}",
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
                _ => {}
            }
        }
        (cpu && rps).then_some(r)
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
        };
        assert_eq!(LoadReport::parse(&r.header_value()), Some(r));
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
}
