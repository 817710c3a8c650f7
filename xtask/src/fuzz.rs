//! `cargo xtask fuzz`: the libFuzzer targets of `fuzz/` (cargo-fuzz on the nightly
//! toolchain) and the data plane's packet fuzzer; and the short run of every libFuzzer
//! target that `cargo xtask test` makes.
//!
//! `cargo xtask fuzz` builds the release profile (optimized); `cargo xtask test` the dev
//! profile (`--dev`, incremental and lightly optimized: a change to the gateway rebuilds in
//! seconds, where the release build takes minutes). Both keep debug assertions, overflow
//! checks and AddressSanitizer.
//!
//! A target runs from its committed seeds (`fuzz/corpus/<target>/`) and past crashes
//! (`fuzz/regressions/<target>/`), with its dictionary (`fuzz/dict/<target>.dict`), and grows
//! a working corpus in `target/fuzz-corpus/`, which later runs start from. libFuzzer's output goes to `target/fuzz-logs/<target>.log`.
//! A crash is saved by cargo-fuzz in `fuzz/artifacts/<target>/` and copied here to
//! `fuzz/regressions/<target>/`, which the tested crate's `cargo test` replays
//! (`tests/fuzz_replay.rs`): it fails there until the bug is fixed.

use std::{
    collections::BTreeSet,
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// What became of one target's run.
pub enum Verdict {
    /// It ran its time out.
    Passed,
    /// An input broke an invariant (or crashed, leaked, hung or ran out of memory).
    Crashed {
        /// The saved inputs.
        saved: Vec<PathBuf>,
        /// Why, from libFuzzer's output (the panic's message), and the input itself: printed
        /// with the verdict, so a crash on a machine whose files are gone (CI's) can be
        /// replayed from its output alone.
        why: String,
    },
    /// It could not be run at all.
    Failed(String),
}

/// One target's run.
pub struct Run {
    /// The target.
    pub target: String,
    /// Inputs executed, from libFuzzer's last line.
    pub execs: Option<u64>,
    /// Coverage (edges) reached, from libFuzzer's last line.
    pub cov: Option<u64>,
    /// Wall time of the run.
    pub took: Duration,
    /// How it ended.
    pub verdict: Verdict,
}

/// Environment a nested cargo must not inherit from the `cargo xtask` that runs it: the
/// stable toolchain's choice, wrappers and flags (as `lb-userspace/build.rs` does).
const LEAKS: &[&str] = &[
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
];

/// How the targets are built.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Optimized, for long runs.
    Release,
    /// Incremental, for short ones.
    Dev,
}

/// `cargo fuzz <command> [--dev] <args>` on nightly, from the workspace root, for `fuzz/`.
fn cargo_fuzz(root: &Path, command: &str, profile: Profile, args: &[&str]) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        "nightly",
        "cargo",
        "fuzz",
        command,
        "--fuzz-dir",
        "fuzz",
    ])
    .current_dir(root);
    if profile == Profile::Dev {
        cmd.arg("--dev");
    }
    // After the options: a run's `--` and libFuzzer's flags come last.
    cmd.args(args);
    for var in LEAKS {
        cmd.env_remove(var);
    }
    cmd
}

/// The libFuzzer targets: `fuzz/fuzz_targets/*.rs`, by name.
pub fn targets(root: &Path) -> Result<Vec<String>> {
    let dir = root.join("fuzz/fuzz_targets");
    let mut names: Vec<String> = fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            (p.extension()? == "rs").then(|| p.file_stem()?.to_str().map(str::to_string))?
        })
        .collect();
    names.sort();
    Ok(names)
}

/// The crate whose `cargo test` replays `target`'s saved inputs.
fn replayed_by(root: &Path, target: &str) -> &'static str {
    let source = fs::read_to_string(root.join(format!("fuzz/fuzz_targets/{target}.rs")));
    if source.is_ok_and(|s| s.contains("sluice_fuzz::lb::")) {
        "sluice-lb"
    } else {
        "sluice-gateway"
    }
}

/// Builds every target (AddressSanitizer, coverage, debug assertions), timed.
pub fn build(root: &Path, profile: Profile) -> Result<Duration> {
    let start = Instant::now();
    let out = cargo_fuzz(root, "build", profile, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context(
            "running `rustup run nightly cargo fuzz build` (cargo xtask setup installs cargo-fuzz)",
        )?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "building the fuzz targets failed ({}):\n{}",
            out.status,
            tail.join("\n")
        );
    }
    Ok(start.elapsed())
}

fn artifacts(dir: &Path) -> BTreeSet<PathBuf> {
    fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Runs `target` for `secs` seconds. With `echo`, libFuzzer's progress is printed as it
/// comes (not each new corpus entry); the whole output is in `target/fuzz-logs/`.
pub fn run(root: &Path, target: &str, profile: Profile, secs: u64, echo: bool) -> Result<Run> {
    let work = root.join("target/fuzz-corpus").join(target);
    let logs = root.join("target/fuzz-logs");
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let log_path = logs.join(format!("{target}.log"));
    let mut log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let artifact_dir = root.join("fuzz/artifacts").join(target);
    let before = artifacts(&artifact_dir);

    // libFuzzer writes new inputs to the first corpus directory only.
    let mut corpora = vec![work, root.join("fuzz/corpus").join(target)];
    let regressions = root.join("fuzz/regressions").join(target);
    if regressions.is_dir() {
        corpora.push(regressions.clone());
    }
    let corpora: Vec<String> = corpora.iter().map(|p| p.display().to_string()).collect();
    let mut args = vec![target];
    args.extend(corpora.iter().map(String::as_str));
    let time = format!("-max_total_time={secs}");
    // An input taking 25 s is a hang (a client or upstream could make the gateway spin).
    args.extend(["--", &time, "-timeout=25", "-print_final_stats=1"]);
    // The target's tokens (field names, escapes, header names), which mutations splice in.
    let dict_file = root.join("fuzz/dict").join(format!("{target}.dict"));
    let dict = format!("-dict={}", dict_file.display());
    if dict_file.is_file() {
        args.push(&dict);
    }

    let start = Instant::now();
    let mut child = cargo_fuzz(root, "run", profile, &args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running `rustup run nightly cargo fuzz run`")?;
    // stdout is only the target's own printing, if any: folded into the log after stderr.
    let stdout = child.stdout.take();
    let (mut execs, mut cov) = (None, None);
    if let Some(err) = child.stderr.take() {
        for line in BufReader::new(err).lines() {
            let line = line.context("reading libFuzzer's output")?;
            writeln!(log, "{line}").context("writing the fuzz log")?;
            if let Some(n) = stat(&line, "stat::number_of_executed_units:") {
                execs = Some(n);
            }
            if let Some(n) = libfuzzer_field(&line, "cov:") {
                cov = Some(n);
            }
            // libFuzzer's `#N<tab>NEW …` and `#N<tab>REDUCE …`: one per corpus change.
            let progress = line.starts_with('#')
                && matches!(line.split_whitespace().nth(1), Some("NEW" | "REDUCE"));
            if echo && !progress {
                eprintln!("{line}");
            }
        }
    }
    if let Some(out) = stdout {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            writeln!(log, "{line}").context("writing the fuzz log")?;
        }
    }
    let status = child.wait().context("waiting for cargo fuzz")?;
    let took = start.elapsed();
    let new: Vec<PathBuf> = artifacts(&artifact_dir)
        .difference(&before)
        .cloned()
        .collect();
    let verdict = if status.success() && new.is_empty() {
        Verdict::Passed
    } else if !new.is_empty() {
        let mut saved = Vec::new();
        for a in &new {
            let name = a.file_name().and_then(|n| n.to_str()).unwrap_or("input");
            // Crashes become regression tests; a hang or an allocation blow-up is reported
            // where cargo-fuzz left it (a plain test cannot tell it from a slow machine).
            if name.starts_with("crash-") {
                fs::create_dir_all(&regressions)?;
                // A saved regression that crashes again is not saved twice.
                let bytes = fs::read(a).with_context(|| format!("reading {}", a.display()))?;
                let known = artifacts(&regressions)
                    .into_iter()
                    .find(|r| fs::read(r).is_ok_and(|b| b == bytes));
                let dest = match known {
                    Some(r) => r,
                    None => {
                        let dest = regressions.join(name);
                        fs::write(&dest, &bytes)
                            .with_context(|| format!("writing {}", dest.display()))?;
                        dest
                    }
                };
                saved.push(dest);
            } else {
                saved.push(a.clone());
            }
        }
        // Lossy: a panic message may quote the input's bytes.
        let text = String::from_utf8_lossy(&fs::read(&log_path).unwrap_or_default()).into_owned();
        let input = new
            .iter()
            .find_map(|a| fs::read(a).ok())
            .map(|b| shown_input(&b))
            .unwrap_or_default();
        Verdict::Crashed {
            saved,
            why: format!("{}\n  input: {input}", crash_reason(&text)),
        }
    } else {
        let text = fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Verdict::Failed(format!(
            "{status}; the end of {}:\n{}",
            log_path.display(),
            tail.join("\n")
        ))
    };
    Ok(Run {
        target: target.to_string(),
        execs,
        cov,
        took,
        verdict,
    })
}

/// The lines of libFuzzer's output that say why it stopped: a panic's location and
/// message (up to the backtrace note), else libFuzzer's or the sanitizer's error line.
fn crash_reason(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    if let Some(i) = lines.iter().position(|l| l.contains("panicked at")) {
        let message: Vec<&str> = lines[i..]
            .iter()
            .take(6)
            .take_while(|l| !l.starts_with("note:") && !l.starts_with("=="))
            .copied()
            .collect();
        return message.join("\n  ");
    }
    lines
        .iter()
        .find(|l| l.contains("ERROR: libFuzzer:") || l.contains("ERROR: AddressSanitizer"))
        .map_or_else(
            || "no panic or error line in libFuzzer's output".to_string(),
            |l| l.trim().to_string(),
        )
}

/// A crashing input as an escaped byte string, cut at 2,000 bytes.
fn shown_input(bytes: &[u8]) -> String {
    const MAX: usize = 2000;
    let shown = bytes[..bytes.len().min(MAX)].escape_ascii().to_string();
    if bytes.len() > MAX {
        format!("b\"{shown}\" … ({} bytes in all)", bytes.len())
    } else {
        format!("b\"{shown}\"")
    }
}

/// `stat::name: N` from `-print_final_stats`.
fn stat(line: &str, name: &str) -> Option<u64> {
    line.strip_prefix(name)?.trim().parse().ok()
}

/// The number after `name` in a libFuzzer status line (`#123 pulse cov: 456 ft: …`).
fn libfuzzer_field(line: &str, name: &str) -> Option<u64> {
    if !line.starts_with('#') {
        return None;
    }
    let mut words = line.split_whitespace();
    words.find(|w| *w == name)?;
    words.next()?.parse().ok()
}

/// One line about a run, and what to do about a crash.
pub fn report(root: &Path, run: &Run) -> String {
    let execs = run.execs.map_or("?".into(), |n| n.to_string());
    let cov = run.cov.map_or("?".into(), |n| n.to_string());
    let head = format!(
        "fuzz {}: {execs} inputs in {:.0} s, coverage {cov}",
        run.target,
        run.took.as_secs_f64()
    );
    match &run.verdict {
        Verdict::Passed => format!("{head}, ok"),
        Verdict::Failed(why) => format!("{head}: could not run: {why}"),
        Verdict::Crashed { saved, why } => {
            let mut s = format!(
                "{head}: CRASHED (libFuzzer's output: target/fuzz-logs/{}.log)\n  {why}",
                run.target
            );
            for p in saved {
                let shown = p.strip_prefix(root).unwrap_or(p);
                s.push_str(&format!("\n  saved: {}", shown.display()));
            }
            s.push_str(&format!(
                "\n  replay: cargo test -p {} --test fuzz_replay {}\n  minimize: rustup run nightly cargo fuzz tmin --fuzz-dir fuzz {} <input>",
                replayed_by(root, &run.target),
                run.target,
                run.target
            ));
            s
        }
    }
}

/// `cargo xtask fuzz [TARGET] [--time SECONDS]`: builds, then runs each chosen libFuzzer
/// target for `secs`; `packets` (or every target) also runs the packet fuzzer on
/// 1,000,000 frames, which needs root.
pub fn command(root: &Path, target: Option<&str>, secs: u64) -> Result<()> {
    let all = targets(root)?;
    let (chosen, packets): (Vec<String>, bool) = match target {
        None => (all.clone(), true),
        Some("packets") => (Vec::new(), true),
        Some(t) if all.iter().any(|a| a == t) => (vec![t.to_string()], false),
        Some(t) => bail!(
            "no fuzz target {t:?}: the targets are {}, and packets",
            all.join(", ")
        ),
    };
    let mut failed = Vec::new();
    if !chosen.is_empty() {
        eprintln!(
            "fuzz: building {} target(s) (cargo fuzz build, nightly)",
            all.len()
        );
        let took = build(root, Profile::Release)?;
        eprintln!("fuzz: built in {:.0} s", took.as_secs_f64());
        let mut runs = Vec::new();
        for t in &chosen {
            eprintln!("fuzz: {t} for {secs} s");
            let r = run(root, t, Profile::Release, secs, true)?;
            eprintln!("{}", report(root, &r));
            runs.push(r);
        }
        println!("fuzz summary:");
        for r in &runs {
            println!("{}", report(root, r));
            if !matches!(r.verdict, Verdict::Passed) {
                failed.push(r.target.clone());
            }
        }
    }
    if packets {
        if crate::setup::is_root() {
            packet_fuzzer(root)?;
        } else if target.is_some() {
            bail!("the packet fuzzer loads XDP programs: run it as root (sudo cargo xtask fuzz packets)");
        } else {
            println!("fuzz packets: skipped (not root; run sudo cargo xtask fuzz packets)");
        }
    }
    if !failed.is_empty() {
        bail!("fuzz targets failed: {}", failed.join(", "));
    }
    Ok(())
}

/// The data plane's packet fuzzer (`lb-userspace/tests/dataplane/fuzz/`) on 1,000,000
/// frames.
fn packet_fuzzer(root: &Path) -> Result<()> {
    eprintln!("fuzz packets: 1,000,000 frames through sluice_lb against the reference model");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "test",
            "-p",
            "sluice-lb",
            "--test",
            "dataplane",
            "fuzzed_frames_match_the_reference_model",
        ])
        .env("SLUICE_FUZZ_PACKETS", "1000000")
        .current_dir(root)
        .status()
        .context("running the packet fuzzer")?;
    if !status.success() {
        bail!("the packet fuzzer failed ({status})");
    }
    println!("fuzz packets: 1,000,000 frames, ok");
    Ok(())
}

/// What `cargo xtask test` says about its short run of every target.
pub struct Smoke {
    /// Each target's run.
    pub runs: Vec<Run>,
    /// The build's time.
    pub build: Duration,
}

/// Builds every target and runs each for `secs` seconds, quietly: the short run of
/// `cargo xtask test`. `Err`: the fuzzers could not be built (or cargo-fuzz is missing).
pub fn smoke(root: &Path, secs: u64) -> Result<Smoke> {
    let build = build(root, Profile::Dev)?;
    let mut runs = Vec::new();
    for t in targets(root)? {
        let r = run(root, &t, Profile::Dev, secs, false)?;
        println!("{}", report(root, &r));
        runs.push(r);
    }
    Ok(Smoke { runs, build })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panic's message reaches the report; libFuzzer's own error stands in for none.
    #[test]
    fn the_reason_for_a_crash_is_taken_from_the_log() {
        let log = "#2 INITED cov: 10\n\
                   thread '<unnamed>' (5847) panicked at src/gateway/jwt.rs:272:17:\n\
                   claims {\"nbf\":1e+20} accepted\n\
                   note: run with `RUST_BACKTRACE=1`\n\
                   ==5847== ERROR: libFuzzer: deadly signal\n";
        assert_eq!(
            crash_reason(log),
            "thread '<unnamed>' (5847) panicked at src/gateway/jwt.rs:272:17:\n  \
             claims {\"nbf\":1e+20} accepted"
        );
        assert_eq!(
            crash_reason("x\n==1== ERROR: libFuzzer: out-of-memory (malloc(9))\n"),
            "==1== ERROR: libFuzzer: out-of-memory (malloc(9))"
        );
        assert_eq!(shown_input(b"\x01a\"\xff"), "b\"\\x01a\\\"\\xff\"");
    }
}
