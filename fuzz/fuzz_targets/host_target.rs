//! Fuzz target `host_target`: the Host rules and the normalized request target.
//! The check and its invariants: `sluice_fuzz::gateway::host_target`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::gateway::host_target(data));
