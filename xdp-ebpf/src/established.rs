//! The established IPv4 path: an untagged IPv4 TCP or UDP packet of a flow the IPv4 flow
//! table knows, whose backend is alive, reached over IPv4 through a next hop this CPU has
//! cached. That is nearly every packet a busy node forwards, so it is read straight from
//! fixed offsets and goes parse → lookup → encapsulate → emit without the general parser's
//! [`Packet`](crate::parse::Packet) or the dual-stack key.
//!
//! Anything else, and anything that would need more than this path does (a SYN, a
//! fragment, IP options, a tag, an expired next hop, an MTU too small, an IPv6 backend, a
//! flow entry to re-pick), is answered `None` with the packet untouched, and the general
//! path (`lb::forward`) takes it from the start. Both paths write the same bytes and count
//! the same outcomes: the dataplane tests and the fuzz test against the reference model run
//! through whichever one a packet takes.

use aya_ebpf::programs::XdpContext;
use sluice_common::{
    flow_hash4,
    net::{proto, ETH_P_IP},
    stats::Lb,
    FlowKey4, NodeConfig, FAMILY_V4,
};

use crate::{
    emit::{self, NextHop},
    encap,
    lookup::{self, Entry},
    maps::{add_traffic, BACKEND_STATS, FLOWS4, VIP_STATS},
    packet::{at, be16_at, len, raw16_at, raw32_at, u8_at, L2},
    shield,
};

// The ports are keyed as the native word of their four bytes (`raw32_at`), which is what
// `FlowKey4::ports_word` builds in userspace on this little-endian target.
const _: () = assert!(cfg!(target_endian = "little"));

/// Ethernet, a 20-byte IPv4 header and the 8 bytes of ports (and UDP length and checksum)
/// every TCP or UDP header starts with.
const HEAD: usize = 14 + 20 + 8;
/// Through the TCP flags.
const TCP_HEAD: usize = 14 + 20 + 14;

/// Forwards the packet if it is an established IPv4 flow (see the module doc); `None` leaves
/// it untouched for the general path.
#[inline(always)]
pub fn forward(ctx: &XdpContext, node: &NodeConfig) -> Option<Result<(u32, Lb), Lb>> {
    let p = at::<[u8; HEAD]>(ctx, 0)? as *const u8;
    // Untagged IPv4 with a 20-byte header, not a fragment.
    if raw16_at(p, 12) != ETH_P_IP.to_be() || u8_at(p, 14) != 0x45 || be16_at(p, 20) & 0x3fff != 0 {
        return None;
    }
    let ip_len = be16_at(p, 16) as usize;
    if 14 + ip_len > len(ctx) {
        return None;
    }
    let l4 = u8_at(p, 23);
    match l4 {
        proto::TCP if ip_len >= 40 => {
            let tcp = at::<[u8; TCP_HEAD]>(ctx, 0)? as *const u8;
            // A SYN (SYN set, ACK clear) always takes a fresh pick.
            if u8_at(tcp, TCP_HEAD - 1) & 0x12 == 0x02 {
                return None;
            }
        }
        proto::UDP if ip_len >= 28 => {}
        _ => return None,
    }
    let key = FlowKey4 {
        src: raw32_at(p, 26),
        dst: raw32_at(p, 30),
        ports: raw32_at(p, 34),
        proto: l4 as u32,
    };
    let Entry::Hit(route) = lookup::check(FLOWS4.get_ptr_mut(&key)?) else {
        return None;
    };
    if route.backend.family != FAMILY_V4 {
        return None;
    }
    // A live flow entry proves the packet is for a VIP, so a blocked source is dropped here.
    if node.shield != 0 {
        if let Some((slot, reason)) = shield::source_blocked(&[key.src, 0, 0, 0], FAMILY_V4) {
            shield::count(slot, reason);
            return Some(Err(Lb::Blocked));
        }
    }
    let hash = if node.src_v4_entropy != 0 {
        flow_hash4(&key)
    } else {
        0
    };
    let mut outer = encap::plan_inner(FAMILY_V4, u8_at(p, 15), ip_len, &route.backend, node, hash);
    let ingress = ctx.ingress_ifindex() as u32;
    let Some(NextHop::Forward { dst, src, ifindex }) = emit::cached(ingress, &outer, route.id)
    else {
        return None;
    };
    let l2 = L2 {
        dst: [raw16_at(p, 0), raw16_at(p, 2), raw16_at(p, 4)],
        src: [raw16_at(p, 6), raw16_at(p, 8), raw16_at(p, 10)],
        vlan: None,
    };
    let frame_len = len(ctx) as u64;
    add_traffic(&VIP_STATS, route.vip, frame_len);
    // `same_link` matters only for a VLAN tag, and this path takes untagged frames only.
    if let Err(e) = encap::write(ctx, &l2, &outer, &dst, &src, true) {
        return Some(Err(e));
    }
    add_traffic(&BACKEND_STATS, route.id, frame_len);
    crate::debug_log!(ctx, "vip {} backend {}", route.vip, route.id);
    Some(emit::send_or_kernel(ctx, ingress, &l2, &mut outer, ifindex))
}
