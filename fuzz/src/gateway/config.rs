//! The gateway's config file: TOML to a built generation.

use std::path::Path;

use crate::common::check_refusal;
use hyper::HeaderMap;
use sluice_gateway::{config, generation, pipeline::router::RequestView};

/// Target `gateway_config`: a config file's text through everything `sluice-gateway check`,
/// start-up and a reload do with it (`config::parse`, then `generation::build`: TLS, the
/// router, transforms, limits, issuers, pools).
///
/// Invariants beyond "no panic":
/// - a refusal names the file and the field: `line N` (a line of the file) for a syntax or
///   type error, else a field path such as `route[2].path.regex`, with a reason;
/// - a config that built also builds as a reload over its own generation (which shares
///   its pools, limits and issuers), and a built generation routes a request.
pub fn gateway_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.toml");
    let _runtime = super::runtime().enter();
    let parsed = config::parse(path, text);
    let built = parsed
        .clone()
        .and_then(|c| generation::build(path, c, 1, None));
    match built {
        Err(e) => check_refusal(&e, path, text),
        Ok(g) => {
            // A reload of the same file over it (sharing its pools, limits and issuers).
            let c = parsed.expect("built from it");
            if let Err(e) = generation::build(path, c, 2, Some(&g.runtime)) {
                panic!("a config that built is refused on reload over itself: {e}");
            }
            let headers = HeaderMap::new();
            let _ = g.runtime.router.find(&RequestView {
                host: "example.com",
                path: "/",
                method: "GET",
                headers: &headers,
                query: "",
            });
        }
    }
}
