//! Fuzz target `chunked_body`: the response body decoder (chunked, length, until close).
//! The check and its invariants: `sluice_fuzz::gateway::chunked_body`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::gateway::chunked_body(data));
