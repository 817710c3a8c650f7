//! Policies: the chain a request passes between routing and the upstream —
//! authenticate → authorize → rate limit → transform by default, in an order a route may
//! change. Each step may refuse the request with a problem+json answer.
//!
//! Stateful parts (consumers, issuers with their key sets, limits with their counters, the
//! Redis connection) live in [`Shared`], which a reload carries over when their config is
//! unchanged, so counters and fetched keys survive it.

pub mod auth;
pub mod client_ip;
pub mod jwks;
pub mod jwt;
pub mod lease;
pub mod limit;
pub mod rate;
pub mod redis_store;
pub mod transform;

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use hyper::{
    header::{HeaderMap, HeaderName},
    http::request::Parts,
    Response, StatusCode,
};

use sluice_util::FieldError;

use crate::{
    config::{Config, Route, Step},
    pipeline::problem::problem,
    Body,
};

/// The header telling the upstream which consumer was authenticated. A client's own copy is
/// always removed. (A `HeaderName`: a `&str` would be parsed at every use.)
pub static CONSUMER_HEADER: HeaderName = HeaderName::from_static("x-consumer-id");

/// A policy's answer in place of the upstream's (boxed: responses are large).
pub type Refusal = Box<Response<Body>>;

/// Builds a refusal.
pub fn refuse(status: StatusCode, detail: &str) -> Refusal {
    Box::new(problem(status, detail))
}

/// Who the request is from, once authenticated.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// Consumer id.
    pub consumer: Arc<str>,
    /// Groups.
    pub groups: Vec<String>,
    /// Scopes (from a token).
    pub scopes: Vec<String>,
    /// Token claims, when a JWT authenticated the request.
    pub claims: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
}

/// What a step knows about the request besides the request itself.
pub struct Context<'a> {
    /// The client address (see [`client_ip`]).
    pub client: IpAddr,
    /// The address `client_ip` limits count under (IPv6 cut to `ipv6_limit_prefix`).
    pub limit_client: IpAddr,
    /// Whether `limit_client` stands for this client alone as the shield counts clients
    /// (an IPv4 address, or an IPv6 prefix of at least /64): only then is a `client_ip`
    /// limit running out the client's own doing, not its neighbours'.
    pub limit_client_alone: bool,
    /// Route name.
    pub route: &'a str,
    /// Set by authentication.
    pub identity: Option<Arc<Identity>>,
}

/// What the policies granted an admitted request, carried to its response.
#[derive(Default)]
pub struct Granted {
    /// The most constrained rate limit's verdict, for the response's `RateLimit` headers
    /// (written straight into the response, see [`Granted::write_headers`]).
    pub rate: Option<(Arc<limit::Limit>, rate::Verdict)>,
    /// Concurrency slots, held until the response body ends.
    pub slots: Vec<limit::Slot>,
}

impl Granted {
    /// Sets the response's `RateLimit` headers, replacing any the upstream sent.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        if let Some((limit, verdict)) = &self.rate {
            limit::set_headers(headers, limit, verdict);
        }
    }
}

/// The stateful policy objects of one config generation.
#[derive(Default)]
pub struct Shared {
    consumers: Arc<auth::Consumers>,
    issuers: HashMap<String, Arc<jwt::Issuer>>,
    /// Limits by name.
    pub limits: HashMap<String, Arc<limit::Limit>>,
    /// The Redis store, if configured.
    pub redis: Option<Arc<redis_store::RedisStore>>,
    /// The client-address rule.
    pub client_ip: client_ip::ClientIpRule,
}

impl Shared {
    /// Builds the policy objects of a config (checked as data by [`crate::config`]); those
    /// whose config did not change are taken from `previous`, so counters and fetched keys
    /// survive a reload. A refusal names the field (a key file that cannot be read, a Redis
    /// URL that does not parse, …).
    pub fn build(config: &Config, previous: Option<&Shared>) -> Result<Self, FieldError> {
        let redis = match &config.redis {
            None => None,
            Some(r) => Some(
                match previous
                    .and_then(|p| p.redis.clone())
                    .filter(|s| s.config == *r)
                {
                    Some(same) => same,
                    None => Arc::new(
                        redis_store::RedisStore::build(r.clone()).map_err(|e| e.under("redis"))?,
                    ),
                },
            ),
        };
        let mut issuers = HashMap::new();
        for (i, j) in config.jwt_issuers.iter().enumerate() {
            let reuse = previous
                .and_then(|p| p.issuers.get(&j.name))
                .filter(|old| old.config == *j)
                .cloned();
            let issuer = match reuse {
                Some(i) => i,
                None => Arc::new(
                    jwt::Issuer::load(j.clone())
                        .map_err(|e| e.under(&format!("jwt_issuer[{i}]")))?,
                ),
            };
            issuers.insert(j.name.clone(), issuer);
        }
        let limits = Self::build_limits(config, previous, redis.as_ref())?;
        let consumers = match previous.filter(|p| p.consumers.config == config.consumers) {
            Some(p) => p.consumers.clone(),
            None => Arc::new(auth::Consumers::build(&config.consumers)?),
        };
        Ok(Shared {
            consumers,
            issuers,
            limits,
            redis,
            client_ip: client_ip::ClientIpRule::try_from(&config.client_ip)
                .map_err(|e| e.under("client_ip"))?,
        })
    }

    /// Starts what the policy objects run in the background (key-set refreshes, the Redis
    /// connection).
    pub fn start(&self) {
        for issuer in self.issuers.values() {
            issuer.start();
        }
        if let Some(redis) = &self.redis {
            redis.start();
        }
    }

    fn build_limits(
        config: &Config,
        previous: Option<&Shared>,
        redis: Option<&Arc<redis_store::RedisStore>>,
    ) -> Result<HashMap<String, Arc<limit::Limit>>, FieldError> {
        let mut limits = HashMap::new();
        for (i, l) in config.rate_limits.iter().enumerate() {
            let reuse = previous
                .and_then(|p| p.limits.get(&l.name))
                .filter(|old| {
                    old.config == *l
                        && (l.store == crate::config::policy::Store::Local || old.same_store(redis))
                })
                .cloned();
            let limit = match reuse {
                Some(same) => same,
                None => Arc::new(
                    limit::Limit::build(l.clone(), redis.cloned())
                        .map_err(|e| e.under(&format!("rate_limit[{i}]")))?,
                ),
            };
            limits.insert(l.name.clone(), limit);
        }
        Ok(limits)
    }

    /// The chain of one route; refusals name fields of the route.
    pub fn chain(&self, route: &Route) -> Result<Chain, FieldError> {
        let mut steps = Vec::new();
        for step in &route.policy_order {
            let stage = match step {
                Step::Authenticate => route
                    .auth
                    .as_ref()
                    .map(|a| {
                        auth::Authenticator::build(a, self.consumers.clone(), &self.issuers)
                            .map(Stage::Authenticate)
                            .map_err(|e| e.under("auth"))
                    })
                    .transpose()?,
                Step::Authorize => route.authorize.clone().map(Stage::Authorize),
                Step::RateLimit => {
                    let limits = route
                        .rate_limits
                        .iter()
                        .map(|n| {
                            self.limits.get(n).cloned().ok_or_else(|| {
                                FieldError::new("rate_limits", format!("no rate_limit named {n:?}"))
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    (!limits.is_empty()).then_some(Stage::RateLimit(limits))
                }
                Step::Transform => route
                    .request_transform
                    .as_ref()
                    .map(|t| {
                        transform::RequestTransformer::try_from(t)
                            .map(Stage::Transform)
                            .map_err(|e| e.under("request_transform"))
                    })
                    .transpose()?,
            };
            steps.extend(stage);
        }
        let response = route
            .response_transform
            .as_ref()
            .map(|t| {
                transform::ResponseTransformer::try_from(t)
                    .map_err(|e| e.under("response_transform"))
            })
            .transpose()?;
        Ok(Chain { steps, response })
    }
}

enum Stage {
    Authenticate(auth::Authenticator),
    Authorize(crate::config::RouteAuthorize),
    RateLimit(Vec<Arc<limit::Limit>>),
    Transform(transform::RequestTransformer),
}

/// A route's policies, run in order, and its response transform.
#[derive(Default)]
pub struct Chain {
    steps: Vec<Stage>,
    /// Applied to the upstream's response.
    pub response: Option<transform::ResponseTransformer>,
}

impl Chain {
    /// Whether the route has no request policies.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Runs every step; the first refusal is the answer.
    pub async fn run(
        &self,
        parts: &mut Parts,
        mut body: Body,
        ctx: &mut Context<'_>,
    ) -> Result<(Body, Granted), Refusal> {
        let mut admitted = Granted::default();
        for step in &self.steps {
            match step {
                Stage::Authenticate(a) => {
                    let who = a.authenticate(parts).await?;
                    // The upstream learns who it is serving (Kong's X-Consumer-ID).
                    if let Ok(v) = hyper::header::HeaderValue::from_str(&who.consumer) {
                        parts.headers.insert(&CONSUMER_HEADER, v);
                    }
                    ctx.identity = Some(who);
                }
                Stage::Authorize(rule) => auth::authorize(rule, ctx.identity.as_deref())?,
                Stage::RateLimit(limits) => {
                    limit::check_all(limits, parts, ctx, &mut admitted).await?
                }
                Stage::Transform(t) => body = t.apply(parts, body).await?,
            }
        }
        Ok((body, admitted))
    }
}
