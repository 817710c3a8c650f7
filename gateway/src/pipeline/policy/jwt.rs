//! JWT verification with `jsonwebtoken` (ring underneath, as for rustls).
//!
//! An issuer accepts only the algorithms it lists. HMAC keys come only from `hmac_secrets`
//! files and public keys only from PEM files or a JWKS, and a key is used only for its own
//! family, so neither `alg: none` (not even parsed) nor an HMAC signature keyed with a public
//! key can verify. A JWKS URL is fetched in the background on an interval, and at once (at
//! most once a second) when a token names an unknown `kid`; a failed fetch keeps the last
//! good set.

use std::{
    collections::HashMap,
    hash::BuildHasherDefault,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, Weak,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;
use base64::Engine;
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use sluice_util::FieldError;

use super::{
    auth::Consumers,
    jwks::{self, parse_jwks, KeySetError},
    Identity,
};
use crate::config::JwtIssuer;

/// Least time between two fetches caused by unknown `kid`s.
const MIN_REFETCH: Duration = Duration::from_secs(1);

/// Why a bearer token was refused: the `detail` of its 401.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The header is not JSON or names an algorithm the library does not know.
    #[error("unsupported algorithm or malformed header")]
    UnsupportedHeader,
    /// Not a compact JWS.
    #[error("malformed token")]
    Malformed,
    /// RFC 7515 §4.1.11: `crit` lists extensions, and none is understood here.
    #[error("the token's header has critical extensions (crit) or is malformed")]
    Critical,
    /// No `iss` to pick the issuer by.
    #[error("the token has no iss claim")]
    NoIssuerClaim,
    /// `iss` names no issuer of the route.
    #[error("wrong issuer")]
    WrongIssuer,
    /// The issuer does not list the token's algorithm.
    #[error("algorithm {0:?} is not allowed for this issuer")]
    AlgorithmNotAllowed(Algorithm),
    /// No key of the issuer verifies the signature.
    #[error("bad signature")]
    BadSignature,
    /// The `kid` is in no key set, even a freshly fetched one.
    #[error("no key with kid {0:?}")]
    UnknownKid(String),
    /// The issuer has no key for the algorithm's family.
    #[error("no key for the algorithm")]
    NoKey,
    /// `exp` has passed (beyond the leeway).
    #[error("expired")]
    Expired,
    /// `nbf` is still ahead.
    #[error("not yet valid (nbf)")]
    NotYetValid,
    /// `aud` names none of the issuer's audiences.
    #[error("wrong audience")]
    WrongAudience,
    /// A claim the issuer needs is absent.
    #[error("claim {0:?} is missing")]
    MissingClaim(String),
    /// `iat` is there but not a number.
    #[error("iat is not a number")]
    IatNotNumber,
    /// `nbf` is there but not a number.
    #[error("nbf is not a number")]
    NbfNotNumber,
    /// `iat` is ahead of now (beyond the leeway).
    #[error("issued in the future (iat)")]
    IssuedInFuture,
    /// Any other failure the JWT library reports.
    #[error("{0:?}")]
    Invalid(ErrorKind),
}

impl TokenError {
    /// Whether the refusal may be the gateway's doing rather than the client's: it had no
    /// key to check the token with. An unknown `kid` is what every client sees while the
    /// issuer's key set cannot be fetched or has not caught up with a rotation, and no key
    /// for the algorithm what every client sees while a key set is still empty. The
    /// shield does not hold those against the client (it cannot tell them from a forged
    /// `kid`, and blocking every token holder at L4 is the worse mistake); a bad signature
    /// against a key the gateway has, or refused claims, it does.
    pub fn is_server_side(&self) -> bool {
        matches!(self, TokenError::UnknownKid(_) | TokenError::NoKey)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Family {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

fn family(a: Algorithm) -> Family {
    use Algorithm::*;
    match a {
        HS256 | HS384 | HS512 => Family::Hmac,
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Family::Rsa,
        ES256 | ES384 => Family::Ec,
        EdDSA => Family::Ed,
    }
}

/// Most tokens remembered as verified, per route.
const CACHE_ENTRIES: usize = 10_000;

/// A verified token: its identity and the times that bound its validity.
struct Verified {
    token: Box<str>,
    issuer: usize,
    keys_generation: u64,
    exp: u64,
    nbf: Option<u64>,
    identity: Arc<Identity>,
}

/// Tokens whose signature has been verified, so that a client presenting the same token
/// again costs a hash lookup instead of a signature check (RSA-2048 verification takes
/// about as long as proxying the request). Entries are checked again for `exp`/`nbf` on
/// every use and die with a change of their issuer's key set.
///
/// Entries are found by a hash of the token's last 32 bytes (its signature, which differs
/// between any two tokens) and then compared whole: hashing the whole token would cost more
/// than the rest of the lookup.
#[derive(Default)]
pub struct TokenCache(Mutex<HashMap<u64, Arc<Verified>, BuildHasherDefault<Keyed>>>);

/// The map's hasher passes its key through: the key is already a keyed hash
/// ([`tail_hash`]), so hashing it again would only cost.
#[derive(Default)]
pub struct Keyed(u64);

impl std::hash::Hasher for Keyed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; anything else is folded in rather than lost.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

fn tail_hash(token: &[u8]) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static KEYS: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    let mut h = KEYS.get_or_init(Default::default).build_hasher();
    h.write(&token[token.len().saturating_sub(32)..]);
    h.finish()
}

impl TokenCache {
    /// The identity of a token verified before and still fresh. Takes the token's bytes as
    /// they came: a token found here was valid UTF-8 when it was verified.
    pub fn get(&self, token: &[u8], issuers: &[Arc<Issuer>]) -> Option<Arc<Identity>> {
        let v = self.0.lock().ok()?.get(&tail_hash(token)).cloned()?;
        if v.token.as_bytes() != token {
            return None;
        }
        let issuer = issuers.get(v.issuer)?;
        let now = now();
        let leeway = issuer.config.leeway_s;
        let fresh = issuer.keys_generation.load(Ordering::Relaxed) == v.keys_generation
            && now <= v.exp.saturating_add(leeway)
            && v.nbf.is_none_or(|n| n <= now + leeway);
        fresh.then(|| v.identity.clone())
    }

    fn put(&self, token: &str, v: Verified) {
        let Ok(mut m) = self.0.lock() else { return };
        if m.len() >= CACHE_ENTRIES {
            let now = now();
            m.retain(|_, e| e.exp > now);
            if m.len() >= CACHE_ENTRIES {
                m.clear();
            }
        }
        m.insert(tail_hash(token.as_bytes()), Arc::new(v));
    }
}

/// What one set of keys made of a token.
enum Attempt {
    Verified(Map<String, Value>),
    /// Signed right, refused for its claims: final.
    Refused(TokenError),
    /// No key of the set verified the signature.
    BadSignature,
    /// The set had no key for the token's algorithm and kid.
    NoKey,
}

pub(super) struct Key {
    pub(super) kid: Option<String>,
    pub(super) family: Family,
    pub(super) key: DecodingKey,
}

/// One configured issuer with its keys.
pub struct Issuer {
    /// Its config.
    pub config: JwtIssuer,
    algorithms: Vec<Algorithm>,
    fixed: Vec<Key>,
    jwks: ArcSwap<Vec<Key>>,
    jwks_file: Option<PathBuf>,
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    /// Bumped whenever the key set is replaced; verified tokens of older sets are not trusted.
    keys_generation: AtomicU64,
    /// Digest of the key-set document in force.
    last_document: tokio::sync::Mutex<Option<Vec<u8>>>,
    /// Its key-set refresh has been started (see [`Issuer::start`]).
    started: std::sync::atomic::AtomicBool,
}

fn read(field: &str, path: &Path) -> Result<Vec<u8>, FieldError> {
    std::fs::read(path).map_err(|e| FieldError::new(field, format!("{}: {e}", path.display())))
}

fn pem_key(pem: &[u8]) -> Option<(Family, DecodingKey)> {
    DecodingKey::from_rsa_pem(pem)
        .map(|k| (Family::Rsa, k))
        .or_else(|_| DecodingKey::from_ec_pem(pem).map(|k| (Family::Ec, k)))
        .or_else(|_| DecodingKey::from_ed_pem(pem).map(|k| (Family::Ed, k)))
        .ok()
}

impl Issuer {
    /// Starts the background refresh of the issuer's key set, if it has one and it is not
    /// refreshed yet. Called once a generation is accepted, so a refused config fetches
    /// nothing.
    pub fn start(self: &Arc<Self>) {
        let has_set = self.config.jwks_url.is_some() || self.jwks_file.is_some();
        if !has_set || self.started.swap(true, Ordering::Relaxed) {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(refresh_loop(Arc::downgrade(self)));
        }
    }

    /// Builds an issuer, reading its key files; nothing runs until [`Issuer::start`].
    /// Refusals name fields of the `[[jwt_issuer]]`.
    pub fn load(config: JwtIssuer) -> Result<Issuer, FieldError> {
        let mut algorithms = Vec::new();
        for a in &config.algorithms {
            let alg: Algorithm = a
                .parse()
                .map_err(|_| FieldError::new("algorithms", format!("{a:?} is not supported")))?;
            algorithms.push(alg);
        }
        let mut fixed = Vec::new();
        for (i, k) in config.keys.iter().enumerate() {
            let field = format!("keys[{i}].file");
            let pem = read(&field, Path::new(&k.file))?;
            let (family, key) = pem_key(&pem).ok_or_else(|| {
                FieldError::new(&field, "not an RSA, EC or Ed25519 public key in PEM")
            })?;
            fixed.push(Key {
                kid: k.kid.clone(),
                family,
                key,
            });
        }
        for (i, k) in config.hmac_secrets.iter().enumerate() {
            let field = format!("hmac_secrets[{i}].file");
            let mut secret = read(&field, Path::new(&k.file))?;
            if secret.last() == Some(&b'\n') {
                secret.pop();
            }
            if secret.starts_with(b"-----BEGIN") {
                return Err(FieldError::new(
                    field,
                    "is a PEM key: a public key must never be an HMAC secret",
                ));
            }
            if secret.len() < 32 {
                return Err(FieldError::new(
                    field,
                    "an HMAC secret needs at least 32 bytes",
                ));
            }
            fixed.push(Key {
                kid: k.kid.clone(),
                family: Family::Hmac,
                key: DecodingKey::from_secret(&secret),
            });
        }
        let jwks_file = config.jwks_file.as_ref().map(PathBuf::from);
        let initial = match &jwks_file {
            Some(p) => parse_jwks(&read("jwks_file", p)?)
                .map_err(|e| FieldError::new("jwks_file", e.to_string()))?,
            None => Vec::new(),
        };
        Ok(Issuer {
            algorithms,
            fixed,
            jwks: ArcSwap::from_pointee(initial),
            jwks_file,
            last_fetch: tokio::sync::Mutex::new(None),
            keys_generation: AtomicU64::new(0),
            last_document: tokio::sync::Mutex::new(None),
            started: std::sync::atomic::AtomicBool::new(false),
            config,
        })
    }

    /// Fetches the key set (URL, else file) and keeps it if it parses.
    async fn refresh(&self) {
        let got = match (&self.config.jwks_url, &self.jwks_file) {
            (Some(url), _) => jwks::fetch(url).await,
            (None, Some(p)) => tokio::fs::read(p).await.map_err(KeySetError::from),
            (None, None) => return,
        };
        let parsed = got.and_then(|body| parse_jwks(&body).map(|keys| (body, keys)));
        match parsed {
            Ok((body, keys)) => {
                // Only a changed document replaces the keys (and forgets verified tokens):
                // refetches provoked by unknown kids must not empty the token cache.
                let digest = ring::digest::digest(&ring::digest::SHA256, &body);
                let mut last = self.last_document.lock().await;
                if last.as_deref() == Some(digest.as_ref()) {
                    return;
                }
                *last = Some(digest.as_ref().to_vec());
                tracing::debug!(issuer = %self.config.name, keys = keys.len(), "key set replaced");
                self.jwks.store(Arc::new(keys));
                self.keys_generation.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(issuer = %self.config.name, error = %e, "key set refresh failed; the last good set stays")
            }
        }
    }

    /// Refreshes now unless that happened less than [`MIN_REFETCH`] ago.
    async fn refresh_soon(&self) {
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|t| t.elapsed() < MIN_REFETCH) {
            return;
        }
        *last = Some(Instant::now());
        self.refresh().await;
    }

    fn try_keys(&self, token: &str, alg: Algorithm, kid: Option<&str>, keys: &[Key]) -> Attempt {
        let mut validation = Validation::new(alg);
        validation.algorithms = vec![alg];
        validation.leeway = self.config.leeway_s;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.config.issuer]);
        if self.config.audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&self.config.audiences);
            // jsonwebtoken checks `aud` only when it is there and parses: without this, a
            // token with no `aud`, or one that is not a string or strings, would pass an
            // issuer that names its audiences (found by the jwt fuzz target).
            validation.set_required_spec_claims(&["exp", "aud"]);
        }
        let mut tried = false;
        for k in keys.iter().filter(|k| k.family == family(alg)) {
            if kid.is_some() && k.kid.as_deref() != kid {
                continue;
            }
            match jsonwebtoken::decode::<Map<String, Value>>(token, &k.key, &validation) {
                Ok(data) => return Attempt::Verified(data.claims),
                Err(e) => {
                    let why = match e.kind() {
                        ErrorKind::InvalidSignature => TokenError::BadSignature,
                        ErrorKind::ExpiredSignature => TokenError::Expired,
                        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
                        ErrorKind::InvalidAudience => TokenError::WrongAudience,
                        ErrorKind::MissingRequiredClaim(c) => TokenError::MissingClaim(c.clone()),
                        other => TokenError::Invalid(other.clone()),
                    };
                    // A signature failure may just be the wrong key; any other failure
                    // (claims are checked only once the signature holds) is final.
                    if !matches!(e.kind(), ErrorKind::InvalidSignature) {
                        return Attempt::Refused(why);
                    }
                    tried = true;
                }
            }
        }
        if tried {
            Attempt::BadSignature
        } else {
            Attempt::NoKey
        }
    }

    /// Verifies `token` with this issuer's keys.
    async fn verify(
        &self,
        token: &str,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<Map<String, Value>, TokenError> {
        if !self.algorithms.contains(&alg) {
            return Err(TokenError::AlgorithmNotAllowed(alg));
        }
        // Fixed keys, then the key set, then (for an unknown kid) a fresh key set.
        let mut bad_signature = false;
        let mut outcome = |a: Attempt| match a {
            Attempt::Verified(c) => Some(Ok(c)),
            Attempt::Refused(why) => Some(Err(why)),
            Attempt::BadSignature => {
                bad_signature = true;
                None
            }
            Attempt::NoKey => None,
        };
        if let Some(r) = outcome(self.try_keys(token, alg, kid, &self.fixed)) {
            return r;
        }
        if let Some(r) = outcome(self.try_keys(token, alg, kid, &self.jwks.load())) {
            return r;
        }
        let known_kid = kid.is_some_and(|k| {
            self.fixed
                .iter()
                .chain(self.jwks.load().iter())
                .any(|key| key.kid.as_deref() == Some(k))
        });
        if kid.is_some()
            && !known_kid
            && (self.config.jwks_url.is_some() || self.jwks_file.is_some())
        {
            // Boxed: the fetch's future is kilobytes, and unboxed it would be part of every
            // request's future on every route with policies; it runs only for a new kid.
            Box::pin(self.refresh_soon()).await;
            if let Some(r) = outcome(self.try_keys(token, alg, kid, &self.jwks.load())) {
                return r;
            }
        }
        Err(match kid {
            _ if bad_signature => TokenError::BadSignature,
            Some(k) => TokenError::UnknownKid(k.to_string()),
            None => TokenError::NoKey,
        })
    }
}

async fn refresh_loop(issuer: Weak<Issuer>) {
    loop {
        let every = {
            let Some(i) = issuer.upgrade() else { return };
            // Held through the fetch: a request with an unknown kid meanwhile waits for this
            // fetch instead of being refused.
            let mut last = i.last_fetch.lock().await;
            *last = Some(Instant::now());
            i.refresh().await;
            drop(last);
            Duration::from_millis(i.config.jwks_refresh_ms)
        };
        tokio::time::sleep(every).await;
    }
}

/// Segment `n` of a compact JWS (0: header, 1: payload) as a JSON object, unverified.
fn unverified_segment(token: &str, n: usize) -> Option<Map<String, Value>> {
    let segment = token.split('.').nth(n)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The unverified payload (only to pick the issuer; everything is verified after).
fn unverified_claims(token: &str) -> Option<Map<String, Value>> {
    unverified_segment(token, 1)
}

/// `nbf` and `iat`, when present, are numbers not ahead of `now` beyond the leeway, compared
/// as the JSON numbers they are. jsonwebtoken reads `nbf` only as a `u64` and skips one it
/// cannot (a string, or a number beyond 2^64 such as `1e20`: both found by the jwt fuzz
/// target), and does not read `iat` at all.
fn not_ahead(claims: &Map<String, Value>, now: u64, leeway: u64) -> Result<(), TokenError> {
    let horizon = now.saturating_add(leeway) as f64;
    for (name, not_number, ahead) in [
        ("nbf", TokenError::NbfNotNumber, TokenError::NotYetValid),
        ("iat", TokenError::IatNotNumber, TokenError::IssuedInFuture),
    ] {
        if let Some(v) = claims.get(name) {
            if v.as_f64().ok_or(not_number)? > horizon {
                return Err(ahead);
            }
        }
    }
    Ok(())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Verifies a bearer token against the route's issuers and maps its claims to an identity,
/// which `cache` keeps while the token holds. The caller looks in the cache first
/// ([`TokenCache::get`], on the header's bytes): this always verifies.
pub async fn verify(
    issuers: &[Arc<Issuer>],
    token: &str,
    consumers: &Consumers,
    cache: &TokenCache,
) -> Result<Arc<Identity>, TokenError> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
        ErrorKind::Json(_) | ErrorKind::InvalidAlgorithmName => TokenError::UnsupportedHeader,
        _ => TokenError::Malformed,
    })?;
    // RFC 7515 §4.1.11: a `crit` header lists extensions the verifier must understand, and
    // this one understands none, so any `crit` (even an empty or malformed one) is refused.
    // `jku`, `x5u`, `jwk` and `x5c` are never read: keys come only from the issuer's config.
    if unverified_segment(token, 0).is_none_or(|h| h.contains_key("crit")) {
        return Err(TokenError::Critical);
    }
    let iss = unverified_claims(token)
        .and_then(|c| c.get("iss").and_then(Value::as_str).map(str::to_string))
        .ok_or(TokenError::NoIssuerClaim)?;
    let (index, issuer) = issuers
        .iter()
        .enumerate()
        .find(|(_, i)| i.config.issuer == iss)
        .ok_or(TokenError::WrongIssuer)?;
    let keys_generation = issuer.keys_generation.load(Ordering::Relaxed);
    let claims = issuer
        .verify(token, header.alg, header.kid.as_deref())
        .await?;
    not_ahead(&claims, now(), issuer.config.leeway_s)?;
    let subject = claims
        .get(&issuer.config.consumer_claim)
        .and_then(Value::as_str)
        .ok_or_else(|| TokenError::MissingClaim(issuer.config.consumer_claim.clone()))?;
    let issuer_name = issuer.config.name.as_str();
    let mut id = consumers
        .by_subject(issuer_name, subject)
        .unwrap_or_else(|| Identity {
            // Qualified by the issuer: another issuer's subject of the same name is not the
            // same consumer (nor a configured one).
            consumer: Arc::from(format!("{issuer_name}:{subject}").as_str()),
            ..Default::default()
        });
    id.scopes = match claims.get("scope").or_else(|| claims.get("scp")) {
        Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    if let Some(Value::Array(groups)) = claims.get("groups") {
        id.groups
            .extend(groups.iter().filter_map(|g| g.as_str().map(str::to_string)));
    }
    // Fractional dates are allowed (RFC 7519 §2); `as` saturates, and a negative one is 0.
    let exp = claims
        .get("exp")
        .and_then(Value::as_f64)
        .map_or(0, |e| e as u64);
    let nbf = claims.get("nbf").and_then(Value::as_f64).map(|n| n as u64);
    id.claims = Some(Arc::new(claims));
    let id = Arc::new(id);
    cache.put(
        token,
        Verified {
            token: token.into(),
            issuer: index,
            keys_generation,
            exp,
            nbf,
            identity: id.clone(),
        },
    );
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"a test secret of at least thirty-two bytes";

    /// An HS256 issuer with audience `api`, its secret in a file.
    fn issuer() -> Arc<Issuer> {
        let dir = std::env::temp_dir().join(format!(
            "sluice-jwt-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let secret = dir.join("secret");
        std::fs::write(&secret, SECRET).expect("write");
        let config: JwtIssuer = toml::from_str(&format!(
            "name = \"i\"\nissuer = \"https://i.test\"\naudiences = [\"api\"]\n\
             algorithms = [\"HS256\"]\nhmac_secrets = [{{ file = {secret:?} }}]\n"
        ))
        .expect("issuer");
        let issuer = Issuer::load(config).expect("loads");
        let _ = std::fs::remove_dir_all(&dir);
        Arc::new(issuer)
    }

    fn check(claims: serde_json::Value) -> Result<Arc<Identity>, TokenError> {
        let token = encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .expect("signs");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(verify(
            &[issuer()],
            &token,
            &Consumers::default(),
            &TokenCache::default(),
        ))
    }

    /// Claims jsonwebtoken checks only when they parse are refused when they do not, and
    /// dates beyond its `u64` are compared too (found by the jwt fuzz target:
    /// `fuzz/regressions/jwt/`).
    #[test]
    fn malformed_aud_and_nbf_are_refused() {
        let exp = now() + 3600;
        let base = json!({"iss": "https://i.test", "sub": "s", "exp": exp, "aud": "api"});
        assert!(check(base.clone()).is_ok());
        assert!(check(
            json!({"iss": "https://i.test", "sub": "s", "exp": exp, "aud": ["x", "api"]})
        )
        .is_ok());
        for (field, value) in [
            ("aud", json!(null)),
            ("aud", json!(5)),
            ("aud", json!(["api", 5])),
            ("nbf", json!("soon")),
            ("nbf", json!(null)),
            ("nbf", json!(1e20)),
            ("nbf", json!(exp + 3600)),
            ("iat", json!(1e20)),
            ("iat", json!("then")),
        ] {
            let mut claims = base.clone();
            claims[field] = value.clone();
            let refused = check(claims).err().map(|e| e.to_string());
            assert!(refused.is_some(), "{field} = {value} accepted");
        }
        let mut no_aud = base.clone();
        no_aud.as_object_mut().expect("object").remove("aud");
        assert_eq!(
            check(no_aud).err().map(|e| e.to_string()).as_deref(),
            Some("claim \"aud\" is missing")
        );
        for past in [json!(-5), json!(1.5), json!((now() - 10) as f64)] {
            let mut claims = base.clone();
            claims["nbf"] = past.clone();
            claims["iat"] = past.clone();
            assert!(
                check(claims).is_ok(),
                "nbf and iat = {past} are in the past"
            );
        }
    }
}
