//! Encapsulate: put an outer IPv4 or IPv6 header in front of the packet.
//!
//! The outer family follows the backend's address: 4in4 (IPIP), 6in6, 4in6 and 6in4. The
//! outer TTL / hop limit comes from node config; DSCP and ECN are copied from the inner header
//! (RFC 6040 normal mode), and IPv4 outer headers set DF so the tunnel is never fragmented. The
//! inner packet is not touched.

use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use sluice_common::{
    net::{ipv4_header_csum, proto, ETH_P_IP, ETH_P_IPV6, IPV4_HLEN, IPV6_HLEN},
    stats::Lb,
    Backend, NodeConfig, FAMILY_V4, FAMILY_V6,
};

use crate::{
    packet::{at, put16, put32, put_addr6, L2},
    parse::Packet,
};

/// The outer header to add.
pub struct Outer {
    /// Outer family: the backend's.
    pub family: u8,
    /// Outer source (node address, possibly with flow entropy).
    pub src: [u32; 4],
    /// Outer destination: the backend.
    pub dst: [u32; 4],
    /// Protocol / next header of the payload: IPIP for IPv4 inside, IPV6 for IPv6 inside.
    pub inner_proto: u8,
    /// Traffic class copied from the inner header.
    pub tos: u8,
    /// TTL / hop limit.
    pub ttl: u8,
    /// IPv6 flow label (flow-hash bits, so ECMP and RSS downstream spread flows).
    pub flow_label: u32,
    /// Bytes the outer header adds.
    pub len: usize,
    /// Outer packet length (outer header plus the inner IP packet).
    pub total: usize,
}

/// True if the outer header for `backend` uses flow-hash bits (IPv6 flow label, or a source
/// address with entropy bits).
#[inline(always)]
pub fn needs_hash(backend: &Backend, node: &NodeConfig) -> bool {
    backend.family == FAMILY_V6 || node.src_v4_entropy != 0
}

/// Works out the outer header for `pkt` tunnelled to `backend`. `hash` is only read when
/// [`needs_hash`] says so.
#[inline(always)]
pub fn plan(pkt: &Packet, backend: &Backend, node: &NodeConfig, hash: u32) -> Outer {
    plan_inner(pkt.flow.family, pkt.tos, pkt.ip_len, backend, node, hash)
}

/// [`plan`] for an inner IP packet of `family`, traffic class `tos` and `ip_len` bytes.
#[inline(always)]
pub fn plan_inner(
    family: u8,
    tos: u8,
    ip_len: usize,
    backend: &Backend,
    node: &NodeConfig,
    hash: u32,
) -> Outer {
    let inner_proto = if family == FAMILY_V4 {
        proto::IPIP
    } else {
        proto::IPV6
    };
    let (len, src) = if backend.family == FAMILY_V6 {
        (IPV6_HLEN, node.outer_src_v6(hash))
    } else {
        (IPV4_HLEN, [node.outer_src_v4(hash), 0, 0, 0])
    };
    Outer {
        family: backend.family,
        src,
        dst: backend.addr,
        inner_proto,
        tos,
        ttl: node.outer_ttl(),
        flow_label: hash & 0x000f_ffff,
        len,
        total: len + ip_len,
    }
}

/// Grows the packet at the front and writes L2 (with the given MACs) and the outer header;
/// `l2` is the L2 header the packet arrived with.
///
/// A VLAN tag belongs to the link the frame arrived on: it is kept when the frame leaves by
/// that link again (`same_link`), and dropped when it leaves by another interface.
#[inline(always)]
pub fn write(
    ctx: &XdpContext,
    l2: &L2,
    outer: &Outer,
    dst_mac: &[u16; 3],
    src_mac: &[u16; 3],
    same_link: bool,
) -> Result<(), Lb> {
    let out_l2 = if same_link {
        *l2
    } else {
        L2 { vlan: None, ..*l2 }
    };
    let grow = outer.len as i32 + out_l2.len() as i32 - l2.len() as i32;
    // SAFETY: plain helper call on our own context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -grow) } != 0 {
        return Err(Lb::EncapFailed);
    }
    let l2 = out_l2.len();
    if outer.family == FAMILY_V6 {
        if !out_l2.write(ctx, dst_mac, src_mac, ETH_P_IPV6) {
            return Err(Lb::EncapFailed);
        }
        let p = at::<[u8; IPV6_HLEN]>(ctx, l2).ok_or(Lb::EncapFailed)? as *mut u8;
        let first = 6u32 << 28 | (outer.tos as u32) << 20 | outer.flow_label;
        put32(p, 0, first.to_be());
        put16(p, 4, ((outer.total - IPV6_HLEN) as u16).to_be());
        put16(p, 6, u16::from_ne_bytes([outer.inner_proto, outer.ttl]));
        put_addr6(p, 8, &outer.src);
        put_addr6(p, 24, &outer.dst);
    } else {
        if !out_l2.write(ctx, dst_mac, src_mac, ETH_P_IP) {
            return Err(Lb::EncapFailed);
        }
        let p = at::<[u8; IPV4_HLEN]>(ctx, l2).ok_or(Lb::EncapFailed)? as *mut u8;
        let words = ipv4_header(outer);
        let mut i = 0;
        while i < 10 {
            put16(p, 2 * i, words[i]);
            i += 1;
        }
    }
    Ok(())
}

/// The outer IPv4 header as ten stored words, checksum included.
#[inline(always)]
fn ipv4_header(outer: &Outer) -> [u16; 10] {
    let mut w = [
        u16::from_ne_bytes([0x45, outer.tos]),
        (outer.total as u16).to_be(),
        0,
        0x4000u16.to_be(),
        u16::from_ne_bytes([outer.ttl, outer.inner_proto]),
        0,
        outer.src[0] as u16,
        (outer.src[0] >> 16) as u16,
        outer.dst[0] as u16,
        (outer.dst[0] >> 16) as u16,
    ];
    w[5] = ipv4_header_csum(&w);
    w
}
