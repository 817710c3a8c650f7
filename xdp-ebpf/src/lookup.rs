//! Lookup: flow table first for established packets, else VIP and the VIP's Maglev table.
//! Before any of that, a frame whose destination carries no VIP by the filter is let go
//! before it is even parsed ([`filter_frame`]).
//!
//! An established packet (not a SYN) whose flow entry is still valid needs no VIP lookup: the
//! entry records the VIP id and generation, checked against an array. Everything else finds
//! its VIP by (address, port, protocol) and, if it is new, takes a table pick.

use sluice_common::{
    flow_hash, flow_hash4, maglev_slot, source_hash, source_hash4,
    stats::{Lb, LbFlow, LB_FLOW_BASE},
    vip_filter_bit, Backend, FlowKey4, FlowState, VipKey, VipMeta, VIP_ADDRESS_MARKER,
    VIP_HASH_SOURCE_ONLY,
};

use core::ptr::NonNull;

use aya_ebpf::programs::XdpContext;
use sluice_common::net::{ETH_P_IP, ETH_P_IPV6};

use crate::{
    flood,
    maps::{self, bump, BACKENDS, LB_STATS, VIPS, VIP_FILTER, VIP_GENS},
    packet::{addr6_at, at, raw16_at, raw32_at},
    parse::{Kind, Packet},
};

/// False when the filter proves no VIP lives at `pkt.flow.dst`.
#[inline(always)]
pub fn may_be_vip(pkt: &Packet) -> bool {
    filter_allows(&pkt.flow.dst)
}

#[inline(always)]
fn filter_allows(dst: &[u32; 4]) -> bool {
    let (word, bit) = vip_filter_bit(dst);
    match VIP_FILTER.get(word) {
        Some(w) => w & bit != 0,
        None => true,
    }
}

/// What the VIP filter said of a frame before it was parsed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Filtered {
    /// No VIP at its destination: the kernel's, unparsed.
    NotVip,
    /// Its destination may carry a VIP.
    MayBeVip,
    /// Not read (a tag, another EtherType, too short): the parsed flow is filtered instead.
    Unread,
}

/// The VIP filter on an untagged IPv4 or IPv6 frame's destination address, read before the
/// frame is parsed: a frame for no VIP goes to the kernel before anything else is read,
/// which is the cheapest thing the node can do with traffic that is not its business.
#[inline(always)]
pub fn filter_frame(ctx: &XdpContext) -> Filtered {
    let Some(head) = at::<[u8; 34]>(ctx, 0) else {
        return Filtered::Unread;
    };
    let head = head as *const u8;
    let ethertype = raw16_at(head, 12);
    let dst = if ethertype == ETH_P_IP.to_be() {
        [raw32_at(head, 30), 0, 0, 0]
    } else if ethertype == ETH_P_IPV6.to_be() {
        let Some(head) = at::<[u8; 54]>(ctx, 0) else {
            return Filtered::Unread;
        };
        addr6_at(head as *const u8, 38)
    } else {
        return Filtered::Unread;
    };
    if filter_allows(&dst) {
        Filtered::MayBeVip
    } else {
        Filtered::NotVip
    }
}

/// The VIP a packet is for, if any.
#[inline(always)]
pub fn vip(pkt: &Packet) -> Option<VipMeta> {
    vip_of(&VipKey::new(
        pkt.flow.dst,
        pkt.flow.dst_port,
        pkt.flow.proto,
        pkt.flow.family,
    ))
}

/// The VIP at `key`, if it is a service (not an address marker).
#[inline(always)]
pub fn vip_of(key: &VipKey) -> Option<VipMeta> {
    // SAFETY: the value is copied out at once; the map is NO_PREALLOC, so an element replaced
    // concurrently is freed only after an RCU grace period.
    let meta = unsafe { VIPS.get(key) }.copied()?;
    if meta.flags & VIP_ADDRESS_MARKER != 0 {
        return None;
    }
    Some(meta)
}

/// The outcome of a packet no VIP serves: [`Lb::NoService`] when its destination is a VIP's
/// address all the same (nothing else on the node would take it), else [`Lb::Pass`].
#[inline(always)]
pub fn no_service(vip_address: bool) -> Lb {
    if vip_address {
        Lb::NoService
    } else {
        Lb::Pass
    }
}

/// True if `pkt.flow.dst` carries any VIP (its address marker exists).
#[inline(always)]
pub fn is_vip_address(pkt: &Packet) -> bool {
    may_be_vip(pkt) && carries_vip(pkt.flow.dst, pkt.flow.family)
}

/// True if `dst` of `family` carries any VIP (its address marker exists); no filter.
#[inline(always)]
pub fn carries_vip(dst: [u32; 4], family: u8) -> bool {
    VIPS.get_ptr(&VipKey::new(dst, 0, 0, family)).is_some()
}

/// Where a VIP packet goes.
pub struct Route {
    /// VIP id (for its counters).
    pub vip: u32,
    /// Backend id.
    pub id: u32,
    /// Backend record.
    pub backend: Backend,
}

/// The hash a VIP picks with: the 5-tuple, or the client address for persistence.
#[inline(always)]
fn pick_hash(pkt: &Packet, meta: &VipMeta) -> u32 {
    if meta.flags & VIP_HASH_SOURCE_ONLY != 0 {
        source_hash(&pkt.flow)
    } else {
        flow_hash(&pkt.flow)
    }
}

/// [`pick_hash`] of an IPv4 flow, from its IPv4 flow-table key.
#[inline(always)]
pub fn pick_hash4(key: &FlowKey4, meta: &VipMeta) -> u32 {
    if meta.flags & VIP_HASH_SOURCE_ONLY != 0 {
        source_hash4(key.src)
    } else {
        flow_hash4(key)
    }
}

#[inline(always)]
fn alive_backend(id: u32) -> Option<Backend> {
    let b = BACKENDS.get(id).copied()?;
    if b.is_alive() {
        Some(b)
    } else {
        None
    }
}

/// What the flow table says about a packet.
pub enum Entry {
    /// Valid entry with a live backend.
    Hit(Route),
    /// Valid entry whose backend is no longer alive: re-pick.
    Dead(NonNull<FlowState>),
    /// No entry, or one left by a VIP that no longer exists.
    Miss,
}

#[inline(always)]
fn entry(pkt: &Packet) -> Entry {
    match maps::flow_entry(&pkt.flow) {
        Some(state) => check(state),
        None => Entry::Miss,
    }
}

/// What the flow-table entry at `state` is worth: a hit while its VIP incarnation lives and
/// its backend is alive.
#[inline(always)]
pub fn check(state: *mut FlowState) -> Entry {
    // SAFETY: a live element of the LRU map; fields are read once each.
    let s = unsafe { *state };
    match VIP_GENS.get(s.vip) {
        Some(gen) if *gen == s.vip_gen => {}
        _ => return Entry::Miss,
    }
    match alive_backend(s.backend) {
        Some(backend) => Entry::Hit(Route {
            vip: s.vip,
            id: s.backend,
            backend,
        }),
        None => NonNull::new(state).map_or(Entry::Miss, Entry::Dead),
    }
}

/// Picks the backend for a packet that may be for a VIP.
///
/// - A TCP SYN always takes a fresh table pick, which then owns the flow.
/// - Otherwise a valid flow entry wins while its backend is alive (draining included).
/// - An entry whose backend is no longer alive is re-picked from the table.
/// - ICMP errors follow the flow they quote but never create an entry.
/// - While the flood guard is on (see [`flood::admit`], `flood_limit`), a new flow gets no
///   entry either: the table pick alone forwards it.
///
/// `Err(Lb::Pass)` means the packet is not for a VIP after all; `Err(Lb::NoService)` that
/// it is for a VIP's address but no service of it.
#[inline(always)]
pub fn route(pkt: &Packet, flood_limit: u32) -> Result<Route, Lb> {
    let syn = matches!(pkt.kind, Kind::Transport { syn: true });
    let found = if syn { Entry::Miss } else { entry(pkt) };
    let dead = match found {
        Entry::Hit(route) => return Ok(route),
        Entry::Dead(state) => Some(state),
        Entry::Miss => None,
    };
    let Some(meta) = vip(pkt) else {
        return Err(no_service(is_vip_address(pkt)));
    };
    let icmp = pkt.kind == Kind::IcmpError;
    // An error about a flow this node does not know is routed by the table, not a miss.
    if !(icmp && dead.is_none()) {
        flow_event(miss_event(syn, dead.is_some()));
    }
    let route = pick(&meta, pick_hash(pkt, &meta))?;
    if !icmp {
        own(
            &route,
            meta.gen,
            dead,
            flood_limit,
            || maps::flow_entry(&pkt.flow),
            |state| maps::insert_flow(&pkt.flow, state),
        );
    }
    Ok(route)
}

/// The flow event a packet that takes a table pick counts: a SYN, a re-pick of a flow whose
/// backend died, or another packet of a flow the table does not know.
#[inline(always)]
pub fn miss_event(syn: bool, dead: bool) -> LbFlow {
    match (syn, dead) {
        (true, _) => LbFlow::MissSyn,
        (false, true) => LbFlow::Repick,
        (false, false) => LbFlow::MissOther,
    }
}

/// Counts a flow event.
#[inline(always)]
pub fn flow_event(event: LbFlow) {
    bump(&LB_STATS, LB_FLOW_BASE + event as u32);
}

/// The live backend the Maglev table of `meta` gives `hash`.
#[inline(always)]
pub fn pick(meta: &VipMeta, hash: u32) -> Result<Route, Lb> {
    let slot = maglev_slot(hash, meta.table_size);
    let id = maps::maglev_slot(meta.table_index(slot)).ok_or(Lb::NoBackend)?;
    let backend = alive_backend(id).ok_or(Lb::NoBackend)?;
    Ok(Route {
        vip: meta.id,
        id,
        backend,
    })
}

/// Makes a fresh pick the owner of its flow: the entry of a dead backend is rewritten in
/// place (not an insert, so the flood guard does not count it); otherwise, if the flood
/// guard admits a new flow, its entry is rewritten if it exists (`existing`) or inserted
/// (`insert`, where a full table evicts its least recently used entry).
///
/// Looking before inserting costs less: an insert pops a free element (evicting when the
/// table is full) even when the key exists, as it does for a SYN retransmission or a
/// 5-tuple reused.
#[inline(always)]
pub fn own(
    route: &Route,
    vip_gen: u32,
    dead: Option<NonNull<FlowState>>,
    flood_limit: u32,
    existing: impl FnOnce() -> Option<*mut FlowState>,
    insert: impl FnOnce(FlowState),
) {
    let state = FlowState {
        backend: route.id,
        vip: route.vip,
        vip_gen,
    };
    if let Some(p) = dead {
        // SAFETY: a live element of the LRU map; whole-value store.
        unsafe { *p.as_ptr() = state };
    } else if flood::admit(flood_limit) {
        match existing() {
            // SAFETY: as above.
            Some(p) => unsafe { *p = state },
            None => insert(state),
        }
    } else {
        flow_event(LbFlow::FloodSkip);
    }
}
