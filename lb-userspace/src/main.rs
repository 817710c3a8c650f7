//! `sluice-lb` command line.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sluice_lb::dataplane::{DataPlane, LoadOptions};

/// The Sluice L4 load balancer's agent and CLI.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load both programs through the kernel verifier without attaching them, and report
    /// their sizes: a quick check that this kernel accepts the embedded data plane.
    Verify,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Verify => verify(),
    }
}

fn verify() -> Result<()> {
    let mut dp = DataPlane::load(&LoadOptions::default()).context("creating the maps")?;
    for name in [sluice_common::programs::LB, sluice_common::programs::DECAP] {
        let prog = dp
            .program(name)
            .with_context(|| format!("loading {name}"))?;
        let info = prog.info().context("reading program info")?;
        println!(
            "{name}: verified, {} bytes translated, {} bytes JIT-compiled",
            info.size_translated().unwrap_or(0),
            info.size_jitted()
        );
    }
    Ok(())
}
