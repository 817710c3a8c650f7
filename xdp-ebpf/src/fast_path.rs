//! The IPv4 fast path: an untagged IPv4 TCP or UDP packet with a 20-byte header, not a
//! fragment, forwarded to a gateway (4in4, or 4in6 to an IPv6 gateway) through a next hop
//! this CPU has cached. That is
//! nearly every packet a busy node forwards, so it is read straight from fixed offsets and
//! goes parse → lookup → encapsulate → emit without the general parser's
//! [`Packet`](crate::parse::Packet) or the dual-stack key.
//!
//! - A packet of a flow the IPv4 flow table knows, whose backend is alive, goes by its entry.
//! - A SYN, or a packet the table does not know (or whose backend died), takes a Maglev pick
//!   from its VIP's table, as on the general path, and the pick then owns the flow (an
//!   insert the flood guard admits, or the dead entry rewritten).
//! - A packet to a port of a VIP's address that no service listens on is dropped as
//!   `no_service`, and a packet whose source the shield blocks is dropped, as the general
//!   path would conclude.
//!
//! Anything else, and anything that would need more than this path does (IP options, a
//! fragment, a tag, a VIP with no live backend at the pick, an expired next hop, an MTU too
//! small), is answered `None` with the packet untouched and nothing
//! counted or recorded, and the general path (`lb::forward`) takes it from the start. Both
//! paths write the same bytes and count the same outcomes: the dataplane tests, among them
//! one against a node whose every packet takes the general path, and the fuzz test against
//! the reference model run through whichever one a packet takes.

use core::ptr::NonNull;

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use sluice_common::{
    flow_hash4,
    net::{proto, ETH_P_IP},
    stats::Lb,
    FlowKey4, FlowState, NodeConfig, VipKey, FAMILY_V4, VIP_HASH_SOURCE_ONLY,
};

use crate::{
    emit, encap,
    lookup::{self, Entry, Route},
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

/// Forwards the packet if it is an IPv4 packet this path takes (see the module doc); `None`
/// leaves it untouched for the general path.
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
    let syn = match l4 {
        proto::TCP if ip_len >= 40 => {
            let tcp = at::<[u8; TCP_HEAD]>(ctx, 0)? as *const u8;
            // SYN set, ACK clear: a connection opening, which always takes a fresh pick.
            u8_at(tcp, TCP_HEAD - 1) & 0x12 == 0x02
        }
        proto::UDP if ip_len >= 28 => false,
        _ => return None,
    };
    let key = FlowKey4 {
        src: raw32_at(p, 26),
        dst: raw32_at(p, 30),
        ports: raw32_at(p, 34),
        proto: l4 as u32,
    };
    let mut dead = None;
    if !syn {
        if let Some(state) = FLOWS4.get_ptr_mut(&key) {
            match lookup::check(state) {
                // The common packet: its own copy of the rest, with nothing of a pick in it.
                Entry::Hit(route) => return send(ctx, node, p, ip_len, &key, &route, None),
                Entry::Dead(state) => dead = Some(state),
                Entry::Miss => {}
            }
        }
    }
    let (route, pick) = match fresh_pick(node, &key, raw16_at(p, 36), syn, dead)? {
        Ok(picked) => picked,
        Err(outcome) => return Some(Err(outcome)),
    };
    send(ctx, node, p, ip_len, &key, &route, Some(&pick))
}

/// Encapsulates and sends the packet at `p` (`ip_len` bytes of IPv4, flow `key`) along
/// `route`, if its next hop is cached and the outer packet fits its MTU; `pick` is the table pick
/// that made the route, recorded once the packet is sure to be taken, or `None` for a
/// flow-table hit.
#[inline(always)]
fn send(
    ctx: &XdpContext,
    node: &NodeConfig,
    p: *const u8,
    ip_len: usize,
    key: &FlowKey4,
    route: &Route,
    pick: Option<&Pick>,
) -> Option<Result<(u32, Lb), Lb>> {
    // A live flow entry proves the packet is for a VIP (a pick was checked before it was
    // made), so a blocked source is dropped here.
    if pick.is_none() && blocked(node, key) {
        return Some(Err(Lb::Blocked));
    }
    let hash = match pick {
        Some(pick) if pick.flow_hashed => pick.hash,
        _ if encap::needs_hash(&route.backend, node) => flow_hash4(key),
        _ => 0,
    };
    let mut outer = encap::plan_inner(FAMILY_V4, u8_at(p, 15), ip_len, &route.backend, node, hash);
    let ingress = ctx.ingress_ifindex() as u32;
    let hop = emit::fresh(ingress, route.id)?;
    if outer.total > hop.mtu as usize {
        return None;
    }
    // Where it goes is settled before the frame is rewritten, so that the frame's own MACs
    // are read only when they are needed: when the devmap has no such port and the kernel
    // takes it (as the general path does too).
    let sent = emit::send(ingress, hop.egress);
    // Nothing was recorded or counted until here, where the packet is sure to be taken.
    if let Some(pick) = pick {
        own(key, route, pick, node.flood_limit);
    }
    let frame_len = len(ctx) as u64;
    add_traffic(&VIP_STATS, route.vip, frame_len);
    let own_macs;
    let (done, dst, src) = match sent {
        Ok(done) => (done, &hop.dst_mac, &hop.src_mac),
        Err(()) => {
            // Addressed to ourselves, as it arrived; the kernel's forwarding takes one off
            // the TTL, so one more is written.
            own_macs = (
                [raw16_at(p, 0), raw16_at(p, 2), raw16_at(p, 4)],
                [raw16_at(p, 6), raw16_at(p, 8), raw16_at(p, 10)],
            );
            outer.ttl = outer.ttl.saturating_add(1);
            let done = (xdp_action::XDP_PASS, Lb::RedirectMiss);
            (done, &own_macs.0, &own_macs.1)
        }
    };
    // `same_link` matters only for a VLAN tag, and this path takes untagged frames only.
    if let Err(e) = encap::write(ctx, &UNTAGGED, &outer, dst, src, true) {
        return Some(Err(e));
    }
    add_traffic(&BACKEND_STATS, route.id, frame_len);
    Some(Ok(done))
}

/// An untagged L2 header whose MACs are given separately to [`encap::write`].
const UNTAGGED: L2 = L2 {
    dst: [0; 3],
    src: [0; 3],
    vlan: None,
};

/// A table pick the fast path has made and not yet recorded.
struct Pick {
    /// Whether the packet is a SYN (for the flow event it counts).
    syn: bool,
    /// Whether `hash` is the 5-tuple's, which the outer header's entropy then reuses.
    flow_hashed: bool,
    /// The hash the pick used.
    hash: u32,
    /// The VIP's generation, for the flow entry.
    vip_gen: u32,
    /// The entry of the flow's dead backend, to rewrite.
    dead: Option<NonNull<FlowState>>,
}

/// Whether the shield, when on, blocks the source of `key`; a blocked packet is counted
/// against its entry and reason. Only for a packet known to be for a VIP.
#[inline(always)]
fn blocked(node: &NodeConfig, key: &FlowKey4) -> bool {
    if node.shield == 0 {
        return false;
    }
    match shield::source_blocked(&[key.src, 0, 0, 0], FAMILY_V4) {
        Some((slot, reason)) => {
            shield::count(slot, reason);
            true
        }
        None => false,
    }
}

/// The VIP's table pick for a flow the table cannot route.
///
/// - When no VIP serves the destination's port and protocol, what the general path would
///   conclude after repeating both lookups: `Err(Lb::NoService)` if the address is a
///   VIP's all the same, else `Err(Lb::Pass)` (the filter let another address through).
///   The shield blocks only traffic for a VIP.
/// - `Err(Lb::Blocked)` when the shield blocks its source, checked once the VIP is known
///   and before the pick, so that a blocked flood costs no hash or table read.
/// - `None` when the VIP has no live backend at that slot: the general path then drops it
///   and counts why.
#[inline(always)]
fn fresh_pick(
    node: &NodeConfig,
    key: &FlowKey4,
    dst_port: u16,
    syn: bool,
    dead: Option<NonNull<FlowState>>,
) -> Option<Result<(Route, Pick), Lb>> {
    let vip = VipKey::new([key.dst, 0, 0, 0], dst_port, key.proto as u8, FAMILY_V4);
    let Some(meta) = lookup::vip_of(&vip) else {
        let vip_address = lookup::carries_vip([key.dst, 0, 0, 0], FAMILY_V4);
        return Some(Err(lookup::no_service(vip_address)));
    };
    if blocked(node, key) {
        return Some(Err(Lb::Blocked));
    }
    let hash = lookup::pick_hash4(key, &meta);
    let route = lookup::pick(&meta, hash).ok()?;
    let pick = Pick {
        syn,
        flow_hashed: meta.flags & VIP_HASH_SOURCE_ONLY == 0,
        hash,
        vip_gen: meta.gen,
        dead,
    };
    Some(Ok((route, pick)))
}

/// Counts the pick's flow event and makes the pick the flow's owner, as the general path
/// does ([`lookup::route`]).
#[inline(always)]
fn own(key: &FlowKey4, route: &Route, pick: &Pick, flood_limit: u32) {
    lookup::flow_event(lookup::miss_event(pick.syn, pick.dead.is_some()));
    lookup::own(
        route,
        pick.vip_gen,
        pick.dead,
        flood_limit,
        || FLOWS4.get_ptr_mut(key),
        |state| {
            let _ = FLOWS4.insert(key, state, 0);
        },
    );
}
