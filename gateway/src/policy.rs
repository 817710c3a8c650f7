//! Policies: the chain a request passes between routing and the upstream. Authentication,
//! authorization, rate limits and transforms plug in here, per route, in a configured order.
//! This generation of the gateway configures none, so every chain is empty.

use std::{collections::HashMap, net::IpAddr};

use hyper::{body::Incoming, Request, Response};

use crate::Body;

/// What a policy knows about the request besides the request itself.
pub struct Context<'a> {
    /// The real client address (the packet's source under DSR).
    pub client: IpAddr,
    /// Route name.
    pub route: &'a str,
    /// Path template parameters.
    pub params: &'a HashMap<String, String>,
}

/// A policy's answer in place of the upstream's (boxed: responses are large).
pub type Refusal = Box<Response<Body>>;

/// One step of the chain. `Err` answers the request in the policy's place.
pub trait Policy: Send + Sync {
    /// Inspects (and may refuse) a request.
    fn on_request(&self, req: &Request<Incoming>, ctx: &mut Context<'_>) -> Result<(), Refusal>;
}

/// A route's policies, run in order.
#[derive(Default)]
pub struct Chain {
    policies: Vec<Box<dyn Policy>>,
}

impl Chain {
    /// Runs every policy; the first refusal is the answer.
    pub fn on_request(
        &self,
        req: &Request<Incoming>,
        ctx: &mut Context<'_>,
    ) -> Result<(), Refusal> {
        for p in &self.policies {
            p.on_request(req, ctx)?;
        }
        Ok(())
    }
}
