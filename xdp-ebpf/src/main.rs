//! Sluice's XDP programs.
//!
//! - `sluice_lb` forwards VIP traffic to gateway nodes: the common packet by [`established`],
//!   every other by [`parse`] → [`shield`] → [`lookup`] (with the [`flood`] guard) →
//!   [`encap`] → [`emit`], with [`icmp`] answering packets too big for the tunnel.
//! - `sluice_decap` strips the tunnel on gateway nodes: [`decap`].
//! - `bench_*` wrap them for `cargo xtask bench xdp` (see [`bench`]).
#![no_std]
#![no_main]
// Map keys are passed by reference on purpose: by value, a 40-byte key is copied onto the
// 512-byte BPF stack again before the helper call.
#![allow(clippy::needless_borrows_for_generic_args)]

mod bench;
mod decap;
mod emit;
mod encap;
mod fast_path;
mod flood;
mod icmp;
mod lb;
mod lookup;
mod maps;
mod packet;
mod parse;
mod shield;

use aya_ebpf::{macros::xdp, programs::XdpContext, Global};

/// Load-time debug switch. The loader sets it to 1 to enable aya-log output; at 0 the verifier
/// sees a constant and removes the logging code, so the hot path carries none of it.
#[unsafe(no_mangle)]
static SLUICE_DEBUG: Global<u8> = Global::new(0);

/// Whether [`SLUICE_DEBUG`] was set at load time.
#[inline(always)]
pub fn debugging() -> bool {
    SLUICE_DEBUG.load() != 0
}

/// Logs through aya-log only when [`SLUICE_DEBUG`] is set at load time.
#[macro_export]
macro_rules! debug_log {
    ($ctx:expr, $($arg:tt)+) => {
        if $crate::debugging() {
            aya_log_ebpf::debug!($ctx, $($arg)+);
        }
    };
}

/// Maglev forwarder for LB nodes.
#[xdp]
pub fn sluice_lb(ctx: XdpContext) -> u32 {
    lb::run(&ctx)
}

/// Tunnel endpoint for gateway nodes.
#[xdp]
pub fn sluice_decap(ctx: XdpContext) -> u32 {
    decap::run(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
