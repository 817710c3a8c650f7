//! `sluice_lb`: (the VIP filter on the raw header) → the IPv4 fast path, or parse →
//! shield → lookup → encapsulate → emit, and the one counter each packet ends in.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use sluice_common::{flow_hash, stats::Lb, stats::LbFlow, stats::LB_FLOW_BASE};

use crate::{
    emit::{self, NextHop},
    encap, fast_path, icmp, lookup,
    maps::{add_traffic, bump, BACKEND_STATS, LB_STATS, NODE, VIP_STATS},
    packet::len,
    parse::{self, Kind},
    shield,
};

/// Runs the forwarder on one packet and counts the outcome.
#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let (action, outcome) = match forward(ctx) {
        Ok(done) => done,
        Err(outcome) => (action_for(outcome), outcome),
    };
    bump(&LB_STATS, outcome as u32);
    action
}

/// The action for a packet that ends with `outcome` before it was rewritten.
#[inline(always)]
pub fn action_for(outcome: Lb) -> u32 {
    match outcome {
        Lb::Pass => xdp_action::XDP_PASS,
        _ => xdp_action::XDP_DROP,
    }
}

#[inline(always)]
fn forward(ctx: &XdpContext) -> Result<(u32, Lb), Lb> {
    let filtered = lookup::filter_frame(ctx);
    if filtered == lookup::Filtered::NotVip {
        return Err(Lb::Pass);
    }
    // Read in place rather than copied: the stack is the verifier's scarcest resource here.
    // A packet that meets the agent's write half-way may see old and new fields side by
    // side; the config changes rarely, and the next packet sees it whole.
    let Some(node) = NODE.get(0) else {
        return Err(Lb::Pass);
    };
    // With debug logging on, every packet takes the general path, which logs each decision
    // in one place: the verifier then never sees the fast path and the logging together,
    // which would not fit in its 512 bytes of stack. Both paths write the same bytes.
    if filtered == lookup::Filtered::MayBeVip && !crate::debugging() {
        if let Some(done) = fast_path::forward(ctx, node) {
            return done;
        }
    }
    let frame_len = len(ctx) as u64;
    let pkt = parse::parse(ctx)?;
    match pkt.kind {
        Kind::Transport { .. } | Kind::IcmpError => {}
        Kind::Fragment if lookup::is_vip_address(&pkt) => return Err(Lb::Fragment),
        Kind::Other if lookup::is_vip_address(&pkt) => return Err(Lb::NoService),
        Kind::Fragment | Kind::Other => return Err(Lb::Pass),
    }
    // Once per frame: read above unless the frame was tagged (or too short to read there).
    if filtered == lookup::Filtered::Unread && !lookup::may_be_vip(&pkt) {
        return Err(Lb::Pass);
    }
    if node.shield != 0 {
        if let Some((slot, reason)) = shield::blocks(ctx, &pkt) {
            // Only traffic for a VIP is ever blocked, so the node stays reachable.
            if lookup::vip(&pkt).is_some() {
                shield::count(slot, reason);
                return Err(Lb::Blocked);
            }
        }
    }
    let route = lookup::route(&pkt, node.flood_limit)?;
    add_traffic(&VIP_STATS, route.vip, frame_len);
    if pkt.kind == Kind::IcmpError {
        bump(&LB_STATS, LB_FLOW_BASE + LbFlow::IcmpError as u32);
    }
    // Outer-header entropy (IPv6 flow label, source bits) always spreads by the 5-tuple.
    let hash = if encap::needs_hash(&route.backend, node) {
        flow_hash(&pkt.flow)
    } else {
        0
    };
    let mut outer = encap::plan(&pkt, &route.backend, node, hash);
    let ingress = ctx.ingress_ifindex() as u32;
    let (dst_mac, src_mac, ifindex) = match emit::next_hop(ctx, ingress, &outer, route.id) {
        NextHop::Forward { dst, src, ifindex } => (dst, src, Some(ifindex)),
        // The kernel takes it: address the frame to ourselves, as it arrived. It forwards
        // the frame and takes one off the TTL, so one more is written here: what leaves the
        // node is the configured TTL on either path.
        NextHop::Kernel => {
            outer.ttl = outer.ttl.saturating_add(1);
            (pkt.l2.dst, pkt.l2.src, None)
        }
        NextHop::TooBig(mtu) => {
            if pkt.kind == Kind::IcmpError {
                return Err(Lb::TooBigDropped);
            }
            return icmp::too_big(ctx, &pkt, mtu, outer.len).map(|a| (a, Lb::TooBig));
        }
        NextHop::Unreachable => return Err(Lb::FibFailure),
    };
    // Where it goes is settled before the frame is rewritten (a redirect only records it).
    // A port we may not redirect to hands it to the kernel instead, as for an unresolved
    // neighbour above; written for another link, it leaves without the ingress VLAN tag.
    let (done, dst_mac, src_mac, same_link) = match ifindex {
        None => (
            (xdp_action::XDP_PASS, Lb::KernelNeigh),
            dst_mac,
            src_mac,
            true,
        ),
        Some(ifindex) => match emit::send(ingress, ifindex) {
            Ok(done) => (done, dst_mac, src_mac, ifindex == ingress),
            Err(()) => {
                outer.ttl = outer.ttl.saturating_add(1);
                let done = (xdp_action::XDP_PASS, Lb::RedirectMiss);
                (done, pkt.l2.dst, pkt.l2.src, false)
            }
        },
    };
    encap::write(ctx, &pkt.l2, &outer, &dst_mac, &src_mac, same_link)?;
    add_traffic(&BACKEND_STATS, route.id, frame_len);
    crate::debug_log!(ctx, "vip {} backend {}", route.vip, route.id);
    Ok(done)
}
