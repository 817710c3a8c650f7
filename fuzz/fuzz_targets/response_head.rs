//! Fuzz target `response_head`: the upstream response head parser.
//! The check and its invariants: `sluice_fuzz::gateway::response_head`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::gateway::response_head(data));
