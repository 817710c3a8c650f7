//! Policies through the real gateway binary: API keys, Basic auth, authorization, local
//! rate and concurrency limits, transforms, the policy order, the client address and usage
//! analytics.

mod support;

use std::time::Duration;

use support::{
    admin_get, fixed, metric, request, runtime, sha256_hex, upstream, Gateway, GatewayToml,
};

const KEY_ALICE: &str = "k-alice-0123456789";
const KEY_BOB: &str = "k-bob-9876543210";

fn consumers() -> String {
    let bcrypt_hash = bcrypt::hash("bob-password", 4).expect("bcrypt");
    let argon_hash = {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let salt = SaltString::encode_b64(b"fixed-test-salt!").expect("salt");
        argon2::Argon2::default()
            .hash_password(b"alice-password", &salt)
            .expect("argon2")
            .to_string()
    };
    format!(
        r#"
[[consumer]]
id = "alice"
groups = ["admins"]
api_keys = ["sha256:{}"]
basic = {{ username = "alice", hash = "{argon_hash}" }}

[[consumer]]
id = "bob"
groups = ["users"]
api_keys = ["{}"]
basic = {{ username = "bob", hash = "{bcrypt_hash}" }}
"#,
        sha256_hex(KEY_ALICE.as_bytes()),
        sha256_hex(KEY_BOB.as_bytes()),
    )
}

fn basic(user: &str, pass: &str) -> String {
    use base64::Engine;
    format!(
        "Authorization: Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

#[test]
fn api_keys_and_basic_auth_identify_consumers() {
    let rt = runtime();
    let up = upstream(&rt, "u", fixed(200, Duration::ZERO));
    let gw = Gateway::start(
        &GatewayToml::new()
            .upstream("u", &[up.addr])
            .raw(&consumers())
            .route("keys", "/", "u")
            .with(r#"auth = { methods = ["api_key", "basic"], api_key_query = "apikey", realm = "tests" }"#)
            .build(),
    );
    // Key in the header: forwarded without it.
    let r = request(
        gw.http,
        "GET",
        "/a",
        &[&format!("x-api-key: {KEY_ALICE}")],
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.json()["headers"].get("x-api-key").is_none());
    // Key in the query: forwarded without it, other parameters kept.
    let r = request(
        gw.http,
        "GET",
        &format!("/a?x=1&apikey={KEY_BOB}&y=2&z="),
        &[],
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["path"], "/a?x=1&y=2&z=");
    // In both places: the header decides, and neither reaches the upstream.
    let r = request(
        gw.http,
        "GET",
        &format!("/a?apikey={KEY_BOB}"),
        &[&format!("x-api-key: {KEY_ALICE}")],
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["path"], "/a");
    assert_eq!(r.json()["headers"]["x-consumer-id"], "alice");
    // Naming a header in Connection cannot remove what the gateway adds.
    let r = request(
        gw.http,
        "GET",
        "/a",
        &[
            &format!("x-api-key: {KEY_ALICE}"),
            "Connection: close, x-consumer-id",
        ],
        "",
    );
    assert_eq!(r.json()["headers"]["x-consumer-id"], "alice", "{}", r.body);
    // Wrong key, a prefix of a right one, nothing at all.
    for extra in [
        vec!["x-api-key: k-alice-wrong".to_string()],
        vec![format!("x-api-key: {}", &KEY_ALICE[..10])],
        vec![],
    ] {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let r = request(gw.http, "GET", "/a", &extra, "");
        assert_eq!(r.status, 401, "{extra:?}: {}", r.body);
        assert_eq!(r.headers["content-type"], "application/problem+json");
        assert_eq!(
            r.headers["www-authenticate"],
            "ApiKey realm=\"tests\", Basic realm=\"tests\", charset=\"UTF-8\""
        );
    }
    // Basic: argon2 and bcrypt hashes; wrong password; unknown user; garbage.
    assert_eq!(
        request(
            gw.http,
            "GET",
            "/b",
            &[&basic("alice", "alice-password")],
            ""
        )
        .status,
        200
    );
    assert_eq!(
        request(gw.http, "GET", "/b", &[&basic("bob", "bob-password")], "").status,
        200
    );
    assert_eq!(
        request(gw.http, "GET", "/b", &[&basic("bob", "alice-password")], "").status,
        401
    );
    assert_eq!(
        request(gw.http, "GET", "/b", &[&basic("carol", "x")], "").status,
        401
    );
    let r = request(gw.http, "GET", "/b", &["Authorization: Basic !!!"], "");
    assert_eq!(r.status, 401);
    assert!(
        r.json()["detail"].as_str().unwrap().contains("malformed"),
        "{}",
        r.body
    );
    // The consumer shows in the analytics.
    let m = admin_get(&gw, "/metrics").body;
    assert!(
        m.contains("sluice_gateway_consumer_requests_total{consumer=\"alice\",route=\"keys\",class=\"2xx\"} 4"),
        "{m}"
    );
}

#[test]
fn authorization_by_group_is_403() {
    let rt = runtime();
    let up = upstream(&rt, "u", fixed(200, Duration::ZERO));
    let gw = Gateway::start(
        &GatewayToml::new()
            .upstream("u", &[up.addr])
            .raw(&consumers())
            .route("admin", "/admin", "u")
            .with(r#"auth = { methods = ["api_key"] }"#)
            .with(r#"authorize = { groups = ["admins"] }"#)
            .build(),
    );
    let ok = request(
        gw.http,
        "GET",
        "/admin",
        &[&format!("x-api-key: {KEY_ALICE}")],
        "",
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
    let r = request(
        gw.http,
        "GET",
        "/admin",
        &[&format!("x-api-key: {KEY_BOB}")],
        "",
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.headers["content-type"], "application/problem+json");
    assert_eq!(request(gw.http, "GET", "/admin", &[], "").status, 401);
}

#[test]
fn exactly_n_per_window_then_429_with_headers() {
    let rt = runtime();
    let up = upstream(&rt, "u", fixed(200, Duration::ZERO));
    for algorithm in ["gcra", "token_bucket"] {
        let gw = Gateway::start(
            &GatewayToml::new()
                .upstream("u", &[up.addr])
                .raw(&format!(
                    r#"[[rate_limit]]
name = "per-ip"
algorithm = "{algorithm}"
requests = 5
window_ms = 60000
key = "client_ip""#
                ))
                .route("limited", "/", "u")
                .with(r#"rate_limits = ["per-ip"]"#)
                .build(),
        );
        for i in 0..5 {
            let r = request(gw.http, "GET", "/", &[], "");
            assert_eq!(r.status, 200, "{algorithm} request {i}: {}", r.body);
            assert_eq!(r.headers["ratelimit-policy"], "\"per-ip\";q=5;w=60");
            assert_eq!(
                r.headers["ratelimit"],
                format!("\"per-ip\";r={};t={}", 4 - i, 12 * (i + 1)),
                "{algorithm}"
            );
            assert_eq!(r.headers["x-ratelimit-remaining"], (4 - i).to_string());
        }
        let r = request(gw.http, "GET", "/", &[], "");
        assert_eq!(r.status, 429, "{algorithm}: {}", r.body);
        assert_eq!(r.headers["content-type"], "application/problem+json");
        // One request is earned every 12 s.
        assert_eq!(r.headers["retry-after"], "12", "{algorithm}");
        assert_eq!(r.headers["ratelimit"], "\"per-ip\";r=0;t=60");
        assert_eq!(
            metric(
                &gw,
                "sluice_gateway_rate_limit_requests_total{limit=\"per-ip\",result=\"limited\"}"
            ),
            1.0
        );
    }
}

#[test]
fn retry_after_is_at_least_one_second_and_the_quota_returns() {
    let rt = runtime();
    let up = upstream(&rt, "u", fixed(200, Duration::ZERO));
    let gw = Gateway::start(
        &GatewayToml::new()
            .upstream("u", &[up.addr])
            .raw(
                r#"[[rate_limit]]
name = "fast"
requests = 2
window_ms = 2000
key = "route"
legacy_headers = false"#,
            )
            .route("r", "/", "u")
            .with(r#"rate_limits = ["fast"]"#)
            .build(),
    );
    assert_eq!(request(gw.http, "GET", "/", &[], "").status, 200);
    assert_eq!(request(gw.http, "GET", "/", &[], "").status, 200);
    let r = request(gw.http, "GET", "/", &[], "");
    assert_eq!(r.status, 429);
    assert_eq!(r.headers["retry-after"], "1");
    assert!(r.headers.contains_key("ratelimit"));
    assert!(!r.headers.contains_key("x-ratelimit-remaining"));
    // One request is earned every second.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(request(gw.http, "GET", "/", &[], "").status, 200);
}

#[test]
fn local_store_stays_bounded_under_a_flood_of_keys() {
    let rt = runtime();
    let up = upstream(&rt, "u", fixed(200, Duration::ZERO));
    let gw = Gateway::start(
        &GatewayToml::new()
            .upstream("u", &[up.addr])
            .raw(
                r#"[[rate_limit]]
name = "per-user"
requests = 3
window_ms = 3600000
key = { header = "x-user" }
max_keys = 64"#,
            )
            .route("r", "/", "u")
            .with(r#"rate_limits = ["per-user"]"#)
            .build(),
    );
    for i in 0..600 {
        let r = request(gw.http, "GET", "/", &[&format!("x-user: flood-{i}")], "");
        assert_eq!(r.status, 200);
    }
    let keys = metric(
        &gw,
        "sluice_gateway_rate_limit_local_keys{limit=\"per-user\"}",
    );
    assert!((1.0..=64.0).contains(&keys), "{keys} keys held");
    // A key seen recently is still limited.
    for _ in 0..3 {
        request(gw.http, "GET", "/", &["x-user: steady"], "");
    }
    assert_eq!(
        request(gw.http, "GET", "/", &["x-user: steady"], "").status,
        429
    );
}

#[test]
fn concurrency_limit_per_key() {
    let rt = runtime();
    let up = upstream(&rt, "u", fixed(200, Duration::from_secs(3)));
    let gw = Gateway::start(
        &GatewayToml::new()
            .upstream("u", &[up.addr])
            .raw(
                r#"[[rate_limit]]
name = "two-at-once"
concurrent = 2
key = { header = "x-user" }"#,
            )
            .route("r", "/", "u")
            .with(r#"rate_limits = ["two-at-once"]"#)
            .build(),
    );
    let addr = gw.http;
    let slow: Vec<_> = (0..2)
        .map(|_| std::thread::spawn(move || request(addr, "GET", "/", &["x-user: a"], "").status))
        .collect();
    // Both slow requests are in flight once the upstream has seen them.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while up.hits.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the slow requests never arrived"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = request(gw.http, "GET", "/", &["x-user: a"], "");
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.headers["retry-after"], "1");
    // Another key is not affected.
    assert_eq!(request(gw.http, "GET", "/", &["x-user: b"], "").status, 200);
    for s in slow {
        assert_eq!(s.join().expect("thread"), 200);
    }
    // Slots were given back.
    assert_eq!(request(gw.http, "GET", "/", &["x-user: a"], "").status, 200);
}

#[test]
fn policy_order_is_as_configured() {
    let rt = runtime();
    let up = upstream(&rt, "u", fixed(200, Duration::ZERO));
    let policies = "auth = { methods = [\"api_key\"] }\nrate_limits = [\"one\"]";
    let gw = Gateway::start(
        &GatewayToml::new()
            .upstream("u", &[up.addr])
            .raw(&consumers())
            .raw("[[rate_limit]]\nname = \"one\"\nrequests = 1\nwindow_ms = 60000\nkey = \"route\"")
            .route("default", "/default", "u")
            .with(policies)
            .route("limitfirst", "/limitfirst", "u")
            .with(policies)
            .with("policy_order = [\"rate_limit\", \"authenticate\"]")
            .build(),
    );
    // Default order: anonymous requests are refused before they count against the limit.
    for _ in 0..3 {
        assert_eq!(request(gw.http, "GET", "/default", &[], "").status, 401);
    }
    let key = format!("x-api-key: {KEY_ALICE}");
    assert_eq!(request(gw.http, "GET", "/default", &[&key], "").status, 200);
    // Limit first: the anonymous request uses up the quota, so the next gets 429, not 401.
    assert_eq!(request(gw.http, "GET", "/limitfirst", &[], "").status, 401);
    assert_eq!(request(gw.http, "GET", "/limitfirst", &[], "").status, 429);
    assert_eq!(
        request(gw.http, "GET", "/limitfirst", &[&key], "").status,
        429
    );
}

#[test]
fn client_address_from_a_trusted_proxy_keys_the_limit() {
    let rt = runtime();
    let up = upstream(&rt, "u", fixed(200, Duration::ZERO));
    let gw = Gateway::start(
        &GatewayToml::new()
            .upstream("u", &[up.addr])
            .raw(
                r#"[client_ip]
trusted_proxies = ["127.0.0.0/8"]
xff_depth = 1

[[rate_limit]]
name = "per-ip"
requests = 1
window_ms = 60000
key = "client_ip""#,
            )
            .route("r", "/", "u")
            .with(r#"rate_limits = ["per-ip"]"#)
            .build(),
    );
    let a = "X-Forwarded-For: 192.0.2.99, 203.0.113.1";
    let b = "X-Forwarded-For: 203.0.113.2";
    assert_eq!(request(gw.http, "GET", "/", &[a], "").status, 200);
    assert_eq!(request(gw.http, "GET", "/", &[b], "").status, 200);
    // The same last hop is the same client, whatever was forged further left.
    let forged = "X-Forwarded-For: 10.9.9.9, 203.0.113.1";
    assert_eq!(request(gw.http, "GET", "/", &[forged], "").status, 429);
}

#[test]
fn request_transforms_golden() {
    let rt = runtime();
    let up = upstream(&rt, "u", fixed(200, Duration::ZERO));
    let gw = Gateway::start(
        &GatewayToml::new()
            .upstream("u", &[up.addr])
            .route("t", "/api", "u")
            .raw(
                r#"[route.request_transform]
set_headers = { "x-set" = "s", "x-replaced" = "new" }
add_headers = { "x-multi" = "added" }
remove_headers = ["x-drop"]
rename_headers = { "x-old" = "x-new" }
strip_prefix = "/api"
rewrite = { regex = "^/v1/users/([0-9]+)$", replacement = "/users/$1/profile" }
add_query = { "src" = "gw" }
set_query = { "tenant" = "acme" }
remove_query = ["debug"]
rename_query = { "q" = "query" }
json_set = { "meta.via" = "sluice", "version" = 2 }
json_remove = ["password", "nested.secret"]
json_rename = { "user_name" = "user.name" }
json_max_bytes = 200"#,
            )
            .build(),
    );
    let r = request(
        gw.http,
        "POST",
        "/api/v1/users/42?q=x&debug=1&%64ebug=2&keep=y&tenant=evil&%74enant=evil2",
        &[
            "x-drop: 1",
            "x-old: moved",
            "x-replaced: old",
            "x-multi: original",
            "Content-Type: application/json",
        ],
        r#"{"user_name":"ann","password":"p","nested":{"secret":1,"kept":true}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let j = r.json();
    // Names compared decoded, as the upstream reads them: `%64ebug` is `debug`, and the
    // client's own `tenant`, however written, gives way to the one set.
    assert_eq!(
        j["path"],
        "/users/42/profile?query=x&keep=y&tenant=acme&src=gw"
    );
    let h = &j["headers"];
    assert_eq!(h["x-set"], "s");
    assert_eq!(h["x-replaced"], "new");
    assert_eq!(h["x-new"], "moved");
    assert!(h.get("x-old").is_none() && h.get("x-drop").is_none());
    let body: serde_json::Value = serde_json::from_str(j["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"user": {"name": "ann"}, "nested": {"kept": true},
            "meta": {"via": "sluice"}, "version": 2})
    );
    assert_eq!(h["content-length"], body.to_string().len().to_string());
    // Bad JSON is 400 problem+json; a body over the cap is 413; a non-JSON body passes.
    let r = request(
        gw.http,
        "POST",
        "/api/x",
        &["Content-Type: application/json"],
        "{nope",
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.headers["content-type"], "application/problem+json");
    let big = format!("{{\"a\":\"{}\"}}", "x".repeat(300));
    let r = request(
        gw.http,
        "POST",
        "/api/x",
        &["Content-Type: application/json"],
        &big,
    );
    assert_eq!(r.status, 413, "{}", r.body);
    // A body the route's JSON changes cannot be made to is refused, not passed unchanged:
    // the upstream might read it as JSON all the same, with the fields the client chose.
    for (case, fields) in [
        ("another type", &["Content-Type: text/plain"][..]),
        ("no type", &[][..]),
        (
            "an encoding",
            &["Content-Type: application/json", "Content-Encoding: br"][..],
        ),
        (
            "a type the client hides",
            &["Content-Type: application/json", "Connection: content-type"][..],
        ),
    ] {
        let r = request(gw.http, "POST", "/api/x", fields, r#"{"password":"p"}"#);
        assert_eq!(r.status, 415, "{case}: {}", r.body);
        assert_eq!(
            r.headers["content-type"], "application/problem+json",
            "{case}"
        );
    }
    // No body at all: nothing to transform, nothing refused, whatever its type; nor a
    // chunked one that turns out empty.
    for fields in [
        &["Content-Type: application/json"][..],
        &["Content-Type: text/plain"][..],
    ] {
        let r = request(gw.http, "DELETE", "/api/x", fields, "");
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let empty_chunked = support::raw(
        gw.http,
        b"POST /api/x HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\
          Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    assert_eq!(empty_chunked.status, 200, "{empty_chunked:?}");
    let chunked = support::raw(
        gw.http,
        b"POST /api/x HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\
          Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    );
    assert_eq!(chunked.status, 415, "{chunked:?}");
}

#[test]
fn response_transforms_golden() {
    let rt = runtime();
    let up = upstream(&rt, "u", fixed(200, Duration::ZERO));
    let gw = Gateway::start(
        &GatewayToml::new()
            .upstream("u", &[up.addr])
            .route("t", "/", "u")
            .raw(
                r#"[route.response_transform]
set_headers = { "cache-control" = "no-store" }
remove_headers = ["x-upstream-internal"]
json_remove = ["headers", "version"]
json_rename = { "upstream" = "served_by.name" }"#,
            )
            .build(),
    );
    let r = request(gw.http, "GET", "/p", &[], "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.headers["cache-control"], "no-store");
    assert!(!r.headers.contains_key("x-upstream-internal"));
    assert_eq!(
        r.json(),
        serde_json::json!({"served_by": {"name": "u"}, "path": "/p", "body_len": 0, "body": ""})
    );
    // A HEAD answer keeps the upstream's length (there is no body to rewrite).
    let r = request(gw.http, "HEAD", "/p", &[], "");
    assert_eq!(r.status, 200);
    let length = r.headers.get("content-length").expect("content-length");
    assert_ne!(length, "0");
    // The gateway's own errors are left alone.
    let r = request(gw.http, "GET", "/p", &["Content-Length: 5000"], "");
    assert_eq!(r.status, 413);
    assert!(r.json().get("status").is_some());
}

#[test]
fn analytics_top_lists_consumers_and_routes() {
    let rt = runtime();
    let up = upstream(&rt, "u", fixed(200, Duration::ZERO));
    let bad = upstream(&rt, "bad", fixed(503, Duration::ZERO));
    let auth = r#"auth = { methods = ["api_key"] }"#;
    let gw = Gateway::start(
        &GatewayToml::new()
            .upstream("u", &[up.addr])
            .upstream("bad", &[bad.addr])
            .raw(&consumers())
            .raw("[analytics]\nmax_consumers = 1\nminutes = 5")
            .route("good", "/good", "u")
            .with(auth)
            .route("broken", "/broken", "bad")
            .with(auth)
            .build(),
    );
    let (a, b) = (
        format!("x-api-key: {KEY_ALICE}"),
        format!("x-api-key: {KEY_BOB}"),
    );
    for _ in 0..4 {
        request(gw.http, "GET", "/good", &[&a], "");
    }
    for _ in 0..2 {
        request(gw.http, "GET", "/broken", &[&b], "");
    }
    let top = admin_get(&gw, "/analytics/top?minutes=5&limit=5");
    assert_eq!(top.status, 200);
    let j = top.json();
    // Bob is beyond max_consumers = 1, so he is "other".
    assert_eq!(j["consumers"][0]["consumer"], "alice");
    assert_eq!(j["consumers"][0]["requests"], 4);
    assert_eq!(j["consumers"][1]["consumer"], "other");
    assert_eq!(j["consumers"][1]["error_rate"], 1.0);
    assert_eq!(j["routes"][0]["route"], "good");
    assert_eq!(j["routes"][1]["route"], "broken");
    assert_eq!(j["routes"][1]["errors"], 2);
    let p99 = j["routes"][0]["p99_ms"].as_f64().unwrap();
    assert!((0.05..1000.0).contains(&p99), "{p99}");
    // A parameter that is there but no whole number is a 400 problem, not the default.
    for bad in [
        "/analytics/top?minutes=abc",
        "/analytics/top?limit=-1",
        "/analytics/top?minutes=5&minutes=6",
        "/dashboard/state?since=abc",
    ] {
        let r = admin_get(&gw, bad);
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert_eq!(
            r.headers.get("content-type").map(String::as_str),
            Some("application/problem+json"),
            "{bad}"
        );
    }
    let m = admin_get(&gw, "/metrics").body;
    assert!(m.contains("sluice_gateway_consumer_requests_total{consumer=\"other\",route=\"broken\",class=\"5xx\"} 2"), "{m}");
    assert!(!m.contains("consumer=\"bob\""));
}

#[test]
fn bad_policy_configs_are_refused_with_field_and_reason() {
    let check = |body: &str| {
        let dir = support::Scratch::new("badpol");
        let path = dir.path("gw.toml");
        std::fs::write(
            &path,
            GatewayToml::new()
                .upstream("u", &["127.0.0.1:9".parse().expect("address")])
                .raw(body)
                .build(),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-gateway"))
            .args(["check", "--config", &path])
            .output()
            .expect("check");
        assert!(!out.status.success(), "{body} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let route = "[[route]]\nname = \"r\"\nupstream = \"u\"\n";
    for (body, want) in [
        (
            "[[consumer]]\nid = \"a\"\napi_keys = [\"plaintext-key\"]\n".to_string(),
            "consumer[0].api_keys: an API key is stored as its SHA-256",
        ),
        (
            "[[consumer]]\nid = \"a\"\nbasic = { username = \"a\", hash = \"secret\" }\n".into(),
            "consumer[0].basic.hash: must be an argon2",
        ),
        (
            "[[jwt_issuer]]\nname = \"i\"\nissuer = \"x\"\nalgorithms = [\"none\"]\n".into(),
            "jwt_issuer[0].algorithms: \"none\" is not supported",
        ),
        (
            "[[jwt_issuer]]\nname = \"i\"\nissuer = \"x\"\nalgorithms = [\"RS256\"]\n".into(),
            "jwt_issuer[0].keys: public-key algorithms need keys",
        ),
        (
            "[[jwt_issuer]]\nname = \"i\"\nissuer = \"x\"\nalgorithms = [\"RS256\"]\nkeys = [{ file = \"/nonexistent.pem\" }]\n".into(),
            "jwt_issuer[0].keys[0].file: /nonexistent.pem",
        ),
        (
            "[[rate_limit]]\nname = \"l\"\nrequests = 5\nkey = \"route\"\n".into(),
            "rate_limit[0]: give either requests and window_ms",
        ),
        (
            "[[rate_limit]]\nname = \"l\"\nrequests = 5\nwindow_ms = 10\nkey = \"route\"\nstore = \"redis\"\n".into(),
            "rate_limit[0].store: store = \"redis\" needs a [redis] section",
        ),
        (
            "[[rate_limit]]\nname = \"l\"\nrequests = 5\nwindow_ms = 10\nkey = \"route\"\nlease = 8\n".into(),
            "rate_limit[0].lease: leases are for shared rate limits",
        ),
        (
            "[redis]\nurl = \"redis://x\"\n[[rate_limit]]\nname = \"l\"\nrequests = 5\nwindow_ms = 10\nkey = \"route\"\nstore = \"redis\"\nlease = 0\n".into(),
            "rate_limit[0].lease: must be 1 to 1000000",
        ),
        (
            "[redis]\nurl = \"redis://x\"\n[[rate_limit]]\nname = \"l\"\nrequests = 5\nwindow_ms = 10\nkey = \"route\"\nstore = \"redis\"\nlease = 4\nlease_ms = 60000\n".into(),
            "rate_limit[0].lease_ms: must be 1 to 10000",
        ),
        (
            "[redis]\nurl = \"redis://x\"\n[[rate_limit]]\nname = \"l\"\nrequests = 5\nwindow_ms = 1000\nkey = \"route\"\nstore = \"redis\"\nlease = 4\nlease_ms = 2000\n".into(),
            "rate_limit[0].lease_ms: must not exceed window_ms",
        ),
        (
            "[redis]\nurl = \"http://x\"\n".into(),
            "redis.url: must start with redis://",
        ),
        (
            "[client_ip]\nxff_depth = 1\n".into(),
            "client_ip.xff_depth: needs trusted_proxies",
        ),
        (
            format!("{route}rate_limits = [\"missing\"]\n"),
            "route[0].rate_limits: no rate_limit named \"missing\"",
        ),
        (
            format!("{route}authorize = {{ groups = [\"g\"] }}\n"),
            "route[0].authorize: authorization needs [route.auth]",
        ),
        (
            format!("{route}policy_order = [\"authenticate\", \"authenticate\"]\n"),
            "route[0].policy_order: Authenticate listed twice",
        ),
        (
            format!("{route}auth = {{ methods = [\"api_key\"] }}\npolicy_order = [\"rate_limit\"]\n"),
            "route[0].policy_order: Authenticate is configured for the route but not in policy_order",
        ),
        (
            format!("{route}auth = {{ methods = [\"api_key\"] }}\nauthorize = {{ groups = [\"g\"] }}\npolicy_order = [\"authorize\", \"authenticate\"]\n"),
            "route[0].policy_order: authorize must come after authenticate",
        ),
        (
            "[[consumer]]\nid = \"a\"\njwt_subjects = [\"alice\"]\n".into(),
            "consumer[0].jwt_subjects: \"alice\" must be <issuer name>:<subject>",
        ),
        (
            format!("{route}[route.request_transform]\nadd_query = {{ \"a b\" = \"c\" }}\n"),
            "route[0].request_transform.query: \"a b\" = \"c\": names and values must be URL-encoded",
        ),
        (
            format!("{route}[route.request_transform]\nrewrite = {{ regex = \"(\", replacement = \"\" }}\n"),
            "route[0].request_transform.rewrite.regex: invalid regex",
        ),
    ] {
        let err = check(&body);
        assert!(err.contains(want), "{body}\n  gave: {err}\n  wanted: {want}");
        assert!(err.contains("gw.toml"), "{err}");
    }
}

#[test]
fn protocol_conversion_both_ways() {
    let rt = runtime();
    let up = upstream(&rt, "u", fixed(200, Duration::ZERO));
    let gw = Gateway::start(
        &GatewayToml::new()
            .upstream("h2", &[up.addr])
            .with("http2 = true")
            .upstream("h1", &[up.addr])
            .route("to-h2", "/h2", "h2")
            .route("to-h1", "/h1", "h1")
            .build(),
    );
    // An HTTP/1.1 client, an HTTP/2 upstream; the client's forwarding fields give way to
    // this hop's.
    let r = request(
        gw.http,
        "GET",
        "/h2",
        &[
            "X-Forwarded-Proto: gopher",
            "X-Forwarded-Host: evil.test",
            "X-Forwarded-For: 198.51.100.1",
        ],
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let j = r.json();
    assert_eq!(j["version"], "HTTP/2.0");
    assert_eq!(j["headers"]["x-forwarded-proto"], "http");
    assert_eq!(j["headers"]["x-forwarded-host"], "test.local");
    assert_eq!(j["headers"]["x-forwarded-for"], "198.51.100.1, 127.0.0.1");
    // An HTTP/2 client sends no Host: its :authority is the forwarded host, to either kind
    // of upstream, and a forged one does not get through.
    for path in ["/h1", "/h2"] {
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "--http2-prior-knowledge",
                "-H",
                "X-Forwarded-Host: evil.test",
            ])
            .arg(format!("http://{}{path}", gw.http))
            .output()
            .expect("curl");
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(
            j["headers"]["x-forwarded-host"],
            gw.http.to_string(),
            "{path}: {j}"
        );
    }
    // An HTTP/2 client (curl, prior knowledge), an HTTP/1.1 upstream.
    let out = std::process::Command::new("curl")
        .args(["-s", "--http2-prior-knowledge", "-w", "\n%{http_version}"])
        .arg(format!("http://{}/h1", gw.http))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("\n2"), "{text}");
    assert!(text.contains("\"version\":\"HTTP/1.1\""), "{text}");
}

#[test]
fn the_example_config_is_valid() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-gateway"))
        .args(["check", "--config"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.example.toml"))
        .output()
        .expect("check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_websocket_holds_its_concurrency_slot_while_open() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Error, Message};
    let rt = runtime();
    let echo = support::websocket_echo(&rt);
    let gw = Gateway::start(
        &GatewayToml::new()
            .upstream("e", &[echo])
            .raw("[[rate_limit]]\nname = \"one-tunnel\"\nconcurrent = 1\nkey = \"route\"")
            .route("ws", "/ws", "e")
            .with(r#"rate_limits = ["one-tunnel"]"#)
            .build(),
    );
    let addr = gw.http;
    rt.block_on(async move {
        let open = || async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            tokio_tungstenite::client_async("ws://test.local/ws", tcp).await
        };
        let (mut first, resp) = open().await.expect("first tunnel");
        assert_eq!(resp.status(), 101);
        first
            .send(Message::Text("ping".into()))
            .await
            .expect("send");
        assert_eq!(
            first.next().await.expect("frame").expect("message"),
            Message::Text("ping".into())
        );
        // The open tunnel still holds the only slot.
        match open().await {
            Err(Error::Http(r)) => assert_eq!(r.status(), 429),
            other => panic!("second tunnel: {:?}", other.map(|(_, r)| r.status())),
        }
        first.close(None).await.expect("close");
        while first.next().await.is_some() {}
        drop(first);
        // Given back once the tunnel is gone.
        let mut ok = false;
        for _ in 0..50 {
            if open().await.is_ok() {
                ok = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(ok, "the slot was not given back");
    });
}

#[test]
fn ipv6_clients_share_a_limit_per_configured_prefix() {
    let rt = runtime();
    let up = upstream(&rt, "u", fixed(200, Duration::ZERO));
    // A /64 by default: a host picks addresses from its whole /64, and would otherwise
    // escape a `client_ip` limit by taking another.
    for (prefix, same_64) in [
        ("", 429),
        ("ipv6_limit_prefix = 64", 429),
        ("ipv6_limit_prefix = 128", 200),
    ] {
        let gw = Gateway::start(
            &GatewayToml::new()
                .upstream("u", &[up.addr])
                .raw(&format!(
                    r#"[client_ip]
trusted_proxies = ["127.0.0.1"]
xff_depth = 1
{prefix}

[[rate_limit]]
name = "per-ip"
requests = 1
window_ms = 60000
key = "client_ip""#
                ))
                .route("r", "/", "u")
                .with(r#"rate_limits = ["per-ip"]"#)
                .build(),
        );
        let from =
            |a: &str| request(gw.http, "GET", "/", &[&format!("X-Forwarded-For: {a}")], "").status;
        assert_eq!(from("2001:db8:0:1::1"), 200, "{prefix}");
        // Another address of the same /64.
        assert_eq!(from("2001:db8:0:1:ffff::2"), same_64, "{prefix}");
        // Another /64 is another client.
        assert_eq!(from("2001:db8:0:2::1"), 200, "{prefix}");
    }
}
