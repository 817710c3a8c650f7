//! How a route reaches a pool's targets: pooled HTTP/1.1 connections ([`super::http1`]) or
//! one multiplexed HTTP/2 connection per target ([`super::http2`]).

use std::{sync::Arc, time::Duration};

use http_body_util::BodyExt as _;
use hyper::{header::HeaderValue, Request, Uri};

use super::{
    exchange::Answer,
    forwarding::Forwarding,
    http1::{ConnectionPool, SendError},
    http2::H2Target,
    pool::Pool,
};
use crate::{config::Timeouts, Body};

/// How one route reaches one pool's targets.
pub enum HttpClient {
    /// HTTP/1.1: pooled connections per target, indexed as [`Pool::targets`].
    Http1(Vec<Arc<ConnectionPool>>),
    /// HTTP/2: one multiplexed connection per target, indexed as [`Pool::targets`].
    Http2(Vec<Arc<H2Target>>),
}

impl HttpClient {
    /// Sends `req` (origin-form URI) to target `i` of `pool`. An HTTP/1.1 response body
    /// returns its connection to the pool once read to its end.
    pub async fn send(
        &self,
        pool: &Pool,
        i: usize,
        mut req: Request<Body>,
        forwarding: &Forwarding,
    ) -> Result<Answer, SendError> {
        let target = &pool.targets[i];
        match self {
            HttpClient::Http1(conns) => {
                if !req.headers().contains_key(hyper::header::HOST) {
                    if let Ok(v) = HeaderValue::from_str(&target.authority) {
                        req.headers_mut().insert(hyper::header::HOST, v);
                    }
                }
                let Some(c) = conns.get(i) else {
                    return Err(SendError::NoPool(target.addr));
                };
                c.send(req, forwarding).await
            }
            HttpClient::Http2(targets) => {
                let Some(h2) = targets.get(i) else {
                    return Err(SendError::NoPool(target.addr));
                };
                forwarding.apply(req.headers_mut());
                // One authority (RFC 9113 §8.3.1): `:authority` from the routed Host, and no
                // host field beside it; the target's address when the client sent none.
                let host = req.headers_mut().remove(hyper::header::HOST);
                let path = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/");
                let uri = |authority: &str| {
                    Uri::builder()
                        .scheme("http")
                        .authority(authority)
                        .path_and_query(path)
                        .build()
                        .ok()
                };
                if let Some(uri) = host
                    .as_ref()
                    .and_then(|h| h.to_str().ok())
                    .and_then(uri)
                    .or_else(|| uri(&target.authority))
                {
                    *req.uri_mut() = uri;
                }
                let resp = h2.send(req).await?;
                Ok(Answer {
                    response: resp.map(|b| b.map_err(Into::into).boxed()),
                    upgraded: None,
                })
            }
        }
    }
}

/// Builds a route's client for `pool`, with the route's connect and idle timeouts.
pub fn client(timeouts: &Timeouts, pool: &Pool) -> HttpClient {
    let connect = Duration::from_millis(timeouts.connect_ms);
    let idle = Duration::from_millis(timeouts.idle_ms);
    if !pool.http2 {
        return HttpClient::Http1(
            pool.targets
                .iter()
                .map(|t| ConnectionPool::new(t.addr, connect, idle))
                .collect(),
        );
    }
    HttpClient::Http2(
        pool.targets
            .iter()
            .map(|t| H2Target::new(t.addr, connect, idle))
            .collect(),
    )
}
