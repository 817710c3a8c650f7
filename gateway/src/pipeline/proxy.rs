//! The request pipeline: route → policies → upstream, with the gateway's own errors as
//! problem+json. One `Runtime` (a config generation) serves a request from start to end.

use std::{
    net::SocketAddr,
    sync::{atomic::Ordering, Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{
    body::Incoming,
    header::{self, HeaderMap, HeaderName, HeaderValue},
    Request, Response, StatusCode, Uri,
};
use rand::Rng;
use smallvec::SmallVec;

use crate::{
    config::{Config, Route},
    metrics::Metrics,
    pipeline::client_body::{BodyFault, ClientBody, FaultCell},
    pipeline::policy::{self, Chain, Context},
    pipeline::problem::{full, problem, GatewayMade},
    pipeline::router::{RequestView, Router},
    pipeline::tunnel::ConnHold,
    upstream::exchange::{Answer, Upgraded},
    upstream::forwarding::{self, random_id, Forwarding, X_REQUEST_ID},
    upstream::{client, HashInput, HttpClient, Outcome, Pool},
    Body,
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

    fn request(&self) {
        if let Ok(mut w) = self.window.lock() {
            let now = crate::clock::monotonic_ms();
            if now.saturating_sub(w.0) > BUDGET_WINDOW.as_millis() as u64 {
                *w = (now, 0, 0);
            }
            w.1 += 1;
        }
    }

    /// Takes one retry from the budget if any is left.
    fn try_retry(&self) -> bool {
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

/// A route with everything it needs at request time.
pub struct RouteRuntime {
    /// Config.
    pub config: Route,
    /// Pools by split (or the single upstream), with their weights and clients.
    pub targets: Vec<(Arc<Pool>, u32, HttpClient)>,
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
    /// Generation number.
    pub generation: u64,
    /// Stateful policy objects (limits, issuers, the Redis store).
    pub policies: policy::Shared,
}

impl Runtime {
    /// Builds the runtime of a validated config. Pools, limits and issuers are shared with
    /// the previous generation when unchanged, so their counters and key sets carry over.
    pub fn new(
        config: Config,
        generation: u64,
        previous: Option<&Runtime>,
    ) -> Result<Self, String> {
        let policies = policy::Shared::new(&config, previous.map(|p| &p.policies))?;
        let pools: Vec<Arc<Pool>> = config
            .upstreams
            .iter()
            .map(|u| {
                previous
                    .and_then(|p| {
                        p.routes
                            .iter()
                            .flat_map(|r| r.targets.iter())
                            .find(|(pool, _, _)| {
                                pool.name == u.name && p.config.upstreams.iter().any(|old| old == u)
                            })
                            .map(|(pool, _, _)| pool.clone())
                    })
                    .unwrap_or_else(|| {
                        let pool = Arc::new(Pool::new(u));
                        // A new pool gets its own prober, which ends when the pool is dropped.
                        if pool.health.is_some() {
                            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                                handle.spawn(crate::upstream::check_health(Arc::downgrade(&pool)));
                            }
                        }
                        pool
                    })
            })
            .collect();
        let pool = |name: &str| {
            config
                .upstreams
                .iter()
                .position(|u| u.name == name)
                .and_then(|i| pools.get(i).cloned())
        };
        let routes = config
            .routes
            .iter()
            .map(|r| {
                let mut targets = Vec::new();
                let splits: Vec<(String, u32)> = match &r.upstream {
                    Some(u) => vec![(u.clone(), 1)],
                    None => r
                        .splits
                        .iter()
                        .map(|s| (s.upstream.clone(), s.weight))
                        .collect(),
                };
                for (name, weight) in splits {
                    if let Some(p) = pool(&name) {
                        let c = client(&r.timeouts, &p);
                        targets.push((p, weight, c));
                    }
                }
                RouteRuntime {
                    config: r.clone(),
                    targets,
                    budget: RetryBudget::new(r.retries.budget_percent),
                    chain: policies.chain(r),
                }
            })
            .collect();
        Ok(Runtime {
            router: Router::new(&config.routes),
            config,
            routes,
            generation,
            policies,
        })
    }
}

/// Facts about the connection a request came on.
#[derive(Clone, Copy, Debug)]
pub struct Conn {
    /// Client address: the packet's source, which DSR keeps as the real client.
    pub peer: SocketAddr,
    /// Whether it came over TLS.
    pub tls: bool,
    /// Largest request body accepted.
    pub max_body: u64,
    /// How request paths are normalized.
    pub paths: crate::pipeline::path::PathRules,
    /// How long an upgraded connection's tunnel may carry nothing.
    pub tunnel_idle: Duration,
}

/// Hop-by-hop headers (RFC 9110 section 7.6.1), never forwarded.
/// As header names, so removing them costs no parsing per request.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The position of `name` in [`HOP_BY_HOP`].
fn hop_by_hop_index(name: &str) -> Option<usize> {
    Some(match name {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "trailer" => 6,
        "transfer-encoding" => 7,
        "upgrade" => 8,
        _ => return None,
    })
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the (few) names notes which hop-by-hop ones are present, comparing names
    // as strings (a `HeaderName` comparison costs more for the non-standard ones); only
    // those are then removed. Most requests carry none, most upstream responses only
    // `Connection: keep-alive`.
    let mut present = 0u16;
    for k in headers.keys() {
        if let Some(i) = hop_by_hop_index(k.as_str()) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    // `Connection` (bit 0) usually lists only `close`, `keep-alive` or `upgrade`: nothing to
    // collect (the last two are removed below anyway, and `close` is removed by name).
    if present & 1 != 0 {
        let mut close = false;
        // Other names listed are rare: collected only when there are some.
        let mut listed: SmallVec<[HeaderName; 2]> = SmallVec::new();
        for v in headers.get_all(header::CONNECTION) {
            for t in v.as_bytes().split(|b| *b == b',') {
                let t = t.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !t.is_empty()
                    && !t.eq_ignore_ascii_case(b"keep-alive")
                    && !t.eq_ignore_ascii_case(b"upgrade")
                {
                    if let Ok(name) = HeaderName::from_bytes(t) {
                        listed.push(name);
                    }
                }
            }
        }
        for name in listed {
            headers.remove(name);
        }
        if close {
            headers.remove("close");
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// The protocol a request asks to switch to (`Upgrade`, with `Connection: upgrade`).
fn upgrade_of(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if asks {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// Puts back the two headers an upgrade needs after hop-by-hop removal.
fn keep_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// Where the host ends in a Host value that is `uri-host [":" port]` (RFC 3986 §3.2.2–3.2.3)
/// or empty (what a request whose target has no authority sends); `None` for anything else.
/// An IPv6 literal's host keeps its brackets. Checked in place: `http`'s `Authority` parser
/// would copy the value.
fn host_end(h: &[u8]) -> Option<usize> {
    let (host, port, end) = match h.first() {
        Some(b'[') => match h.iter().position(|b| *b == b']') {
            Some(end) => {
                let literal = &h[1..end];
                if literal.is_empty()
                    || !literal
                        .iter()
                        .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
                {
                    return None;
                }
                (&h[..0], &h[end + 1..], end + 1)
            }
            None => return None,
        },
        _ => match h.iter().rposition(|b| *b == b':') {
            Some(colon) => (&h[..colon], &h[colon..], colon),
            None => (h, &h[..0], h.len()),
        },
    };
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    // No empty label (`a..b`, `.a`, `.`): one trailing dot (a fully qualified name) at most.
    let labels = host.strip_suffix(b".").unwrap_or(host);
    if !host.is_empty() && labels.split(|b| *b == b'.').any(<[u8]>::is_empty) {
        return None;
    }
    // reg-name / IPv4: unreserved, pct-encoded and sub-delims.
    let mut rest = host;
    let host_ok = loop {
        match rest.split_first() {
            None => break true,
            Some((b'%', tail)) => match tail {
                [a, b, more @ ..] if a.is_ascii_hexdigit() && b.is_ascii_hexdigit() => rest = more,
                _ => break false,
            },
            Some((b, tail)) if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(b) => {
                rest = tail
            }
            Some(_) => break false,
        }
    };
    (port_ok && host_ok).then_some(end)
}

/// The request's host, lowercase, without its port or a trailing dot.
enum HostName {
    /// The first `.1` bytes of the client's Host value, already lowercase (no copy).
    Shared(HeaderValue, usize),
    /// Anything else (an HTTP/2 or absolute-form authority, or a Host with capitals).
    Owned(String),
}

/// The request's host as routed, and the Host the upstream gets when it is not the client's
/// field as it came.
struct RequestHost {
    name: HostName,
    /// The routed authority, for a request that carried it in its target (it replaces the
    /// client's Host) or whose host ended in a dot (dropped, as for routing).
    upstream: Option<HeaderValue>,
}

impl RequestHost {
    fn as_str(&self) -> &str {
        self.name.as_str()
    }
}

impl HostName {
    fn as_str(&self) -> &str {
        match self {
            HostName::Shared(v, end) => v
                .as_bytes()
                .get(..*end)
                .and_then(|h| std::str::from_utf8(h).ok())
                .unwrap_or(""),
            HostName::Owned(s) => s,
        }
    }
}

/// The request's host, after the authority rules of RFC 9112 §3.2 and RFC 9113 §8.3.1:
/// - one Host field at most, and exactly one in HTTP/1.1 (absolute-form too);
/// - a Host value is `host[:port]`;
/// - an authority in the target (HTTP/2 `:authority`, HTTP/1.1 absolute-form) wins over
///   Host, may not carry userinfo (RFC 9110 §4.2.4), and over HTTP/2 must equal a Host
///   field sent beside it.
///
/// `Err` says why the request is refused with 400.
fn host_of<B>(req: &Request<B>) -> Result<RequestHost, &'static str> {
    let mut fields = req.headers().get_all(header::HOST).iter();
    let header = fields.next();
    if fields.next().is_some() {
        return Err("more than one Host header");
    }
    if header.is_none() && req.version() == hyper::Version::HTTP_11 {
        return Err("an HTTP/1.1 request needs a Host header");
    }
    let header = match header {
        Some(v) => Some((v, host_end(v.as_bytes()).ok_or("invalid Host header")?)),
        None => None,
    };
    if let Some(a) = req.uri().authority() {
        if a.as_str().contains('@') {
            return Err("the request target's authority has userinfo");
        }
        if req.version() == hyper::Version::HTTP_2 {
            if let Some((v, _)) = header {
                if !v.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()) {
                    return Err("the host header differs from :authority");
                }
            }
        }
        // Without userinfo, the authority is the host and then the port, if any.
        let (host, port) = a.as_str().split_at(a.host().len());
        let host = host.strip_suffix('.').unwrap_or(host);
        return Ok(RequestHost {
            name: HostName::Owned(host.to_ascii_lowercase()),
            upstream: HeaderValue::from_str(&format!("{host}{port}")).ok(),
        });
    }
    let Some((value, mut end)) = header else {
        return Ok(RequestHost {
            name: HostName::Owned(String::new()),
            upstream: None,
        });
    };
    // `api.example.` names the same host as `api.example` (a fully qualified name): it is
    // routed and forwarded as such, or it would miss a host-specific route and its policies.
    let mut upstream = None;
    let bytes = value.as_bytes();
    if bytes[..end].ends_with(b".") {
        upstream = HeaderValue::from_bytes(&[&bytes[..end - 1], &bytes[end..]].concat()).ok();
        end -= 1;
    }
    let host = &bytes[..end];
    let name = if host.iter().any(u8::is_ascii_uppercase) {
        // Host characters are ASCII (checked by `host_end`).
        HostName::Owned(String::from_utf8_lossy(host).to_ascii_lowercase())
    } else {
        HostName::Shared(value.clone(), end)
    };
    Ok(RequestHost { name, upstream })
}

/// The target's path normalized (see [`crate::pipeline::path`]), with its query as it came; `None`
/// when it is already normal. An empty path (`http://h?q` in absolute form, or an HTTP/2
/// `:path` of `?q`) is `/`, which is what it is routed as; `*` is only for `OPTIONS`.
fn normalized_target(
    uri: &Uri,
    method: &hyper::Method,
    rules: crate::pipeline::path::PathRules,
) -> Result<Option<Uri>, crate::pipeline::path::PathError> {
    use crate::pipeline::path::PathError;
    let raw = uri.path_and_query().map_or("", |p| p.as_str());
    if uri.path() == "*" && (method != hyper::Method::OPTIONS || raw != "*") {
        return Err(PathError::NotAbsolute);
    }
    let normal = crate::pipeline::path::normalize(uri.path(), rules)?;
    let starts_with_path = raw.starts_with('/') || raw == "*";
    if matches!(normal, std::borrow::Cow::Borrowed(_)) && starts_with_path {
        return Ok(None);
    }
    let target = match uri.query() {
        Some(q) => format!("{normal}?{q}"),
        None => normal.into_owned(),
    };
    let mut parts = uri.clone().into_parts();
    // Normalization adds only unreserved characters and escapes: still a valid target.
    parts.path_and_query =
        Some(hyper::http::uri::PathAndQuery::try_from(target).map_err(|_| PathError::Invalid)?);
    Uri::from_parts(parts)
        .map(Some)
        .map_err(|_| PathError::Invalid)
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// Serves one request.
pub async fn handle(
    rt: Arc<Runtime>,
    metrics: Arc<Metrics>,
    conn: Conn,
    req: Request<Incoming>,
) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    // Kept as a header value: the client's bytes are shared, not copied.
    let request_id = req
        .headers()
        .get(X_REQUEST_ID)
        .filter(|v| !v.is_empty() && v.len() <= 200 && v.to_str().is_ok())
        .cloned()
        .unwrap_or_else(random_id);
    // The client as policies see it: the packet's source, or a trusted proxy's XFF entry.
    let client = rt.policies.client_ip.resolve(conn.peer.ip(), req.headers());
    // What the access log may need from the request, taken only when it will be written.
    let seen = tracing::enabled!(target: "access", tracing::Level::INFO)
        .then(|| AccessLine::new(&req, client));
    let (mut resp, route_name, consumer) =
        serve(&rt, &metrics, conn, client, req, &request_id).await;
    // One clock read for the metrics, the analytics and the log line.
    let took = started.elapsed();
    let status = resp.status().as_u16();
    metrics.request(route_name, &method, status, took);
    metrics
        .analytics
        .record(consumer.as_ref(), route_name, status, took);
    if let Some(line) = seen {
        line.emit(
            &rt.config.access_log,
            request_id.to_str().unwrap_or("-"),
            route_name,
            status,
            took,
        );
    }
    resp.headers_mut().insert(X_REQUEST_ID, request_id);
    resp
}

/// The request facts of one access-log line.
struct AccessLine {
    client: std::net::IpAddr,
    method: String,
    host: String,
    path: String,
    user_agent: String,
}

impl AccessLine {
    fn new(req: &Request<Incoming>, client: std::net::IpAddr) -> Self {
        AccessLine {
            client,
            method: req.method().to_string(),
            host: host_of(req)
                .map(|h| h.as_str().to_string())
                .unwrap_or_default(),
            path: req.uri().path().to_string(),
            user_agent: req
                .headers()
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string(),
        }
    }

    /// One JSON line (through tracing, target `access`) with the configured fields.
    fn emit(
        &self,
        cfg: &crate::config::AccessLog,
        request_id: &str,
        route: &str,
        status: u16,
        took: Duration,
    ) {
        use crate::config::AccessField as F;
        let on = |f: F| cfg.fields.contains(&f);
        tracing::info!(
            target: "access",
            request_id = on(F::RequestId).then_some(request_id),
            client = on(F::Client).then(|| tracing::field::display(self.client)),
            method = on(F::Method).then_some(self.method.as_str()),
            host = on(F::Host).then_some(self.host.as_str()),
            path = on(F::Path).then_some(self.path.as_str()),
            user_agent = on(F::UserAgent).then_some(self.user_agent.as_str()),
            route = on(F::Route).then_some(route),
            status = on(F::Status).then_some(status),
            duration_ms = on(F::DurationMs).then_some(took.as_secs_f64() * 1e3),
            "request"
        );
    }
}

/// Serves one request; also returns the name of the route it took (`-` for none) and the
/// consumer, if one was authenticated.
async fn serve<'rt>(
    rt: &'rt Runtime,
    metrics: &Metrics,
    conn: Conn,
    client: std::net::IpAddr,
    mut req: Request<Incoming>,
    request_id: &HeaderValue,
) -> (Response<Body>, &'rt str, Option<Arc<str>>) {
    // hyper checks neither the Host rules nor its content, and routing and `Forwarded`
    // use it.
    let RequestHost {
        name: host_name,
        upstream,
    } = match host_of(&req) {
        Ok(h) => h,
        Err(why) => return (problem(StatusCode::BAD_REQUEST, why), "-", None),
    };
    let host = host_name.as_str();
    // The authority routed on is the Host the upstream gets (an HTTP/2 upstream takes it as
    // `:authority`).
    if let Some(v) = upstream {
        req.headers_mut().insert(header::HOST, v);
    }
    // The path is routed, checked by policies and forwarded in one normal form.
    match normalized_target(req.uri(), req.method(), conn.paths) {
        Ok(None) => {}
        Ok(Some(uri)) => *req.uri_mut() = uri,
        Err(e) => return (problem(StatusCode::BAD_REQUEST, &e.to_string()), "-", None),
    }
    let m = {
        let headers = req.headers();
        let lookup = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
        let view = RequestView {
            host,
            path: req.uri().path(),
            method: req.method().as_str(),
            header: &lookup,
            query: req.uri().query().unwrap_or(""),
        };
        rt.router.find(&view)
    };
    let Some(m) = m else {
        return (
            problem(
                StatusCode::NOT_FOUND,
                &format!("no route for {} {}", req.method(), req.uri().path()),
            ),
            "-",
            None,
        );
    };
    let Some(route) = rt.routes.get(m.route) else {
        return (
            problem(StatusCode::INTERNAL_SERVER_ERROR, "route table out of step"),
            "-",
            None,
        );
    };
    let name = route.config.name.as_str();
    if let Some(rd) = &route.config.redirect {
        let mut r = Response::new(full(Bytes::new()));
        *r.status_mut() = StatusCode::from_u16(rd.status).unwrap_or(StatusCode::FOUND);
        if let Ok(v) = HeaderValue::from_str(&rd.location) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        return (r, name, None);
    }
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > conn.max_body {
            return (
                problem(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("body of {len} bytes is over the limit of {}", conn.max_body),
                ),
                name,
                None,
            );
        }
    }
    let (mut parts, body) = req.into_parts();
    parts.headers.remove(&policy::CONSUMER_HEADER);
    // Hop-by-hop headers go before the policies run: a client naming, say, x-consumer-id in
    // its Connection header must not be able to remove what the gateway adds. An upgrade
    // request keeps its Connection: upgrade / Upgrade pair.
    let upgrade = upgrade_of(&parts.headers);
    strip_hop_by_hop(&mut parts.headers);
    if let Some(p) = upgrade {
        keep_upgrade(&mut parts.headers, p);
    }
    // The body limit is enforced as it streams (a Content-Length over it was refused above),
    // and a failure of the client's body is told apart from the upstream's.
    let mut body: Body = if hyper::body::Body::is_end_stream(&body) {
        // No allocation: `Empty` is zero-sized.
        http_body_util::Empty::new().map_err(|e| match e {}).boxed()
    } else {
        let fault = FaultCell::default();
        parts.extensions.insert(fault.clone());
        ClientBody::new(body, conn.max_body, fault).boxed()
    };
    let mut admitted = policy::Admitted::default();
    let mut consumer = None;
    if !route.chain.is_empty() {
        let mut ctx = Context {
            client,
            limit_client: rt.policies.client_ip.limit_key(client),
            route: name,
            identity: None,
        };
        // Not boxed: it is smaller than `forward`'s, so it does not grow the request's future
        // (the JWT key fetch, kilobytes, is boxed where it runs).
        let verdict = route.chain.run(&mut parts, body, &mut ctx).await;
        consumer = ctx.identity.map(|i| i.consumer.clone());
        match verdict {
            Ok((b, a)) => {
                body = b;
                admitted = a;
            }
            Err(refusal) => return (*refusal, name, consumer),
        }
        // A request transform may have rewritten the path: what goes upstream is normal too.
        match normalized_target(&parts.uri, &parts.method, conn.paths) {
            Ok(None) => {}
            Ok(Some(uri)) => parts.uri = uri,
            Err(e) => {
                return (
                    problem(StatusCode::BAD_REQUEST, &e.to_string()),
                    name,
                    consumer,
                )
            }
        }
    }
    let head = parts.method == hyper::Method::HEAD;
    // Concurrency slots live as long as the response body, or as an upgraded tunnel (which
    // takes its share from the request's extensions).
    let slots = (!admitted.slots.is_empty()).then(|| Arc::new(Held(admitted.slots)));
    if let Some(s) = &slots {
        parts.extensions.insert(s.clone());
    }
    let req = Request::from_parts(parts, body);
    let mut resp = forward(route, metrics, conn, client, req, host, request_id).await;
    if let Some(t) = &route.chain.response {
        if resp.extensions().get::<GatewayMade>().is_none()
            && resp.status() != StatusCode::SWITCHING_PROTOCOLS
        {
            resp = t.apply(resp, head).await;
        }
    }
    resp.headers_mut().extend(admitted.headers);
    if let Some(slots) = slots {
        resp = resp.map(move |b| {
            b.map_frame(move |f| {
                let _ = &slots;
                f
            })
            .boxed()
        });
    }
    (resp, name, consumer)
}

fn pick_split(route: &RouteRuntime) -> Option<&(Arc<Pool>, u32, HttpClient)> {
    if let [only] = route.targets.as_slice() {
        return Some(only);
    }
    let total: u64 = route.targets.iter().map(|t| t.1 as u64).sum();
    if total == 0 {
        return route.targets.first();
    }
    let mut n = rand::thread_rng().gen_range(0..total);
    route.targets.iter().find(|t| {
        if n < t.1 as u64 {
            true
        } else {
            n -= t.1 as u64;
            false
        }
    })
}

/// A request's concurrency slots, shared by its response body and an upgraded tunnel.
pub struct Held(pub Vec<policy::limit::Slot>);

/// Releases a pool slot and a target slot when dropped (also on cancellation).
struct InFlight<'a>(&'a Pool, usize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(t) = self.0.targets.get(self.1) {
            t.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

async fn forward(
    route: &RouteRuntime,
    metrics: &Metrics,
    conn: Conn,
    client_ip: std::net::IpAddr,
    req: Request<Body>,
    host: &str,
    request_id: &HeaderValue,
) -> Response<Body> {
    let Some((pool, _, client)) = pick_split(route) else {
        return problem(StatusCode::SERVICE_UNAVAILABLE, "the route has no upstream");
    };
    route.budget.request();
    let (mut parts, body) = req.into_parts();
    // An upgrade (WebSocket) is passed through: both sides' connections are joined once the
    // upstream agrees (101).
    let upgrade = upgrade_of(&parts.headers);
    let client_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    let body_fault = parts.extensions.remove::<FaultCell>();
    let held = parts.extensions.remove::<Arc<Held>>();
    let hold = parts.extensions.remove::<ConnHold>();
    // (Hop-by-hop headers were removed in `serve`, before the policies.)
    let forwarding = Forwarding::new(
        &parts.headers,
        parts.uri.authority().map(|a| a.as_str()),
        conn.peer.ip(),
        conn.tls,
        host,
        request_id,
    );
    let retries = &route.config.retries;
    let can_retry = retries.attempts > 0 && parts.method.is_idempotent();
    // A body that may need sending twice is read first (within the size limit); otherwise
    // it streams through.
    let mut buffered: Option<Bytes> = None;
    let mut streaming: Option<Body> = None;
    if can_retry {
        match crate::pipeline::problem::collect_capped(body, conn.max_body as usize).await {
            Ok(b) => buffered = Some(b),
            Err(e) => {
                return body_refused(
                    (e == crate::pipeline::problem::CollectError::TooLarge)
                        .then_some(BodyFault::TooLarge),
                );
            }
        }
    } else {
        streaming = Some(body);
    }
    let hash_key = {
        let header_name = match &pool.balance {
            crate::config::Balance::HashHeader(h) => Some(h.as_str()),
            _ => None,
        };
        let cookie_name = match &pool.balance {
            crate::config::Balance::HashCookie(c) => Some(c.as_str()),
            _ => None,
        };
        (
            // A forwarding field is hashed as the target will see it (this hop's value).
            header_name
                .and_then(|h| {
                    if forwarding::NAMES.iter().any(|n| n.eq_ignore_ascii_case(h)) {
                        forwarding.value(h)
                    } else {
                        parts.headers.get(h).map(HeaderValue::as_bytes)
                    }
                })
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(str::to_string),
            cookie_name
                .and_then(|c| cookie(&parts.headers, c))
                .map(str::to_string),
        )
    };
    let session = pool
        .session_cookie
        .as_deref()
        .and_then(|name| cookie(&parts.headers, name))
        .map(str::to_string);
    // At most 6 attempts (retries.attempts <= 5): on the stack.
    let mut tried: SmallVec<[usize; 6]> = SmallVec::new();
    let timeout = Duration::from_millis(route.config.timeouts.request_ms);
    // Origin form for the upstream (hyper keeps the target's bytes shared, so this is cheap).
    let origin = {
        let mut o = hyper::http::uri::Parts::default();
        o.path_and_query = Some(
            parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| hyper::http::uri::PathAndQuery::from_static("/")),
        );
        Uri::from_parts(o).ok()
    };
    loop {
        if pool.in_flight.fetch_add(1, Ordering::Relaxed) >= pool.max_concurrent {
            pool.in_flight.fetch_sub(1, Ordering::Relaxed);
            let mut r = problem(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("upstream {} is at its concurrency limit", pool.name),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return r;
        }
        let key = HashInput {
            header: hash_key.0.as_deref(),
            cookie: hash_key.1.as_deref(),
            client: client_ip,
        };
        let pinned = session
            .as_deref()
            .and_then(|t| pool.session_target(t))
            .filter(|i| !tried.contains(i));
        let Some(i) = pinned.or_else(|| pool.pick(&key, &tried)) else {
            pool.in_flight.fetch_sub(1, Ordering::Relaxed);
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("upstream {} has no target", pool.name),
            );
        };
        let target = &pool.targets[i];
        target.in_flight.fetch_add(1, Ordering::Relaxed);
        let _slot = InFlight(pool, i);
        tried.push(i);
        let uri = match origin.clone() {
            Some(u) => u,
            None => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    "the request target cannot be forwarded",
                )
            }
        };
        let mut up = Request::builder().method(parts.method.clone()).uri(uri);
        if let Some(h) = up.headers_mut() {
            // Only a request that may be sent again keeps its own copy.
            *h = if can_retry {
                parts.headers.clone()
            } else {
                std::mem::take(&mut parts.headers)
            };
        }
        let body = match (&buffered, streaming.take()) {
            (Some(b), _) => full(b.clone()),
            (None, Some(s)) => s,
            (None, None) => full(Bytes::new()),
        };
        let Ok(up) = up.body(body) else {
            return problem(StatusCode::BAD_REQUEST, "the request cannot be forwarded");
        };
        let sent = Instant::now();
        // From the same clock read as `sent` (`timeout` would read the clock again).
        let deadline = tokio::time::Instant::from_std(sent) + timeout;
        let outcome =
            tokio::time::timeout_at(deadline, client.send(pool, i, up, &forwarding)).await;
        let retry_left = can_retry && (tried.len() as u32) <= retries.attempts;
        match outcome {
            Ok(Ok(Answer {
                response: resp,
                upgraded,
            })) => {
                let took = sent.elapsed();
                pool.observe(i, took);
                metrics.upstream(&pool.name, took);
                let status = resp.status().as_u16();
                pool.report(
                    i,
                    if status >= 500 {
                        Outcome::ServerError
                    } else {
                        Outcome::Ok
                    },
                );
                if retry_left && retries.on_status.contains(&status) && route.budget.try_retry() {
                    tracing::debug!(status, target = %target.addr, "retrying on status");
                    continue;
                }
                if status == 101 {
                    let tunnel = Tunnel {
                        held,
                        hold,
                        idle: conn.tunnel_idle,
                    };
                    return switch_protocols(resp, upgraded, client_upgrade, upgrade, tunnel);
                }
                let (mut rp, body) = resp.into_parts();
                strip_hop_by_hop(&mut rp.headers);
                if let Some(name) = &pool.session_cookie {
                    let token = pool.session_token(i);
                    if token.is_some() && token != session {
                        let cookie = format!(
                            "{name}={}; Path=/; HttpOnly; SameSite=Lax",
                            token.unwrap_or_default()
                        );
                        if let Ok(v) = HeaderValue::from_str(&cookie) {
                            rp.headers.append(header::SET_COOKIE, v);
                        }
                    }
                }
                return Response::from_parts(rp, body);
            }
            Ok(Err(_)) | Err(_) if body_fault.as_ref().and_then(FaultCell::get).is_some() => {
                // The client's body broke the exchange (which closes that connection): the
                // client's error, whatever the upstream side saw.
                return body_refused(body_fault.as_ref().and_then(FaultCell::get));
            }
            Ok(Err(e)) => {
                let connect = e.is_connect();
                if connect {
                    pool.report(i, Outcome::ConnectError);
                }
                if connect && retry_left && route.budget.try_retry() {
                    tracing::debug!(target = %target.addr, "retrying after a connect failure");
                    continue;
                }
                return problem(
                    StatusCode::BAD_GATEWAY,
                    &format!(
                        "upstream {}: {}",
                        pool.name,
                        if connect {
                            "connection failed"
                        } else {
                            "exchange failed"
                        }
                    ),
                );
            }
            Err(_) => {
                return problem(
                    StatusCode::GATEWAY_TIMEOUT,
                    &format!(
                        "upstream {} did not answer within {} ms",
                        pool.name, route.config.timeouts.request_ms
                    ),
                );
            }
        }
    }
}

/// The answer to a request whose body failed.
fn body_refused(fault: Option<BodyFault>) -> Response<Body> {
    match fault {
        Some(BodyFault::TooLarge) => {
            problem(StatusCode::PAYLOAD_TOO_LARGE, "request body over the limit")
        }
        _ => problem(StatusCode::BAD_REQUEST, "request body could not be read"),
    }
}

/// What an upgraded connection's tunnel keeps for its life, and its idle limit.
struct Tunnel {
    /// The request's concurrency slots.
    held: Option<Arc<Held>>,
    /// The client connection's admission.
    hold: Option<ConnHold>,
    idle: Duration,
}

/// Answers 101 to the client and joins the two upgraded connections.
fn switch_protocols(
    resp: Response<Body>,
    upstream: Option<Upgraded>,
    client: Option<hyper::upgrade::OnUpgrade>,
    protocol: Option<HeaderValue>,
    tunnel: Tunnel,
) -> Response<Body> {
    let (Some(client), Some(protocol), Some(upstream)) = (client, protocol, upstream) else {
        return problem(
            StatusCode::BAD_GATEWAY,
            "the upstream switched protocols unasked",
        );
    };
    let (mut rp, _) = resp.into_parts();
    strip_hop_by_hop(&mut rp.headers);
    keep_upgrade(&mut rp.headers, protocol);
    tokio::spawn(async move {
        // Concurrency slots and the connection's admission stay taken while the tunnel is
        // open.
        let _kept = (tunnel.held, tunnel.hold);
        match client.await {
            Ok(c) => {
                let c = hyper_util::rt::TokioIo::new(c);
                let Upgraded { stream, read_ahead } = upstream;
                if let Err(e) =
                    crate::pipeline::tunnel::join(c, stream, read_ahead, tunnel.idle).await
                {
                    tracing::debug!(error = %e, "upgraded connection ended");
                }
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
    Response::from_parts(rp, full(Bytes::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_names_are_found_at_their_place() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name.as_str()), Some(i), "{name}");
        }
        assert_eq!(hop_by_hop_index("x-connection"), None);
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(header::CONTENT_TYPE));
    }

    #[test]
    fn host_names_are_lowercase_without_port() {
        for (raw, want) in [
            ("Example.COM:8080", "example.com"),
            ("api.test", "api.test"),
            ("api.test:443", "api.test"),
            ("[2001:DB8::1]:443", "[2001:db8::1]"),
            ("[::1]", "[::1]"),
            ("api.test.", "api.test"),
            ("API.test.:8080", "api.test"),
        ] {
            let req = Request::builder()
                .header(header::HOST, raw)
                .body(())
                .expect("request");
            let host = host_of(&req).expect("valid Host");
            assert_eq!(host.as_str(), want, "{raw}");
            assert_eq!(
                matches!(host.name, HostName::Shared(..)),
                raw.bytes().all(|b| !b.is_ascii_uppercase()),
                "{raw}: no copy unless lowercasing"
            );
        }
        // Absolute-form: the target's authority wins over Host.
        for (uri, want) in [
            ("http://H2.Example:80/x", "h2.example"),
            ("http://[2001:db8::1]:8443/", "[2001:db8::1]"),
            ("http://api.test./", "api.test"),
        ] {
            let req = Request::builder()
                .uri(uri)
                .header(header::HOST, "other")
                .body(())
                .expect("request");
            assert_eq!(host_of(&req).expect("valid").as_str(), want, "{uri}");
        }
        let req = Request::builder()
            .version(hyper::Version::HTTP_10)
            .body(())
            .expect("request");
        assert_eq!(
            host_of(&req).expect("valid").as_str(),
            "",
            "HTTP/1.0 without Host"
        );
    }

    #[test]
    fn authority_rules_of_rfc_9112_and_9113() {
        use hyper::Version;
        let refused = |version: Version, uri: &str, hosts: &[&str]| {
            let mut b = Request::builder().version(version).uri(uri);
            for h in hosts {
                b = b.header(header::HOST, *h);
            }
            host_of(&b.body(()).expect("request")).is_err()
        };
        // HTTP/1.1: exactly one Host, even in absolute-form.
        assert!(refused(Version::HTTP_11, "/", &[]));
        assert!(refused(Version::HTTP_11, "http://a.test/", &[]));
        assert!(refused(Version::HTTP_11, "/", &["a.test", "a.test"]));
        assert!(refused(Version::HTTP_10, "/", &["a.test", "b.test"]));
        assert!(!refused(Version::HTTP_11, "http://a.test/", &["b.test"]));
        // No userinfo in an authority.
        assert!(refused(
            Version::HTTP_11,
            "http://evil@a.test/",
            &["a.test"]
        ));
        assert!(refused(Version::HTTP_2, "http://u:p@a.test/", &[]));
        // HTTP/2: host, when sent, equals :authority (case aside).
        assert!(refused(Version::HTTP_2, "http://a.test/", &["b.test"]));
        assert!(refused(Version::HTTP_2, "http://a.test/", &["a.test:443"]));
        assert!(!refused(Version::HTTP_2, "http://a.test/", &["A.test"]));
        assert!(!refused(Version::HTTP_2, "http://a.test/", &[]));
        assert!(!refused(Version::HTTP_2, "/", &["a.test"]));
    }

    #[test]
    fn host_headers_are_host_and_port_only() {
        for ok in [
            "",
            "test.local",
            "test.local:8080",
            "198.51.100.1",
            "198.51.100.1:80",
            "[2001:db8::1]",
            "[2001:db8::1]:443",
            "[::ffff:192.0.2.1]",
            "a,for=6.6.6.6",
            "caf%C3%A9.example",
            "host:",
        ] {
            assert!(host_end(ok.as_bytes()).is_some(), "{ok:?}");
        }
        for bad in [
            "a\";by=x,for=6.6.6.6;host=\"b",
            "user@host",
            "host:80x",
            "[2001:db8::1",
            "[]",
            "[g::1]",
            "[::1]x",
            "a b",
            "a/b",
            "bad%zz",
            "a:1:2",
            ".",
            "a..b",
            ".a",
            "a.b..",
            ".:80",
        ] {
            assert!(host_end(bad.as_bytes()).is_none(), "{bad:?}");
        }
    }
}
