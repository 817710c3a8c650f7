//! Serving one request, phase by phase: the field rules, then **prepare** (the Host and
//! path rules) → **route** → **admit** (body limit, the policy chain) → **forward** (see
//! [`super::forward`]) → **respond** (response transform, limit headers). Metrics, usage
//! analytics, the shield's count of the gateway's own refusals and the access log are
//! written once the response head is known.

use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Instant,
};

use http_body_util::BodyExt;
use hyper::{
    body::Incoming,
    header::{self, HeaderValue},
    http::request::Parts,
    Request, Response, StatusCode,
};
use sluice_util::shield::Class;

use super::{
    access_log::AccessLine,
    client_body::{ClientBody, FaultCell},
    error::ProxyError,
    facts::{Conn, Facts, Held},
    forward::forward,
    headers::{check_request_fields, keep_upgrade, strip_hop_by_hop, upgrade_of},
    policy::{self, Context, Granted},
    problem::GatewayMade,
    router::RequestView,
    runtime::{RedirectAnswer, RouteRuntime, Runtime},
    target::{host_of, normalized_target, RequestHost},
};
use crate::{
    metrics::Metrics,
    shield::Fault,
    upstream::forwarding::{random_id, X_REQUEST_ID},
    Body,
};

/// Serves one request.
pub async fn handle(
    rt: Arc<Runtime>,
    metrics: Arc<Metrics>,
    conn: Conn,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    // The field rules first: everything after (the request id, the client address, routing,
    // policies, the upstream) reads the fields as they will be forwarded.
    let fields = clean_fields(conn, &mut req);
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
    // Until the answer is ready, a client that goes away (hyper then drops this future)
    // leaves a 499 in the metrics and the access log, as nginx logs it.
    let pending = Abandoned {
        rt: &rt,
        metrics: &metrics,
        method: &method,
        started,
        route: AtomicUsize::new(UNROUTED),
        request_id: &request_id,
        seen,
        armed: true,
    };
    let served = match fields {
        Ok(()) => {
            serve(
                &rt,
                &metrics,
                conn,
                client,
                req,
                &request_id,
                &pending.route,
            )
            .await
        }
        Err(e) => Served::unrouted(e),
    };
    let seen = pending.answered();
    let mut resp = served.response;
    // One clock read for the metrics, the analytics and the log line.
    let took = started.elapsed();
    let status = resp.status().as_u16();
    // The shield counts the gateway's own refusals only: an upstream's 401 is the upstream's
    // business. Any other answer costs this one match. It holds a refusal against the
    // client only when the client is the peer (see `crate::shield`; XFF stays the client
    // for everything else here) and the refusing step did not say it is not the client's
    // doing (a 429 must say it is).
    if let Some(class) = Class::of_status(status) {
        let ext = resp.extensions();
        if ext.get::<GatewayMade>().is_some() {
            let fault = ext.get::<Fault>().copied();
            metrics
                .shield
                .request_refused(conn.peer.ip(), client, class, fault);
        }
    }
    metrics.request(served.route, &method, status, took);
    metrics
        .analytics
        .record(served.consumer.as_ref(), served.route, status, took);
    if let Some(line) = seen {
        line.emit(
            &rt.config.access_log,
            request_id.to_str().unwrap_or("-"),
            served.route,
            status,
            took,
        );
    }
    resp.headers_mut().insert(X_REQUEST_ID, request_id);
    resp
}

/// A request still waiting for its answer; dropped before [`Abandoned::answered`] (its
/// client went away), it records the request with status 499.
struct Abandoned<'a> {
    rt: &'a Runtime,
    metrics: &'a Metrics,
    method: &'a hyper::Method,
    started: Instant,
    /// The index of the route it took, once routed ([`UNROUTED`] until then; an atomic
    /// only because the future that sets it must be `Send`).
    route: AtomicUsize,
    request_id: &'a HeaderValue,
    /// The access log's part, taken back when answered.
    seen: Option<AccessLine>,
    /// Not yet answered.
    armed: bool,
}

/// No route yet.
const UNROUTED: usize = usize::MAX;

/// The status nginx logs for a request whose client closed the connection first.
const CLIENT_CLOSED: u16 = 499;

impl Abandoned<'_> {
    /// The request is answered: nothing to record here; the access log's part back.
    fn answered(mut self) -> Option<AccessLine> {
        self.armed = false;
        self.seen.take()
    }
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let took = self.started.elapsed();
        let route = self
            .rt
            .routes
            .get(self.route.load(Ordering::Relaxed))
            .map_or("-", |r| r.config.name.as_str());
        self.metrics
            .request(route, self.method, CLIENT_CLOSED, took);
        if let Some(line) = self.seen.take() {
            line.emit(
                &self.rt.config.access_log,
                self.request_id.to_str().unwrap_or("-"),
                route,
                CLIENT_CLOSED,
                took,
            );
        }
    }
}

/// A request's answer, the route it took (`-` for none) and its consumer, if authenticated.
struct Served<'rt> {
    response: Response<Body>,
    route: &'rt str,
    consumer: Option<Arc<str>>,
}

impl<'rt> Served<'rt> {
    fn unrouted(e: ProxyError) -> Self {
        Served {
            response: e.into_response(),
            route: "-",
            consumer: None,
        }
    }
}

// The phases that wait (the policy chain, forwarding, the response transform) are awaited
// here, not inside helper `async fn`s: a nested future is moved whole into its parent's
// state when it is created, and these are the request's largest (an extra level each cost
// some 1,300 instructions per request in memcpy under callgrind). The phases between them
// are plain functions.
async fn serve<'rt>(
    rt: &'rt Runtime,
    metrics: &Metrics,
    conn: Conn,
    client: IpAddr,
    mut req: Request<Incoming>,
    request_id: &HeaderValue,
    routed: &AtomicUsize,
) -> Served<'rt> {
    let host = match prepare(conn, &mut req) {
        Ok(h) => h,
        Err(e) => return Served::unrouted(e),
    };
    // Once: a shared Host value is checked as UTF-8 each time it is read as text.
    let host_name = host.as_str();
    let route = match find_route(rt, &req, host_name) {
        Ok((i, r)) => {
            routed.store(i, Ordering::Relaxed);
            r
        }
        Err(e) => return Served::unrouted(e),
    };
    let mut consumer = None;
    let response = 'answer: {
        if let Some(rd) = &route.redirect {
            break 'answer redirect(rd);
        }
        let (mut parts, mut body) = match admit(conn, req) {
            Ok(admitted) => admitted,
            Err(e) => break 'answer e.into_response(),
        };
        let mut granted = Granted::default();
        if !route.chain.is_empty() {
            let mut ctx = Context {
                client,
                limit_client: rt.policies.client_ip.limit_key(client),
                limit_client_alone: rt.policies.client_ip.limits_one_client(client),
                route: route.config.name.as_str(),
                identity: None,
            };
            let verdict = route.chain.run(&mut parts, body, &mut ctx).await;
            consumer = ctx.identity.map(|i| i.consumer.clone());
            (body, granted) = match verdict {
                Ok(passed) => passed,
                Err(refusal) => break 'answer *refusal,
            };
            // A request transform may have rewritten the path: what goes upstream is
            // normal too.
            if let Err(e) = renormalize(&mut parts, conn) {
                break 'answer e.into_response();
            }
        }
        let head = parts.method == hyper::Method::HEAD;
        // Concurrency slots live as long as the response body, or as an upgraded tunnel
        // (which takes its share from the request's extensions).
        let slots =
            (!granted.slots.is_empty()).then(|| Arc::new(Held(std::mem::take(&mut granted.slots))));
        if let Some(s) = &slots {
            parts.extensions.insert(s.clone());
        }
        let facts = Facts {
            conn,
            client,
            host: host_name,
            request_id,
        };
        let mut resp = forward(route, metrics, facts, Request::from_parts(parts, body)).await;
        if let Some(t) = route
            .chain
            .response
            .as_ref()
            .filter(|_| transformable(&resp))
        {
            resp = t.apply(resp, head).await;
        }
        finish(resp, &granted, slots)
    };
    Served {
        response,
        route: route.config.name.as_str(),
        consumer,
    }
}

/// The field rules, before anything reads the request: the hop-by-hop fields, and those
/// `Connection` names, are removed so that the client address, the router and the
/// policies decide on the fields the upstream gets (`Connection: host` must not strip the
/// Host a request was routed on, nor `Connection: x-tenant` a field a route matched, nor
/// `Connection: x-forwarded-for` the chain a trusted proxy's client was read from). An
/// upgrade to WebSocket keeps its `Connection: upgrade` / `Upgrade` pair.
fn clean_fields(conn: Conn, req: &mut Request<Incoming>) -> Result<(), ProxyError> {
    // hyper holds an HTTP/1.1 head to the listener's field count itself; HTTP/2 is held to
    // it here (h2 bounds only the bytes of a header list). Cookies count as the one field
    // they are in HTTP/1.1: HTTP/2 clients send each cookie as a field of its own.
    if req.headers().len() > conn.max_headers {
        let crumbs = req.headers().get_all(header::COOKIE).iter().count();
        if req.headers().len() - crumbs.saturating_sub(1) > conn.max_headers {
            return Err(ProxyError::TooManyFields(conn.max_headers));
        }
    }
    check_request_fields(req.headers_mut(), conn.underscores)?;
    let upgrade = upgrade_of(req.headers());
    strip_hop_by_hop(req.headers_mut());
    if let Some(p) = upgrade {
        keep_upgrade(req.headers_mut(), p);
    }
    Ok(())
}

/// The Host and path rules: hyper checks neither the Host rules nor its content, and
/// routing, `Forwarded` and the upstream use both. The authority routed on is the Host the
/// upstream gets (an HTTP/2 upstream takes it as `:authority`), and the path is routed,
/// checked by policies and forwarded in one normal form.
fn prepare(conn: Conn, req: &mut Request<Incoming>) -> Result<RequestHost, ProxyError> {
    let mut host = host_of(req).map_err(ProxyError::BadHost)?;
    if let Some(v) = host.upstream.take() {
        req.headers_mut().insert(header::HOST, v);
    }
    if let Some(uri) = normalized_target(req.uri(), req.method(), conn.paths)? {
        *req.uri_mut() = uri;
    }
    Ok(host)
}

/// The route of the request, and its index.
fn find_route<'rt>(
    rt: &'rt Runtime,
    req: &Request<Incoming>,
    host: &str,
) -> Result<(usize, &'rt RouteRuntime), ProxyError> {
    let view = RequestView {
        host,
        path: req.uri().path(),
        method: req.method().as_str(),
        headers: req.headers(),
        query: req.uri().query().unwrap_or(""),
    };
    rt.router
        .find(&view)
        .and_then(|m| Some((m.route, rt.routes.get(m.route)?)))
        .ok_or_else(|| ProxyError::NoRoute {
            method: req.method().clone(),
            path: req.uri().path().to_string(),
        })
}

fn redirect(rd: &RedirectAnswer) -> Response<Body> {
    let mut r = Response::new(crate::full(bytes::Bytes::new()));
    *r.status_mut() = rd.status;
    r.headers_mut()
        .insert(header::LOCATION, rd.location.clone());
    r
}

/// Admission before the policies: the declared body limit, the client's own
/// `X-Consumer-Id` removed, and the body wrapped to enforce the limit as it streams.
fn admit(conn: Conn, req: Request<Incoming>) -> Result<(Parts, Body), ProxyError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared.filter(|len| *len > conn.max_body) {
        return Err(ProxyError::DeclaredTooLarge {
            declared: len,
            max: conn.max_body,
        });
    }
    let (mut parts, body) = req.into_parts();
    // (The hop-by-hop fields went in `prepare`, before the policies that add this one.)
    parts.headers.remove(&policy::CONSUMER_HEADER);
    // The body limit is enforced as it streams (a Content-Length over it was refused above),
    // and a failure of the client's body is told apart from the upstream's.
    let body: Body = if hyper::body::Body::is_end_stream(&body) {
        // No allocation: `Empty` is zero-sized.
        http_body_util::Empty::new().map_err(|e| match e {}).boxed()
    } else {
        let fault = FaultCell::default();
        parts.extensions.insert(fault.clone());
        ClientBody::new(body, conn.max_body, conn.body_idle, fault).boxed()
    };
    Ok((parts, body))
}

/// Normalizes the path again after the policies (a transform may have rewritten it).
fn renormalize(parts: &mut Parts, conn: Conn) -> Result<(), ProxyError> {
    if let Some(uri) = normalized_target(&parts.uri, &parts.method, conn.paths)? {
        parts.uri = uri;
    }
    Ok(())
}

/// Whether a response transform applies: never to the gateway's own answers or a protocol
/// switch.
fn transformable(resp: &Response<Body>) -> bool {
    resp.extensions().get::<GatewayMade>().is_none()
        && resp.status() != StatusCode::SWITCHING_PROTOCOLS
}

/// The limits' headers, and the concurrency slots, held until the body ends.
fn finish(mut resp: Response<Body>, granted: &Granted, slots: Option<Arc<Held>>) -> Response<Body> {
    granted.write_headers(resp.headers_mut());
    match slots {
        Some(slots) => resp.map(move |b| {
            b.map_frame(move |f| {
                let _ = &slots;
                f
            })
            .boxed()
        }),
        None => resp,
    }
}
