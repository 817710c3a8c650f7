//! The agent's side of the XDP shield: which prefixes are blocked, why and until when, kept
//! in the pinned block map within the config's bounds and allow list.
//!
//! Entries come from two places: an operator (`sluice-lb block`) and the block candidates of
//! the healthy gateways, pulled by [`pull`]. The map itself is the state: a restarted agent
//! adopts what is pinned, and expired entries are swept every second (the data plane already
//! ignores them, on the kernel's monotonic clock).

pub(crate) mod bounds;
pub mod pull;
mod status;

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    time::Duration,
};

use ipnet::IpNet;
use sluice_common::{stats::BlockReason, BlockEntry};
use sluice_util::shield::{Candidate, Candidates, Class, Mode};
use tracing::{info, warn};

use crate::{
    config,
    dataplane::{monotonic_ns, DataPlane, DataPlaneError},
};

pub use status::{BlockView, FloodView, PullView, ShieldStatus};

/// The widest IPv4 prefix blocked without `force`.
pub const WIDEST_V4: u8 = 16;
/// The widest IPv6 prefix blocked without `force`.
pub const WIDEST_V6: u8 = 32;
/// The widest IPv6 prefix a gateway may offer (the contract offers a /64 per client).
pub const CANDIDATE_WIDEST_V6: u8 = 64;
/// The longest block a gateway's candidate gets, whatever the gateway asks.
pub const CANDIDATE_MAX_TTL_MS: u64 = 24 * 3600 * 1000;

/// Why a block was refused.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The prefix overlaps the allow list.
    #[error("{prefix} overlaps {allowed} on the allow list, which is never blocked")]
    Allowed {
        /// The prefix asked for.
        prefix: IpNet,
        /// The allow-list entry.
        allowed: IpNet,
    },
    /// Wider than [`WIDEST_V4`] / [`WIDEST_V6`] without `force`.
    #[error(
        "{0} is wider than /{WIDEST_V4} (IPv4) or /{WIDEST_V6} (IPv6); force it if you mean it"
    )]
    TooWide(IpNet),
    /// The map holds `max_entries` already.
    #[error("the shield holds its maximum of {0} entries")]
    Full(u32),
    /// Zero or longer than `max_ttl_secs`.
    #[error("the TTL must be between 1 s and max_ttl_secs ({0} s)")]
    Ttl(u64),
    /// No such entry (unblock).
    #[error("{0} is not blocked")]
    NotBlocked(IpNet),
    /// The map refused the change.
    #[error("{0}")]
    Map(#[from] DataPlaneError),
}

/// An operator's block.
#[derive(Debug, Clone)]
pub struct BlockRequest {
    /// The prefix (host bits are cleared).
    pub prefix: IpNet,
    /// How long it holds.
    pub ttl: Duration,
    /// Free text shown with the entry.
    pub note: String,
    /// Allow prefixes wider than [`WIDEST_V4`] / [`WIDEST_V6`].
    pub force: bool,
}

/// One entry as the agent knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Block {
    entry: BlockEntry,
    note: String,
}

/// What happened to pulled candidates, counted for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CandidateCounts {
    /// Blocked (or a block refreshed).
    pub blocked: u64,
    /// Logged only: the agent or the gateway is in `observe` mode.
    pub observed: u64,
    /// On the allow list.
    pub allowed: u64,
    /// Wider than a candidate may be.
    pub too_wide: u64,
    /// The shield was full.
    pub full: u64,
    /// Already covered by a wider entry that lasts longer.
    pub covered: u64,
}

/// The agent's shield.
#[derive(Debug, Default)]
pub struct Shield {
    blocks: BTreeMap<IpNet, Block>,
    /// Counter slots in use, one bit each.
    slots: bounds::Slots,
    /// Prefixes logged in observe mode, and until when they are not logged again.
    observed: HashMap<IpNet, u64>,
    counts: CandidateCounts,
    pulls: BTreeMap<IpAddr, PullView>,
}

/// The data plane's reason code for a gateway's refusal class.
pub fn reason_of(class: Class) -> BlockReason {
    match class {
        Class::Auth => BlockReason::Auth,
        Class::Forbidden => BlockReason::Forbidden,
        Class::RateLimited => BlockReason::RateLimited,
        Class::Malformed => BlockReason::Malformed,
        Class::Deadline => BlockReason::Deadline,
    }
}

impl Shield {
    /// Adopts the entries a previous agent pinned.
    pub fn adopt(dp: &DataPlane) -> Result<Self, DataPlaneError> {
        let mut shield = Shield::default();
        for (prefix, entry) in dp.blocks()? {
            let note = dp.block_note(entry.slot).unwrap_or_default();
            shield.slots.take(entry.slot);
            shield.blocks.insert(prefix, Block { entry, note });
        }
        Ok(shield)
    }

    /// True while any entry is held: the data plane's shield switch.
    pub fn active(&self) -> bool {
        !self.blocks.is_empty()
    }

    /// Number of entries held.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// True when nothing is blocked.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Blocks `req.prefix` for `req.ttl`, or refreshes its entry.
    pub fn block(
        &mut self,
        dp: &mut DataPlane,
        cfg: &config::Shield,
        req: &BlockRequest,
    ) -> Result<(), BlockError> {
        let prefix = bounds::unmapped(req.prefix);
        check_prefix(cfg, &prefix, req.force)?;
        if req.ttl.is_zero() || req.ttl.as_secs() > cfg.max_ttl_secs {
            return Err(BlockError::Ttl(cfg.max_ttl_secs));
        }
        let expires = monotonic_ns().saturating_add(req.ttl.as_nanos() as u64);
        // An operator is never locked out by the gateways' candidates: the one that would
        // expire first makes room.
        if !self.blocks.contains_key(&prefix) && self.blocks.len() >= cfg.max_entries as usize {
            self.evict_pulled(dp)?;
        }
        self.put(dp, cfg, prefix, BlockReason::Manual, expires, &req.note)?;
        info!(%prefix, ttl_s = req.ttl.as_secs(), note = %req.note, "blocked by an operator");
        Ok(())
    }

    /// Removes the entry for exactly `prefix`.
    pub fn unblock(&mut self, dp: &mut DataPlane, prefix: IpNet) -> Result<(), BlockError> {
        let prefix = bounds::unmapped(prefix);
        if !self.blocks.contains_key(&prefix) {
            return Err(BlockError::NotBlocked(prefix));
        }
        self.remove(dp, prefix)?;
        info!(%prefix, "unblocked by an operator");
        Ok(())
    }

    /// Removes expired entries; returns how many.
    pub fn sweep(&mut self, dp: &mut DataPlane) -> usize {
        let now = monotonic_ns();
        self.observed.retain(|_, until| *until > now);
        let expired: Vec<IpNet> = self
            .blocks
            .iter()
            .filter(|(_, b)| b.entry.expires_ns <= now)
            .map(|(p, _)| *p)
            .collect();
        let mut removed = 0;
        for prefix in expired {
            match self.remove(dp, prefix) {
                Ok(()) => {
                    removed += 1;
                    info!(%prefix, "block expired");
                }
                Err(e) => warn!(%prefix, error = %e, "removing an expired block failed"),
            }
        }
        removed
    }

    /// Applies the candidates a healthy gateway offered (`agent_mode` is the config's `pull`).
    pub fn apply_candidates(
        &mut self,
        dp: &mut DataPlane,
        cfg: &config::Shield,
        from: IpAddr,
        offered: &Candidates,
    ) {
        let enforce = cfg.pull == Mode::Enforce && offered.mode == Mode::Enforce;
        let now = monotonic_ns();
        for c in &offered.candidates {
            self.apply_candidate(dp, cfg, from, c, enforce, now);
        }
        self.pulls.insert(
            from,
            PullView {
                gateway: from,
                ok: true,
                mode: offered.mode,
                candidates: offered.candidates.len(),
                error: None,
            },
        );
    }

    /// Records a failed pull.
    pub fn pull_failed(&mut self, from: IpAddr, error: String) {
        let view = self.pulls.entry(from).or_insert(PullView {
            gateway: from,
            ok: false,
            mode: Mode::Off,
            candidates: 0,
            error: None,
        });
        view.ok = false;
        view.error = Some(error);
    }

    /// Forgets the pull results of gateways no longer configured.
    pub fn retain_gateways(&mut self, keep: impl Fn(&IpAddr) -> bool) {
        self.pulls.retain(|a, _| keep(a));
    }

    fn apply_candidate(
        &mut self,
        dp: &mut DataPlane,
        cfg: &config::Shield,
        from: IpAddr,
        c: &Candidate,
        enforce: bool,
        now: u64,
    ) {
        let prefix = bounds::unmapped(c.prefix);
        // A gateway offers one client: an IPv4 address or an IPv6 /64 (or longer).
        let client_sized = match prefix {
            IpNet::V4(p) => p.prefix_len() == 32,
            IpNet::V6(p) => p.prefix_len() >= CANDIDATE_WIDEST_V6,
        };
        if !client_sized {
            self.counts.too_wide += 1;
            return;
        }
        if cfg.allowed(&prefix).is_some() {
            self.counts.allowed += 1;
            return;
        }
        let ttl_ns = c
            .ttl_ms
            .min(CANDIDATE_MAX_TTL_MS)
            .min(cfg.max_ttl_secs.saturating_mul(1000))
            .saturating_mul(1_000_000);
        if ttl_ns == 0 {
            return;
        }
        let expires = now.saturating_add(ttl_ns);
        if !enforce {
            self.counts.observed += 1;
            if self.observed.len() < cfg.max_entries as usize
                && self.observed.insert(prefix, expires).is_none()
            {
                warn!(%prefix, gateway = %from, class = c.class.name(), count = c.count,
                    "block candidate observed (not blocked: observe mode)");
            }
            return;
        }
        match self.blocks.get(&prefix) {
            // An operator's block is the operator's: a candidate never shortens or relabels it.
            Some(b) if b.entry.reason == BlockReason::Manual as u32 => return,
            Some(b) if b.entry.expires_ns >= expires => return,
            _ => {}
        }
        if self.covered(&prefix, expires) {
            self.counts.covered += 1;
            return;
        }
        let fresh = !self.blocks.contains_key(&prefix);
        let note = format!("gateway {from}: {} {}", c.count, c.class.name());
        match self.put(dp, cfg, prefix, reason_of(c.class), expires, &note) {
            Ok(()) => {
                self.counts.blocked += 1;
                if fresh {
                    warn!(%prefix, gateway = %from, class = c.class.name(), count = c.count,
                        ttl_ms = c.ttl_ms, "blocked in XDP on a gateway's finding");
                }
            }
            Err(BlockError::Full(_)) => self.counts.full += 1,
            Err(e) => warn!(%prefix, error = %e, "blocking a candidate failed"),
        }
    }

    /// Writes an entry (note first, then the trie entry that points at it).
    fn put(
        &mut self,
        dp: &mut DataPlane,
        cfg: &config::Shield,
        prefix: IpNet,
        reason: BlockReason,
        expires_ns: u64,
        note: &str,
    ) -> Result<(), BlockError> {
        let slot = match self.blocks.get(&prefix) {
            Some(b) => b.entry.slot,
            None => {
                if self.blocks.len() >= cfg.max_entries as usize {
                    return Err(BlockError::Full(cfg.max_entries));
                }
                let slot = self.slots.free().ok_or(BlockError::Full(cfg.max_entries))?;
                dp.reset_block_drops(slot)?;
                slot
            }
        };
        // Within a wider entry, an entry never expires first: the data plane obeys the
        // longest match only, so an expired narrow entry would open a hole in a live wide one.
        let expires_ns = expires_ns.max(self.outlived_by(&prefix));
        let entry = BlockEntry {
            expires_ns,
            slot,
            reason: reason as u32,
        };
        dp.set_block_note(slot, note)?;
        dp.set_block(prefix, &entry)?;
        self.slots.take(slot);
        self.extend_inner(dp, &prefix, expires_ns)?;
        self.blocks.insert(
            prefix,
            Block {
                entry,
                note: note.to_owned(),
            },
        );
        Ok(())
    }

    fn remove(&mut self, dp: &mut DataPlane, prefix: IpNet) -> Result<(), BlockError> {
        dp.remove_block(prefix)?;
        if let Some(b) = self.blocks.remove(&prefix) {
            self.slots.give_back(b.entry.slot);
        }
        Ok(())
    }
}

/// Refuses a prefix on the allow list or, without `force`, wider than the bounds.
/// (IPv4-mapped IPv6 prefixes are turned into IPv4 ones before they get here.)
fn check_prefix(cfg: &config::Shield, prefix: &IpNet, force: bool) -> Result<(), BlockError> {
    if let Some(allowed) = cfg.allowed(prefix) {
        return Err(BlockError::Allowed {
            prefix: *prefix,
            allowed,
        });
    }
    let widest = match prefix {
        IpNet::V4(_) => WIDEST_V4,
        IpNet::V6(_) => WIDEST_V6,
    };
    if prefix.prefix_len() < widest && !force {
        return Err(BlockError::TooWide(*prefix));
    }
    Ok(())
}
