//! Fuzz target `load_report`: a gateway's load report, as the agent reads it.
//! The check and its invariants: `sluice_fuzz::util::load_report`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::util::load_report(data));
