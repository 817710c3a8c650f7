//! Answer a packet that is too big to tunnel with ICMP fragmentation-needed (IPv4) or ICMPv6
//! packet-too-big, sent back to the client from the VIP address.
//!
//! The reply quotes the start of the offending IP packet: up to [`QUOTE_MAX`] bytes, which
//! covers the IP header with options or extension headers and the TCP header, so the client's
//! stack can find the socket. The quote is already where it needs to be once the new headers
//! are pushed in front, so the packet is only grown at the head and cut at the tail.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use sluice_common::{
    net::{
        csum_fold, proto, ETH_P_IP, ETH_P_IPV6, ICMPV6_PKT_TOOBIG, ICMP_DEST_UNREACH,
        ICMP_FRAG_NEEDED, IPV4_HLEN, IPV6_HLEN,
    },
    stats::Lb,
    DEFAULT_OUTER_TTL, FAMILY_V6,
};

use crate::{
    packet::{at, len, put16, put32, put_addr6, sum_bytes, sum_words},
    parse::Packet,
};

/// Bytes of the offending packet quoted in the reply.
pub const QUOTE_MAX: usize = 128;
/// Minimum IPv6 MTU; never advertise less.
const IPV6_MIN_MTU: u16 = 1280;
/// ICMP / ICMPv6 header length.
const ICMP_HLEN: usize = 8;

/// Rewrites the packet into the ICMP reply and returns XDP_TX. `mtu` is the egress MTU;
/// `overhead` the outer header that did not fit.
#[inline(always)]
pub fn too_big(ctx: &XdpContext, pkt: &Packet, mtu: u16, overhead: usize) -> Result<u32, Lb> {
    let quote = if pkt.ip_len < QUOTE_MAX {
        pkt.ip_len
    } else {
        QUOTE_MAX
    };
    let inner_mtu = mtu.saturating_sub(overhead as u16);
    let l2 = pkt.l2.len();
    let ip_hlen = if pkt.flow.family == FAMILY_V6 {
        IPV6_HLEN
    } else {
        IPV4_HLEN
    };
    let push = ip_hlen + ICMP_HLEN;
    // SAFETY: plain helper calls on our own context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(push as i32)) } != 0 {
        return Err(Lb::EncapFailed);
    }
    let want = l2 + push + quote;
    let delta = want as i32 - len(ctx) as i32;
    if delta < 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
        return Err(Lb::EncapFailed);
    }
    // Back to the client: swap the MACs, keep the VLAN tag.
    let (dst_mac, src_mac) = (pkt.l2.src, pkt.l2.dst);
    let icmp_len = ICMP_HLEN + quote;
    if pkt.flow.family == FAMILY_V6 {
        if !pkt.l2.write(ctx, &dst_mac, &src_mac, ETH_P_IPV6) {
            return Err(Lb::EncapFailed);
        }
        let mtu = if inner_mtu < IPV6_MIN_MTU {
            IPV6_MIN_MTU
        } else {
            inner_mtu
        };
        let p = at::<[u8; IPV6_HLEN + ICMP_HLEN]>(ctx, l2).ok_or(Lb::EncapFailed)? as *mut u8;
        put32(p, 0, (6u32 << 28).to_be());
        put16(p, 4, (icmp_len as u16).to_be());
        put16(p, 6, u16::from_ne_bytes([proto::ICMPV6, DEFAULT_OUTER_TTL]));
        put_addr6(p, 8, &pkt.flow.dst);
        put_addr6(p, 24, &pkt.flow.src);
        put16(p, 40, u16::from_ne_bytes([ICMPV6_PKT_TOOBIG, 0]));
        put16(p, 42, 0);
        put32(p, 44, (mtu as u32).to_be());
        // Pseudo-header: addresses, upper-layer length, next header.
        let mut sum = sum_words(&pkt.flow.src) + sum_words(&pkt.flow.dst);
        sum += sum_words(&[(icmp_len as u32).to_be(), (proto::ICMPV6 as u32).to_be()]);
        sum += sum_bytes::<{ ICMP_HLEN + QUOTE_MAX }>(ctx, l2 + IPV6_HLEN, icmp_len);
        let p = at::<[u8; IPV6_HLEN + ICMP_HLEN]>(ctx, l2).ok_or(Lb::EncapFailed)? as *mut u8;
        put16(p, 42, csum_fold(sum));
    } else {
        if !pkt.l2.write(ctx, &dst_mac, &src_mac, ETH_P_IP) {
            return Err(Lb::EncapFailed);
        }
        let p = at::<[u8; IPV4_HLEN + ICMP_HLEN]>(ctx, l2).ok_or(Lb::EncapFailed)? as *mut u8;
        let mut ip = [
            u16::from_ne_bytes([0x45, 0]),
            ((IPV4_HLEN + icmp_len) as u16).to_be(),
            0,
            0,
            u16::from_ne_bytes([DEFAULT_OUTER_TTL, proto::ICMP]),
            0,
            pkt.flow.dst[0] as u16,
            (pkt.flow.dst[0] >> 16) as u16,
            pkt.flow.src[0] as u16,
            (pkt.flow.src[0] >> 16) as u16,
        ];
        ip[5] = sluice_common::net::ipv4_header_csum(&ip);
        let mut i = 0;
        while i < 10 {
            put16(p, 2 * i, ip[i]);
            i += 1;
        }
        put16(
            p,
            20,
            u16::from_ne_bytes([ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED]),
        );
        put16(p, 22, 0);
        put16(p, 24, 0);
        put16(p, 26, inner_mtu.to_be());
        let sum = sum_bytes::<{ ICMP_HLEN + QUOTE_MAX }>(ctx, l2 + IPV4_HLEN, icmp_len);
        let p = at::<[u8; IPV4_HLEN + ICMP_HLEN]>(ctx, l2).ok_or(Lb::EncapFailed)? as *mut u8;
        put16(p, 22, csum_fold(sum));
    }
    Ok(xdp_action::XDP_TX)
}
