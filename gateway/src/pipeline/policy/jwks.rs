//! Key-set documents (RFC 7517): fetching one from a URL, and reading the public keys in it.

use std::sync::Arc;

use jsonwebtoken::{
    jwk::{AlgorithmParameters, JwkSet},
    DecodingKey,
};

use super::jwt::{Family, Key};

const FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
const MAX_JWKS: usize = 1 << 20;

/// Why a key set could not be had; the last good set stays in force.
#[derive(Debug, thiserror::Error)]
pub enum KeySetError {
    /// The URL gave no whole answer in time.
    #[error("{url}: no answer within {FETCH_TIMEOUT:?}")]
    Timeout {
        /// The URL.
        url: String,
    },
    /// Fetching failed: the URL, the connection, TLS, HTTP or the body.
    #[error("{url}: {source}")]
    Fetch {
        /// The URL.
        url: String,
        /// Cause.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The answer was not a success.
    #[error("{url}: status {status}")]
    Status {
        /// The URL.
        url: String,
        /// What it answered.
        status: hyper::StatusCode,
    },
    /// The file could not be read.
    #[error("{0}")]
    File(#[from] std::io::Error),
    /// The document is not a JWKS.
    #[error("not a JWKS: {0}")]
    NotJwks(#[from] serde_json::Error),
}

/// The public keys of a JWKS document. Shared secrets (`oct`) are never taken from one, and
/// a key that does not load is skipped.
pub(super) fn parse_jwks(text: &[u8]) -> Result<Vec<Key>, KeySetError> {
    // A key set is a JSON object (RFC 7517 §5): serde alone would also read an array as the
    // set's fields in order, and take `[[]]` as an empty set (found by the jwks fuzz target).
    let doc: serde_json::Value = serde_json::from_slice(text)?;
    if !doc.is_object() {
        return Err(KeySetError::NotJwks(serde::de::Error::custom(
            "a key set is a JSON object",
        )));
    }
    let set: JwkSet = serde_json::from_value(doc)?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Family::Rsa,
            AlgorithmParameters::EllipticCurve(_) => Family::Ec,
            AlgorithmParameters::OctetKeyPair(_) => Family::Ed,
            // Shared secrets are never taken from a key set.
            AlgorithmParameters::OctetKey(_) => continue,
        };
        if let Ok(key) = DecodingKey::from_jwk(jwk) {
            keys.push(Key {
                kid: jwk.common.key_id.clone(),
                family,
                key,
            });
        }
    }
    Ok(keys)
}

/// What [`parse_jwks`] takes from a document, as `(kid, family)`: for the fuzz target
/// (`crate::fuzzing`), which cannot see [`Key`].
pub(crate) fn key_summary(text: &[u8]) -> Result<Vec<(Option<String>, &'static str)>, KeySetError> {
    Ok(parse_jwks(text)?
        .into_iter()
        .map(|k| {
            let family = match k.family {
                Family::Rsa => "RSA",
                Family::Ec => "EC",
                Family::Ed => "Ed25519",
                Family::Hmac => "HMAC",
            };
            (k.kid, family)
        })
        .collect())
}

/// GET `url` (http or https; https trusts the system's CA bundle), body at most 1 MiB.
pub async fn fetch(url: &str) -> Result<Vec<u8>, KeySetError> {
    let failed = |source: Box<dyn std::error::Error + Send + Sync>| KeySetError::Fetch {
        url: url.to_string(),
        source,
    };
    match tokio::time::timeout(FETCH_TIMEOUT, fetch_inner(url)).await {
        Err(_) => Err(KeySetError::Timeout {
            url: url.to_string(),
        }),
        Ok(Ok(Ok(body))) => Ok(body),
        Ok(Ok(Err(status))) => Err(KeySetError::Status {
            url: url.to_string(),
            status,
        }),
        Ok(Err(e)) => Err(failed(e)),
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of a success, or the status of anything else.
async fn fetch_inner(url: &str) -> Result<Result<Vec<u8>, hyper::StatusCode>, BoxError> {
    use http_body_util::{BodyExt, Empty, Limited};
    use hyper_util::rt::TokioIo;
    let uri: hyper::Uri = url.parse()?;
    let host = uri.host().ok_or("the URL has no host")?.to_string();
    let tls = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port)).await?;
    let req = hyper::Request::get(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .header(
            hyper::header::HOST,
            uri.authority().map(|a| a.as_str()).unwrap_or(&host),
        )
        .body(Empty::<bytes::Bytes>::new())?;
    macro_rules! exchange {
        ($io:expr) => {{
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new($io)).await?;
            tokio::spawn(conn);
            let resp = send.send_request(req).await?;
            if !resp.status().is_success() {
                return Ok(Err(resp.status()));
            }
            Limited::new(resp.into_body(), MAX_JWKS)
                .collect()
                .await
                .map(|c| Ok(c.to_bytes().to_vec()))
        }};
    }
    if tls {
        let mut roots = rustls::RootCertStore::empty();
        use rustls_pki_types::pem::PemObject;
        for cert in
            rustls_pki_types::CertificateDer::pem_file_iter("/etc/ssl/certs/ca-certificates.crt")?
                .flatten()
        {
            let _ = roots.add(cert);
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from(host.clone())?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        exchange!(stream)
    } else {
        exchange!(tcp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key set is an object: an array is refused, not read as an empty set (found by the
    /// jwks fuzz target: `fuzz/regressions/jwks/`).
    #[test]
    fn a_key_set_is_an_object() {
        for bad in [
            &b"[[]]"[..],
            b"[[{\"kty\": \"oct\", \"k\": \"AA\"}]]",
            b"null",
            b"{}",
        ] {
            assert!(parse_jwks(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(parse_jwks(b"{\"keys\": []}").is_ok_and(|k| k.is_empty()));
    }
}
