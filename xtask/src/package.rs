//! `cargo xtask package`: a Debian package per binary, `sluice-lb` and `sluice-gateway`,
//! built by cargo-deb from `[package.metadata.deb]` in each crate's Cargo.toml.
//!
//! cargo-deb runs on a staging target directory (`CARGO_TARGET_DIR`) whose `release/` holds
//! hard links to the built binaries and the man pages and completions each binary writes of
//! itself (`<binary> __docs <dir>`, `build-support/cli.rs`): xtask cannot build them itself,
//! since it must not depend on the aya and gateway crates. Staging lets the package test
//! package the dev build under the release layout cargo-deb expects (its `--profile dev` is
//! deprecated), and keeps cargo-deb's work (stripped copies, package trees) out of `target/`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::ValueEnum;

/// Which build is packaged.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Profile {
    /// `cargo build --release`: what is shipped.
    Release,
    /// The dev build, which `cargo xtask test` has built already: for checking the packages'
    /// contents quickly. Compressed lightly (cargo-deb's `--fast`).
    Dev,
}

/// The packages: each crate and its binary.
const PACKAGES: &[(&str, &str)] = &[
    ("sluice-lb", "sluice-lb"),
    ("sluice-gateway", "sluice-gateway"),
];

/// Builds the binaries with `profile` and a `.deb` for each into `out`; returns their paths.
pub fn run(root: &Path, profile: Profile, out: &Path) -> Result<Vec<PathBuf>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // The whole workspace, as `cargo xtask build` and `test` build it: building the two crates
    // alone would unify their dependencies' features differently and build them again.
    let mut build = Command::new(&cargo);
    build
        .args(["build", "--workspace", "--bins"])
        .current_dir(root);
    if profile == Profile::Release {
        build.arg("--release");
    }
    run_ok(&mut build, "building the binaries")?;

    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let built = target.join(match profile {
        Profile::Release => "release",
        Profile::Dev => "debug",
    });
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let out = out
        .canonicalize()
        .with_context(|| format!("resolving {}", out.display()))?;
    let staging = out.join(".staging");
    // Removed before (a run that was interrupted) and after.
    let _ = std::fs::remove_dir_all(&staging);
    let result = package_all(root, &cargo, &built, &staging, &out, profile);
    let _ = std::fs::remove_dir_all(&staging);
    result
}

fn package_all(
    root: &Path,
    cargo: &str,
    built: &Path,
    staging: &Path,
    out: &Path,
    profile: Profile,
) -> Result<Vec<PathBuf>> {
    // cargo-deb replaces `target/release/` in the assets by `$CARGO_TARGET_DIR/release/`.
    let release = staging.join("release");
    std::fs::create_dir_all(&release).with_context(|| format!("creating {}", release.display()))?;
    let mut debs = Vec::new();
    for (krate, bin) in PACKAGES {
        let staged = release.join(bin);
        link_or_copy(&built.join(bin), &staged)?;
        let docs = release.join("sluice-docs").join(bin);
        run_ok(
            Command::new(&staged).arg("__docs").arg(&docs),
            &format!("writing the man pages and completions of {bin}"),
        )?;
        gzip_man_pages(&docs.join("man/man1"))?;
        let mut deb = Command::new(cargo);
        deb.args(["deb", "-p", krate, "--no-build", "--output"])
            .arg(out)
            .env("CARGO_TARGET_DIR", staging)
            .current_dir(root);
        if profile == Profile::Dev {
            deb.arg("--fast");
        }
        let what = format!("packaging {krate} (cargo deb)");
        let stdout = run_ok(&mut deb, &what)?;
        // cargo-deb prints the path of the package it wrote.
        let path = stdout
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| l.ends_with(".deb"))
            .map(PathBuf::from)
            .with_context(|| format!("{what}: no .deb path in its output: {stdout}"))?;
        debs.push(path);
    }
    Ok(debs)
}

/// Compresses the man pages as Debian policy wants them (cargo-deb would, but not for files
/// under `target/release/`, which it takes for build products). `-n`: no name or time in the
/// header, so the same page gives the same bytes.
fn gzip_man_pages(dir: &Path) -> Result<()> {
    let pages: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "1"))
        .collect();
    if pages.is_empty() {
        bail!("no man pages in {}", dir.display());
    }
    run_ok(
        Command::new("gzip").args(["-9nf"]).args(&pages),
        &format!("compressing the man pages in {}", dir.display()),
    )?;
    Ok(())
}

/// A hard link (instant, and the dev binaries are large), or a copy across filesystems.
fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    if !from.exists() {
        bail!("{} is missing after the build", from.display());
    }
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    Ok(())
}

/// Runs `cmd`, passing its stderr through; its stdout, or an error naming `what`.
fn run_ok(cmd: &mut Command, what: &str) -> Result<String> {
    eprintln!("package: {what}");
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("{what}: cannot start {:?}", cmd.get_program()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("{what} failed ({}): {stdout}", out.status);
    }
    Ok(stdout)
}
