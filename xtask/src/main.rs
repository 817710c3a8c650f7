//! `cargo xtask`: the project's one entry point for setting up a machine, building, testing,
//! demonstrating, benchmarking and packaging Sluice. Every command runs `setup` first.

mod demo;
mod fuzz;
mod leftovers;
mod package;
mod setup;
mod soak;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(about = "Build, test, demo, benchmark and package Sluice")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing: Debian packages, rust-src, bpf-linker, cargo-fuzz; mount bpffs.
    Setup,
    /// Build the eBPF object and the host binaries (release).
    Build,
    /// Run every test: unit, packet (BPF_PROG_TEST_RUN, needs root) and integration, then
    /// every fuzz target for a few seconds. Arguments after `--` go to `cargo test` (and
    /// skip the fuzz targets), e.g. `cargo xtask test -- -p sluice-lb`.
    Test {
        /// Extra arguments for `cargo test`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run the two-tier demo: topology, traffic, a failover and a drain.
    Demo {
        /// Keep the topology up afterwards (Ctrl-C removes it).
        #[arg(long)]
        keep: bool,
    },
    /// Run the fuzz targets (cargo-fuzz, nightly): each for `--time` seconds, then the
    /// packet fuzzer on 1,000,000 frames (root). A crash is saved in fuzz/regressions/, which
    /// the tested crate's `cargo test` replays.
    Fuzz {
        /// One target (a file of fuzz/fuzz_targets/, or `packets`); all when absent.
        target: Option<String>,
        /// Seconds per libFuzzer target.
        #[arg(long, default_value_t = 60)]
        time: u64,
    },
    /// Build a Debian package per binary (cargo-deb): the binary, its example config under
    /// /etc/sluice, its systemd unit, man pages and shell completions. Prints their paths.
    Package {
        /// Which build to package.
        #[arg(long, value_enum, default_value = "release")]
        profile: package::Profile,
        /// Where the .deb files go (default: target/debian).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Run a benchmark.
    Bench {
        /// Which part to measure.
        #[arg(value_enum)]
        target: BenchTarget,
    },
    /// Run the two-tier topology under load while reloads, restarts, a Redis restart, a
    /// health flap, drains and a certificate reload happen on a schedule; report each
    /// process's RSS, descriptors and threads over time and the failed requests by cause.
    Soak {
        /// How long.
        #[arg(long, default_value_t = 10)]
        minutes: u64,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum BenchTarget {
    /// The XDP data plane through BPF_PROG_TEST_RUN, against a trivial XDP_TX program.
    Xdp,
    /// Maglev table build time, against the paper's textbook algorithm.
    Lb,
    /// sluice-gateway against nginx as a reverse proxy (installs nginx and wrk).
    Gateway,
    /// Load-aware weights against static ones, one gateway under a CPU limit (root).
    Loop,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    setup::run()?;
    match cli.command {
        Cmd::Setup => Ok(()),
        Cmd::Build => cargo(&["build", "--workspace", "--release"]),
        Cmd::Test { args } => test(&args),
        Cmd::Demo { keep } => run_demo(keep),
        Cmd::Package { profile, out } => {
            let root = workspace_root();
            let out = out.unwrap_or_else(|| root.join("target/debian"));
            for deb in package::run(&root, profile, &out)? {
                println!("{}", deb.display());
            }
            Ok(())
        }
        Cmd::Fuzz { target, time } => fuzz::command(&workspace_root(), target.as_deref(), time),
        Cmd::Soak { minutes } => {
            if !setup::is_root() {
                bail!("the soak builds network namespaces and loads XDP programs: run it as root");
            }
            cargo(&["build", "--workspace", "--release", "--bins"])?;
            soak::run(&workspace_root().join("target/release"), minutes.max(1))
        }
        Cmd::Bench { target } => match target {
            BenchTarget::Xdp => cargo(&["bench", "-p", "sluice-lb", "--bench", "xdp"]),
            BenchTarget::Lb => cargo(&["bench", "-p", "sluice-lb", "--bench", "maglev"]),
            BenchTarget::Gateway => {
                setup::packages(&["nginx", "wrk"])?;
                cargo(&["bench", "-p", "sluice-gateway", "--bench", "vs_nginx"])
            }
            BenchTarget::Loop => {
                // The harness runs the release binaries, as the demo does.
                cargo(&["build", "--workspace", "--release", "--bins"])?;
                std::env::set_var("SLUICE_BIN_DIR", workspace_root().join("target/release"));
                cargo(&["bench", "-p", "sluice-e2e", "--bench", "load_loop"])
            }
        },
    }
}

/// Runs cargo with `args` in the workspace root, failing on a non-zero exit.
fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("running {cargo} {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

fn test(extra: &[String]) -> Result<()> {
    if !setup::is_root() {
        if std::env::var_os("CI").is_some() {
            bail!("cargo xtask test must run as root in CI: privileged tests may not be skipped");
        }
        eprintln!(
            "note: not root, so the privileged tests (XDP packet tests) will report themselves \
             skipped; run as root to run them"
        );
    }
    // The end-to-end tests run the real binaries.
    cargo(&["build", "--workspace", "--bins"])?;
    let audit = leftovers::Audit::start()?;
    let result = test_and_fuzz(extra);
    let left = audit.finish();
    if !left.is_empty() {
        println!("left behind by the run (now removed where it could be):");
        for item in &left {
            println!("  {item}");
        }
        result?;
        // New namespaces and interfaces are taken for the run's: on a host where something
        // else makes them meanwhile (containers), SLUICE_LEFTOVERS=warn only reports.
        if std::env::var("SLUICE_LEFTOVERS").is_ok_and(|v| v == "warn") {
            println!("(SLUICE_LEFTOVERS=warn: reported only)");
            return Ok(());
        }
        bail!(
            "the run left {} things behind: every harness must remove what it creates",
            left.len()
        );
    }
    result
}

/// `cargo test` over the workspace, then the fuzz targets briefly.
fn test_and_fuzz(extra: &[String]) -> Result<()> {
    let mut args = vec!["test", "--workspace"];
    args.extend(extra.iter().map(String::as_str));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = Command::new(&cargo)
        .args(&args)
        .current_dir(workspace_root())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cargo} {}", args.join(" ")))?;
    let reaper = leftovers::Reaper::start(child.id());
    // Pass the output through and add up every test binary's result line.
    let mut totals = Totals::default();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line.context("reading cargo test output")?;
            println!("{line}");
            totals.add(&line);
        }
    }
    let status = child.wait().context("waiting for cargo test");
    reaper.stop();
    let status = status?;
    if !status.success() {
        println!(
            "tests: {} passed, {} failed, {} skipped",
            totals.passed, totals.failed, totals.ignored
        );
        bail!("cargo test failed ({status})");
    }
    // Every fuzz target, briefly: the long runs are `cargo xtask fuzz`.
    let (fuzz_line, fuzzed) = if extra.is_empty() {
        fuzz_briefly()
    } else {
        (
            "fuzz: not run (cargo test arguments given)".to_string(),
            Ok(()),
        )
    };
    println!(
        "tests: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    println!("{fuzz_line}");
    fuzzed
}

/// Seconds each fuzz target runs in `cargo xtask test`.
const FUZZ_SECS: u64 = 5;

/// Runs every fuzz target for [`FUZZ_SECS`]: the summary line, and whether that passes. A
/// crash fails; fuzzers that cannot be built or run fail in CI, and are only reported
/// elsewhere.
fn fuzz_briefly() -> (String, Result<()>) {
    let root = workspace_root();
    let ci = std::env::var_os("CI").is_some();
    let smoke = match fuzz::smoke(&root, FUZZ_SECS) {
        Ok(s) => s,
        Err(e) if !ci => {
            eprintln!("warning: the fuzz targets were not run: {e:#}");
            return ("fuzz: not run (see the warning above)".into(), Ok(()));
        }
        Err(e) => {
            return (
                "fuzz: FAILED to build".into(),
                Err(e.context("the fuzz targets must run in CI")),
            )
        }
    };
    let named = |crashed: bool| -> Vec<&str> {
        smoke
            .runs
            .iter()
            .filter(|r| match r.verdict {
                fuzz::Verdict::Crashed { .. } => crashed,
                fuzz::Verdict::Failed(_) => !crashed,
                fuzz::Verdict::Passed => false,
            })
            .map(|r| r.target.as_str())
            .collect()
    };
    let (crashed, broken) = (named(true), named(false));
    let execs: u64 = smoke.runs.iter().filter_map(|r| r.execs).sum();
    let took: f64 = smoke.runs.iter().map(|r| r.took.as_secs_f64()).sum();
    let line = format!(
        "fuzz: {} targets, {FUZZ_SECS} s each: {} passed, {} crashed, {} could not run; {execs} inputs (build {:.0} s, runs {took:.0} s)",
        smoke.runs.len(),
        smoke.runs.len() - crashed.len() - broken.len(),
        crashed.len(),
        broken.len(),
        smoke.build.as_secs_f64(),
    );
    let result = if !crashed.is_empty() {
        Err(anyhow::anyhow!(
            "fuzz targets crashed: {} (inputs saved in fuzz/regressions/)",
            crashed.join(", ")
        ))
    } else if !broken.is_empty() && ci {
        Err(anyhow::anyhow!(
            "fuzz targets could not run in CI: {}",
            broken.join(", ")
        ))
    } else {
        Ok(())
    };
    (line, result)
}

/// Sums of `test result:` lines.
#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Totals {
    fn add(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(label), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match label {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

fn run_demo(keep: bool) -> Result<()> {
    if !setup::is_root() {
        bail!("the demo builds network namespaces and loads XDP programs: run it as root (sudo cargo xtask demo)");
    }
    cargo(&["build", "--workspace", "--release", "--bins"])?;
    demo::run(&workspace_root().join("target/release"), keep)
}
