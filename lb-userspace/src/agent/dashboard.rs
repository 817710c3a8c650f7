//! What the dashboard page polls: the status, the per-second history behind its
//! sparklines, and the flow table's occupancy, counted off the agent's loop.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use serde::Serialize;
use sluice_util::dashboard::{unix_ms, HistoryView};

use super::{status::Status, Agent};

/// Seconds of history kept for the sparklines.
pub const HISTORY_SECONDS: usize = 300;

/// How often the flow table is counted. Counting walks the map key by key (one system call
/// each: about a quarter of a second for the default 262,144 entries), on a thread of its
/// own so the agent's loop never waits for it.
const FLOW_COUNT_EVERY: Duration = Duration::from_secs(10);

/// Shield entries the page gets: the ones that dropped most (the shield holds up to 16,384,
/// and under attack a page reading them all every second would cost the agent a system
/// call per entry and the browser a table it cannot show).
pub const PAGE_SHIELD_ENTRIES: usize = 100;

/// The answer to `GET /dashboard/state`.
#[derive(Debug, Clone, Serialize)]
pub struct DashboardState {
    /// What `sluice-lb status` shows, with the shield's entries cut to the
    /// [`PAGE_SHIELD_ENTRIES`] that dropped most.
    pub status: Status,
    /// How many shield entries there are in all.
    pub shield_entries: usize,
    /// The samples after the page's last one.
    pub history: HistoryView,
}

/// The flow table's last count, shared with the thread that counts it.
#[derive(Debug, Default)]
pub struct FlowCount {
    /// Entries at the last count, plus one (0: not counted yet).
    entries_plus_one: AtomicU64,
    /// When it was counted, in milliseconds since the Unix epoch.
    at_ms: AtomicU64,
}

/// The flow table in `status`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct FlowTableView {
    /// Entries in the fuller of the IPv4 and IPv6 tables at the last count (live flows, and
    /// expired ones the LRU has not reused yet).
    pub entries: u64,
    /// What each table holds (`flow_table_size`).
    pub capacity: u64,
    /// Milliseconds since the count.
    pub age_ms: u64,
}

impl FlowCount {
    /// The last count, if there has been one.
    pub fn view(&self, capacity: u64) -> Option<FlowTableView> {
        let n = self.entries_plus_one.load(Ordering::Relaxed);
        (n > 0).then(|| FlowTableView {
            entries: n - 1,
            capacity,
            age_ms: unix_ms().saturating_sub(self.at_ms.load(Ordering::Relaxed)),
        })
    }

    /// Counts the pinned flow tables under the maps directory `path` every
    /// [`FLOW_COUNT_EVERY`] until the agent stops (the task is dropped with the runtime); the
    /// fuller table's count is kept (`dataplane::count_pinned_flows`).
    pub fn spawn_counter(self: &Arc<Self>, path: PathBuf, capacity: usize) {
        let count = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FLOW_COUNT_EVERY);
            // A count slower than the period (a huge table) is not followed by another at once.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let p = path.clone();
                let counted = tokio::task::spawn_blocking(move || {
                    crate::dataplane::count_pinned_flows(&p, capacity)
                })
                .await;
                match counted {
                    Ok(Ok(n)) => {
                        count.at_ms.store(unix_ms(), Ordering::Relaxed);
                        count
                            .entries_plus_one
                            .store(n as u64 + 1, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "counting the flow table"),
                    Err(_) => return,
                }
            }
        });
    }
}

/// Traffic counters of each VIP at the last sample, for its rates.
pub(super) type VipCounts = HashMap<String, (Instant, u64, u64)>;

impl Agent {
    /// Adds this second's rates to the history: each VIP's and each backend's packets and
    /// bytes per second, and the drops that mean the node cannot forward.
    pub(super) fn record_history(&mut self) {
        let now = Instant::now();
        let mut values: Vec<(String, f64)> = Vec::new();
        let mut seen = VipCounts::new();
        for v in &self.config.vips {
            let view = self.vip_view(v);
            if let Some((then, p, b)) = self.vip_counts.get(&view.vip) {
                let dt = now.duration_since(*then).as_secs_f64().max(1e-3);
                values.push((
                    format!("vip/{}/pps", view.vip),
                    view.packets.saturating_sub(*p) as f64 / dt,
                ));
                values.push((
                    format!("vip/{}/bps", view.vip),
                    view.bytes.saturating_sub(*b) as f64 / dt,
                ));
            }
            seen.insert(view.vip.clone(), (now, view.packets, view.bytes));
        }
        self.vip_counts = seen;
        for (addr, id) in self.backend_ids() {
            if let Some((pps, bps)) = self.rates.get(&id) {
                values.push((format!("backend/{addr}/pps"), *pps));
                values.push((format!("backend/{addr}/bps"), *bps));
            }
        }
        for (outcome, _, rate) in &self.drops {
            values.push((format!("drop/{}", outcome.name()), *rate));
        }
        self.history.push(
            unix_ms(),
            values.iter().map(|(name, v)| (name.as_str(), *v)),
        );
    }

    /// Every configured backend with its id, once.
    fn backend_ids(&self) -> Vec<(std::net::IpAddr, u32)> {
        let mut out: Vec<_> = self
            .config
            .vips
            .iter()
            .flat_map(|v| v.backends.iter())
            .filter_map(|b| self.ids.backend_id(&b.address).map(|id| (b.address, id)))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The page's answer: the status and the history after `since`. The status is read
    /// at most once a second however many pages poll.
    pub(super) fn dashboard(&mut self, since: Option<u64>) -> DashboardState {
        let fresh = self
            .page_status
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < Duration::from_secs(1));
        if !fresh {
            let mut status = self.snapshot();
            let total = status.shield.entries.len();
            status
                .shield
                .entries
                .sort_by(|a, b| b.drops.cmp(&a.drops).then(a.prefix.cmp(&b.prefix)));
            status.shield.entries.truncate(PAGE_SHIELD_ENTRIES);
            self.page_status = Some((Instant::now(), (status, total)));
        }
        let (status, total) = self
            .page_status
            .as_ref()
            .map(|(_, s)| s.clone())
            .unwrap_or_else(|| (self.snapshot(), 0));
        DashboardState {
            status,
            shield_entries: total,
            history: self.history.since(since),
        }
    }
}
