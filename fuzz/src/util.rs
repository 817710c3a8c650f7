//! Checks of what the L4 agent reads from the gateways it balances (`sluice-util`): their
//! load reports and their shield candidates. A gateway is another node, so these are outside
//! input to the agent.

use sluice_util::{
    load::{LoadReport, MAX_VALUE},
    shield::{Candidates, MAX_CANDIDATES},
};

use crate::common::Check;

/// Every `sluice-util` target by name, for the replay tests.
pub const TARGETS: &[(&str, Check)] = &[
    ("load_report", load_report),
    ("shield_candidates", shield_candidates),
];

/// Target `load_report`: `LoadReport::parse` on an `endpoint-load-metrics` value, as the
/// agent reads a gateway's readiness answer.
///
/// Invariants beyond "no panic": a report taken has every value a finite number between 0
/// and `MAX_VALUE` (a window of at most 1e9 ms); written out again as a gateway writes it,
/// it is taken again, with the same values to the precision written, and the capacity
/// estimate exactly (LB nodes must all read the same one).
pub fn load_report(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Some(r) = LoadReport::parse(&text) else {
        return;
    };
    let values = |r: &LoadReport| {
        [
            r.cpu_utilization,
            r.rps,
            r.eps,
            r.in_flight,
            r.p99_ms,
            r.usable_cpus,
        ]
    };
    for v in values(&r) {
        assert!(v.is_finite() && (0.0..=MAX_VALUE).contains(&v), "{v} taken");
    }
    assert!(r.window.as_millis() <= 1_000_000_000, "{:?}", r.window);
    let again = LoadReport::parse(&r.header_value())
        .unwrap_or_else(|| panic!("{:?} is not taken again", r.header_value()));
    // Written with 1 to 3 decimals.
    for (a, b) in values(&r).into_iter().zip(values(&again)) {
        assert!(
            (a - b).abs() <= 0.05 + a.abs() * 1e-12,
            "{a} read back as {b}"
        );
    }
    assert_eq!(again.window, r.window);
    if let Some(c) = r.capacity {
        assert!(
            c.is_finite() && c > 0.0 && c <= MAX_VALUE,
            "capacity {c} taken"
        );
    }
    assert_eq!(again.capacity, r.capacity, "capacity read back differently");
}

/// Target `shield_candidates`: `Candidates::parse` on a gateway's `/shield/candidates`
/// answer, as the agent pulls it.
///
/// Invariants beyond "no panic": an answer taken has at most `MAX_CANDIDATES` candidates,
/// each a prefix without host bits; written out again as a gateway writes it, it parses to
/// itself.
pub fn shield_candidates(data: &[u8]) {
    let Ok(c) = Candidates::parse(data) else {
        return;
    };
    assert!(c.candidates.len() <= MAX_CANDIDATES);
    for cand in &c.candidates {
        assert_eq!(cand.prefix, cand.prefix.trunc(), "host bits kept");
    }
    let text = serde_json::to_vec(&c).expect("candidates are JSON");
    let again = Candidates::parse(&text).expect("written candidates parse");
    assert_eq!(again, c);
}
