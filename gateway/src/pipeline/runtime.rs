//! One config generation, built once: the routing table, each route's pools, policies and
//! retry budget, and the stateful policy objects. Every request that started under a
//! generation finishes under it; a reload builds the next one beside it.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use hyper::{header::HeaderValue, StatusCode};
use sluice_util::FieldError;

use super::{
    policy::{self, Chain},
    router::Router,
};
use crate::{
    config::{Config, Redirect, Route},
    upstream::{self, HttpClient, Pool},
};

/// Retries allowed per 10-second window: `budget_percent` of requests, but at least this many.
const MIN_RETRIES_PER_WINDOW: u64 = 3;
const BUDGET_WINDOW: Duration = Duration::from_secs(10);

/// A route's retry budget over a sliding 10-second window.
#[derive(Debug)]
pub struct RetryBudget {
    /// Window start (coarse ms), requests, retries.
    window: Mutex<(u64, u64, u64)>,
    percent: u64,
}

impl RetryBudget {
    fn new(percent: u32) -> Self {
        RetryBudget {
            window: Mutex::new((crate::clock::monotonic_ms(), 0, 0)),
            percent: percent as u64,
        }
    }

    /// Counts a request of the route.
    pub fn request(&self) {
        if let Ok(mut w) = self.window.lock() {
            let now = crate::clock::monotonic_ms();
            if now.saturating_sub(w.0) > BUDGET_WINDOW.as_millis() as u64 {
                *w = (now, 0, 0);
            }
            w.1 += 1;
        }
    }

    /// Takes one retry from the budget if any is left.
    pub fn try_retry(&self) -> bool {
        let Ok(mut w) = self.window.lock() else {
            return false;
        };
        let allowed = (w.1 * self.percent / 100).max(MIN_RETRIES_PER_WINDOW);
        if w.2 < allowed {
            w.2 += 1;
            true
        } else {
            false
        }
    }
}

/// One of a route's pools, its share of the route's traffic, and how the route reaches it.
pub struct RouteSplit {
    /// The pool.
    pub pool: Arc<Pool>,
    /// Relative weight.
    pub weight: u32,
    /// The route's client for the pool's targets (its timeouts).
    pub client: HttpClient,
}

/// A route's redirect, ready to answer.
pub struct RedirectAnswer {
    /// 301, 302, 303, 307 or 308.
    pub status: StatusCode,
    /// `Location`.
    pub location: HeaderValue,
}

impl TryFrom<&Redirect> for RedirectAnswer {
    type Error = FieldError;

    fn try_from(r: &Redirect) -> Result<Self, FieldError> {
        Ok(RedirectAnswer {
            status: StatusCode::from_u16(r.status)
                .map_err(|_| FieldError::new("status", "not an HTTP status"))?,
            location: HeaderValue::from_str(&r.location)
                .map_err(|_| FieldError::new("location", "not a valid header value"))?,
        })
    }
}

/// A route with everything it needs at request time.
pub struct RouteRuntime {
    /// Config.
    pub config: Route,
    /// Pools by split (or the single upstream).
    pub splits: Vec<RouteSplit>,
    /// The redirect it answers with instead of forwarding.
    pub redirect: Option<RedirectAnswer>,
    /// Retry budget.
    pub budget: RetryBudget,
    /// Policy chain (authenticate → authorize → limit → transform, as configured).
    pub chain: Chain,
}

/// One config generation, shared by every request that started under it.
pub struct Runtime {
    /// The config.
    pub config: Config,
    /// Routing table.
    pub router: Router,
    /// Routes by config index.
    pub routes: Vec<RouteRuntime>,
    /// Pools by config index.
    pub pools: Vec<Arc<Pool>>,
    /// Generation number.
    pub generation: u64,
    /// Stateful policy objects (limits, issuers, the Redis store).
    pub policies: policy::Shared,
    /// The admin API's token (`admin.token_file`), read with each generation so that a
    /// reload rotates it.
    pub admin_token: Option<sluice_util::admin::Token>,
}

impl Runtime {
    /// Builds a generation from a config checked as data by [`crate::config`]. Pools,
    /// limits and issuers are shared with the previous generation when unchanged, so their
    /// counters and key sets carry over. A refusal names the field.
    pub fn build(
        config: Config,
        generation: u64,
        previous: Option<&Runtime>,
    ) -> Result<Self, FieldError> {
        let admin_token = match &config.admin.token_file {
            Some(path) => Some(
                sluice_util::admin::Token::read(path)
                    .map_err(|e| FieldError::new("admin.token_file", e))?,
            ),
            None => None,
        };
        let policies = policy::Shared::build(&config, previous.map(|p| &p.policies))?;
        let pools = config
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| match reused_pool(previous, u) {
                Some(same) => Ok(same),
                None => Pool::build(u)
                    .map(Arc::new)
                    .map_err(|e| e.under(&format!("upstream[{i}]"))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let routes: Vec<RouteRuntime> = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                route_runtime(r, &config, &pools, &policies)
                    .map_err(|e| e.under(&format!("route[{i}]")))
            })
            .collect::<Result<_, _>>()?;
        // Only pools a route uses are kept (and probed), as before the pools had a list.
        let pools = pools
            .into_iter()
            .filter(|p| {
                routes
                    .iter()
                    .any(|r| r.splits.iter().any(|s| Arc::ptr_eq(&s.pool, p)))
            })
            .collect();
        Ok(Runtime {
            router: Router::build(&config.routes)?,
            config,
            routes,
            pools,
            generation,
            policies,
            admin_token,
        })
    }

    /// Starts what the generation runs in the background: health probes of its pools and
    /// key-set refreshes of its issuers, for those not already running (a reload shares
    /// unchanged ones with the generation before). Called once the generation is accepted.
    pub fn start(&self) {
        for pool in &self.pools {
            upstream::health::start(pool);
        }
        self.policies.start();
    }
}

/// The previous generation's pool of this name, if its config is unchanged.
fn reused_pool(previous: Option<&Runtime>, u: &crate::config::Upstream) -> Option<Arc<Pool>> {
    let p = previous?;
    if !p.config.upstreams.iter().any(|old| old == u) {
        return None;
    }
    p.pools.iter().find(|pool| pool.name == u.name).cloned()
}

fn route_runtime(
    r: &Route,
    config: &Config,
    pools: &[Arc<Pool>],
    policies: &policy::Shared,
) -> Result<RouteRuntime, FieldError> {
    let pool = |name: &str, field: &str| {
        config
            .upstreams
            .iter()
            .position(|u| u.name == name)
            .and_then(|i| pools.get(i).cloned())
            .ok_or_else(|| FieldError::new(field, format!("no upstream named {name:?}")))
    };
    let mut splits = Vec::new();
    if let Some(u) = &r.upstream {
        splits.push((pool(u, "upstream")?, 1));
    }
    for (j, s) in r.splits.iter().enumerate() {
        splits.push((
            pool(&s.upstream, &format!("splits[{j}].upstream"))?,
            s.weight,
        ));
    }
    Ok(RouteRuntime {
        config: r.clone(),
        splits: splits
            .into_iter()
            .map(|(pool, weight)| RouteSplit {
                client: upstream::client(&r.timeouts, &pool),
                pool,
                weight,
            })
            .collect(),
        redirect: r
            .redirect
            .as_ref()
            .map(|rd| RedirectAnswer::try_from(rd).map_err(|e| e.under("redirect")))
            .transpose()?,
        budget: RetryBudget::new(r.retries.budget_percent),
        chain: policies.chain(r)?,
    })
}
