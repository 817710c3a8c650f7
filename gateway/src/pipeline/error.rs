//! The errors the gateway answers itself, and the one place they become problem+json.
//!
//! Each kind knows its status and whether a failed attempt may go to another target, so the
//! proxy's retry loop asks the error rather than re-deriving the cause.

use hyper::{header, http::HeaderValue, Method, Response, StatusCode};

use super::{client_body::BodyFault, headers::FieldRefusal, path::PathError, problem::problem};
use crate::Body;

/// Why the gateway answered a request itself.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The Host (or `:authority`) breaks RFC 9112 §3.2 / RFC 9113 §8.3.1.
    #[error("{0}")]
    BadHost(&'static str),
    /// The path cannot be normalized, or is refused by the listener's path rules.
    #[error("{0}")]
    BadPath(#[from] PathError),
    /// No route matches.
    #[error("no route for {method} {path}")]
    NoRoute {
        /// Method.
        method: Method,
        /// Normalized path.
        path: String,
    },
    /// The declared body length is over the listener's limit.
    #[error("body of {declared} bytes is over the limit of {max}")]
    DeclaredTooLarge {
        /// `Content-Length`.
        declared: u64,
        /// `max_body_bytes`.
        max: u64,
    },
    /// The body, as it streamed, went over the limit.
    #[error("request body over the limit")]
    BodyTooLarge,
    /// The client's body broke off or its framing was wrong.
    #[error("request body could not be read")]
    BodyUnreadable,
    /// The bodies the gateway reads whole already hold the process's budget.
    #[error("the gateway is holding as many whole bodies as it may; try again")]
    OverBudget,
    /// More request header fields than the listener's `max_headers`.
    #[error("more than {0} header fields")]
    TooManyFields(usize),
    /// The client sent nothing of its body for the listener's `body_read_timeout_ms`.
    #[error("no request body arrived within the listener's body_read_timeout_ms")]
    BodyStalled,
    /// The request cannot be written to an upstream.
    #[error("the request target cannot be forwarded")]
    NotForwardable,
    /// The route has no pool (its splits all weigh 0).
    #[error("the route has no upstream")]
    NoUpstream,
    /// The pool is at `max_concurrent_requests`.
    #[error("upstream {pool} is at its concurrency limit")]
    PoolFull {
        /// Pool name.
        pool: String,
    },
    /// Every target of the pool is unhealthy, ejected or already tried.
    #[error("upstream {pool} has no target")]
    NoTarget {
        /// Pool name.
        pool: String,
    },
    /// No connection could be opened: nothing was sent.
    #[error("upstream {pool}: connection failed")]
    Connect {
        /// Pool name.
        pool: String,
    },
    /// The exchange failed after the request (or part of it) was sent.
    #[error("upstream {pool}: exchange failed")]
    Exchange {
        /// Pool name.
        pool: String,
    },
    /// No response head within the route's `request_ms`.
    #[error("upstream {pool} did not answer within {ms} ms")]
    Timeout {
        /// Pool name.
        pool: String,
        /// `timeouts.request_ms`.
        ms: u64,
    },
    /// The upstream answered 101 to a request that did not ask to switch protocols, or
    /// switched to another protocol than the one asked for.
    #[error("the upstream switched protocols unasked")]
    UnaskedSwitch,
    /// The request's header fields would be read one way here and another upstream.
    #[error("{0}")]
    BadField(#[from] FieldRefusal),
    /// A response transform could not read the upstream's JSON body whole (over its cap,
    /// or broken off).
    #[error("the upstream's JSON body is over the transform's size cap or broke off")]
    ResponseBodyUnreadable,
}

/// Whether a failed attempt may be sent to another target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Nothing reached the target: another may take the request (budget allowing).
    Elsewhere,
    /// The target may have acted on it, or the fault is the client's: answer now.
    Never,
}

impl ProxyError {
    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        use ProxyError::*;
        match self {
            BadHost(_) | BadPath(_) | BodyUnreadable | NotForwardable => StatusCode::BAD_REQUEST,
            BadField(FieldRefusal::UnknownCoding) => StatusCode::NOT_IMPLEMENTED,
            BadField(_) => StatusCode::BAD_REQUEST,
            BodyStalled => StatusCode::REQUEST_TIMEOUT,
            TooManyFields(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            NoRoute { .. } => StatusCode::NOT_FOUND,
            DeclaredTooLarge { .. } | BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            NoUpstream | PoolFull { .. } | NoTarget { .. } | OverBudget => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Connect { .. } | Exchange { .. } | UnaskedSwitch | ResponseBodyUnreadable => {
                StatusCode::BAD_GATEWAY
            }
            Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Whether the attempt that failed this way may be repeated on another target.
    pub fn retry(&self) -> Retry {
        match self {
            ProxyError::Connect { .. } => Retry::Elsewhere,
            _ => Retry::Never,
        }
    }

    /// The error a failed client body stands for.
    pub fn of_body(fault: Option<BodyFault>) -> Self {
        match fault {
            Some(BodyFault::TooLarge) => ProxyError::BodyTooLarge,
            Some(BodyFault::Stalled) => ProxyError::BodyStalled,
            _ => ProxyError::BodyUnreadable,
        }
    }

    /// The problem+json answer.
    pub fn into_response(self) -> Response<Body> {
        let mut r = problem(self.status(), &self.to_string());
        if let ProxyError::PoolFull { .. } | ProxyError::OverBudget = self {
            // The pool, or the budget, frees up as requests finish: worth a retry soon.
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_retries() {
        let pool = || "api".to_string();
        for (e, status, retry) in [
            (ProxyError::BadHost("x"), 400, Retry::Never),
            (ProxyError::BadPath(PathError::AboveRoot), 400, Retry::Never),
            (ProxyError::BodyTooLarge, 413, Retry::Never),
            (
                ProxyError::BadField(FieldRefusal::UnknownCoding),
                501,
                Retry::Never,
            ),
            (
                ProxyError::BadField(FieldRefusal::TwoCredentials),
                400,
                Retry::Never,
            ),
            (ProxyError::PoolFull { pool: pool() }, 503, Retry::Never),
            (ProxyError::Connect { pool: pool() }, 502, Retry::Elsewhere),
            (ProxyError::Exchange { pool: pool() }, 502, Retry::Never),
            (
                ProxyError::Timeout {
                    pool: pool(),
                    ms: 5,
                },
                504,
                Retry::Never,
            ),
        ] {
            assert_eq!(e.status().as_u16(), status, "{e}");
            assert_eq!(e.retry(), retry, "{e}");
        }
        let full = ProxyError::PoolFull { pool: pool() }.into_response();
        assert_eq!(full.headers()[header::RETRY_AFTER], "1");
        assert_eq!(
            full.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }
}
