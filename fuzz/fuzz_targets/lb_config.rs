//! Fuzz target `lb_config`: sluice-lb's config file, validated and planned.
//! The check and its invariants: `sluice_fuzz::lb::lb_config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::lb::lb_config(data));
