//! `sluice-gateway`: the L7 API gateway of every gateway node.
//!
//! Laid out by side of the request, with arrows one way: [`downstream`] (accepting
//! connections within their limits, TLS, a deadline on every phase) → [`pipeline`] (host and
//! path rules, routing, the policy chain, forwarding with retries, the gateway's own answers)
//! → [`upstream`] (pools and balancing, health checks, the HTTP/1 and HTTP/2 clients). A
//! config file is plain data ([`config`]), built once into a [`generation`]; [`server`] runs
//! the listeners (on one thread per [`worker`]), the admin API, reloads and shutdown; [`metrics`] and [`analytics`] count,
//! and [`shield`] counts the gateway's refusals per client to offer abusers to the L4 tier.
#![deny(missing_docs)]

/// The value for the `&str` key `$key` in the map `$map` (keyed by `String` or `Arc<str>`),
/// inserted with its default on first use. A counter for a label seen before costs one
/// lookup, where `entry` would need an owned key, an allocation, every time. A macro: a
/// function returning the `get_mut` borrow is refused by today's borrow checker.
macro_rules! counted {
    ($map:expr, $key:expr) => {
        match $map.get_mut($key) {
            Some(v) => v,
            None => $map.entry($key.into()).or_default(),
        }
    };
}

pub mod analytics;
pub mod clock;
pub mod config;
pub mod downstream;
#[doc(hidden)]
pub mod fuzzing;
pub mod generation;
pub mod load;
pub mod metrics;
pub mod pipeline;
pub mod server;
pub mod shield;
pub mod upstream;
pub mod worker;

/// The body type of every response the gateway produces.
pub type Body =
    http_body_util::combinators::BoxBody<bytes::Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A body from bytes.
pub fn full(b: impl Into<bytes::Bytes>) -> Body {
    use http_body_util::BodyExt as _;
    http_body_util::Full::new(b.into())
        .map_err(|never| match never {})
        .boxed()
}
