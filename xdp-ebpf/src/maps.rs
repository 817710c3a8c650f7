//! The maps of both programs. Layouts and names come from `sluice-common`.

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_COMMON_LRU, BPF_F_NO_PREALLOC},
    macros::map,
    maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use sluice_common::{
    stats::{BLOCK_REASONS_LEN, DECAP_STATS_LEN, LB_COUNTERS},
    AddrKey, Backend, BlockEntry, BlockKey, FloodState, FlowKey, FlowKey4, FlowState, NextHop,
    NodeConfig, Traffic, VipKey, VipMeta, BLOCK_NOTE_LEN, DEFAULT_FLOW_TABLE_SIZE, FAMILY_V4,
    MAX_BACKENDS, MAX_BLOCKS, MAX_DECAP_ADDRS, MAX_DECAP_SOURCES, MAX_TABLE_SIZE, MAX_TX_PORTS,
    MAX_VIPS, VIP_FILTER_WORDS,
};

/// VIPs. Replaced element-wise by the agent; each update is atomic for readers.
#[map(name = "SLUICE_VIPS")]
pub static VIPS: HashMap<VipKey, VipMeta> =
    HashMap::with_max_entries(MAX_VIPS * 2, BPF_F_NO_PREALLOC);

/// Bloom filter over VIP addresses, checked before the VIP lookup so that traffic for other
/// destinations costs one array read instead of a hash lookup.
#[map(name = "SLUICE_VIP_BITS")]
pub static VIP_FILTER: Array<u64> = Array::with_max_entries(VIP_FILTER_WORDS, 0);

/// Live generation of each VIP id (0: none), checked on flow-table hits.
#[map(name = "SLUICE_VIP_GEN")]
pub static VIP_GENS: Array<u32> = Array::with_max_entries(MAX_VIPS + 1, 0);

/// Per-CPU cache of next hops by backend id.
#[map(name = "SLUICE_NEXTHOP")]
pub static NEXT_HOPS: PerCpuArray<NextHop> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// Backends by id.
#[map(name = "SLUICE_BACKENDS")]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Two Maglev table buffers per VIP. Memory-mapped by the agent, which writes a whole table
/// in microseconds instead of one syscall per slot. Array elements are 8 bytes apart, so each
/// `u64` holds two consecutive `u32` slots; read as memory, it is a flat `u32` array.
#[map(name = "SLUICE_MAGLEV")]
pub static MAGLEV: Array<u64> = Array::with_max_entries(MAX_VIPS * MAX_TABLE_SIZE, BPF_F_MMAPABLE);

/// Backend id in slot `index` of the Maglev array.
#[inline(always)]
pub fn maglev_slot(index: u32) -> Option<u32> {
    let pair = *MAGLEV.get(index >> 1)?;
    Some((pair >> ((index & 1) * 32)) as u32)
}

/// Established IPv6 flows. One hash table visible from every CPU, with per-CPU LRU lists so
/// CPUs do not contend on eviction: a flow whose packets arrive on another CPU still finds
/// its entry.
#[map(name = "SLUICE_FLOWS")]
pub static FLOWS: LruHashMap<FlowKey, FlowState> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_TABLE_SIZE, BPF_F_NO_COMMON_LRU);

/// Established IPv4 flows, as [`FLOWS`] but on a 16-byte key, which the kernel hashes and
/// compares in less than half the time of the dual-stack one.
#[map(name = "SLUICE_FLOWS4")]
pub static FLOWS4: LruHashMap<FlowKey4, FlowState> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_TABLE_SIZE, BPF_F_NO_COMMON_LRU);

/// The flow table's entry for `flow`, in the table of its family.
#[inline(always)]
pub fn flow_entry(flow: &FlowKey) -> Option<*mut FlowState> {
    if flow.family == FAMILY_V4 {
        FLOWS4.get_ptr_mut(&flow.v4())
    } else {
        FLOWS.get_ptr_mut(flow)
    }
}

/// Inserts `flow` in the table of its family; a full table evicts its least recently used
/// entry. A failed insert only means the flow is picked again by its next packet.
#[inline(always)]
pub fn insert_flow(flow: &FlowKey, state: FlowState) {
    let _ = if flow.family == FAMILY_V4 {
        FLOWS4.insert(&flow.v4(), state, 0)
    } else {
        FLOWS.insert(flow, state, 0)
    };
}

/// Node configuration (one entry).
#[map(name = "SLUICE_NODE")]
pub static NODE: Array<NodeConfig> = Array::with_max_entries(1, 0);

/// Outcome and flow-event counters of `sluice_lb`.
#[map(name = "SLUICE_LB_STATS")]
pub static LB_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(LB_COUNTERS, 0);

/// Traffic per VIP id.
#[map(name = "SLUICE_VIP_STAT")]
pub static VIP_STATS: PerCpuArray<Traffic> = PerCpuArray::with_max_entries(MAX_VIPS, 0);

/// Traffic per backend id.
#[map(name = "SLUICE_BE_STATS")]
pub static BACKEND_STATS: PerCpuArray<Traffic> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// Interfaces the forwarder may redirect to, keyed by ifindex.
#[map(name = "SLUICE_TX_PORTS")]
pub static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_TX_PORTS, 0);

/// Outer destinations that `sluice_decap` accepts.
#[map(name = "SLUICE_DECAP_IP")]
pub static DECAP_ADDRS: HashMap<AddrKey, u32> =
    HashMap::with_max_entries(MAX_DECAP_ADDRS, BPF_F_NO_PREALLOC);

/// Outer source prefixes `sluice_decap` accepts tunnels from.
#[map(name = "SLUICE_DCP_FROM")]
pub static DECAP_SOURCES: LpmTrie<BlockKey, u32> = LpmTrie::with_max_entries(MAX_DECAP_SOURCES, 0);

/// Outcome counters of `sluice_decap`.
#[map(name = "SLUICE_DCP_STAT")]
pub static DECAP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DECAP_STATS_LEN, 0);

/// Blocked source prefixes. A longest-prefix-match trie: one lookup answers for a /32 and the
/// /16 around it alike, which a hash of exact addresses cannot.
#[map(name = "SLUICE_BLOCKS")]
pub static BLOCKS: LpmTrie<BlockKey, BlockEntry> = LpmTrie::with_max_entries(MAX_BLOCKS, 0);

/// Packets dropped by each block entry, indexed by its slot.
#[map(name = "SLUICE_BLK_DROP")]
pub static BLOCK_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_BLOCKS, 0);

/// Packets dropped by the shield, by reason.
#[map(name = "SLUICE_BLK_WHY")]
pub static BLOCK_REASONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(BLOCK_REASONS_LEN, 0);

/// Each block entry's note, by slot. Never read here: a map only so that it is pinned, and
/// survives an agent restart, with the entries.
#[map(name = "SLUICE_BLK_NOTE")]
pub static BLOCK_NOTES: Array<[u8; BLOCK_NOTE_LEN]> = Array::with_max_entries(MAX_BLOCKS, 0);

/// The flood guard's per-CPU window.
#[map(name = "SLUICE_FLOOD")]
pub static FLOOD: PerCpuArray<FloodState> = PerCpuArray::with_max_entries(1, 0);

/// Adds one to counter `index` of a per-CPU counter array.
#[inline(always)]
pub fn bump(map: &PerCpuArray<u64>, index: u32) {
    if let Some(c) = map.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while XDP runs.
        unsafe { *c += 1 };
    }
}

/// Adds one packet of `bytes` to entry `index` of a per-CPU traffic array.
#[inline(always)]
pub fn add_traffic(map: &PerCpuArray<Traffic>, index: u32, bytes: u64) {
    if let Some(t) = map.get_ptr_mut(index) {
        // SAFETY: as above.
        unsafe {
            (*t).packets += 1;
            (*t).bytes += bytes;
        }
    }
}
