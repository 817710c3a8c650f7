//! What `sluice-lb` and `sluice-gateway` share outside the data plane's map layouts (those
//! live in `sluice-common`, which the eBPF program also compiles):
//!
//! - [`admin`]: who may change state through an admin API (a token, or loopback);
//! - [`accept`]: accept loops that pause when out of descriptors, and the admin listeners'
//!   bounds;
//! - [`config`]: the one error type for a refused config file, naming the file, the field
//!   path and the reason, with TOML syntax errors located by line;
//! - [`dashboard`]: the live dashboard pages' shared assets, history and admin guard;
//! - [`control`]: the signals and config-file changes that reload or stop a daemon;
//! - [`load`]: a gateway's load report, as written on `/readyz` and read by the L4 agent;
//! - [`probe`]: the one HTTP health probe, used by the L4 agent on its gateways and by the
//!   gateway on its upstream targets;
//! - [`shield`]: the block candidates a gateway offers and the L4 agent pulls.
#![deny(missing_docs)]

pub mod accept;
pub mod admin;
pub mod config;
pub mod control;
pub mod dashboard;
pub mod load;
pub mod probe;
pub mod shield;

pub use config::{ConfigError, FieldError};
