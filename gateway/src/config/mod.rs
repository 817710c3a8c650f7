//! `gateway.toml`: listeners, routes, upstreams and admin in one file, as plain data.
//!
//! [`load`] reads a file and checks what can be checked on the data alone: ranges, names that
//! must be unique, and names that must refer to something. What needs parsing or files
//! (regular expressions, header names, CIDRs, TLS certificates, JWT keys, the Redis URL) is
//! checked where it is built, once, by the builders in `downstream`, `pipeline` and
//! `upstream`; [`crate::generation`] runs both and keeps what they built. Every refusal
//! names the file, the field path and the reason, and a refused file is never applied.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use sluice_util::{config::refuse, FieldError};

pub use sluice_util::ConfigError;

mod listener;
pub mod policy;
mod route;
mod shield;
mod upstream;

pub use listener::{
    AccessField, AccessLog, Admin, Certificate, EscapedSlashes, Listener, PathParameters, Tls,
    Underscores,
};
pub use route::{PathMatch, Redirect, Retries, Route, Split, Timeouts};
pub use shield::{Shield, Thresholds};
pub use upstream::{Balance, HealthCheck, Outlier, Target, Upstream};

pub use policy::{
    Analytics, ClientIp, Consumer, JwtIssuer, RateLimit, Redis, RequestTransform,
    ResponseTransform, RouteAuth, RouteAuthorize, Step,
};

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
    /// Abuse detection.
    #[serde(default)]
    pub shield: Shield,
}

/// Reads `path` and checks it as data. Relative file paths in it (TLS, JWT keys, the Redis
/// CA) are resolved against the file's directory.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let mut config: Config = sluice_util::config::read_toml(path)?;
    config.validate().map_err(|e| e.in_file(path))?;
    config.resolve_files(path.parent().unwrap_or(Path::new(".")));
    Ok(config)
}

/// Parses `text` (read from `path`) and checks it as data.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let config: Config = sluice_util::config::parse_toml(path, text)?;
    config.validate().map_err(|e| e.in_file(path))?;
    Ok(config)
}

/// A host name or `*.wildcard` as routes and certificates name them.
fn valid_host(h: &str) -> bool {
    let h = h.strip_prefix("*.").unwrap_or(h);
    !h.is_empty()
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// Refuses the first name seen twice, as `section[i].name`.
fn unique_names<'a>(
    section: &str,
    names: impl Iterator<Item = &'a str>,
    reason: &str,
) -> Result<(), FieldError> {
    let mut seen = HashSet::new();
    for (i, n) in names.enumerate() {
        if !seen.insert(n) {
            return refuse(format!("{section}[{i}].name"), reason);
        }
    }
    Ok(())
}

/// Refuses, as `section[i].name`, a name written with more than letters, digits, `.`, `-`
/// and `_`, then one seen twice: listener, upstream and route names are Prometheus label
/// values, log fields and dashboard text, where a quote or a newline would break the
/// exposition of every series.
fn label_names<'a>(
    section: &str,
    names: impl Iterator<Item = &'a str> + Clone,
    reason: &str,
) -> Result<(), FieldError> {
    for (i, n) in names.clone().enumerate() {
        if n.is_empty()
            || !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return refuse(
                format!("{section}[{i}].name"),
                "letters, digits, '.', '-' and '_' only",
            );
        }
    }
    unique_names(section, names, reason)
}

/// Two listeners may not take the same port on overlapping addresses: the same address, or
/// a wildcard that covers the other (`[::]` covers IPv4 too, as Linux binds it dual-stack).
/// One socket each would fail to bind at start; with several workers' `SO_REUSEPORT`
/// sockets they would bind, and share the connections at random.
fn distinct_addresses(listeners: &[Listener]) -> Result<(), FieldError> {
    let covers = |wide: std::net::SocketAddr, other: std::net::SocketAddr| {
        wide.ip().is_unspecified() && (wide.is_ipv6() || other.is_ipv4())
    };
    for (i, l) in listeners.iter().enumerate() {
        let a = l.address;
        if a.port() == 0 {
            continue;
        }
        for (j, earlier) in listeners[..i].iter().enumerate() {
            let b = earlier.address;
            if a.port() == b.port() && (a.ip() == b.ip() || covers(a, b) || covers(b, a)) {
                return refuse(
                    format!("listener[{i}].address"),
                    format!(
                        "{a} overlaps listener[{j}] (\"{}\", {b}) on port {}",
                        earlier.name,
                        a.port()
                    ),
                );
            }
        }
    }
    Ok(())
}

/// Checks every item of a section with `check`, locating a refusal as `section[i]…`.
fn each<'a, T>(
    section: &str,
    items: &'a [T],
    mut check: impl FnMut(&'a T) -> Result<(), FieldError>,
) -> Result<(), FieldError> {
    for (i, item) in items.iter().enumerate() {
        check(item).map_err(|e| e.under(&format!("{section}[{i}]")))?;
    }
    Ok(())
}

impl Config {
    /// The checks that need nothing but the data.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.listeners.is_empty() {
            return refuse("listener", "at least one listener is required");
        }
        label_names(
            "listener",
            self.listeners.iter().map(|l| l.name.as_str()),
            "duplicate listener name",
        )?;
        each("listener", &self.listeners, Listener::validate)?;
        distinct_addresses(&self.listeners)?;
        label_names(
            "upstream",
            self.upstreams.iter().map(|u| u.name.as_str()),
            "duplicate upstream name",
        )?;
        each("upstream", &self.upstreams, Upstream::validate)?;
        let policies = policy::Policies {
            consumers: &self.consumers,
            issuers: &self.jwt_issuers,
            limits: &self.rate_limits,
            redis: self.redis.as_ref(),
            client_ip: &self.client_ip,
            analytics_minutes: self.analytics.minutes,
        };
        policies.validate()?;
        self.shield.validate().map_err(|e| e.under("shield"))?;
        label_names(
            "route",
            self.routes.iter().map(|r| r.name.as_str()),
            "duplicate route name",
        )?;
        let upstreams: HashSet<&str> = self.upstreams.iter().map(|u| u.name.as_str()).collect();
        each("route", &self.routes, |r| {
            r.validate(&upstreams)?;
            policies.validate_route(r)
        })?;
        self.no_dropped_names()
    }

    /// Refuses a request field name with an underscore that the config reads (a route's
    /// header match or API-key header, a limit's or a pool's key) while a listener drops or
    /// refuses such fields: the requests it is meant for would never carry it.
    fn no_dropped_names(&self) -> Result<(), FieldError> {
        let Some(listener) = self
            .listeners
            .iter()
            .find(|l| l.underscores_in_headers != Underscores::Keep)
        else {
            return Ok(());
        };
        let refused = |field: String, name: &str| -> Result<(), FieldError> {
            if name.contains('_') {
                return Err(FieldError::new(
                    field,
                    format!(
                        "{name:?} has an underscore, and listener {:?} takes no such field \
                         (underscores_in_headers = \"keep\" would let it through)",
                        listener.name
                    ),
                ));
            }
            Ok(())
        };
        for (i, r) in self.routes.iter().enumerate() {
            for name in r.headers.keys() {
                refused(format!("route[{i}].headers"), name)?;
            }
            if let Some(a) = &r.auth {
                refused(format!("route[{i}].auth.api_key_header"), &a.api_key_header)?;
            }
        }
        for (i, l) in self.rate_limits.iter().enumerate() {
            if let policy::LimitKey::Header(h) = &l.key {
                refused(format!("rate_limit[{i}].key"), h)?;
            }
        }
        for (i, u) in self.upstreams.iter().enumerate() {
            if let upstream::Balance::HashHeader(h) = &u.balance {
                refused(format!("upstream[{i}].balance"), h)?;
            }
        }
        Ok(())
    }

    /// Makes relative file paths relative to `base`, the config file's directory.
    fn resolve_files(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| *p = base.join(&*p);
        let resolve_str = |p: &mut String| *p = base.join(&*p).to_string_lossy().into_owned();
        for tls in self.listeners.iter_mut().filter_map(|l| l.tls.as_mut()) {
            for c in &mut tls.certificates {
                resolve(&mut c.cert);
                resolve(&mut c.key);
            }
            if let Some(ca) = &mut tls.client_ca {
                resolve(ca);
            }
        }
        if let Some(ca) = self.redis.as_mut().and_then(|r| r.ca_file.as_mut()) {
            resolve_str(ca);
        }
        if let Some(token) = &mut self.admin.token_file {
            resolve(token);
        }
        for j in &mut self.jwt_issuers {
            for k in j.keys.iter_mut().chain(j.hmac_secrets.iter_mut()) {
                resolve_str(&mut k.file);
            }
            if let Some(f) = &mut j.jwks_file {
                resolve_str(f);
            }
        }
    }
}

/// The longest connection deadline accepted (a day): far beyond any use, and safely
/// added to a clock.
const MAX_TIMEOUT_MS: u64 = 86_400_000;

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
    fn listeners_on_overlapping_addresses_are_refused() {
        let with = |a: &str, b: &str| {
            GOOD.replace(
                "address = \"127.0.0.1:8080\"",
                &format!("address = \"{a}\"\n\n[[listener]]\nname = \"second\"\naddress = \"{b}\""),
            )
        };
        for (a, b) in [
            ("127.0.0.1:8080", "127.0.0.1:8080"),
            ("0.0.0.0:8080", "127.0.0.1:8080"),
            ("127.0.0.1:8080", "0.0.0.0:8080"),
            ("[::]:8080", "10.0.0.1:8080"),
            ("[::1]:8080", "[::]:8080"),
        ] {
            assert_eq!(
                refuse(&with(a, b)),
                format!("gw.toml: listener[1].address: {b} overlaps listener[0] (\"http\", {a}) on port 8080"),
                "{a} {b}"
            );
        }
        // Other ports, other addresses of one family, an IPv4 wildcard beside IPv6, port 0.
        for (a, b) in [
            ("127.0.0.1:8080", "127.0.0.1:8081"),
            ("127.0.0.1:8080", "127.0.0.2:8080"),
            ("0.0.0.0:8080", "[::1]:8080"),
            ("127.0.0.1:0", "127.0.0.1:0"),
        ] {
            parse(Path::new("gw.toml"), &with(a, b)).expect("distinct");
        }
    }

    #[test]
    fn good_file_and_defaults() {
        let c = parse(Path::new("gw.toml"), GOOD).expect("valid");
        assert_eq!(c.admin.listen, "127.0.0.1:9000".parse().expect("literal"));
        assert_eq!(c.listeners[0].max_header_bytes, 16384);
        assert_eq!(c.upstreams[0].balance, Balance::RoundRobin);
        assert_eq!(c.shield, Shield::default());
    }

    #[test]
    fn bad_files_name_field_and_reason() {
        let cases = [
            (
                GOOD.replace("upstream = \"api\"\n", "upstream = \"nope\"\n"),
                "gw.toml: route[0].upstream: no upstream named \"nope\"",
            ),
            // Names are metric labels: a quote would break every scrape.
            (
                GOOD.replace("name = \"api\"\npath", "name = \"api \\\"v2\\\"\"\npath"),
                "gw.toml: route[0].name: letters, digits, '.', '-' and '_' only",
            ),
            (
                GOOD.replace("name = \"api\"\ntargets", "name = \"a\\\\b\"\ntargets"),
                "gw.toml: upstream[0].name: letters, digits, '.', '-' and '_' only",
            ),
            (
                GOOD.replace("name = \"http\"", "name = \"\""),
                "gw.toml: listener[0].name: letters, digits, '.', '-' and '_' only",
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
        let with_pool = |lines: &str| {
            GOOD.replace(
                "targets = [{ address = \"127.0.0.1:9001\" }]",
                &format!("targets = [{{ address = \"127.0.0.1:9001\" }}]\n{lines}"),
            )
        };
        let more = [
            (
                with_pool("session_cookie = \"sid; Domain=evil\""),
                "gw.toml: upstream[0].session_cookie: \"sid; Domain=evil\" is not a cookie name",
            ),
            (
                with_pool("balance = { hash-cookie = \"a b\" }"),
                "gw.toml: upstream[0].balance: \"a b\" is not a cookie name",
            ),
            (
                with_pool("health = { path = \"/ok HTTP/1.1\\r\\nX: y\" }"),
                "gw.toml: upstream[0].health.path: printable ASCII without spaces",
            ),
            (
                format!("{GOOD}\n[[consumer]]\nid = \"a b\"\n"),
                "gw.toml: consumer[0].id: printable ASCII without spaces",
            ),
            (
                format!("{GOOD}\n[shield]\nthresholds = {{ auth = 2000000 }}\n"),
                "gw.toml: shield.thresholds.auth: at most 1000000",
            ),
        ];
        for (text, want) in cases.into_iter().chain(more) {
            let got = refuse(&text);
            assert!(got.starts_with(want), "{got}\n  wanted {want}");
        }
    }

    #[test]
    fn redis_is_one_server_or_a_cluster() {
        let redis = |lines: &str| format!("{GOOD}\n[redis]\n{lines}\n");
        for good in [
            "url = \"redis://:pw@10.0.0.1:6379/2\"",
            "cluster = [\"redis://10.0.0.1:7000\", \"redis://10.0.0.2:7000\"]",
            "cluster = [\"rediss://a:7000\"]\nca_file = \"ca.pem\"\ntimeout_ms = 20",
        ] {
            let c = parse(Path::new("gw.toml"), &redis(good)).expect(good);
            assert!(c.redis.expect("section").target().is_ok(), "{good}");
        }
        for (lines, want) in [
            ("timeout_ms = 20", "gw.toml: redis.url: give url = "),
            (
                "url = \"redis://a:1\"\ncluster = [\"redis://a:1\"]",
                "gw.toml: redis.cluster: give url (one server) or cluster",
            ),
            (
                "cluster = []",
                "gw.toml: redis.cluster: at least one seed node",
            ),
            (
                "cluster = [\"redis://a:1\", \"http://b:1\"]",
                "gw.toml: redis.cluster[1]: must start with redis:// or rediss://",
            ),
            (
                "cluster = [\"redis://a:1\", \"rediss://b:1\"]",
                "gw.toml: redis.cluster[1]: every seed node takes the scheme of cluster[0]",
            ),
            (
                "cluster = [\"redis://a:1\"]\nprefix = \"{fleet}:\"",
                "gw.toml: redis.prefix: no { or } with cluster",
            ),
            (
                "url = \"redis://a:1\"\nca_file = \"ca.pem\"",
                "gw.toml: redis.ca_file: only for TLS servers",
            ),
            (
                "url = \"redis://a:1\"\ntimeout_ms = 0",
                "gw.toml: redis.timeout_ms: between 1 and",
            ),
        ] {
            let got = refuse(&redis(lines));
            assert!(
                got.starts_with(want),
                "{lines}\n  said {got}\n  wanted {want}"
            );
        }
    }
}
