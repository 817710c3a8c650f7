//! The `lb_config` fuzz target's saved inputs, replayed in a plain `cargo test`: every file
//! in `fuzz/corpus/lb_config/` (the seeds) and `fuzz/regressions/lb_config/` (inputs that
//! once broke an invariant) goes through the same check the libFuzzer target runs
//! (`fuzz/src/lb.rs`, included here by path), so a crash once found stays a test without
//! nightly or cargo-fuzz.

use std::path::Path;

#[path = "../../fuzz/src/common.rs"]
#[allow(dead_code)] // shared with the fuzz crate; most of it serves the gateway's targets
mod common;
#[path = "../../fuzz/src/lb.rs"]
mod lb;

#[test]
fn lb_config() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    for (target, check) in lb::TARGETS {
        let ran = common::replay(&fuzz, target, *check);
        assert!(ran > 0, "fuzz/corpus/{target}/ has no seed");
    }
}
