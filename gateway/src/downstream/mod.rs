//! The client's side of a request: accepting connections within their limits, TLS, and
//! serving HTTP/1.1 and HTTP/2 on them with a deadline on every phase. Each request is handed
//! to the [`crate::pipeline`].

pub mod conn_state;
pub mod listener;
pub mod park;
pub mod parse_refusal;
pub mod refusal;
pub mod service;
pub mod tls;
pub mod watchdog;
