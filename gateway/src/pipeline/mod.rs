//! What happens to a request between its connection and its upstream: the host and path
//! rules, routing, the policy chain, forwarding with retries, and the gateway's own answers
//! as problem+json. Upstream connections are the [`crate::upstream`]'s business.

pub mod client_body;
pub mod path;
pub mod policy;
pub mod problem;
pub mod proxy;
pub mod router;
pub mod tunnel;
