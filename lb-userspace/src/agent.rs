//! `sluice-lb run`: the agent loop.
//!
//! One task owns the data plane. Health probers, the admin API, signals and the config-file
//! watcher only send it messages, so every change to the maps happens in one place, in order.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde::Serialize;
use sluice_common::stats::{Lb, LbFlow};
use sluice_util::{
    control::{stamp, Asked, ControlSignals, Stamp},
    load::LoadReport,
};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tracing::{error, info, warn};

use crate::{
    admin,
    attach::{self, AttachError},
    bgp::{Announcement, Announcer, BgpStatus},
    config::{self, BackendConfig, Config, HealthCheck, Vip, WeightMode},
    controller::{self, Applied, BackendStatus, Ids},
    dataplane::{DataPlane, LoadOptions},
    health::{self, Health, Observed, Transition},
    metrics,
    shield::{self, BlockError, BlockRequest, Shield, ShieldStatus},
    weights,
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

/// `sluice-lb status` output.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Status {
    /// VIPs.
    pub vips: Vec<VipStatus>,
    /// `sluice_lb` outcome counters.
    pub outcomes: Vec<(String, u64)>,
    /// Flow-table events.
    pub flow_events: Vec<(String, u64)>,
    /// Table flips since start.
    pub table_generation: u64,
    /// Disruption of the last change.
    pub last_disruption: f64,
    /// Config file and reload results.
    pub config: ConfigStatus,
    /// Blocked prefixes, the gateways' candidates and the flood guard.
    #[serde(default)]
    pub shield: ShieldStatus,
    /// The VIPs' announcements and the BGP sessions.
    #[serde(default)]
    pub bgp: BgpStatus,
    /// What forwarding needs from the node, checked every second.
    #[serde(default)]
    pub node_checks: Vec<crate::node_check::Check>,
    /// Packets dropped per second over the last second, by reason (the reasons that mean
    /// the node cannot forward: `fib_failure`, `no_backend`).
    #[serde(default)]
    pub drop_rates: Vec<(String, f64)>,
}

/// Config state.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ConfigStatus {
    /// File.
    pub path: String,
    /// Successful loads.
    pub generation: u64,
    /// Whether the last reload was applied.
    pub last_reload_ok: bool,
    /// The last refusal, if any.
    pub last_error: Option<String>,
}

/// A VIP in `status`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct VipStatus {
    /// `address:port/protocol`.
    pub vip: String,
    /// Packets and bytes.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
    /// Backends.
    pub backends: Vec<BackendView>,
}

/// A backend in `status`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct BackendView {
    /// Address.
    pub address: IpAddr,
    /// `active`, `draining` or `down`.
    pub state: String,
    /// Health check passing.
    pub healthy: bool,
    /// Effective weight in this VIP's table (a `weights = "load"` VIP's are in hundredths
    /// of the configured weight).
    pub weight: u32,
    /// Configured weight (or the operator's override).
    #[serde(default)]
    pub configured_weight: u32,
    /// The load factor on it, in a `weights = "load"` VIP.
    #[serde(default)]
    pub load_factor: Option<f64>,
    /// Packets sent to it (all VIPs).
    pub packets: u64,
    /// Bytes sent to it.
    pub bytes: u64,
    /// Packets per second over the last sampling second.
    pub packets_per_second: f64,
    /// Bytes per second.
    pub bytes_per_second: f64,
    /// Its last load report, if its readiness answers carry one (a gateway's do).
    #[serde(default)]
    pub load: Option<LoadSeen>,
}

/// A backend's last load report and its age.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct LoadSeen {
    /// The report, as the gateway sent it.
    #[serde(flatten)]
    pub report: LoadReport,
    /// Milliseconds since it came.
    pub age_ms: u64,
}

/// Packets and bytes per backend id at one instant.
type Counts = HashMap<u32, (u64, u64)>;

/// `status` with each backend's load factor set from `factors` (in percent, which the
/// factors' steps make exact).
fn with_factors(
    status: &HashMap<IpAddr, BackendStatus>,
    factors: &BTreeMap<IpAddr, f64>,
) -> HashMap<IpAddr, BackendStatus> {
    let mut status = status.clone();
    for (addr, f) in factors {
        status.entry(*addr).or_default().load_percent = Some((f * 100.0).round() as u32);
    }
    status
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
    /// The last node checks.
    checks: Vec<crate::node_check::Check>,
    /// Drop counters at the last sample (none before the first), and their rates since.
    drops: Vec<(Lb, Option<u64>, f64)>,
}

/// One gateway's block candidates, or why they could not be fetched.
struct Pulled {
    gateway: IpAddr,
    result: Result<sluice_util::shield::Candidates, shield::pull::PullError>,
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
    })
    .context("loading the data plane")?;
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
    }
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
        checks: Vec::new(),
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
    tokio::spawn(admin::serve(listener, cmd_tx));

    let mut signals = ControlSignals::new().context("signal handlers")?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut pull_every = agent.config.shield.pull_interval_ms;
    let mut pull_tick = tokio::time::interval(Duration::from_millis(pull_every));
    loop {
        tokio::select! {
            Some(seen) = health_rx.recv() => match seen {
                Observed::Health(t) => agent.on_health(t),
                Observed::Load { addr, report } => {
                    agent.loads.insert(addr, (report, Instant::now()));
                }
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
                agent.check_node();
                agent.adjust_load_weights();
                agent.sweep_blocks();
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
    /// Moves the load factors of `weights = "load"` VIPs' ready backends toward their
    /// reported capacity, at most once per `adjust_interval_ms`, and pushes the tables with
    /// at most `max_disruption` of any table's slots moved: a larger move is halved until it
    /// fits, and the rest waits for the next adjustment.
    fn adjust_load_weights(&mut self) {
        let lw = self.config.load_weights;
        if self.last_adjust.elapsed() < Duration::from_millis(lw.adjust_interval_ms) {
            return;
        }
        self.last_adjust = Instant::now();
        let inputs = self.load_inputs();
        // A backend that stopped serving (or left a load VIP) starts again from its
        // configured weight.
        self.factors.retain(|a, _| inputs.contains_key(a));
        for (addr, s) in self.status.iter_mut() {
            if !inputs.contains_key(addr) {
                s.load_percent = None;
            }
        }
        if inputs.is_empty() {
            return;
        }
        let now: BTreeMap<IpAddr, f64> = inputs
            .keys()
            .map(|a| (*a, self.factors.get(a).copied().unwrap_or(1.0)))
            .collect();
        let mut step = weights::adjust(&inputs, &now, &lw.tuning());
        for _ in 0..8 {
            if step == now {
                return;
            }
            let status = with_factors(&self.status, &step);
            let moved = match controller::plan(&self.config, &status, &mut self.ids) {
                Ok(plan) => self.applied.disruption_of(&plan),
                Err(e) => {
                    warn!(error = %e, "planning load weights failed");
                    return;
                }
            };
            if moved <= lw.max_disruption {
                info!(factors = ?step, disruption = moved, "load weights pushed");
                self.status = status;
                self.factors = step;
                if let Err(e) = self.apply() {
                    error!(error = %e, "applying load weights failed");
                }
                return;
            }
            step = weights::halfway(&now, &step, lw.step);
        }
        warn!(
            max_disruption = lw.max_disruption,
            "no load-weight step fits within max_disruption; waiting"
        );
    }

    /// What the controller gets for each ready backend of a `weights = "load"` VIP.
    fn load_inputs(&self) -> BTreeMap<IpAddr, weights::Input> {
        let mut inputs = BTreeMap::new();
        for v in self
            .config
            .vips
            .iter()
            .filter(|v| v.weights == WeightMode::Load)
        {
            for b in &v.backends {
                let s = self.status.get(&b.address).copied().unwrap_or_default();
                if !s.healthy || s.draining || s.not_ready {
                    continue;
                }
                inputs.insert(
                    b.address,
                    weights::Input {
                        configured: s.weight.unwrap_or(b.weight),
                        report: self.loads.get(&b.address).map(|(r, at)| (*r, at.elapsed())),
                    },
                );
            }
        }
        inputs
    }

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

    /// Decides which VIP addresses this node announces and tells BIRD if that changed: an
    /// address is announced while the program is attached to every interface, the maps
    /// hold the current plan, and a VIP on it has a backend alive.
    fn announce(&mut self) {
        let Some(bgp) = self.bgp.as_mut() else {
            return;
        };
        let node = &self.config.node;
        let attached = node
            .interfaces
            .iter()
            .all(|i| node.pin_dir.join("links").join(i).exists());
        // A node that cannot forward (forwarding off, say) must not draw traffic.
        let failing = self.checks.iter().find(|c| !c.ok).map(|c| c.name.clone());
        let mut decision: Vec<Announcement> = Vec::new();
        for v in &self.config.vips {
            let alive = v
                .backends
                .iter()
                .any(|b| self.status.get(&b.address).is_some_and(|s| s.healthy));
            match decision.iter_mut().find(|d| d.address == v.address) {
                Some(d) => d.announced |= alive,
                None => decision.push(Announcement {
                    address: v.address,
                    announced: alive,
                    reason: String::new(),
                }),
            }
        }
        for d in &mut decision {
            let why = if !attached {
                "the XDP program is not attached".to_string()
            } else if let Some(check) = &failing {
                format!("node check failing: {check}")
            } else if !self.synced {
                "the maps are not in sync".to_string()
            } else if !d.announced {
                "no backend alive".to_string()
            } else {
                String::new()
            };
            d.announced = why.is_empty();
            d.reason = why;
        }
        bgp.announce(decision);
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
        let s = self.status.entry(t.addr).or_default();
        let (healthy, not_ready) = match t.health {
            Health::Up => (true, false),
            Health::NotReady => (true, true),
            Health::Down => (false, false),
        };
        if (s.healthy, s.not_ready) == (healthy, not_ready) {
            return;
        }
        (s.healthy, s.not_ready) = (healthy, not_ready);
        match t.health {
            Health::Up => info!(backend = %t.addr, "backend up"),
            Health::NotReady => info!(backend = %t.addr, "backend not ready: draining it"),
            Health::Down => warn!(backend = %t.addr, "backend down"),
        }
        if let Err(e) = self.apply() {
            error!(error = %e, "applying a health change failed");
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

    /// Applies a reloaded `[bgp]`: started, reconfigured, or withdrawn and dropped.
    fn sync_bgp(&mut self) {
        match (&self.config.bgp, self.bgp.as_mut()) {
            (Some(b), Some(a)) => a.reconfigure(b),
            (Some(b), None) => self.bgp = Some(Announcer::start(b)),
            (None, Some(a)) => {
                a.announce(Vec::new());
                self.bgp = None;
            }
            (None, None) => {}
        }
        self.announce();
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

    /// Runs the node checks, logging what changed, and announces accordingly.
    fn check_node(&mut self) {
        let now = crate::node_check::run(&self.config);
        crate::node_check::log_changes(&self.checks, &now);
        self.checks = now;
    }

    /// Rates of the drops that mean this node cannot forward, logged when they start and
    /// when they stop.
    fn sample_drops(&mut self, dt: f64) {
        for (outcome, last, rate) in self.drops.iter_mut() {
            let Ok(n) = self.dp.lb_count(*outcome) else {
                continue;
            };
            // The counters are pinned: what a previous agent saw is not a rate.
            if let Some(before) = *last {
                let new_rate = n.saturating_sub(before) as f64 / dt;
                match (*rate > 0.0, new_rate > 0.0) {
                    (false, true) => warn!(
                        reason = outcome.name(),
                        per_second = new_rate,
                        "VIP packets are being dropped"
                    ),
                    (true, false) => {
                        info!(reason = outcome.name(), "VIP packets no longer dropped")
                    }
                    _ => {}
                }
                *rate = new_rate;
            }
            *last = Some(n);
        }
    }

    fn sample_rates(&mut self) {
        let now = Instant::now();
        let mut current = HashMap::new();
        for v in &self.config.vips {
            for b in &v.backends {
                if let Some(id) = self.ids.backend_id(&b.address) {
                    if let Ok(t) = self.dp.backend_traffic(id) {
                        current.insert(id, (t.packets, t.bytes));
                    }
                }
            }
        }
        if let Some((then, _)) = &self.last_sample {
            let dt = now.duration_since(*then).as_secs_f64().max(1e-3);
            self.sample_drops(dt);
        }
        if let Some((then, prev)) = &self.last_sample {
            let dt = now.duration_since(*then).as_secs_f64().max(1e-3);
            self.rates = current
                .iter()
                .map(|(id, (p, b))| {
                    let (pp, pb) = prev.get(id).copied().unwrap_or((*p, *b));
                    (
                        *id,
                        ((p - pp.min(*p)) as f64 / dt, (b - pb.min(*b)) as f64 / dt),
                    )
                })
                .collect();
        }
        self.last_sample = Some((now, current));
    }

    fn snapshot(&self) -> Status {
        Status {
            vips: self.config.vips.iter().map(|v| self.vip_view(v)).collect(),
            outcomes: Lb::ALL
                .iter()
                .map(|o| (o.name().to_string(), self.dp.lb_count(*o).unwrap_or(0)))
                .collect(),
            flow_events: LbFlow::ALL
                .iter()
                .map(|e| (e.name().to_string(), self.dp.flow_count(*e).unwrap_or(0)))
                .collect(),
            shield: self
                .shield
                .status(&self.dp, &self.config.shield, &self.config.flood_guard),
            bgp: self.bgp.as_ref().map(Announcer::status).unwrap_or_default(),
            node_checks: self.checks.clone(),
            drop_rates: self
                .drops
                .iter()
                .map(|(o, _, r)| (o.name().to_string(), *r))
                .collect(),
            table_generation: self.applied.generation,
            last_disruption: self.applied.last_disruption,
            config: ConfigStatus {
                path: self.path.display().to_string(),
                generation: self.config_generation,
                last_reload_ok: self.last_error.is_none(),
                last_error: self.last_error.clone(),
            },
        }
    }

    /// A VIP with its traffic and its backends.
    fn vip_view(&self, v: &Vip) -> VipStatus {
        let key = crate::addr::vip_key(v.address, v.port, v.protocol.number());
        let t = self
            .ids_vip(&key)
            .and_then(|id| self.dp.vip_traffic(id).ok())
            .unwrap_or_default();
        let protocol = if v.protocol.number() == 6 {
            "tcp"
        } else {
            "udp"
        };
        VipStatus {
            vip: format!("{}:{}/{protocol}", v.address, v.port),
            packets: t.packets,
            bytes: t.bytes,
            backends: v.backends.iter().map(|b| self.backend_view(v, b)).collect(),
        }
    }

    /// A backend as one VIP has it: state, effective weight, traffic and rates.
    fn backend_view(&self, v: &Vip, b: &BackendConfig) -> BackendView {
        let s = self.status.get(&b.address).copied().unwrap_or_default();
        let id = self.ids.backend_id(&b.address);
        let traffic = id
            .and_then(|id| self.dp.backend_traffic(id).ok())
            .unwrap_or_default();
        let (pps, bps) = id
            .and_then(|id| self.rates.get(&id).copied())
            .unwrap_or((0.0, 0.0));
        let configured = s.weight.unwrap_or(b.weight);
        let state = if !s.healthy {
            "down"
        } else if s.draining {
            "draining"
        } else if s.not_ready {
            "not-ready"
        } else {
            "active"
        };
        BackendView {
            address: b.address,
            state: state.into(),
            healthy: s.healthy,
            weight: match (state, v.weights) {
                ("active", WeightMode::Static) => configured,
                ("active", WeightMode::Load) => weights::effective_weight(
                    configured,
                    s.load_percent.unwrap_or(100) as f64 / 100.0,
                ),
                _ => 0,
            },
            configured_weight: configured,
            load_factor: (v.weights == WeightMode::Load)
                .then(|| s.load_percent.unwrap_or(100) as f64 / 100.0),
            packets: traffic.packets,
            bytes: traffic.bytes,
            packets_per_second: pps,
            bytes_per_second: bps,
            load: self.loads.get(&b.address).map(|(r, at)| LoadSeen {
                report: *r,
                age_ms: at.elapsed().as_millis() as u64,
            }),
        }
    }

    /// Turns the data plane's shield switch on or off to match whether any entry is held.
    fn shield_switch(&mut self) -> Result<(), CommandError> {
        if self.applied.shield_switch() == Some(self.shield.active()) {
            return Ok(());
        }
        self.apply().map_err(CommandError::Apply)
    }

    /// Removes expired blocks (the data plane already ignores them).
    fn sweep_blocks(&mut self) {
        if self.shield.sweep(&mut self.dp) > 0 {
            if let Err(e) = self.shield_switch() {
                error!(error = %e, "turning the shield off failed");
            }
        }
    }

    /// Fetches the block candidates of each healthy gateway whose readiness is probed over
    /// HTTP (at that port); the answers come back through `on_pulled`.
    fn pull_candidates(&mut self) {
        if self.config.shield.pull == sluice_util::shield::Mode::Off {
            return;
        }
        let mut targets = BTreeMap::new();
        for v in &self.config.vips {
            let check = v.check(&self.config.health);
            if check.kind != config::CheckKind::Http {
                continue;
            }
            for b in &v.backends {
                if self.status.get(&b.address).is_some_and(|s| s.healthy) {
                    let port = self.config.shield.pull_port.unwrap_or(check.port);
                    targets.entry(b.address).or_insert((port, check.timeout_ms));
                }
            }
        }
        let known: HashSet<IpAddr> = targets.keys().copied().collect();
        self.shield.retain_gateways(|a| known.contains(a));
        for (gateway, (port, timeout_ms)) in targets {
            let tx = self.pull_tx.clone();
            tokio::spawn(async move {
                let target = std::net::SocketAddr::new(gateway, port);
                let result = shield::pull::fetch(target, Duration::from_millis(timeout_ms)).await;
                let _ = tx.send(Pulled { gateway, result });
            });
        }
    }

    fn on_pulled(&mut self, pulled: Pulled) {
        match pulled.result {
            Ok(c) => {
                self.shield
                    .apply_candidates(&mut self.dp, &self.config.shield, pulled.gateway, &c);
                if let Err(e) = self.shield_switch() {
                    error!(error = %e, "turning the shield on failed");
                }
            }
            Err(e) => {
                tracing::debug!(gateway = %pulled.gateway, error = %e, "pulling block candidates failed");
                self.shield.pull_failed(pulled.gateway, e.to_string());
            }
        }
    }

    fn ids_vip(&self, key: &sluice_common::VipKey) -> Option<u32> {
        self.dp.vip(key).ok().flatten().map(|m| m.id)
    }
}
