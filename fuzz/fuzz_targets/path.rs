//! Fuzz target `path`: path normalization.
//! The check and its invariants: `sluice_fuzz::gateway::path`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::gateway::path(data));
