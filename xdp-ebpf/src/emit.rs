//! Emit: find the next hop for the outer destination and send the packet on its way.
//!
//! `bpf_fib_lookup` resolves route and neighbour in one call and also checks the egress MTU
//! against the outer length. The packet leaves by XDP_TX when the egress is the ingress
//! interface and by XDP_REDIRECT through the devmap otherwise. When the neighbour is not yet
//! resolved, the encapsulated packet goes to the kernel, which routes it like any IP packet and
//! resolves the neighbour on the way; the next packets are then sent directly.
//!
//! A lookup costs more than the rest of the forwarding path, so a successful result (MACs,
//! egress and route MTU) is cached per CPU and per backend for [`NEXT_HOP_TTL_JIFFIES`]
//! kernel ticks: route and neighbour changes take effect within that time (25 to 250 ms
//! by the kernel's HZ). Failures are never cached.

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, xdp_action, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_jiffies64},
    programs::XdpContext,
    EbpfContext,
};
use sluice_common::{stats::Lb, NextHop as Cached, FAMILY_V6, NEXT_HOP_TTL_JIFFIES};

use crate::{
    encap::Outer,
    maps::{NEXT_HOPS, TX_PORTS},
};

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

/// The cached next hop towards backend `backend_id`, if this CPU holds a fresh one: a
/// [`NextHop::Forward`], or [`NextHop::TooBig`] when the outer packet exceeds its MTU.
///
/// `ingress` is the frame's ingress interface, read once by the caller: the context field
/// is three dependent loads each time it is read.
#[inline(always)]
pub fn cached(ingress: u32, outer: &Outer, backend_id: u32) -> Option<NextHop> {
    let c = fresh(ingress, backend_id)?;
    if outer.total > c.mtu as usize {
        return Some(NextHop::TooBig(c.mtu));
    }
    Some(NextHop::Forward {
        dst: c.dst_mac,
        src: c.src_mac,
        ifindex: c.egress,
    })
}

/// This CPU's cached next hop towards backend `backend_id`, if it is fresh and was found
/// for `ingress`. Its fields are read where they are used: a copy made before a helper call
/// would be spilled to the stack and read back.
#[inline(always)]
pub fn fresh(ingress: u32, backend_id: u32) -> Option<&'static Cached> {
    // SAFETY: plain helper call (the verifier inlines it into one load of `jiffies`).
    let now = unsafe { bpf_jiffies64() };
    // SAFETY: this CPU's slot. The program writes it only on this CPU; the agent may clear
    // every CPU's slot (`forget_next_hop`). A packet that races that may read a torn
    // entry (old and cleared fields side by side): that one packet may be lost, as one in
    // flight during the route change that prompted the clearing may be.
    let c = unsafe { &*NEXT_HOPS.get_ptr(backend_id)? };
    // An entry further ahead than one lifetime was written with another clock (an earlier
    // program kept nanoseconds here): never trusted, so it cannot live forever.
    if c.expires <= now || c.expires > now + NEXT_HOP_TTL_JIFFIES || c.ingress != ingress {
        return None;
    }
    Some(c)
}

/// The next hop of the outer header towards backend `backend_id`: the cached one, or a
/// route lookup, whose success is then cached.
#[inline(always)]
pub fn next_hop(ctx: &XdpContext, ingress: u32, outer: &Outer, backend_id: u32) -> NextHop {
    if let Some(hop) = cached(ingress, outer, backend_id) {
        return hop;
    }
    // SAFETY: as above.
    let now = unsafe { bpf_jiffies64() };
    let slot = NEXT_HOPS.get_ptr_mut(backend_id);
    let found = lookup(ctx, ingress, outer, outer.total as u16);
    if let (NextHop::Forward { dst, src, ifindex }, Some(slot)) = (&found, slot) {
        // The route MTU: ask again with the largest length, which fails with it.
        let mtu = match lookup(ctx, ingress, outer, u16::MAX) {
            NextHop::TooBig(mtu) => mtu,
            _ => u16::MAX,
        };
        let entry = Cached {
            expires: now + NEXT_HOP_TTL_JIFFIES,
            ingress,
            egress: *ifindex,
            dst_mac: *dst,
            src_mac: *src,
            mtu,
            pad: [0; 2],
        };
        // SAFETY: per-CPU slot.
        unsafe { *slot = entry };
    }
    found
}

/// One `bpf_fib_lookup` for the outer header with `tot_len` as the packet length.
#[inline(always)]
fn lookup(ctx: &XdpContext, ingress: u32, outer: &Outer, tot_len: u16) -> NextHop {
    // SAFETY: an all-zero bpf_fib_lookup is its documented initial state.
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    fib.ifindex = ingress;
    fib.__bindgen_anon_1.tot_len = tot_len;
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
///
/// The redirect only records where the frame goes once the program returns, so this may be
/// called before the frame is rewritten.
#[inline(always)]
pub fn send(ingress: u32, ifindex: u32) -> Result<(u32, Lb), ()> {
    if ifindex == ingress {
        return Ok((xdp_action::XDP_TX, Lb::Tx));
    }
    match TX_PORTS.redirect(ifindex, 0) {
        Ok(action) if action == xdp_action::XDP_REDIRECT => Ok((action, Lb::Redirect)),
        _ => Err(()),
    }
}
