//! JWT authentication against tokens minted by an independent implementation (PyJWT +
//! cryptography, `tests/jwt/mint.py`), for every algorithm, the failure cases, and key
//! rotation through a JWKS served by the test.

mod support;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, Request, Response};
use hyper_util::rt::TokioIo;
use support::{
    connect, fixed, metric, raw, read_one, request, runtime, upstream, Gateway, GatewayToml,
    Scratch,
};

const ALGORITHMS: [&str; 10] = [
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA",
];

fn mint(dir: &Scratch) -> HashMap<String, String> {
    mint_with(dir, "http://127.0.0.1:9/evil.json")
}

/// Tokens whose `jku` and `x5u` point at `attacker`.
fn mint_with(dir: &Scratch, attacker: &str) -> HashMap<String, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/jwt/mint.py");
    let out = std::process::Command::new("/usr/bin/python3")
        .arg(script)
        .arg(&dir.0)
        .arg(attacker)
        .output()
        .expect("python3 (apt install python3-jwt python3-cryptography; cargo xtask setup does)");
    assert!(
        out.status.success(),
        "mint.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("tokens")
}

/// A JWKS server whose document the test can change; counts fetches.
struct Jwks {
    url: String,
    doc: Arc<Mutex<(u16, String)>>,
    fetches: Arc<AtomicUsize>,
}

fn jwks_server(rt: &tokio::runtime::Runtime, initial: String) -> Jwks {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let doc = Arc::new(Mutex::new((200u16, initial)));
    let fetches = Arc::new(AtomicUsize::new(0));
    let (d, f) = (doc.clone(), fetches.clone());
    rt.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (d, f) = (d.clone(), f.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                    f.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = d.lock().expect("doc").clone();
                    async move {
                        let mut r = Response::new(Full::new(Bytes::from(body)));
                        *r.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Jwks {
        url: format!("http://{addr}/.well-known/jwks.json"),
        doc,
        fetches,
    }
}

fn bearer(t: &str) -> String {
    format!("Authorization: Bearer {t}")
}

fn gateway(dir: &Scratch, up: std::net::SocketAddr, jwks_url: &str) -> Gateway {
    let algs = ALGORITHMS.map(|a| format!("\"{a}\"")).join(", ");
    Gateway::start(
        &GatewayToml::new()
            .upstream("u", &[up])
            .raw(&format!(
                r#"[[consumer]]
id = "alice"
groups = ["staff"]
jwt_subjects = ["main:alice"]

[[jwt_issuer]]
name = "main"
issuer = "https://issuer.test"
audiences = ["sluice-api"]
algorithms = [{algs}]
keys = [{{ file = "{rsa}" }}, {{ file = "{ec256}" }}, {{ file = "{ec384}" }}, {{ file = "{ed}" }}]
hmac_secrets = [{{ file = "{hmac}" }}]
leeway_s = 5

[[jwt_issuer]]
name = "rotating"
issuer = "https://rotating.test"
algorithms = ["RS256", "ES256", "EdDSA"]
jwks_url = "{jwks_url}"
jwks_refresh_ms = 600000"#,
                rsa = dir.path("rsa.pem"),
                ec256 = dir.path("ec256.pem"),
                ec384 = dir.path("ec384.pem"),
                ed = dir.path("ed.pem"),
                hmac = dir.path("hmac.secret"),
            ))
            .route("main", "/main", "u")
            .with(r#"auth = { methods = ["jwt"], jwt_issuers = ["main"] }"#)
            .route("scoped", "/scoped", "u")
            .with(r#"auth = { methods = ["jwt"], jwt_issuers = ["main"] }"#)
            .with(r#"authorize = { scopes = ["write"], groups = ["analysts"], claims = { tier = "gold" } }"#)
            .route("rotating", "/rot", "u")
            .with(r#"auth = { methods = ["jwt"], jwt_issuers = ["rotating"] }"#)
            .build(),
    )
}

/// A gateway whose issuer's key set (`jwks-one.json`) comes from a JWKS server, and the
/// tokens PyJWT minted for it, in a scratch directory named `name`.
struct Minted {
    gw: Gateway,
    tokens: HashMap<String, String>,
    /// What must outlive the gateway's requests: the key set's server, the upstream, their
    /// runtime, the files.
    _keep: (Jwks, support::Upstream, tokio::runtime::Runtime, Scratch),
}

fn minted(name: &str) -> Minted {
    let dir = Scratch::new(name);
    let tokens = mint(&dir);
    let rt = runtime();
    let up = upstream(&rt, "u", fixed(200, Duration::ZERO));
    let jwks = jwks_server(
        &rt,
        std::fs::read_to_string(dir.path("jwks-one.json")).unwrap(),
    );
    let gw = gateway(&dir, up.addr, &jwks.url);
    Minted {
        gw,
        tokens,
        _keep: (jwks, up, rt, dir),
    }
}

#[test]
fn every_algorithm_and_every_refusal() {
    let Minted { gw, tokens, _keep } = minted("jwt");
    for alg in ALGORITHMS {
        let r = request(gw.http, "GET", "/main", &[&bearer(&tokens[alg])], "");
        assert_eq!(r.status, 200, "{alg}: {}", r.body);
        // The consumer named by `sub` is told to the upstream; a forged header is not.
        assert_eq!(r.json()["headers"]["x-consumer-id"], "alice", "{alg}");
    }
    let forged = request(
        gw.http,
        "GET",
        "/main",
        &[&bearer(&tokens["RS256"]), "x-consumer-id: admin"],
        "",
    );
    assert_eq!(forged.json()["headers"]["x-consumer-id"], "alice");
    for (case, why) in [
        ("expired", "expired"),
        ("not_yet_valid", "not yet valid"),
        ("issued_in_future", "issued in the future"),
        ("wrong_iss", "wrong issuer"),
        ("wrong_aud", "wrong audience"),
        ("bad_signature", "bad signature"),
        ("alg_none", "unsupported algorithm"),
        ("confusion", "bad signature"),
    ] {
        let r = request(gw.http, "GET", "/main", &[&bearer(&tokens[case])], "");
        assert_eq!(r.status, 401, "{case}: {}", r.body);
        assert_eq!(r.headers["content-type"], "application/problem+json");
        assert_eq!(r.headers["www-authenticate"], "Bearer realm=\"sluice\"");
        let detail = r.json()["detail"].as_str().unwrap_or("").to_string();
        assert!(detail.contains(why), "{case}: {detail}");
    }
    // Garbage and no token.
    assert_eq!(
        request(gw.http, "GET", "/main", &[&bearer("a.b.c")], "").status,
        401
    );
    assert_eq!(request(gw.http, "GET", "/main", &[], "").status, 401);
    // Authorization: scopes, groups from the token, and a claim value.
    let r = request(gw.http, "GET", "/scoped", &[&bearer(&tokens["scoped"])], "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["headers"]["x-consumer-id"], "main:svc-reporting");
    let r = request(
        gw.http,
        "GET",
        "/scoped",
        &[&bearer(&tokens["unscoped"])],
        "",
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.json()["detail"]
        .as_str()
        .unwrap()
        .contains("scope \"write\""));
    // A token of one issuer is no good on a route of another.
    assert_eq!(
        request(gw.http, "GET", "/rot", &[&bearer(&tokens["RS256"])], "").status,
        401
    );
}

#[test]
fn keys_rotate_through_the_jwks() {
    let dir = Scratch::new("jwks");
    let tokens = mint(&dir);
    let one = std::fs::read_to_string(dir.path("jwks-one.json")).unwrap();
    let two = std::fs::read_to_string(dir.path("jwks-two.json")).unwrap();
    let rt = runtime();
    let up = upstream(&rt, "u", fixed(200, Duration::ZERO));
    let jwks = jwks_server(&rt, one);
    let gw = gateway(&dir, up.addr, &jwks.url);
    let get = |t: &str| request(gw.http, "GET", "/rot", &[&bearer(&tokens[t])], "");
    for alg in ["RS256", "ES256", "EdDSA"] {
        let r = get(&format!("one_{alg}"));
        assert_eq!(r.status, 200, "one_{alg}: {}", r.body);
        assert_eq!(r.json()["headers"]["x-consumer-id"], "rotating:rot-one");
    }
    // The new generation is published; a token naming its kid makes the gateway fetch at
    // once (after the one-second guard), without waiting for the 10-minute refresh.
    *jwks.doc.lock().unwrap() = (200, two);
    std::thread::sleep(Duration::from_millis(1100));
    let before = jwks.fetches.load(Ordering::SeqCst);
    for alg in ["RS256", "ES256", "EdDSA"] {
        let r = get(&format!("two_{alg}"));
        assert_eq!(r.status, 200, "two_{alg}: {}", r.body);
    }
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), before + 1);
    // The retired keys are gone.
    let r = get("one_RS256");
    assert_eq!(r.status, 401);
    assert!(r.body.contains("rsa-one"), "{}", r.body);
    // A broken key server: the last good set stays.
    *jwks.doc.lock().unwrap() = (500, "oops".into());
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(get("one_ES256").status, 401);
    // A token not seen before, so verified against the key set kept.
    assert_eq!(get("two_ES256_fresh").status, 200);
    *jwks.doc.lock().unwrap() = (200, "{not json".into());
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(get("one_EdDSA").status, 401);
    assert_eq!(get("two_EdDSA_fresh").status, 200);
    assert!(
        metric(
            &gw,
            "sluice_gateway_consumer_requests_total{consumer=\"rotating:rot-two\",route=\"rotating\",class=\"2xx\"}"
        ) >= 5.0
    );
}

/// RFC 7515 §4.1.11: a `crit` header is refused (this verifier understands no extension),
/// and `jwk`, `jku`, `x5u` and `x5c` never select a key: tokens an attacker signed with a
/// key named through them are refused, and the attacker's URL is never fetched.
#[test]
fn crit_and_key_selecting_header_parameters_are_refused() {
    let dir = Scratch::new("jwt-crit");
    let rt = runtime();
    let attacker = jwks_server(&rt, "{\"keys\": []}".into());
    let tokens = mint_with(&dir, &attacker.url);
    // The attacker's URL serves the attacker's key set, should anyone ask.
    attacker.doc.lock().expect("doc").1 =
        std::fs::read_to_string(dir.path("evil-jwks.json")).expect("evil jwks");
    let up = upstream(&rt, "u", fixed(200, Duration::ZERO));
    let jwks = jwks_server(
        &rt,
        std::fs::read_to_string(dir.path("jwks-one.json")).expect("jwks"),
    );
    let gw = gateway(&dir, up.addr, &jwks.url);
    // The same key without crit is accepted: the refusals below are for crit alone.
    let r = request(gw.http, "GET", "/main", &[&bearer(&tokens["RS256"])], "");
    assert_eq!(r.status, 200, "{}", r.body);
    for case in ["crit_unknown", "crit_empty", "crit_exp", "crit_string"] {
        let r = request(gw.http, "GET", "/main", &[&bearer(&tokens[case])], "");
        assert_eq!(r.status, 401, "{case}: {}", r.body);
        assert_eq!(r.headers["content-type"], "application/problem+json");
        assert!(r.body.contains("crit"), "{case}: {}", r.body);
    }
    let evil: Vec<&String> = tokens.keys().filter(|k| k.starts_with("evil_")).collect();
    assert_eq!(evil.len(), 24, "{evil:?}");
    for case in evil {
        let path = if case.ends_with("_main") {
            "/main"
        } else {
            "/rot"
        };
        let r = request(gw.http, "GET", path, &[&bearer(&tokens[case])], "");
        assert_eq!(r.status, 401, "{case}: {}", r.body);
    }
    assert_eq!(
        attacker.fetches.load(Ordering::SeqCst),
        0,
        "the gateway fetched a URL named by a token"
    );
}

/// The Authorization header as an attacker sends it, over raw HTTP/1.1 so that any byte can
/// go: the scheme in any case and the token with spaces and tabs around it still work; a
/// token a byte away from a cached one (an obs-text byte after it, a byte cut off) is never
/// taken for it; the header split over many writes, repeated on one connection, or far
/// oversized gets an answer and never a panic.
#[test]
fn the_authorization_header_is_read_byte_for_byte() {
    use std::io::Write;
    let Minted { gw, tokens, _keep } = minted("jwt-bytes");
    let token = tokens["RS256"].as_bytes();
    let send = |auth: &[u8]| {
        let mut req =
            b"GET /main HTTP/1.1\r\nhost: a\r\nconnection: close\r\nauthorization: ".to_vec();
        req.extend_from_slice(auth);
        req.extend_from_slice(b"\r\n\r\n");
        raw(gw.http, &req).status
    };
    let with = |before: &[u8], after: &[u8]| {
        let mut v = before.to_vec();
        v.extend_from_slice(token);
        v.extend_from_slice(after);
        v
    };
    // Uncached first, then cached: both ways, the same answers.
    for round in ["uncached", "cached"] {
        assert_eq!(send(&with(b"Bearer ", b"")), 200, "{round}");
        assert_eq!(send(&with(b"bEaReR \t ", b" \t")), 200, "{round}");
        assert_eq!(
            send(&with(b"Bearer ", b"\xe9")),
            401,
            "{round}: obs-text after"
        );
        assert_eq!(
            send(&with(b"Bearer \xa0", b"")),
            401,
            "{round}: obs-text before"
        );
        assert_eq!(
            send(
                &token[..token.len() - 1]
                    .iter()
                    .fold(b"Bearer ".to_vec(), |mut v, b| {
                        v.push(*b);
                        v
                    })
            ),
            401,
            "{round}: one byte short"
        );
        assert_eq!(send(&with(b"Bearer", b"")), 401, "{round}: no space");
        assert_eq!(send(&with(b"Basic ", b"")), 401, "{round}: another scheme");
    }
    // Split into one write per 7 bytes, then 50 requests on one connection.
    let mut s = connect(&gw);
    let mut req = b"GET /main HTTP/1.1\r\nhost: a\r\nauthorization: Bearer ".to_vec();
    req.extend_from_slice(token);
    req.extend_from_slice(b"\r\n\r\n");
    for chunk in req.chunks(7) {
        s.write_all(chunk).expect("write");
        s.flush().expect("flush");
    }
    assert_eq!(read_one(&mut s).expect("answer").status, 200);
    for i in 0..50 {
        s.write_all(&req).expect("write");
        assert_eq!(read_one(&mut s).expect("answer").status, 200, "request {i}");
    }
    // Far oversized: refused by the head limit, the connection answered, not dropped.
    let mut huge = b"Bearer ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 200_000));
    let status = send(&huge);
    assert!((400..500).contains(&status), "{status}");
}
