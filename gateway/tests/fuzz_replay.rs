//! The fuzz targets' saved inputs, replayed in a plain `cargo test`: every file in
//! `fuzz/corpus/<target>/` (the seeds) and `fuzz/regressions/<target>/` (inputs that once
//! broke an invariant) goes through the same check the libFuzzer target runs. The checks
//! live in the fuzz crate (`fuzz/src/`, which needs nightly only for libFuzzer itself) and
//! are included here by path, so a crash once found stays a test without cargo-fuzz.

use std::path::{Path, PathBuf};

#[path = "../../fuzz/src/common.rs"]
#[allow(dead_code)] // shared with the fuzz crate; not every helper is needed here
mod common;
#[path = "../../fuzz/src/gateway/mod.rs"]
mod gateway;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Replays one target's saved inputs; a target without any is a mistake.
fn replay(target: &str, check: common::Check) {
    let ran = common::replay(&fuzz_dir(), target, check);
    assert!(ran > 0, "fuzz/corpus/{target}/ has no seed");
}

macro_rules! replay_each {
    ($($target:ident),* $(,)?) => {
        $(
            #[test]
            fn $target() {
                replay(stringify!($target), gateway::$target);
            }
        )*
    };
}

replay_each!(
    response_head,
    chunked_body,
    path,
    host_target,
    forwarded,
    gateway_config,
    jwt,
    jwks,
    json_transform,
    router,
);

/// Every gateway target in `fuzz/fuzz_targets/` is replayed here.
#[test]
fn every_gateway_target_is_replayed() {
    let dir = fuzz_dir().join("fuzz_targets");
    for entry in std::fs::read_dir(&dir).expect("fuzz/fuzz_targets") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("a target's source");
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        if text.contains("sluice_fuzz::gateway::") {
            assert!(
                gateway::TARGETS.iter().any(|(t, _)| *t == name),
                "{name} is not in fuzz/src/gateway's TARGETS"
            );
        }
    }
    let replayed = [
        "response_head",
        "chunked_body",
        "path",
        "host_target",
        "forwarded",
        "gateway_config",
        "jwt",
        "jwks",
        "json_transform",
        "router",
    ];
    for (t, _) in gateway::TARGETS {
        assert!(replayed.contains(t), "{t} has no replay test here");
    }
}
