//! The checks behind Sluice's fuzz targets (`fuzz_targets/`, run by `cargo xtask fuzz`).
//!
//! One function per target takes the fuzzer's bytes and panics when an invariant breaks.
//! The tested crates replay saved inputs through the same functions in their own
//! `cargo test` (`gateway/tests/fuzz_replay.rs`, `lb-userspace/tests/fuzz_replay.rs` and
//! `util/tests/fuzz_replay.rs` include these modules by path), so a crash once found stays a
//! regression test.

pub mod common;
pub mod gateway;
pub mod lb;
pub mod util;
