//! The shield: sources blocked from reaching any VIP, checked before any Maglev pick or
//! flow-table write (the IPv4 fast path looks a flow up first: a live entry proves the VIP).
//!
//! The block map is a longest-prefix-match trie keyed by family and source address. Each
//! entry expires on the kernel's monotonic clock, so a block the agent never got to remove
//! still ends on time. Drops are counted per entry and per reason.

use aya_ebpf::{helpers::bpf_ktime_get_ns, maps::lpm_trie::Key, programs::XdpContext};
use sluice_common::{
    net::{IPV4_HLEN, IPV6_HLEN},
    BlockKey, BLOCK_KEY_FAMILY_BITS, FAMILY_V6,
};

use crate::{
    maps::{bump, BLOCKS, BLOCK_DROPS, BLOCK_REASONS},
    packet::{addr6_at, at, raw32_at},
    parse::{Kind, Packet},
};

/// The live block entry covering the packet's source, as (counter slot, reason). An ICMP
/// error is blocked when the host that sent it is, or the client it is about.
///
/// The caller has not yet proved the packet is for a VIP (the VIP filter has false
/// positives), so it must confirm that before dropping: see `lb::forward`.
#[inline(always)]
pub fn blocks(ctx: &XdpContext, pkt: &Packet) -> Option<(u32, u32)> {
    if pkt.kind == Kind::IcmpError {
        // `flow.src` is the client the quoted packet was for; the sender is read from the
        // packet rather than kept in `Packet`, whose every byte counts on the BPF stack.
        if let Some(hit) = icmp_sender(ctx, pkt).and_then(|s| source_blocked(&s, pkt.flow.family)) {
            return Some(hit);
        }
    }
    source_blocked(&pkt.flow.src, pkt.flow.family)
}

/// The outer source address of an ICMP error.
#[inline(always)]
fn icmp_sender(ctx: &XdpContext, pkt: &Packet) -> Option<[u32; 4]> {
    let off = pkt.l2.len();
    if pkt.flow.family == FAMILY_V6 {
        let ip = at::<[u8; IPV6_HLEN]>(ctx, off)? as *const u8;
        Some(addr6_at(ip, 8))
    } else {
        let ip = at::<[u8; IPV4_HLEN]>(ctx, off)? as *const u8;
        Some([raw32_at(ip, 12), 0, 0, 0])
    }
}

/// The key that looks a whole address up in a trie of source prefixes (the shield's blocks,
/// `sluice_decap`'s accepted tunnel sources).
#[inline(always)]
pub fn address_key(src: &[u32; 4], family: u8) -> Key<BlockKey> {
    Key::new(
        BLOCK_KEY_FAMILY_BITS + 128,
        BlockKey {
            family,
            pad: 0,
            pad2: 0,
            addr: *src,
        },
    )
}

/// The live entry for `src`, as (counter slot, reason). The agent keeps an entry inside a
/// wider one from expiring before it, so the longest match is the one to obey.
#[inline(always)]
pub fn source_blocked(src: &[u32; 4], family: u8) -> Option<(u32, u32)> {
    let key = address_key(src, family);
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
