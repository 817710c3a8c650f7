//! `lb.toml`: what the operator declares. Parsing, defaults and validation.
//!
//! Every error names the file, the field (as a path such as `vip[1].backends[0].weight`) and
//! the reason. A file that fails validation is never applied.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use serde::Deserialize;
use sluice_common::{
    DEFAULT_FLOW_TABLE_SIZE, DEFAULT_TABLE_SIZE, MAX_BACKENDS, MAX_TABLE_SIZE, MAX_VIPS,
};
use sluice_util::{
    config::{parse_toml, read_toml, refuse},
    ConfigError, FieldError,
};

use crate::maglev::is_prime;

mod bgp;
mod restart;
mod shield;
pub use bgp::{parse_community, Bfd, Bgp, Peer};
pub use restart::restart_needed;
pub use shield::{possible_cpus, FloodGuard, Shield};

/// The whole file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This LB node.
    pub node: Node,
    /// The admin API.
    #[serde(default)]
    pub admin: Admin,
    /// Default health check for every VIP's backends.
    #[serde(default)]
    pub health: HealthCheck,
    /// Virtual services.
    #[serde(default, rename = "vip")]
    pub vips: Vec<Vip>,
    /// How `weights = "load"` VIPs move their backends' weights.
    #[serde(default)]
    pub load_weights: LoadWeights,
    /// What the XDP shield blocks, and within which bounds.
    #[serde(default)]
    pub shield: Shield,
    /// When the data plane stops inserting new flows.
    #[serde(default)]
    pub flood_guard: FloodGuard,
    /// Announcing the VIPs over BGP (through BIRD); none without the section.
    #[serde(default)]
    pub bgp: Option<Bgp>,
}

/// Where a VIP's backend weights come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WeightMode {
    /// The configured weights (and operator overrides), as they are.
    #[default]
    Static,
    /// The configured weights times a factor from each gateway's load report.
    Load,
}

/// The `[load_weights]` section: how load-aware weights move (see `weights.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoadWeights {
    /// Least time between two weight pushes.
    pub adjust_interval_ms: u64,
    /// Most of a table's slots one push may move away from backends that stay (0 to 1).
    pub max_disruption: f64,
    /// Share of the way toward its target a factor takes at each adjustment.
    pub smoothing: f64,
    /// Lowest factor on a configured weight.
    pub floor: f64,
    /// Highest factor on a configured weight.
    pub ceiling: f64,
    /// Factors are multiples of this step.
    pub step: f64,
    /// A capacity estimate the agent makes (for reporters that send none) holds within
    /// this share of its value.
    pub deadband: f64,
    /// How much errors count against capacity (utilization per error ratio).
    pub error_penalty: f64,
    /// A report older than this holds its factor.
    pub stale_after_ms: u64,
    /// A report older than this (or none) brings the factor back to 1.
    pub forget_after_ms: u64,
}

impl Default for LoadWeights {
    fn default() -> Self {
        let t = crate::weights::Tuning::default();
        LoadWeights {
            adjust_interval_ms: 3000,
            max_disruption: 0.05,
            smoothing: t.smoothing,
            floor: t.floor,
            ceiling: t.ceiling,
            step: t.step,
            deadband: t.deadband,
            error_penalty: t.error_penalty,
            stale_after_ms: t.stale_after.as_millis() as u64,
            forget_after_ms: t.forget_after.as_millis() as u64,
        }
    }
}

impl LoadWeights {
    /// The controller's tuning.
    pub fn tuning(&self) -> crate::weights::Tuning {
        crate::weights::Tuning {
            smoothing: self.smoothing,
            floor: self.floor,
            ceiling: self.ceiling,
            step: self.step,
            deadband: self.deadband,
            error_penalty: self.error_penalty,
            min_utilization: crate::weights::Tuning::default().min_utilization,
            stale_after: std::time::Duration::from_millis(self.stale_after_ms),
            forget_after: std::time::Duration::from_millis(self.forget_after_ms),
        }
    }

    fn validate(&self) -> Result<(), FieldError> {
        let share = |v: f64| v > 0.0 && v <= 1.0;
        if self.adjust_interval_ms < 500 {
            return refuse("adjust_interval_ms", "at least 500");
        }
        if !share(self.max_disruption) {
            return refuse("max_disruption", "greater than 0 and at most 1");
        }
        if !share(self.smoothing) {
            return refuse("smoothing", "greater than 0 and at most 1");
        }
        if !(self.floor > 0.0 && self.floor <= 1.0) {
            return refuse(
                "floor",
                "greater than 0 and at most 1 (0 would drain by load)",
            );
        }
        if !(self.ceiling >= 1.0 && self.ceiling <= 100.0) {
            return refuse("ceiling", "between 1 and 100");
        }
        if !(self.step >= 0.01 && self.step <= 0.5) {
            return refuse("step", "between 0.01 and 0.5");
        }
        if !(0.0..1.0).contains(&self.deadband) {
            return refuse("deadband", "at least 0 and below 1");
        }
        if !(0.0..=100.0).contains(&self.error_penalty) {
            return refuse("error_penalty", "between 0 and 100");
        }
        if self.forget_after_ms < self.stale_after_ms {
            return refuse("forget_after_ms", "at least stale_after_ms");
        }
        Ok(())
    }
}

/// XDP attach mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode, falling back to generic mode with a warning.
    #[default]
    Auto,
    /// Native mode only.
    Native,
    /// Generic (skb) mode only.
    Generic,
}

/// Node settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Interfaces `sluice_lb` is attached to.
    pub interfaces: Vec<String>,
    /// Attach mode.
    #[serde(default)]
    pub xdp_mode: XdpMode,
    /// Outer source for IPv4 tunnels.
    pub tunnel_source_v4: Option<IpAddr>,
    /// Outer source for IPv6 tunnels.
    pub tunnel_source_v6: Option<IpAddr>,
    /// Low bits of the outer IPv4 source replaced by flow-hash bits (0 to 16), so receivers
    /// can spread tunnels over queues. The source's prefix of that size must route back here.
    #[serde(default)]
    pub source_entropy_bits: u8,
    /// Outer TTL / hop limit.
    #[serde(default = "default_ttl")]
    pub ttl: u8,
    /// bpffs directory for pinned programs, links and maps.
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    /// Capacity of each flow table (IPv4 and IPv6 have one each).
    #[serde(default = "default_flow_table")]
    pub flow_table_size: u32,
    /// Set the sysctls forwarding needs on the interfaces (IP forwarding, `accept_local`)
    /// when they are off; without it they are only reported.
    #[serde(default = "yes")]
    pub manage_sysctls: bool,
    /// How long the established flows of a backend that failed its health checks still go
    /// to it before they are re-picked (new flows leave it at once); 0 re-picks at once.
    #[serde(default = "default_down_grace")]
    pub down_grace_ms: u64,
}

fn default_down_grace() -> u64 {
    2000
}

fn yes() -> bool {
    true
}

fn default_ttl() -> u8 {
    64
}
fn default_pin_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/sluice")
}
fn default_flow_table() -> u32 {
    DEFAULT_FLOW_TABLE_SIZE
}

/// Admin API settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Listen address; loopback by default.
    #[serde(default = "default_admin")]
    pub listen: SocketAddr,
    /// Host names a browser may reach the admin listener (and its dashboard; read at start) by, besides
    /// IP addresses and `localhost`: a browser request naming any other host is refused, so
    /// a web page cannot rebind its own name to this listener and read it.
    #[serde(default)]
    pub host_names: Vec<String>,
    /// A file holding the token that requests changing state (drain, weight, block,
    /// maintenance) must present as `Authorization: Bearer <token>` (the CLI's
    /// `--token-file`): at least 32 visible ASCII characters, e.g. `openssl rand -hex 32`.
    /// Without it such requests are taken only from loopback. Reads stay open. Read again
    /// at each reload.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The token `token_file` held when the config was loaded.
    #[serde(skip)]
    pub token: Option<sluice_util::admin::Token>,
}

fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9180))
}

impl Default for Admin {
    fn default() -> Self {
        Self {
            listen: default_admin(),
            host_names: Vec::new(),
            token_file: None,
            token: None,
        }
    }
}

/// How backends are probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// A TCP connect: up or down, nothing more.
    Tcp,
    /// An HTTP/1.1 GET whose status must match (the default: the gateway's `/readyz` on
    /// its admin port, whose answer also says when it drains, carries its load report and
    /// is where its shield candidates are pulled).
    #[default]
    Http,
}

/// A health check.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Probe kind.
    #[serde(default)]
    pub kind: CheckKind,
    /// Port probed on the backend (the gateway's readiness port).
    #[serde(default = "default_check_port")]
    pub port: u16,
    /// HTTP path.
    #[serde(default = "default_path")]
    pub path: String,
    /// Expected HTTP status.
    #[serde(default = "default_status")]
    pub expect_status: u16,
    /// Time between probes.
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    /// Time a probe may take.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Consecutive successes that bring a backend up.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Consecutive failures that take it down.
    #[serde(default = "default_fall")]
    pub fall: u32,
}

fn default_check_port() -> u16 {
    9000
}
fn default_path() -> String {
    "/readyz".into()
}
fn default_status() -> u16 {
    200
}
fn default_interval() -> u64 {
    1000
}
fn default_timeout() -> u64 {
    500
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            kind: CheckKind::default(),
            port: default_check_port(),
            path: default_path(),
            expect_status: default_status(),
            interval_ms: default_interval(),
            timeout_ms: default_timeout(),
            rise: default_rise(),
            fall: default_fall(),
        }
    }
}

/// Transport protocol of a VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

/// What a VIP hashes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum HashMode {
    /// Source and destination address and port, protocol.
    #[default]
    FiveTuple,
    /// Client address only (client-IP persistence).
    SourceIp,
}

/// A virtual service.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vip {
    /// Address.
    pub address: IpAddr,
    /// Port.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// Hash mode.
    #[serde(default)]
    pub hash: HashMode,
    /// Maglev table size (prime).
    #[serde(default = "default_table")]
    pub table_size: u32,
    /// Health check for this VIP's backends, if not the default.
    pub health: Option<HealthCheck>,
    /// Gateway nodes.
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
    /// `"static"` (the default) or `"load"`: weighted by the gateways' load reports.
    #[serde(default)]
    pub weights: WeightMode,
}

fn default_table() -> u32 {
    DEFAULT_TABLE_SIZE
}

/// A gateway node serving a VIP.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Address the tunnel is sent to (and probed).
    pub address: IpAddr,
    /// Relative weight.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

impl Vip {
    /// The check that applies to this VIP's backends.
    pub fn check<'a>(&'a self, default: &'a HealthCheck) -> &'a HealthCheck {
        self.health.as_ref().unwrap_or(default)
    }
}

/// Reads and validates `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    validated(path, read_toml(path)?)
}

/// Parses and validates `text` read from `path`.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    validated(path, parse_toml(path, text)?)
}

fn validated(path: &Path, mut config: Config) -> Result<Config, ConfigError> {
    validate(&config).map_err(|e| e.in_file(path))?;
    if let Some(file) = &mut config.admin.token_file {
        // Relative to the config file, as the gateway's files are.
        if let Some(dir) = path.parent() {
            *file = dir.join(&*file);
        }
        let token = sluice_util::admin::Token::read(file)
            .map_err(|e| FieldError::new("admin.token_file", e).in_file(path))?;
        config.admin.token = Some(token);
    }
    Ok(config)
}

/// Semantic checks serde cannot express.
pub fn validate(c: &Config) -> Result<(), FieldError> {
    check_node(&c.node).map_err(|e| e.under("node"))?;
    c.load_weights
        .validate()
        .map_err(|e| e.under("load_weights"))?;
    check_health(&c.health).map_err(|e| e.under("health"))?;
    c.shield.validate().map_err(|e| e.under("shield"))?;
    c.flood_guard
        .validate()
        .map_err(|e| e.under("flood_guard"))?;
    if let Some(b) = &c.bgp {
        b.validate().map_err(|e| e.under("bgp"))?;
    }
    if c.vips.len() > MAX_VIPS as usize {
        return refuse("vip", format!("at most {MAX_VIPS} VIPs are supported"));
    }
    let mut seen = HashSet::new();
    let mut checks = ChecksByAddress::new();
    for (i, v) in c.vips.iter().enumerate() {
        let at = format!("vip[{i}]");
        if !seen.insert((v.address, v.port, v.protocol)) {
            return refuse(at, "duplicate VIP (same address, port and protocol)");
        }
        check_vip(c, i, &mut checks).map_err(|e| e.under(&at))?;
    }
    // Every distinct backend address has its entry in `checks`.
    if checks.len() >= MAX_BACKENDS as usize {
        return refuse(
            "vip",
            format!(
                "at most {} distinct backends are supported",
                MAX_BACKENDS - 1
            ),
        );
    }
    Ok(())
}

/// `[node]`; fields relative to it.
fn check_node(n: &Node) -> Result<(), FieldError> {
    if n.interfaces.is_empty() {
        return refuse("interfaces", "at least one interface is required");
    }
    for (i, name) in n.interfaces.iter().enumerate() {
        if name.is_empty() || name.len() > 15 || name.contains('/') || name.contains(' ') {
            return refuse(format!("interfaces[{i}]"), "not a valid interface name");
        }
    }
    if n.tunnel_source_v4.is_some_and(|a| !a.is_ipv4()) {
        return refuse("tunnel_source_v4", "must be an IPv4 address");
    }
    if n.tunnel_source_v6.is_some_and(|a| !a.is_ipv6()) {
        return refuse("tunnel_source_v6", "must be an IPv6 address");
    }
    for (field, source) in [
        ("tunnel_source_v4", n.tunnel_source_v4),
        ("tunnel_source_v6", n.tunnel_source_v6),
    ] {
        if let Some(a) = source {
            unicast(a).or_else(|why| refuse(field, why))?;
        }
    }
    if n.source_entropy_bits > 16 {
        return refuse("source_entropy_bits", "must be between 0 and 16");
    }
    if n.ttl == 0 {
        return refuse("ttl", "must be at least 1");
    }
    if n.down_grace_ms > 600_000 {
        return refuse("down_grace_ms", "at most 600000");
    }
    if n.flow_table_size < 1024 {
        return refuse("flow_table_size", "must be at least 1024");
    }
    if !n.pin_dir.is_absolute() {
        return refuse("pin_dir", "must be an absolute path on bpffs");
    }
    Ok(())
}

/// A health check; fields relative to it.
fn check_health(h: &HealthCheck) -> Result<(), FieldError> {
    if h.interval_ms == 0 {
        return refuse("interval_ms", "must be greater than 0");
    }
    if h.timeout_ms == 0 || h.timeout_ms > h.interval_ms {
        return refuse(
            "timeout_ms",
            "must be greater than 0 and at most interval_ms",
        );
    }
    if h.rise == 0 {
        return refuse("rise", "must be at least 1");
    }
    if h.fall == 0 {
        return refuse("fall", "must be at least 1");
    }
    if h.port == 0 {
        return refuse("port", "must not be 0");
    }
    if h.kind == CheckKind::Http {
        sluice_util::probe::check_path(&h.path).or_else(|why| refuse("path", why))?;
    }
    if !(100..=599).contains(&h.expect_status) {
        return refuse("expect_status", "must be an HTTP status (100-599)");
    }
    Ok(())
}

/// Health is kept per backend address, so every VIP must check an address the same way:
/// each address seen so far with the first VIP that listed it and that VIP's check.
type ChecksByAddress<'a> = HashMap<IpAddr, (usize, &'a HealthCheck)>;

/// `vip[i]`, except its uniqueness among VIPs; fields relative to it.
fn check_vip<'a>(
    c: &'a Config,
    i: usize,
    checks: &mut ChecksByAddress<'a>,
) -> Result<(), FieldError> {
    let v = &c.vips[i];
    if v.port == 0 {
        return refuse("port", "must not be 0");
    }
    if v.weights == WeightMode::Load && v.check(&c.health).kind == CheckKind::Tcp {
        return refuse(
            "weights",
            "\"load\" needs an http health check: the load reports come in the gateways' \
             readiness answers, which a tcp check never reads",
        );
    }
    unicast(v.address).or_else(|why| refuse("address", why))?;
    if !is_prime(v.table_size) || v.table_size > MAX_TABLE_SIZE {
        return refuse(
            "table_size",
            format!("must be a prime no larger than {MAX_TABLE_SIZE}"),
        );
    }
    if let Some(h) = &v.health {
        check_health(h).map_err(|e| e.under("health"))?;
    }
    let check = v.check(&c.health);
    let mut addrs = HashSet::new();
    for (j, b) in v.backends.iter().enumerate() {
        if !addrs.insert(b.address) {
            return refuse(format!("backends[{j}].address"), "listed twice in this VIP");
        }
        check_backend(&c.node, b).map_err(|e| e.under(&format!("backends[{j}]")))?;
        match checks.get(&b.address) {
            Some((k, other)) if *other != check => {
                return refuse(
                    format!("backends[{j}].address"),
                    format!("vip[{k}] health-checks this backend differently; one backend has one check"),
                );
            }
            _ => {
                checks.insert(b.address, (i, check));
            }
        }
    }
    if v.backends.iter().filter(|b| b.weight > 0).count() > v.table_size as usize {
        return refuse("backends", "more weighted backends than table slots");
    }
    Ok(())
}

/// Why `a` cannot be a VIP's, a backend's, a tunnel's or a peer's address, if it cannot: one
/// not unicast, or an IPv4 address written as IPv4-mapped IPv6 (`::ffff:10.0.0.1`), which
/// would be taken as an IPv6 address that no IPv4 packet carries and no IPv6 route reaches
/// (a health check of it would still pass, over IPv4).
pub(crate) fn unicast(a: IpAddr) -> Result<(), String> {
    if a.is_unspecified() || a.is_multicast() {
        return Err("must be a unicast address".into());
    }
    if let IpAddr::V6(v6) = a {
        if let Some(v4) = v6.to_ipv4_mapped() {
            return Err(format!(
                "an IPv4-mapped IPv6 address; write the IPv4 address {v4}"
            ));
        }
    }
    Ok(())
}

/// One backend on its own; fields relative to it.
fn check_backend(node: &Node, b: &BackendConfig) -> Result<(), FieldError> {
    unicast(b.address).or_else(|why| refuse("address", why))?;
    if b.weight > 1000 {
        return refuse("weight", "must be between 0 and 1000");
    }
    let (source, field) = if b.address.is_ipv4() {
        (node.tunnel_source_v4, "node.tunnel_source_v4")
    } else {
        (node.tunnel_source_v6, "node.tunnel_source_v6")
    };
    if source.is_none() {
        return refuse(
            "address",
            format!("tunnelling to this family needs {field}"),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[node]
interfaces = ["eth0"]
tunnel_source_v4 = "10.1.0.1"

[health]
kind = "http"
port = 9000

[[vip]]
address = "198.51.100.1"
port = 80
protocol = "tcp"
backends = [{ address = "10.1.0.11" }, { address = "10.1.0.12", weight = 2 }]
"#;

    fn refuse(text: &str) -> String {
        let e = parse(Path::new("lb.toml"), text).expect_err("must be refused");
        e.to_string()
    }

    #[test]
    fn the_example_file_is_valid() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/lb.example.toml"));
        let c = load(path).expect("the shipped example must stay valid");
        assert_eq!(c.vips.len(), 2);
        assert_eq!(c.vips[1].check(&c.health).port, 80);
        assert_eq!(c.vips[1].check(&c.health).kind, CheckKind::Tcp);
        // The gateways' example serves the VIPs' port and readiness where the probes go.
        let gateway = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../gateway/gateway.example.toml"
        ))
        .expect("the gateway's example");
        assert!(gateway.contains("listen = \"0.0.0.0:9000\""));
        assert!(gateway.contains(&format!("address = \"0.0.0.0:{}\"", c.vips[0].port)));
        assert_eq!(c.health.port, 9000);
    }

    /// Peers BIRD would refuse are refused here, with their field: a config BIRD refuses
    /// would leave every later change, withdrawals included, unsent.
    #[test]
    fn bgp_peers_bird_cannot_take_are_refused() {
        let with = |peers: &str, bfd: bool| {
            format!(
                "{GOOD}\n[bgp]\nlocal_as = 65001\nrouter_id = \"10.1.0.1\"\npeers = [{peers}]\n\
                 bfd = {{ enabled = {bfd} }}\n"
            )
        };
        let e = refuse(&with(r#"{ address = "fe80::1", as = 65000 }"#, true));
        assert!(
            e.contains("bgp.peers[0].address") && e.contains("link-local"),
            "{e}"
        );
        let e = refuse(&with(
            r#"{ address = "10.1.0.254", as = 65000 }, { address = "10.1.0.253", as = 65001 }"#,
            true,
        ));
        assert!(e.contains("bgp.peers[1].as") && e.contains("iBGP"), "{e}");
        // iBGP without BFD, and eBGP with it, are what BIRD takes.
        parse(
            Path::new("lb.toml"),
            &with(r#"{ address = "10.1.0.254", as = 65001 }"#, false),
        )
        .expect("iBGP without BFD");
        let c = parse(
            Path::new("lb.toml"),
            &with(r#"{ address = "fd00::1", as = 65000 }"#, true),
        )
        .expect("eBGP with BFD");
        // An IPv6 peer carries IPv6 VIPs only: an IPv4 VIP is then reported unannounced.
        let bgp = c.bgp.expect("[bgp]");
        assert!(bgp.carries("2001:db8::1".parse().expect("literal")));
        assert!(!bgp.carries("198.51.100.1".parse().expect("literal")));
    }

    /// The admin token file is read with the config, from the config file's directory when
    /// relative, and refused with its field when unfit.
    #[test]
    fn the_admin_token_file_is_read_beside_the_config() {
        let dir = std::env::temp_dir().join(format!("sluice-lb-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let token = "0123456789abcdef0123456789abcdef";
        std::fs::write(dir.join("admin.token"), format!("{token}\n")).expect("token");
        std::fs::set_permissions(
            dir.join("admin.token"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("chmod");
        std::fs::write(dir.join("short.token"), "short\n").expect("token");
        let with = |file: &str| format!("[admin]\ntoken_file = \"{file}\"\n{GOOD}");
        let good = parse(&dir.join("lb.toml"), &with("admin.token"));
        let short = parse(&dir.join("lb.toml"), &with("short.token"));
        let missing = parse(&dir.join("lb.toml"), &with("none.token"));
        let _ = std::fs::remove_dir_all(&dir);
        let good = good.expect("valid");
        assert_eq!(good.admin.token_file, Some(dir.join("admin.token")));
        assert_eq!(
            good.admin.token.map(|t| t.header_value()),
            Some(format!("Bearer {token}"))
        );
        for e in [short, missing] {
            let e = e.expect_err("refused").to_string();
            assert!(e.contains("lb.toml: admin.token_file: "), "{e}");
        }
    }

    #[test]
    fn a_good_file_with_defaults() {
        let c = parse(Path::new("lb.toml"), GOOD).expect("valid");
        assert_eq!(c.vips[0].table_size, 65537);
        assert_eq!(c.vips[0].backends[0].weight, 1);
        assert_eq!(c.health.path, "/readyz");
        assert_eq!(c.admin.listen, "127.0.0.1:9180".parse().expect("literal"));
        assert_eq!(c.node.pin_dir, PathBuf::from("/sys/fs/bpf/sluice"));
    }

    #[test]
    fn bad_files_name_field_and_reason() {
        let cases = [
            (GOOD.replace("65537", "1").replace("protocol = \"tcp\"", "protocol = \"tcp\"\ntable_size = 65536"),
             "lb.toml: vip[0].table_size: must be a prime no larger than 65537"),
            (GOOD.replace("weight = 2", "weight = 5000"),
             "lb.toml: vip[0].backends[1].weight: must be between 0 and 1000"),
            (GOOD.replace("10.1.0.12", "10.1.0.11"),
             "lb.toml: vip[0].backends[1].address: listed twice in this VIP"),
            (GOOD.replace("tunnel_source_v4 = \"10.1.0.1\"", ""),
             "lb.toml: vip[0].backends[0].address: tunnelling to this family needs node.tunnel_source_v4"),
            (format!("{GOOD}\n[load_weights]\nfloor = nan\n"),
             "lb.toml: load_weights.floor: greater than 0 and at most 1 (0 would drain by load)"),
            (format!("{GOOD}\n[load_weights]\nceiling = inf\n"),
             "lb.toml: load_weights.ceiling: between 1 and 100"),
            (format!("{GOOD}\n[load_weights]\nmax_disruption = 0\n"),
             "lb.toml: load_weights.max_disruption: greater than 0 and at most 1"),
            (format!("{GOOD}\n[load_weights]\nstale_after_ms = 5000\nforget_after_ms = 1000\n"),
             "lb.toml: load_weights.forget_after_ms: at least stale_after_ms"),
            (GOOD.replace("port = 9000", "port = 9000\ninterval_ms = 100\ntimeout_ms = 200"),
             "lb.toml: health.timeout_ms: must be greater than 0 and at most interval_ms"),
            (format!("{GOOD}\n[[vip]]\naddress = \"198.51.100.2\"\nport = 80\nprotocol = \"tcp\"\nhealth = {{ kind = \"tcp\" }}\nbackends = [{{ address = \"10.1.0.11\" }}]\n"),
             "lb.toml: vip[1].backends[0].address: vip[0] health-checks this backend differently; one backend has one check"),
            (GOOD.replace("[\"eth0\"]", "[]"),
             "lb.toml: node.interfaces: at least one interface is required"),
            (GOOD.replace("\"10.1.0.12\"", "\"::ffff:10.1.0.12\"").replace("tunnel_source_v4 = \"10.1.0.1\"", "tunnel_source_v4 = \"10.1.0.1\"\ntunnel_source_v6 = \"fd00::1\""),
             "lb.toml: vip[0].backends[1].address: an IPv4-mapped IPv6 address; write the IPv4 address 10.1.0.12"),
            (GOOD.replace("\"198.51.100.1\"", "\"::ffff:198.51.100.1\""),
             "lb.toml: vip[0].address: an IPv4-mapped IPv6 address; write the IPv4 address 198.51.100.1"),
            (GOOD.replace("tunnel_source_v4 = \"10.1.0.1\"", "tunnel_source_v4 = \"10.1.0.1\"\ntunnel_source_v6 = \"::ffff:10.1.0.1\""),
             "lb.toml: node.tunnel_source_v6: an IPv4-mapped IPv6 address; write the IPv4 address 10.1.0.1"),
            (GOOD.replace("kind = \"http\"", "kind = \"http\"\npath = \"readyz\""),
             "lb.toml: health.path: must start with '/'"),
            (format!("{GOOD}\n[[vip]]\naddress = \"198.51.100.1\"\nport = 80\nprotocol = \"tcp\"\n"),
             "lb.toml: vip[1]: duplicate VIP (same address, port and protocol)"),
            (GOOD.replace("kind = \"http\"", "kind = \"tcp\"").replace("protocol = \"tcp\"", "protocol = \"tcp\"\nweights = \"load\""),
             "lb.toml: vip[0].weights: \"load\" needs an http health check: the load reports come in the gateways' readiness answers, which a tcp check never reads"),
        ];
        for (text, want) in cases {
            assert_eq!(refuse(&text), want);
        }
    }

    #[test]
    fn syntax_and_schema_errors_point_at_the_line() {
        let e = refuse(&GOOD.replace("protocol = \"tcp\"", "protocol = \"sctp\""));
        assert!(
            e.starts_with("lb.toml: vip[0].protocol (line 13): unknown variant `sctp`"),
            "{e}"
        );
        let e = refuse(&GOOD.replace("[health]", "[health]\nbogus = 1"));
        assert!(
            e.starts_with("lb.toml: health.bogus (line 7): unknown field `bogus`"),
            "{e}"
        );
        let e = refuse("[node\n");
        assert!(e.starts_with("lb.toml: line 1:"), "{e}");
    }
}
