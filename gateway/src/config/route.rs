//! `[[route]]`: what a route matches, where it sends requests, and its timeouts and retries.
//! Its policy settings are in [`super::policy`].

use std::collections::{HashMap, HashSet};

use serde::Deserialize;
use sluice_util::{config::refuse, FieldError};

use super::policy::{self, RequestTransform, ResponseTransform, RouteAuth, RouteAuthorize, Step};

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
    /// Once the response head has arrived, the longest the upstream may send nothing of
    /// its body: the response is then cut short (nginx's `proxy_read_timeout`).
    #[serde(default = "default_read_idle")]
    pub read_idle_ms: u64,
}

fn default_connect() -> u64 {
    1_000
}
fn default_request() -> u64 {
    15_000
}
/// Below nginx's `keepalive_timeout` (75 s), the commonest target's, and equal to its own
/// upstream `keepalive_timeout`: a pooled connection is dropped here before the target
/// closes it, rather than raced (see `idle_ms` in the README).
fn default_upstream_idle() -> u64 {
    60_000
}

/// nginx's `proxy_read_timeout`.
fn default_read_idle() -> u64 {
    60_000
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect_ms: default_connect(),
            request_ms: default_request(),
            idle_ms: default_upstream_idle(),
            read_idle_ms: default_read_idle(),
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

impl Route {
    /// Checks one route's matching, destination, timeouts and retries (its policies are
    /// checked by [`super::policy::Policies::validate_route`]); fields are named relative to
    /// it. A regular expression is checked where the router compiles it.
    pub(super) fn validate(&self, upstreams: &HashSet<&str>) -> Result<(), FieldError> {
        if let Some(h) = &self.host {
            if !super::valid_host(h) {
                return refuse("host", "not a host name or *.wildcard");
            }
        }
        if let Some(p) = &self.path {
            p.validate().map_err(|e| e.under("path"))?;
        }
        if let Some(m) = self
            .methods
            .iter()
            .find(|m| m.is_empty() || !m.chars().all(|c| c.is_ascii_uppercase()))
        {
            return refuse("methods", format!("{m:?} is not an upper-case method"));
        }
        self.validate_destination(upstreams)?;
        if self.timeouts.connect_ms == 0
            || self.timeouts.request_ms == 0
            || self.timeouts.read_idle_ms == 0
        {
            return refuse("timeouts", "timeouts must be greater than 0");
        }
        self.retries.validate().map_err(|e| e.under("retries"))
    }

    /// Exactly one of an upstream, splits or a redirect, naming pools that exist.
    fn validate_destination(&self, upstreams: &HashSet<&str>) -> Result<(), FieldError> {
        let destinations = usize::from(self.upstream.is_some())
            + usize::from(!self.splits.is_empty())
            + usize::from(self.redirect.is_some());
        if destinations != 1 {
            return refuse("", "needs exactly one of upstream, splits or redirect");
        }
        if let Some(u) = self
            .upstream
            .as_ref()
            .filter(|u| !upstreams.contains(u.as_str()))
        {
            return refuse("upstream", format!("no upstream named {u:?}"));
        }
        for (j, s) in self.splits.iter().enumerate() {
            if !upstreams.contains(s.upstream.as_str()) {
                return refuse(
                    format!("splits[{j}].upstream"),
                    format!("no upstream named {:?}", s.upstream),
                );
            }
        }
        if !self.splits.is_empty() && self.splits.iter().all(|s| s.weight == 0) {
            return refuse("splits", "at least one split needs a weight above 0");
        }
        if let Some(rd) = &self.redirect {
            rd.validate().map_err(|e| e.under("redirect"))?;
        }
        Ok(())
    }
}

impl PathMatch {
    fn validate(&self) -> Result<(), FieldError> {
        match self {
            PathMatch::Exact(p) | PathMatch::Prefix(p) | PathMatch::Template(p)
                if !p.starts_with('/') =>
            {
                refuse("", "must start with '/'")
            }
            PathMatch::Template(t) => {
                for seg in t.split('/') {
                    let opens = seg.matches('{').count();
                    let closes = seg.matches('}').count();
                    let whole =
                        seg.starts_with('{') && seg.ends_with('}') && opens == 1 && closes == 1;
                    if (opens > 0 || closes > 0) && !whole {
                        return refuse("template", "a {param} must be a whole segment");
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

impl Redirect {
    fn validate(&self) -> Result<(), FieldError> {
        if ![301, 302, 303, 307, 308].contains(&self.status) {
            return refuse("status", "must be 301, 302, 303, 307 or 308");
        }
        Ok(())
    }
}

impl Retries {
    fn validate(&self) -> Result<(), FieldError> {
        if self.attempts > 5 {
            return refuse("attempts", "at most 5");
        }
        if self.budget_percent > 100 {
            return refuse("budget_percent", "between 0 and 100");
        }
        if let Some(s) = self.on_status.iter().find(|s| !(500..=599).contains(*s)) {
            return refuse("on_status", format!("{s} is not a 5xx status"));
        }
        Ok(())
    }
}
