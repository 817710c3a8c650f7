//! Emit: find the next hop for the outer destination and send the packet on its way.
//!
//! `bpf_fib_lookup` resolves route and neighbour in one call and also checks the egress MTU
//! against the outer length. The packet leaves by XDP_TX when the egress is the ingress
//! interface and by XDP_REDIRECT through the devmap otherwise. When the neighbour is not yet
//! resolved, the encapsulated packet goes to the kernel, which routes it like any IP packet and
//! resolves the neighbour on the way; the next packets then take the fast path.

use aya_ebpf::{
    bindings::{bpf_fib_lookup, xdp_action, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS},
    helpers::bpf_fib_lookup as fib_lookup,
    programs::XdpContext,
    EbpfContext,
};
use sluice_common::{stats::Lb, FAMILY_V6};

use crate::{encap::Outer, maps::TX_PORTS};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Where the encapsulated packet goes.
pub enum NextHop {
    /// Known next hop: write these MACs and send out of `ifindex`.
    Forward {
        /// Next hop's MAC.
        dst: [u16; 3],
        /// Egress interface's MAC.
        src: [u16; 3],
        /// Egress interface.
        ifindex: u32,
    },
    /// Route known, neighbour not: let the kernel forward it.
    Kernel,
    /// The outer packet would exceed the egress MTU, which is given.
    TooBig(u16),
    /// No usable route.
    Unreachable,
}

/// Looks up the next hop of the outer header.
#[inline(always)]
pub fn next_hop(ctx: &XdpContext, outer: &Outer) -> NextHop {
    // SAFETY: an all-zero bpf_fib_lookup is its documented initial state.
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    fib.ifindex = ctx.ingress_ifindex() as u32;
    fib.__bindgen_anon_1.tot_len = outer.total as u16;
    if outer.family == FAMILY_V6 {
        fib.family = AF_INET6;
        fib.__bindgen_anon_3.ipv6_src = outer.src;
        fib.__bindgen_anon_4.ipv6_dst = outer.dst;
    } else {
        fib.family = AF_INET;
        fib.__bindgen_anon_2.tos = outer.tos;
        fib.__bindgen_anon_3.ipv4_src = outer.src[0];
        fib.__bindgen_anon_4.ipv4_dst = outer.dst[0];
    }
    // SAFETY: `fib` is a valid, fully initialised parameter block of the size given.
    let rc = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            &mut fib,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    } as u32;
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS => NextHop::Forward {
            dst: mac_words(&fib.dmac),
            src: mac_words(&fib.smac),
            ifindex: fib.ifindex,
        },
        BPF_FIB_LKUP_RET_NO_NEIGH => NextHop::Kernel,
        // SAFETY: on FRAG_NEEDED the kernel wrote mtu_result into the union.
        BPF_FIB_LKUP_RET_FRAG_NEEDED => NextHop::TooBig(unsafe { fib.__bindgen_anon_1.mtu_result }),
        _ => NextHop::Unreachable,
    }
}

#[inline(always)]
fn mac_words(mac: &[u8; 6]) -> [u16; 3] {
    [
        u16::from_ne_bytes([mac[0], mac[1]]),
        u16::from_ne_bytes([mac[2], mac[3]]),
        u16::from_ne_bytes([mac[4], mac[5]]),
    ]
}

/// Sends a rewritten packet out of `ifindex`: XDP_TX on the ingress interface, otherwise a
/// devmap redirect. `Err` means the devmap has no such port.
#[inline(always)]
pub fn send(ctx: &XdpContext, ifindex: u32) -> Result<(u32, Lb), ()> {
    if ifindex == ctx.ingress_ifindex() as u32 {
        return Ok((xdp_action::XDP_TX, Lb::Tx));
    }
    match TX_PORTS.redirect(ifindex, 0) {
        Ok(action) if action == xdp_action::XDP_REDIRECT => Ok((action, Lb::Redirect)),
        _ => Err(()),
    }
}
