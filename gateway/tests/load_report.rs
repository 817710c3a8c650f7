//! The load report on `/readyz` (`endpoint-load-metrics`, ORCA's TEXT form) and in
//! `/metrics`: rates, errors, latency and CPU against real traffic, and the CPU quota of
//! the cgroup the gateway runs in.

mod support;

use std::{collections::HashMap, time::Duration};

use support::{admin_get, fixed, metric, request, runtime, upstream, Gateway, GatewayToml};

/// The report's fields by name.
fn report(gw: &Gateway) -> HashMap<String, f64> {
    let reply = admin_get(gw, "/readyz");
    assert_eq!(reply.status, 200);
    // None in the first second: no window has been measured yet.
    let Some(header) = reply.headers.get("endpoint-load-metrics") else {
        return HashMap::new();
    };
    let fields = header
        .strip_prefix("TEXT ")
        .unwrap_or_else(|| panic!("not ORCA TEXT: {header}"));
    fields
        .split(", ")
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or_else(|| panic!("{kv}"));
            (k.to_string(), v.parse().unwrap_or_else(|_| panic!("{kv}")))
        })
        .collect()
}

fn wait_for(gw: &Gateway, what: &str, mut done: impl FnMut(&HashMap<String, f64>) -> bool) {
    let start = std::time::Instant::now();
    loop {
        let r = report(gw);
        if done(&r) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{what}: {r:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn readiness_carries_the_load_of_the_last_seconds() {
    let rt = runtime();
    let ok = upstream(&rt, "ok", fixed(200, Duration::ZERO));
    let bad = upstream(&rt, "bad", fixed(500, Duration::ZERO));
    let gw = Gateway::start(
        &GatewayToml::new()
            .upstream("ok", &[ok.addr])
            .upstream("bad", &[bad.addr])
            .route("ok", "/ok", "ok")
            .route("bad", "/bad", "bad")
            .build(),
    );
    // Before any request: a report with no traffic, once a first window is measured.
    wait_for(&gw, "a first report", |r| r.contains_key("cpu_utilization"));
    // 300 requests, a third of them answered 500 by their upstream.
    for i in 0..300 {
        let path = if i % 3 == 0 { "/bad" } else { "/ok" };
        assert!(request(gw.http, "GET", path, &[], "").status >= 200);
    }
    wait_for(&gw, "the traffic in the report", |r| {
        r.get("rps_fractional").is_some_and(|v| *v > 0.0)
    });
    let r = report(&gw);
    let ratio = r["eps"] / r["rps_fractional"];
    assert!((0.25..=0.42).contains(&ratio), "error ratio {ratio}: {r:?}");
    assert!(
        r["named_metrics.p99_ms"] > 0.0 && r["named_metrics.p99_ms"] < 1000.0,
        "{r:?}"
    );
    assert!(r["named_metrics.in_flight"] >= 0.0, "{r:?}");
    assert!(
        r["cpu_utilization"] > 0.0 && r["cpu_utilization"] < 2.0,
        "{r:?}"
    );
    // The test starts it with two workers.
    let cpus = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(2) as f64;
    assert_eq!(r["named_metrics.usable_cpus"], cpus, "{r:?}");
    assert!(r["named_metrics.window_ms"] > 0.0, "{r:?}");
    // The same figures are gauges in /metrics.
    assert!(metric(&gw, "sluice_gateway_load_requests_per_second") > 0.0);
    assert!(metric(&gw, "sluice_gateway_load_errors_per_second") > 0.0);
    assert_eq!(metric(&gw, "sluice_gateway_load_usable_cpus"), cpus);
    // Busy enough to measure: the report carries a capacity estimate, the same in /metrics.
    let start = std::time::Instant::now();
    let capacity = loop {
        for _ in 0..200 {
            request(gw.http, "GET", "/ok", &[], "");
        }
        if let Some(c) = report(&gw).get("named_metrics.sluice_capacity") {
            break *c;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no capacity estimate"
        );
    };
    assert!(capacity > 0.0, "{capacity}");
    // Quiet again: the window moves on and the rates fall to nothing, while the capacity
    // estimate holds (an idle gateway says nothing new about what it could do).
    wait_for(&gw, "the traffic leaving the window", |r| {
        r.get("rps_fractional").is_some_and(|v| *v == 0.0)
    });
    let held = report(&gw).get("named_metrics.sluice_capacity").copied();
    assert!(held.is_some_and(|h| h > 0.0), "{held:?}");
    assert_eq!(
        Some(metric(
            &gw,
            "sluice_gateway_load_capacity_requests_per_second"
        )),
        held
    );
}

#[test]
fn the_cgroup_cpu_quota_is_what_utilization_is_measured_against() {
    if !sluice_e2e::privileged() {
        return;
    }
    let rt = runtime();
    let ok = upstream(&rt, "ok", fixed(200, Duration::ZERO));
    let gw = Gateway::start(
        &GatewayToml::new()
            .upstream("ok", &[ok.addr])
            .route("ok", "/", "ok")
            .build(),
    );
    let cgroup = sluice_e2e::cgroup::CpuLimit::new(gw.pid(), 0.5);
    wait_for(&gw, "the quota in the report", |r| {
        r.get("named_metrics.usable_cpus")
            .is_some_and(|v| *v == 0.5)
    });
    cgroup.set(None);
    let cpus = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(2) as f64;
    wait_for(&gw, "the quota lifted", |r| {
        r.get("named_metrics.usable_cpus")
            .is_some_and(|v| *v == cpus)
    });
    drop(cgroup);
}
