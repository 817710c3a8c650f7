//! `[[upstream]]`: pools of targets, how they are balanced, checked and ejected.

use std::net::SocketAddr;

use serde::Deserialize;
use sluice_util::{config::refuse, FieldError};

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

impl Upstream {
    /// Checks one pool; fields are named relative to it.
    pub(super) fn validate(&self) -> Result<(), FieldError> {
        if self.targets.is_empty() {
            return refuse("targets", "at least one target is required");
        }
        if self.targets.iter().all(|t| t.weight == 0) {
            return refuse("targets", "at least one target needs a weight above 0");
        }
        if self.max_concurrent_requests == 0 {
            return refuse("max_concurrent_requests", "must be at least 1");
        }
        if let Some(h) = &self.health {
            h.validate().map_err(|e| e.under("health"))?;
        }
        if let Some(o) = &self.outlier {
            o.validate().map_err(|e| e.under("outlier"))?;
        }
        if let Balance::HashHeader(h) | Balance::HashCookie(h) = &self.balance {
            if h.is_empty() {
                return refuse("balance", "needs a header or cookie name");
            }
        }
        if let Balance::HashCookie(c) = &self.balance {
            if !is_token(c) {
                return refuse("balance", format!("{c:?} is not a cookie name"));
            }
        }
        if let Some(c) = self.session_cookie.as_ref().filter(|c| !is_token(c)) {
            return refuse("session_cookie", format!("{c:?} is not a cookie name"));
        }
        Ok(())
    }
}

/// An RFC 9110 token, which is what a cookie name is (RFC 6265 §4.1.1): no separators, so it
/// can neither break a `Cookie` lookup nor add attributes to a `Set-Cookie`.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl HealthCheck {
    fn validate(&self) -> Result<(), FieldError> {
        sluice_util::probe::check_path(&self.path).or_else(|why| refuse("path", why))?;
        if self.interval_ms == 0 || self.timeout_ms == 0 || self.timeout_ms > self.interval_ms {
            return refuse(
                "timeout_ms",
                "must be greater than 0 and at most interval_ms",
            );
        }
        if self.rise == 0 || self.fall == 0 {
            return refuse("", "rise and fall must be at least 1");
        }
        Ok(())
    }
}

impl Outlier {
    fn validate(&self) -> Result<(), FieldError> {
        if self.max_ejection_percent > 100 {
            return refuse("max_ejection_percent", "between 0 and 100");
        }
        if self.base_ejection_ms == 0 {
            return refuse("base_ejection_ms", "must be greater than 0");
        }
        Ok(())
    }
}
