//! The access log: one JSON line per request through `tracing` (target `access`), with the
//! fields the config lists.

use std::time::Duration;

use hyper::{body::Incoming, header, Request};

use super::target::host_of;

/// The request facts of one access-log line.
pub struct AccessLine {
    client: std::net::IpAddr,
    method: String,
    host: String,
    path: String,
    user_agent: String,
}

impl AccessLine {
    /// What the line needs from the request, taken before it is served.
    pub fn new(req: &Request<Incoming>, client: std::net::IpAddr) -> Self {
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
    pub fn emit(
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
