//! The policy half of `gateway.toml`: consumers, JWT issuers, rate limits, Redis, the
//! client-address rule, analytics, and each route's auth, authorization, limits and transforms.

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;
use sluice_util::{config::refuse, FieldError};

use super::each;

/// A known API consumer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consumer {
    /// Id (the `consumer` label and rate-limit key).
    pub id: String,
    /// Groups, for authorization.
    #[serde(default)]
    pub groups: Vec<String>,
    /// API keys, stored only as SHA-256 hashes: 64 hex digits, optionally `sha256:`-prefixed.
    #[serde(default)]
    pub api_keys: Vec<String>,
    /// Basic-auth credential.
    pub basic: Option<BasicCredential>,
    /// JWT subjects that are this consumer, as `<issuer name>:<value of the issuer's
    /// consumer_claim>`: a subject only means this consumer coming from that issuer. A token
    /// whose subject is not listed anywhere is the consumer `<issuer name>:<subject>`.
    #[serde(default)]
    pub jwt_subjects: Vec<String>,
}

/// A user name and its argon2 (`$argon2…`) or bcrypt (`$2a$`/`$2b$`/`$2y$`) hash.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicCredential {
    /// User name.
    pub username: String,
    /// PHC-format argon2 hash or modular-crypt bcrypt hash.
    pub hash: String,
}

/// A JWT issuer and how its tokens are checked.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtIssuer {
    /// Name routes refer to.
    pub name: String,
    /// Required `iss`.
    pub issuer: String,
    /// Accepted `aud` values (one must match); empty = `aud` not checked.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Algorithms allowed for this issuer (`RS256`, `ES256`, `EdDSA`, `HS256`, …).
    pub algorithms: Vec<String>,
    /// Public keys in PEM files (RSA, EC or Ed25519).
    #[serde(default)]
    pub keys: Vec<KeyFile>,
    /// HMAC secrets, each in a file (the whole file is the secret, a final newline removed).
    #[serde(default)]
    pub hmac_secrets: Vec<KeyFile>,
    /// A JWKS file.
    pub jwks_file: Option<String>,
    /// A JWKS URL (`http://` or `https://`), fetched in the background.
    pub jwks_url: Option<String>,
    /// JWKS refresh interval.
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh_ms: u64,
    /// Clock leeway for `exp`, `nbf` and `iat`.
    #[serde(default = "default_leeway")]
    pub leeway_s: u64,
    /// Claim naming the consumer.
    #[serde(default = "default_consumer_claim")]
    pub consumer_claim: String,
}

fn default_jwks_refresh() -> u64 {
    300_000
}
fn default_leeway() -> u64 {
    30
}
fn default_consumer_claim() -> String {
    "sub".into()
}

/// A key from a file, with an optional key id.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    /// Path; relative paths are relative to the config file.
    pub file: String,
    /// `kid` this key answers to; absent = any token without a matching `kid`.
    pub kid: Option<String>,
}

/// How a rate limit computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Generic cell rate algorithm: one timestamp per key.
    #[default]
    Gcra,
    /// Token bucket with continuous refill: tokens and a timestamp per key.
    TokenBucket,
}

/// What a limit counts by.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKey {
    /// The client address (see `[client_ip]`).
    ClientIp,
    /// The authenticated consumer (`anonymous` when none).
    Consumer,
    /// The whole route.
    Route,
    /// A request header's value (`-` when absent).
    Header(String),
}

/// Where a limit's counters live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Store {
    /// In this process (bounded; old keys evicted).
    #[default]
    Local,
    /// In Redis, shared by every gateway node.
    Redis,
}

/// A named limit routes refer to: either a rate (`requests` per `window_ms`) or a number of
/// requests in flight (`concurrent`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Name (the `RateLimit-Policy` item name).
    pub name: String,
    /// Algorithm for a rate limit.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// Requests allowed per window.
    pub requests: Option<u64>,
    /// Window.
    pub window_ms: Option<u64>,
    /// Requests allowed at once after a quiet spell; default `requests`.
    pub burst: Option<u64>,
    /// Or: requests in flight allowed per key (local store only).
    pub concurrent: Option<u64>,
    /// Key.
    pub key: LimitKey,
    /// Store.
    #[serde(default)]
    pub store: Store,
    /// Most keys kept by the local store.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
    /// Also send the legacy `X-RateLimit-Limit/-Remaining/-Reset` headers.
    #[serde(default = "default_true")]
    pub legacy_headers: bool,
    /// A shared limit's lease: the most tokens one gateway reserves in Redis per call and
    /// spends locally. 1 (the default) asks Redis for every request, exactly; more trades a
    /// stated looseness (see [`crate::pipeline::policy::lease`]) for fewer round trips.
    #[serde(default = "default_lease")]
    pub lease: u64,
    /// How long leased tokens may be spent after they were asked for.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
}

fn default_lease() -> u64 {
    1
}

fn default_lease_ms() -> u64 {
    100
}

/// Longest `lease_ms` (and never more than the limit's `window_ms`): a lease loosens the
/// limit by up to `rate × lease_ms`, which must stay small beside the window.
pub const MAX_LEASE_MS: u64 = 10_000;

/// Most tokens in one lease.
pub const MAX_LEASE: u64 = 1_000_000;

pub(crate) fn default_true() -> bool {
    true
}

fn default_max_keys() -> usize {
    100_000
}

/// What a Redis failure means for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Let the request through.
    #[default]
    Open,
    /// Refuse it (503).
    Closed,
}

/// The shared store: one server (`url`) or a Redis Cluster (`cluster`), exactly one of them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redis {
    /// One server: `redis://[user:password@]host:port[/db]` or `rediss://` for TLS.
    pub url: Option<String>,
    /// A Redis Cluster: seed nodes, `redis://[user:password@]host:port` (all `redis://` or all
    /// `rediss://`, one user and password); the other nodes are found from them.
    pub cluster: Option<Vec<String>>,
    /// Bound on every call, the first connection included.
    #[serde(default = "default_redis_timeout")]
    pub timeout_ms: u64,
    /// Fail open or closed.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// Key prefix, so several gateway fleets can share a server.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// CA certificate (PEM) that a `rediss://` server's certificate must chain to; absent =
    /// the system's roots.
    pub ca_file: Option<String>,
}

/// Where `[redis]` points, once checked: one server or a cluster's seed nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisTarget<'a> {
    /// `url`.
    Single(&'a str),
    /// `cluster`.
    Cluster(&'a [String]),
}

impl Redis {
    /// `url` or `cluster`; a refusal (naming the field) when both or neither are given.
    pub fn target(&self) -> Result<RedisTarget<'_>, FieldError> {
        match (&self.url, &self.cluster) {
            (Some(url), None) => Ok(RedisTarget::Single(url)),
            (None, Some(seeds)) => Ok(RedisTarget::Cluster(seeds)),
            (Some(_), Some(_)) => refuse(
                "cluster",
                "give url (one server) or cluster (a Redis Cluster's seed nodes), not both",
            ),
            (None, None) => refuse(
                "url",
                "give url = \"redis://host:port\" for one server or cluster = [\"redis://host:port\", …] for a Redis Cluster",
            ),
        }
    }
}

fn default_redis_timeout() -> u64 {
    50
}
fn default_prefix() -> String {
    "sluice:".into()
}

/// Where the client address comes from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientIp {
    /// Peers (CIDRs) whose `X-Forwarded-For` is believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Which `X-Forwarded-For` entry, counted from the right (1 = the last one), is the client
    /// when the peer is trusted. 0 = always the packet's source.
    #[serde(default)]
    pub xff_depth: usize,
    /// IPv6 clients are counted by this prefix in `client_ip` limits (64, the default: one
    /// limit per /64, since one host usually has a whole /64 to pick addresses from, and the
    /// per-client connection limit and the shield count a /64 as one client too).
    #[serde(default = "default_v6_prefix")]
    pub ipv6_limit_prefix: u8,
}

fn default_v6_prefix() -> u8 {
    64
}

impl Default for ClientIp {
    fn default() -> Self {
        ClientIp {
            trusted_proxies: Vec::new(),
            xff_depth: 0,
            ipv6_limit_prefix: default_v6_prefix(),
        }
    }
}

/// Usage analytics.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Analytics {
    /// Most distinct consumers given their own label; the rest are counted as `other`.
    #[serde(default = "default_max_consumers")]
    pub max_consumers: usize,
    /// Minutes of history kept for `/analytics/top`.
    #[serde(default = "default_minutes")]
    pub minutes: usize,
}

fn default_max_consumers() -> usize {
    100
}
fn default_minutes() -> usize {
    15
}

impl Default for Analytics {
    fn default() -> Self {
        Analytics {
            max_consumers: default_max_consumers(),
            minutes: default_minutes(),
        }
    }
}

/// One step of a route's chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Authentication.
    Authenticate,
    /// Authorization.
    Authorize,
    /// Rate and concurrency limits.
    RateLimit,
    /// Request transforms.
    Transform,
}

/// The default order.
pub fn default_order() -> Vec<Step> {
    vec![
        Step::Authenticate,
        Step::Authorize,
        Step::RateLimit,
        Step::Transform,
    ]
}

/// An authentication method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// `Authorization: Bearer <jwt>`.
    Jwt,
    /// An API key in a header or query parameter.
    ApiKey,
    /// `Authorization: Basic`.
    Basic,
}

/// A route's authentication.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteAuth {
    /// Methods, tried in order; the first whose credential is present decides.
    pub methods: Vec<AuthMethod>,
    /// Header carrying the API key.
    #[serde(default = "default_key_header")]
    pub api_key_header: String,
    /// Query parameter carrying the API key (removed before forwarding).
    pub api_key_query: Option<String>,
    /// Issuers accepted; empty = every configured issuer.
    #[serde(default)]
    pub jwt_issuers: Vec<String>,
    /// Realm in `WWW-Authenticate`.
    #[serde(default = "default_realm")]
    pub realm: String,
}

fn default_key_header() -> String {
    "x-api-key".into()
}
fn default_realm() -> String {
    "sluice".into()
}

/// A route's authorization: every listed requirement must hold.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RouteAuthorize {
    /// Scopes the token must carry (`scope`/`scp` claim).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The consumer must be in one of these groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Claims that must have these (string) values.
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
}

/// A regex rewrite of the path: `$1`-style captures in `replacement`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    /// Pattern.
    pub regex: String,
    /// Replacement.
    pub replacement: String,
}

/// Changes to the request before it goes upstream.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RequestTransform {
    /// Headers set (replacing).
    #[serde(default)]
    pub set_headers: BTreeMap<String, String>,
    /// Headers added (kept beside existing values).
    #[serde(default)]
    pub add_headers: BTreeMap<String, String>,
    /// Headers removed.
    #[serde(default)]
    pub remove_headers: Vec<String>,
    /// Headers renamed (old → new).
    #[serde(default)]
    pub rename_headers: BTreeMap<String, String>,
    /// A path prefix removed.
    pub strip_prefix: Option<String>,
    /// A regex rewrite of the path (after `strip_prefix`).
    pub rewrite: Option<Rewrite>,
    /// Query parameters added, after any the client sent of the same name (which an upstream
    /// that reads the first value takes).
    #[serde(default)]
    pub add_query: BTreeMap<String, String>,
    /// Query parameters set: any the client sent of the same name (compared decoded) are
    /// removed first, so the upstream sees the gateway's value alone.
    #[serde(default)]
    pub set_query: BTreeMap<String, String>,
    /// Query parameters removed.
    #[serde(default)]
    pub remove_query: Vec<String>,
    /// Query parameters renamed (old → new).
    #[serde(default)]
    pub rename_query: BTreeMap<String, String>,
    /// JSON body fields set (dotted paths).
    #[serde(default)]
    pub json_set: BTreeMap<String, toml::Value>,
    /// JSON body fields removed.
    #[serde(default)]
    pub json_remove: Vec<String>,
    /// JSON body fields renamed (old path → new path).
    #[serde(default)]
    pub json_rename: BTreeMap<String, String>,
    /// Largest body a JSON transform reads.
    #[serde(default = "default_json_max")]
    pub json_max_bytes: usize,
}

/// Changes to the response before it goes to the client.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ResponseTransform {
    /// Headers set.
    #[serde(default)]
    pub set_headers: BTreeMap<String, String>,
    /// Headers removed.
    #[serde(default)]
    pub remove_headers: Vec<String>,
    /// JSON body fields removed.
    #[serde(default)]
    pub json_remove: Vec<String>,
    /// JSON body fields renamed.
    #[serde(default)]
    pub json_rename: BTreeMap<String, String>,
    /// Largest body a JSON transform reads.
    #[serde(default = "default_json_max")]
    pub json_max_bytes: usize,
}

fn default_json_max() -> usize {
    1 << 20
}

/// Every policy setting of the file, checked together with the routes that use them.
pub struct Policies<'a> {
    /// Consumers.
    pub consumers: &'a [Consumer],
    /// Issuers.
    pub issuers: &'a [JwtIssuer],
    /// Limits.
    pub limits: &'a [RateLimit],
    /// Redis.
    pub redis: Option<&'a Redis>,
    /// Client address rule.
    pub client_ip: &'a ClientIp,
    /// `analytics.minutes`.
    pub analytics_minutes: usize,
}

/// Whether a JWT algorithm name is one the gateway verifies.
pub fn known_algorithm(a: &str) -> bool {
    matches!(
        a,
        "HS256"
            | "HS384"
            | "HS512"
            | "RS256"
            | "RS384"
            | "RS512"
            | "PS256"
            | "PS384"
            | "PS512"
            | "ES256"
            | "ES384"
            | "EdDSA"
    )
}

impl Policies<'_> {
    /// The top-level policy sections.
    pub fn validate(&self) -> Result<(), FieldError> {
        self.validate_consumers()?;
        super::unique_names(
            "jwt_issuer",
            self.issuers.iter().map(|j| j.name.as_str()),
            "duplicate issuer name",
        )?;
        each("jwt_issuer", self.issuers, JwtIssuer::validate)?;
        super::unique_names(
            "rate_limit",
            self.limits.iter().map(|l| l.name.as_str()),
            "duplicate limit name",
        )?;
        each("rate_limit", self.limits, |l| {
            l.validate(self.redis.is_some())
        })?;
        if let Some(r) = self.redis {
            r.validate().map_err(|e| e.under("redis"))?;
        }
        if self.analytics_minutes == 0 || self.analytics_minutes > 1440 {
            return refuse("analytics.minutes", "between 1 and 1440");
        }
        self.client_ip.validate().map_err(|e| e.under("client_ip"))
    }

    fn validate_consumers(&self) -> Result<(), FieldError> {
        let mut ids = HashSet::new();
        let mut users = HashSet::new();
        each("consumer", self.consumers, |c| {
            if c.id.is_empty() || !ids.insert(c.id.as_str()) {
                return refuse("id", "empty or duplicate consumer id");
            }
            // It is sent upstream as `X-Consumer-ID`.
            if !c.id.bytes().all(|b| b.is_ascii_graphic()) {
                return refuse("id", "printable ASCII without spaces");
            }
            if let Some(b) = &c.basic {
                if !users.insert(b.username.as_str()) {
                    return refuse("basic.username", "duplicate user name");
                }
            }
            c.validate(self.issuers)
        })
    }

    /// One route's policy settings: the order of its steps and the names it refers to.
    /// Header names, regular expressions and JSON paths are checked where the route's
    /// policies are built.
    pub fn validate_route(&self, route: &super::Route) -> Result<(), FieldError> {
        validate_order(route).map_err(|e| e.under("policy_order"))?;
        if let Some(a) = &route.auth {
            self.validate_auth(a).map_err(|e| e.under("auth"))?;
        }
        if route.authorize.is_some() && route.auth.is_none() {
            return refuse("authorize", "authorization needs [route.auth]");
        }
        if let Some(n) = route
            .rate_limits
            .iter()
            .find(|n| !self.limits.iter().any(|l| &l.name == *n))
        {
            return refuse("rate_limits", format!("no rate_limit named {n:?}"));
        }
        Ok(())
    }

    fn validate_auth(&self, a: &RouteAuth) -> Result<(), FieldError> {
        if a.methods.is_empty() {
            return refuse("methods", "list at least one method");
        }
        if let Some(n) = a
            .jwt_issuers
            .iter()
            .find(|n| !self.issuers.iter().any(|j| &j.name == *n))
        {
            return refuse("jwt_issuers", format!("no issuer named {n:?}"));
        }
        if a.methods.contains(&AuthMethod::Jwt) && self.issuers.is_empty() {
            return refuse("methods", "jwt needs a [[jwt_issuer]]");
        }
        Ok(())
    }
}

/// Each step once, every configured step listed (one left out would silently not run: an
/// open route), and authorization after authentication.
fn validate_order(route: &super::Route) -> Result<(), FieldError> {
    let order = &route.policy_order;
    let mut seen = HashSet::new();
    if let Some(s) = order.iter().find(|s| !seen.insert(*s)) {
        return refuse("", format!("{s:?} listed twice"));
    }
    for (configured, step) in [
        (route.auth.is_some(), Step::Authenticate),
        (route.authorize.is_some(), Step::Authorize),
        (!route.rate_limits.is_empty(), Step::RateLimit),
        (route.request_transform.is_some(), Step::Transform),
    ] {
        if configured && !order.contains(&step) {
            return refuse(
                "",
                format!("{step:?} is configured for the route but not in policy_order"),
            );
        }
    }
    let pos = |s: Step| order.iter().position(|x| *x == s);
    if let (Some(a), Some(z)) = (pos(Step::Authenticate), pos(Step::Authorize)) {
        if z < a {
            return refuse("", "authorize must come after authenticate");
        }
    }
    Ok(())
}

impl Consumer {
    fn validate(&self, issuers: &[JwtIssuer]) -> Result<(), FieldError> {
        if let Some(b) = &self.basic {
            let argon = b.hash.starts_with("$argon2");
            let bcrypt = ["$2a$", "$2b$", "$2y$"]
                .iter()
                .any(|p| b.hash.starts_with(p));
            if !argon && !bcrypt {
                return refuse(
                    "basic.hash",
                    "must be an argon2 ($argon2…) or bcrypt ($2b$…) hash",
                );
            }
            if argon && argon2::PasswordHash::new(&b.hash).is_err() {
                return refuse("basic.hash", "not a valid argon2 PHC string");
            }
        }
        for s in &self.jwt_subjects {
            let known = s
                .split_once(':')
                .is_some_and(|(iss, sub)| !sub.is_empty() && issuers.iter().any(|j| j.name == iss));
            if !known {
                return refuse(
                    "jwt_subjects",
                    format!("{s:?} must be <issuer name>:<subject> with a configured issuer"),
                );
            }
        }
        Ok(())
    }
}

impl JwtIssuer {
    /// What can be checked without reading keys (they are read where the issuer is built).
    fn validate(&self) -> Result<(), FieldError> {
        if self.algorithms.is_empty() {
            return refuse("algorithms", "list at least one algorithm");
        }
        if let Some(a) = self.algorithms.iter().find(|a| !known_algorithm(a)) {
            return refuse(
                "algorithms",
                format!("{a:?} is not supported (\"none\" never is)"),
            );
        }
        let hmac = self.algorithms.iter().any(|a| a.starts_with("HS"));
        let public = self.algorithms.iter().any(|a| !a.starts_with("HS"));
        if hmac && self.hmac_secrets.is_empty() {
            return refuse("hmac_secrets", "HS* algorithms need hmac_secrets");
        }
        if public && self.keys.is_empty() && self.jwks_file.is_none() && self.jwks_url.is_none() {
            return refuse(
                "keys",
                "public-key algorithms need keys, jwks_file or jwks_url",
            );
        }
        if let Some(u) = &self.jwks_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return refuse("jwks_url", "must be http:// or https://");
            }
        }
        if self.leeway_s > 86_400 {
            return refuse("leeway_s", "at most 86400 (a day)");
        }
        if self.jwks_refresh_ms < 1000 {
            return refuse("jwks_refresh_ms", "at least 1000");
        }
        Ok(())
    }
}

impl RateLimit {
    fn validate(&self, have_redis: bool) -> Result<(), FieldError> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
        {
            return refuse("name", "letters, digits, - and _ only");
        }
        match (self.requests, self.window_ms, self.concurrent) {
            (Some(r), Some(w), None) if r > 0 && w > 0 => {
                if self.burst == Some(0) {
                    return refuse("burst", "must be greater than 0");
                }
            }
            (None, None, Some(c)) if c > 0 => {
                if self.store == Store::Redis {
                    return refuse(
                        "store",
                        "concurrency limits are local: a crashed node could never give back a shared slot",
                    );
                }
            }
            _ => {
                return refuse(
                    "",
                    "give either requests and window_ms (both > 0) or concurrent (> 0)",
                )
            }
        }
        if self.store == Store::Redis && !have_redis {
            return refuse("store", "store = \"redis\" needs a [redis] section");
        }
        if self.max_keys == 0 {
            return refuse("max_keys", "must be greater than 0");
        }
        if !(1..=MAX_LEASE).contains(&self.lease) {
            return refuse("lease", format!("must be 1 to {MAX_LEASE}"));
        }
        if self.lease > 1 && (self.store != Store::Redis || self.concurrent.is_some()) {
            return refuse(
                "lease",
                "leases are for shared rate limits (store = \"redis\" with requests and window_ms)",
            );
        }
        if !(1..=MAX_LEASE_MS).contains(&self.lease_ms) {
            return refuse("lease_ms", format!("must be 1 to {MAX_LEASE_MS}"));
        }
        if self.lease > 1 && self.window_ms.is_some_and(|w| self.lease_ms > w) {
            return refuse(
                "lease_ms",
                "must not exceed window_ms: a lease loosens the limit by up to lease_ms of its rate",
            );
        }
        Ok(())
    }
}

impl Redis {
    /// `url` or `cluster`, the URLs' schemes, the timeout and the prefix; the rest of each URL
    /// is parsed where the store is built.
    fn validate(&self) -> Result<(), FieldError> {
        let tls = match self.target()? {
            RedisTarget::Single(url) => scheme_tls(url)
                .ok_or_else(|| FieldError::new("url", "must start with redis:// or rediss://"))?,
            RedisTarget::Cluster(seeds) => {
                let Some(first) = seeds.first() else {
                    return refuse("cluster", "at least one seed node");
                };
                let tls = scheme_tls(first);
                for (i, seed) in seeds.iter().enumerate() {
                    let field = format!("cluster[{i}]");
                    match scheme_tls(seed) {
                        None => return refuse(field, "must start with redis:// or rediss://"),
                        Some(t) if Some(t) != tls => {
                            return refuse(
                                field,
                                "every seed node takes the scheme of cluster[0] (all TLS or none)",
                            )
                        }
                        Some(_) => {}
                    }
                }
                // A brace in the prefix would make Redis hash the prefix, not the limit's
                // identity: every key on one slot, so one master.
                if self.prefix.contains(['{', '}']) {
                    return refuse(
                        "prefix",
                        "no { or } with cluster: the gateway puts each key's identity in a hash tag",
                    );
                }
                tls == Some(true)
            }
        };
        if self.ca_file.is_some() && !tls {
            return refuse("ca_file", "only for TLS servers (rediss://)");
        }
        if !(1..=super::MAX_TIMEOUT_MS).contains(&self.timeout_ms) {
            return refuse(
                "timeout_ms",
                format!("between 1 and {}", super::MAX_TIMEOUT_MS),
            );
        }
        Ok(())
    }
}

/// Whether a Redis URL is TLS (`rediss://`), plain (`redis://`), or neither (`None`).
fn scheme_tls(url: &str) -> Option<bool> {
    if url.starts_with("rediss://") {
        Some(true)
    } else if url.starts_with("redis://") {
        Some(false)
    } else {
        None
    }
}

impl ClientIp {
    /// The numbers; the proxies' addresses are parsed where the rule is built.
    fn validate(&self) -> Result<(), FieldError> {
        if !(1..=128).contains(&self.ipv6_limit_prefix) {
            return refuse("ipv6_limit_prefix", "between 1 and 128");
        }
        if self.xff_depth > 0 && self.trusted_proxies.is_empty() {
            return refuse(
                "xff_depth",
                "needs trusted_proxies: X-Forwarded-For from anyone else is not believed",
            );
        }
        Ok(())
    }
}
