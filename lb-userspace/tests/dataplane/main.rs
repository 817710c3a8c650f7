//! Packet-level tests of `sluice_lb` and `sluice_decap` through BPF_PROG_TEST_RUN.
//!
//! Each test builds a throwaway namespace (see [`lab`]), loads the real programs, feeds
//! packets built with etherparse, and asserts the action, the exact output bytes and the
//! counters. They need root (CAP_BPF, CAP_NET_ADMIN).

mod decap;
mod edge;
mod fast_path;
mod forward;
mod fuzz;
mod golden;
mod lab;
mod model;
mod pkt;
mod scapy;
mod shield;

use sluice_common::stats::{Lb, LbFlow};

use crate::lab::Lab;

/// XDP actions.
pub mod action {
    pub const DROP: u32 = 1;
    pub const PASS: u32 = 2;
    pub const TX: u32 = 3;
    pub const REDIRECT: u32 = 4;
}

/// Asserts every `sluice_lb` outcome counter: those listed have the given value, all others 0.
pub fn assert_outcomes(lab: &Lab, expected: &[(Lb, u64)]) {
    for o in Lb::ALL {
        let want = expected
            .iter()
            .find(|(e, _)| e == o)
            .map(|(_, n)| *n)
            .unwrap_or(0);
        let got = lab.dp.lb_count(*o).expect("counter");
        assert_eq!(got, want, "counter {}", o.name());
    }
}

/// Asserts every flow-event counter: those listed have the given value, all others 0.
pub fn assert_flow_events(lab: &Lab, expected: &[(LbFlow, u64)]) {
    for e in LbFlow::ALL {
        let want = expected
            .iter()
            .find(|(x, _)| x == e)
            .map(|(_, n)| *n)
            .unwrap_or(0);
        let got = lab.dp.flow_count(*e).expect("counter");
        assert_eq!(got, want, "counter {}", e.name());
    }
}

/// Runs `f` with a fresh lab, if privileged.
pub fn with_lab(f: impl FnOnce(&mut Lab) + Send) {
    if !sluice_e2e::privileged() {
        return;
    }
    sluice_e2e::in_new_ns(|| {
        let mut lab = Lab::new(&Default::default());
        f(&mut lab)
    })
}
