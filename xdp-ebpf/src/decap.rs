//! `sluice_decap`: the tunnel endpoint on gateway nodes.
//!
//! The kernel on this platform has no ipip or ip6_tunnel module, so the outer header is
//! stripped here and the inner packet goes up the stack as if it had arrived bare: its source
//! is still the real client (DSR), and its destination is the VIP bound on `lo`.
//!
//! Only packets whose outer destination is one of the configured local tunnel addresses are
//! decapsulated; other tunnel packets are passed untouched and counted as refused. Of those,
//! only packets whose outer source is in an accepted prefix (the LB nodes' tunnel sources,
//! `sluice-lb decap --from`) are taken; others are dropped: the inner source is the client
//! address the gateway's policies go by, and anyone who could tunnel to the node could
//! write any.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_adjust_head, programs::XdpContext};
use sluice_common::{
    net::{proto, ETH_P_IP, ETH_P_IPV6, IPV4_HLEN, IPV6_HLEN},
    stats::Decap,
    AddrKey, FAMILY_V4, FAMILY_V6,
};

use crate::{
    maps::{bump, DECAP_ADDRS, DECAP_SOURCES, DECAP_STATS},
    packet::{addr6_at, at, be16_at, len, raw32_at, u8_at, L2},
};

/// Runs the program and counts the outcome.
#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let outcome = match decapsulate(ctx) {
        Ok(o) | Err(o) => o,
    };
    bump(&DECAP_STATS, outcome as u32);
    match outcome {
        Decap::Malformed | Decap::RefusedSource => xdp_action::XDP_DROP,
        _ => xdp_action::XDP_PASS,
    }
}

#[inline(always)]
fn decapsulate(ctx: &XdpContext) -> Result<Decap, Decap> {
    let (l2, ethertype) = L2::parse(ctx).ok_or(Decap::Pass)?;
    let off = l2.len();
    let (key, src, inner_proto, outer_len) = match ethertype {
        ETH_P_IP => {
            let ip = at::<[u8; IPV4_HLEN]>(ctx, off).ok_or(Decap::Pass)? as *const u8;
            let p = u8_at(ip, 9);
            if p != proto::IPIP && p != proto::IPV6 {
                return Ok(Decap::Pass);
            }
            let vihl = u8_at(ip, 0);
            let ihl = ((vihl & 0x0f) as usize) * 4;
            let total = be16_at(ip, 2) as usize;
            if vihl >> 4 != 4 || ihl < IPV4_HLEN || total < ihl || off + total > len(ctx) {
                return Err(Decap::Malformed);
            }
            let key = AddrKey {
                addr: [raw32_at(ip, 16), 0, 0, 0],
                family: FAMILY_V4,
                pad: 0,
                pad2: 0,
            };
            if be16_at(ip, 6) & 0x3fff != 0 {
                return Ok(if is_local(&key) {
                    Decap::RefusedFragment
                } else {
                    Decap::RefusedAddr
                });
            }
            (key, [raw32_at(ip, 12), 0, 0, 0], p, ihl)
        }
        ETH_P_IPV6 => {
            let ip = at::<[u8; IPV6_HLEN]>(ctx, off).ok_or(Decap::Pass)? as *const u8;
            let p = u8_at(ip, 6);
            if p != proto::IPIP && p != proto::IPV6 {
                return Ok(Decap::Pass);
            }
            let payload = be16_at(ip, 4) as usize;
            if u8_at(ip, 0) >> 4 != 6 || off + IPV6_HLEN + payload > len(ctx) {
                return Err(Decap::Malformed);
            }
            let key = AddrKey {
                addr: addr6_at(ip, 24),
                family: FAMILY_V6,
                pad: 0,
                pad2: 0,
            };
            (key, addr6_at(ip, 8), p, IPV6_HLEN)
        }
        _ => return Ok(Decap::Pass),
    };
    if !is_local(&key) {
        return Ok(Decap::RefusedAddr);
    }
    if !source_accepted(&src, key.family) {
        return Err(Decap::RefusedSource);
    }
    // The inner header must be what the outer says it is.
    // Any inner IP header is at least 20 bytes.
    let inner = at::<[u8; IPV4_HLEN]>(ctx, off + outer_len).ok_or(Decap::Malformed)? as *const u8;
    let version = u8_at(inner, 0) >> 4;
    let inner_type = match (inner_proto, version) {
        (proto::IPIP, 4) => ETH_P_IP,
        (proto::IPV6, 6) => ETH_P_IPV6,
        _ => return Err(Decap::Malformed),
    };
    // Drop the bytes in front of the inner header, then rewrite L2 in front of it.
    // SAFETY: plain helper call on our own context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, outer_len as i32) } != 0 {
        return Err(Decap::Malformed);
    }
    if !l2.write(ctx, &l2.dst, &l2.src, inner_type) {
        return Err(Decap::Malformed);
    }
    Ok(if key.family == FAMILY_V4 {
        Decap::DecapV4
    } else {
        Decap::DecapV6
    })
}

#[inline(always)]
fn is_local(key: &AddrKey) -> bool {
    DECAP_ADDRS.get_ptr(key).is_some()
}

/// Whether an outer source address is in one of the accepted prefixes.
#[inline(always)]
fn source_accepted(src: &[u32; 4], family: u8) -> bool {
    DECAP_SOURCES
        .get(&crate::shield::address_key(src, family))
        .is_some()
}
