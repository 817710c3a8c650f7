//! `gateway.toml`: listeners, routes, upstreams and admin in one file.
//!
//! Errors name the file, the field path and the reason. A file that fails is never applied.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

pub mod policy;

pub use policy::{
    Analytics, ClientIp, Consumer, JwtIssuer, RateLimit, Redis, RequestTransform,
    ResponseTransform, RouteAuth, RouteAuthorize, Step,
};

/// A refused config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// Field path, or `line N` for syntax errors.
    pub field: String,
    /// Why.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}",
            self.file.display(),
            self.field,
            self.reason
        )
    }
}

impl std::error::Error for ConfigError {}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Admin listener.
    #[serde(default)]
    pub admin: Admin,
    /// Client-facing listeners.
    #[serde(rename = "listener")]
    pub listeners: Vec<Listener>,
    /// Upstream pools.
    #[serde(default, rename = "upstream")]
    pub upstreams: Vec<Upstream>,
    /// Routes.
    #[serde(default, rename = "route")]
    pub routes: Vec<Route>,
    /// Access log.
    #[serde(default)]
    pub access_log: AccessLog,
    /// API consumers.
    #[serde(default, rename = "consumer")]
    pub consumers: Vec<Consumer>,
    /// JWT issuers.
    #[serde(default, rename = "jwt_issuer")]
    pub jwt_issuers: Vec<JwtIssuer>,
    /// Named rate and concurrency limits.
    #[serde(default, rename = "rate_limit")]
    pub rate_limits: Vec<RateLimit>,
    /// Shared store for `store = "redis"` limits.
    pub redis: Option<Redis>,
    /// Where the client address comes from.
    #[serde(default)]
    pub client_ip: ClientIp,
    /// Usage analytics.
    #[serde(default)]
    pub analytics: Analytics,
}

/// A field of the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessField {
    /// The request id (kept or made).
    RequestId,
    /// The client address (the real one under DSR).
    Client,
    /// Method.
    Method,
    /// Host.
    Host,
    /// Path.
    Path,
    /// `User-Agent`.
    UserAgent,
    /// Route name.
    Route,
    /// Response status.
    Status,
    /// Time to the response head, in milliseconds.
    DurationMs,
}

/// Access-log settings: one JSON line per request (tracing target `access`, so `RUST_LOG`
/// can also turn it off).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    /// Fields written, in this set.
    #[serde(default = "default_access_fields")]
    pub fields: Vec<AccessField>,
}

fn default_access_fields() -> Vec<AccessField> {
    use AccessField::*;
    vec![
        RequestId, Client, Method, Host, Path, Route, Status, DurationMs,
    ]
}

impl Default for AccessLog {
    fn default() -> Self {
        Self {
            fields: default_access_fields(),
        }
    }
}

/// Admin listener settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Address; loopback by default.
    #[serde(default = "default_admin")]
    pub listen: SocketAddr,
    /// How long in-flight requests may take to finish on shutdown.
    #[serde(default = "default_drain_ms")]
    pub shutdown_deadline_ms: u64,
    /// On SIGTERM, how long readiness fails before the listeners close: set it above the
    /// L4 tier's health budget (interval x fall), so the load balancers stop sending new
    /// flows before anything is refused.
    #[serde(default)]
    pub drain_delay_ms: u64,
}

fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9000))
}
fn default_drain_ms() -> u64 {
    10_000
}

impl Default for Admin {
    fn default() -> Self {
        Self {
            listen: default_admin(),
            shutdown_deadline_ms: default_drain_ms(),
            drain_delay_ms: 0,
        }
    }
}

/// A client-facing listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Name (for logs and metrics).
    pub name: String,
    /// Address to bind, e.g. the VIP on a gateway node.
    pub address: SocketAddr,
    /// Bind with `IP_FREEBIND`, so the address need not exist yet.
    #[serde(default)]
    pub freebind: bool,
    /// Most open connections; more are refused.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Time allowed for a request head once it has started to arrive (slowloris). Over TLS,
    /// HTTP/1.1 heads are also held to `keepalive_timeout_ms` from the previous response.
    #[serde(default = "default_header_timeout")]
    pub header_read_timeout_ms: u64,
    /// Time allowed for the TLS handshake.
    #[serde(default = "default_header_timeout")]
    pub tls_handshake_timeout_ms: u64,
    /// Time from a connection's start (after TLS) until its first request head is complete:
    /// protocol detection, the HTTP/2 preface and SETTINGS, and the first head.
    #[serde(default = "default_header_timeout")]
    pub first_request_timeout_ms: u64,
    /// How long an HTTP/1.1 connection may wait, idle, for its next request.
    #[serde(default = "default_header_timeout")]
    pub keepalive_timeout_ms: u64,
    /// How long an HTTP/2 connection may stay with no request in flight before it is sent
    /// GOAWAY and closed.
    #[serde(default = "default_http2_idle")]
    pub http2_idle_timeout_ms: u64,
    /// How long a response may go untaken by its client (it does not read, or withholds
    /// HTTP/2 flow-control credit) while nothing waits for an upstream.
    #[serde(default = "default_stream_idle")]
    pub stream_idle_timeout_ms: u64,
    /// Most open connections from one client address (absent: no limit).
    #[serde(default)]
    pub max_connections_per_client: Option<usize>,
    /// Merge runs of `/` in request paths into one.
    #[serde(default = "policy::default_true")]
    pub merge_slashes: bool,
    /// `%2F`, `%5C` and `\` in request paths: `"reject"` (400, the default) or `"keep"`.
    #[serde(default)]
    pub escaped_slashes: crate::pipeline::path::EscapedSlashes,
    /// `;` parameters in request path segments: `"reject"` (400, the default) or `"keep"`.
    #[serde(default)]
    pub path_parameters: crate::pipeline::path::PathParameters,
    /// Largest request head (bytes).
    #[serde(default = "default_header_bytes")]
    pub max_header_bytes: usize,
    /// Most request header fields.
    #[serde(default = "default_headers")]
    pub max_headers: usize,
    /// Largest request body (bytes).
    #[serde(default = "default_body")]
    pub max_body_bytes: u64,
    /// TLS; absent = plain HTTP/1.1 and h2c.
    pub tls: Option<Tls>,
}

/// TLS settings of a listener (TLS 1.2 and 1.3, ALPN h2 and http/1.1).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// Certificates, chosen by SNI; the first one also answers clients that send no SNI or
    /// an unknown name.
    pub certificates: Vec<Certificate>,
    /// CA bundle: when set, clients must present a certificate it signed (mTLS).
    pub client_ca: Option<PathBuf>,
}

/// A certificate chain and key, and the server names it serves.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    /// PEM chain, leaf first. Relative paths are relative to the config file.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// Names (exact or `*.wildcard`) this certificate is chosen for.
    #[serde(default)]
    pub server_names: Vec<String>,
}

fn default_max_connections() -> usize {
    10_000
}
fn default_header_timeout() -> u64 {
    10_000
}
fn default_http2_idle() -> u64 {
    60_000
}
fn default_stream_idle() -> u64 {
    300_000
}
fn default_header_bytes() -> usize {
    16 * 1024
}
fn default_headers() -> usize {
    100
}
fn default_body() -> u64 {
    10 * 1024 * 1024
}

/// How a pool picks a target.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Weighted round robin.
    #[default]
    RoundRobin,
    /// Fewest requests in flight (ties by weight).
    LeastRequest,
    /// Two random choices, the one with the lower EWMA latency times load.
    P2cEwma,
    /// Consistent hash on a header's value.
    HashHeader(String),
    /// Consistent hash on a cookie's value.
    HashCookie(String),
    /// Consistent hash on the client address.
    HashClientIp,
}

/// An upstream pool.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Name routes refer to.
    pub name: String,
    /// Balancing.
    #[serde(default)]
    pub balance: Balance,
    /// Targets.
    pub targets: Vec<Target>,
    /// Most requests in flight to this pool; more get 503 with Retry-After.
    #[serde(default = "default_concurrency")]
    pub max_concurrent_requests: usize,
    /// Speak HTTP/2 (prior knowledge) to the targets instead of HTTP/1.1.
    #[serde(default)]
    pub http2: bool,
    /// Active health checks of the targets.
    pub health: Option<HealthCheck>,
    /// Passive outlier ejection.
    pub outlier: Option<Outlier>,
    /// Session persistence: a cookie of this name pins a client to the target that served
    /// it first (while that target is usable).
    pub session_cookie: Option<String>,
}

/// An active HTTP health check.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Path probed with GET.
    #[serde(default = "default_health_path")]
    pub path: String,
    /// Expected status.
    #[serde(default = "default_health_status")]
    pub expect_status: u16,
    /// Time between probes.
    #[serde(default = "default_health_interval")]
    pub interval_ms: u64,
    /// Time a probe may take.
    #[serde(default = "default_health_timeout")]
    pub timeout_ms: u64,
    /// Successes that bring a target back.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Failures that take it out.
    #[serde(default = "default_fall")]
    pub fall: u32,
}

fn default_health_path() -> String {
    "/healthz".into()
}
fn default_health_status() -> u16 {
    200
}
fn default_health_interval() -> u64 {
    1000
}
fn default_health_timeout() -> u64 {
    500
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}

/// Passive outlier ejection: targets that keep failing are taken out for a while.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outlier {
    /// Consecutive 5xx responses that eject a target (0 = never).
    #[serde(default = "default_consecutive")]
    pub consecutive_5xx: u32,
    /// Consecutive connect failures that eject a target (0 = never).
    #[serde(default = "default_consecutive")]
    pub consecutive_connect_errors: u32,
    /// First ejection time; the n-th ejection of the same target lasts n times as long.
    #[serde(default = "default_ejection")]
    pub base_ejection_ms: u64,
    /// Most of the pool that may be ejected at once (%).
    #[serde(default = "default_max_ejection")]
    pub max_ejection_percent: u32,
}

fn default_consecutive() -> u32 {
    5
}
fn default_ejection() -> u64 {
    30_000
}
fn default_max_ejection() -> u32 {
    50
}

fn default_concurrency() -> usize {
    10_000
}

/// A pool member.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Address.
    pub address: SocketAddr,
    /// Relative weight.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// How a route matches the path.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum PathMatch {
    /// The whole path.
    Exact(String),
    /// Segments with `{name}` parameters, e.g. `/users/{id}/orders`.
    Template(String),
    /// A prefix at a segment boundary (`/api` matches `/api` and `/api/x`, not `/apix`).
    Prefix(String),
    /// A regular expression over the path.
    Regex(String),
}

/// A weighted share of a route's traffic.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Split {
    /// Upstream name.
    pub upstream: String,
    /// Relative weight.
    pub weight: u32,
}

/// A redirect answer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    /// `Location`.
    pub location: String,
    /// 301, 302, 303, 307 or 308.
    #[serde(default = "default_redirect")]
    pub status: u16,
}

fn default_redirect() -> u16 {
    302
}

/// Per-route timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// Connecting to a target.
    #[serde(default = "default_connect")]
    pub connect_ms: u64,
    /// The whole upstream exchange, up to the response head.
    #[serde(default = "default_request")]
    pub request_ms: u64,
    /// Pooled upstream connections idle longer are closed.
    #[serde(default = "default_upstream_idle")]
    pub idle_ms: u64,
}

fn default_connect() -> u64 {
    1_000
}
fn default_request() -> u64 {
    15_000
}
fn default_upstream_idle() -> u64 {
    90_000
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect_ms: default_connect(),
            request_ms: default_request(),
            idle_ms: default_upstream_idle(),
        }
    }
}

/// Retry policy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retries {
    /// Extra attempts after the first.
    #[serde(default)]
    pub attempts: u32,
    /// Statuses that are retried (connect failures always are).
    #[serde(default)]
    pub on_status: Vec<u16>,
    /// Retries may add at most this share of the route's recent requests (%).
    #[serde(default = "default_budget")]
    pub budget_percent: u32,
}

fn default_budget() -> u32 {
    20
}

impl Default for Retries {
    fn default() -> Self {
        Self {
            attempts: 0,
            on_status: Vec::new(),
            budget_percent: default_budget(),
        }
    }
}

/// A route.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Name (metrics label).
    pub name: String,
    /// Host: exact (`api.example.com`) or wildcard (`*.example.com`); absent = any.
    pub host: Option<String>,
    /// Path match; absent = any.
    pub path: Option<PathMatch>,
    /// Methods; empty = any.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Headers that must have these values.
    #[serde(default)]
    pub headers: HashMap<String, String>,
    /// Query parameters that must have these values.
    #[serde(default)]
    pub query: HashMap<String, String>,
    /// One upstream.
    pub upstream: Option<String>,
    /// Or weighted splits.
    #[serde(default)]
    pub splits: Vec<Split>,
    /// Or a redirect.
    pub redirect: Option<Redirect>,
    /// Timeouts.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Retries.
    #[serde(default)]
    pub retries: Retries,
    /// Order of the policy steps.
    #[serde(default = "policy::default_order")]
    pub policy_order: Vec<Step>,
    /// Authentication; absent = anyone.
    pub auth: Option<RouteAuth>,
    /// Authorization.
    pub authorize: Option<RouteAuthorize>,
    /// Limits applied (names of `[[rate_limit]]`), all of which must allow.
    #[serde(default)]
    pub rate_limits: Vec<String>,
    /// Request transform.
    pub request_transform: Option<RequestTransform>,
    /// Response transform.
    pub response_transform: Option<ResponseTransform>,
}

/// Reads and validates `path`, including that every TLS file loads. Relative TLS paths are
/// resolved against the file's directory.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_owned(),
        field: "-".into(),
        reason: format!("cannot read: {e}"),
    })?;
    let mut config = parse(path, &text)?;
    let base = path.parent().unwrap_or(Path::new("."));
    for (i, l) in config.listeners.iter_mut().enumerate() {
        if let Some(tls) = &mut l.tls {
            for c in &mut tls.certificates {
                c.cert = base.join(&c.cert);
                c.key = base.join(&c.key);
            }
            if let Some(ca) = &mut tls.client_ca {
                *ca = base.join(&*ca);
            }
            crate::downstream::tls::server_config(tls).map_err(|e| ConfigError {
                file: path.to_owned(),
                field: format!("listener[{i}].tls.{}", e.field),
                reason: e.reason,
            })?;
        }
    }
    if let Some(r) = &mut config.redis {
        if let Some(ca) = &mut r.ca_file {
            *ca = base.join(&*ca).to_string_lossy().into_owned();
        }
        crate::pipeline::policy::redis_store::RedisStore::new(r.clone()).map_err(|reason| {
            ConfigError {
                file: path.to_owned(),
                field: "redis".into(),
                reason,
            }
        })?;
    }
    for (i, j) in config.jwt_issuers.iter_mut().enumerate() {
        for k in j.keys.iter_mut().chain(j.hmac_secrets.iter_mut()) {
            k.file = base.join(&k.file).to_string_lossy().into_owned();
        }
        if let Some(f) = &mut j.jwks_file {
            *f = base.join(&*f).to_string_lossy().into_owned();
        }
        crate::pipeline::policy::jwt::Issuer::load(j.clone()).map_err(|(field, reason)| {
            ConfigError {
                file: path.to_owned(),
                field: format!("jwt_issuer[{i}].{field}"),
                reason,
            }
        })?;
    }
    Ok(config)
}

/// Parses and validates `text`.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let config: Config = toml::from_str(text).map_err(|e| ConfigError {
        file: path.to_owned(),
        field: e
            .span()
            .map(|s| {
                format!(
                    "line {}",
                    text[..s.start.min(text.len())].lines().count().max(1)
                )
            })
            .unwrap_or_else(|| "-".into()),
        reason: e.message().to_string(),
    })?;
    validate(&config).map_err(|(field, reason)| ConfigError {
        file: path.to_owned(),
        field,
        reason,
    })?;
    Ok(config)
}

fn valid_host(h: &str) -> bool {
    let h = h.strip_prefix("*.").unwrap_or(h);
    !h.is_empty()
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// The longest connection deadline accepted (a day): far beyond any use, and safely
/// added to a clock.
const MAX_TIMEOUT_MS: u64 = 86_400_000;

/// Semantic checks. `Err((field, reason))`.
pub fn validate(c: &Config) -> Result<(), (String, String)> {
    let bad = |f: String, r: &str| Err((f, r.to_string()));
    if c.listeners.is_empty() {
        return bad("listener".into(), "at least one listener is required");
    }
    let mut names = HashSet::new();
    for (i, l) in c.listeners.iter().enumerate() {
        let at = format!("listener[{i}]");
        if !names.insert(&l.name) {
            return bad(format!("{at}.name"), "duplicate listener name");
        }
        if l.max_connections == 0 {
            return bad(format!("{at}.max_connections"), "must be at least 1");
        }
        for (field, ms) in [
            ("header_read_timeout_ms", l.header_read_timeout_ms),
            ("tls_handshake_timeout_ms", l.tls_handshake_timeout_ms),
            ("first_request_timeout_ms", l.first_request_timeout_ms),
            ("keepalive_timeout_ms", l.keepalive_timeout_ms),
            ("http2_idle_timeout_ms", l.http2_idle_timeout_ms),
            ("stream_idle_timeout_ms", l.stream_idle_timeout_ms),
        ] {
            if ms == 0 || ms > MAX_TIMEOUT_MS {
                return bad(
                    format!("{at}.{field}"),
                    "must be greater than 0 and at most a day (86400000)",
                );
            }
        }
        if l.max_connections_per_client == Some(0) {
            return bad(
                format!("{at}.max_connections_per_client"),
                "must be at least 1 (leave it out for no limit)",
            );
        }
        if l.max_header_bytes < 1024 {
            return bad(format!("{at}.max_header_bytes"), "must be at least 1024");
        }
        if l.max_headers == 0 {
            return bad(format!("{at}.max_headers"), "must be at least 1");
        }
        if let Some(tls) = &l.tls {
            if tls.certificates.is_empty() {
                return bad(
                    format!("{at}.tls.certificates"),
                    "at least one certificate is required",
                );
            }
            for (j, c) in tls.certificates.iter().enumerate() {
                for n in &c.server_names {
                    if !valid_host(n) {
                        return bad(
                            format!("{at}.tls.certificates[{j}].server_names"),
                            &format!("{n:?} is not a host name or *.wildcard"),
                        );
                    }
                }
            }
        }
    }
    let mut upstreams = HashSet::new();
    for (i, u) in c.upstreams.iter().enumerate() {
        let at = format!("upstream[{i}]");
        if !upstreams.insert(u.name.as_str()) {
            return bad(format!("{at}.name"), "duplicate upstream name");
        }
        if u.targets.is_empty() {
            return bad(format!("{at}.targets"), "at least one target is required");
        }
        if u.targets.iter().all(|t| t.weight == 0) {
            return bad(
                format!("{at}.targets"),
                "at least one target needs a weight above 0",
            );
        }
        if u.max_concurrent_requests == 0 {
            return bad(
                format!("{at}.max_concurrent_requests"),
                "must be at least 1",
            );
        }
        if let Some(h) = &u.health {
            if !h.path.starts_with('/') {
                return bad(format!("{at}.health.path"), "must start with '/'");
            }
            if h.interval_ms == 0 || h.timeout_ms == 0 || h.timeout_ms > h.interval_ms {
                return bad(
                    format!("{at}.health.timeout_ms"),
                    "must be greater than 0 and at most interval_ms",
                );
            }
            if h.rise == 0 || h.fall == 0 {
                return bad(format!("{at}.health"), "rise and fall must be at least 1");
            }
        }
        if let Some(o) = &u.outlier {
            if o.max_ejection_percent > 100 {
                return bad(
                    format!("{at}.outlier.max_ejection_percent"),
                    "between 0 and 100",
                );
            }
            if o.base_ejection_ms == 0 {
                return bad(
                    format!("{at}.outlier.base_ejection_ms"),
                    "must be greater than 0",
                );
            }
        }
        if let Balance::HashHeader(h) | Balance::HashCookie(h) = &u.balance {
            if h.is_empty() {
                return bad(format!("{at}.balance"), "needs a header or cookie name");
            }
        }
    }
    let policies = policy::Policies {
        consumers: &c.consumers,
        issuers: &c.jwt_issuers,
        limits: &c.rate_limits,
        redis: c.redis.as_ref(),
        client_ip: &c.client_ip,
        analytics_minutes: c.analytics.minutes,
    };
    policies.validate()?;
    let mut route_names = HashSet::new();
    for (i, r) in c.routes.iter().enumerate() {
        let at = format!("route[{i}]");
        if !route_names.insert(r.name.as_str()) {
            return bad(format!("{at}.name"), "duplicate route name");
        }
        if let Some(h) = &r.host {
            if !valid_host(h) {
                return bad(format!("{at}.host"), "not a host name or *.wildcard");
            }
        }
        match &r.path {
            Some(PathMatch::Exact(p) | PathMatch::Prefix(p) | PathMatch::Template(p))
                if !p.starts_with('/') =>
            {
                return bad(format!("{at}.path"), "must start with '/'");
            }
            Some(PathMatch::Regex(re)) => {
                if let Err(e) = regex::Regex::new(re) {
                    return bad(format!("{at}.path.regex"), &format!("invalid regex: {e}"));
                }
            }
            Some(PathMatch::Template(t)) => {
                for seg in t.split('/') {
                    let opens = seg.matches('{').count();
                    let closes = seg.matches('}').count();
                    let whole =
                        seg.starts_with('{') && seg.ends_with('}') && opens == 1 && closes == 1;
                    if (opens > 0 || closes > 0) && !whole {
                        return bad(
                            format!("{at}.path.template"),
                            "a {param} must be a whole segment",
                        );
                    }
                }
            }
            _ => {}
        }
        for m in &r.methods {
            if m.is_empty() || !m.chars().all(|c| c.is_ascii_uppercase()) {
                return bad(
                    format!("{at}.methods"),
                    &format!("{m:?} is not an upper-case method"),
                );
            }
        }
        for h in r.headers.keys() {
            if hyper::header::HeaderName::from_bytes(h.as_bytes()).is_err() {
                return bad(
                    format!("{at}.headers"),
                    &format!("{h:?} is not a header name"),
                );
            }
        }
        let targets = usize::from(r.upstream.is_some())
            + usize::from(!r.splits.is_empty())
            + usize::from(r.redirect.is_some());
        if targets != 1 {
            return bad(at, "needs exactly one of upstream, splits or redirect");
        }
        if let Some(u) = &r.upstream {
            if !upstreams.contains(u.as_str()) {
                return bad(
                    format!("{at}.upstream"),
                    &format!("no upstream named {u:?}"),
                );
            }
        }
        for (j, s) in r.splits.iter().enumerate() {
            if !upstreams.contains(s.upstream.as_str()) {
                return bad(
                    format!("{at}.splits[{j}].upstream"),
                    &format!("no upstream named {:?}", s.upstream),
                );
            }
        }
        if !r.splits.is_empty() && r.splits.iter().all(|s| s.weight == 0) {
            return bad(
                format!("{at}.splits"),
                "at least one split needs a weight above 0",
            );
        }
        if let Some(rd) = &r.redirect {
            if ![301, 302, 303, 307, 308].contains(&rd.status) {
                return bad(
                    format!("{at}.redirect.status"),
                    "must be 301, 302, 303, 307 or 308",
                );
            }
            if hyper::header::HeaderValue::from_str(&rd.location).is_err() {
                return bad(
                    format!("{at}.redirect.location"),
                    "not a valid header value",
                );
            }
        }
        if r.timeouts.connect_ms == 0 || r.timeouts.request_ms == 0 {
            return bad(format!("{at}.timeouts"), "timeouts must be greater than 0");
        }
        policies.validate_route(&at, r)?;
        if r.retries.attempts > 5 {
            return bad(format!("{at}.retries.attempts"), "at most 5");
        }
        if r.retries.budget_percent > 100 {
            return bad(format!("{at}.retries.budget_percent"), "between 0 and 100");
        }
        for s in &r.retries.on_status {
            if !(500..=599).contains(s) {
                return bad(
                    format!("{at}.retries.on_status"),
                    &format!("{s} is not a 5xx status"),
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[listener]]
name = "http"
address = "127.0.0.1:8080"

[[upstream]]
name = "api"
targets = [{ address = "127.0.0.1:9001" }]

[[route]]
name = "api"
path = { prefix = "/api" }
upstream = "api"
"#;

    fn refuse(text: &str) -> String {
        parse(Path::new("gw.toml"), text)
            .expect_err("must be refused")
            .to_string()
    }

    #[test]
    fn good_file_and_defaults() {
        let c = parse(Path::new("gw.toml"), GOOD).expect("valid");
        assert_eq!(c.admin.listen, "127.0.0.1:9000".parse().expect("literal"));
        assert_eq!(c.listeners[0].max_header_bytes, 16384);
        assert_eq!(c.upstreams[0].balance, Balance::RoundRobin);
    }

    #[test]
    fn bad_files_name_field_and_reason() {
        let cases = [
            (
                GOOD.replace("upstream = \"api\"\n", "upstream = \"nope\"\n"),
                "gw.toml: route[0].upstream: no upstream named \"nope\"",
            ),
            (
                GOOD.replace("{ prefix = \"/api\" }", "{ regex = \"([\" }"),
                "gw.toml: route[0].path.regex: invalid regex",
            ),
            (
                GOOD.replace("{ prefix = \"/api\" }", "{ template = \"/u/x{id}\" }"),
                "gw.toml: route[0].path.template: a {param} must be a whole segment",
            ),
            (
                GOOD.replace("{ prefix = \"/api\" }", "{ prefix = \"api\" }"),
                "gw.toml: route[0].path: must start with '/'",
            ),
            (
                GOOD.replace(
                    "targets = [{ address = \"127.0.0.1:9001\" }]",
                    "targets = []",
                ),
                "gw.toml: upstream[0].targets: at least one target is required",
            ),
            (
                format!("{GOOD}redirect = {{ location = \"/x\" }}\n"),
                "gw.toml: route[0]: needs exactly one of upstream, splits or redirect",
            ),
            (
                GOOD.replace(
                    "path = { prefix = \"/api\" }",
                    "path = { prefix = \"/api\" }\nhost = \"bad host\"",
                ),
                "gw.toml: route[0].host: not a host name or *.wildcard",
            ),
            (
                GOOD.replace(
                    "path = { prefix = \"/api\" }",
                    "path = { prefix = \"/api\" }\nmethods = [\"get\"]",
                ),
                "gw.toml: route[0].methods: \"get\" is not an upper-case method",
            ),
        ];
        for (text, want) in cases {
            let got = refuse(&text);
            assert!(got.starts_with(want), "{got}\n  wanted {want}");
        }
    }
}
