//! Fuzz target `json_transform`: request and response transforms (JSON bodies, target).
//! The check and its invariants: `sluice_fuzz::gateway::json_transform`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::gateway::json_transform(data));
