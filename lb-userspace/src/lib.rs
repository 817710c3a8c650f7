//! `sluice-lb`: the L4 tier's agent and CLI.
//!
//! - [`object`]: the embedded eBPF object.
//! - [`dataplane`]: loads `sluice_lb` / `sluice_decap` and reads and writes their maps.
//! - [`maglev`]: Maglev table generation.
//! - [`config`] → [`controller`] → [`dataplane`]: what the operator declares, what the maps
//!   must hold, and writing it; [`attach`] pins programs to interfaces.
//! - [`agent`]: the `run` loop, fed by [`health`] probers and the [`admin`] API.
//! - [`dashboard`]: the live page the admin listener serves at `/`.
//! - [`bgp`]: the VIPs announced over BGP through BIRD.
//! - [`shield`]: blocked source prefixes (an operator's, and the gateways' candidates pulled
//!   by [`shield::pull`]) and the flood guard's state.
#![deny(missing_docs)]

pub mod addr;
pub mod admin;
pub mod agent;
pub mod attach;
pub mod bgp;
pub mod config;
pub mod controller;
pub mod dashboard;
pub mod dataplane;
pub mod health;
pub mod maglev;
pub mod metrics;
pub mod node_check;
pub mod object;
pub mod shield;
pub mod weights;
