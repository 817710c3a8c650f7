//! Authentication (API keys, JWT, Basic) and authorization (scopes, groups, claims).
//!
//! API keys are kept only as SHA-256 hashes and every stored hash is compared, in constant
//! time, with the presented key's hash: neither the match nor its position leaks through
//! timing. Basic-auth passwords are verified with argon2 or bcrypt off the async threads
//! (they are deliberately slow), and an unknown user costs a verification too.

use std::{collections::HashMap, sync::Arc};

use base64::Engine;
use hyper::{
    header::{self, HeaderName, HeaderValue},
    http::request::Parts,
    StatusCode,
};
use sluice_util::FieldError;
use subtle::ConstantTimeEq;

use super::{jwt, refuse, Identity, Refusal};
use crate::{
    config::{policy::AuthMethod, Consumer, RouteAuth, RouteAuthorize},
    shield::Fault,
};

/// A bcrypt hash of a random password, verified for an unknown user name when no Basic
/// credential is configured to stand in.
const DUMMY_BCRYPT: &str = "$2b$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy";

/// Password verifications at once: argon2 and bcrypt are deliberately slow, and a flood of
/// Basic attempts must queue rather than take every core.
const PASSWORD_CHECKS: usize = 2;

/// Every consumer, indexed by credential.
pub struct Consumers {
    /// The config they came from.
    pub config: Vec<Consumer>,
    key_hashes: Vec<([u8; 32], usize)>,
    users: HashMap<String, usize>,
    subjects: HashMap<String, usize>,
    checks: Arc<tokio::sync::Semaphore>,
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.strip_prefix("sha256:").unwrap_or(s);
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Default for Consumers {
    fn default() -> Self {
        Consumers {
            config: Vec::new(),
            key_hashes: Vec::new(),
            users: HashMap::new(),
            subjects: HashMap::new(),
            checks: Arc::new(tokio::sync::Semaphore::new(PASSWORD_CHECKS)),
        }
    }
}

impl Consumers {
    /// Indexes the consumers; a stored API key that is not a SHA-256 in hex is refused as
    /// `consumer[i].api_keys`.
    pub fn build(list: &[Consumer]) -> Result<Self, FieldError> {
        let mut c = Consumers {
            config: list.to_vec(),
            key_hashes: Vec::new(),
            users: HashMap::new(),
            subjects: HashMap::new(),
            checks: Arc::new(tokio::sync::Semaphore::new(PASSWORD_CHECKS)),
        };
        for (i, con) in list.iter().enumerate() {
            for k in &con.api_keys {
                let hash = hex32(k).ok_or_else(|| {
                    FieldError::new(
                        format!("consumer[{i}].api_keys"),
                        "an API key is stored as its SHA-256: 64 hex digits (sha256: prefix optional)",
                    )
                })?;
                c.key_hashes.push((hash, i));
            }
            if let Some(b) = &con.basic {
                c.users.insert(b.username.clone(), i);
            }
            for s in &con.jwt_subjects {
                c.subjects.insert(s.clone(), i);
            }
        }
        Ok(c)
    }

    fn identity(&self, i: usize) -> Option<Identity> {
        let c = self.config.get(i)?;
        Some(Identity {
            consumer: Arc::from(c.id.as_str()),
            groups: c.groups.clone(),
            ..Default::default()
        })
    }

    /// The consumer holding this API key. Every stored hash is compared.
    pub fn by_api_key(&self, key: &[u8]) -> Option<Identity> {
        let presented = ring::digest::digest(&ring::digest::SHA256, key);
        let mut found = usize::MAX;
        for (hash, i) in &self.key_hashes {
            let hit = hash.ct_eq(presented.as_ref());
            // Branch-free select keeps the position of a match out of the timing.
            found = usize::conditional_select(&found, i, hit);
        }
        (found != usize::MAX)
            .then(|| self.identity(found))
            .flatten()
    }

    /// The consumer with this user name and password.
    pub async fn by_password(self: &Arc<Self>, user: String, password: String) -> Option<Identity> {
        let permit = self.checks.clone().acquire_owned().await.ok()?;
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let i = me.users.get(&user).copied();
            // An unknown user is checked against a configured user's hash (same algorithm
            // and cost, so the same time); the result is thrown away.
            let stand_in = || {
                me.config
                    .iter()
                    .find_map(|c| c.basic.as_ref())
                    .map(|b| b.hash.as_str())
                    .unwrap_or(DUMMY_BCRYPT)
            };
            let hash = i
                .and_then(|i| me.config.get(i))
                .and_then(|c| c.basic.as_ref())
                .map(|b| b.hash.as_str())
                .unwrap_or_else(stand_in);
            let ok = verify_password(hash, &password);
            i.filter(|_| ok).and_then(|i| me.identity(i))
        })
        .await
        .ok()
        .flatten()
    }

    /// The consumer a token's subject names for this issuer, if one is configured.
    pub fn by_subject(&self, issuer: &str, subject: &str) -> Option<Identity> {
        self.subjects
            .get(&format!("{issuer}:{subject}"))
            .and_then(|i| self.identity(*i))
    }
}

trait Select {
    fn conditional_select(a: &Self, b: &Self, choice: subtle::Choice) -> Self;
}

impl Select for usize {
    fn conditional_select(a: &usize, b: &usize, choice: subtle::Choice) -> usize {
        let mask = (choice.unwrap_u8() as usize).wrapping_neg();
        (a & !mask) | (b & mask)
    }
}

fn verify_password(hash: &str, password: &str) -> bool {
    if hash.starts_with("$argon2") {
        use argon2::PasswordVerifier;
        argon2::PasswordHash::new(hash)
            .map(|h| {
                argon2::Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false)
    } else {
        bcrypt::verify(password, hash).unwrap_or(false)
    }
}

/// A realm that can stand in a quoted-string of a challenge as it is.
fn realm_ok(realm: &str) -> bool {
    realm
        .chars()
        .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ')
}

/// A route's authentication step.
pub struct Authenticator {
    methods: Vec<AuthMethod>,
    key_header: HeaderName,
    key_query: Option<String>,
    issuers: Vec<Arc<jwt::Issuer>>,
    challenge: HeaderValue,
    consumers: Arc<Consumers>,
    tokens: jwt::TokenCache,
}

impl Authenticator {
    /// Builds a route's authentication step; refusals name fields of its `auth`.
    pub fn build(
        cfg: &RouteAuth,
        consumers: Arc<Consumers>,
        issuers: &HashMap<String, Arc<jwt::Issuer>>,
    ) -> Result<Self, FieldError> {
        let mut chosen: Vec<Arc<jwt::Issuer>> = if cfg.jwt_issuers.is_empty() {
            issuers.values().cloned().collect()
        } else {
            cfg.jwt_issuers
                .iter()
                .map(|n| {
                    issuers.get(n).cloned().ok_or_else(|| {
                        FieldError::new("jwt_issuers", format!("no issuer named {n:?}"))
                    })
                })
                .collect::<Result<_, _>>()?
        };
        chosen.sort_by(|a, b| a.config.name.cmp(&b.config.name));
        let challenge = cfg
            .methods
            .iter()
            .map(|m| match m {
                AuthMethod::Jwt => format!("Bearer realm=\"{}\"", cfg.realm),
                AuthMethod::Basic => format!("Basic realm=\"{}\", charset=\"UTF-8\"", cfg.realm),
                AuthMethod::ApiKey => format!("ApiKey realm=\"{}\"", cfg.realm),
            })
            .collect::<Vec<_>>()
            .join(", ");
        Ok(Authenticator {
            methods: cfg.methods.clone(),
            key_header: HeaderName::from_bytes(cfg.api_key_header.as_bytes()).map_err(|_| {
                FieldError::new(
                    "api_key_header",
                    format!("{:?} is not a header name", cfg.api_key_header),
                )
            })?,
            key_query: cfg.api_key_query.clone(),
            issuers: chosen,
            challenge: realm_ok(&cfg.realm)
                .then(|| HeaderValue::from_str(&challenge).ok())
                .flatten()
                .ok_or_else(|| FieldError::new("realm", "printable ASCII without quotes"))?,
            consumers,
            tokens: jwt::TokenCache::default(),
        })
    }

    /// Removes the API key from the request, from its header and its query parameter.
    fn remove_key(&self, parts: &mut Parts) {
        parts.headers.remove(&self.key_header);
        if let Some(q) = &self.key_query {
            if let Some(uri) = super::transform::without_query_param(&parts.uri, q) {
                parts.uri = uri;
            }
        }
    }

    /// After another method admitted the request: an API key this route would have checked,
    /// had it come first, is not passed on unchecked (an upstream trusting that the gateway
    /// checks this route's keys must never get one it did not).
    fn remove_unchecked_key(&self, parts: &mut Parts) {
        if self.methods.contains(&AuthMethod::ApiKey) {
            self.remove_key(parts);
        }
    }

    /// Whether one of the route's methods takes its credential from `Authorization`.
    fn reads_authorization(&self) -> bool {
        self.methods
            .iter()
            .any(|m| matches!(m, AuthMethod::Basic | AuthMethod::Jwt))
    }

    fn unauthorized(&self, detail: &str) -> Refusal {
        let mut r = refuse(StatusCode::UNAUTHORIZED, detail);
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, self.challenge.clone());
        r
    }

    /// The identity of the request. The first method whose credential is present decides;
    /// a request with none is refused.
    pub async fn authenticate(&self, parts: &mut Parts) -> Result<Arc<Identity>, Refusal> {
        // The credentials of `Authorization: <name> <credentials>`, borrowed from the request
        // as bytes: a token is long, and a cached one needs no further check.
        fn scheme<'h>(headers: &'h hyper::HeaderMap, name: &str) -> Option<&'h [u8]> {
            let a = headers.get(header::AUTHORIZATION)?.as_bytes();
            let space = a.iter().position(|&b| b == b' ')?;
            let (s, rest) = a.split_at(space);
            s.eq_ignore_ascii_case(name.as_bytes())
                .then(|| rest.trim_ascii())
        }
        // Credentials as text: visible ASCII, spaces and tabs only (what `to_str` allows).
        fn text(b: &[u8]) -> Option<&str> {
            b.iter()
                .all(|c| c.is_ascii_graphic() || *c == b' ' || *c == b'\t')
                .then(|| std::str::from_utf8(b).ok())
                .flatten()
        }
        for m in &self.methods {
            match m {
                AuthMethod::ApiKey => {
                    let from_header = parts
                        .headers
                        .get(&self.key_header)
                        .map(|v| v.as_bytes().to_vec());
                    let query = parts.uri.query().unwrap_or("");
                    let (from_query, twice) = {
                        let mut keys = self
                            .key_query
                            .as_deref()
                            .map(|q| crate::pipeline::router::query_values(query, q))
                            .into_iter()
                            .flatten();
                        let first = keys.next().map(crate::pipeline::router::form_decode);
                        (first, keys.next().is_some())
                    };
                    // Which copy an upstream reads differs (the first, the last): two keys
                    // are refused, so none passes for one the gateway checked.
                    if twice {
                        return Err(self.unauthorized("the API key is given more than once"));
                    }
                    let Some(key) = from_header.or(from_query) else {
                        continue;
                    };
                    let who = self
                        .consumers
                        .by_api_key(&key)
                        .ok_or_else(|| self.unauthorized("the API key is not valid"))?;
                    // The key is not the upstream's business, wherever it was.
                    self.remove_key(parts);
                    // Nor is a credential this route would have checked, had the key not
                    // come first: an upstream trusting that the gateway checks the
                    // `Authorization` of this route must never get one it did not.
                    if self.reads_authorization() {
                        parts.headers.remove(header::AUTHORIZATION);
                    }
                    return Ok(Arc::new(who));
                }
                AuthMethod::Basic => {
                    let Some(cred) = scheme(&parts.headers, "basic").and_then(text) else {
                        continue;
                    };
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(cred.as_bytes())
                        .ok()
                        .and_then(|b| String::from_utf8(b).ok());
                    let Some((user, pass)) = decoded.as_deref().and_then(|d| d.split_once(':'))
                    else {
                        return Err(self.unauthorized("malformed Basic credentials"));
                    };
                    let who = self
                        .consumers
                        .by_password(user.to_string(), pass.to_string())
                        .await
                        .map(Arc::new)
                        .ok_or_else(|| self.unauthorized("user name or password is wrong"))?;
                    self.remove_unchecked_key(parts);
                    return Ok(who);
                }
                AuthMethod::Jwt => {
                    let Some(raw) = scheme(&parts.headers, "bearer") else {
                        continue;
                    };
                    if let Some(who) = self.tokens.get(raw, &self.issuers) {
                        self.remove_unchecked_key(parts);
                        return Ok(who);
                    }
                    let Some(token) = text(raw) else {
                        continue;
                    };
                    let who = jwt::verify(&self.issuers, token, &self.consumers, &self.tokens)
                        .await
                        .map_err(|why| {
                            let mut r = self.unauthorized(&format!("token refused: {why}"));
                            if why.is_server_side() {
                                r.extensions_mut().insert(Fault::NotClient);
                            }
                            r
                        })?;
                    self.remove_unchecked_key(parts);
                    return Ok(who);
                }
            }
        }
        Err(self.unauthorized("credentials are required"))
    }
}

/// Checks a route's requirements against the identity; 403 when one fails.
pub fn authorize(rule: &RouteAuthorize, who: Option<&Identity>) -> Result<(), Refusal> {
    let Some(who) = who else {
        return Err(refuse(StatusCode::FORBIDDEN, "no authenticated consumer"));
    };
    if let Some(missing) = rule.scopes.iter().find(|s| !who.scopes.contains(s)) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            &format!("scope {missing:?} is required"),
        ));
    }
    if !rule.groups.is_empty() && !rule.groups.iter().any(|g| who.groups.contains(g)) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            &format!("membership of one of {:?} is required", rule.groups),
        ));
    }
    for (claim, want) in &rule.claims {
        let got = who.claims.as_ref().and_then(|c| c.get(claim));
        let ok = match got {
            Some(serde_json::Value::String(s)) => s == want,
            Some(serde_json::Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(want)),
            // Numbers and booleans compare by their JSON text (`tier = "3"` matches 3).
            Some(other) => {
                let text = other.to_string();
                text == *want
            }
            None => false,
        };
        if !ok {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                &format!("claim {claim:?} must be {want:?}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_match_by_hash_only() {
        let hash = ring::digest::digest(&ring::digest::SHA256, b"s3cret");
        let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        let c = Consumers::build(&[
            Consumer {
                id: "other".into(),
                groups: vec![],
                api_keys: vec![format!("sha256:{}", "0".repeat(64))],
                basic: None,
                jwt_subjects: vec![],
            },
            Consumer {
                id: "alice".into(),
                groups: vec!["ops".into()],
                api_keys: vec![hex],
                basic: None,
                jwt_subjects: vec![],
            },
        ])
        .expect("valid keys");
        assert_eq!(&*c.by_api_key(b"s3cret").unwrap().consumer, "alice");
        assert!(c.by_api_key(b"s3cre").is_none());
        assert!(c.by_api_key(b"").is_none());
    }

    #[test]
    fn a_key_that_is_not_a_sha256_is_refused_by_field() {
        let bad = Consumer {
            id: "c".into(),
            groups: vec![],
            api_keys: vec!["xyz".into()],
            basic: None,
            jwt_subjects: vec![],
        };
        let refused = Consumers::build(&[bad]).err().map(|e| e.field);
        assert_eq!(refused.as_deref(), Some("consumer[0].api_keys"));
    }
}
