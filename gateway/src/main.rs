//! `sluice-gateway` command line.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};

#[path = "../../build-support/cli.rs"]
mod cli;

/// mimalloc rather than glibc's malloc. A request's allocations come and go in the same few
/// size classes on many connections at once, which overflows glibc's small per-thread cache
/// into its shared bins; mimalloc's free lists are per page. About 2 % more requests/s in the
/// setup of `cargo xtask bench gateway`. Its v2 line: v3 kept a quarter more memory resident with
/// 10,000 idle connections, v2 about 8 % more than glibc.
///
/// Built without transparent huge pages (`no_thp`): mimalloc otherwise marks its 1 GiB arena
/// `MADV_HUGEPAGE`, and every 2 MiB of it touched becomes resident whole. (This removes the
/// request for huge pages, as the kernel's default `madvise` mode needs; a host set to THP
/// `always` backs them anyway.) That held 4.5 MiB of
/// heap in an idle gateway against 0.8 MiB without, and 3.5 MiB more with 10,000 idle
/// connections, for no requests/s measurable on `cargo xtask bench gateway`'s route.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The Sluice L7 API gateway.
#[derive(Parser)]
#[command(version = cli::VERSION, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with the config file; SIGHUP or a change to the file reloads it, SIGTERM drains
    /// and stops.
    Run {
        /// Config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Workers (default: one per CPU). Above one, each is a thread with its own runtime
        /// and its own `SO_REUSEPORT` socket on every listener, and a connection stays on the
        /// worker that accepted it; one worker serves on the main thread. 1 to 1024.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
        workers: Option<u16>,
    },
    /// Validate a config file.
    Check {
        /// Config file.
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// A gateway holds one descriptor per connection: use the hard limit, not the soft one.
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on our own process with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn main() -> Result<()> {
    if let Some(done) = cli::docs_requested(Cli::command) {
        return done;
    }
    // One JSON line per event; the access log is the `access` target.
    tracing_subscriber::fmt()
        .json()
        .with_current_span(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match Cli::parse().command {
        Command::Run { config, workers } => {
            raise_nofile();
            // The main thread's runtime: the only one with one worker; with more, each worker
            // is a thread with a current-thread runtime of its own (`server::workers`), and
            // this one runs reloads, the admin API and health checks.
            let threads = workers.map(usize::from).unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
            });
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?
                .block_on(sluice_gateway::server::run(config, threads))
        }
        Command::Check { config } => {
            // Built as a run would build it (certificates, keys and patterns included),
            // without binding or starting anything.
            let built = sluice_gateway::generation::load(&config, 1, None)?;
            let c = &built.runtime.config;
            println!(
                "{}: ok ({} listeners, {} routes, {} upstreams)",
                config.display(),
                c.listeners.len(),
                c.routes.len(),
                c.upstreams.len()
            );
            Ok(())
        }
    }
}
