//! `sluice-lb`: the L4 tier's agent and CLI.
//!
//! - [`object`]: the embedded eBPF object.
//! - [`dataplane`]: loads `sluice_lb` / `sluice_decap` and reads and writes their maps.
//! - [`maglev`]: Maglev table generation.
#![deny(missing_docs)]

pub mod addr;
pub mod config;
pub mod controller;
pub mod dataplane;
pub mod maglev;
pub mod object;
