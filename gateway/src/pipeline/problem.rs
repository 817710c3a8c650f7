//! RFC 9457 `application/problem+json` responses for every error the gateway makes itself.

pub use crate::full;
use hyper::{header, Response, StatusCode};

use crate::Body;

/// Marks a response the gateway made itself (response transforms leave those alone).
#[derive(Debug, Clone, Copy)]
pub struct GatewayMade;

/// The problem+json body for `status` and a human-readable `detail`.
pub fn problem_json(status: StatusCode, detail: &str) -> String {
    serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    })
    .to_string()
}

/// A problem response with `status` and a human-readable `detail`.
pub fn problem(status: StatusCode, detail: &str) -> Response<Body> {
    let body = problem_json(status, detail);
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.extensions_mut().insert(GatewayMade);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/problem+json"),
    );
    r
}
