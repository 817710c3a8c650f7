//! `sluice-lb run`: the agent loop.
//!
//! One task owns the data plane. Health probers, the admin API, signals and the config-file
//! watcher only send it messages, so every change to the maps happens in one place, in order.
//!
//! - [`load`]: load-aware weights; [`announce`]: the node checks and what BGP announces;
//!   [`blocks`]: blocks swept and candidates pulled; [`status`]: what `status` and
//!   `/metrics` show; [`dashboard`]: what the dashboard page polls.

mod announce;
mod blocks;
mod dashboard;
mod load;
mod status;

use blocks::Pulled;
pub use dashboard::{DashboardState, FlowTableView};
use status::Counts;
pub use status::{BackendView, ConfigStatus, LoadSeen, Status, VipStatus};

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use sluice_common::stats::Lb;
use sluice_util::{
    control::{stamp, Asked, ControlSignals, Stamp},
    load::{CapacityEstimate, LoadReport},
};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tracing::{error, info, warn};

use crate::{
    admin,
    attach::{self, AttachError},
    bgp::Announcer,
    config::{self, Config, HealthCheck},
    controller::{self, Applied, BackendStatus, Ids},
    dataplane::{DataPlane, LoadOptions},
    health::{self, Health, Observed, Transition},
    metrics,
    shield::{BlockError, BlockRequest, Shield},
};

/// What the admin API asks of the agent.
pub enum Command {
    /// Stop sending new flows to a backend.
    Drain(IpAddr, oneshot::Sender<Result<(), CommandError>>),
    /// Undo a drain.
    Undrain(IpAddr, oneshot::Sender<Result<(), CommandError>>),
    /// Set (or with `None` reset) a backend's weight.
    Weight(
        IpAddr,
        Option<u32>,
        oneshot::Sender<Result<(), CommandError>>,
    ),
    /// Block a prefix in XDP.
    Block(BlockRequest, oneshot::Sender<Result<(), CommandError>>),
    /// Remove a block.
    Unblock(ipnet::IpNet, oneshot::Sender<Result<(), CommandError>>),
    /// Withdraw (true) or announce again (false) every VIP over BGP.
    Maintenance(bool, oneshot::Sender<Result<(), CommandError>>),
    /// The node checks that fail now (`/healthz`).
    Healthz(oneshot::Sender<Vec<crate::node_check::Check>>),
    /// Current state as JSON.
    Status(oneshot::Sender<Status>),
    /// The dashboard's state, with the history after a sample the page has.
    Dashboard(Option<u64>, oneshot::Sender<DashboardState>),
    /// Prometheus text.
    Metrics(oneshot::Sender<String>),
}

/// Why the agent refused an operator's drain, undrain or weight.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The address is in no VIP's backends.
    #[error("{0} is not a backend of any VIP")]
    UnknownBackend(IpAddr),
    /// The weight is outside what the config allows.
    #[error("weight must be between 0 and 1000")]
    WeightOutOfRange,
    /// Writing the new state to the maps failed.
    #[error("{0}")]
    Apply(anyhow::Error),
    /// The shield refused a block or unblock.
    #[error(transparent)]
    Shield(#[from] BlockError),
    /// Maintenance needs a `[bgp]` section.
    #[error("this node has no [bgp] section: it announces nothing to withdraw")]
    NoBgp,
    /// Recording maintenance failed.
    #[error("{0}")]
    Bgp(#[from] crate::bgp::bird::BirdError),
}

struct Agent {
    path: PathBuf,
    config: Config,
    file_stamp: Stamp,
    dp: DataPlane,
    ids: Ids,
    applied: Applied,
    status: HashMap<IpAddr, BackendStatus>,
    probes: HashMap<(IpAddr, HealthCheck), JoinHandle<()>>,
    health_tx: mpsc::UnboundedSender<Observed>,
    /// The last load report of each backend that sends one, and when it came.
    loads: HashMap<IpAddr, (LoadReport, Instant)>,
    /// Capacity estimates made here for reporters that send none of their own.
    estimates: HashMap<IpAddr, CapacityEstimate>,
    /// Load factors of the backends of `weights = "load"` VIPs (see `weights.rs`).
    factors: BTreeMap<IpAddr, f64>,
    /// When the load factors were last adjusted.
    last_adjust: Instant,
    config_generation: u64,
    reloads_ok: u64,
    reloads_failed: u64,
    last_error: Option<String>,
    rates: HashMap<u32, (f64, f64)>,
    last_sample: Option<(Instant, Counts)>,
    shield: Shield,
    pull_tx: mpsc::UnboundedSender<Pulled>,
    /// Announces the VIPs over BGP when `[bgp]` is configured.
    bgp: Option<Announcer>,
    /// The maps hold the current plan: the last apply succeeded.
    synced: bool,
    /// When the established flows of backends that failed their checks are re-picked.
    grace_until: HashMap<IpAddr, Instant>,
    /// Every backend configured has had a first verdict since this agent started (a probe,
    /// or the pinned state adopted): until then BIRD is told nothing.
    health_settled: bool,
    /// The last node checks.
    checks: Vec<crate::node_check::Check>,
    /// Drop counters at the last sample (none before the first), and their rates since.
    drops: Vec<(Lb, Option<u64>, f64)>,
    /// The last minutes of rates, for the dashboard's sparklines.
    history: sluice_util::dashboard::History,
    /// Each VIP's traffic counters at the last history sample.
    vip_counts: dashboard::VipCounts,
    /// The flow table's last count.
    flow_count: std::sync::Arc<dashboard::FlowCount>,
    /// The status the dashboard pages were last given, when, and the shield's size.
    page_status: Option<(Instant, (Status, usize))>,
}

/// Moves IPv4 flows an earlier version pinned in the dual-stack table to the IPv4 one.
fn migrate_v4_flows(dp: &mut DataPlane) -> Result<()> {
    let moved = dp
        .migrate_v4_flows()
        .context("moving IPv4 flows to their own table")?;
    if moved > 0 {
        info!(
            flows = moved,
            "moved pinned IPv4 flows to the IPv4 flow table"
        );
    }
    Ok(())
}

/// Runs the agent until SIGTERM or SIGINT. Pinned state is left in place on exit.
pub async fn run(path: &Path, debug: bool, mode: Option<config::XdpMode>) -> Result<()> {
    let mut config = config::load(path)?;
    if let Some(m) = mode {
        config.node.xdp_mode = m;
    }
    attach::ensure_bpffs(&config.node.pin_dir).context("pin directory")?;
    let mut dp = DataPlane::load(&LoadOptions {
        debug,
        flow_table_size: Some(config.node.flow_table_size),
        pin_dir: Some(config.node.pin_dir.clone()),
        bench_reference: false,
    })
    .context("loading the data plane")?;
    migrate_v4_flows(&mut dp)?;
    let mut ids = Ids::default();
    let applied = Applied::adopt(&mut dp, &mut ids).context("reading pinned state")?;
    let mut shield = Shield::adopt(&dp).context("reading the pinned shield")?;
    if !shield.is_empty() {
        info!(entries = shield.len(), "adopted pinned blocks");
        // The config may have changed while the agent was away (allow list, bounds).
        shield.reconcile(&mut dp, &config.shield);
    }
    let adopted = applied.adopted_status();
    if !adopted.is_empty() {
        info!(
            backends = adopted.len(),
            "adopted pinned state from a previous agent"
        );
    }
    // Everything that can be refused is checked before anything is attached.
    controller::plan(&config, &adopted, &mut ids.clone()).context("planning the tables")?;
    for iface in &config.node.interfaces {
        attach::attach(&mut dp, &config.node.pin_dir, iface, config.node.xdp_mode)
            .with_context(|| format!("attaching to {iface}"))?;
        // After each attach: this program ignores entries written with an earlier
        // program's clock anyway (see `emit.rs`); clearing drops them at once.
        dp.forget_next_hops()
            .context("clearing the next-hop cache")?;
    }
    // The program replaced may have written IPv4 flows to the dual-stack table until now.
    migrate_v4_flows(&mut dp)?;
    let (health_tx, mut health_rx) = mpsc::unbounded_channel();
    let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel();
    let (pull_tx, mut pull_rx) = mpsc::unbounded_channel();
    let mut agent = Agent {
        path: path.to_owned(),
        file_stamp: stamp(path),
        config,
        dp,
        ids,
        applied,
        status: adopted,
        probes: HashMap::new(),
        health_tx,
        loads: HashMap::new(),
        estimates: HashMap::new(),
        factors: BTreeMap::new(),
        last_adjust: Instant::now(),
        config_generation: 1,
        reloads_ok: 0,
        reloads_failed: 0,
        last_error: None,
        rates: HashMap::new(),
        last_sample: None,
        shield,
        pull_tx,
        bgp: None,
        synced: false,
        health_settled: false,
        grace_until: HashMap::new(),
        checks: Vec::new(),
        history: sluice_util::dashboard::History::new(dashboard::HISTORY_SECONDS),
        vip_counts: HashMap::new(),
        flow_count: Default::default(),
        page_status: None,
        drops: [Lb::FibFailure, Lb::NoBackend]
            .into_iter()
            .map(|o| (o, None, 0.0))
            .collect(),
    };
    agent.check_node();
    agent.apply().context("writing the initial state")?;
    // BIRD is started (or told to announce nothing) only once the maps are written; the
    // VIPs follow as their backends come up.
    agent.bgp = agent.config.bgp.as_ref().map(Announcer::start);
    agent.announce();
    agent.sync_probes();
    let listener = tokio::net::TcpListener::bind(agent.config.admin.listen)
        .await
        .with_context(|| format!("admin API on {}", agent.config.admin.listen))?;
    info!(admin = %agent.config.admin.listen, "sluice-lb running");
    agent.flow_count.spawn_counter(
        crate::dataplane::pinned_maps_dir(&agent.config.node.pin_dir),
        agent.config.node.flow_table_size as usize,
    );
    tokio::spawn(admin::serve(
        listener,
        cmd_tx,
        std::sync::Arc::new(agent.config.admin.host_names.clone()),
    ));

    let mut signals = ControlSignals::new().context("signal handlers")?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut pull_every = agent.config.shield.pull_interval_ms;
    let mut pull_tick = tokio::time::interval(Duration::from_millis(pull_every));
    loop {
        tokio::select! {
            Some(seen) = health_rx.recv() => match seen {
                Observed::Health(t) => agent.on_health(t),
                Observed::Load { addr, report } => agent.on_load(addr, report),
            },
            Some(cmd) = cmd_rx.recv() => agent.on_command(cmd),
            Some(pulled) = pull_rx.recv() => agent.on_pulled(pulled),
            asked = signals.recv() => match asked {
                Asked::Reload => agent.reload("SIGHUP"),
                Asked::Stop => break,
            },
            _ = tick.tick() => {
                if stamp(&agent.path) != agent.file_stamp {
                    agent.reload("file change");
                }
                agent.sample_rates();
                agent.record_history();
                agent.check_node();
                agent.adjust_load_weights();
                agent.sweep_blocks();
                agent.end_graces();
                if let Some(bgp) = agent.bgp.as_mut() {
                    bgp.poll();
                }
                agent.announce();
            }
            _ = pull_tick.tick() => {
                agent.pull_candidates();
                // A reload may have changed the interval.
                if agent.config.shield.pull_interval_ms != pull_every {
                    pull_every = agent.config.shield.pull_interval_ms;
                    pull_tick = tokio::time::interval(Duration::from_millis(pull_every));
                }
            }
        }
    }
    if let Some(bgp) = agent.bgp.as_mut() {
        bgp.withdraw_and_wait().await;
    }
    info!("stopping; the data plane keeps forwarding from pinned state");
    Ok(())
}

impl Agent {
    fn apply(&mut self) -> Result<()> {
        let mut plan = controller::plan(&self.config, &self.status, &mut self.ids)?;
        plan.node.shield = u8::from(self.shield.active());
        self.synced = false;
        self.applied.apply(&mut self.dp, &plan)?;
        self.ids.retain(&plan);
        self.synced = true;
        self.announce();
        Ok(())
    }

    /// Starts probers for backends that need one and stops those no longer configured.
    fn sync_probes(&mut self) {
        // Reports of backends no longer configured are forgotten with their probes.
        let known: std::collections::HashSet<IpAddr> = self
            .config
            .vips
            .iter()
            .flat_map(|v| v.backends.iter().map(|b| b.address))
            .collect();
        self.loads.retain(|addr, _| known.contains(addr));
        self.estimates.retain(|addr, _| known.contains(addr));
        let mut wanted = HashSet::new();
        for v in &self.config.vips {
            let check = v.check(&self.config.health).clone();
            for b in &v.backends {
                wanted.insert((b.address, check.clone()));
            }
        }
        self.probes.retain(|key, task| {
            let keep = wanted.contains(key);
            if !keep {
                task.abort();
            }
            keep
        });
        for key in wanted {
            if self.probes.contains_key(&key) {
                continue;
            }
            let initial = self
                .status
                .get(&key.0)
                .map(|s| match (s.healthy, s.not_ready) {
                    (false, _) => Health::Down,
                    (true, true) => Health::NotReady,
                    (true, false) => Health::Up,
                });
            let task = tokio::spawn(health::watch(
                key.0,
                key.1.clone(),
                initial,
                self.health_tx.clone(),
            ));
            self.probes.insert(key, task);
        }
    }

    fn on_health(&mut self, t: Transition) {
        let first = !self.status.contains_key(&t.addr);
        let s = self.status.entry(t.addr).or_default();
        let (healthy, not_ready) = match t.health {
            Health::Up => (true, false),
            Health::NotReady => (true, true),
            Health::Down => (false, false),
        };
        if (s.healthy, s.not_ready) == (healthy, not_ready) {
            if first {
                // A first verdict of down changes no table, but may complete the pool.
                self.announce();
            }
            return;
        }
        (s.healthy, s.not_ready) = (healthy, not_ready);
        // A backend that was serving keeps its established flows for `down_grace_ms`; one
        // that comes back within it breaks none.
        let grace = Duration::from_millis(self.config.node.down_grace_ms);
        s.grace = !healthy && !first && !grace.is_zero();
        if s.grace {
            self.grace_until.insert(t.addr, Instant::now() + grace);
        } else {
            self.grace_until.remove(&t.addr);
        }
        match t.health {
            Health::Up => info!(backend = %t.addr, "backend up"),
            Health::NotReady => info!(backend = %t.addr, "backend not ready: draining it"),
            Health::Down => warn!(backend = %t.addr, "backend down"),
        }
        if let Err(e) = self.apply() {
            error!(error = %e, "applying a health change failed");
        }
    }

    /// Re-picks the established flows of backends whose grace after failing has passed.
    fn end_graces(&mut self) {
        let now = Instant::now();
        let ended: Vec<IpAddr> = self
            .grace_until
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(a, _)| *a)
            .collect();
        if ended.is_empty() {
            return;
        }
        for a in ended {
            self.grace_until.remove(&a);
            if let Some(s) = self.status.get_mut(&a) {
                s.grace = false;
                info!(backend = %a, "still down after the grace: its established flows are re-picked");
            }
        }
        if let Err(e) = self.apply() {
            error!(error = %e, "applying the end of a grace failed");
        }
    }

    fn known(&self, addr: &IpAddr) -> bool {
        self.config
            .vips
            .iter()
            .any(|v| v.backends.iter().any(|b| b.address == *addr))
    }

    fn operator_change(
        &mut self,
        addr: IpAddr,
        f: impl FnOnce(&mut BackendStatus),
    ) -> Result<(), CommandError> {
        if !self.known(&addr) {
            return Err(CommandError::UnknownBackend(addr));
        }
        f(self.status.entry(addr).or_default());
        self.apply().map_err(CommandError::Apply)
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Drain(addr, reply) => {
                let r = self.operator_change(addr, |s| s.draining = true);
                info!(backend = %addr, ok = r.is_ok(), "drain");
                let _ = reply.send(r);
            }
            Command::Undrain(addr, reply) => {
                let r = self.operator_change(addr, |s| s.draining = false);
                info!(backend = %addr, ok = r.is_ok(), "undrain");
                let _ = reply.send(r);
            }
            Command::Weight(addr, w, reply) => {
                let r = match w {
                    Some(w) if w > 1000 => Err(CommandError::WeightOutOfRange),
                    _ => self.operator_change(addr, |s| s.weight = w),
                };
                info!(backend = %addr, weight = ?w, ok = r.is_ok(), "weight");
                let _ = reply.send(r);
            }
            Command::Block(req, reply) => {
                let r = self
                    .shield
                    .block(&mut self.dp, &self.config.shield, &req)
                    .map_err(CommandError::from);
                let _ = reply.send(r.and_then(|()| self.shield_switch()));
            }
            Command::Unblock(prefix, reply) => {
                let r = self
                    .shield
                    .unblock(&mut self.dp, prefix)
                    .map_err(CommandError::from);
                let _ = reply.send(r.and_then(|()| self.shield_switch()));
            }
            Command::Maintenance(on, reply) => {
                let r = match self.bgp.as_mut() {
                    None => Err(CommandError::NoBgp),
                    Some(bgp) => bgp.set_maintenance(on).map_err(CommandError::from),
                };
                self.announce();
                info!(maintenance = on, ok = r.is_ok(), "maintenance");
                let _ = reply.send(r);
            }
            Command::Healthz(reply) => {
                let failing = self.checks.iter().filter(|c| !c.ok).cloned().collect();
                let _ = reply.send(failing);
            }
            Command::Status(reply) => {
                let _ = reply.send(self.snapshot());
            }
            Command::Dashboard(since, reply) => {
                let _ = reply.send(self.dashboard(since));
            }
            Command::Metrics(reply) => {
                let reloads = metrics::Reloads {
                    ok: self.reloads_ok,
                    failed: self.reloads_failed,
                };
                let _ = reply.send(metrics::render(&self.snapshot(), reloads));
            }
        }
    }

    fn reload(&mut self, why: &str) {
        self.file_stamp = stamp(&self.path);
        let new = match config::load(&self.path) {
            Ok(c) => c,
            Err(e) => {
                error!(error = %e, trigger = why, "config refused; the last valid config stays in force");
                self.reloads_failed += 1;
                self.last_error = Some(e.to_string());
                return;
            }
        };
        // A config whose tables cannot be built is refused before anything changes.
        if let Err(e) = controller::plan(&new, &self.status, &mut self.ids.clone()) {
            error!(error = %e, trigger = why, "config refused; the last valid config stays in force");
            self.reloads_failed += 1;
            self.last_error = Some(e.to_string());
            return;
        }
        let old = std::mem::replace(&mut self.config, new);
        if let Err(e) = self.reattach(&old) {
            error!(error = %e, "config refused: interfaces; the last valid config stays in force");
            self.config = old;
            self.reloads_failed += 1;
            self.last_error = Some(e.to_string());
            return;
        }
        if let Err(e) = self.apply() {
            error!(error = %e, "config refused; the last valid config stays in force");
            self.config = old;
            self.reloads_failed += 1;
            self.last_error = Some(e.to_string());
            let _ = self.apply();
            return;
        }
        self.sync_probes();
        self.sync_bgp();
        if self.shield.reconcile(&mut self.dp, &self.config.shield) > 0 {
            if let Err(e) = self.shield_switch() {
                error!(error = %e, "turning the shield off failed");
            }
        }
        self.config_generation += 1;
        self.reloads_ok += 1;
        self.last_error = None;
        info!(
            trigger = why,
            generation = self.config_generation,
            "config reloaded"
        );
    }

    /// Attaches to interfaces added by a reload and detaches from removed ones.
    fn reattach(&mut self, old: &Config) -> Result<(), AttachError> {
        let pin_dir = self.config.node.pin_dir.clone();
        for iface in &self.config.node.interfaces {
            if !old.node.interfaces.contains(iface) {
                attach::attach(&mut self.dp, &pin_dir, iface, self.config.node.xdp_mode)?;
            }
        }
        for iface in &old.node.interfaces {
            if !self.config.node.interfaces.contains(iface) {
                let link = old.node.pin_dir.join("links").join(iface);
                let _ = std::fs::remove_file(link);
                info!(iface, "detached");
            }
        }
        Ok(())
    }
}
