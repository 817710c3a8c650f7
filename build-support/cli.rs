//! What the command lines of `sluice-lb` and `sluice-gateway` share: the version string, and
//! the man pages and shell completions each binary writes of itself for `cargo xtask
//! package`. Included by both `main.rs` files with `#[path]`.
//!
//! The binary writes them because only it has its clap definition: `xtask` must stay free of
//! the aya and gateway crates (it builds before setup has installed the eBPF toolchain), and
//! what is documented is then exactly what was built.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// `--version`: the crate's version and the commit it was built from, `0.1.0 (abc1234)`
/// (`SLUICE_GIT_COMMIT`, set by the build script; "unknown" outside a git checkout).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("SLUICE_GIT_COMMIT"),
    ")"
);

/// The first argument that asks for the docs: `<binary> __docs <dir>`. It is not a subcommand
/// of the clap definition, since clap's completion generators list hidden subcommands too: no
/// help text, man page or completion offers it.
pub const DOCS_ARG: &str = "__docs";

/// If the binary was started as `<binary> __docs <dir>`, writes the docs of `cmd` under `dir`
/// and returns the outcome; otherwise returns None and the binary parses its arguments.
///
/// Writes `<dir>/man/man1/`, one page per command (`sluice-lb.1`, `sluice-lb-run.1`, ...;
/// `<dir>/man` is a man path), and `<dir>/completions/`: `<bin>.bash`, `_<bin>` (zsh) and
/// `<bin>.fish`.
pub fn docs_requested(cmd: impl FnOnce() -> clap::Command) -> Option<Result<()>> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if args.first().is_none_or(|a| a != DOCS_ARG) {
        return None;
    }
    Some(match &args[1..] {
        [dir] => write_docs(cmd(), Path::new(dir)),
        _ => Err(anyhow::anyhow!("usage: {DOCS_ARG} <directory>")),
    })
}

fn write_docs(cmd: clap::Command, dir: &Path) -> Result<()> {
    let name = cmd.get_name().to_string();
    if name.is_empty() {
        bail!("the command has no name");
    }
    let man = dir.join("man").join("man1");
    let completions = dir.join("completions");
    for d in [&man, &completions] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    clap_mangen::generate_to(cmd.clone(), &man)
        .with_context(|| format!("writing the man pages into {}", man.display()))?;
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut cmd.clone(), &name, &completions)
            .with_context(|| format!("writing the {shell} completions"))?;
    }
    println!("{}", dir.display());
    Ok(())
}
