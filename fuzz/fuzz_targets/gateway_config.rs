//! Fuzz target `gateway_config`: the gateway's config file, built.
//! The check and its invariants: `sluice_fuzz::gateway::gateway_config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::gateway::gateway_config(data));
