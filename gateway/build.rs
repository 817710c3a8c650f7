//! Sets `SLUICE_GIT_COMMIT`, the commit `sluice-gateway --version` names
//! (`build-support/git_commit.rs`).

include!("../build-support/git_commit.rs");

fn main() {
    let manifest = std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    git_commit(&manifest);
}
