//! Fuzz target `shield_candidates`: a gateway's shield candidates, as the agent pulls them.
//! The check and its invariants: `sluice_fuzz::util::shield_candidates`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::util::shield_candidates(data));
