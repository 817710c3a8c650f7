//! What keeps the block map within its bounds: counter slots, nested entries that never
//! expire before the entries around them, and the config's bounds applied to entries that
//! already exist (after a reload, or adopted after a restart).

use ipnet::{IpNet, Ipv4Net};
use sluice_common::{stats::BlockReason, MAX_BLOCKS};
use tracing::{info, warn};

use super::{BlockError, Shield};
use crate::{
    config,
    dataplane::{monotonic_ns, DataPlane},
};

/// Counter slots in use, one bit each.
#[derive(Debug)]
pub(super) struct Slots(Vec<u64>);

impl Default for Slots {
    fn default() -> Self {
        Slots(vec![0; (MAX_BLOCKS as usize).div_ceil(64)])
    }
}

impl Slots {
    /// The lowest free slot.
    pub(super) fn free(&self) -> Option<u32> {
        let (i, word) = self.0.iter().enumerate().find(|(_, w)| **w != u64::MAX)?;
        let slot = i as u32 * 64 + word.trailing_ones();
        (slot < MAX_BLOCKS).then_some(slot)
    }

    pub(super) fn take(&mut self, slot: u32) {
        if let Some(w) = self.0.get_mut(slot as usize / 64) {
            *w |= 1 << (slot % 64);
        }
    }

    pub(super) fn give_back(&mut self, slot: u32) {
        if let Some(w) = self.0.get_mut(slot as usize / 64) {
            *w &= !(1 << (slot % 64));
        }
    }
}

/// `prefix` with host bits cleared, an IPv4-mapped IPv6 prefix (`::ffff:a.b.c.d/96+n`)
/// turned into the IPv4 prefix it stands for: the data plane sees IPv4 packets as IPv4.
pub fn unmapped(prefix: IpNet) -> IpNet {
    if let IpNet::V6(v6) = prefix {
        if let Some(v4) = v6.addr().to_ipv4_mapped() {
            if v6.prefix_len() >= 96 {
                if let Ok(net) = Ipv4Net::new(v4, v6.prefix_len() - 96) {
                    return IpNet::V4(net.trunc());
                }
            }
        }
    }
    prefix.trunc()
}

/// True when `outer` holds `inner` and is wider.
fn strictly_holds(outer: &IpNet, inner: &IpNet) -> bool {
    outer != inner && outer.contains(inner)
}

/// The keys of the entries `prefix` strictly holds, as a range of the map's order (address,
/// then length): from its own address one bit longer to its last address at full length.
/// `None` for a full-length prefix, which holds nothing else.
fn inner_range(prefix: &IpNet) -> Option<std::ops::RangeInclusive<IpNet>> {
    let first = IpNet::new(prefix.network(), prefix.prefix_len().checked_add(1)?).ok()?;
    let last = IpNet::new(prefix.broadcast(), prefix.max_prefix_len()).ok()?;
    Some(first..=last)
}

// A gateway's pull brings up to 4,096 candidates into a shield of up to 16,384 entries: the
// entries around and inside a prefix are found by lookups in the ordered map, one per
// shorter length and one range, not by a scan of every entry per candidate.
impl Shield {
    /// The entries wider than `prefix` that hold it: one lookup per shorter length.
    fn holders<'a>(&'a self, prefix: &IpNet) -> impl Iterator<Item = &'a super::Block> + 'a {
        let prefix = *prefix;
        (0..prefix.prefix_len()).filter_map(move |len| {
            let wider = IpNet::new(prefix.addr(), len).ok()?.trunc();
            self.blocks.get(&wider)
        })
    }

    /// True when a wider entry already blocks `prefix` at least until `expires_ns`.
    pub(super) fn covered(&self, prefix: &IpNet, expires_ns: u64) -> bool {
        self.holders(prefix)
            .any(|b| b.entry.expires_ns >= expires_ns)
    }

    /// The latest expiry among the entries wider than `prefix` that hold it (0: none).
    pub(super) fn outlived_by(&self, prefix: &IpNet) -> u64 {
        self.holders(prefix)
            .map(|b| b.entry.expires_ns)
            .max()
            .unwrap_or(0)
    }

    /// Moves the expiry of entries inside `prefix` up to `expires_ns` where it is earlier.
    pub(super) fn extend_inner(
        &mut self,
        dp: &mut DataPlane,
        prefix: &IpNet,
        expires_ns: u64,
    ) -> Result<(), BlockError> {
        let Some(range) = inner_range(prefix) else {
            return Ok(());
        };
        for (p, b) in self.blocks.range_mut(range) {
            if strictly_holds(prefix, p) && b.entry.expires_ns < expires_ns {
                b.entry.expires_ns = expires_ns;
                dp.set_block(*p, &b.entry)?;
            }
        }
        Ok(())
    }

    /// Removes the gateways' entry that would expire first, to make room for an operator's.
    pub(super) fn evict_pulled(&mut self, dp: &mut DataPlane) -> Result<(), BlockError> {
        let victim = self
            .blocks
            .iter()
            .filter(|(_, b)| b.entry.reason != BlockReason::Manual as u32)
            .min_by_key(|(_, b)| b.entry.expires_ns)
            .map(|(p, _)| *p);
        if let Some(p) = victim {
            warn!(prefix = %p, "a gateway's block removed to make room for an operator's");
            self.remove(dp, p)?;
        }
        Ok(())
    }

    /// Applies `cfg` to the entries already held (after a reload, or adopted after a
    /// restart): entries overlapping the allow list go, none lasts longer than
    /// `max_ttl_secs` from now, the gateways' entries that expire first go when there are
    /// more than `max_entries` (then the operator's), and nested entries never expire
    /// before the entries around them. Returns how many entries were removed.
    pub fn reconcile(&mut self, dp: &mut DataPlane, cfg: &config::Shield) -> usize {
        let mut removed = 0;
        let allowed: Vec<IpNet> = self
            .blocks
            .keys()
            .filter(|p| cfg.allowed(p).is_some())
            .copied()
            .collect();
        for p in allowed {
            info!(prefix = %p, "unblocked: on the allow list");
            removed += usize::from(self.remove(dp, p).is_ok());
        }
        while self.blocks.len() > cfg.max_entries as usize {
            let victim = self
                .blocks
                .iter()
                .min_by_key(|(_, b)| {
                    (
                        b.entry.reason == BlockReason::Manual as u32,
                        b.entry.expires_ns,
                    )
                })
                .map(|(p, _)| *p);
            let Some(p) = victim else { break };
            info!(prefix = %p, max_entries = cfg.max_entries, "unblocked: over max_entries");
            if self.remove(dp, p).is_err() {
                break;
            }
            removed += 1;
        }
        let latest = monotonic_ns().saturating_add(cfg.max_ttl_secs.saturating_mul(1_000_000_000));
        let prefixes: Vec<IpNet> = self.blocks.keys().copied().collect();
        for p in &prefixes {
            let Some(b) = self.blocks.get_mut(p) else {
                continue;
            };
            if b.entry.expires_ns > latest {
                b.entry.expires_ns = latest;
                if let Err(e) = dp.set_block(*p, &b.entry) {
                    warn!(prefix = %p, error = %e, "shortening a block failed");
                }
            }
        }
        // Widest first, so that each entry's expiry is final before the ones inside it.
        let mut by_width = prefixes;
        by_width.sort_by_key(|p| p.prefix_len());
        for p in by_width {
            let Some(expires) = self.blocks.get(&p).map(|b| b.entry.expires_ns) else {
                continue;
            };
            if let Err(e) = self.extend_inner(dp, &p, expires) {
                warn!(prefix = %p, error = %e, "aligning nested blocks failed");
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_fill_and_free() {
        let mut s = Slots::default();
        for want in 0..200 {
            let got = s.free().expect("free slot");
            assert_eq!(got, want);
            s.take(got);
        }
        s.give_back(70);
        assert_eq!(s.free(), Some(70));
        for i in 0..MAX_BLOCKS {
            s.take(i);
        }
        assert_eq!(s.free(), None);
    }

    /// The indexed lookups find exactly what a scan of every entry finds, on random nested
    /// prefixes of both families (a plain-Rust reference: the scan the lookups replaced).
    mod lookups {
        use std::net::{Ipv4Addr, Ipv6Addr};

        use proptest::prelude::*;
        use sluice_common::BlockEntry;

        use super::*;
        use crate::shield::Block;

        /// Prefixes in a small space, so that random ones nest often.
        fn prefix() -> impl Strategy<Value = IpNet> {
            prop_oneof![
                (0u32..64, 0u8..=32).prop_map(|(host, len)| {
                    let addr = Ipv4Addr::from(0x0a00_0000 | host << 2);
                    IpNet::new(addr.into(), len).expect("len").trunc()
                }),
                (0u128..64, 0u8..=128).prop_map(|(host, len)| {
                    let addr = Ipv6Addr::from(0x2001_0db8_u128 << 96 | host << 3);
                    IpNet::new(addr.into(), len).expect("len").trunc()
                }),
            ]
        }

        fn shield(entries: &[(IpNet, u64)]) -> Shield {
            let mut s = Shield::default();
            for (p, expires_ns) in entries {
                let entry = BlockEntry {
                    expires_ns: *expires_ns,
                    slot: 0,
                    reason: 0,
                };
                s.blocks.insert(
                    *p,
                    Block {
                        entry,
                        note: String::new(),
                    },
                );
            }
            s
        }

        proptest! {
            #[test]
            fn holders_and_inner_entries_match_a_scan(
                entries in proptest::collection::vec((prefix(), 1u64..100), 0..40),
                query in prefix(),
                expires in 1u64..100,
            ) {
                let s = shield(&entries);
                let scan_covered = s.blocks.iter().any(|(p, b)| {
                    strictly_holds(p, &query) && b.entry.expires_ns >= expires
                });
                let scan_outlived = s
                    .blocks
                    .iter()
                    .filter(|(p, _)| strictly_holds(p, &query))
                    .map(|(_, b)| b.entry.expires_ns)
                    .max()
                    .unwrap_or(0);
                prop_assert_eq!(s.covered(&query, expires), scan_covered);
                prop_assert_eq!(s.outlived_by(&query), scan_outlived);
                let scan_inner: Vec<IpNet> = s
                    .blocks
                    .keys()
                    .filter(|p| strictly_holds(&query, p))
                    .copied()
                    .collect();
                let found: Vec<IpNet> = inner_range(&query)
                    .map(|r| s.blocks.range(r).map(|(p, _)| *p).filter(|p| strictly_holds(&query, p)).collect())
                    .unwrap_or_default();
                prop_assert_eq!(found, scan_inner);
            }
        }
    }

    #[test]
    fn mapped_prefixes_become_ipv4() {
        let p = |t: &str| unmapped(t.parse().expect("literal")).to_string();
        assert_eq!(p("::ffff:10.1.2.3/128"), "10.1.2.3/32");
        assert_eq!(p("::ffff:10.1.2.3/112"), "10.1.0.0/16");
        assert_eq!(p("::ffff:0:0/96"), "0.0.0.0/0");
        assert_eq!(p("2001:db8::1/64"), "2001:db8::/64");
        assert_eq!(p("10.1.2.3/8"), "10.0.0.0/8");
    }
}
