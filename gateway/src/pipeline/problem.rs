//! RFC 9457 `application/problem+json` responses for every error the gateway makes itself.

use bytes::Bytes;
use http_body_util::BodyExt;

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

/// Why a body could not be collected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollectError {
    /// Over the cap.
    TooLarge,
    /// The peer broke off or sent garbage.
    Broken,
    /// The client sent nothing for its listener's `body_read_timeout_ms`.
    Stalled,
}

/// Reads a whole body of at most `max` bytes. (A plain loop rather than `Limited` over a
/// boxed body, which trips the compiler's higher-ranked lifetime inference in async code.)
pub async fn collect_capped(mut body: Body, max: usize) -> Result<Bytes, CollectError> {
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            if e.is::<crate::pipeline::client_body::TooLarge>() {
                CollectError::TooLarge
            } else if e.is::<crate::pipeline::client_body::Stalled>() {
                CollectError::Stalled
            } else {
                CollectError::Broken
            }
        })?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > max {
                return Err(CollectError::TooLarge);
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}
