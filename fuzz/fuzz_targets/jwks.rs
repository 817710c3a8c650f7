//! Fuzz target `jwks`: JWKS documents.
//! The check and its invariants: `sluice_fuzz::gateway::jwks`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::gateway::jwks(data));
