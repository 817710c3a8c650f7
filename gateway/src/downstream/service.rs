//! The per-connection service as the connection drivers ([`super::park`],
//! [`super::watchdog`]) see it, whatever builds it.

use hyper::{body::Incoming, Request};

/// What serves one client connection's requests: the gateway's per-connection service.
pub trait ConnService:
    hyper::service::Service<
        Request<Incoming>,
        Response = hyper::Response<crate::Body>,
        Future: Send + 'static,
        Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    > + Unpin
    + Send
    + 'static
{
}

impl<S> ConnService for S where
    S: hyper::service::Service<
            Request<Incoming>,
            Response = hyper::Response<crate::Body>,
            Future: Send + 'static,
            Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        > + Unpin
        + Send
        + 'static
{
}
