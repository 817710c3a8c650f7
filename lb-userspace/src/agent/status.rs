//! What `sluice-lb status` and `/metrics` show: the agent's state read with the map
//! counters, and the rates sampled each second.

use std::{collections::HashMap, net::IpAddr, time::Instant};

use serde::Serialize;
use sluice_common::stats::{Lb, LbFlow};
use sluice_util::load::LoadReport;
use tracing::{info, warn};

use super::Agent;
use crate::{
    bgp::{Announcer, BgpStatus},
    config::{BackendConfig, Vip, WeightMode},
    shield::ShieldStatus,
    weights,
};

/// `sluice-lb status` output.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Status {
    /// VIPs.
    pub vips: Vec<VipStatus>,
    /// `sluice_lb` outcome counters.
    pub outcomes: Vec<(String, u64)>,
    /// Flow-table events.
    pub flow_events: Vec<(String, u64)>,
    /// Table flips since start.
    pub table_generation: u64,
    /// Disruption of the last change.
    pub last_disruption: f64,
    /// Config file and reload results.
    pub config: ConfigStatus,
    /// Blocked prefixes, the gateways' candidates and the flood guard.
    #[serde(default)]
    pub shield: ShieldStatus,
    /// The VIPs' announcements and the BGP sessions.
    #[serde(default)]
    pub bgp: BgpStatus,
    /// What forwarding needs from the node, checked every second.
    #[serde(default)]
    pub node_checks: Vec<crate::node_check::Check>,
    /// Packets dropped per second over the last second, by reason (the reasons that mean
    /// the node cannot forward: `fib_failure`, `no_backend`).
    #[serde(default)]
    pub drop_rates: Vec<(String, f64)>,
    /// The flow table's occupancy, counted every ten seconds (none before the first count).
    #[serde(default)]
    pub flow_table: Option<super::FlowTableView>,
}

/// Config state.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ConfigStatus {
    /// File.
    pub path: String,
    /// Successful loads.
    pub generation: u64,
    /// Whether the last reload was applied.
    pub last_reload_ok: bool,
    /// The last refusal, if any.
    pub last_error: Option<String>,
}

/// A VIP in `status`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct VipStatus {
    /// `address:port/protocol`.
    pub vip: String,
    /// Packets and bytes.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
    /// Backends.
    pub backends: Vec<BackendView>,
}

/// A backend in `status`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct BackendView {
    /// Address.
    pub address: IpAddr,
    /// `active`, `draining` or `down`.
    pub state: String,
    /// Health check passing.
    pub healthy: bool,
    /// Effective weight in this VIP's table (a `weights = "load"` VIP's are in hundredths
    /// of the configured weight).
    pub weight: u32,
    /// Configured weight (or the operator's override).
    #[serde(default)]
    pub configured_weight: u32,
    /// The load factor on it, in a `weights = "load"` VIP.
    #[serde(default)]
    pub load_factor: Option<f64>,
    /// Packets sent to it (all VIPs).
    pub packets: u64,
    /// Bytes sent to it.
    pub bytes: u64,
    /// Packets per second over the last sampling second.
    pub packets_per_second: f64,
    /// Bytes per second.
    pub bytes_per_second: f64,
    /// Its last load report, if its readiness answers carry one (a gateway's do).
    #[serde(default)]
    pub load: Option<LoadSeen>,
}

/// A backend's last load report and its age.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct LoadSeen {
    /// The report, as the gateway sent it.
    #[serde(flatten)]
    pub report: LoadReport,
    /// Milliseconds since it came.
    pub age_ms: u64,
}

/// Packets and bytes per backend id at one instant.
pub(super) type Counts = HashMap<u32, (u64, u64)>;

impl Agent {
    /// Rates of the drops that mean this node cannot forward, logged when they start and
    /// when they stop.
    pub(super) fn sample_drops(&mut self, dt: f64) {
        for (outcome, last, rate) in self.drops.iter_mut() {
            let Ok(n) = self.dp.lb_count(*outcome) else {
                continue;
            };
            // The counters are pinned: what a previous agent saw is not a rate.
            if let Some(before) = *last {
                let new_rate = n.saturating_sub(before) as f64 / dt;
                match (*rate > 0.0, new_rate > 0.0) {
                    (false, true) => warn!(
                        reason = outcome.name(),
                        per_second = new_rate,
                        "VIP packets are being dropped"
                    ),
                    (true, false) => {
                        info!(reason = outcome.name(), "VIP packets no longer dropped")
                    }
                    _ => {}
                }
                *rate = new_rate;
            }
            *last = Some(n);
        }
    }

    pub(super) fn sample_rates(&mut self) {
        let now = Instant::now();
        let mut current = HashMap::new();
        for v in &self.config.vips {
            for b in &v.backends {
                if let Some(id) = self.ids.backend_id(&b.address) {
                    if let Ok(t) = self.dp.backend_traffic(id) {
                        current.insert(id, (t.packets, t.bytes));
                    }
                }
            }
        }
        if let Some((then, _)) = &self.last_sample {
            let dt = now.duration_since(*then).as_secs_f64().max(1e-3);
            self.sample_drops(dt);
        }
        if let Some((then, prev)) = &self.last_sample {
            let dt = now.duration_since(*then).as_secs_f64().max(1e-3);
            self.rates = current
                .iter()
                .map(|(id, (p, b))| {
                    let (pp, pb) = prev.get(id).copied().unwrap_or((*p, *b));
                    (
                        *id,
                        ((p - pp.min(*p)) as f64 / dt, (b - pb.min(*b)) as f64 / dt),
                    )
                })
                .collect();
        }
        self.last_sample = Some((now, current));
    }

    pub(super) fn snapshot(&self) -> Status {
        Status {
            vips: self.config.vips.iter().map(|v| self.vip_view(v)).collect(),
            outcomes: Lb::ALL
                .iter()
                .map(|o| (o.name().to_string(), self.dp.lb_count(*o).unwrap_or(0)))
                .collect(),
            flow_events: LbFlow::ALL
                .iter()
                .map(|e| (e.name().to_string(), self.dp.flow_count(*e).unwrap_or(0)))
                .collect(),
            shield: self.shield.status(
                &self.dp,
                &self.config.shield,
                &self.config.flood_guard,
                self.config.node.flow_table_size,
            ),
            bgp: self.bgp.as_ref().map(Announcer::status).unwrap_or_default(),
            node_checks: self.checks.clone(),
            drop_rates: self
                .drops
                .iter()
                .map(|(o, _, r)| (o.name().to_string(), *r))
                .collect(),
            flow_table: self
                .flow_count
                .view(u64::from(self.config.node.flow_table_size)),
            table_generation: self.applied.generation,
            last_disruption: self.applied.last_disruption,
            config: ConfigStatus {
                path: self.path.display().to_string(),
                generation: self.config_generation,
                last_reload_ok: self.last_error.is_none(),
                last_error: self.last_error.clone(),
            },
        }
    }

    /// A VIP with its traffic and its backends.
    pub(super) fn vip_view(&self, v: &Vip) -> VipStatus {
        let key = crate::addr::vip_key(v.address, v.port, v.protocol.number());
        let t = self
            .ids_vip(&key)
            .and_then(|id| self.dp.vip_traffic(id).ok())
            .unwrap_or_default();
        let protocol = if v.protocol.number() == 6 {
            "tcp"
        } else {
            "udp"
        };
        VipStatus {
            // An IPv6 address in brackets, as in a URL, so the port cannot be read as part
            // of it.
            vip: format!(
                "{}/{protocol}",
                std::net::SocketAddr::new(v.address, v.port)
            ),
            packets: t.packets,
            bytes: t.bytes,
            backends: v.backends.iter().map(|b| self.backend_view(v, b)).collect(),
        }
    }

    /// A backend as one VIP has it: state, effective weight, traffic and rates.
    pub(super) fn backend_view(&self, v: &Vip, b: &BackendConfig) -> BackendView {
        let s = self.status.get(&b.address).copied().unwrap_or_default();
        let id = self.ids.backend_id(&b.address);
        let traffic = id
            .and_then(|id| self.dp.backend_traffic(id).ok())
            .unwrap_or_default();
        let (pps, bps) = id
            .and_then(|id| self.rates.get(&id).copied())
            .unwrap_or((0.0, 0.0));
        let configured = s.weight.unwrap_or(b.weight);
        let state = if !s.healthy {
            "down"
        } else if s.draining {
            "draining"
        } else if s.not_ready {
            "not-ready"
        } else {
            "active"
        };
        BackendView {
            address: b.address,
            state: state.into(),
            healthy: s.healthy,
            weight: match (state, v.weights) {
                ("active", WeightMode::Static) => configured,
                ("active", WeightMode::Load) => weights::effective_weight(
                    configured,
                    s.load_percent.unwrap_or(100) as f64 / 100.0,
                ),
                _ => 0,
            },
            configured_weight: configured,
            load_factor: (v.weights == WeightMode::Load)
                .then(|| s.load_percent.unwrap_or(100) as f64 / 100.0),
            packets: traffic.packets,
            bytes: traffic.bytes,
            packets_per_second: pps,
            bytes_per_second: bps,
            load: self.loads.get(&b.address).map(|(r, at)| LoadSeen {
                report: *r,
                age_ms: at.elapsed().as_millis() as u64,
            }),
        }
    }

    pub(super) fn ids_vip(&self, key: &sluice_common::VipKey) -> Option<u32> {
        self.dp.vip(key).ok().flatten().map(|m| m.id)
    }
}
