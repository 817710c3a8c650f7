//! Gateway configs for tests, written as a table of what matters: upstreams and routes,
//! with anything special appended verbatim.
//!
//! ```ignore
//! let cfg = GatewayToml::new()              // [admin] and [[listener]] "main", as `config` does
//!     .upstream("api", &[up.addr])           // [[upstream]] with those targets
//!     .with("http2 = true")                  // more keys for the table just written
//!     .route("api", "/api", "api")           // [[route]] name, path prefix, upstream
//!     .raw("[[rate_limit]]\nname = \"l\"")   // anything else, appended as it is
//!     .build();
//! ```
//!
//! Everything is written in call order, so `.with()` lines belong to the table just written
//! (the listener right after `new()`, else the last upstream or route), and a `.raw()`
//! `[route.request_transform]` to the last route.

use std::net::SocketAddr;

/// A gateway config under construction; [`GatewayToml::build`] gives its text.
#[derive(Clone, Debug)]
pub struct GatewayToml(String);

impl GatewayToml {
    /// Admin on port 0 and one listener `main` on port 0, with the limits of
    /// [`super::config`] (max_body_bytes = 1024, header_read_timeout_ms = 500, …).
    pub fn new() -> GatewayToml {
        GatewayToml(super::config(""))
    }

    /// Nothing at all: for a test that writes its own `[admin]` and `[[listener]]` with
    /// [`GatewayToml::raw`], or for a fragment of a config.
    pub fn empty() -> GatewayToml {
        GatewayToml(String::new())
    }

    /// `[[upstream]]` `name` with these targets.
    pub fn upstream(self, name: &str, targets: &[SocketAddr]) -> GatewayToml {
        let targets: Vec<String> = targets
            .iter()
            .map(|a| format!("{{ address = \"{a}\" }}"))
            .collect();
        self.table(&format!(
            "[[upstream]]\nname = \"{name}\"\ntargets = [{}]",
            targets.join(", ")
        ))
    }

    /// `[[route]]` `name` for paths under `prefix`, to `upstream`.
    pub fn route(self, name: &str, prefix: &str, upstream: &str) -> GatewayToml {
        self.table(&format!(
            "[[route]]\nname = \"{name}\"\npath = {{ prefix = \"{prefix}\" }}\nupstream = \"{upstream}\""
        ))
    }

    /// `[[route]]` `name` with no path match, to `upstream`: every request, unless
    /// `.with()` narrows it (a host, methods).
    pub fn route_all(self, name: &str, upstream: &str) -> GatewayToml {
        self.table(&format!(
            "[[route]]\nname = \"{name}\"\nupstream = \"{upstream}\""
        ))
    }

    /// More lines for the table just written.
    pub fn with(mut self, lines: &str) -> GatewayToml {
        self.0.push_str(lines);
        self.0.push('\n');
        self
    }

    /// `toml` as it is, after a blank line: sections of its own (policies, consumers, …).
    pub fn raw(self, toml: &str) -> GatewayToml {
        self.table(toml)
    }

    /// The config text.
    pub fn build(self) -> String {
        self.0
    }

    fn table(mut self, toml: &str) -> GatewayToml {
        if !self.0.is_empty() && !self.0.ends_with("\n\n") {
            self.0.push('\n');
        }
        self.0.push_str(toml);
        if !toml.ends_with('\n') {
            self.0.push('\n');
        }
        self
    }
}

impl Default for GatewayToml {
    fn default() -> GatewayToml {
        GatewayToml::new()
    }
}
