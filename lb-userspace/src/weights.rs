//! Load-aware weights: each gateway's effective weight is its configured weight times a
//! capacity factor taken from the load reports its readiness answers carry.
//!
//! A gateway's capacity is its own held estimate, carried in its report
//! ([`sluice_util::load::CapacityEstimate`]: gRPC weighted round robin's `rps / utilization`,
//! with a penalty for errors, smoothed and held within a deadband). A reporter that sends no
//! estimate gets one made here, from its reports, the same way. Capacities per unit of
//! configured weight are compared with their mean over the backends that report; the factor
//! heads for that ratio on a fixed grid, between a floor and a ceiling.
//!
//! Two LB nodes must build the same table once settled, so that a flow ECMP moves between
//! them keeps its gateway. So the factor's resting place depends only on the capacities,
//! never on the path taken: the target is the ratio clamped and rounded to the grid, the
//! factor moves toward it (smoothed, a step at least) and lands on it exactly. The hysteresis
//! that keeps a settled pool's table still is in the held capacity, which every node reads
//! alike; a deadband here, applied to each node's own history, could hold two nodes a step
//! apart for good.
//!
//! A report that is stale keeps the factor a while, then the factor returns to 1 (the
//! configured weight). A factor never reaches 0: only a drain or failing readiness takes a
//! gateway's new flows away.
//!
//! Everything here is pure: the agent feeds reports in, and gets factors and tables out.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Duration,
};

use sluice_util::load::{CapacityTuning, LoadReport};

use crate::maglev::{self, MaglevError, Member};

/// How the factors move (the `[load_weights]` section).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tuning {
    /// Share of the way toward its target a factor takes at each adjustment, and a
    /// capacity estimate made here toward each new report (0 to 1].
    pub smoothing: f64,
    /// The lowest factor.
    pub floor: f64,
    /// The highest factor.
    pub ceiling: f64,
    /// Factors are multiples of this step.
    pub step: f64,
    /// A capacity estimate made here moves only past this share of its held value.
    pub deadband: f64,
    /// How much an error counts against capacity, as utilization per error ratio.
    pub error_penalty: f64,
    /// Reports below this utilization say too little about capacity: an estimate made
    /// here holds.
    pub min_utilization: f64,
    /// A report older than this no longer moves the factor; it holds.
    pub stale_after: Duration,
    /// A report older than this, or none at all: the factor returns to 1.
    pub forget_after: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            smoothing: 0.5,
            floor: 0.25,
            ceiling: 2.0,
            step: 0.05,
            deadband: 0.05,
            error_penalty: 1.0,
            min_utilization: 0.01,
            stale_after: Duration::from_secs(10),
            forget_after: Duration::from_secs(60),
        }
    }
}

impl Tuning {
    /// How capacity estimates made here (for reporters that send none) follow reports.
    pub fn capacity(&self) -> CapacityTuning {
        CapacityTuning {
            smoothing: self.smoothing,
            deadband: self.deadband,
            error_penalty: self.error_penalty,
            min_utilization: self.min_utilization,
        }
    }
}

/// One backend's inputs for one adjustment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Input {
    /// Its configured weight.
    pub configured: u32,
    /// Its last report and the report's age, if it sent one. Its capacity is the
    /// gateway's estimate, or the one the agent made for a reporter that sends none.
    pub report: Option<(LoadReport, Duration)>,
}

/// A backend's capacity per unit of configured weight, if its report is fresh and holds one.
fn capacity_per_weight(input: &Input, t: &Tuning) -> Option<f64> {
    let (r, age) = input.report?;
    if age > t.stale_after || input.configured == 0 {
        return None;
    }
    r.capacity
        .filter(|c| c.is_finite() && *c > 0.0)
        .map(|c| c / input.configured as f64)
}

/// The next factor of every backend in `inputs` (keyed by address, so the result does not
/// depend on the order reports came in). `previous` holds the factors in force; a backend
/// missing from it is at 1.
pub fn adjust(
    inputs: &BTreeMap<IpAddr, Input>,
    previous: &BTreeMap<IpAddr, f64>,
    t: &Tuning,
) -> BTreeMap<IpAddr, f64> {
    let capacities: BTreeMap<IpAddr, f64> = inputs
        .iter()
        .filter_map(|(a, i)| Some((*a, capacity_per_weight(i, t)?)))
        .collect();
    // With one reporting backend there is nothing to compare it with.
    let mean = (capacities.len() >= 2)
        .then(|| capacities.values().sum::<f64>() / capacities.len() as f64)
        .filter(|m| *m > 0.0);
    inputs
        .iter()
        .map(|(addr, input)| {
            let now = previous.get(addr).copied().unwrap_or(1.0);
            let aim = match (capacities.get(addr), mean) {
                // Finite by construction (reports are bounded), and checked anyway: a
                // factor that became NaN would never recover.
                (Some(c), Some(m)) if (c / m).is_finite() => c / m,
                // A fresh report without a capacity (a gateway too idle to tell yet), or
                // the only one with a capacity: the configured weight, which every node
                // computes alike. Holding here would keep each node's own factor.
                _ if input.report.is_some_and(|(_, age)| age <= t.stale_after) => 1.0,
                // Stale: hold a while (the gateway may be back soon), then back to 1.
                _ if input.report.is_some_and(|(_, age)| age <= t.forget_after) => now,
                _ => 1.0,
            };
            (*addr, next_factor(now, aim, t))
        })
        .collect()
}

/// The backends whose capacities are compared with one another: those of load VIPs that
/// share a backend, transitively (a factor is a backend's, in every VIP it serves). Gateways
/// of unrelated pools (other hardware, other services) are never measured against each
/// other's mean, which would push one pool to the ceiling and the other to the floor and
/// flatten the differences within each. `vips` lists each load VIP's backends.
pub fn pools(vips: &[Vec<IpAddr>]) -> Vec<BTreeSet<IpAddr>> {
    let mut pools: Vec<BTreeSet<IpAddr>> = Vec::new();
    for members in vips {
        let mut merged: BTreeSet<IpAddr> = members.iter().copied().collect();
        pools.retain(|p| {
            if p.is_disjoint(&merged) {
                return true;
            }
            merged.extend(p.iter().copied());
            false
        });
        if !merged.is_empty() {
            pools.push(merged);
        }
    }
    pools
}

/// [`adjust`] within each of `pools` on its own: each backend's capacity is compared with
/// its pool's mean. A backend in no pool keeps its factor.
pub fn adjust_by_pool(
    inputs: &BTreeMap<IpAddr, Input>,
    pools: &[BTreeSet<IpAddr>],
    previous: &BTreeMap<IpAddr, f64>,
    t: &Tuning,
) -> BTreeMap<IpAddr, f64> {
    let mut next = BTreeMap::new();
    for pool in pools {
        let within: BTreeMap<IpAddr, Input> = inputs
            .iter()
            .filter(|(a, _)| pool.contains(a))
            .map(|(a, i)| (*a, *i))
            .collect();
        next.extend(adjust(&within, previous, t));
    }
    for a in inputs.keys() {
        if !next.contains_key(a) {
            next.insert(*a, previous.get(a).copied().unwrap_or(1.0));
        }
    }
    next
}

/// The factor a backend rests at for `aim`: bounded and on the grid.
fn target(aim: f64, t: &Tuning) -> f64 {
    quantize(aim.clamp(t.floor, t.ceiling), t.step).clamp(t.floor, t.ceiling)
}

/// One step from `now` toward `aim`'s [`target`]: smoothed, on the grid, at least one step,
/// and onto the target itself once within a step, so every starting point ends there.
fn next_factor(now: f64, aim: f64, t: &Tuning) -> f64 {
    let target = target(aim, t);
    if (target - now).abs() <= t.step * (1.0 + 1e-9) {
        return target;
    }
    let moved = quantize(now + t.smoothing * (target - now), t.step);
    if moved == now {
        // Smoothing over a short distance rounds back to where it started.
        return quantize(now + t.step.copysign(target - now), t.step);
    }
    moved
}

/// `x` to the nearest multiple of `step`, halves away from zero: the same on every node.
fn quantize(x: f64, step: f64) -> f64 {
    if step <= 0.0 {
        return x;
    }
    let steps = (x / step).round();
    // Rounded again so 0.15000000000000002 and 0.15 are one value.
    (steps * step * 1e6).round() / 1e6
}

/// Part of the way from `now` to `target`: each factor halfway, on the step grid, and at
/// least one step toward its target, so repeated halving still ends.
pub fn halfway(
    now: &BTreeMap<IpAddr, f64>,
    target: &BTreeMap<IpAddr, f64>,
    step: f64,
) -> BTreeMap<IpAddr, f64> {
    target
        .iter()
        .map(|(a, t)| {
            let n = now.get(a).copied().unwrap_or(1.0);
            let mut h = quantize((n + t) / 2.0, step);
            if (h - n).abs() < step / 2.0 && (t - n).abs() >= step / 2.0 {
                h = quantize(n + step.copysign(t - n), step);
            }
            (*a, h)
        })
        .collect()
}

/// The weight a table gets for a backend: its configured weight times its factor, in
/// hundredths, so a factor of 1 keeps the configured proportions. Never 0 for a backend
/// configured above 0.
pub fn effective_weight(configured: u32, factor: f64) -> u32 {
    if configured == 0 {
        return 0;
    }
    let w = (configured as f64 * factor * 100.0).round();
    w.clamp(1.0, u32::MAX as f64) as u32
}

/// The members to write now so that at most `max_disruption` of the table's slots move
/// away from backends in both tables: the target itself if it is within the bound,
/// otherwise the weights part of the way there (the largest share found by halving that
/// stays within it). The rest is reached at later adjustments. Returns the members and
/// the disruption they cause.
pub fn bounded_step(
    current: &[Member],
    target: &[Member],
    size: u32,
    max_disruption: f64,
) -> Result<(Vec<Member>, f64), MaglevError> {
    let now = maglev::build(current, size)?;
    let survivors: std::collections::HashSet<u32> = current
        .iter()
        .filter(|m| m.weight > 0)
        .filter(|m| target.iter().any(|t| t.id == m.id && t.weight > 0))
        .map(|m| m.id)
        .collect();
    let at = |share: f64| -> Vec<Member> {
        current
            .iter()
            .zip(target)
            .map(|(c, t)| Member {
                weight: (c.weight as f64 + share * (t.weight as f64 - c.weight as f64)).round()
                    as u32,
                ..*t
            })
            .collect()
    };
    let moved = |members: &[Member]| -> Result<f64, MaglevError> {
        Ok(crate::controller::disruption(
            &now,
            &maglev::build(members, size)?,
            &survivors,
        ))
    };
    let full = moved(target)?;
    if full <= max_disruption {
        return Ok((target.to_vec(), full));
    }
    let (mut lo, mut hi) = (0.0, 1.0);
    let mut best = (current.to_vec(), 0.0);
    for _ in 0..10 {
        let mid = (lo + hi) / 2.0;
        let members = at(mid);
        let d = moved(&members)?;
        if d <= max_disruption {
            best = (members, d);
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use sluice_util::load::CapacityEstimate;

    fn addr(i: u8) -> IpAddr {
        IpAddr::from([10, 20, 0, 20 + i])
    }

    /// CPU a model gateway uses with no requests, as a share of its one CPU.
    const IDLE_CPU: f64 = 0.02;

    /// Gateways of the given CPU cost per request (seconds) sharing `offered` requests per
    /// second by their effective weights; each answers at most what one CPU allows, and
    /// keeps its capacity estimate as `sluice-gateway` does.
    struct Pool {
        cost: Vec<f64>,
        offered: f64,
        estimates: Vec<CapacityEstimate>,
    }

    impl Pool {
        fn new(cost: Vec<f64>, offered: f64) -> Self {
            let estimates = vec![CapacityEstimate::default(); cost.len()];
            Pool {
                cost,
                offered,
                estimates,
            }
        }

        /// The reports after a window at these factors, with `noise` (a share) on each.
        fn reports(
            &mut self,
            factors: &BTreeMap<IpAddr, f64>,
            noise: f64,
            rng: &mut rand::rngs::StdRng,
        ) -> BTreeMap<IpAddr, Input> {
            let weights: Vec<f64> = (0..self.cost.len())
                .map(|i| {
                    effective_weight(1, factors.get(&addr(i as u8)).copied().unwrap_or(1.0)) as f64
                })
                .collect();
            let total: f64 = weights.iter().sum();
            (0..self.cost.len())
                .map(|i| {
                    let offered = self.offered * weights[i] / total;
                    let served = offered.min(1.0 / self.cost[i]);
                    let jitter = 1.0 + noise * (rng.gen::<f64>() * 2.0 - 1.0);
                    let mut report = LoadReport {
                        // A fixed 2% of a CPU besides the requests (timers, probes, the
                        // sampler): a gateway given less traffic then looks a little less
                        // capable, which closes the loop the controller must not swing on.
                        cpu_utilization: ((served * self.cost[i] + IDLE_CPU) * jitter).min(1.0),
                        rps: served,
                        usable_cpus: 1.0,
                        ..LoadReport::default()
                    };
                    report.capacity = self.estimates[i].update(&report, &CapacityTuning::default());
                    (
                        addr(i as u8),
                        Input {
                            configured: 1,
                            report: Some((report, Duration::from_secs(1))),
                        },
                    )
                })
                .collect()
        }
    }

    fn share(factors: &BTreeMap<IpAddr, f64>, i: u8) -> f64 {
        let total: f64 = factors.values().sum();
        factors[&addr(i)] / total
    }

    /// Load VIPs that share a backend make one pool; unrelated ones are compared each within
    /// its own: a pool of strong gateways (1500 and 3000 requests/s per unit of weight) and
    /// one of weak ones (100 and 200) each keep their proportion of 2, where against one mean
    /// of 1200 the strong pool's would be cut at the ceiling and the weak pool's flattened at
    /// the floor.
    #[test]
    fn capacities_are_compared_within_each_pool_of_load_vips() {
        let pools = pools(&[
            vec![addr(0), addr(1)],
            vec![addr(2), addr(3)],
            vec![addr(3), addr(4)],
            vec![],
        ]);
        let want: Vec<BTreeSet<IpAddr>> = vec![
            [addr(0), addr(1)].into_iter().collect(),
            [addr(2), addr(3), addr(4)].into_iter().collect(),
        ];
        assert_eq!(pools, want);

        let reported = |capacity: f64| Input {
            configured: 1,
            report: Some((
                LoadReport {
                    capacity: Some(capacity),
                    ..LoadReport::default()
                },
                Duration::from_secs(1),
            )),
        };
        let inputs: BTreeMap<IpAddr, Input> = [1500.0, 3000.0, 100.0, 200.0]
            .into_iter()
            .enumerate()
            .map(|(i, c)| (addr(i as u8), reported(c)))
            .collect();
        let split: Vec<BTreeSet<IpAddr>> = vec![
            [addr(0), addr(1)].into_iter().collect(),
            [addr(2), addr(3)].into_iter().collect(),
        ];
        let t = Tuning::default();
        let mut factors = BTreeMap::new();
        for _ in 0..50 {
            factors = adjust_by_pool(&inputs, &split, &factors, &t);
        }
        let (strong, weak) = (
            factors[&addr(1)] / factors[&addr(0)],
            factors[&addr(3)] / factors[&addr(2)],
        );
        assert!((strong - 2.0).abs() < 0.1, "{factors:?}");
        assert!((weak - 2.0).abs() < 0.1, "{factors:?}");
        // One mean over both pools flattens the weak pool at the floor.
        let mut merged = BTreeMap::new();
        for _ in 0..50 {
            merged = adjust(&inputs, &merged, &t);
        }
        assert_eq!(merged[&addr(2)], merged[&addr(3)], "{merged:?}");
    }

    #[test]
    fn a_slower_gateway_gets_its_capacity_share() {
        // The third gateway needs twice the CPU per request: a fifth of the capacity.
        let mut pool = Pool::new(vec![0.001, 0.001, 0.002], 1500.0);
        let t = Tuning::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut factors = BTreeMap::new();
        for _ in 0..20 {
            factors = adjust(&pool.reports(&factors, 0.0, &mut rng), &factors, &t);
        }
        let slow = share(&factors, 2);
        assert!((slow - 0.2).abs() < 0.02, "share {slow}: {factors:?}");
        assert!((factors[&addr(0)] - factors[&addr(1)]).abs() < 1e-9);
    }

    /// Settles the pool of `a_slower_gateway_gets_its_capacity_share`, then runs 200
    /// adjustments on reports with `noise`: how many changed the factors, and the farthest
    /// any factor went from where it settled.
    fn under_noise(noise: f64, seed: u64) -> (usize, f64) {
        let mut pool = Pool::new(vec![0.001, 0.001, 0.002], 1500.0);
        let t = Tuning::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut factors = BTreeMap::new();
        for _ in 0..20 {
            factors = adjust(&pool.reports(&factors, 0.0, &mut rng), &factors, &t);
        }
        let settled = factors.clone();
        let (mut changes, mut farthest) = (0, 0.0f64);
        for _ in 0..200 {
            let next = adjust(&pool.reports(&factors, noise, &mut rng), &factors, &t);
            changes += usize::from(next != factors);
            for (a, f) in &next {
                farthest = farthest.max((f - settled[a]).abs());
            }
            factors = next;
        }
        (changes, farthest)
    }

    #[test]
    fn noisy_reports_do_not_make_it_oscillate() {
        let step = Tuning::default().step;
        // A few percent of noise, as 5-second windows have: the table all but never changes.
        let (changes, farthest) = under_noise(0.03, 7);
        assert!(changes <= 10, "{changes} table changes in 200 adjustments");
        assert!(farthest <= step + 1e-9, "{farthest}");
        // Much noisier reports move it more often, but only around where it settled.
        let (_, farthest) = under_noise(0.08, 8);
        assert!(farthest <= 3.0 * step + 1e-9, "{farthest}");
    }

    #[test]
    fn floor_ceiling_and_grid_hold() {
        let t = Tuning::default();
        let fast = Tuning {
            smoothing: 1.0,
            ..t
        };
        assert_eq!(next_factor(1.0, 0.0, &fast), t.floor);
        assert_eq!(next_factor(1.0, 50.0, &fast), t.ceiling);
        // Less than half a step away: the grid point it is on.
        assert_eq!(next_factor(1.0, 1.02, &t), 1.0);
        assert_eq!(
            next_factor(1.0, 1.04, &t),
            1.05,
            "within a step: onto the target"
        );
        assert_eq!(next_factor(1.0, 1.2, &t), 1.1, "halfway");
        assert_eq!(next_factor(1.0, 1.3, &t), 1.15);
        let slow = Tuning {
            smoothing: 0.1,
            ..t
        };
        assert_eq!(next_factor(1.0, 1.2, &slow), 1.05, "at least a step");
        assert_eq!(quantize(0.1 + 0.05, 0.05), 0.15);
        assert_eq!(effective_weight(3, 1.0), 300);
        assert_eq!(effective_weight(1, 0.0), 1);
        assert_eq!(effective_weight(0, 2.0), 0);
    }

    #[test]
    fn where_a_factor_settles_depends_on_the_aim_only() {
        // From any starting factor, any aim: the factor ends on the aim's target, and stays.
        let t = Tuning::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for _ in 0..10_000 {
            let aim = rng.gen_range(0.0..3.0);
            let mut f = quantize(rng.gen_range(t.floor..=t.ceiling), t.step);
            let mut steps = 0;
            while next_factor(f, aim, &t) != f {
                f = next_factor(f, aim, &t);
                steps += 1;
                assert!(steps <= 12, "aim {aim}: no rest after {steps} steps");
            }
            assert_eq!(f, target(aim, &t), "aim {aim}");
        }
    }

    #[test]
    fn a_lying_gateway_is_held_to_the_ceiling_and_the_others_to_the_floor() {
        let t = Tuning::default();
        let honest = LoadReport {
            cpu_utilization: 0.5,
            rps: 100.0,
            capacity: Some(200.0),
            ..LoadReport::default()
        };
        // Claims a billion requests per second on a hundredth of a CPU, and the largest
        // capacity a report may carry, every adjustment.
        let liar = LoadReport {
            cpu_utilization: t.min_utilization,
            rps: sluice_util::load::MAX_VALUE,
            capacity: Some(sluice_util::load::MAX_VALUE),
            ..LoadReport::default()
        };
        let now = Duration::from_secs(1);
        let inputs: BTreeMap<IpAddr, Input> = [
            (
                addr(0),
                Input {
                    configured: 1,
                    report: Some((honest, now)),
                },
            ),
            (
                addr(1),
                Input {
                    configured: 1,
                    report: Some((honest, now)),
                },
            ),
            (
                addr(2),
                Input {
                    configured: 1,
                    report: Some((liar, now)),
                },
            ),
        ]
        .into();
        let mut f = BTreeMap::new();
        for _ in 0..50 {
            f = adjust(&inputs, &f, &t);
            for v in f.values() {
                assert!(v.is_finite() && (t.floor..=t.ceiling).contains(v), "{f:?}");
            }
        }
        assert_eq!(f[&addr(2)], t.ceiling);
        assert_eq!(f[&addr(0)], t.floor);
        // So the liar gets at most ceiling / (ceiling + 2 floor) of new flows: 80%, and
        // every honest gateway keeps a share: never 0.
        let w: Vec<u32> = f.values().map(|v| effective_weight(1, *v)).collect();
        assert!(w.iter().all(|w| *w > 0), "{w:?}");
    }

    #[test]
    fn a_missing_report_holds_then_falls_back() {
        let t = Tuning::default();
        let report = LoadReport {
            cpu_utilization: 0.5,
            rps: 100.0,
            capacity: Some(200.0),
            ..LoadReport::default()
        };
        let inputs = |age: Option<Duration>| -> BTreeMap<IpAddr, Input> {
            [
                (
                    addr(0),
                    Input {
                        configured: 1,
                        report: Some((report, Duration::ZERO)),
                    },
                ),
                (
                    addr(1),
                    Input {
                        configured: 1,
                        report: Some((report, Duration::ZERO)),
                    },
                ),
                (
                    addr(2),
                    Input {
                        configured: 1,
                        report: age.map(|a| (report, a)),
                    },
                ),
            ]
            .into()
        };
        let previous: BTreeMap<IpAddr, f64> =
            [(addr(0), 1.2), (addr(1), 1.2), (addr(2), 0.5)].into();
        let stale = adjust(&inputs(Some(Duration::from_secs(30))), &previous, &t);
        assert_eq!(stale[&addr(2)], 0.5, "stale: held");
        let mut f = previous.clone();
        for _ in 0..10 {
            f = adjust(&inputs(None), &f, &t);
        }
        assert_eq!(f[&addr(2)], 1.0, "no report: back to the configured weight");
        let old = adjust(&inputs(Some(Duration::from_secs(120))), &previous, &t);
        assert!(old[&addr(2)] > 0.5, "forgotten: moving back to 1");
    }

    #[test]
    fn a_fresh_report_without_a_capacity_brings_every_node_to_the_configured_weight() {
        // A gateway just restarted and too idle to estimate: whatever factor each node had,
        // they all end at 1, not each at its own.
        let t = Tuning::default();
        let idle = LoadReport {
            cpu_utilization: 0.001,
            rps: 1.0,
            ..LoadReport::default()
        };
        let with = |capacity: Option<f64>| LoadReport { capacity, ..idle };
        let inputs: BTreeMap<IpAddr, Input> = [
            (addr(0), with(Some(300.0))),
            (addr(1), with(Some(100.0))),
            (addr(2), with(None)),
        ]
        .into_iter()
        .map(|(a, r)| {
            (
                a,
                Input {
                    configured: 1,
                    report: Some((r, Duration::from_secs(1))),
                },
            )
        })
        .collect();
        let mut settled = Vec::new();
        for start in [0.25, 0.6, 1.0, 1.65, 2.0] {
            let mut f: BTreeMap<IpAddr, f64> = (0..3).map(|i| (addr(i), start)).collect();
            for _ in 0..20 {
                f = adjust(&inputs, &f, &t);
            }
            assert_eq!(f[&addr(2)], 1.0, "from {start}");
            settled.push(f);
        }
        assert!(settled.windows(2).all(|w| w[0] == w[1]), "{settled:?}");
        assert_eq!(settled[0][&addr(0)], 1.5);
        assert_eq!(settled[0][&addr(1)], 0.5);
    }

    #[test]
    fn two_nodes_starting_apart_and_reading_at_different_times_settle_on_one_table() {
        // Each node reads the gateways at its own moments: node b a window after node a,
        // and on noisy windows. They start from different factors (b restarted with all at
        // 1, a anywhere). The gateways' held estimates are what they share.
        for seed in 0..50 {
            let mut pool = Pool::new(vec![0.001, 0.0015, 0.002], 1200.0);
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let t = Tuning::default();
            let mut a: BTreeMap<IpAddr, f64> = (0..3)
                .map(|i| {
                    (
                        addr(i),
                        quantize(rng.gen_range(t.floor..=t.ceiling), t.step),
                    )
                })
                .collect();
            let mut b = BTreeMap::new();
            let mut late = None;
            for _ in 0..40 {
                // The pool runs on the mean of the two nodes' tables (ECMP splits clients).
                let mean: BTreeMap<IpAddr, f64> = (0..3)
                    .map(|i| {
                        let k = addr(i);
                        let fa = a.get(&k).copied().unwrap_or(1.0);
                        (k, (fa + b.get(&k).copied().unwrap_or(1.0)) / 2.0)
                    })
                    .collect();
                let now = pool.reports(&mean, 0.02, &mut rng);
                a = adjust(&now, &a, &t);
                if let Some(seen) = late.replace(now) {
                    b = adjust(&seen, &b, &t);
                }
            }
            assert_eq!(a, b, "seed {seed}");
        }
    }

    #[test]
    fn a_large_change_is_reached_in_bounded_steps() {
        let members = |w: [u32; 3]| -> Vec<Member> {
            (0..3)
                .map(|i| Member {
                    id: i as u32 + 1,
                    addr: addr(i as u8),
                    weight: w[i],
                })
                .collect()
        };
        let target = members([100, 100, 25]);
        let mut current = members([100, 100, 100]);
        let mut steps = 0;
        while current != target {
            let (next, d) = bounded_step(&current, &target, 65537, 0.05).expect("tables");
            assert!(d <= 0.05, "step {steps} moved {d}");
            assert_ne!(next, current, "no progress at step {steps}");
            current = next;
            steps += 1;
            assert!(steps < 20);
        }
        assert!(steps > 1, "a 25% share change takes more than one 5% step");
    }
}
