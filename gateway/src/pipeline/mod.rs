//! What happens to a request between its connection and its upstream: the host and path
//! rules, routing, the policy chain, forwarding with retries, and the gateway's own answers
//! as problem+json. Upstream connections are the [`crate::upstream`]'s business.
//!
//! A request's way through: [`serve`] (prepare → route → admit → respond) →
//! [`forward`] (pick → admit → attempt → classify and retry → respond), with [`error`]
//! mapping every refusal the gateway makes itself to problem+json. A config generation is
//! built once into a [`runtime::Runtime`].

pub mod access_log;
pub mod client_body;
pub mod error;
pub mod facts;
pub mod forward;
pub mod headers;
pub mod path;
pub mod policy;
pub mod problem;
pub mod router;
pub mod runtime;
pub mod serve;
pub mod target;
pub mod tunnel;
pub mod upstream_body;
pub mod whole_body;

pub use facts::Conn;
pub use runtime::Runtime;
pub use serve::handle;
