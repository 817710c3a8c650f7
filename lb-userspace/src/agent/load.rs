//! Load-aware weights: each second, the factors of `weights = "load"` VIPs' backends move
//! toward their reported capacity within the disruption budget.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    time::{Duration, Instant},
};

use sluice_util::load::LoadReport;
use tracing::{error, info, warn};

use super::Agent;
use crate::{
    config::WeightMode,
    controller::{self, BackendStatus},
    weights,
};

/// `status` with each backend's load factor set from `factors` (in percent, which the
/// factors' steps make exact).
pub(super) fn with_factors(
    status: &HashMap<IpAddr, BackendStatus>,
    factors: &BTreeMap<IpAddr, f64>,
) -> HashMap<IpAddr, BackendStatus> {
    let mut status = status.clone();
    for (addr, f) in factors {
        status.entry(*addr).or_default().load_percent = Some((f * 100.0).round() as u32);
    }
    status
}

impl Agent {
    /// Keeps a backend's latest report. A reporter that sends no capacity estimate of its
    /// own (any ORCA reporter but `sluice-gateway`) gets one made here, from its reports.
    pub(super) fn on_load(&mut self, addr: IpAddr, mut report: LoadReport) {
        // As for health: a report queued before the backend left the config is dropped.
        if !self.known(&addr) {
            return;
        }
        if report.capacity.is_none() {
            let tuning = self.config.load_weights.tuning().capacity();
            report.capacity = self
                .estimates
                .entry(addr)
                .or_default()
                .update(&report, &tuning);
        }
        self.loads.insert(addr, (report, Instant::now()));
    }

    /// Moves the load factors of `weights = "load"` VIPs' ready backends toward their
    /// reported capacity, at most once per `adjust_interval_ms`, and pushes the tables with
    /// at most `max_disruption` of any table's slots moved: a larger move is halved until it
    /// fits, and the rest waits for the next adjustment.
    pub(super) fn adjust_load_weights(&mut self) {
        let lw = self.config.load_weights;
        if self.last_adjust.elapsed() < Duration::from_millis(lw.adjust_interval_ms) {
            return;
        }
        self.last_adjust = Instant::now();
        let inputs = self.load_inputs();
        // A backend that stopped serving (or left a load VIP) starts again from its
        // configured weight.
        self.factors.retain(|a, _| inputs.contains_key(a));
        for (addr, s) in self.status.iter_mut() {
            if !inputs.contains_key(addr) {
                s.load_percent = None;
            }
        }
        if inputs.is_empty() {
            return;
        }
        let now: BTreeMap<IpAddr, f64> = inputs
            .keys()
            .map(|a| (*a, self.factors.get(a).copied().unwrap_or(1.0)))
            .collect();
        let pools = weights::pools(&self.load_vip_members(&inputs));
        let mut step = weights::adjust_by_pool(&inputs, &pools, &now, &lw.tuning());
        for _ in 0..8 {
            if step == now {
                return;
            }
            let status = with_factors(&self.status, &step);
            let moved = match controller::plan(&self.config, &status, &mut self.ids) {
                Ok(plan) => self.applied.disruption_of(&plan),
                Err(e) => {
                    warn!(error = %e, "planning load weights failed");
                    return;
                }
            };
            if moved <= lw.max_disruption {
                info!(factors = ?step, disruption = moved, "load weights pushed");
                self.status = status;
                self.factors = step;
                if let Err(e) = self.apply() {
                    error!(error = %e, "applying load weights failed");
                }
                return;
            }
            step = weights::halfway(&now, &step, lw.step);
        }
        warn!(
            max_disruption = lw.max_disruption,
            "no load-weight step fits within max_disruption; waiting"
        );
    }

    /// Each `weights = "load"` VIP's backends among `inputs` (its ready ones).
    fn load_vip_members(&self, inputs: &BTreeMap<IpAddr, weights::Input>) -> Vec<Vec<IpAddr>> {
        self.config
            .vips
            .iter()
            .filter(|v| v.weights == WeightMode::Load)
            .map(|v| {
                v.backends
                    .iter()
                    .map(|b| b.address)
                    .filter(|a| inputs.contains_key(a))
                    .collect()
            })
            .collect()
    }

    /// What the controller gets for each ready backend of a `weights = "load"` VIP.
    pub(super) fn load_inputs(&self) -> BTreeMap<IpAddr, weights::Input> {
        let mut inputs = BTreeMap::new();
        for v in self
            .config
            .vips
            .iter()
            .filter(|v| v.weights == WeightMode::Load)
        {
            for b in &v.backends {
                let s = self.status.get(&b.address).copied().unwrap_or_default();
                if !s.healthy || s.draining || s.not_ready {
                    continue;
                }
                inputs.insert(
                    b.address,
                    weights::Input {
                        configured: s.weight.unwrap_or(b.weight),
                        report: self.loads.get(&b.address).map(|(r, at)| (*r, at.elapsed())),
                    },
                );
            }
        }
        inputs
    }
}
