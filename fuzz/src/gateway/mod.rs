//! Checks of the gateway's parsers of outside input, one public function per fuzz target.
//! Each takes the fuzzer's bytes, panics when an invariant breaks, and says in its comment
//! what it holds beyond "no panic".

mod config;
mod jwt;
mod request;
mod router;
mod transform;
mod wire;

use std::sync::OnceLock;

use crate::common::Check;

pub use config::gateway_config;
pub use jwt::{jwks, jwt};
pub use request::{forwarded, host_target, path};
pub use router::router;
pub use transform::json_transform;
pub use wire::{chunked_body, response_head};

/// Every gateway target by name, for the replay tests.
pub const TARGETS: &[(&str, Check)] = &[
    ("response_head", response_head),
    ("chunked_body", chunked_body),
    ("path", path),
    ("host_target", host_target),
    ("forwarded", forwarded),
    ("gateway_config", gateway_config),
    ("jwt", jwt),
    ("jwks", jwks),
    ("json_transform", json_transform),
    ("router", router),
];

/// One runtime per process for what is async (token verification, body transforms).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}
