//! Bearer tokens and key sets.

use std::{
    path::PathBuf,
    sync::{Arc, OnceLock},
    time::{SystemTime, UNIX_EPOCH},
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use ring::{
    hmac,
    rand::SystemRandom,
    signature::{self, EcdsaKeyPair, KeyPair},
};
use serde_json::{json, Map, Value};
use sluice_gateway::{
    config::JwtIssuer,
    fuzzing::jwks_keys,
    pipeline::policy::{
        auth::Consumers,
        jwt::{verify, Issuer, TokenCache},
    },
};

use crate::common::Input;

/// The issuer every token is checked against.
const ISSUER: &str = "https://a.test";
/// Its audience.
const AUDIENCE: &str = "api";
/// Its clock leeway, in seconds.
const LEEWAY: i64 = 30;
/// The HMAC secret's `kid`, and the EC key's.
const HMAC_KID: &str = "h1";
const EC_KID: &str = "e1";
const SECRET: &[u8] = b"sluice fuzzing secret, 40 bytes long!!!!";
/// A fixed P-256 key (PKCS#8), so that saved inputs replay alike.
const EC_PKCS8: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgmSuq1wfvPw4eKSMTBm2i7l1QSyPXZ0+bXlUyMsOC+hGhRANCAAQjeXRUh6ja/FM0cljYGA7MavEG+bIkO3lmgPYy40icFTOZtb1fE4B9wLOhQlUwjbuBCfbDaeuGz7Smv6CBnzDu";

/// The keys and the route's issuers, made once per process: issuer `a` takes HS256 (the
/// secret, from a file) and ES256 (the EC key, from a JWKS file); issuer `b` allows only
/// RS256 and has no key.
struct Setup {
    ec: EcdsaKeyPair,
    issuers: Vec<Arc<Issuer>>,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let der = base64::engine::general_purpose::STANDARD
            .decode(EC_PKCS8)
            .expect("the fixed key is base64");
        let ec = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &der,
            &SystemRandom::new(),
        )
        .expect("the fixed key is a P-256 key");
        let point = ec.public_key().as_ref();
        let jwks = json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": EC_KID, "use": "sig", "alg": "ES256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        }]});
        let dir = std::env::temp_dir().join(format!("sluice-fuzz-jwt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let file = |name: &str, bytes: &[u8]| -> PathBuf {
            let p = dir.join(name);
            std::fs::write(&p, bytes).expect("a temporary file");
            p
        };
        let secret = file("secret", SECRET);
        let jwks = file("jwks.json", jwks.to_string().as_bytes());
        let a: JwtIssuer = toml::from_str(&format!(
            "name = \"a\"\nissuer = \"{ISSUER}\"\naudiences = [\"{AUDIENCE}\"]\n\
             algorithms = [\"HS256\", \"ES256\"]\nleeway_s = {LEEWAY}\n\
             hmac_secrets = [{{ file = {secret:?}, kid = \"{HMAC_KID}\" }}]\n\
             jwks_file = {jwks:?}\n"
        ))
        .expect("issuer a");
        let b: JwtIssuer =
            toml::from_str("name = \"b\"\nissuer = \"https://b.test\"\nalgorithms = [\"RS256\"]\n")
                .expect("issuer b");
        let issuers = [a, b]
            .into_iter()
            .map(|c| {
                Issuer::load(c)
                    .map(Arc::new)
                    .expect("the fixed issuers load")
            })
            .collect();
        // The issuers have read their files (nothing here starts a refresh that would read
        // them again), so the directory goes now rather than outliving the fuzzer.
        let _ = std::fs::remove_dir_all(&dir);
        Setup { ec, issuers }
    })
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// How a token is signed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Signer {
    /// HMAC-SHA256 with the issuer's secret.
    Hmac,
    /// ECDSA P-256 with the key in the issuer's key set.
    Ec,
    /// HMAC-SHA256 keyed with the EC *public* key (algorithm confusion).
    HmacWithPublicKey,
    /// No signature.
    Unsigned,
    /// The secret's HMAC with its first byte changed.
    CorruptHmac,
}

impl Signer {
    fn from(n: u8) -> Self {
        [
            Signer::Hmac,
            Signer::Ec,
            Signer::HmacWithPublicKey,
            Signer::Unsigned,
            Signer::CorruptHmac,
        ][usize::from(n % 5)]
    }

    fn sign(self, message: &str) -> Vec<u8> {
        let s = setup();
        let mac = |key: &[u8]| {
            hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), message.as_bytes())
                .as_ref()
                .to_vec()
        };
        match self {
            Signer::Hmac => mac(SECRET),
            Signer::Ec => {
                s.ec.sign(&SystemRandom::new(), message.as_bytes())
                    .expect("signing")
                    .as_ref()
                    .to_vec()
            }
            Signer::HmacWithPublicKey => mac(s.ec.public_key().as_ref()),
            Signer::Unsigned => Vec::new(),
            Signer::CorruptHmac => {
                let mut m = mac(SECRET);
                m[0] ^= 1;
                m
            }
        }
    }

    /// The algorithm and `kid` under which a token it signs may verify.
    fn genuine(self) -> Option<(&'static str, &'static str)> {
        match self {
            Signer::Hmac => Some(("HS256", HMAC_KID)),
            Signer::Ec => Some(("ES256", EC_KID)),
            _ => None,
        }
    }
}

fn token(header: &[u8], claims: &[u8], signer: Signer) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let sig = URL_SAFE_NO_PAD.encode(signer.sign(&message));
    format!("{message}.{sig}")
}

/// Whether the gateway accepts `token` (twice: the second time may come from the cache, and
/// must say the same).
fn accepted(token: &str) -> bool {
    let s = setup();
    let cache = TokenCache::default();
    let consumers = Consumers::default();
    let first = super::runtime().block_on(verify(&s.issuers, token, &consumers, &cache));
    let second = super::runtime().block_on(verify(&s.issuers, token, &consumers, &cache));
    assert_eq!(
        first.as_ref().map(|id| id.consumer.clone()).ok(),
        second.as_ref().map(|id| id.consumer.clone()).ok(),
        "the cached verdict differs: {:?} then {:?}",
        first.as_ref().err(),
        second.as_ref().err()
    );
    first.is_ok()
}

/// Whether a header allows a token signed by `signer`: its algorithm, a `kid` that is the
/// key's or none, no `crit`.
fn header_ok(header: &Value, signer: Signer) -> bool {
    let Some((alg, kid)) = signer.genuine() else {
        return false;
    };
    let Some(h) = header.as_object() else {
        return false;
    };
    h.get("alg").and_then(Value::as_str) == Some(alg)
        && h.get("kid").is_none_or(|k| k.as_str() == Some(kid))
        && !h.contains_key("crit")
}

/// Whether claims hold for the issuer at `now` (give or take `slack` seconds at each
/// boundary), as RFC 7519 and the issuer's config say: `iss` the issuer's; `exp` a number
/// not past (beyond the leeway); `nbf` and `iat`, when present, numbers not ahead (beyond
/// the leeway); `aud` the issuer's audience or an array of strings holding it (the issuer
/// lists audiences); `sub` a string.
fn claims_ok(claims: &Value, now: i64, slack: i64) -> bool {
    let Some(c) = claims.as_object() else {
        return false;
    };
    let number = |k: &str| c.get(k).and_then(Value::as_f64);
    let not_ahead = |k: &str| match c.get(k) {
        None => true,
        Some(v) => v
            .as_f64()
            .is_some_and(|t| t <= (now + LEEWAY + slack) as f64),
    };
    let audience = match c.get("aud") {
        Some(Value::String(a)) => a == AUDIENCE,
        Some(Value::Array(list)) => {
            list.iter().all(Value::is_string) && list.iter().any(|a| a == AUDIENCE)
        }
        _ => false,
    };
    c.get("iss").and_then(Value::as_str) == Some(ISSUER)
        && number("exp").is_some_and(|exp| exp + (LEEWAY + slack) as f64 >= now as f64)
        && not_ahead("nbf")
        && not_ahead("iat")
        && audience
        && c.get("sub").is_some_and(Value::is_string)
}

/// Target `jwt`: bearer token verification (`jwt::verify`: the header, the claims, the
/// signature, the issuer's keys and key set), three ways:
/// - a token as the fuzzer wrote it;
/// - a header and claims as the fuzzer wrote them (any bytes), signed by the harness with
///   one of the issuer's keys, or wrongly;
/// - a header and claims the harness builds from fuzzed choices (algorithm, `kid`, `crit`,
///   signer, and `iss`, `exp`, `nbf`, `iat`, `aud`, `sub` values of every type, around now).
///
/// Invariants beyond "no panic":
/// - a token is accepted only if one of the issuer's keys signed exactly its first two
///   segments with an algorithm the issuer allows (checked again with ring alone), under
///   that key's `kid` or none, without `crit`, and its claims hold (see `claims_ok`: RFC
///   7519 and the issuer's audience, leeway and consumer claim);
/// - for tokens built from choices, the converse too: it is accepted exactly when so;
/// - a second verification of the same token (from the cache) says the same.
pub fn jwt(data: &[u8]) {
    let mut input = Input::new(data);
    match input.byte() % 3 {
        0 => {
            let token = String::from_utf8_lossy(input.rest()).into_owned();
            if accepted(&token) {
                genuine_token(&token);
            }
        }
        1 => {
            let signer = Signer::from(input.byte());
            let header = input.field();
            let claims = input.rest();
            if accepted(&token(header, claims, signer)) {
                let h: Value = serde_json::from_slice(header).expect("an accepted header is JSON");
                let c: Value = serde_json::from_slice(claims).expect("accepted claims are JSON");
                assert!(header_ok(&h, signer), "header {h} accepted for {signer:?}");
                assert!(claims_ok(&c, now(), 2), "claims {c} accepted");
            }
        }
        _ => {
            let now = now();
            let (header, claims, signer) = chosen(&mut input, now);
            let want = header_ok(&header, signer) && claims_ok(&claims, now, 0);
            let got = accepted(&token(
                header.to_string().as_bytes(),
                claims.to_string().as_bytes(),
                signer,
            ));
            assert_eq!(
                got, want,
                "header {header}, claims {claims}, signed {signer:?}: accepted {got}, should be {want}"
            );
        }
    }
}

/// An accepted token from the fuzzer: signed by one of the issuer's keys over its first two
/// segments (checked with ring), with a header and claims that allow it.
fn genuine_token(token: &str) {
    let (message, sig) = token.rsplit_once('.').expect("three segments");
    let (header, claims) = message.split_once('.').expect("three segments");
    let decode = |s: &str| {
        URL_SAFE_NO_PAD
            .decode(s)
            .expect("accepted segments are base64")
    };
    let header: Value = serde_json::from_slice(&decode(header)).expect("a JSON header");
    let claims: Value = serde_json::from_slice(&decode(claims)).expect("JSON claims");
    let sig = decode(sig);
    let signer = match header.get("alg").and_then(Value::as_str) {
        Some("HS256") => {
            hmac::verify(
                &hmac::Key::new(hmac::HMAC_SHA256, SECRET),
                message.as_bytes(),
                &sig,
            )
            .expect("an accepted HS256 token has the secret's MAC");
            Signer::Hmac
        }
        Some("ES256") => {
            signature::UnparsedPublicKey::new(
                &signature::ECDSA_P256_SHA256_FIXED,
                setup().ec.public_key().as_ref(),
            )
            .verify(message.as_bytes(), &sig)
            .expect("an accepted ES256 token has the key's signature");
            Signer::Ec
        }
        other => panic!("a token with alg {other:?} accepted"),
    };
    assert!(header_ok(&header, signer), "header {header} accepted");
    assert!(claims_ok(&claims, now(), 2), "claims {claims} accepted");
}

/// A header, claims and signer from fuzzed choices, with times around `now`.
fn chosen(input: &mut Input<'_>, now: i64) -> (Value, Value, Signer) {
    let mut pick = |options: Vec<Option<Value>>| {
        let n = options.len();
        options
            .into_iter()
            .nth(usize::from(input.byte()) % n)
            .flatten()
    };
    let alg = pick(
        ["HS256", "ES256", "HS384", "RS256", "none", "EdDSA", "hs256"]
            .map(|a| Some(json!(a)))
            .into(),
    );
    let kid = pick(vec![
        None,
        Some(json!(HMAC_KID)),
        Some(json!(EC_KID)),
        Some(json!("zz")),
        Some(json!(1)),
    ]);
    let crit = pick(vec![None, None, Some(json!([])), Some(json!(["exp"]))]);
    let typ = pick(vec![None, Some(json!("JWT")), Some(json!("at+jwt"))]);
    let iss = pick(vec![
        Some(json!(ISSUER)),
        Some(json!(ISSUER)),
        Some(json!("https://b.test")),
        None,
        Some(json!(5)),
        Some(json!([ISSUER])),
    ]);
    let time = |offsets: &[i64]| -> Vec<Option<Value>> {
        offsets.iter().map(|o| Some(json!(now + o))).collect()
    };
    let mut exp = time(&[3600, -10, -3600]);
    exp.extend([
        None,
        Some(json!("x")),
        Some(json!((now + 3600) as f64)),
        Some(json!(-5)),
    ]);
    let exp = pick(exp);
    let mut nbf = time(&[-3600, 3600, 10]);
    // 1e20: beyond the u64 jsonwebtoken reads dates as (it skipped such an nbf).
    nbf.extend([
        None,
        Some(json!("x")),
        Some(json!(-5)),
        Some(json!(null)),
        Some(json!(1e20)),
        Some(json!((now - 3600) as f64)),
    ]);
    let nbf = pick(nbf);
    let mut iat = time(&[-3600, 3600, 10]);
    iat.extend([None, Some(json!("x")), Some(json!(1e20))]);
    let iat = pick(iat);
    let aud = pick(vec![
        Some(json!(AUDIENCE)),
        Some(json!(["x", AUDIENCE])),
        Some(json!("other")),
        None,
        Some(json!(5)),
        Some(json!([AUDIENCE, 5])),
        Some(json!([])),
        Some(json!(null)),
    ]);
    let sub = pick(vec![
        Some(json!("alice")),
        None,
        Some(json!(5)),
        Some(json!("")),
    ]);
    let scope = pick(vec![
        None,
        Some(json!("a b")),
        Some(json!(["a", 1])),
        Some(json!(5)),
    ]);
    let signer = Signer::from(input.byte());
    let object = |pairs: Vec<(&str, Option<Value>)>| {
        Value::Object(
            pairs
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
                .collect::<Map<_, _>>(),
        )
    };
    let header = object(vec![
        ("alg", alg),
        ("kid", kid),
        ("crit", crit),
        ("typ", typ),
    ]);
    let claims = object(vec![
        ("iss", iss),
        ("exp", exp),
        ("nbf", nbf),
        ("iat", iat),
        ("aud", aud),
        ("sub", sub),
        ("scope", scope),
    ]);
    (header, claims, signer)
}

/// Target `jwks`: a key-set document as a JWKS URL or file serves it.
///
/// Invariants beyond "no panic": a document that is taken is JSON with a `keys` array, and
/// the keys taken are, in order, some of its RSA, EC and OKP keys, each of its own family
/// and under its own `kid`; a shared secret (`oct`) is never taken from a key set.
pub fn jwks(data: &[u8]) {
    let Ok(keys) = jwks_keys(data) else {
        return;
    };
    let doc: Value = serde_json::from_slice(data).expect("a key set taken is JSON");
    let listed: Vec<(Option<String>, &str)> = doc
        .get("keys")
        .and_then(Value::as_array)
        .expect("a key set taken has keys")
        .iter()
        .filter_map(|k| {
            let family = match k.get("kty").and_then(Value::as_str)? {
                "RSA" => "RSA",
                "EC" => "EC",
                "OKP" => "Ed25519",
                _ => return None,
            };
            let kid = k.get("kid").and_then(Value::as_str).map(str::to_string);
            Some((kid, family))
        })
        .collect();
    let mut rest = listed.iter();
    for key in &keys {
        assert_ne!(key.1, "HMAC", "a shared secret taken from a key set");
        assert!(
            rest.any(|l| l == key),
            "{key:?} is not one of the document's keys in order: {listed:?}"
        );
    }
}
