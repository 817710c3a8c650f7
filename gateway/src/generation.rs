//! A config generation: the file read and checked as data ([`crate::config::load`]), then
//! built once into what serves requests. Every builder reports the field it refused, so a
//! bad regular expression, key file, certificate or Redis URL is named the same way as a
//! bad number, and what was built is what runs: nothing is parsed twice.

use std::{path::Path, sync::Arc};

use crate::{
    config::{self, ConfigError},
    downstream::tls,
    pipeline::Runtime,
};

/// A config, built.
pub struct Generation {
    /// The routes, pools and policies.
    pub runtime: Runtime,
    /// Each listener's TLS config, by listener index (`None`: plain).
    pub tls: Vec<Option<Arc<rustls::ServerConfig>>>,
}

/// Reads, checks and builds `path` as generation `number`. Pools, limits and issuers
/// whose config is unchanged are taken from `previous`, so their state carries over.
pub fn load(
    path: &Path,
    number: u64,
    previous: Option<&Runtime>,
) -> Result<Generation, ConfigError> {
    build(path, config::load(path)?, number, previous)
}

/// Builds `config`, read from `path` and checked as data, as generation `number` (see
/// [`load`]); refusals name `path`.
pub fn build(
    path: &Path,
    config: config::Config,
    number: u64,
    previous: Option<&Runtime>,
) -> Result<Generation, ConfigError> {
    let tls = config
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| {
            l.tls
                .as_ref()
                .map(|t| tls::server_config(t).map_err(|e| e.under(&format!("listener[{i}].tls"))))
                .transpose()
        })
        .collect::<Result<_, _>>()
        .map_err(|e| e.in_file(path))?;
    let runtime = Runtime::build(config, number, previous).map_err(|e| e.in_file(path))?;
    Ok(Generation { runtime, tls })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener and a pool; each case adds what it refuses.
    const BASE: &str = "[[listener]]\nname = \"http\"\naddress = \"127.0.0.1:8080\"\n\
                        [[upstream]]\nname = \"api\"\ntargets = [{ address = \"127.0.0.1:9001\" }]\n";

    /// What loading `BASE` plus `extra` from a file says, or `built`.
    fn load_text(extra: &str) -> String {
        let dir = std::env::temp_dir().join(format!(
            "sluice-generation-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("gw.toml");
        std::fs::write(&path, format!("{BASE}{extra}")).expect("write");
        let result = load(&path, 1, None);
        let _ = std::fs::remove_dir_all(&dir);
        match result {
            Ok(_) => "built".to_string(),
            Err(e) => {
                assert_eq!(e.file, path, "the refusal names the file");
                format!("{}: {}", e.field, e.reason)
            }
        }
    }

    #[test]
    fn what_builders_refuse_is_named_like_a_data_error() {
        let route = "[[route]]\nname = \"r\"\nupstream = \"api\"\n";
        for (extra, want) in [
            (
                format!("{route}path = {{ regex = \"([\" }}\n"),
                "route[0].path.regex: invalid regex",
            ),
            (
                format!("{route}request_transform = {{ set_headers = {{ \"a b\" = \"1\" }} }}\n"),
                "route[0].request_transform.headers: \"a b\" is not a header name",
            ),
            (
                format!("{route}response_transform = {{ json_remove = [\"a.\"] }}\n"),
                "route[0].response_transform.json: \"a.\" is not a dotted field path",
            ),
            (
                "[[route]]\nname = \"r\"\nredirect = { location = \"/x\\u0001\" }\n".to_string(),
                "route[0].redirect.location: not a valid header value",
            ),
            (
                format!("{route}headers = {{ \"x y\" = \"1\" }}\n"),
                "route[0].headers: \"x y\" is not a header name",
            ),
            (
                "[[upstream]]\nname = \"h\"\nbalance = { hash-header = \"a b\" }\ntargets = [{ address = \"127.0.0.1:1\" }]\n".to_string(),
                "upstream[1].balance: \"a b\" is not a header name",
            ),
            (
                "[[consumer]]\nid = \"c\"\napi_keys = [\"nothex\"]\n".to_string(),
                "consumer[0].api_keys: an API key is stored as its SHA-256",
            ),
            (
                "[client_ip]\ntrusted_proxies = [\"10.0.0.1/40\"]\n".to_string(),
                "client_ip.trusted_proxies: \"10.0.0.1/40\" is not an address or CIDR",
            ),
            (
                "[redis]\nurl = \"redis://a b:x\"\n".to_string(),
                "redis.url: not a valid Redis URL",
            ),
            (
                "[[jwt_issuer]]\nname = \"i\"\nissuer = \"https://i\"\nalgorithms = [\"RS256\"]\nkeys = [{ file = \"missing.pem\" }]\n".to_string(),
                "jwt_issuer[0].keys[0].file: ",
            ),
        ] {
            let said = load_text(&extra);
            assert!(said.starts_with(want), "{extra}\n  said {said}\n  wanted {want}");
        }
        assert_eq!(load_text(route), "built");
    }

    #[test]
    fn tls_files_are_checked_where_they_are_built() {
        let said = load_text(
            "[listener.tls]\ncertificates = [{ cert = \"nope.pem\", key = \"nope.key\" }]\n",
        );
        assert!(
            said.starts_with("listener[0].tls.certificates[0].cert: "),
            "{said}"
        );
    }
}
