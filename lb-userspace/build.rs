//! Builds the eBPF object from `../xdp-ebpf` and places it in OUT_DIR, where `src/object.rs`
//! embeds it into the library and the `sluice-lb` binary.
//!
//! The eBPF crate needs the nightly toolchain, `rust-src` and `bpf-linker`; `cargo xtask setup`
//! installs them. Set `SLUICE_EBPF_OBJECT` to an already built object to skip the nested build.
//!
//! It also sets `SLUICE_GIT_COMMIT`, the commit `sluice-lb --version` names
//! (`build-support/git_commit.rs`).

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

include!("../build-support/git_commit.rs");

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    git_commit(&manifest);
    let root = manifest
        .parent()
        .expect("lb-userspace sits in the workspace")
        .to_path_buf();
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("sluice-xdp");
    println!("cargo:rerun-if-env-changed=SLUICE_EBPF_OBJECT");
    if let Some(prebuilt) = env::var_os("SLUICE_EBPF_OBJECT") {
        let prebuilt = PathBuf::from(prebuilt);
        println!("cargo:rerun-if-changed={}", prebuilt.display());
        copy(&prebuilt, &out);
        return;
    }
    let ebpf = root.join("xdp-ebpf");
    for path in [
        "src",
        "Cargo.toml",
        "Cargo.lock",
        "rust-toolchain.toml",
        ".cargo",
    ] {
        println!("cargo:rerun-if-changed={}", ebpf.join(path).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        root.join("common/src").display()
    );
    let target_dir = root.join("target").join("bpf");
    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        "nightly",
        "cargo",
        "build",
        "--release",
        "--target-dir",
    ])
    .arg(&target_dir)
    .current_dir(&ebpf);
    // Nothing of the host build may leak into the eBPF build: clippy's wrapper, host flags and
    // the host toolchain choice all break it.
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTUP_TOOLCHAIN",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTC",
        "CARGO_BUILD_RUSTC_WRAPPER",
        "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("cannot run `rustup run nightly cargo` to build the eBPF object: {e}; run `cargo xtask setup`")
    });
    if !status.success() {
        panic!(
            "building the eBPF object in {} failed ({status}); if the nightly toolchain, rust-src \
             or bpf-linker is missing, run `cargo xtask setup`",
            ebpf.display()
        );
    }
    copy(
        &target_dir.join("bpfel-unknown-none/release/sluice-xdp"),
        &out,
    );
}

fn copy(from: &Path, to: &Path) {
    fs::copy(from, to)
        .unwrap_or_else(|e| panic!("cannot copy eBPF object {}: {e}", from.display()));
}
