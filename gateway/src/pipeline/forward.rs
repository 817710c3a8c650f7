//! Forwarding a routed, admitted request: **pick** a split and prepare the request once →
//! for each attempt, **admit** it into the pool's concurrency limit and pick a target →
//! **attempt** the exchange → **classify** the outcome (answer, retry on another target,
//! or fail; the retry decision is the error kind's, see [`ProxyError::retry`]) →
//! **respond** (hop-by-hop headers, the session cookie, or a protocol switch).

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use hyper::{
    header::{self, HeaderValue},
    http::{request::Parts, uri::PathAndQuery},
    Request, Response, Uri,
};
use rand::Rng;
use smallvec::SmallVec;

use super::{
    client_body::FaultCell,
    error::{ProxyError, Retry},
    facts::{Conn, Facts, Held},
    headers::{clean_response, cookie, upgrade_of},
    runtime::{RouteRuntime, RouteSplit},
    tunnel::{switch_protocols, ConnHold, Tunnel},
    whole_body::{collect_capped, CollectError, WholeBody},
};
use crate::{
    config::Balance,
    metrics::Metrics,
    upstream::{
        exchange::Answer,
        forwarding::{self, Forwarding},
        http1::SendError,
        HashInput, Outcome, Pool,
    },
    Body,
};

/// Forwards `req` on `route`; errors become problem+json here.
pub async fn forward(
    route: &RouteRuntime,
    metrics: &Metrics,
    facts: Facts<'_>,
    req: Request<Body>,
) -> Response<Body> {
    let Facts {
        conn,
        client: client_ip,
        host,
        request_id,
    } = facts;
    let Some(split) = pick_split(route) else {
        return ProxyError::NoUpstream.into_response();
    };
    route.budget.request();
    let forwarding = Forwarding::new(
        req.headers(),
        req.uri().authority().map(|a| a.as_str()),
        conn.peer.ip(),
        conn.tls,
        host,
        request_id,
    );
    let mut out = Outbound::new(route, split, conn, client_ip, req, forwarding);
    // A body that may need sending twice is read first (within the size limit); otherwise
    // it streams through.
    if let Replay::Once(Some(body)) = &mut out.body {
        if out.can_retry {
            let body = std::mem::replace(body, crate::full(Bytes::new()));
            out.body = match collect_capped(body, conn.max_body as usize).await {
                Ok(b) => Replay::Buffered(b),
                Err(CollectError::TooLarge) => return ProxyError::BodyTooLarge.into_response(),
                Err(CollectError::Broken) => return ProxyError::BodyUnreadable.into_response(),
                Err(CollectError::Stalled) => return ProxyError::BodyStalled.into_response(),
                Err(CollectError::OverBudget) => return ProxyError::OverBudget.into_response(),
            };
        }
    }
    let pool = &*split.pool;
    // At most 6 attempts (retries.attempts <= 5): on the stack.
    let mut tried: SmallVec<[usize; 6]> = SmallVec::new();
    // The exchange is awaited here rather than in a helper `async fn`, whose future (the
    // request's largest) would be moved whole into this one's state on every attempt.
    let (target, answer) = loop {
        let Some(mut slot) = pool.admit() else {
            return ProxyError::PoolFull {
                pool: pool.name.clone(),
            }
            .into_response();
        };
        let Some(i) = out.pick(pool, &tried) else {
            return ProxyError::NoTarget {
                pool: pool.name.clone(),
            }
            .into_response();
        };
        slot.on_target(i);
        tried.push(i);
        let up = match out.request() {
            Ok(up) => up,
            Err(e) => return e.into_response(),
        };
        let sent = Instant::now();
        // From the same clock read as `sent` (`timeout` would read the clock again).
        let deadline = tokio::time::Instant::from_std(sent) + out.timeout;
        let exchange = split.client.send(pool, i, up, &out.forwarding);
        let result = tokio::time::timeout_at(deadline, exchange).await;
        let result = settle(route, metrics, pool, i, &out, sent, result);
        let retry_left = out.can_retry && (tried.len() as u32) <= route.config.retries.attempts;
        match classify(route, pool, i, result, retry_left) {
            Next::Answer(a) => {
                // The response has begun: a body still uploading may go quiet now (a
                // full-duplex stream), under the response's deadlines, not the upload's.
                if let Some(f) = &out.body_fault {
                    f.answered();
                }
                break (i, a);
            }
            Next::Retry => continue,
            Next::Fail(e) => return e.into_response(),
        }
    };
    let read_idle = Duration::from_millis(route.config.timeouts.read_idle_ms);
    respond(pool, target, &mut out, answer, read_idle)
}

/// The split a request goes to, by weight.
fn pick_split(route: &RouteRuntime) -> Option<&RouteSplit> {
    if let [only] = route.splits.as_slice() {
        return Some(only);
    }
    let total: u64 = route.splits.iter().map(|s| s.weight as u64).sum();
    if total == 0 {
        return route.splits.first();
    }
    let mut n = rand::thread_rng().gen_range(0..total);
    route.splits.iter().find(|s| {
        if n < s.weight as u64 {
            true
        } else {
            n -= s.weight as u64;
            false
        }
    })
}

/// The request's body as attempts take it.
enum Replay {
    /// Read whole first, because the request may be sent again.
    Buffered(WholeBody),
    /// Streamed through, by the one attempt there will be.
    Once(Option<Body>),
}

/// What every attempt of a request sends and keys on, made once.
struct Outbound {
    parts: Parts,
    body: Replay,
    /// The target in origin form (hyper keeps its bytes shared, so this is cheap).
    origin: Uri,
    forwarding: Forwarding,
    /// The pool's hash key (a header's or a cookie's value) and the session cookie.
    hash_header: Option<String>,
    hash_cookie: Option<String>,
    session: Option<String>,
    client_ip: IpAddr,
    /// Idempotent, with retries configured.
    can_retry: bool,
    timeout: Duration,
    /// What a protocol switch needs, and the client body's fault, if it breaks.
    upgrade: Option<HeaderValue>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    body_fault: Option<FaultCell>,
    tunnel: Tunnel,
}

impl Outbound {
    /// The request as every attempt will send it; its body streams through until
    /// `forward` buffers it for a request that may be retried.
    fn new(
        route: &RouteRuntime,
        split: &RouteSplit,
        conn: Conn,
        client_ip: IpAddr,
        req: Request<Body>,
        forwarding: Forwarding,
    ) -> Self {
        let (mut parts, body) = req.into_parts();
        let can_retry = route.config.retries.attempts > 0 && parts.method.is_idempotent();
        let body = Replay::Once(Some(body));
        let pool = &split.pool;
        let (hash_header, hash_cookie) = hash_keys(pool, &parts, &forwarding);
        let session = pool
            .session_cookie
            .as_deref()
            .and_then(|name| cookie(&parts.headers, name))
            .map(str::to_string);
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let origin = Uri::from(path);
        Outbound {
            upgrade: upgrade_of(&parts.headers),
            client_upgrade: parts.extensions.remove::<hyper::upgrade::OnUpgrade>(),
            body_fault: parts.extensions.remove::<FaultCell>(),
            tunnel: Tunnel {
                held: parts.extensions.remove::<Arc<Held>>(),
                hold: parts.extensions.remove::<ConnHold>(),
                idle: conn.tunnel_idle,
            },
            timeout: Duration::from_millis(route.config.timeouts.request_ms),
            parts,
            body,
            origin,
            forwarding,
            hash_header,
            hash_cookie,
            session,
            client_ip,
            can_retry,
        }
    }

    /// The target for the next attempt: the session's, else the pool's pick, never one
    /// already tried.
    fn pick(&self, pool: &Pool, tried: &[usize]) -> Option<usize> {
        let pinned = self
            .session
            .as_deref()
            .and_then(|t| pool.session_target(t))
            .filter(|i| !tried.contains(i));
        pinned.or_else(|| {
            pool.pick(
                &HashInput {
                    header: self.hash_header.as_deref(),
                    cookie: self.hash_cookie.as_deref(),
                    client: self.client_ip,
                },
                tried,
            )
        })
    }

    /// The request one attempt sends. Only a request that may be sent again keeps its own
    /// copy of the headers.
    fn request(&mut self) -> Result<Request<Body>, ProxyError> {
        let mut up = Request::builder()
            .method(self.parts.method.clone())
            .uri(self.origin.clone());
        if let Some(h) = up.headers_mut() {
            *h = if self.can_retry {
                self.parts.headers.clone()
            } else {
                std::mem::take(&mut self.parts.headers)
            };
        }
        let body = match &mut self.body {
            Replay::Buffered(b) => crate::full(Bytes::clone(b)),
            Replay::Once(b) => b.take().unwrap_or_else(|| crate::full(Bytes::new())),
        };
        up.body(body).map_err(|_| ProxyError::NotForwardable)
    }

    /// The client's body broke the exchange (which closes that connection).
    fn body_failed(&self) -> Option<ProxyError> {
        let fault = self.body_fault.as_ref()?.get()?;
        Some(ProxyError::of_body(Some(fault)))
    }
}

/// The values a hashing pool keys on. A forwarding field is hashed as the target will see
/// it (this hop's value).
fn hash_keys(
    pool: &Pool,
    parts: &Parts,
    forwarding: &Forwarding,
) -> (Option<String>, Option<String>) {
    match (&pool.balance, &pool.hash_header) {
        (Balance::HashHeader(_), Some(h)) => {
            let value = if forwarding::NAMES.contains(&h.as_str()) {
                forwarding.value(h.as_str())
            } else {
                parts.headers.get(h).map(HeaderValue::as_bytes)
            };
            let value = value.and_then(|v| std::str::from_utf8(v).ok());
            (value.map(str::to_string), None)
        }
        (Balance::HashCookie(c), _) => (None, cookie(&parts.headers, c).map(str::to_string)),
        _ => (None, None),
    }
}

/// What the classification of an attempt decided.
enum Next {
    Answer(Answer),
    Retry,
    Fail(ProxyError),
}

/// What one exchange with target `i` came to, reported to the pool: the answer, or the
/// error (the client's broken body first, whatever the upstream side saw).
fn settle(
    route: &RouteRuntime,
    metrics: &Metrics,
    pool: &Pool,
    i: usize,
    out: &Outbound,
    sent: Instant,
    result: Result<Result<Answer, SendError>, tokio::time::error::Elapsed>,
) -> Result<Answer, ProxyError> {
    if let (Err(_) | Ok(Err(_)), Some(e)) = (&result, out.body_failed()) {
        return Err(e);
    }
    match result {
        Ok(Ok(answer)) => {
            let took = sent.elapsed();
            pool.observe(i, took);
            metrics.upstream(&pool.name, took);
            let outcome = if answer.response.status().is_server_error() {
                Outcome::ServerError
            } else {
                Outcome::Ok
            };
            pool.report(i, outcome);
            Ok(answer)
        }
        Ok(Err(e)) if e.is_connect() => {
            // A shortage here says nothing of the target: ejecting it would spread the
            // gateway's own trouble over its upstreams' health.
            if !e.is_local() {
                pool.report(i, Outcome::ConnectError);
            }
            Err(ProxyError::Connect {
                pool: pool.name.clone(),
            })
        }
        Ok(Err(_)) => Err(ProxyError::Exchange {
            pool: pool.name.clone(),
        }),
        Err(_) => Err(ProxyError::Timeout {
            pool: pool.name.clone(),
            ms: route.config.timeouts.request_ms,
        }),
    }
}

/// Answer, retry on another target (retries and the route's budget allowing), or fail.
fn classify(
    route: &RouteRuntime,
    pool: &Pool,
    i: usize,
    result: Result<Answer, ProxyError>,
    retry_left: bool,
) -> Next {
    let target = pool.targets.get(i).map(|t| t.addr);
    match result {
        Ok(answer) => {
            let status = answer.response.status().as_u16();
            if retry_left
                && route.config.retries.on_status.contains(&status)
                && route.budget.try_retry()
            {
                tracing::debug!(status, target = ?target, "retrying on status");
                return Next::Retry;
            }
            Next::Answer(answer)
        }
        Err(e) if e.retry() == Retry::Elsewhere && retry_left && route.budget.try_retry() => {
            tracing::debug!(target = ?target, error = %e, "retrying on another target");
            Next::Retry
        }
        Err(e) => Next::Fail(e),
    }
}

/// The upstream's answer as the client gets it: a protocol switch joins the two
/// connections; anything else loses its hop-by-hop headers and may set the session cookie.
fn respond(
    pool: &Pool,
    i: usize,
    out: &mut Outbound,
    answer: Answer,
    read_idle: Duration,
) -> Response<Body> {
    let Answer { response, upgraded } = answer;
    if response.status() == hyper::StatusCode::SWITCHING_PROTOCOLS {
        let tunnel = Tunnel {
            held: out.tunnel.held.take(),
            hold: out.tunnel.hold.take(),
            idle: out.tunnel.idle,
        };
        return switch_protocols(
            response,
            upgraded,
            out.client_upgrade.take(),
            out.upgrade.take(),
            tunnel,
        );
    }
    let (mut rp, body) = response.into_parts();
    clean_response(&mut rp.headers);
    if let Some(name) = &pool.session_cookie {
        let token = pool.session_token(i);
        if token.is_some() && token != out.session {
            let cookie = format!(
                "{name}={}; Path=/; HttpOnly; SameSite=Lax",
                token.unwrap_or_default()
            );
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                rp.headers.append(header::SET_COOKIE, v);
            }
        }
    }
    // A body already whole needs no timer.
    let body = if hyper::body::Body::is_end_stream(&body) {
        body
    } else {
        http_body_util::BodyExt::boxed(super::upstream_body::IdleBody::new(body, read_idle))
    };
    Response::from_parts(rp, body)
}
