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
    control::{Asked, ControlSignals, FileWatch, WATCH_INTERVAL},
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
    /// `run --xdp-mode`, which stands in for the file's `node.xdp_mode` at every reload.
    mode_override: Option<config::XdpMode>,
    watch: FileWatch,
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
    /// Gateways whose block candidates are being fetched: one fetch each at a time, so a
    /// gateway slower than the pull interval does not pile connections up.
    pulling: HashSet<IpAddr>,
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
    /// The admin token in force, shared with the admin API.
    admin_token: admin::SharedToken,
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

/// The files the config reads besides itself, which a change to reloads as a change to the
/// config does: the admin token file.
fn read_with(config: &config::Config) -> Vec<PathBuf> {
    config.admin.token_file.iter().cloned().collect()
}

/// Runs the agent until SIGTERM or SIGINT. Pinned state is left in place on exit.
pub async fn run(path: &Path, debug: bool, mode: Option<config::XdpMode>) -> Result<()> {
    // Before the file is read: a change made while the agent starts is reloaded.
    let mut watch = FileWatch::new(path);
    let mut config = config::load(path)?;
    if let Some(b) = &config.bgp {
        crate::bgp::bird::parse_check(b).with_context(|| format!("{}: bgp", path.display()))?;
    }
    watch.also(read_with(&config));
    warn_of_flood_sizing(&config);
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
        mode_override: mode,
        watch,
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
        pulling: HashSet::new(),
        bgp: None,
        synced: false,
        health_settled: false,
        grace_until: HashMap::new(),
        checks: Vec::new(),
        history: sluice_util::dashboard::History::new(dashboard::HISTORY_SECONDS),
        vip_counts: HashMap::new(),
        flow_count: Default::default(),
        page_status: None,
        admin_token: Default::default(),
        drops: [Lb::FibFailure, Lb::NoBackend]
            .into_iter()
            .map(|o| (o, None, 0.0))
            .collect(),
    };
    // A backend adopted within its down grace gets a whole grace from now: the one it was in
    // began under the last agent, at a time not recorded.
    let grace_ends = Instant::now() + Duration::from_millis(agent.config.node.down_grace_ms);
    for (a, s) in &agent.status {
        if s.grace {
            agent.grace_until.insert(*a, grace_ends);
        }
    }
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
    agent.take_admin_token();
    tokio::spawn(admin::serve(
        listener,
        cmd_tx,
        std::sync::Arc::new(agent.config.admin.host_names.clone()),
        agent.admin_token.clone(),
    ));

    let mut signals = ControlSignals::new().context("signal handlers")?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut look = tokio::time::interval(WATCH_INTERVAL);
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
            _ = look.tick() => {
                if agent.watch.settled_change(&agent.path) {
                    agent.reload("file change");
                }
            }
            _ = tick.tick() => {
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
        // BIRD outlives the agent: a withdrawal it did not take leaves this node announced,
        // which must not pass for a clean stop.
        bgp.withdraw_and_wait()
            .await
            .context("stopping: BIRD still announces this node's VIPs")?;
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
        // And what was known of them: one added again later starts from nothing (down
        // until its probe says otherwise, with no drain or weight of the old entry), not
        // from a health its probe stopped checking when it left.
        self.status.retain(|addr, _| known.contains(addr));
        self.grace_until.retain(|addr, _| known.contains(addr));
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
        // A verdict its probe sent before the backend left the config (the probe is
        // aborted, but what it queued still arrives): nothing of it may be kept.
        if !self.known(&t.addr) {
            return;
        }
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
        let before = self.status.get(&addr).cloned();
        f(self.status.entry(addr).or_default());
        if let Err(e) = self.apply() {
            // Not applied, so not recorded either: a change left in place would fail every
            // later apply and reload with it.
            match before {
                Some(status) => self.status.insert(addr, status),
                None => self.status.remove(&addr),
            };
            let _ = self.apply();
            return Err(CommandError::Apply(e));
        }
        Ok(())
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
        self.watch.reading(&self.path);
        let mut new = match config::load(&self.path) {
            Ok(c) => c,
            Err(e) => return self.refused(why, e.to_string()),
        };
        if let Some(m) = self.mode_override {
            new.node.xdp_mode = m;
        }
        // A setting taken at start that the file changes, or tables that cannot be built,
        // refuse the file before anything changes.
        if let Err(e) = config::restart_needed(&self.config, &new) {
            return self.refused(why, e.in_file(&self.path).to_string());
        }
        if let Some(b) = new
            .bgp
            .as_ref()
            .filter(|b| self.config.bgp.as_ref() != Some(b))
        {
            if let Err(e) = crate::bgp::bird::parse_check(b) {
                return self.refused(why, format!("{}: bgp: {e}", self.path.display()));
            }
        }
        if let Err(e) = controller::plan(&new, &self.status, &mut self.ids.clone()) {
            return self.refused(why, e.to_string());
        }
        let old = std::mem::replace(&mut self.config, new);
        let added = match self.attach_added(&old) {
            Ok(added) => added,
            Err(e) => {
                self.config = old;
                return self.refused(why, format!("interfaces: {e}"));
            }
        };
        if let Err(e) = self.apply() {
            // Back to the config in force: the interfaces it added go, and the ones it
            // removed were never let go.
            detach(&self.config.node.pin_dir, &added);
            self.config = old;
            let _ = self.apply();
            return self.refused(why, e.to_string());
        }
        let removed: Vec<String> = old
            .node
            .interfaces
            .iter()
            .filter(|i| !self.config.node.interfaces.contains(i))
            .cloned()
            .collect();
        detach(&old.node.pin_dir, &removed);
        if !added.is_empty() {
            // Their sysctls now, not at the next tick's checks (`manage_sysctls`).
            self.check_node();
        }
        self.sync_probes();
        self.sync_bgp();
        if self.shield.reconcile(&mut self.dp, &self.config.shield) > 0 {
            if let Err(e) = self.shield_switch() {
                error!(error = %e, "turning the shield off failed");
            }
        }
        if old.flood_guard != self.config.flood_guard {
            warn_of_flood_sizing(&self.config);
        }
        if old.admin.token.is_some() && self.config.admin.token.is_none() {
            warn!("admin.token_file removed: changes through the admin API are now taken from loopback only, without a token");
        }
        self.take_admin_token();
        self.watch.also(read_with(&self.config));
        self.config_generation += 1;
        self.reloads_ok += 1;
        self.last_error = None;
        info!(
            trigger = why,
            generation = self.config_generation,
            "config reloaded"
        );
    }

    /// Puts the config's admin token in force.
    fn take_admin_token(&self) {
        self.admin_token
            .store(self.config.admin.token.clone().map(std::sync::Arc::new));
    }

    /// Records a refused reload: the config in force stays.
    fn refused(&mut self, why: &str, error: String) {
        error!(error = %error, trigger = why, "config refused; the last valid config stays in force");
        self.reloads_failed += 1;
        self.last_error = Some(error);
    }

    /// Attaches to the interfaces a reload adds (those `old` does not have), returning
    /// them; if one fails, those attached before it are detached again.
    fn attach_added(&mut self, old: &Config) -> Result<Vec<String>, AttachError> {
        let pin_dir = self.config.node.pin_dir.clone();
        let mut added = Vec::new();
        for iface in &self.config.node.interfaces {
            if old.node.interfaces.contains(iface) {
                continue;
            }
            if let Err(e) = attach::attach(&mut self.dp, &pin_dir, iface, self.config.node.xdp_mode)
            {
                detach(&pin_dir, &added);
                return Err(e);
            }
            added.push(iface.clone());
        }
        Ok(added)
    }
}

/// Detaches the program from `ifaces` by unpinning their links under `pin_dir`.
fn detach(pin_dir: &Path, ifaces: &[String]) {
    for iface in ifaces {
        let _ = std::fs::remove_file(pin_dir.join("links").join(iface));
        info!(iface, "detached");
    }
}

/// How long, at least, an idle flow should keep its entry under a flood just below the
/// guard's limit before the agent warns of the flow table's size (the defaults keep 2.6 s
/// on 2 CPUs and warn from 3 CPUs on).
const IDLE_ENTRY_WARN_SECONDS: f64 = 2.0;

/// Warns when a flood just below the flood guard's limit would evict flows idle for less
/// than [`IDLE_ENTRY_WARN_SECONDS`] (see [`config::FloodGuard::idle_entry_seconds`]).
fn warn_of_flood_sizing(config: &Config) {
    let guard = &config.flood_guard;
    let cpus = config::possible_cpus();
    let seconds = guard.idle_entry_seconds(config.node.flow_table_size, cpus);
    if guard.enabled && seconds < IDLE_ENTRY_WARN_SECONDS {
        warn!(
            flow_table_size = config.node.flow_table_size,
            cpus,
            new_flows_per_second = guard.new_flows_per_second,
            "a flood just below the flood guard's limit evicts flows idle for {seconds:.1} s: \
             a larger node.flow_table_size or a lower flood_guard.new_flows_per_second keeps \
             them longer"
        );
    }
}
