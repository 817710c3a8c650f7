//! The `load_report` and `shield_candidates` fuzz targets' saved inputs, replayed in a
//! plain `cargo test`: every file in `fuzz/corpus/<target>/` (the seeds) and
//! `fuzz/regressions/<target>/` (inputs that once broke an invariant) goes through the same
//! check the libFuzzer target runs (`fuzz/src/util.rs`, included here by path), so a crash
//! once found stays a test without nightly or cargo-fuzz.

use std::path::Path;

#[path = "../../fuzz/src/common.rs"]
#[allow(dead_code)] // shared with the fuzz crate; most of it serves the gateway's targets
mod common;
#[path = "../../fuzz/src/util.rs"]
mod util;

#[test]
fn agent_inputs_from_gateways() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    for (target, check) in util::TARGETS {
        let ran = common::replay(&fuzz, target, *check);
        assert!(ran > 0, "fuzz/corpus/{target}/ has no seed");
    }
}
