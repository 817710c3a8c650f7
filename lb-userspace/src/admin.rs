//! The admin HTTP API (loopback by default) and the client the CLI uses.
//!
//! | method | path | |
//! |---|---|---|
//! | GET | `/` | the dashboard page (its script, style and state under `/dashboard/`) |
//! | GET | `/dashboard/state?since=N` | JSON ([`DashboardState`](crate::agent::DashboardState)) |
//! | GET | `/healthz` | 200 while the agent runs and the node can forward; 503 naming the failing node checks |
//! | GET | `/metrics` | Prometheus text |
//! | GET | `/status` | JSON ([`Status`]) |
//! | POST | `/backends/{address}/drain` | no new flows to that backend |
//! | POST | `/backends/{address}/undrain` | |
//! | POST | `/backends/{address}/weight?value=N` | set a weight; without `value`, back to config |
//! | GET | `/shield` | JSON ([`ShieldStatus`](crate::shield::ShieldStatus)) |
//! | POST | `/shield/block` | JSON [`BlockBody`]: block a prefix in XDP |
//! | POST | `/shield/unblock` | JSON `{"prefix": …}` |
//! | POST | `/maintenance/on`, `/maintenance/off` | withdraw every VIP from BGP, or announce again |
//!
//! Errors are RFC 9457 `application/problem+json`. Requests a browser could have been made
//! to send from another site are refused with 403 (see
//! [`sluice_util::dashboard::refusal`]). A POST changes state: it must present the admin
//! token (`admin.token_file`, 401 otherwise), or without one come from loopback (403
//! otherwise); see [`sluice_util::admin`].

use std::{convert::Infallible, net::IpAddr};

use http_body_util::{BodyExt, Full};
use hyper::{
    body::{Bytes, Incoming},
    header, Method, Request, Response, StatusCode,
};
use hyper_util::rt::TokioIo;
use sluice_util::{admin::Token, dashboard};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
};
use tracing::debug;

use crate::{
    agent::{Command, CommandError, Status},
    shield::{BlockError, BlockRequest},
};

type Body = Full<Bytes>;

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    // No answer of this API may be sniffed into something a browser would run.
    r.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    r
}

fn problem(status: StatusCode, detail: &str) -> Response<Body> {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    respond(status, "application/problem+json", body.to_string())
}

/// Serves the API until the agent's command channel closes. `host_names`: the names a
/// browser may use for this listener besides addresses and `localhost`.
pub async fn serve(
    listener: TcpListener,
    agent: mpsc::UnboundedSender<Command>,
    host_names: std::sync::Arc<Vec<String>>,
    token: SharedToken,
) {
    use sluice_util::accept::{AcceptBackoff, ADMIN_CONNECTIONS, ADMIN_HEAD_TIMEOUT};
    // Bounded, as the gateway's admin listener is: its connections cannot take the
    // descriptors the agent's probes and pulls need.
    let room = std::sync::Arc::new(tokio::sync::Semaphore::new(ADMIN_CONNECTIONS));
    let mut backoff = AcceptBackoff::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                if let Some(failures) = backoff.failed(&e).await {
                    tracing::warn!(error = %e, failures, "admin accept failed; pausing");
                }
                continue;
            }
        };
        let Ok(slot) = room.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let agent = agent.clone();
        let names = host_names.clone();
        let token = token.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                let agent = agent.clone();
                let names = names.clone();
                let token = token.clone();
                async move { Ok::<_, Infallible>(handle(req, &agent, &names, peer.ip(), &token).await) }
            });
            // hyper's head timer runs from the start of each wait for a request, so it
            // bounds an idle connection as well as a slow head.
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(ADMIN_HEAD_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, error = %e, "admin connection");
            }
        });
    }
}

async fn ask<T>(
    agent: &mpsc::UnboundedSender<Command>,
    make: impl FnOnce(oneshot::Sender<T>) -> Command,
) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    agent.send(make(tx)).ok()?;
    rx.await.ok()
}

/// The body of `POST /shield/block` (and, with only `prefix`, of `/shield/unblock`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockBody {
    /// A prefix, or an address (a /32 or /128).
    pub prefix: String,
    /// How long the block holds, in milliseconds.
    #[serde(default)]
    pub ttl_ms: u64,
    /// Free text shown with the entry.
    #[serde(default)]
    pub reason: String,
    /// Allow prefixes wider than /16 (IPv4) or /32 (IPv6).
    #[serde(default)]
    pub force: bool,
}

/// A prefix, or an address standing for its host prefix.
pub fn parse_prefix(text: &str) -> Option<ipnet::IpNet> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(ipnet::IpNet::from))
}

/// The most an admin request body may hold.
const MAX_ADMIN_BODY: usize = 16 * 1024;

async fn shield_change(
    req: Request<Incoming>,
    agent: &mpsc::UnboundedSender<Command>,
    block: bool,
) -> Response<Body> {
    let body = match http_body_util::Limited::new(req.into_body(), MAX_ADMIN_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => return problem(StatusCode::PAYLOAD_TOO_LARGE, &format!("body: {e}")),
    };
    let body: BlockBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return problem(StatusCode::BAD_REQUEST, &format!("body: {e}")),
    };
    let Some(prefix) = parse_prefix(&body.prefix) else {
        return problem(
            StatusCode::BAD_REQUEST,
            &format!("{:?} is not a prefix or an address", body.prefix),
        );
    };
    let result = if block {
        if body.reason.chars().any(char::is_control) {
            return problem(StatusCode::BAD_REQUEST, "reason: no control characters");
        }
        let req = BlockRequest {
            prefix,
            ttl: std::time::Duration::from_millis(body.ttl_ms),
            note: body.reason,
            force: body.force,
        };
        ask(agent, |tx| Command::Block(req, tx)).await
    } else {
        ask(agent, |tx| Command::Unblock(prefix, tx)).await
    };
    match result {
        Some(Ok(())) => respond(StatusCode::OK, "application/json", "{\"ok\":true}".into()),
        Some(Err(CommandError::Shield(e @ BlockError::NotBlocked(_)))) => {
            problem(StatusCode::NOT_FOUND, &e.to_string())
        }
        Some(Err(e)) => problem(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()),
        None => problem(StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping"),
    }
}

/// A header's value as text, if it has one.
fn header_text(req: &Request<Incoming>, name: header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// An embedded dashboard file, with the page headers.
fn page(asset: sluice_util::dashboard::Asset) -> Response<Body> {
    let mut r = respond(StatusCode::OK, asset.content_type, asset.body.to_string());
    for (k, v) in dashboard::PAGE_HEADERS {
        r.headers_mut()
            .insert(*k, header::HeaderValue::from_static(v));
    }
    r
}

/// The admin token in force, shared with the agent, which replaces it at each reload.
pub type SharedToken = std::sync::Arc<arc_swap::ArcSwapOption<Token>>;

/// The refusal of a state change `peer` may not make (see `sluice_util::admin`, the gate
/// the gateway's admin API applies too); `None` for a read, or a change it may make.
fn change_refused(
    req: &Request<Incoming>,
    peer: IpAddr,
    token: &SharedToken,
) -> Option<Response<Body>> {
    let token = token.load();
    let refusal =
        sluice_util::admin::check_request(peer, req.method(), req.headers(), token.as_deref())
            .err()?;
    let status = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::FORBIDDEN);
    let mut r = problem(status, refusal.detail());
    if let Some(challenge) = refusal.challenge() {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static(challenge),
        );
    }
    Some(r)
}

async fn handle(
    req: Request<Incoming>,
    agent: &mpsc::UnboundedSender<Command>,
    host_names: &[String],
    peer: IpAddr,
    token: &SharedToken,
) -> Response<Body> {
    let view = dashboard::RequestView {
        method: req.method().as_str(),
        host: header_text(&req, header::HOST),
        origin: header_text(&req, header::ORIGIN),
        fetch_site: req
            .headers()
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok()),
        user_agent: header_text(&req, header::USER_AGENT),
    };
    if let Some(why) = dashboard::refusal(view, host_names) {
        return problem(StatusCode::FORBIDDEN, &why);
    }
    if let Some(refused) = change_refused(&req, peer, token) {
        return refused;
    }
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let gone = || problem(StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping");
    if req.method() == Method::GET {
        if let Some(asset) = crate::dashboard::asset(&path) {
            return page(asset);
        }
    }
    match (req.method(), path.as_str()) {
        (&Method::GET, "/dashboard/state") => {
            let since = match dashboard::since_param(&query) {
                Ok(since) => since,
                Err(e) => return problem(StatusCode::BAD_REQUEST, &e),
            };
            match ask(agent, |tx| Command::Dashboard(since, tx)).await {
                Some(s) => {
                    let mut r = respond(
                        StatusCode::OK,
                        "application/json",
                        serde_json::to_string(&s).unwrap_or_default(),
                    );
                    r.headers_mut().insert(
                        header::CACHE_CONTROL,
                        header::HeaderValue::from_static("no-store"),
                    );
                    r
                }
                None => gone(),
            }
        }
        (&Method::GET, "/healthz") => match ask(agent, Command::Healthz).await {
            Some(failing) if failing.is_empty() => {
                respond(StatusCode::OK, "text/plain", "ok\n".into())
            }
            Some(failing) => {
                let detail: Vec<String> = failing
                    .iter()
                    .map(|c| format!("{}: {}", c.name, c.detail))
                    .collect();
                problem(StatusCode::SERVICE_UNAVAILABLE, &detail.join("; "))
            }
            None => gone(),
        },
        (&Method::GET, "/metrics") => match ask(agent, Command::Metrics).await {
            Some(text) => respond(StatusCode::OK, "text/plain; version=0.0.4", text),
            None => gone(),
        },
        (&Method::GET, "/status") => match ask(agent, Command::Status).await {
            Some(s) => respond(
                StatusCode::OK,
                "application/json",
                serde_json::to_string(&s).unwrap_or_default(),
            ),
            None => gone(),
        },
        (&Method::GET, "/shield") => match ask(agent, Command::Status).await {
            Some(s) => respond(
                StatusCode::OK,
                "application/json",
                serde_json::to_string(&s.shield).unwrap_or_default(),
            ),
            None => gone(),
        },
        (&Method::POST, "/shield/block") => shield_change(req, agent, true).await,
        (&Method::POST, p @ ("/maintenance/on" | "/maintenance/off")) => {
            let on = p.ends_with("/on");
            match ask(agent, |tx| Command::Maintenance(on, tx)).await {
                Some(Ok(())) => respond(StatusCode::OK, "application/json", "{\"ok\":true}".into()),
                Some(Err(e)) => problem(StatusCode::CONFLICT, &e.to_string()),
                None => gone(),
            }
        }
        (&Method::POST, "/shield/unblock") => shield_change(req, agent, false).await,
        (&Method::POST, p) if p.starts_with("/backends/") => {
            let rest = &p["/backends/".len()..];
            let Some((addr, action)) = rest.rsplit_once('/') else {
                return problem(
                    StatusCode::NOT_FOUND,
                    "expected /backends/{address}/{action}",
                );
            };
            let Ok(addr) = addr.parse::<IpAddr>() else {
                return problem(
                    StatusCode::BAD_REQUEST,
                    &format!("{addr:?} is not an IP address"),
                );
            };
            let result = match action {
                "drain" => ask(agent, |tx| Command::Drain(addr, tx)).await,
                "undrain" => ask(agent, |tx| Command::Undrain(addr, tx)).await,
                "weight" => {
                    let value = query
                        .split('&')
                        .find_map(|kv| kv.strip_prefix("value="))
                        .map(str::parse::<u32>);
                    match value {
                        Some(Err(_)) => {
                            return problem(
                                StatusCode::BAD_REQUEST,
                                "value must be a whole number from 0 to 1000",
                            )
                        }
                        Some(Ok(w)) => ask(agent, |tx| Command::Weight(addr, Some(w), tx)).await,
                        None => ask(agent, |tx| Command::Weight(addr, None, tx)).await,
                    }
                }
                other => {
                    return problem(StatusCode::NOT_FOUND, &format!("unknown action {other:?}"))
                }
            };
            match result {
                Some(Ok(())) => respond(StatusCode::OK, "application/json", "{\"ok\":true}".into()),
                Some(Err(e @ CommandError::UnknownBackend(_))) => {
                    problem(StatusCode::NOT_FOUND, &e.to_string())
                }
                Some(Err(e)) => problem(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()),
                None => gone(),
            }
        }
        _ => problem(
            StatusCode::NOT_FOUND,
            &format!("no route for {} {path}", req.method()),
        ),
    }
}

/// A minimal client for the CLI: one request, the status and body back.
pub async fn call(
    admin: std::net::SocketAddr,
    method: Method,
    path: &str,
) -> anyhow::Result<(StatusCode, String)> {
    call_with(admin, method, path, Bytes::new(), None).await
}

/// [`call`] with a JSON body.
pub async fn call_with(
    admin: std::net::SocketAddr,
    method: Method,
    path: &str,
    body: Bytes,
    token: Option<&sluice_util::admin::Token>,
) -> anyhow::Result<(StatusCode, String)> {
    let stream = TcpStream::connect(admin).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot reach the agent's admin API at {admin}: {e} (is `sluice-lb run` up?)"
        )
    })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, admin.to_string())
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, t.header_value());
    }
    let req = req.body(Full::new(body))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Fetches and parses `/status`.
pub async fn status(admin: std::net::SocketAddr) -> anyhow::Result<Status> {
    let (code, body) = call(admin, Method::GET, "/status").await?;
    anyhow::ensure!(code.is_success(), "status: {code}: {body}");
    Ok(serde_json::from_str(&body)?)
}

#[cfg(test)]
mod bounds {
    /// The agent's admin API holds at most 64 connections, and closes one that sends no
    /// whole head within 10 s, as the gateway's does.
    #[test]
    fn admin_connections_are_capped_and_timed() {
        // A runtime on a thread of its own, so that the test's blocking reads don't stall it.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (agent, commands) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            let _commands = commands;
            rt.block_on(super::serve(
                listener,
                agent,
                std::sync::Arc::new(Vec::new()),
                Default::default(),
            ));
        });
        sluice_e2e::http::assert_capped_and_timed(addr, b"GET /heal", || {});
    }
}
