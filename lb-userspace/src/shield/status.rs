//! The shield as `sluice-lb status`, the admin API and `/metrics` show it.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sluice_common::{
    stats::{BlockReason, LbFlow},
    BLOCK_FOREVER, FLOOD_WINDOW_NS,
};
use sluice_util::shield::Mode;

use super::{CandidateCounts, Shield};
use crate::{
    config,
    dataplane::{monotonic_ns, DataPlane},
};

/// The shield in `status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShieldStatus {
    /// Entries, longest remaining first.
    pub entries: Vec<BlockView>,
    /// The configured bound on entries.
    pub max_entries: u32,
    /// Packets dropped, by reason.
    pub drops_by_reason: Vec<(String, u64)>,
    /// What the agent does with the gateways' candidates.
    pub pull: Mode,
    /// The last pull from each gateway.
    pub gateways: Vec<PullView>,
    /// Pulled candidates by what happened to them: blocked, observed, allowed, too_wide,
    /// full, covered.
    pub candidates: Vec<(String, u64)>,
    /// The flood guard.
    pub flood: FloodView,
}

/// One block entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlockView {
    /// The source prefix.
    pub prefix: IpNet,
    /// `manual`, or the gateway's refusal class.
    pub reason: String,
    /// The operator's text, or which gateway found what.
    pub note: String,
    /// Milliseconds until it expires (`None`: never).
    pub remaining_ms: Option<u64>,
    /// Packets it dropped.
    pub drops: u64,
}

/// The last pull from one gateway.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PullView {
    /// The gateway.
    pub gateway: IpAddr,
    /// Whether the last pull succeeded.
    pub ok: bool,
    /// The gateway's shield mode.
    pub mode: Mode,
    /// Candidates it offered.
    pub candidates: usize,
    /// Why the last pull failed.
    pub error: Option<String>,
}

/// The flood guard in `status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FloodView {
    /// Whether it runs.
    pub enabled: bool,
    /// New flows per second per CPU before it turns on.
    pub new_flows_per_second: u32,
    /// How long an idle flow keeps its entry, at least, under a flood just below that
    /// (each CPU's share of the flow table over the limit).
    #[serde(default)]
    pub idle_entry_seconds: f64,
    /// CPUs in a flood now.
    pub cpus_flooding: u32,
    /// Seconds spent in floods, summed over CPUs.
    pub flood_seconds: f64,
    /// New flows forwarded without a flow-table insert.
    pub inserts_skipped: u64,
}

impl CandidateCounts {
    fn named(&self) -> Vec<(String, u64)> {
        [
            ("blocked", self.blocked),
            ("observed", self.observed),
            ("allowed", self.allowed),
            ("too_wide", self.too_wide),
            ("full", self.full),
            ("covered", self.covered),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_string(), v))
        .collect()
    }
}

impl Shield {
    /// The shield's status, read from the maps now.
    pub fn status(
        &self,
        dp: &DataPlane,
        cfg: &config::Shield,
        flood: &config::FloodGuard,
        flow_table_size: u32,
    ) -> ShieldStatus {
        let now = monotonic_ns();
        let mut entries: Vec<BlockView> = self
            .blocks
            .iter()
            .map(|(prefix, b)| BlockView {
                prefix: *prefix,
                reason: BlockReason::from_index(b.entry.reason)
                    .map_or("unknown", |r| r.name())
                    .to_string(),
                note: b.note.clone(),
                remaining_ms: (b.entry.expires_ns != BLOCK_FOREVER)
                    .then(|| b.entry.expires_ns.saturating_sub(now) / 1_000_000),
                drops: dp.block_drops(b.entry.slot).unwrap_or(0),
            })
            .collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.remaining_ms.unwrap_or(u64::MAX)));
        ShieldStatus {
            entries,
            max_entries: cfg.max_entries,
            drops_by_reason: BlockReason::ALL
                .iter()
                .map(|r| (r.name().to_string(), dp.block_reason_drops(*r).unwrap_or(0)))
                .collect(),
            pull: cfg.pull,
            gateways: self.pulls.values().cloned().collect(),
            candidates: self.counts.named(),
            flood: flood_view(dp, flood, flow_table_size),
        }
    }
}

fn flood_view(dp: &DataPlane, cfg: &config::FloodGuard, flow_table_size: u32) -> FloodView {
    // The data plane's windows are on the coarse clock; the two agree to a few milliseconds.
    let now = monotonic_ns();
    let mut view = FloodView {
        enabled: cfg.enabled,
        new_flows_per_second: cfg.new_flows_per_second,
        idle_entry_seconds: cfg.idle_entry_seconds(flow_table_size, config::possible_cpus()),
        inserts_skipped: dp.flow_count(LbFlow::FloodSkip).unwrap_or(0),
        ..Default::default()
    };
    let mut ns = 0u64;
    for s in dp.flood_states().unwrap_or_default() {
        ns += s.flood_ns;
        if s.flood_since_ns == 0 {
            continue;
        }
        // A flood lasts while new flows keep coming; a CPU that saw none for two windows
        // is out of it even though nothing has told its state so yet.
        if now.saturating_sub(s.window_start_ns) < 2 * FLOOD_WINDOW_NS {
            view.cpus_flooding += 1;
        }
        // Counted up to the end of the current window at most: the data plane ends a flood
        // there, so the total never goes back (a counter must not).
        let end = now.min(s.window_start_ns + FLOOD_WINDOW_NS);
        ns += end.saturating_sub(s.flood_since_ns);
    }
    view.flood_seconds = ns as f64 / 1e9;
    view
}
