//! Key and value layouts of every BPF map, their names and their sizes.

/// `family` value of an IPv4 address or flow.
pub const FAMILY_V4: u8 = 4;
/// `family` value of an IPv6 address or flow.
pub const FAMILY_V6: u8 = 6;

/// Largest Maglev table (M). Tables may be any prime up to this size.
pub const MAX_TABLE_SIZE: u32 = 65537;
/// Default Maglev table size: the prime used by the Maglev paper and Katran.
pub const DEFAULT_TABLE_SIZE: u32 = 65537;
/// Number of VIPs the data plane can hold (each has two table buffers).
pub const MAX_VIPS: u32 = 32;
/// Number of backend slots. Slot 0 is reserved and never alive: an unwritten table entry is 0
/// and therefore means "no backend".
pub const MAX_BACKENDS: u32 = 4096;
/// Default capacity of the flow table. With per-CPU LRU lists each CPU can hold an equal share.
pub const DEFAULT_FLOW_TABLE_SIZE: u32 = 1 << 18;
/// Number of local tunnel addresses a decapsulating node accepts.
pub const MAX_DECAP_ADDRS: u32 = 64;
/// Number of outer source prefixes a decapsulating node accepts tunnels from.
pub const MAX_DECAP_SOURCES: u32 = 256;
/// Number of interfaces the forwarder may redirect to.
pub const MAX_TX_PORTS: u32 = 64;
/// Slot of `SLUICE_VIP_GEN` holding the last generation handed out, so a removed VIP's
/// generation is never issued again, even by a restarted agent.
pub const VIP_GEN_COUNTER: u32 = MAX_VIPS;
/// Words of the VIP address filter (64 bits each).
pub const VIP_FILTER_WORDS: u32 = 64;
/// How long a cached next hop is used before `bpf_fib_lookup` is asked again, in kernel
/// ticks (`bpf_jiffies64`): 100 ms at the common HZ=250, 25 ms at HZ=1000 and 250 ms at
/// HZ=100. Ticks, not nanoseconds: the verifier inlines `bpf_jiffies64` into one load,
/// where `bpf_ktime_get_coarse_ns` is a helper call, and the established path paid about an
/// eighth of its time for it (`cargo xtask bench xdp`).
pub const NEXT_HOP_TTL_JIFFIES: u64 = 25;
/// The longest a cached next hop can live, whatever the kernel's HZ (at HZ=100).
pub const NEXT_HOP_TTL_MAX_MS: u64 = NEXT_HOP_TTL_JIFFIES * 10;
/// Capacity of the shield's block map, and of its per-entry drop counters.
pub const MAX_BLOCKS: u32 = 16384;
/// Bytes of a block entry's note (the operator's reason text, or the gateway's finding).
pub const BLOCK_NOTE_LEN: usize = 64;
/// A block entry's `expires_ns` that never passes.
pub const BLOCK_FOREVER: u64 = u64::MAX;
/// Bits of a [`BlockKey`] before the address: the family byte and its padding. A prefix of
/// `len` address bits is stored with `prefix_len = BLOCK_KEY_FAMILY_BITS + len`, so an entry
/// only ever matches addresses of its own family.
pub const BLOCK_KEY_FAMILY_BITS: u32 = 32;
/// The flood guard's measuring window. A CPU that inserts more than its limit of new flows
/// in one window stops inserting until a whole window stays under the limit.
pub const FLOOD_WINDOW_NS: u64 = 100_000_000;

/// Map names, shared so the agent and the tests open exactly what the programs declare.
/// BPF object names hold at most 15 characters.
pub mod names {
    /// [`VipKey`](super::VipKey) → [`VipMeta`](super::VipMeta).
    pub const VIPS: &str = "SLUICE_VIPS";
    /// Backend id → [`Backend`](super::Backend).
    pub const BACKENDS: &str = "SLUICE_BACKENDS";
    /// Backend id of slot `(vip.id * 2 + buffer) * MAX_TABLE_SIZE + slot`, see
    /// [`maglev_index`](super::maglev_index). An mmapable array of `u64`, two slots per element
    /// (low half first), so in memory it is a flat `u32` array.
    pub const MAGLEV: &str = "SLUICE_MAGLEV";
    /// IPv6 flows: [`FlowKey`](super::FlowKey) → [`FlowState`](super::FlowState), LRU with
    /// per-CPU lists.
    pub const FLOWS: &str = "SLUICE_FLOWS";
    /// IPv4 flows: [`FlowKey4`](super::FlowKey4) → [`FlowState`](super::FlowState), LRU with
    /// per-CPU lists.
    pub const FLOWS4: &str = "SLUICE_FLOWS4";
    /// Index 0 → [`NodeConfig`](super::NodeConfig).
    pub const NODE: &str = "SLUICE_NODE";
    /// Per-CPU counters indexed by [`stats::Lb`](crate::stats::Lb).
    pub const LB_STATS: &str = "SLUICE_LB_STATS";
    /// Per-CPU [`Traffic`](super::Traffic) indexed by VIP id.
    pub const VIP_STATS: &str = "SLUICE_VIP_STAT";
    /// Per-CPU [`Traffic`](super::Traffic) indexed by backend id.
    pub const BACKEND_STATS: &str = "SLUICE_BE_STATS";
    /// Devmap of interfaces the forwarder may redirect to, keyed by ifindex.
    pub const TX_PORTS: &str = "SLUICE_TX_PORTS";
    /// [`AddrKey`](super::AddrKey) → `u32` (unused): outer destinations `sluice_decap` accepts.
    pub const DECAP_ADDRS: &str = "SLUICE_DECAP_IP";
    /// Per-CPU counters indexed by [`stats::Decap`](crate::stats::Decap).
    pub const DECAP_STATS: &str = "SLUICE_DCP_STAT";
    /// LPM trie of the outer source prefixes `sluice_decap` accepts tunnels from (the LB
    /// nodes'): [`BlockKey`](super::BlockKey) → `u32` (unused). Empty: none.
    pub const DECAP_SOURCES: &str = "SLUICE_DCP_FROM";
    /// One-hash Bloom filter over VIP addresses: [`VIP_FILTER_WORDS`](super::VIP_FILTER_WORDS)
    /// `u64` words. A clear bit proves a destination carries no VIP.
    pub const VIP_FILTER: &str = "SLUICE_VIP_BITS";
    /// Per-CPU [`NextHop`](super::NextHop) cache indexed by backend id.
    pub const NEXT_HOPS: &str = "SLUICE_NEXTHOP";
    /// VIP id → live generation (`u32`, 0 = no VIP), checked on flow-table hits. The extra
    /// slot [`VIP_GEN_COUNTER`](super::VIP_GEN_COUNTER) holds the last generation issued.
    pub const VIP_GENS: &str = "SLUICE_VIP_GEN";
    /// LPM trie of blocked source prefixes: [`BlockKey`](super::BlockKey) →
    /// [`BlockEntry`](super::BlockEntry).
    pub const BLOCKS: &str = "SLUICE_BLOCKS";
    /// Per-CPU drop counters indexed by a block entry's `slot`.
    pub const BLOCK_DROPS: &str = "SLUICE_BLK_DROP";
    /// Per-CPU drop counters indexed by [`stats::BlockReason`](crate::stats::BlockReason).
    pub const BLOCK_REASONS: &str = "SLUICE_BLK_WHY";
    /// A block entry's note by its slot: [`BLOCK_NOTE_LEN`](super::BLOCK_NOTE_LEN) bytes of
    /// UTF-8, zero-padded. Only the agent reads it; it is a map so that it is pinned with the
    /// entries and survives an agent restart.
    pub const BLOCK_NOTES: &str = "SLUICE_BLK_NOTE";
    /// Per-CPU [`FloodState`](super::FloodState), one element.
    pub const FLOOD: &str = "SLUICE_FLOOD";
}

/// The VIP filter word and bit for `addr` (Fibonacci hashing of the folded address).
#[inline(always)]
pub fn vip_filter_bit(addr: &[u32; 4]) -> (u32, u64) {
    let folded = addr[0] ^ addr[1] ^ addr[2] ^ addr[3];
    let h = folded.wrapping_mul(0x9e37_79b1) >> 20; // 12 bits: 64 words x 64 bits
    (h >> 6, 1u64 << (h & 63))
}

/// Program names in the object.
pub mod programs {
    /// The forwarder, for LB nodes.
    pub const LB: &str = "sluice_lb";
    /// The tunnel endpoint, for gateway nodes.
    pub const DECAP: &str = "sluice_decap";
    /// Global switch for aya-log debug output; 0 (the default) removes logging at load time.
    pub const DEBUG_GLOBAL: &str = "SLUICE_DEBUG";
}

/// A virtual service: destination address, port and protocol.
///
/// A key with `port == 0` and `proto == 0` marks an address that carries VIPs at all; the
/// forwarder uses it to recognise fragments addressed to a VIP, which carry no port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    /// Address words, wire order (see the crate docs).
    pub addr: [u32; 4],
    /// Port in network byte order.
    pub port: u16,
    /// IP protocol number (6 TCP, 17 UDP).
    pub proto: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
}

impl VipKey {
    /// The key for a VIP, written as five whole words: the kernel reads a key back a word at
    /// a time to hash and compare it, and a word made of three narrower stores cannot be
    /// forwarded from them (see [`FlowKey4`]).
    #[inline(always)]
    pub fn new(addr: [u32; 4], port: u16, proto: u8, family: u8) -> VipKey {
        let p = port.to_ne_bytes();
        let tail = u32::from_ne_bytes([p[0], p[1], proto, family]);
        let words = [addr[0], addr[1], addr[2], addr[3], tail];
        // SAFETY: `VipKey` is `repr(C)`: four address words, then port, protocol and family
        // in the fifth word's bytes in that order, with no padding (see the layout test).
        unsafe { core::mem::transmute::<[u32; 5], VipKey>(words) }
    }
}

/// Hash only the client address (client-IP persistence) rather than the 5-tuple.
pub const VIP_HASH_SOURCE_ONLY: u32 = 1;
/// The entry is an address marker (`port == 0`, `proto == 0`), not a service.
pub const VIP_ADDRESS_MARKER: u32 = 2;

/// What the data plane knows about a VIP. Replaced as a whole on every table flip, so a packet
/// sees either the old `(table_size, active)` pair or the new one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipMeta {
    /// Index of the VIP's table pair and its counters, `< MAX_VIPS`.
    pub id: u32,
    /// `VIP_*` flags.
    pub flags: u32,
    /// Maglev table size M (prime, `<= MAX_TABLE_SIZE`).
    pub table_size: u32,
    /// Which of the VIP's two table buffers is live (0 or 1).
    pub active: u32,
    /// Incarnation of this VIP id, never 0. Flow entries record it; when the VIP is removed
    /// or its id reused, the generation in [`names::VIP_GENS`] changes and its flow entries
    /// stop matching.
    pub gen: u32,
}

impl VipMeta {
    /// Index into the Maglev array of `slot` in this VIP's live buffer.
    #[inline(always)]
    pub fn table_index(&self, slot: u32) -> u32 {
        maglev_index(self.id, self.active, slot)
    }
}

/// Index into the Maglev array of `slot` in buffer `buffer` of VIP `vip_id`.
#[inline(always)]
pub fn maglev_index(vip_id: u32, buffer: u32, slot: u32) -> u32 {
    ((vip_id & (MAX_VIPS - 1)) * 2 + (buffer & 1)) * MAX_TABLE_SIZE + slot
}

/// The backend is healthy and may be forwarded to.
pub const BACKEND_ALIVE: u8 = 1;
/// The backend takes no new flows; established flows still reach it.
pub const BACKEND_DRAINING: u8 = 2;

/// [`Backend::agent`]: the backend reports itself not ready (its readiness answers 503).
pub const AGENT_NOT_READY: u8 = 1;
/// [`Backend::agent`]: the backend failed its checks and is within the down grace (alive
/// for its established flows only).
pub const AGENT_GRACE: u8 = 2;
/// [`Backend::agent`]: an operator drained the backend.
pub const AGENT_DRAINED: u8 = 4;

/// A gateway node that VIP traffic is tunnelled to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// Address words, wire order. Its family picks the outer header (IPv4 or IPv6).
    pub addr: [u32; 4],
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// `BACKEND_*` flags.
    pub flags: u8,
    /// `AGENT_*` bits: why the agent set `flags` as it did (a drain, failing readiness, the
    /// down grace), which `flags` alone cannot tell apart. The data plane never reads them;
    /// a restarted agent does, so that it carries on where the last one left off.
    pub agent: u8,
    /// Explicit padding.
    pub pad: u8,
}

impl Backend {
    /// True when the data plane may forward to this backend.
    #[inline(always)]
    pub fn is_alive(&self) -> bool {
        self.flags & BACKEND_ALIVE != 0
    }
}

/// A flow as the data plane sees it: client to VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Client address words, wire order.
    pub src: [u32; 4],
    /// VIP address words, wire order.
    pub dst: [u32; 4],
    /// Client port, network byte order.
    pub src_port: u16,
    /// VIP port, network byte order.
    pub dst_port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Explicit padding, always zero (it is part of the hashed map key).
    pub pad: [u8; 2],
}

/// An IPv4 flow as the IPv4 flow table keys it: the [`FlowKey`]'s meaningful fields in 16
/// bytes. The kernel hashes and compares the whole key on every lookup, and the 40-byte
/// dual-stack key cost an established IPv4 packet about 12 ns more than this one
/// (`cargo xtask bench xdp`), so IPv4 flows, the common case, have a table of their own.
///
/// Every field is a whole word, so the program writes the key with four 32-bit stores. The
/// kernel reads it back a word at a time to hash and compare it, and a load that spans two
/// narrower stores still in the store buffer cannot be forwarded from them and waits: with
/// the ports as two 16-bit fields, the same lookup took 22 ns instead of 10.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey4 {
    /// Client address, wire order.
    pub src: u32,
    /// VIP address, wire order.
    pub dst: u32,
    /// Client port then VIP port as they are stored in the packet: the native word of
    /// those four bytes (see [`FlowKey4::ports_word`]).
    pub ports: u32,
    /// IP protocol number, widened to a word.
    pub proto: u32,
}

impl FlowKey4 {
    /// The `ports` word of two ports in network byte order.
    #[inline(always)]
    pub fn ports_word(src_port: u16, dst_port: u16) -> u32 {
        let (s, d) = (src_port.to_ne_bytes(), dst_port.to_ne_bytes());
        u32::from_ne_bytes([s[0], s[1], d[0], d[1]])
    }

    /// The client and VIP ports, network byte order, from the `ports` word.
    #[inline(always)]
    pub fn port_pair(&self) -> (u16, u16) {
        let b = self.ports.to_ne_bytes();
        (
            u16::from_ne_bytes([b[0], b[1]]),
            u16::from_ne_bytes([b[2], b[3]]),
        )
    }
}

impl FlowKey {
    /// The IPv4 flow table's key for this flow (meaningful for [`FAMILY_V4`] flows only).
    #[inline(always)]
    pub fn v4(&self) -> FlowKey4 {
        FlowKey4 {
            src: self.src[0],
            dst: self.dst[0],
            ports: FlowKey4::ports_word(self.src_port, self.dst_port),
            proto: self.proto as u32,
        }
    }
}

/// The flow table's value: which backend owns the flow, and for which VIP incarnation.
///
/// Keeping the VIP here lets an established packet skip the VIP lookup: the flow entry is
/// valid while `VIP_GENS[vip] == vip_gen`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    /// Backend id.
    pub backend: u32,
    /// VIP id.
    pub vip: u32,
    /// VIP generation when the entry was made.
    pub vip_gen: u32,
}

/// Configuration of the node running `sluice_lb`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeConfig {
    /// Outer IPv4 source, wire order.
    pub src_v4: u32,
    /// Bits of `src_v4` replaced by flow-hash bits (wire order mask; 0 = fixed source).
    pub src_v4_entropy: u32,
    /// Outer IPv6 source, wire order.
    pub src_v6: [u32; 4],
    /// Bits of the last word of `src_v6` replaced by flow-hash bits.
    pub src_v6_entropy: u32,
    /// Outer TTL / hop limit; 0 means [`DEFAULT_OUTER_TTL`].
    pub ttl: u8,
    /// Nonzero while the block map may hold entries: an empty shield costs no lookup.
    pub shield: u8,
    /// Explicit padding.
    pub pad: [u8; 2],
    /// New flows one CPU may insert per [`FLOOD_WINDOW_NS`] before the flood guard stops
    /// inserting; 0 turns the guard off.
    pub flood_limit: u32,
    /// Explicit padding.
    pub pad2: u32,
}

/// Outer TTL / hop limit when the node config leaves it at zero.
pub const DEFAULT_OUTER_TTL: u8 = 64;

impl NodeConfig {
    /// Outer IPv4 source for a flow with hash `hash`.
    #[inline(always)]
    pub fn outer_src_v4(&self, hash: u32) -> u32 {
        (self.src_v4 & !self.src_v4_entropy) | (hash & self.src_v4_entropy)
    }

    /// Outer IPv6 source for a flow with hash `hash`.
    #[inline(always)]
    pub fn outer_src_v6(&self, hash: u32) -> [u32; 4] {
        let mut src = self.src_v6;
        src[3] = (src[3] & !self.src_v6_entropy) | (hash & self.src_v6_entropy);
        src
    }

    /// Outer TTL / hop limit.
    #[inline(always)]
    pub fn outer_ttl(&self) -> u8 {
        if self.ttl == 0 {
            DEFAULT_OUTER_TTL
        } else {
            self.ttl
        }
    }
}

/// A cached `bpf_fib_lookup` result for one backend, kept per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    /// `bpf_jiffies64` tick after which the entry is stale; 0 = empty.
    pub expires: u64,
    /// Interface the lookup was made for (results depend on the ingress interface).
    pub ingress: u32,
    /// Egress interface.
    pub egress: u32,
    /// Next hop's MAC, as three stored 16-bit words.
    pub dst_mac: [u16; 3],
    /// Egress interface's MAC.
    pub src_mac: [u16; 3],
    /// Route MTU towards the backend.
    pub mtu: u16,
    /// Explicit padding.
    pub pad: [u8; 2],
}

/// Packets and bytes, one per CPU in the per-CPU maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Packets seen.
    pub packets: u64,
    /// Bytes seen (whole frames as received).
    pub bytes: u64,
}

/// An address accepted as an outer destination by `sluice_decap`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AddrKey {
    /// Address words, wire order.
    pub addr: [u32; 4],
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Explicit padding, always zero. A byte and a half-word rather than `[u8; 3]`, here
    /// and in [`BlockKey`]: the BPF target zeroes those with two stores, where a 3-byte
    /// array costs a call to a `memset` byte loop.
    pub pad: u8,
    /// Explicit padding, always zero.
    pub pad2: u16,
}

/// A source prefix in the block map, as the data of an LPM trie key (whose `prefix_len`
/// counts [`BLOCK_KEY_FAMILY_BITS`] plus the address bits).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BlockKey {
    /// [`FAMILY_V4`] or [`FAMILY_V6`]: the first byte compared, so families never mix.
    pub family: u8,
    /// Explicit padding, always zero (it is compared as part of the prefix; two fields, as
    /// in [`AddrKey`]).
    pub pad: u8,
    /// Explicit padding, always zero.
    pub pad2: u16,
    /// Address words, wire order; an IPv4 prefix uses word 0.
    pub addr: [u32; 4],
}

/// A blocked prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockEntry {
    /// `CLOCK_MONOTONIC` time (`bpf_ktime_get_ns`) after which the entry no longer drops;
    /// [`BLOCK_FOREVER`] for none.
    pub expires_ns: u64,
    /// Index of the entry's drop counter in [`names::BLOCK_DROPS`], `< MAX_BLOCKS`.
    pub slot: u32,
    /// [`stats::BlockReason`](crate::stats::BlockReason) index.
    pub reason: u32,
}

/// One CPU's flood-guard state.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FloodState {
    /// `bpf_ktime_get_coarse_ns` time the current window started.
    pub window_start_ns: u64,
    /// New flows seen in the current window.
    pub new_flows: u64,
    /// When the current flood began; 0 when there is none.
    pub flood_since_ns: u64,
    /// Time spent in floods that have ended, in nanoseconds.
    pub flood_ns: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are `#[repr(C)]`, contain only integers and have no implicit padding.
    unsafe impl aya::Pod for super::VipKey {}
    unsafe impl aya::Pod for super::VipMeta {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowKey4 {}
    unsafe impl aya::Pod for super::FlowState {}
    unsafe impl aya::Pod for super::NodeConfig {}
    unsafe impl aya::Pod for super::Traffic {}
    unsafe impl aya::Pod for super::AddrKey {}
    unsafe impl aya::Pod for super::NextHop {}
    unsafe impl aya::Pod for super::BlockKey {}
    unsafe impl aya::Pod for super::BlockEntry {}
    unsafe impl aya::Pod for super::FloodState {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_hidden_padding() {
        assert_eq!(size_of::<VipKey>(), 20);
        assert_eq!(size_of::<VipMeta>(), 20);
        assert_eq!(size_of::<Backend>(), 20);
        assert_eq!(size_of::<FlowKey>(), 40);
        assert_eq!(size_of::<FlowKey4>(), 16);
        assert_eq!(size_of::<FlowState>(), 12);
        assert_eq!(size_of::<NodeConfig>(), 40);
        assert_eq!(size_of::<BlockKey>(), 20);
        assert_eq!(size_of::<BlockEntry>(), 16);
        assert_eq!(size_of::<FloodState>(), 32);
        assert_eq!(size_of::<Traffic>(), 16);
        assert_eq!(size_of::<AddrKey>(), 20);
        assert_eq!(size_of::<NextHop>(), 32);
    }

    #[test]
    fn a_vip_key_from_words_has_its_fields() {
        let key = VipKey::new([1, 2, 3, 4], 443u16.to_be(), 6, FAMILY_V6);
        let fields = VipKey {
            addr: [1, 2, 3, 4],
            port: 443u16.to_be(),
            proto: 6,
            family: FAMILY_V6,
        };
        assert_eq!(key, fields);
    }

    #[test]
    fn an_ipv4_flow_key_holds_the_flow_as_stored() {
        let flow = FlowKey {
            src: [u32::from_ne_bytes([203, 0, 113, 7]), 0, 0, 0],
            dst: [u32::from_ne_bytes([198, 51, 100, 1]), 0, 0, 0],
            src_port: 40000u16.to_be(),
            dst_port: 80u16.to_be(),
            proto: 6,
            family: FAMILY_V4,
            pad: [0; 2],
        };
        let key = flow.v4();
        assert_eq!((key.src, key.dst, key.proto), (flow.src[0], flow.dst[0], 6));
        assert_eq!(key.port_pair(), (flow.src_port, flow.dst_port));
        // The ports word is the packet's four port bytes, client port first.
        assert_eq!(key.ports.to_ne_bytes(), [0x9c, 0x40, 0x00, 0x50]);
    }

    #[test]
    fn table_buffers_do_not_overlap() {
        let last_of_vip0_b0 = maglev_index(0, 0, MAX_TABLE_SIZE - 1);
        assert_eq!(maglev_index(0, 1, 0), last_of_vip0_b0 + 1);
        assert_eq!(
            maglev_index(MAX_VIPS - 1, 1, MAX_TABLE_SIZE - 1),
            MAX_VIPS * 2 * MAX_TABLE_SIZE - 1
        );
    }

    #[test]
    fn entropy_replaces_only_masked_bits() {
        let node = NodeConfig {
            src_v4: 0x0000_10ac,
            src_v4_entropy: 0xffff_0000,
            src_v6: [1, 2, 3, 0xaaaa_0000],
            src_v6_entropy: 0x0000_ffff,
            ..Default::default()
        };
        assert_eq!(node.outer_src_v4(0x1234_5678), 0x1234_10ac);
        assert_eq!(node.outer_src_v6(0x1234_5678), [1, 2, 3, 0xaaaa_5678]);
        assert_eq!(node.outer_ttl(), DEFAULT_OUTER_TTL);
    }
}
