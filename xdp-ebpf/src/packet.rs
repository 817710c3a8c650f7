//! Bounds-checked access to the packet.
//!
//! Every read and write goes through [`at`], which proves to the verifier that the access ends
//! before `data_end`. Multi-byte fields are moved as 16-bit halves: headers sit on 2-byte
//! boundaries after a 14- or 18-byte L2 header, so 16-bit access is always aligned, and two
//! halves read in memory order give the same native word as a 32-bit read would.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use sluice_common::net::{ETH_P_8021AD, ETH_P_8021Q};

/// Pointer to a `T` at `off` bytes into the packet, if the packet is long enough.
#[inline(always)]
pub fn at<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

/// Length of the frame in bytes.
///
/// Read through volatile loads on purpose: header length fields are validated against this
/// value, and if LLVM could relate it to the `data_end` used by [`at`] it would drop bounds
/// checks it can prove redundant with scalar arithmetic, which the verifier cannot follow.
#[inline(always)]
pub fn len(ctx: &XdpContext) -> usize {
    // SAFETY: `ctx.ctx` is the valid context pointer the kernel passed in.
    unsafe {
        let md = ctx.ctx;
        let start = core::ptr::read_volatile(core::ptr::addr_of!((*md).data));
        let end = core::ptr::read_volatile(core::ptr::addr_of!((*md).data_end));
        end.wrapping_sub(start) as usize
    }
}

/// Reads a byte.
#[inline(always)]
pub fn u8_at(p: *const u8, off: usize) -> u8 {
    // SAFETY: callers pass pointers from `at` covering `off`.
    unsafe { *p.add(off) }
}

/// Reads a big-endian 16-bit field and returns it in host order.
#[inline(always)]
pub fn be16_at(p: *const u8, off: usize) -> u16 {
    u16::from_be(raw16_at(p, off))
}

/// Reads 16 bits as stored (network order kept).
#[inline(always)]
pub fn raw16_at(p: *const u8, off: usize) -> u16 {
    // SAFETY: as above; the offset is even from a 2-byte aligned header start.
    unsafe { *(p.add(off) as *const u16) }
}

/// Reads 32 bits as stored (network order kept), as the native word of those bytes.
#[inline(always)]
pub fn raw32_at(p: *const u8, off: usize) -> u32 {
    raw16_at(p, off) as u32 | (raw16_at(p, off + 2) as u32) << 16
}

/// Writes 16 bits as given (already in network order).
#[inline(always)]
pub fn put16(p: *mut u8, off: usize, v: u16) {
    // SAFETY: callers pass pointers from `at` covering `off..off + 2`.
    unsafe { *(p.add(off) as *mut u16) = v }
}

/// Writes a native word's bytes (already in network order).
#[inline(always)]
pub fn put32(p: *mut u8, off: usize, v: u32) {
    put16(p, off, v as u16);
    put16(p, off + 2, (v >> 16) as u16);
}

/// Copies 16 bytes of an IPv6 address out of the packet.
#[inline(always)]
pub fn addr6_at(p: *const u8, off: usize) -> [u32; 4] {
    [
        raw32_at(p, off),
        raw32_at(p, off + 4),
        raw32_at(p, off + 8),
        raw32_at(p, off + 12),
    ]
}

/// Writes 16 bytes of an IPv6 address.
#[inline(always)]
pub fn put_addr6(p: *mut u8, off: usize, a: &[u32; 4]) {
    put32(p, off, a[0]);
    put32(p, off + 4, a[1]);
    put32(p, off + 8, a[2]);
    put32(p, off + 12, a[3]);
}

/// Ethernet (and optional VLAN) header as received, kept while the packet is rewritten.
#[derive(Clone, Copy)]
pub struct L2 {
    /// Destination MAC: this host's, since the frame was delivered to us.
    pub dst: [u16; 3],
    /// Source MAC: the previous hop.
    pub src: [u16; 3],
    /// VLAN TCI as stored, if the frame had one tag.
    pub vlan: Option<(u16, u16)>,
}

impl L2 {
    /// Reads the Ethernet header and at most one 802.1Q/802.1ad tag; returns the header and
    /// the payload's EtherType, or `None` if the frame is too short for them.
    #[inline(always)]
    pub fn parse(ctx: &XdpContext) -> Option<(L2, u16)> {
        let eth = at::<[u8; 14]>(ctx, 0)? as *const u8;
        let dst = [raw16_at(eth, 0), raw16_at(eth, 2), raw16_at(eth, 4)];
        let src = [raw16_at(eth, 6), raw16_at(eth, 8), raw16_at(eth, 10)];
        let mut ethertype = be16_at(eth, 12);
        let mut vlan = None;
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            let tag = at::<[u8; 18]>(ctx, 0)? as *const u8;
            vlan = Some((raw16_at(tag, 12), raw16_at(tag, 14)));
            ethertype = be16_at(tag, 16);
        }
        Some((L2 { dst, src, vlan }, ethertype))
    }

    /// Header length: 14, or 18 with a tag.
    #[inline(always)]
    pub fn len(&self) -> usize {
        if self.vlan.is_some() {
            18
        } else {
            14
        }
    }

    /// Writes an Ethernet header (and the tag, if any) at the start of the packet, with the given
    /// MACs and EtherType of the payload. Returns false if the packet is too short.
    #[inline(always)]
    pub fn write(&self, ctx: &XdpContext, dst: &[u16; 3], src: &[u16; 3], ethertype: u16) -> bool {
        match self.vlan {
            Some((tpid, tci)) => {
                let Some(p) = at::<[u8; 18]>(ctx, 0) else {
                    return false;
                };
                let p = p as *mut u8;
                write_macs(p, dst, src);
                put16(p, 12, tpid);
                put16(p, 14, tci);
                put16(p, 16, ethertype.to_be());
            }
            None => {
                let Some(p) = at::<[u8; 14]>(ctx, 0) else {
                    return false;
                };
                let p = p as *mut u8;
                write_macs(p, dst, src);
                put16(p, 12, ethertype.to_be());
            }
        }
        true
    }
}

#[inline(always)]
fn write_macs(p: *mut u8, dst: &[u16; 3], src: &[u16; 3]) {
    put16(p, 0, dst[0]);
    put16(p, 2, dst[1]);
    put16(p, 4, dst[2]);
    put16(p, 6, src[0]);
    put16(p, 8, src[1]);
    put16(p, 10, src[2]);
}

/// One's-complement sum of `len` bytes starting at `off`, at most `MAX` bytes.
///
/// Words are summed in native order, matching how the checksum field is then stored. An odd
/// trailing byte counts as the high-order byte of a zero-padded word.
#[inline(always)]
pub fn sum_bytes<const MAX: usize>(ctx: &XdpContext, off: usize, len: usize) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i < MAX / 2 {
        if 2 * i + 2 > len {
            break;
        }
        match at::<u16>(ctx, off + 2 * i) {
            // SAFETY: bounds checked by `at`.
            Some(w) => sum += unsafe { *w } as u32,
            None => return sum,
        }
        i += 1;
    }
    if len & 1 == 1 && len <= MAX {
        if let Some(b) = at::<u8>(ctx, off + len - 1) {
            // SAFETY: bounds checked by `at`.
            sum += unsafe { *b } as u32;
        }
    }
    sum
}

/// Sum of the words of an array, for pseudo-headers built on the stack.
#[inline(always)]
pub fn sum_words(words: &[u32]) -> u32 {
    let mut sum = 0u32;
    for w in words {
        sum += (w & 0xffff) + (w >> 16);
    }
    sum
}
