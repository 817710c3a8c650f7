//! Counter indices of the per-CPU reason counters, with their metric names.
//!
//! Each enum's discriminant is the index into its per-CPU array map; `ALL` and `name` exist so
//! the agent can export every counter without a second list that could drift.

macro_rules! counters {
    ($(#[$meta:meta])* $enum:ident, $len:ident { $($(#[$vmeta:meta])* $variant:ident = $name:literal,)* }) => {
        $(#[$meta])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $enum {
            $($(#[$vmeta])* $variant,)*
        }

        /// Number of counters, the size of the per-CPU array.
        pub const $len: u32 = [$($enum::$variant),*].len() as u32;

        impl $enum {
            /// Every counter, in index order.
            pub const ALL: &'static [$enum] = &[$($enum::$variant),*];

            /// The counter's label value in metrics and `status` output.
            pub const fn name(self) -> &'static str {
                match self {
                    $($enum::$variant => $name,)*
                }
            }
        }
    };
}

counters! {
    /// What happened to a packet in `sluice_lb`. Every packet increments exactly one of these.
    Lb, LB_STATS_LEN {
        /// Not addressed to a VIP (or not IP): passed to the kernel untouched.
        Pass = "pass",
        /// Encapsulated and sent back out of the ingress interface.
        Tx = "tx",
        /// Encapsulated and redirected to another interface.
        Redirect = "redirect",
        /// Encapsulated and handed to the kernel, whose neighbour table does not yet know the
        /// next hop.
        KernelNeigh = "kernel_neighbour",
        /// Frame shorter than an Ethernet or VLAN header.
        MalformedL2 = "malformed_l2",
        /// IPv4 header truncated, or with a bad version, header length or total length.
        MalformedIpv4 = "malformed_ipv4",
        /// IPv6 header or extension header truncated, or with a bad version or payload length.
        MalformedIpv6 = "malformed_ipv6",
        /// TCP or UDP header truncated.
        MalformedL4 = "malformed_l4",
        /// ICMP error truncated before the quoted header and ports.
        MalformedIcmp = "malformed_icmp",
        /// VIP traffic with no live backend in the table: dropped.
        NoBackend = "no_backend",
        /// Next-hop lookup failed (unreachable, blackhole, forwarding disabled): dropped.
        FibFailure = "fib_failure",
        /// Too big once encapsulated: answered with ICMP fragmentation-needed / packet-too-big.
        TooBig = "too_big",
        /// Too big, but it was itself an ICMP error, which is never answered: dropped.
        TooBigDropped = "too_big_dropped",
        /// IP fragment addressed to a VIP address: dropped (no ports to hash).
        Fragment = "fragment",
        /// Room for the outer header could not be made: dropped.
        EncapFailed = "encap_failed",
        /// Redirect target not in the devmap: handed to the kernel.
        RedirectMiss = "redirect_miss",
        /// Addressed to a VIP from a source the shield blocks: dropped.
        Blocked = "blocked",
        /// Addressed to a VIP's address, on a port or protocol no service of it serves
        /// (a port scan, a ping): dropped. The node is not that address's host, so the
        /// kernel would only route the packet back towards the router that sent it here.
        NoService = "no_service",
    }
}

counters! {
    /// Flow-table events in `sluice_lb`, counted in addition to the outcome above.
    LbFlow, LB_FLOW_STATS_LEN {
        /// A TCP SYN took a fresh table pick.
        MissSyn = "flow_miss_syn",
        /// Any other packet found no flow entry and took a table pick.
        MissOther = "flow_miss_other",
        /// A flow entry pointed to a backend that is no longer alive and was re-picked.
        Repick = "flow_repick",
        /// An ICMP error was routed to the backend of the flow it quotes.
        IcmpError = "icmp_error",
        /// A new flow was forwarded by Maglev alone, without a flow-table insert, because the
        /// flood guard was on.
        FloodSkip = "flow_insert_skipped_flood",
    }
}

counters! {
    /// Why a source is blocked; packets dropped by the shield are counted by it. The names
    /// after `manual` are the gateway's refusal classes (`sluice_util::shield::Class`).
    BlockReason, BLOCK_REASONS_LEN {
        /// Blocked by an operator (`sluice-lb block`).
        Manual = "manual",
        /// Authentication failures at a gateway.
        Auth = "auth",
        /// Forbidden requests at a gateway.
        Forbidden = "forbidden",
        /// Rate-limit refusals at a gateway.
        RateLimited = "rate_limited",
        /// Malformed requests at a gateway.
        Malformed = "malformed",
        /// Connections a gateway closed at a header or handshake deadline.
        Deadline = "deadline",
    }
}

impl BlockReason {
    /// The reason at index `i`, if there is one.
    pub fn from_index(i: u32) -> Option<Self> {
        Self::ALL.get(i as usize).copied()
    }
}

counters! {
    /// What happened to a packet in `sluice_decap`.
    Decap, DECAP_STATS_LEN {
        /// Not a tunnel packet: passed untouched.
        Pass = "pass",
        /// IPv4 outer header stripped.
        DecapV4 = "decap_ipv4",
        /// IPv6 outer header stripped.
        DecapV6 = "decap_ipv6",
        /// Tunnel packet whose outer destination is not a local tunnel address: passed untouched.
        RefusedAddr = "refused_not_local",
        /// Outer fragment, which cannot be decapsulated in XDP: passed untouched.
        RefusedFragment = "refused_fragment",
        /// Truncated or inconsistent outer or inner header: dropped.
        Malformed = "malformed",
        /// Tunnel packet to a local tunnel address from an outer source outside the
        /// accepted prefixes (`sluice-lb decap --from`): dropped, since its inner source
        /// (the client address the gateway's policies go by) could be anything.
        RefusedSource = "refused_source",
    }
}

/// Index of the first [`LbFlow`] counter in the `sluice_lb` per-CPU counter array, which holds
/// the [`Lb`] outcomes followed by the flow events.
pub const LB_FLOW_BASE: u32 = LB_STATS_LEN;

/// Size of the `sluice_lb` per-CPU counter array.
pub const LB_COUNTERS: u32 = LB_STATS_LEN + LB_FLOW_STATS_LEN;
