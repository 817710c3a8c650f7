//! `sluice-lb`: the L4 agent and CLI.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use hyper::{body::Bytes, Method};
use sluice_lb::{
    admin, agent, attach, config,
    dataplane::{self, DataPlane, LoadOptions},
};

use sluice_util::admin::Token;

#[path = "../../build-support/cli.rs"]
mod cli;

/// The Sluice L4 load balancer's agent and CLI.
#[derive(Parser)]
#[command(version = cli::VERSION, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The admin token file (`admin.token_file` in the agent's config), presented by the
    /// commands that change state (drain, undrain, weight, block, unblock, maintenance) and
    /// read by them only; `run` takes its token from its config. Without a token file the
    /// agent takes changes only from its own host.
    #[arg(
        long,
        global = true,
        env = "SLUICE_ADMIN_TOKEN_FILE",
        value_name = "FILE"
    )]
    token_file: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Auto,
    Native,
    Generic,
}

#[derive(Clone, Copy, ValueEnum)]
enum Switch {
    On,
    Off,
}

#[derive(Subcommand)]
enum Command {
    /// Attach the data plane, keep it in line with the config and the backends' health, and
    /// serve the admin API. SIGHUP or a change to the file reloads it.
    Run {
        /// Config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Force the XDP mode (default: the config's, which defaults to native with a
        /// fallback to generic).
        #[arg(long, value_enum)]
        xdp_mode: Option<Mode>,
        /// Load the programs with aya-log debug output (every packet then takes the general,
        /// slower path, which logs each decision).
        #[arg(long)]
        debug: bool,
    },
    /// Validate a config file.
    Check {
        /// Config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Show VIPs, backends, traffic and drop reasons.
    Status {
        /// Admin API address.
        #[arg(long, default_value = "127.0.0.1:9180")]
        admin: SocketAddr,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop sending new flows to a backend; its established flows stay.
    Drain {
        /// Backend address.
        backend: IpAddr,
        /// Admin API address.
        #[arg(long, default_value = "127.0.0.1:9180")]
        admin: SocketAddr,
    },
    /// Undo `drain`.
    Undrain {
        /// Backend address.
        backend: IpAddr,
        /// Admin API address.
        #[arg(long, default_value = "127.0.0.1:9180")]
        admin: SocketAddr,
    },
    /// Set a backend's weight in every VIP, or without N go back to the configured one.
    Weight {
        /// Backend address.
        backend: IpAddr,
        /// New weight (0 to 1000).
        weight: Option<u32>,
        /// Admin API address.
        #[arg(long, default_value = "127.0.0.1:9180")]
        admin: SocketAddr,
    },
    /// Drop every packet from a source prefix to any VIP, in XDP, until the TTL passes.
    Block {
        /// A prefix (`198.51.100.0/24`, `2001:db8::/48`) or an address.
        prefix: String,
        /// How long: `90s`, `10m`, `2h`, `1d` (at most the config's `max_ttl_secs`).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        /// Text shown with the entry in `status`.
        #[arg(long, default_value = "")]
        reason: String,
        /// Allow a prefix wider than /16 (IPv4) or /32 (IPv6).
        #[arg(long)]
        force: bool,
        /// Admin API address.
        #[arg(long, default_value = "127.0.0.1:9180")]
        admin: SocketAddr,
    },
    /// Remove a block.
    Unblock {
        /// The prefix or address, as it was blocked.
        prefix: String,
        /// Admin API address.
        #[arg(long, default_value = "127.0.0.1:9180")]
        admin: SocketAddr,
    },
    /// Withdraw every VIP from BGP (`on`) before work on this node, or announce again
    /// (`off`); kept across agent restarts.
    Maintenance {
        /// `on` or `off`.
        #[arg(value_enum)]
        switch: Switch,
        /// Admin API address.
        #[arg(long, default_value = "127.0.0.1:9180")]
        admin: SocketAddr,
    },
    /// Remove the programs, links and maps pinned under the config's pin directory.
    Detach {
        /// Config file (for its pin directory, and its `[bgp]` to withdraw the VIPs).
        #[arg(long, short, conflicts_with = "pin_dir")]
        config: Option<PathBuf>,
        /// Detach even when the VIPs could not be withdrawn from BGP (the routers then go on
        /// sending to a node that drops what it gets).
        #[arg(long)]
        force: bool,
        /// Pin directory (without this or --config: /sys/fs/bpf/sluice, the forwarder's
        /// default; a gateway node's decap is under /sys/fs/bpf/sluice-decap).
        #[arg(long)]
        pin_dir: Option<PathBuf>,
    },
    /// On a gateway node: attach `sluice_decap` to an interface, accepting tunnels to the
    /// given local addresses (none: pass every frame), pinned under the pin directory; the
    /// command returns and the program stays until `detach --pin-dir` of that directory.
    Decap {
        /// Interface.
        #[arg(long)]
        iface: String,
        /// Local tunnel endpoint addresses.
        #[arg(long = "addr")]
        addrs: Vec<IpAddr>,
        /// Outer source prefixes tunnels are taken from: the LB nodes' tunnel sources
        /// (`node.tunnel_source_v4`/`_v6`, with their entropy bits). Others' tunnels are
        /// dropped. Without it, tunnels are taken from anyone (with a warning).
        #[arg(long = "from", value_name = "PREFIX")]
        from: Vec<ipnet::IpNet>,
        /// Pin directory.
        #[arg(long, default_value = "/sys/fs/bpf/sluice-decap")]
        pin_dir: PathBuf,
        /// XDP mode.
        #[arg(long, value_enum, default_value = "auto")]
        xdp_mode: Mode,
    },
    /// Print `sluice_decap`'s counters (decapsulated, refused by reason, malformed) from
    /// the maps pinned under the pin directory, summed over CPUs.
    DecapStats {
        /// Pin directory, as given to `decap`.
        #[arg(long, default_value = "/sys/fs/bpf/sluice-decap")]
        pin_dir: PathBuf,
        /// JSON: an object of counter name to count.
        #[arg(long)]
        json: bool,
    },
    /// Load both programs through the kernel verifier without attaching them, and report
    /// their sizes: a quick check that this kernel accepts the embedded data plane.
    Verify,
}

impl From<Mode> for config::XdpMode {
    fn from(m: Mode) -> Self {
        match m {
            Mode::Auto => config::XdpMode::Auto,
            Mode::Native => config::XdpMode::Native,
            Mode::Generic => config::XdpMode::Generic,
        }
    }
}

fn main() -> Result<()> {
    if let Some(done) = cli::docs_requested(Cli::command) {
        return done;
    }
    // Logs go to stderr, so a command's own output (`status --json`) stays clean on stdout,
    // and carry colour codes only for a terminal, not into a log file.
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    // Read by the commands that change state only: an unreadable file named in the
    // environment must not stop `status`, `detach` or `run`.
    let token = cli.token_file.as_deref();
    match cli.command {
        Command::Run {
            config,
            xdp_mode,
            debug,
        } => rt.block_on(agent::run(&config, debug, xdp_mode.map(Into::into))),
        Command::Check { config } => check(&config),
        Command::Status { admin, json } => rt.block_on(status(admin, json)),
        Command::Drain { backend, admin } => {
            rt.block_on(post(admin, &format!("/backends/{backend}/drain"), token))
        }
        Command::Undrain { backend, admin } => {
            rt.block_on(post(admin, &format!("/backends/{backend}/undrain"), token))
        }
        Command::Weight {
            backend,
            weight,
            admin,
        } => {
            let path = match weight {
                Some(w) => format!("/backends/{backend}/weight?value={w}"),
                None => format!("/backends/{backend}/weight"),
            };
            rt.block_on(post(admin, &path, token))
        }
        Command::Block {
            prefix,
            ttl,
            reason,
            force,
            admin,
        } => {
            let body = admin::BlockBody {
                prefix,
                ttl_ms: ttl.as_millis().try_into().unwrap_or(u64::MAX),
                reason,
                force,
            };
            rt.block_on(post_json(admin, "/shield/block", &body, token))
        }
        Command::Unblock { prefix, admin } => {
            let body = admin::BlockBody {
                prefix,
                ttl_ms: 0,
                reason: String::new(),
                force: false,
            };
            rt.block_on(post_json(admin, "/shield/unblock", &body, token))
        }
        Command::Maintenance { switch, admin } => {
            let path = match switch {
                Switch::On => "/maintenance/on",
                Switch::Off => "/maintenance/off",
            };
            rt.block_on(post(admin, path, token))
        }
        Command::Detach {
            config,
            force,
            pin_dir,
        } => detach(config, pin_dir, force),
        Command::Verify => verify(),
        Command::DecapStats { pin_dir, json } => decap_stats(&pin_dir, json),
        Command::Decap {
            iface,
            addrs,
            from,
            pin_dir,
            xdp_mode,
        } => decap(&iface, &addrs, &from, &pin_dir, xdp_mode.into()),
    }
}

fn check(config: &Path) -> Result<()> {
    let c = config::load(config)?;
    // BIRD's own parse of the config the agent would write, where BIRD is here to ask.
    let bird = match &c.bgp {
        Some(b) => match sluice_lb::bgp::bird::parse_check(b)
            .with_context(|| format!("{}: bgp", config.display()))?
        {
            true => ", BIRD parses its BGP config",
            false => ", BGP config not parsed: no BIRD binary here",
        },
        None => "",
    };
    println!(
        "{}: ok ({} VIPs, {} interfaces{bird})",
        config.display(),
        c.vips.len(),
        c.node.interfaces.len()
    );
    Ok(())
}

fn detach(config: Option<PathBuf>, pin_dir: Option<PathBuf>, force: bool) -> Result<()> {
    let (dir, bgp) = match (config, pin_dir) {
        (Some(c), _) => {
            let c = config::load(&c)?;
            (c.node.pin_dir, c.bgp)
        }
        (None, Some(d)) => (d, None),
        (None, None) => (PathBuf::from("/sys/fs/bpf/sluice"), None),
    };
    // A detached node drops what reaches it: withdraw first, so the routers stop sending.
    if let Some(bgp) = bgp {
        match sluice_lb::bgp::bird::withdraw_all(&bgp) {
            Ok(()) => {
                println!(
                    "withdrew every VIP from BGP (BIRD keeps running, announcing nothing); \
                     waiting {} ms for the routers to move the flows",
                    bgp.withdraw_delay_ms
                );
                // As a graceful stop does: what the routers still send meanwhile is forwarded.
                std::thread::sleep(std::time::Duration::from_millis(bgp.withdraw_delay_ms));
            }
            Err(e) if e.is_absent() => {
                println!("BIRD is not running ({e}): nothing is announced to withdraw")
            }
            Err(e) if force => eprintln!("warning: could not withdraw the VIPs from BGP: {e}"),
            Err(e) => bail!(
                "could not withdraw the VIPs from BGP, so nothing was detached (the routers \
                 would go on sending here): {e}; --force detaches anyway"
            ),
        }
    }
    let n = attach::detach(&dir)?;
    println!("removed {n} pinned objects under {}", dir.display());
    Ok(())
}

fn decap(
    iface: &str,
    addrs: &[IpAddr],
    from: &[ipnet::IpNet],
    pin_dir: &Path,
    mode: config::XdpMode,
) -> Result<()> {
    attach::ensure_bpffs(pin_dir)?;
    let mut dp = DataPlane::load(&LoadOptions {
        pin_dir: Some(pin_dir.to_owned()),
        flow_table_size: Some(1024),
        ..Default::default()
    })?;
    attach::attach_decap(&mut dp, pin_dir, iface, addrs, from, mode)?;
    let sources = if from.is_empty() {
        "from any source".to_string()
    } else {
        format!("from {} source prefixes", from.len())
    };
    println!(
        "sluice_decap on {iface} ({} tunnel addresses, {sources})",
        addrs.len()
    );
    Ok(())
}

fn decap_stats(pin_dir: &Path, json: bool) -> Result<()> {
    let maps = dataplane::pinned_maps_dir(pin_dir);
    if !maps.is_dir() {
        bail!(
            "no maps pinned under {}: is sluice_decap attached with this --pin-dir?",
            pin_dir.display()
        );
    }
    let mut counts = serde_json::Map::new();
    for (outcome, n) in dataplane::pinned_decap_counts(&maps)? {
        // A counter the running build does not have: absent, not zero.
        let Some(n) = n else { continue };
        if json {
            counts.insert(outcome.name().to_string(), n.into());
        } else {
            println!("{:<18} {n}", outcome.name());
        }
    }
    if json {
        println!("{}", serde_json::Value::Object(counts));
    }
    Ok(())
}

/// The admin token in `file` (`--token-file`), if one is named.
fn read_token(file: Option<&Path>) -> Result<Option<Token>> {
    file.map(|f| Token::read(f).map_err(|e| anyhow::anyhow!("--token-file: {e}")))
        .transpose()
}

async fn post(admin: SocketAddr, path: &str, token: Option<&Path>) -> Result<()> {
    let token = read_token(token)?;
    let (code, body) =
        admin::call_with(admin, Method::POST, path, Bytes::new(), token.as_ref()).await?;
    if !code.is_success() {
        bail!("{code}: {body}");
    }
    println!("ok");
    Ok(())
}

async fn post_json(
    admin: SocketAddr,
    path: &str,
    body: &admin::BlockBody,
    token: Option<&Path>,
) -> Result<()> {
    let token = read_token(token)?;
    let body = serde_json::to_vec(body)?;
    let (code, text) =
        admin::call_with(admin, Method::POST, path, body.into(), token.as_ref()).await?;
    if !code.is_success() {
        let detail = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("detail").and_then(|d| d.as_str()).map(str::to_owned))
            .unwrap_or(text);
        bail!("{code}: {detail}");
    }
    println!("ok");
    Ok(())
}

async fn status(admin: SocketAddr, json: bool) -> Result<()> {
    let s = admin::status(admin).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    for v in &s.vips {
        println!("VIP {}  packets {}  bytes {}", v.vip, v.packets, v.bytes);
        println!(
            "  {:<40} {:<9} {:>6} {:>12} {:>14} {:>10} {:>12}",
            "backend", "state", "weight", "packets", "bytes", "pkt/s", "B/s"
        );
        for b in &v.backends {
            println!(
                "  {:<40} {:<9} {:>6} {:>12} {:>14} {:>10.0} {:>12.0}",
                b.address,
                b.state,
                b.weight,
                b.packets,
                b.bytes,
                b.packets_per_second,
                b.bytes_per_second
            );
            if let Some(f) = b.load_factor {
                println!(
                    "    load weight: {:.2} x configured {} = {}",
                    f, b.configured_weight, b.weight
                );
            }
            if let Some(seen) = b.load {
                let l = seen.report;
                println!(
                    "    load: cpu {:.0}% of {} CPUs, {:.0} req/s, {:.1}% 5xx, p99 {:.1} ms, in flight {:.1} (reported {:.1} s ago)",
                    l.cpu_utilization * 100.0,
                    l.usable_cpus,
                    l.rps,
                    if l.rps > 0.0 { l.eps / l.rps * 100.0 } else { 0.0 },
                    l.p99_ms,
                    l.in_flight,
                    seen.age_ms as f64 / 1e3
                );
                // The weights' input: the gateway's held estimate.
                match l.capacity {
                    Some(c) => println!("    capacity: {c:.0} req/s at full use of its CPUs"),
                    None => println!("    capacity: no estimate yet"),
                }
            }
        }
    }
    let drops: Vec<String> = s
        .outcomes
        .iter()
        .filter(|(name, n)| *n > 0 && !["pass", "tx", "redirect"].contains(&name.as_str()))
        .map(|(name, n)| format!("{name}={n}"))
        .collect();
    println!(
        "outcomes: {}",
        s.outcomes
            .iter()
            .map(|(n, c)| format!("{n}={c}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "other than forwarded or passed: {}",
        if drops.is_empty() {
            "none".to_string()
        } else {
            drops.join(" ")
        }
    );
    print_shield(&s.shield);
    print_bgp(&s.bgp);
    println!(
        "table generation {}, last disruption {:.2}%, config generation {} ({})",
        s.table_generation,
        100.0 * s.last_disruption,
        s.config.generation,
        s.config
            .last_error
            .as_deref()
            .map(|e| format!("last reload refused: {e}"))
            .unwrap_or_else(|| "last reload ok".into())
    );
    Ok(())
}

fn print_bgp(b: &sluice_lb::bgp::BgpStatus) {
    if !b.enabled {
        return;
    }
    println!(
        "bgp:{}{}",
        if b.maintenance {
            " MAINTENANCE (everything withdrawn)"
        } else {
            ""
        },
        b.error
            .as_deref()
            .map(|e| format!(" BIRD error: {e}"))
            .unwrap_or_default()
    );
    for v in &b.vips {
        if v.announced {
            println!("  {:<40} announced", v.address);
        } else {
            println!("  {:<40} withdrawn: {}", v.address, v.reason);
        }
    }
    for s in &b.sessions {
        println!("  peer {:<35} {} {}", s.peer, s.state, s.info);
    }
}

fn print_shield(s: &sluice_lb::shield::ShieldStatus) {
    println!(
        "shield: {} of {} entries, candidates from gateways: {}",
        s.entries.len(),
        s.max_entries,
        serde_json::to_value(s.pull)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    );
    if !s.entries.is_empty() {
        println!(
            "  {:<43} {:<12} {:>10} {:>10}  note",
            "prefix", "reason", "ttl left", "drops"
        );
    }
    for e in &s.entries {
        let ttl = e
            .remaining_ms
            .map(|ms| {
                humantime::format_duration(std::time::Duration::from_secs(ms / 1000)).to_string()
            })
            .unwrap_or_else(|| "never".into());
        println!(
            "  {:<43} {:<12} {:>10} {:>10}  {}",
            e.prefix.to_string(),
            e.reason,
            ttl,
            e.drops,
            e.note
        );
    }
    let dropped: Vec<String> = s
        .drops_by_reason
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| format!("{r}={n}"))
        .collect();
    if !dropped.is_empty() {
        println!("  dropped by reason: {}", dropped.join(" "));
    }
    let f = &s.flood;
    println!(
        "flood guard: {}, {} CPUs in a flood now, {:.1} s in floods, {} inserts skipped",
        if f.enabled {
            format!(
                "on above {} new flows/s per CPU (an idle flow keeps its entry {:.1} s below it)",
                f.new_flows_per_second, f.idle_entry_seconds
            )
        } else {
            "off".into()
        },
        f.cpus_flooding,
        f.flood_seconds,
        f.inserts_skipped
    );
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
