//! TLS: rustls server configs built from a listener's files, one certificate per SNI name,
//! TLS 1.2 and 1.3 only, ALPN h2 and http/1.1, optional client-certificate verification.
//! Configs are rebuilt when the files change and swapped in for new connections.

use std::{collections::HashMap, path::Path, sync::Arc};

use rustls::{
    crypto::ring::{default_provider, sign::any_supported_type},
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
    RootCertStore, ServerConfig,
};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

use sluice_util::FieldError;

use crate::config::Tls;

/// A TLS setting that cannot be used, named below the listener's `tls`.
fn err(field: String, reason: impl std::fmt::Display) -> FieldError {
    FieldError::new(field, reason.to_string())
}

/// Picks the certificate for the name a client asked for.
#[derive(Debug)]
struct BySni {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// (suffix with leading dot, key), longest suffix first.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name().map(str::to_ascii_lowercase) else {
            return Some(self.default.clone());
        };
        if let Some(k) = self.exact.get(&name) {
            return Some(k.clone());
        }
        for (suffix, k) in &self.wildcard {
            if name.ends_with(suffix.as_str()) && !name[..name.len() - suffix.len()].contains('.') {
                return Some(k.clone());
            }
        }
        Some(self.default.clone())
    }
}

fn certified_key(cert: &Path, key: &Path, at: &str) -> Result<Arc<CertifiedKey>, FieldError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| err(format!("{at}.cert"), format!("{}: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(format!("{at}.cert"), format!("{}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(err(
            format!("{at}.cert"),
            format!("{}: no certificate in the file", cert.display()),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| err(format!("{at}.key"), format!("{}: {e}", key.display())))?;
    let signing = any_supported_type(&key).map_err(|e| err(format!("{at}.key"), e))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| {
        err(
            format!("{at}.key"),
            format!("does not match the certificate: {e}"),
        )
    })?;
    Ok(Arc::new(ck))
}

/// Builds the server config for a listener's TLS settings.
pub fn server_config(tls: &Tls) -> Result<Arc<ServerConfig>, FieldError> {
    let mut exact = HashMap::new();
    let mut wildcard = Vec::new();
    let mut default = None;
    for (i, c) in tls.certificates.iter().enumerate() {
        let k = certified_key(&c.cert, &c.key, &format!("certificates[{i}]"))?;
        default.get_or_insert_with(|| k.clone());
        for n in &c.server_names {
            let n = n.to_ascii_lowercase();
            match n.strip_prefix('*') {
                Some(suffix) => wildcard.push((suffix.to_string(), k.clone())),
                None => {
                    exact.insert(n, k.clone());
                }
            }
        }
    }
    wildcard.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
    let default = default.ok_or_else(|| {
        err(
            "certificates".into(),
            "at least one certificate is required",
        )
    })?;
    let provider = Arc::new(default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| err("-".into(), e))?;
    let builder = match &tls.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(ca)
                .map_err(|e| err("client_ca".into(), format!("{}: {e}", ca.display())))?;
            for c in certs {
                let c = c.map_err(|e| err("client_ca".into(), format!("{}: {e}", ca.display())))?;
                roots.add(c).map_err(|e| err("client_ca".into(), e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| err("client_ca".into(), e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(BySni {
        exact,
        wildcard,
        default,
    }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The files a listener's TLS depends on, to watch for changes.
pub fn files(tls: &Tls) -> Vec<std::path::PathBuf> {
    let mut f: Vec<_> = tls
        .certificates
        .iter()
        .flat_map(|c| [c.cert.clone(), c.key.clone()])
        .collect();
    f.extend(tls.client_ca.clone());
    f
}
