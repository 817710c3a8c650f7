//! Fuzz target `forwarded`: X-Forwarded-For for trusted proxies, and this hop's forwarding fields.
//! The check and its invariants: `sluice_fuzz::gateway::forwarded`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::gateway::forwarded(data));
