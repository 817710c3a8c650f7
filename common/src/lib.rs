//! The one definition of everything the Sluice data plane shares with its users.
//!
//! The eBPF programs (`xdp-ebpf/`), the `sluice-lb` agent, the packet tests and the reference
//! model all compile this crate, so a map's key and value layout, a counter's index or the flow
//! hash can only mean one thing. Layouts are `#[repr(C)]` with explicit padding, because the
//! kernel copies them byte for byte between the two sides.
//!
//! Byte order: addresses and ports are kept exactly as they appear on the wire (network byte
//! order). Addresses are stored as `[u32; 4]` words read in the machine's native order from
//! those bytes; an IPv4 address uses word 0 and leaves words 1..4 zero. Both sides of the map
//! run on little-endian machines (`bpfel` and the host), so the words hash identically.
#![no_std]
#![deny(missing_docs)]

pub mod hash;
pub mod maps;
pub mod net;
pub mod stats;

pub use hash::{flow_hash, flow_hash4, hash_words, maglev_slot, source_hash, source_hash4};
pub use maps::*;
