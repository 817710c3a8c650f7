//! What the pipeline's phases know about a request besides the request itself: the
//! connection it came on, a routed request's facts, and the concurrency slots it holds.

use std::{net::IpAddr, net::SocketAddr, time::Duration};

use hyper::header::HeaderValue;

use super::{path::PathRules, policy};

/// Facts about the connection a request came on.
#[derive(Clone, Copy, Debug)]
pub struct Conn {
    /// Client address: the packet's source, which DSR keeps as the real client.
    pub peer: SocketAddr,
    /// Whether it came over TLS.
    pub tls: bool,
    /// Largest request body accepted.
    pub max_body: u64,
    /// How long a request body may send nothing.
    pub body_idle: Duration,
    /// Most request header fields (hyper holds HTTP/1.1 heads to it; HTTP/2 ones are
    /// counted in the pipeline).
    pub max_headers: usize,
    /// How request paths are normalized.
    pub paths: PathRules,
    /// How long an upgraded connection's tunnel may carry nothing.
    pub tunnel_idle: Duration,
    /// What becomes of request fields named with an underscore.
    pub underscores: crate::config::Underscores,
}

/// What the later phases know about a routed request besides the request itself.
#[derive(Clone, Copy)]
pub struct Facts<'a> {
    /// The connection it came on.
    pub conn: Conn,
    /// The client address policies see.
    pub client: IpAddr,
    /// The routed host (lowercase, no port).
    pub host: &'a str,
    /// The request id, the client's or one made for it.
    pub request_id: &'a HeaderValue,
}

/// A request's concurrency slots, shared by its response body and an upgraded tunnel.
pub struct Held(pub Vec<policy::limit::Slot>);
