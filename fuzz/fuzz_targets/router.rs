//! Fuzz target `router`: route matching and precedence.
//! The check and its invariants: `sluice_fuzz::gateway::router`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::gateway::router(data));
