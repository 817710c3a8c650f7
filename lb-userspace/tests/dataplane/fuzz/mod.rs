//! Packet fuzzing of `sluice_lb`: random and mutated frames through BPF_PROG_TEST_RUN, each
//! checked against the plain-Rust reference model ([`model`]): the action and the output
//! bytes, exactly one outcome counter moved (by one), the flow-table events, the VIP and
//! backend traffic counters, and nothing else.
//!
//! `SLUICE_FUZZ_PACKETS` sets the count (100,000 by default; `cargo xtask fuzz` runs
//! 1,000,000), `SLUICE_TEST_SEED` replays a run.

mod model;
mod mutate;

use rand::{rngs::StdRng, SeedableRng};
use sluice_common::stats::{Lb, LbFlow};

use crate::{action, lab::Lab, with_lab};
use model::{Expected, Model, Vip};

/// The lab's VIPs: (id, address, port, protocol, backends).
pub const VIPS: [(u32, &str, u16, u8, &[u32]); 4] = [
    (0, "198.51.100.1", 80, 6, &[1, 2, 3]),
    (1, "198.51.100.1", 53, 17, &[1, 2, 3, 4]),
    (2, "2001:db8::1", 443, 6, &[5, 6, 7]),
    (3, "2001:db8::1", 53, 17, &[5, 6]),
];

/// Every counter the program may move, read at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Counters {
    outcomes: Vec<u64>,
    events: Vec<u64>,
    vips: Vec<(u64, u64)>,
    backends: Vec<(u64, u64)>,
}

impl Counters {
    fn read(lab: &Lab) -> Self {
        let dp = &lab.dp;
        Counters {
            outcomes: lab.outcome_counts(),
            events: lab.event_counts(),
            vips: (0..VIPS.len() as u32)
                .map(|i| {
                    dp.vip_traffic(i)
                        .map(|t| (t.packets, t.bytes))
                        .expect("vip")
                })
                .collect(),
            backends: (1..=8)
                .map(|i| {
                    dp.backend_traffic(i)
                        .map(|t| (t.packets, t.bytes))
                        .expect("backend")
                })
                .collect(),
        }
    }

    /// What `e` says the counters become for a frame of `len` bytes.
    fn after(&self, e: &Expected, len: u64) -> Self {
        let mut c = self.clone();
        c.outcomes[e.outcome as usize] += 1;
        for (happened, event) in [
            (e.miss_syn, LbFlow::MissSyn),
            (e.miss_other, LbFlow::MissOther),
            (e.icmp_error, LbFlow::IcmpError),
        ] {
            c.events[event as usize] += u64::from(happened);
        }
        if let Some((vip, backend, _)) = &e.forwarded {
            let v = &mut c.vips[*vip as usize];
            *v = (v.0 + 1, v.1 + len);
            let b = &mut c.backends[*backend as usize - 1];
            *b = (b.0 + 1, b.1 + len);
        }
        c
    }
}

fn action_of(e: &Expected) -> u32 {
    match e.outcome {
        Lb::Redirect => action::REDIRECT,
        Lb::Pass => action::PASS,
        _ => action::DROP,
    }
}

/// Runs `count` frames; panics on the first that the model does not explain.
pub fn run(lab: &mut Lab, count: u64, seed: u64) {
    let mut model = Model {
        vips: VIPS
            .iter()
            .map(|(id, ip, port, proto, ids)| {
                lab.vip(*id, ip, *port, *proto, 0, ids);
                Vip {
                    id: *id,
                    ip: ip.parse().expect("literal"),
                    port: *port,
                    proto: *proto,
                    table: crate::lab::table(ids, sluice_common::DEFAULT_TABLE_SIZE),
                }
            })
            .collect(),
        flows: Default::default(),
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let mut gen = mutate::Generator::new(&mut rng);
    let mut counters = Counters::read(lab);
    let mut by_outcome = vec![0u64; Lb::ALL.len()];
    for n in 0..count {
        let frame = gen.next(&mut rng);
        let want = model.expect(&frame);
        let out = lab.run(&frame);
        let what = || format!("frame {n} (SLUICE_TEST_SEED={seed}): {}", hex(&frame));
        assert_eq!(out.action, action_of(&want), "{want:?}\n{}", what());
        match (&want.forwarded, want.outcome) {
            (Some((_, _, bytes)), _) => assert_eq!(&out.data, bytes, "output of {}", what()),
            (None, Lb::Pass) => assert_eq!(out.data, frame, "a passed frame changed: {}", what()),
            _ => {}
        }
        let now = Counters::read(lab);
        let mut expected = counters.after(&want, frame.len() as u64);
        // Past what a CPU's share of the flow table holds, entries may be evicted and the
        // model no longer knows which flows have one: events are then not compared.
        if model.flows.len() >= 100_000 {
            expected.events = now.events.clone();
        }
        assert_eq!(now, expected, "counters after {}", what());
        counters = now;
        by_outcome[want.outcome as usize] += 1;
        if n % 20_000 == 19_999 && model.flows.len() < 100_000 {
            let entries = lab.dp.flow_count_entries().expect("flow table");
            assert_eq!(
                entries,
                model.flows.len(),
                "flow-table entries after {n} frames"
            );
        }
    }
    let spread: Vec<String> = Lb::ALL
        .iter()
        .zip(&by_outcome)
        .filter(|(_, n)| **n > 0)
        .map(|(o, n)| format!("{}={n}", o.name()))
        .collect();
    eprintln!(
        "{count} fuzzed frames matched the model (seed {seed}): {}; {} flows in the table",
        spread.join(" "),
        model.flows.len()
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn fuzzed_frames_match_the_reference_model() {
    let seed: u64 = std::env::var("SLUICE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let count: u64 = std::env::var("SLUICE_FUZZ_PACKETS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    with_lab(|lab| run(lab, count, seed));
}
