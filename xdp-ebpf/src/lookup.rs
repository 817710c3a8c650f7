//! Lookup: VIP, then flow table, then the VIP's Maglev table.

use sluice_common::{
    flow_hash, maglev_slot, source_hash,
    stats::{LbFlow, LB_FLOW_BASE},
    vip_filter_bit, Backend, FlowKey, FlowState, VipKey, VipMeta, VIP_ADDRESS_MARKER,
    VIP_HASH_SOURCE_ONLY,
};

use crate::{
    maps::{bump, BACKENDS, FLOWS, LB_STATS, MAGLEV, VIPS, VIP_FILTER},
    parse::{Kind, Packet},
};

/// False when the filter proves no VIP lives at `pkt.flow.dst`.
#[inline(always)]
fn may_be_vip(pkt: &Packet) -> bool {
    let (word, bit) = vip_filter_bit(&pkt.flow.dst);
    match VIP_FILTER.get(word) {
        Some(w) => w & bit != 0,
        None => true,
    }
}

/// The VIP a packet is for, if any.
#[inline(always)]
pub fn vip(pkt: &Packet) -> Option<VipMeta> {
    if !may_be_vip(pkt) {
        return None;
    }
    let key = VipKey {
        addr: pkt.flow.dst,
        port: pkt.flow.dst_port,
        proto: pkt.flow.proto,
        family: pkt.flow.family,
    };
    // SAFETY: the value is copied out at once; the map is NO_PREALLOC, so an element replaced
    // concurrently is freed only after an RCU grace period.
    let meta = unsafe { VIPS.get(&key) }.copied()?;
    if meta.flags & VIP_ADDRESS_MARKER != 0 {
        return None;
    }
    Some(meta)
}

/// True if `pkt.flow.dst` carries any VIP (its address marker exists).
#[inline(always)]
pub fn is_vip_address(pkt: &Packet) -> bool {
    if !may_be_vip(pkt) {
        return false;
    }
    let key = VipKey {
        addr: pkt.flow.dst,
        port: 0,
        proto: 0,
        family: pkt.flow.family,
    };
    VIPS.get_ptr(&key).is_some()
}

/// A chosen backend: its id, its record and, if it was computed, the flow hash.
pub struct Choice {
    /// Backend id.
    pub id: u32,
    /// Backend record.
    pub backend: Backend,
    /// Hash of the flow as used for the table pick; `None` after a flow-table hit, where the
    /// hash is only computed if the outer header needs it.
    pub hash: Option<u32>,
}

/// The hash a VIP picks with: the 5-tuple, or the client address for persistence.
#[inline(always)]
pub fn hash(pkt: &Packet, meta: &VipMeta) -> u32 {
    if meta.flags & VIP_HASH_SOURCE_ONLY != 0 {
        source_hash(&pkt.flow)
    } else {
        flow_hash(&pkt.flow)
    }
}

#[inline(always)]
fn backend(id: u32) -> Option<Backend> {
    BACKENDS.get(id).copied()
}

/// The backend the VIP's live Maglev table gives for `hash`, if it is alive.
#[inline(always)]
fn table_pick(meta: &VipMeta, hash: u32) -> Option<(u32, Backend)> {
    let slot = maglev_slot(hash, meta.table_size);
    let id = *MAGLEV.get(meta.table_index(slot))?;
    let b = backend(id)?;
    if b.is_alive() {
        Some((id, b))
    } else {
        None
    }
}

#[inline(always)]
fn remember(flow: &FlowKey, id: u32) {
    // A full table evicts the least recently used entry; insertion cannot fail otherwise.
    let _ = FLOWS.insert(flow, FlowState { backend: id }, 0);
}

#[inline(always)]
fn flow_event(event: LbFlow) {
    bump(&LB_STATS, LB_FLOW_BASE + event as u32);
}

/// Picks the backend for a packet of a VIP.
///
/// - A TCP SYN always takes a fresh table pick, which then owns the flow.
/// - Otherwise an existing flow entry wins while its backend is alive (draining included).
/// - An entry whose backend is no longer alive is re-picked from the table.
/// - ICMP errors follow the flow they quote but never create an entry.
#[inline(always)]
pub fn choose(pkt: &Packet, meta: &VipMeta) -> Option<Choice> {
    let syn = matches!(pkt.kind, Kind::Transport { syn: true });
    if !syn {
        // SAFETY: copied out at once.
        if let Some(state) = unsafe { FLOWS.get(&pkt.flow) }.copied() {
            if let Some(b) = backend(state.backend) {
                if b.is_alive() {
                    return Some(Choice {
                        id: state.backend,
                        backend: b,
                        hash: None,
                    });
                }
            }
            flow_event(LbFlow::Repick);
        } else if pkt.kind != Kind::IcmpError {
            flow_event(LbFlow::MissOther);
        }
    } else {
        flow_event(LbFlow::MissSyn);
    }
    let hash = hash(pkt, meta);
    let (id, backend) = table_pick(meta, hash)?;
    if pkt.kind != Kind::IcmpError {
        remember(&pkt.flow, id);
    }
    Some(Choice {
        id,
        backend,
        hash: Some(hash),
    })
}
