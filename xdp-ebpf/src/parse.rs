//! Parse: Ethernet (one optional 802.1Q/802.1ad tag), IPv4 with options, IPv6 with the common
//! extension headers, then TCP, UDP or the header an ICMP error quotes.
//!
//! The result is the flow as the forwarder sees it (client → VIP). For an ICMP error the flow is
//! rebuilt from the quoted header with source and destination swapped, so it names the same
//! client → VIP flow as the packets that caused the error.
//!
//! IPv6 extension headers: hop-by-hop, routing and destination options are walked (at most
//! four), so TCP or UDP behind them is still forwarded; the encapsulated packet carries them
//! unchanged. A fragment header makes the packet a fragment. Anything else (AH, ESP, unknown)
//! ends the walk and the packet is not for a TCP/UDP VIP.

use aya_ebpf::programs::XdpContext;
use sluice_common::{
    net::{self, proto, ETH_P_IP, ETH_P_IPV6, IPV4_HLEN, IPV6_HLEN},
    stats::Lb,
    FlowKey, FAMILY_V4, FAMILY_V6,
};

use crate::packet::{addr6_at, at, be16_at, len, raw16_at, raw32_at, u8_at, L2};

/// What kind of packet the flow came from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// TCP or UDP; `syn` is a TCP SYN without ACK (a connection opening).
    Transport { syn: bool },
    /// An ICMP or ICMPv6 error quoting a packet the VIP sent.
    IcmpError,
    /// An IP fragment: only `flow.dst`, `flow.family` and `flow.proto` are meaningful.
    Fragment,
    /// IP, but neither TCP, UDP, a fragment nor an ICMP error.
    Other,
}

/// A parsed packet.
pub struct Packet {
    /// L2 header as received.
    pub l2: L2,
    /// Flow the packet belongs to (client → VIP).
    pub flow: FlowKey,
    /// Kind of packet.
    pub kind: Kind,
    /// Length of the IP packet (header and payload, without L2 or trailing padding).
    pub ip_len: usize,
    /// IPv4 TOS / IPv6 traffic class, copied to the outer header.
    pub tos: u8,
}

/// Parses the packet. `Err` carries the outcome for packets that end here.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Packet, Lb> {
    let (l2, ethertype) = L2::parse(ctx).ok_or(Lb::MalformedL2)?;
    match ethertype {
        ETH_P_IP => ipv4(ctx, l2),
        ETH_P_IPV6 => ipv6(ctx, l2),
        _ => Err(Lb::Pass),
    }
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, l2: L2) -> Result<Packet, Lb> {
    let off = l2.len();
    let ip = at::<[u8; IPV4_HLEN]>(ctx, off).ok_or(Lb::MalformedIpv4)? as *const u8;
    let vihl = u8_at(ip, 0);
    let ihl = ((vihl & 0x0f) as usize) * 4;
    let total = be16_at(ip, 2) as usize;
    if vihl >> 4 != 4 || ihl < IPV4_HLEN || total < ihl || off + total > len(ctx) {
        return Err(Lb::MalformedIpv4);
    }
    let mut flow = FlowKey {
        family: FAMILY_V4,
        proto: u8_at(ip, 9),
        ..FlowKey::default()
    };
    flow.src[0] = raw32_at(ip, 12);
    flow.dst[0] = raw32_at(ip, 16);
    let tos = u8_at(ip, 1);
    let mut pkt = Packet {
        l2,
        flow,
        kind: Kind::Other,
        ip_len: total,
        tos,
    };
    // More-fragments set or a non-zero offset: no ports in this packet, or none at all.
    if be16_at(ip, 6) & 0x3fff != 0 {
        pkt.kind = Kind::Fragment;
        return Ok(pkt);
    }
    let l4 = off + ihl;
    let l4_len = total - ihl;
    match pkt.flow.proto {
        proto::TCP | proto::UDP => transport(ctx, &mut pkt, l4, l4_len)?,
        proto::ICMP => icmp4_error(ctx, &mut pkt, l4, l4_len)?,
        _ => {}
    }
    Ok(pkt)
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, l2: L2) -> Result<Packet, Lb> {
    let off = l2.len();
    let ip = at::<[u8; IPV6_HLEN]>(ctx, off).ok_or(Lb::MalformedIpv6)? as *const u8;
    let payload = be16_at(ip, 4) as usize;
    if u8_at(ip, 0) >> 4 != 6 || off + IPV6_HLEN + payload > len(ctx) {
        return Err(Lb::MalformedIpv6);
    }
    let tos = ((be16_at(ip, 0) >> 4) & 0xff) as u8;
    let flow = FlowKey {
        src: addr6_at(ip, 8),
        dst: addr6_at(ip, 24),
        family: FAMILY_V6,
        ..FlowKey::default()
    };
    let mut next = u8_at(ip, 6);
    let mut l4 = off + IPV6_HLEN;
    let end = off + IPV6_HLEN + payload;
    let mut pkt = Packet {
        l2,
        flow,
        kind: Kind::Other,
        ip_len: IPV6_HLEN + payload,
        tos,
    };
    let mut i = 0;
    while i < net::MAX_IPV6_EXT_HEADERS {
        match next {
            proto::HOPOPTS | proto::ROUTING | proto::DSTOPTS => {
                let ext = at::<[u8; 2]>(ctx, l4).ok_or(Lb::MalformedIpv6)? as *const u8;
                next = u8_at(ext, 0);
                l4 += (u8_at(ext, 1) as usize + 1) * 8;
                if l4 > end {
                    return Err(Lb::MalformedIpv6);
                }
            }
            proto::FRAGMENT => {
                let frag = at::<[u8; 8]>(ctx, l4).ok_or(Lb::MalformedIpv6)? as *const u8;
                pkt.flow.proto = u8_at(frag, 0);
                pkt.kind = Kind::Fragment;
                return Ok(pkt);
            }
            _ => break,
        }
        i += 1;
    }
    pkt.flow.proto = next;
    let l4_len = end - l4;
    match next {
        proto::TCP | proto::UDP => transport(ctx, &mut pkt, l4, l4_len)?,
        proto::ICMPV6 => icmp6_error(ctx, &mut pkt, l4, l4_len)?,
        _ => {}
    }
    Ok(pkt)
}

/// Ports, and for TCP whether this is a SYN.
#[inline(always)]
fn transport(ctx: &XdpContext, pkt: &mut Packet, l4: usize, l4_len: usize) -> Result<(), Lb> {
    if pkt.flow.proto == proto::TCP {
        let tcp = at::<[u8; 20]>(ctx, l4).ok_or(Lb::MalformedL4)? as *const u8;
        if l4_len < 20 {
            return Err(Lb::MalformedL4);
        }
        pkt.flow.src_port = raw16_at(tcp, 0);
        pkt.flow.dst_port = raw16_at(tcp, 2);
        // SYN set, ACK clear.
        let syn = u8_at(tcp, 13) & 0x12 == 0x02;
        pkt.kind = Kind::Transport { syn };
    } else {
        let udp = at::<[u8; 8]>(ctx, l4).ok_or(Lb::MalformedL4)? as *const u8;
        if l4_len < 8 {
            return Err(Lb::MalformedL4);
        }
        pkt.flow.src_port = raw16_at(udp, 0);
        pkt.flow.dst_port = raw16_at(udp, 2);
        pkt.kind = Kind::Transport { syn: false };
    }
    Ok(())
}

/// An ICMP error quotes the IP header and first 8 bytes of a packet the VIP sent
/// (VIP → client). Rebuild the client → VIP flow from it.
#[inline(always)]
fn icmp4_error(ctx: &XdpContext, pkt: &mut Packet, l4: usize, l4_len: usize) -> Result<(), Lb> {
    let icmp = at::<[u8; 8]>(ctx, l4).ok_or(Lb::MalformedIcmp)? as *const u8;
    match u8_at(icmp, 0) {
        net::ICMP_DEST_UNREACH
        | net::ICMP_SOURCE_QUENCH
        | net::ICMP_TIME_EXCEEDED
        | net::ICMP_PARAMETER_PROBLEM => {}
        _ => return Ok(()),
    }
    let q = l4 + 8;
    let inner = at::<[u8; IPV4_HLEN]>(ctx, q).ok_or(Lb::MalformedIcmp)? as *const u8;
    let vihl = u8_at(inner, 0);
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || ihl < IPV4_HLEN || l4_len < 8 + ihl + 4 {
        return Err(Lb::MalformedIcmp);
    }
    let quoted_proto = u8_at(inner, 9);
    if quoted_proto != proto::TCP && quoted_proto != proto::UDP {
        return Ok(());
    }
    // An error about a packet the VIP sent is sent to the VIP: one quoting another source is
    // no error of ours, and stays a packet to its own destination (dropped there if that is a
    // VIP's address; passed to the kernel, which would route it back out, it would loop).
    if raw32_at(inner, 12) != pkt.flow.dst[0] {
        return Ok(());
    }
    let ports = at::<[u8; 4]>(ctx, q + ihl).ok_or(Lb::MalformedIcmp)? as *const u8;
    pkt.flow.proto = quoted_proto;
    pkt.flow.src[0] = raw32_at(inner, 16);
    pkt.flow.dst[0] = raw32_at(inner, 12);
    pkt.flow.src_port = raw16_at(ports, 2);
    pkt.flow.dst_port = raw16_at(ports, 0);
    pkt.kind = Kind::IcmpError;
    Ok(())
}

/// ICMPv6 errors (types 1 to 4) quote the offending packet; only a quoted header whose next
/// header is TCP or UDP directly is routed.
#[inline(always)]
fn icmp6_error(ctx: &XdpContext, pkt: &mut Packet, l4: usize, l4_len: usize) -> Result<(), Lb> {
    let icmp = at::<[u8; 8]>(ctx, l4).ok_or(Lb::MalformedIcmp)? as *const u8;
    let t = u8_at(icmp, 0);
    if !(net::ICMPV6_DEST_UNREACH..=net::ICMPV6_PARAMETER_PROBLEM).contains(&t) {
        return Ok(());
    }
    let q = l4 + 8;
    let inner = at::<[u8; IPV6_HLEN]>(ctx, q).ok_or(Lb::MalformedIcmp)? as *const u8;
    if u8_at(inner, 0) >> 4 != 6 || l4_len < 8 + IPV6_HLEN + 4 {
        return Err(Lb::MalformedIcmp);
    }
    let quoted_proto = u8_at(inner, 6);
    if quoted_proto != proto::TCP && quoted_proto != proto::UDP {
        return Ok(());
    }
    // As for IPv4: only an error quoting a packet from the address it is sent to is ours.
    // Compared a word at a time in place: a copy of the address would not fit the stack of
    // the general path with debug logging.
    if raw32_at(inner, 8) != pkt.flow.dst[0]
        || raw32_at(inner, 12) != pkt.flow.dst[1]
        || raw32_at(inner, 16) != pkt.flow.dst[2]
        || raw32_at(inner, 20) != pkt.flow.dst[3]
    {
        return Ok(());
    }
    let ports = at::<[u8; 4]>(ctx, q + IPV6_HLEN).ok_or(Lb::MalformedIcmp)? as *const u8;
    pkt.flow.proto = quoted_proto;
    pkt.flow.src = addr6_at(inner, 24);
    pkt.flow.src_port = raw16_at(ports, 2);
    pkt.flow.dst_port = raw16_at(ports, 0);
    pkt.kind = Kind::IcmpError;
    Ok(())
}
