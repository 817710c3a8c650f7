//! `cargo xtask setup`: make a fresh Debian machine ready, and be quick when it already is.
//!
//! Each piece is checked first and installed only if missing. What cannot be installed (not
//! root, not Debian, no rustup) is named with the command that would install it.

use std::{fs, path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};

/// Debian packages every build and test needs, besides the LLVM ones matched to nightly.
const PACKAGES: &[&str] = &[
    "iproute2",
    "python3-scapy",
    "ethtool",
    "bpftool",
    "curl",
    // Independent JWT minting for the gateway tests, and the shared rate-limit store.
    "python3-jwt",
    "python3-cryptography",
    "redis-server",
    // Independent peers for the gateway's hardening tests: an upstream that normalizes
    // paths itself (nginx), and a strict HTTP/2 server (python-hyper's h2).
    "nginx",
    "python3-h2",
    // The BGP speaker the LB agents drive, and the harness router's.
    "bird2",
    // Packet loss on the harness's links (numgen), for the chaos test.
    "nftables",
    // The dashboards' browser test (headless, through the DevTools protocol).
    "chromium",
    // The deploy/ checks: Prometheus and promtool against the harness, and
    // `systemd-analyze verify` on the units.
    "prometheus",
    "systemd",
];

/// True when running as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn exec(cmd: &mut Command, what: &str) -> Result<()> {
    eprintln!("setup: {what}");
    let status = cmd
        .status()
        .with_context(|| format!("{what}: cannot start"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// The LLVM major version of the nightly rustc, which bpf-linker must be built against.
fn nightly_llvm_major() -> Option<u32> {
    let v = output(Command::new("rustup").args(["run", "nightly", "rustc", "-vV"]))?;
    let line = v.lines().find(|l| l.starts_with("LLVM version:"))?;
    line.split(':')
        .nth(1)?
        .trim()
        .split('.')
        .next()?
        .parse()
        .ok()
}

fn installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.contains("install ok installed"))
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// Records which LLVM bpf-linker was built against, since `bpf-linker --version` does not say.
fn linker_stamp() -> PathBuf {
    cargo_home().join("bpf-linker.sluice-llvm")
}

fn bpffs_mounted() -> bool {
    fs::read_to_string("/proc/mounts")
        .map(|m| {
            m.lines()
                .any(|l| l.split_whitespace().nth(2) == Some("bpf"))
        })
        .unwrap_or(false)
}

/// Installs Debian packages that are missing (for benchmarks, which need more than tests).
pub fn packages(pkgs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "not root: run `sudo apt-get install -y {}`",
            missing.join(" ")
        );
    }
    apt_install(&missing)
}

/// `apt-get update`, then installs `pkgs` without prompts.
fn apt_install<S: AsRef<std::ffi::OsStr>>(pkgs: &[S]) -> Result<()> {
    exec(
        Command::new("apt-get").arg("update").arg("-qq"),
        "apt-get update",
    )?;
    let names: Vec<String> = pkgs
        .iter()
        .map(|p| p.as_ref().to_string_lossy().into_owned())
        .collect();
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(pkgs)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        &format!("installing {}", names.join(" ")),
    )
}

/// Checks every piece and installs what is missing.
pub fn run() -> Result<()> {
    let root = is_root();
    let llvm = nightly_toolchain()?;
    let problems: Vec<String> = [
        debian_packages(llvm, root)?,
        bpf_linker(llvm)?,
        cargo_tool("cargo-fuzz", &["fuzz", "--version"])?,
        // `cargo xtask package` builds the Debian packages with it.
        cargo_tool("cargo-deb", &["deb", "--version"])?,
        bpffs(root)?,
    ]
    .into_iter()
    .flatten()
    .collect();
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("setup: missing: {p}");
        }
        bail!("setup is incomplete; see the messages above");
    }
    Ok(())
}

/// 1. Nightly toolchain and rust-src for `-Z build-std`; the LLVM major version of nightly.
fn nightly_toolchain() -> Result<u32> {
    if nightly_llvm_major().is_none() {
        exec(
            Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
            ]),
            "installing the nightly Rust toolchain",
        )?;
    }
    let Some(llvm) = nightly_llvm_major() else {
        bail!(
            "setup: cannot read the nightly rustc's LLVM version (`rustup run nightly rustc -vV`)"
        );
    };
    let has_src = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .is_some_and(|s| s.lines().any(|l| l.starts_with("rust-src")));
    if !has_src {
        exec(
            Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
            "adding rust-src to nightly",
        )?;
    }
    Ok(llvm)
}

/// 2. Debian packages: LLVM matching nightly (for bpf-linker) and the test tools.
///
/// What cannot be installed here is returned as a problem, as by the steps below.
fn debian_packages(llvm: u32, root: bool) -> Result<Option<String>> {
    let debian = fs::metadata("/etc/debian_version").is_ok();
    let llvm_pkgs = [format!("llvm-{llvm}-dev"), format!("libpolly-{llvm}-dev")];
    let missing: Vec<String> = llvm_pkgs
        .iter()
        .map(String::as_str)
        .chain(PACKAGES.iter().copied())
        .filter(|p| !installed(p))
        .map(str::to_owned)
        .collect();
    if missing.is_empty() {
        return Ok(None);
    }
    if !debian {
        return Ok(Some(format!(
            "not a Debian system: install the equivalents of {} yourself",
            missing.join(" ")
        )));
    }
    if !root {
        return Ok(Some(format!(
            "not root: run `sudo apt-get install -y {}`",
            missing.join(" ")
        )));
    }
    apt_install(&missing)?;
    Ok(None)
}

/// 3. bpf-linker, built against that LLVM.
fn bpf_linker(llvm: u32) -> Result<Option<String>> {
    let stamp_ok = fs::read_to_string(linker_stamp()).is_ok_and(|s| s.trim() == llvm.to_string());
    let linker_present = output(Command::new("bpf-linker").arg("--version")).is_some();
    if linker_present && stamp_ok {
        return Ok(None);
    }
    let prefix = format!("/usr/lib/llvm-{llvm}");
    if fs::metadata(&prefix).is_err() {
        return Ok(Some(format!(
            "bpf-linker needs LLVM {llvm} development files in {prefix} (llvm-{llvm}-dev)"
        )));
    }
    exec(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                "^0.13",
                "--no-default-features",
                "--features",
                &format!("llvm-{llvm}"),
                "--force",
            ])
            .env("LLVM_PREFIX", &prefix),
        &format!("building bpf-linker against LLVM {llvm}"),
    )?;
    fs::write(linker_stamp(), llvm.to_string()).context("writing bpf-linker stamp")?;
    Ok(None)
}

/// 4. Cargo subcommands from crates.io.
///
/// cargo-fuzz builds and runs the libFuzzer targets of `fuzz/` on nightly; cargo-deb builds
/// the Debian packages of `cargo xtask package`. `probe` is how the tool answers when it is
/// there.
fn cargo_tool(krate: &str, probe: &[&str]) -> Result<Option<String>> {
    if output(Command::new("cargo").args(probe)).is_some() {
        return Ok(None);
    }
    exec(
        Command::new("cargo").args(["install", krate, "--locked"]),
        &format!("installing {krate}"),
    )?;
    Ok(None)
}

/// 5. bpffs, where pinned maps and programs live.
fn bpffs(root: bool) -> Result<Option<String>> {
    if bpffs_mounted() {
        return Ok(None);
    }
    if !root {
        return Ok(Some(
            "bpffs is not mounted: run `sudo mount -t bpf bpf /sys/fs/bpf`".into(),
        ));
    }
    exec(
        Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]),
        "mounting bpffs on /sys/fs/bpf",
    )?;
    Ok(None)
}
