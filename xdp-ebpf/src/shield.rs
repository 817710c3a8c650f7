//! The shield: sources blocked from reaching any VIP, checked before any flow or Maglev work.
//!
//! The block map is a longest-prefix-match trie keyed by family and source address. Each
//! entry expires on the kernel's monotonic clock, so a block the agent never got to remove
//! still ends on time. Drops are counted per entry and per reason.

use aya_ebpf::{helpers::bpf_ktime_get_ns, maps::lpm_trie::Key};
use sluice_common::{BlockKey, BLOCK_KEY_FAMILY_BITS};

use crate::{
    maps::{bump, BLOCKS, BLOCK_DROPS, BLOCK_REASONS},
    parse::Packet,
};

/// True when a live block entry covers the packet's source; its drop is counted.
///
/// The caller has not yet proved the packet is for a VIP (the VIP filter has false
/// positives), so it must confirm that before dropping: see `lb::forward`.
#[inline(always)]
pub fn blocks(pkt: &Packet) -> Option<(u32, u32)> {
    let key = Key::new(
        BLOCK_KEY_FAMILY_BITS + 128,
        BlockKey {
            family: pkt.flow.family,
            pad: [0; 3],
            addr: pkt.flow.src,
        },
    );
    let entry = *BLOCKS.get(&key)?;
    // SAFETY: plain helper call. The precise clock is read only for a matching source.
    if unsafe { bpf_ktime_get_ns() } >= entry.expires_ns {
        return None;
    }
    Some((entry.slot, entry.reason))
}

/// Counts a drop against its entry and reason.
#[inline(always)]
pub fn count(slot: u32, reason: u32) {
    bump(&BLOCK_DROPS, slot);
    bump(&BLOCK_REASONS, reason);
}
