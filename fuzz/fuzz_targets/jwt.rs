//! Fuzz target `jwt`: JWT verification: header, claims, signature, keys.
//! The check and its invariants: `sluice_fuzz::gateway::jwt`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::gateway::jwt(data));
