//! `[shield]` and `[flood_guard]`: what the agent blocks in XDP, within which bounds, and
//! when the data plane stops inserting new flows.

use ipnet::IpNet;
use serde::Deserialize;
use sluice_common::{FLOOD_WINDOW_NS, MAX_BLOCKS};
use sluice_util::{config::refuse, shield::Mode, FieldError};

/// The `[shield]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Shield {
    /// Most block entries held at once (manual and pulled together).
    pub max_entries: u32,
    /// Prefixes never blocked, by an operator or by a gateway's candidates.
    pub allow: Vec<IpNet>,
    /// What to do with the gateways' block candidates: `off` (not fetched), `observe`
    /// (fetched, logged and counted, not blocked) or `enforce`.
    pub pull: Mode,
    /// How often the candidates of each healthy gateway are fetched.
    pub pull_interval_ms: u64,
    /// The longest block, manual or pulled.
    pub max_ttl_secs: u64,
    /// The port the gateways' candidates are fetched from (their admin listener); by
    /// default the port their readiness is probed on, which should be the admin listener.
    pub pull_port: Option<u16>,
}

impl Default for Shield {
    fn default() -> Self {
        Shield {
            max_entries: 4096,
            allow: Vec::new(),
            pull: Mode::Enforce,
            pull_interval_ms: 1000,
            max_ttl_secs: 7 * 24 * 3600,
            pull_port: None,
        }
    }
}

impl Shield {
    /// Checks the bounds; fields relative to the section.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.max_entries == 0 || self.max_entries > MAX_BLOCKS {
            return refuse("max_entries", format!("between 1 and {MAX_BLOCKS}"));
        }
        if !(100..=60_000).contains(&self.pull_interval_ms) {
            return refuse("pull_interval_ms", "between 100 and 60000");
        }
        if self.pull_port == Some(0) {
            return refuse("pull_port", "must be between 1 and 65535");
        }
        if !(1..=30 * 24 * 3600).contains(&self.max_ttl_secs) {
            return refuse("max_ttl_secs", "between 1 and 2592000 (30 days)");
        }
        for (i, p) in self.allow.iter().enumerate() {
            if let IpNet::V6(v6) = p {
                if v6.addr().to_ipv4_mapped().is_some() {
                    return refuse(
                        format!("allow[{i}]"),
                        "an IPv4-mapped IPv6 prefix; write the IPv4 prefix",
                    );
                }
            }
            if *p != p.trunc() {
                return refuse(
                    format!("allow[{i}]"),
                    format!("{p} has host bits set; did you mean {}?", p.trunc()),
                );
            }
        }
        Ok(())
    }

    /// The allow-list entry that overlaps `prefix` (either holds the other), if any.
    pub fn allowed(&self, prefix: &IpNet) -> Option<IpNet> {
        self.allow
            .iter()
            .find(|a| a.contains(prefix) || prefix.contains(*a))
            .copied()
    }
}

/// The `[flood_guard]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FloodGuard {
    /// Whether the guard runs at all.
    pub enabled: bool,
    /// New flows per second one CPU may insert before the guard turns on.
    pub new_flows_per_second: u32,
}

impl Default for FloodGuard {
    fn default() -> Self {
        FloodGuard {
            enabled: true,
            // Far above what a CPU's share of real clients opens, far below a flood's
            // millions: each window still inserts up to 5,000 flows per CPU.
            new_flows_per_second: 50_000,
        }
    }
}

/// Windows per second of the data plane's measurement.
const WINDOWS_PER_SECOND: u64 = 1_000_000_000 / FLOOD_WINDOW_NS;

impl FloodGuard {
    /// Checks the bounds; fields relative to the section.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.new_flows_per_second < WINDOWS_PER_SECOND as u32
            || self.new_flows_per_second > 100_000_000
        {
            return refuse(
                "new_flows_per_second",
                format!("between {WINDOWS_PER_SECOND} and 100000000"),
            );
        }
        Ok(())
    }

    /// How long an idle flow keeps its entry, at least, under a flood just below the limit,
    /// for a flow table of `flow_table_size` entries on `cpus` possible CPUs: each CPU
    /// evicts from its own share of the table (the tables keep an LRU list per CPU), so a
    /// flood spread over the CPUs at the limit evicts every flow idle longer than
    /// `share / limit` seconds. A node that must keep idle flows longer needs a larger
    /// `flow_table_size` or a lower limit.
    pub fn idle_entry_seconds(&self, flow_table_size: u32, cpus: u32) -> f64 {
        f64::from(flow_table_size / cpus.max(1)) / f64::from(self.new_flows_per_second.max(1))
    }

    /// The data plane's limit: new flows per CPU per window, 0 when the guard is off.
    pub fn limit_per_window(&self) -> u32 {
        if !self.enabled {
            return 0;
        }
        (u64::from(self.new_flows_per_second) / WINDOWS_PER_SECOND).max(1) as u32
    }
}

/// The machine's possible CPUs (what the kernel sizes per-CPU state by), 1 if unreadable.
pub fn possible_cpus() -> u32 {
    static CPUS: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| aya::util::nr_cpus().map_or(1, |n| n.max(1) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each CPU's share of the table over the limit: what a flood just below the limit
    /// leaves an idle flow.
    #[test]
    fn an_idle_flow_keeps_its_entry_for_its_cpus_share_over_the_limit() {
        let guard = FloodGuard::default();
        let at = |entries, cpus| guard.idle_entry_seconds(entries, cpus);
        assert!((at(262_144, 2) - 2.62144).abs() < 1e-9);
        assert!((at(262_144, 8) - 0.65536).abs() < 1e-9);
        let slower = FloodGuard {
            new_flows_per_second: 1000,
            ..guard
        };
        assert!((slower.idle_entry_seconds(1 << 20, 4) - 262.144).abs() < 1e-9);
        assert!(at(1024, 0).is_finite(), "no CPU count is taken as one");
    }
}
