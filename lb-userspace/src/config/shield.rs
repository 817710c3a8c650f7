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

    /// The data plane's limit: new flows per CPU per window, 0 when the guard is off.
    pub fn limit_per_window(&self) -> u32 {
        if !self.enabled {
            return 0;
        }
        (u64::from(self.new_flows_per_second) / WINDOWS_PER_SECOND).max(1) as u32
    }
}
