//! `[admin]`, `[access_log]` and `[[listener]]`: where the gateway listens and how it treats
//! connections.

use std::{net::SocketAddr, path::PathBuf};

use serde::Deserialize;
use sluice_util::{config::refuse, FieldError};

use super::{policy::default_true, valid_host};

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
    /// Host names a browser may reach the admin listener (and its dashboard) by, besides
    /// IP addresses and `localhost`: a browser request naming any other host is refused, so
    /// a web page cannot rebind its own name to this listener and read it.
    #[serde(default)]
    pub host_names: Vec<String>,
    /// A file holding the token that requests changing state (`POST /drain`) must present
    /// as `Authorization: Bearer <token>`: at least 32 visible ASCII characters, e.g.
    /// `openssl rand -hex 32`. Without it such requests are taken only from loopback.
    /// Reads stay open. Read again at each reload.
    #[serde(default)]
    pub token_file: Option<std::path::PathBuf>,
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
            host_names: Vec::new(),
            token_file: None,
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
    /// How long a request body may send nothing (between its frames): a stalled upload is
    /// answered 408.
    #[serde(default = "default_body_timeout")]
    pub body_read_timeout_ms: u64,
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
    #[serde(default = "default_true")]
    pub merge_slashes: bool,
    /// `%2F`, `%5C` and `\` in request paths: `"reject"` (400, the default) or `"keep"`.
    #[serde(default)]
    pub escaped_slashes: EscapedSlashes,
    /// `;` parameters in request path segments: `"reject"` (400, the default) or `"keep"`.
    #[serde(default)]
    pub path_parameters: PathParameters,
    /// Request header fields whose name has an underscore: `"drop"` (the default),
    /// `"reject"` (400) or `"keep"`.
    #[serde(default)]
    pub underscores_in_headers: Underscores,
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

/// The most connections a listener may be set to take (and one client to hold).
const MAX_CONNECTIONS: usize = 10_000_000;
/// The largest request head a listener may be set to take (1 MiB).
const MAX_HEADER_BYTES: usize = 1 << 20;
/// The most request header fields a listener may be set to take.
const MAX_HEADERS: usize = 10_000;

fn default_max_connections() -> usize {
    10_000
}
fn default_header_timeout() -> u64 {
    10_000
}
fn default_body_timeout() -> u64 {
    30_000
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

/// What to do with `%2F`, `%5C` and `\` in a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashes {
    /// Refuse the request with 400 (the default): an upstream that decodes them would see
    /// a path separator the router did not.
    #[default]
    Reject,
    /// Leave them as they are (uppercase hex): for upstreams that treat `%2F` as data.
    Keep,
}

/// What to do with `;` path parameters (`/admin;x=1/secret`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathParameters {
    /// Refuse the request with 400 (the default): Tomcat, Jetty and Spring strip them, so
    /// `/admin;x/secret` misses an `/admin` route here and is served as `/admin/secret` there.
    #[default]
    Reject,
    /// Leave them in the path (for upstreams that use matrix parameters, and where every
    /// route's policies hold whether or not a segment carries parameters).
    Keep,
}

/// What to do with a request header field whose name has an underscore (`X_Consumer_Id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Underscores {
    /// Forward the request without it (the default, as nginx does): CGI, WSGI, Rack and PHP
    /// servers read `_` as `-`, so `X_Consumer_Id` would reach them as the field the gateway
    /// sets, beside the gateway's own.
    #[default]
    Drop,
    /// Refuse the request with 400.
    Reject,
    /// Forward it as it is (for upstreams known to tell `_` from `-`).
    Keep,
}

impl Listener {
    /// Checks one listener; fields are named relative to it.
    pub(super) fn validate(&self) -> Result<(), FieldError> {
        // Upper bounds too: a count past what a process can hold (file descriptors, tokio's
        // semaphore) is a typo, and would fail at start or wrap where it is narrowed.
        if !(1..=MAX_CONNECTIONS).contains(&self.max_connections) {
            return refuse(
                "max_connections",
                format!("must be at least 1 and at most {MAX_CONNECTIONS}"),
            );
        }
        for (field, ms) in [
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            ("body_read_timeout_ms", self.body_read_timeout_ms),
            ("tls_handshake_timeout_ms", self.tls_handshake_timeout_ms),
            ("first_request_timeout_ms", self.first_request_timeout_ms),
            ("keepalive_timeout_ms", self.keepalive_timeout_ms),
            ("http2_idle_timeout_ms", self.http2_idle_timeout_ms),
            ("stream_idle_timeout_ms", self.stream_idle_timeout_ms),
        ] {
            if ms == 0 || ms > super::MAX_TIMEOUT_MS {
                return refuse(field, "must be greater than 0 and at most a day (86400000)");
            }
        }
        if self
            .max_connections_per_client
            .is_some_and(|n| !(1..=MAX_CONNECTIONS).contains(&n))
        {
            return refuse(
                "max_connections_per_client",
                format!(
                    "must be at least 1 and at most {MAX_CONNECTIONS} (leave it out for no limit)"
                ),
            );
        }
        if !(1024..=MAX_HEADER_BYTES).contains(&self.max_header_bytes) {
            return refuse(
                "max_header_bytes",
                format!("must be at least 1024 and at most {MAX_HEADER_BYTES}"),
            );
        }
        if !(1..=MAX_HEADERS).contains(&self.max_headers) {
            return refuse(
                "max_headers",
                format!("must be at least 1 and at most {MAX_HEADERS}"),
            );
        }
        match &self.tls {
            Some(tls) => tls.validate().map_err(|e| e.under("tls")),
            None => Ok(()),
        }
    }
}

impl Tls {
    fn validate(&self) -> Result<(), FieldError> {
        if self.certificates.is_empty() {
            return refuse("certificates", "at least one certificate is required");
        }
        for (j, c) in self.certificates.iter().enumerate() {
            if let Some(n) = c.server_names.iter().find(|n| !valid_host(n)) {
                return refuse(
                    format!("certificates[{j}].server_names"),
                    format!("{n:?} is not a host name or *.wildcard"),
                );
            }
        }
        Ok(())
    }
}
