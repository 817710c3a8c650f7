//! The upstream side of a request: pools of weighted targets and how one is picked
//! ([`pool`]), their health checks ([`health`]), and the clients that talk to them
//! ([`mod@client`]): pooled HTTP/1.1 connections driven by a plain HTTP/1 client ([`http1`],
//! [`exchange`]) or multiplexed HTTP/2 ([`http2`]). [`forwarding`] makes the headers this
//! hop adds.

pub mod client;
pub mod exchange;
pub mod forwarding;
pub mod health;
pub mod http1;
pub mod http2;
pub mod pool;

pub use client::{client, HttpClient};
pub use pool::{HashInput, Outcome, Pool, PoolSlot, TargetState};
