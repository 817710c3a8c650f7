//! Benchmark wrappers for `cargo xtask bench xdp`, and `test_fast_path` for the dataplane
//! tests. Loaded only by them.
//!
//! BPF_PROG_TEST_RUN with `repeat > 1` runs the program again on the packet the previous
//! repetition left behind, so after one encapsulation every later repetition would measure
//! another path. Each wrapper saves the start of the frame, runs the real entry point, then
//! moves the head back to where it was and restores the saved bytes: every repetition sees the
//! original packet. `bench_tx` wraps the trivial program the same way, which measures what
//! the wrapping itself costs.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::{HashMap, PerCpuArray},
    programs::XdpContext,
};
use sluice_common::{
    flow_hash, flow_hash4, maglev_slot, net::proto, FlowKey, FlowKey4, VipKey, FAMILY_V4,
};

use crate::{
    decap, lb,
    maps::{BACKENDS, VIPS},
    packet::{at, len, put16, raw16_at, raw32_at},
};

/// Bytes restored after each repetition: covers every header the programs rewrite.
const SAVED: usize = 64;
/// Distinct flows cycled through by `bench_lb_many`.
const MANY_FLOWS: u32 = 100_000;
/// Distinct flows cycled through by `bench_lb_new`: far more than the flow table holds.
const NEW_FLOWS: u32 = 1 << 24;

/// Per-CPU rotating counter for the many-flow and Maglev-only cases.
#[map(name = "SLUICE_BENCH")]
static BENCH_STATE: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU room for the bytes `restoring!` saves: kept off the stack, which the program
/// under test needs all of.
#[map(name = "SLUICE_BENCH_SAVE")]
static SAVED_HEAD: PerCpuArray<[u64; SAVED / 8]> = PerCpuArray::with_max_entries(1, 0);

/// Runs `$run`, an expression of the program's action, on the frame of `$ctx` as it came,
/// then puts the frame back: moves the head back to where it was and restores the saved
/// bytes.
///
/// A macro rather than a function taking a closure: LLVM does not inline a closure as
/// large as `lb::run` (its `FnOnce` shim is not `inline(always)`), so the measured program
/// would pay a BPF-to-BPF call that `sluice_lb`, where `lb::run` is inlined, does not.
macro_rules! restoring {
    ($ctx:expr, $run:expr) => {{
        let ctx: &XdpContext = $ctx;
        'run: {
            let Some(p) = at::<[u64; SAVED / 8]>(ctx, 0) else {
                break 'run xdp_action::XDP_ABORTED;
            };
            let Some(saved) = SAVED_HEAD.get_ptr_mut(0) else {
                break 'run xdp_action::XDP_ABORTED;
            };
            copy_words(p, saved);
            let before = len(ctx) as i32;
            let action = $run;
            let delta = len(ctx) as i32 - before;
            // SAFETY: plain helper call on our own context.
            if delta != 0 && unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) } != 0 {
                break 'run xdp_action::XDP_ABORTED;
            }
            let Some(p) = at::<[u64; SAVED / 8]>(ctx, 0) else {
                break 'run xdp_action::XDP_ABORTED;
            };
            copy_words(saved, p);
            action
        }
    }};
}

/// `restoring!` with the source address's low three octets taking the next value of a
/// counter that cycles through `$cycle` values before `$run`.
macro_rules! cycling {
    ($ctx:expr, $cycle:expr, $run:expr) => {{
        let ctx: &XdpContext = $ctx;
        let i = next_counter($cycle);
        restoring!(ctx, {
            rewrite_source(ctx, i);
            $run
        })
    }};
}

/// Copies the saved head word by word. Volatile, so that LLVM does not turn it into a call
/// to `memcpy`, which on BPF is a byte loop costing more than the programs measured.
#[inline(always)]
fn copy_words(from: *const [u64; SAVED / 8], to: *mut [u64; SAVED / 8]) {
    let (from, to) = (from as *const u64, to as *mut u64);
    for i in 0..SAVED / 8 {
        // SAFETY: both point at SAVED bytes checked by `at` or owned by the per-CPU slot,
        // which is this CPU's alone while the program runs; XDP frames start 8-byte aligned
        // after the headroom.
        unsafe { core::ptr::write_volatile(to.add(i), core::ptr::read_volatile(from.add(i))) };
    }
}

#[inline(always)]
fn next_counter(cycle: u32) -> u32 {
    let Some(c) = BENCH_STATE.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU slot.
    unsafe {
        let i = if *c + 1 >= cycle { 0 } else { *c + 1 };
        *c = i;
        i
    }
}

/// The reference program's flows: {source, destination, ports word, protocol} as stored
/// in the packet, to the backend's IPv4 address (stored order). The bench loads it as large
/// as the flow table (`LoadOptions::bench_reference`), so that its lookup is one in a table
/// sized for real traffic, as the flow table's is; `bench_ref_lookup_small` keeps the
/// 16-entry figure beside it. Declared small, so that a node does not preallocate it.
#[map(name = "SLUICE_BENCH_REF")]
static REF_FLOWS: HashMap<[u32; 4], u32> = HashMap::with_max_entries(16, 0);

/// The same flows in a table of 16 entries, for `bench_ref_lookup_small`.
#[map(name = "SLUICE_BENCH_RS")]
static REF_FLOWS_SMALL: HashMap<[u32; 4], u32> = HashMap::with_max_entries(16, 0);

/// The outer source of the reference's tunnel (192.0.2.1, stored order).
const REF_SOURCE: u32 = u32::from_ne_bytes([192, 0, 2, 1]);

/// The irreducible work of forwarding an established IPv4 TCP flow, as the reference for
/// `sluice_lb`'s established flows: parse Ethernet, IPv4 (no options) and TCP ports, one hash
/// lookup on the 5-tuple, push an outer IPv4 header and write it with its checksum, bounce.
/// No counters, no VIP check, no next-hop cache, no per-backend plan: what Sluice does
/// beyond this is what the bench's ratio to it measures.
#[xdp]
pub fn bench_ref_established(ctx: XdpContext) -> u32 {
    restoring!(&ctx, reference_established(&ctx))
}

/// The first 38 bytes of the frame (Ethernet, a 20-byte IPv4 header and the TCP ports), as
/// the single-purpose programs below read them.
#[inline(always)]
fn ipv4_tcp_head(ctx: &XdpContext) -> Option<*const u8> {
    at::<[u8; 38]>(ctx, 0).map(|h| h as *const u8)
}

/// The references' parse: the head of an untagged IPv4 frame with a 20-byte header
/// carrying TCP, or `None`.
#[inline(always)]
fn reference_parse(ctx: &XdpContext) -> Option<*const u8> {
    let p = ipv4_tcp_head(ctx)?;
    // Ethertype IPv4, version 4 with IHL 5, protocol TCP.
    let ipv4 = raw16_at(p, 12) == 0x0800u16.to_be() && raw16_at(p, 14) & 0xff == 0x45;
    (ipv4 && raw16_at(p, 22) >> 8 == 6).then_some(p)
}

#[inline(always)]
fn reference_established(ctx: &XdpContext) -> u32 {
    let Some(p) = reference_parse(ctx) else {
        return xdp_action::XDP_PASS;
    };
    let key = [raw32_at(p, 26), raw32_at(p, 30), raw32_at(p, 34), 6];
    // SAFETY: copied out at once.
    let Some(backend) = (unsafe { REF_FLOWS.get(&key) }).copied() else {
        return xdp_action::XDP_PASS;
    };
    reference_encap(ctx, u16::from_be(raw16_at(p, 16)), backend)
}

/// The irreducible work of forwarding the SYN of a never-seen IPv4 TCP flow under the flood
/// guard, as the floor for `sluice_lb`'s: parse as [`bench_ref_established`] does, look the
/// VIP up, hash the 5-tuple, read the VIP's Maglev slot and the backend's record, push and
/// write the outer header, bounce. No flow table, counters, flood window or next-hop cache.
/// Its source cycles as `bench_lb_new`'s does, so its Maglev reads land where a flood's do.
#[xdp]
pub fn bench_ref_syn(ctx: XdpContext) -> u32 {
    cycling!(&ctx, NEW_FLOWS, reference_syn(&ctx))
}

#[inline(always)]
fn reference_syn(ctx: &XdpContext) -> u32 {
    let Some(p) = reference_parse(ctx) else {
        return xdp_action::XDP_PASS;
    };
    let dst = raw32_at(p, 30);
    let vip = VipKey::new([dst, 0, 0, 0], raw16_at(p, 36), proto::TCP, FAMILY_V4);
    // SAFETY: copied out at once.
    let Some(meta) = (unsafe { VIPS.get(&vip) }).copied() else {
        return xdp_action::XDP_PASS;
    };
    let key = FlowKey4 {
        src: raw32_at(p, 26),
        dst,
        ports: raw32_at(p, 34),
        proto: proto::TCP as u32,
    };
    let slot = maglev_slot(flow_hash4(&key), meta.table_size);
    let Some(id) = crate::maps::maglev_slot(meta.table_index(slot)) else {
        return xdp_action::XDP_PASS;
    };
    let backend = match BACKENDS.get(id) {
        Some(b) if b.is_alive() => b.addr[0],
        _ => return xdp_action::XDP_PASS,
    };
    reference_encap(ctx, u16::from_be(raw16_at(p, 16)), backend)
}

/// The references' encapsulation: push an outer IPv4 header to `backend` (stored order)
/// in front of an inner packet of `inner_len` bytes, write it with its checksum, bounce.
#[inline(always)]
fn reference_encap(ctx: &XdpContext, inner_len: u16, backend: u32) -> u32 {
    // SAFETY: plain helper call on our own context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -20) } != 0 {
        return xdp_action::XDP_ABORTED;
    }
    let Some(out) = at::<[u8; 54]>(ctx, 0) else {
        return xdp_action::XDP_ABORTED;
    };
    let o = out as *mut u8;
    // The Ethernet header moves to the new start (its bytes are now 20 further on).
    for i in 0..7 {
        put16(o, i * 2, raw16_at(o, 20 + i * 2));
    }
    let words: [u16; 10] = [
        0x4500,
        inner_len.wrapping_add(20),
        0,
        0x4000,
        (64 << 8) | 4,
        0,
        u16::from_be(REF_SOURCE as u16),
        u16::from_be((REF_SOURCE >> 16) as u16),
        u16::from_be(backend as u16),
        u16::from_be((backend >> 16) as u16),
    ];
    let mut sum: u32 = 0;
    for w in words {
        sum += w as u32;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    for (i, w) in words.iter().enumerate() {
        put16(o, 14 + i * 2, w.to_be());
    }
    put16(o, 24, (!(sum as u16)).to_be());
    xdp_action::XDP_TX
}

/// The trivial reference: bounce every frame.
#[xdp]
pub fn bench_ref_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

/// The trivial reference inside the restoring wrapper: the wrapper's own cost.
#[xdp]
pub fn bench_tx(ctx: XdpContext) -> u32 {
    restoring!(&ctx, xdp_action::XDP_TX)
}

/// A trivial program that grows the head by an IPv4 header, as encapsulation does, inside the
/// wrapper, which must then move it back. Half of its extra cost over `bench_tx` is the
/// wrapper's move back, the other half the program's own move.
#[xdp]
pub fn bench_tx_moved(ctx: XdpContext) -> u32 {
    // SAFETY: plain helper call on our own context.
    let moved = |ctx: &XdpContext| unsafe { bpf_xdp_adjust_head(ctx.ctx, -20) } == 0;
    restoring!(
        &ctx,
        if moved(&ctx) {
            xdp_action::XDP_TX
        } else {
            xdp_action::XDP_ABORTED
        }
    )
}

/// `sluice_lb` on the original packet every repetition.
#[xdp]
pub fn bench_lb(ctx: XdpContext) -> u32 {
    restoring!(&ctx, lb::run(&ctx))
}

/// `sluice_decap` on the original packet every repetition.
#[xdp]
pub fn bench_decap(ctx: XdpContext) -> u32 {
    restoring!(&ctx, decap::run(&ctx))
}

/// `sluice_lb` with the IPv4 source's low bits cycling through [`MANY_FLOWS`] clients.
#[xdp]
pub fn bench_lb_many(ctx: XdpContext) -> u32 {
    cycling!(&ctx, MANY_FLOWS, lb::run(&ctx))
}

/// `sluice_lb` with a source never seen recently ([`NEW_FLOWS`] cycle): every SYN is a new
/// flow, and once the flow table is full every insert evicts, as on a busy node.
#[xdp]
pub fn bench_lb_new(ctx: XdpContext) -> u32 {
    cycling!(&ctx, NEW_FLOWS, lb::run(&ctx))
}

/// The trivial program behind the same source rewriting: what the cycling costs, so that
/// the cycling cases can be charged only for their own work.
#[xdp]
pub fn bench_tx_cycling(ctx: XdpContext) -> u32 {
    cycling!(&ctx, NEW_FLOWS, xdp_action::XDP_TX)
}

/// Writes `i` into the low three octets of an untagged IPv4 frame's source address.
#[inline(always)]
fn rewrite_source(ctx: &XdpContext, i: u32) {
    if let Some(src) = at::<[u8; 4]>(ctx, 26) {
        let src = src as *mut u8;
        // SAFETY: bounds checked by `at`.
        unsafe {
            *src.add(1) = (i >> 16) as u8;
            *src.add(2) = (i >> 8) as u8;
            *src.add(3) = i as u8;
        }
    }
}

/// The kernel's floor for a new flow: one LRU insert of a never-seen IPv4 key, nothing else.
#[xdp]
pub fn bench_lru_insert(_ctx: XdpContext) -> u32 {
    let i = next_counter(NEW_FLOWS);
    let key = FlowKey4 {
        src: i,
        proto: 6,
        ..FlowKey4::default()
    };
    let state = sluice_common::FlowState::default();
    match crate::maps::FLOWS4.insert(&key, state, 0) {
        Ok(()) => xdp_action::XDP_TX,
        Err(_) => xdp_action::XDP_DROP,
    }
}

/// Only the Maglev pick: VIP lookup, flow hash, table and backend lookups on a rotating key.
#[xdp]
pub fn bench_maglev(_ctx: XdpContext) -> u32 {
    let i = next_counter(MANY_FLOWS);
    let mut key = FlowKey {
        family: 4,
        proto: 6,
        dst_port: 80u16.to_be(),
        ..FlowKey::default()
    };
    key.src[0] = i;
    key.dst[0] = u32::from_ne_bytes([198, 51, 100, 1]);
    let vip = VipKey::new(key.dst, key.dst_port, 6, 4);
    // SAFETY: copied out at once.
    let Some(meta) = (unsafe { VIPS.get(&vip) }).copied() else {
        return xdp_action::XDP_ABORTED;
    };
    let slot = maglev_slot(flow_hash(&key), meta.table_size);
    let Some(id) = crate::maps::maglev_slot(meta.table_index(slot)) else {
        return xdp_action::XDP_ABORTED;
    };
    match BACKENDS.get(id) {
        Some(b) if b.is_alive() => xdp_action::XDP_TX,
        _ => xdp_action::XDP_DROP,
    }
}

/// One IPv4 flow-table lookup of the established flow's key, alone (profile of the hit path).
#[xdp]
pub fn bench_flow_lookup(ctx: XdpContext) -> u32 {
    let Some(p) = ipv4_tcp_head(&ctx) else {
        return xdp_action::XDP_PASS;
    };
    let key = FlowKey4 {
        src: raw32_at(p, 26),
        dst: raw32_at(p, 30),
        ports: raw32_at(p, 34),
        proto: 6,
    };
    match crate::maps::FLOWS4.get_ptr_mut(&key) {
        Some(_) => xdp_action::XDP_TX,
        None => xdp_action::XDP_DROP,
    }
}

/// The reference's one lookup, alone.
#[xdp]
pub fn bench_ref_lookup(ctx: XdpContext) -> u32 {
    ref_lookup(&ctx, &REF_FLOWS)
}

/// The reference's one lookup in a table of 16 entries.
#[xdp]
pub fn bench_ref_lookup_small(ctx: XdpContext) -> u32 {
    ref_lookup(&ctx, &REF_FLOWS_SMALL)
}

#[inline(always)]
fn ref_lookup(ctx: &XdpContext, flows: &HashMap<[u32; 4], u32>) -> u32 {
    let Some(p) = ipv4_tcp_head(ctx) else {
        return xdp_action::XDP_PASS;
    };
    let key = [raw32_at(p, 26), raw32_at(p, 30), raw32_at(p, 34), 6];
    match flows.get_ptr(&key) {
        Some(_) => xdp_action::XDP_TX,
        None => xdp_action::XDP_DROP,
    }
}

/// What [`test_fast_path`] returns when the fast path declined the packet.
pub const DECLINED: u32 = 0x5ced;

/// The IPv4 fast path alone, for the dataplane tests: its action when it took the
/// packet, [`DECLINED`] when it left it to the general path. Counts the outcome as
/// `sluice_lb` would.
#[xdp]
pub fn test_fast_path(ctx: XdpContext) -> u32 {
    let Some(node) = crate::maps::NODE.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    match crate::fast_path::forward(&ctx, node) {
        None => DECLINED,
        Some(Ok((action, outcome))) => {
            crate::maps::bump(&crate::maps::LB_STATS, outcome as u32);
            action
        }
        Some(Err(outcome)) => {
            crate::maps::bump(&crate::maps::LB_STATS, outcome as u32);
            lb::action_for(outcome)
        }
    }
}
