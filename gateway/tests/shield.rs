//! The shield through the real gateway binary: clients refused by the gateway itself pile
//! up into block candidates on `GET /shield/candidates`; other clients, an upstream's own
//! refusals, clients named by a trusted proxy's header and the proxy itself never do. Each test plays its clients from loopback
//! addresses of their own (127.0.0.0/8 is all local).

mod support;

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use sluice_util::shield::{Candidates, Class, Mode, PATH};
use support::{
    admin_get, fixed, metric, runtime, sha256_hex,
    source::{raw_from, request_from},
    upstream, Gateway, GatewayToml,
};

const KEY: &str = "k-good-0123456789";

/// An upstream, a consumer with [`KEY`], a route needing an API key, and `shield`.
fn keyed_gateway(rt: &tokio::runtime::Runtime, shield: &str) -> (Gateway, support::Upstream) {
    let up = upstream(rt, "u", fixed(200, Duration::ZERO));
    let gw = Gateway::start(&keyed_config(&up, shield));
    (gw, up)
}

fn keyed_config(up: &support::Upstream, shield: &str) -> String {
    GatewayToml::new()
        .upstream("u", &[up.addr])
        .raw(&format!(
            "[[consumer]]\nid = \"good\"\napi_keys = [\"{}\"]",
            sha256_hex(KEY.as_bytes())
        ))
        .route("r", "/", "u")
        .with(r#"auth = { methods = ["api_key"] }"#)
        .raw(shield)
        .build()
}

fn addr(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// The media type an L4 agent requires of the answer.
const MEDIA_TYPE: &str = "application/vnd.sluice.shield-candidates+json";

/// The gateway's answer on `/shield/candidates`, as an L4 agent reads it.
fn answer(gw: &Gateway) -> Candidates {
    let r = admin_get(gw, PATH);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.headers["content-type"], MEDIA_TYPE);
    Candidates::parse(r.body.as_bytes()).expect("a candidates document")
}

/// (prefix, class) of every candidate.
fn listed(gw: &Gateway) -> Vec<(String, Class)> {
    answer(gw)
        .candidates
        .iter()
        .map(|c| (c.prefix.to_string(), c.class))
        .collect()
}

fn bad_key(from: Ipv4Addr, gw: &Gateway) {
    let r = request_from(from, gw.http, "/", &["x-api-key: k-wrong"]);
    assert_eq!(r.status, 401, "{r:?}");
}

/// The gateway's log lines whose message is `message`.
fn logged(gw: &Gateway, message: &str) -> Vec<serde_json::Value> {
    let lines = gw.log.lock().map(|l| l.clone()).unwrap_or_default();
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == message)
        .collect()
}

const BECAME: &str = "shield: client is now a block candidate";

#[test]
fn bad_api_keys_make_a_candidate_and_a_good_client_never_does() {
    let rt = runtime();
    let (gw, _up) = keyed_gateway(
        &rt,
        "[shield]\nwindow_secs = 3600\nmode = \"enforce\"\nthresholds = { auth = 5 }",
    );
    let (abuser, good) = (addr(2), addr(3));
    for _ in 0..4 {
        bad_key(abuser, &gw);
    }
    assert!(listed(&gw).is_empty(), "four of five");
    for _ in 0..10 {
        let r = request_from(good, gw.http, "/", &[&format!("x-api-key: {KEY}")]);
        assert_eq!(r.status, 200, "{r:?}");
    }
    // A good client's own few mistakes stay under the threshold.
    bad_key(good, &gw);
    bad_key(good, &gw);
    for _ in 0..3 {
        bad_key(abuser, &gw);
    }
    let got = answer(&gw);
    assert_eq!(got.mode, Mode::Enforce);
    assert_eq!(got.candidates.len(), 1, "{got:?}");
    let c = got.candidates[0];
    assert_eq!(c.prefix.to_string(), "127.0.0.2/32");
    assert_eq!(c.class, Class::Auth);
    assert_eq!(c.count, 5, "counted when it crossed");
    assert!(c.ttl_ms > 290_000 && c.ttl_ms <= 300_000, "{c:?}");
    let auth = "sluice_gateway_shield_refusals_total{class=\"auth\"}";
    assert_eq!(metric(&gw, auth), 9.0);
    assert_eq!(metric(&gw, "sluice_gateway_shield_candidates"), 1.0);
    assert_eq!(metric(&gw, "sluice_gateway_shield_tracked_clients"), 2.0);
    // One warning when it became a candidate, not one per refusal.
    let start = Instant::now();
    while logged(&gw, BECAME).is_empty() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let lines = logged(&gw, BECAME);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let f = &lines[0]["fields"];
    assert_eq!(lines[0]["level"], "WARN");
    assert_eq!(
        (&f["prefix"], &f["class"], &f["count"], &f["mode"]),
        (
            &"127.0.0.2/32".into(),
            &"auth".into(),
            &5.into(),
            &"enforce".into()
        )
    );
}

#[test]
fn the_candidates_answer_has_a_media_type_only_the_admin_listener_gives_it() {
    let rt = runtime();
    let (gw, _up) = keyed_gateway(&rt, "[shield]\nwindow_secs = 3600\nmode = \"enforce\"");
    let r = admin_get(&gw, PATH);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.headers["content-type"], MEDIA_TYPE);
    assert_eq!(
        Candidates::parse(r.body.as_bytes()).expect("the body is unchanged"),
        Candidates {
            mode: Mode::Enforce,
            candidates: Vec::new()
        }
    );
    // The same path on a listener that routes it to an app is the app's answer, which an
    // L4 agent probing that port must not take for candidates.
    let r = request_from(addr(60), gw.http, PATH, &[&format!("x-api-key: {KEY}")]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_ne!(r.headers["content-type"], MEDIA_TYPE);
}

#[test]
fn off_counts_nothing() {
    let rt = runtime();
    let (gw, _up) = keyed_gateway(
        &rt,
        "[shield]\nwindow_secs = 3600\nmode = \"off\"\nthresholds = { auth = 2 }",
    );
    for _ in 0..5 {
        bad_key(addr(2), &gw);
    }
    let r = admin_get(&gw, PATH);
    assert_eq!(r.body, r#"{"mode":"off","candidates":[]}"#);
    assert_eq!(r.headers["content-type"], MEDIA_TYPE);
    assert_eq!(
        metric(&gw, "sluice_gateway_shield_refusals_total{class=\"auth\"}"),
        0.0
    );
    assert_eq!(metric(&gw, "sluice_gateway_shield_tracked_clients"), 0.0);
}

#[test]
fn observe_then_enforce_then_off_by_reload() {
    let rt = runtime();
    let up = upstream(&rt, "u", fixed(200, Duration::ZERO));
    let shield = |mode: &str| {
        format!("[shield]\nwindow_secs = 3600\nmode = \"{mode}\"\nthresholds = {{ auth = 3 }}")
    };
    let gw = Gateway::start(&keyed_config(&up, &shield("observe")));
    for _ in 0..3 {
        bad_key(addr(4), &gw);
    }
    let got = answer(&gw);
    assert_eq!(got.mode, Mode::Observe);
    assert_eq!(listed(&gw), [("127.0.0.4/32".to_string(), Class::Auth)]);
    // Enforce: the candidate found while observing is kept, now to be blocked.
    let reloaded = |generation: f64| {
        let start = Instant::now();
        while metric(&gw, "sluice_gateway_config_generation") < generation {
            assert!(start.elapsed() < Duration::from_secs(10), "no reload");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    gw.rewrite(&keyed_config(&up, &shield("enforce")));
    reloaded(2.0);
    let got = answer(&gw);
    assert_eq!(got.mode, Mode::Enforce);
    assert_eq!(listed(&gw), [("127.0.0.4/32".to_string(), Class::Auth)]);
    // Off: nothing is offered or counted any more.
    gw.rewrite(&keyed_config(&up, &shield("off")));
    reloaded(3.0);
    bad_key(addr(4), &gw);
    let off = Candidates {
        mode: Mode::Off,
        candidates: Vec::new(),
    };
    assert_eq!(answer(&gw), off);
}

#[test]
fn an_upstream_s_own_refusals_do_not_count() {
    let rt = runtime();
    let up = upstream(&rt, "u", fixed(401, Duration::ZERO));
    let gw = Gateway::start(
        &GatewayToml::new()
            .upstream("u", &[up.addr])
            .route_all("r", "u")
            .raw("[shield]\nwindow_secs = 3600\nmode = \"enforce\"\nthresholds = { auth = 2 }")
            .build(),
    );
    for _ in 0..5 {
        let r = request_from(addr(8), gw.http, "/", &[]);
        assert_eq!(r.status, 401);
        // The upstream's answer, not a problem of the gateway's.
        assert_eq!(r.headers["content-type"], "application/json", "{r:?}");
    }
    assert!(listed(&gw).is_empty());
    assert_eq!(
        metric(&gw, "sluice_gateway_shield_refusals_total{class=\"auth\"}"),
        0.0
    );
}

#[test]
fn candidates_expire_after_their_ttl() {
    let rt = runtime();
    let (gw, _up) = keyed_gateway(&rt, "[shield]\nttl_secs = 1\nthresholds = { auth = 2 }");
    bad_key(addr(9), &gw);
    bad_key(addr(9), &gw);
    let got = answer(&gw);
    assert_eq!(got.mode, Mode::Observe, "the default mode");
    assert_eq!(got.candidates.len(), 1);
    assert!(got.candidates[0].ttl_ms <= 1000, "{got:?}");
    std::thread::sleep(Duration::from_millis(1300));
    assert!(listed(&gw).is_empty());
    assert_eq!(metric(&gw, "sluice_gateway_shield_candidates"), 0.0);
}

#[test]
fn a_client_named_only_in_x_forwarded_for_is_never_offered_nor_is_the_proxy() {
    let rt = runtime();
    let (gw, _up) = keyed_gateway(
        &rt,
        "[client_ip]\ntrusted_proxies = [\"127.0.0.1\"]\nxff_depth = 1\n\n\
         [shield]\nmode = \"enforce\"\nthresholds = { auth = 3, malformed = 3 }",
    );
    let proxy = addr(1);
    let via = |client: &str| {
        let xff = format!("X-Forwarded-For: {client}");
        let r = request_from(proxy, gw.http, "/", &["x-api-key: k-wrong", &xff]);
        assert_eq!(r.status, 401, "{r:?}");
    };
    // The L4 agents block by the packets' source address, and these clients' packets come
    // from the proxy: a block would stop nothing, and the proxy could name anyone. Not even
    // an address that is a real peer elsewhere (127.0.0.5) is taken from the header.
    for _ in 0..5 {
        via("203.0.113.7");
        via("127.0.0.5");
    }
    for host in ["2001:db8:1:2::5", "2001:db8:1:2::6", "2001:db8:1:2:ff::7"] {
        via(host);
    }
    // The proxy's own connection-level refusals (heads hyper cannot parse) name no one
    // either: the proxy is never a candidate.
    for _ in 0..4 {
        let r = raw_from(proxy, gw.http, b"BAD REQUEST LINE\r\n\r\n");
        assert_eq!(r.status, 400, "{r:?}");
    }
    // A peer that is not a trusted proxy is its own client, whatever header it sends.
    for _ in 0..3 {
        let r = request_from(
            addr(6),
            gw.http,
            "/",
            &["x-api-key: k-wrong", "X-Forwarded-For: 203.0.113.8"],
        );
        assert_eq!(r.status, 401, "{r:?}");
    }
    // Counted as each connection ends, which the client may see first.
    let malformed = "sluice_gateway_shield_refusals_total{class=\"malformed\"}";
    let start = Instant::now();
    while metric(&gw, malformed) < 4.0 && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(metric(&gw, malformed), 4.0);
    // Every refusal is seen; only the peer's own are held against it.
    let auth = "sluice_gateway_shield_refusals_total{class=\"auth\"}";
    assert_eq!(metric(&gw, auth), 16.0);
    assert_eq!(metric(&gw, "sluice_gateway_shield_tracked_clients"), 1.0);
    assert_eq!(listed(&gw), [("127.0.0.6/32".to_string(), Class::Auth)]);
}

#[test]
fn a_flood_of_addresses_stays_within_max_clients_and_keeps_the_candidate() {
    let rt = runtime();
    let (gw, _up) = keyed_gateway(&rt, "[shield]\nmax_clients = 50\nthresholds = { auth = 3 }");
    let abuser = addr(9);
    for _ in 0..3 {
        bad_key(abuser, &gw);
    }
    // Ten times max_clients addresses, refused once each.
    for n in 0..500u32 {
        let [_, _, hi, lo] = n.to_be_bytes();
        bad_key(Ipv4Addr::new(127, 1, hi, lo), &gw);
    }
    let tracked = metric(&gw, "sluice_gateway_shield_tracked_clients");
    assert!(tracked <= 50.0, "{tracked}");
    let evictions = metric(&gw, "sluice_gateway_shield_evictions_total");
    assert!(evictions >= 450.0, "{evictions}");
    assert_eq!(listed(&gw), [("127.0.0.9/32".to_string(), Class::Auth)]);
}

#[test]
fn only_a_limit_on_the_client_s_own_address_makes_its_429s_count() {
    let rt = runtime();
    let fast = upstream(&rt, "fast", fixed(200, Duration::ZERO));
    let slow = upstream(&rt, "slow", fixed(200, Duration::from_secs(1)));
    let gw = Gateway::start(
        &GatewayToml::new()
            .upstream("fast", &[fast.addr])
            .upstream("slow", &[slow.addr])
            .raw(
                "[[rate_limit]]\nname = \"shared\"\nrequests = 1\nwindow_ms = 60000\nkey = \"route\"\n\n\
                 [[rate_limit]]\nname = \"by-header\"\nrequests = 1\nwindow_ms = 60000\nkey = { header = \"x-user\" }\n\n\
                 [[rate_limit]]\nname = \"own\"\nrequests = 1\nwindow_ms = 60000\nkey = \"client_ip\"\n\n\
                 [[rate_limit]]\nname = \"one-at-once\"\nconcurrent = 1\nkey = \"client_ip\"",
            )
            .route("shared", "/shared", "fast")
            .with("rate_limits = [\"shared\"]")
            .route("by-header", "/by-header", "fast")
            .with("rate_limits = [\"by-header\"]")
            .route("own", "/own", "fast")
            .with("rate_limits = [\"own\"]")
            .route("slow", "/slow", "slow")
            .with("rate_limits = [\"one-at-once\"]")
            .raw("[shield]\nwindow_secs = 3600\nmode = \"enforce\"\nthresholds = { rate_limited = 3 }")
            .build(),
    );
    let get = |from: u8, path: &str, extra: &[&str]| request_from(addr(from), gw.http, path, extra);
    // One caller drains the route's bucket: everyone now gets 429s, through no fault of
    // their own. Nor is a header's bucket an address's.
    assert_eq!(get(20, "/shared", &[]).status, 200);
    assert_eq!(get(20, "/by-header", &["x-user: shared"]).status, 200);
    for from in 20..24 {
        for _ in 0..4 {
            assert_eq!(get(from, "/shared", &[]).status, 429);
            assert_eq!(get(from, "/by-header", &["x-user: shared"]).status, 429);
        }
    }
    // A slow upstream holds the only slot: the client's next requests are refused, but it
    // is the upstream's doing.
    let http = gw.http;
    let held = std::thread::spawn(move || request_from(addr(25), http, "/slow", &[]).status);
    let start = Instant::now();
    while slow.hits.load(std::sync::atomic::Ordering::SeqCst) < 1 {
        assert!(start.elapsed() < Duration::from_secs(5), "never arrived");
        std::thread::sleep(Duration::from_millis(10));
    }
    for _ in 0..4 {
        assert_eq!(get(25, "/slow", &[]).status, 429);
    }
    assert_eq!(held.join().expect("thread"), 200);
    assert!(listed(&gw).is_empty(), "{:?}", listed(&gw));
    assert_eq!(metric(&gw, "sluice_gateway_shield_tracked_clients"), 0.0);
    let rate_limited = "sluice_gateway_shield_refusals_total{class=\"rate_limited\"}";
    assert_eq!(metric(&gw, rate_limited), 0.0);
    assert_eq!(metric(&gw, "sluice_gateway_shield_excused_total"), 36.0);
    // A client that runs through its own quota is at fault.
    assert_eq!(get(26, "/own", &[]).status, 200);
    for _ in 0..3 {
        assert_eq!(get(26, "/own", &[]).status, 429);
    }
    assert_eq!(
        listed(&gw),
        [("127.0.0.26/32".to_string(), Class::RateLimited)]
    );
    assert_eq!(metric(&gw, rate_limited), 3.0);
}

/// An HS256 token for `iss`, with `kid`, signed with `secret`.
fn hs256(iss: &str, kid: Option<&str>, secret: &[u8]) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = kid.map(str::to_string);
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    let claims = serde_json::json!({ "iss": iss, "sub": "someone", "exp": exp });
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .expect("token")
}

#[test]
fn a_401_for_keys_the_gateway_lacks_never_counts_a_forged_signature_does() {
    let rt = runtime();
    let up = upstream(&rt, "u", fixed(200, Duration::ZERO));
    let dir = support::Scratch::new("shield-jwt");
    let secret = b"a-shared-secret-of-thirty-two-bytes-at-least";
    let secret_file = dir.path("hmac");
    std::fs::write(&secret_file, secret).expect("write");
    // The issuer's key set is unreachable (port 9, discard): a token naming a kid the
    // gateway has not seen gets a 401 that every client of a rotated issuer would get.
    let gw = Gateway::start(
        &GatewayToml::new()
            .upstream("u", &[up.addr])
            .raw(&format!(
                "[[jwt_issuer]]\nname = \"hs\"\nissuer = \"https://hs.test\"\nalgorithms = [\"HS256\", \"RS256\"]\n\
                 hmac_secrets = [{{ file = \"{secret_file}\", kid = \"k1\" }}]\n\
                 jwks_url = \"http://127.0.0.1:9/jwks.json\""
            ))
            .route_all("r", "u")
            .with("auth = { methods = [\"jwt\"] }")
            .raw("[shield]\nwindow_secs = 3600\nmode = \"enforce\"\nthresholds = { auth = 3 }")
            .build(),
    );
    let bearer = |from: u8, token: &str| {
        let r = request_from(
            addr(from),
            gw.http,
            "/",
            &[&format!("Authorization: Bearer {token}")],
        );
        assert_eq!(r.status, 401, "{r:?}");
        r.body
    };
    let good = hs256("https://hs.test", Some("k1"), secret);
    let r = request_from(
        addr(30),
        gw.http,
        "/",
        &[&format!("Authorization: Bearer {good}")],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let unknown_kid = hs256("https://hs.test", Some("k2"), secret);
    // RS256, for which the gateway has no key at all (the key set never came).
    let no_key = {
        use base64::Engine;
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        let rest = good.split_once('.').map_or("", |(_, rest)| rest);
        format!("{header}.{rest}")
    };
    for from in 31..35 {
        for _ in 0..4 {
            assert!(bearer(from, &unknown_kid).contains("no key with kid"));
            assert!(bearer(from, &no_key).contains("no key for the algorithm"));
        }
    }
    assert!(listed(&gw).is_empty(), "{:?}", listed(&gw));
    assert_eq!(metric(&gw, "sluice_gateway_shield_excused_total"), 32.0);
    // A signature that does not verify with a key the gateway has is the client's doing.
    let forged = hs256(
        "https://hs.test",
        Some("k1"),
        b"not-the-secret-not-the-secret-not",
    );
    for _ in 0..3 {
        assert!(bearer(35, &forged).contains("bad signature"));
    }
    assert_eq!(listed(&gw), [("127.0.0.35/32".to_string(), Class::Auth)]);
}

const BRAKED: &str =
    "shield: refusals look server-side, not abuse: no new block candidates for a window";

#[test]
fn when_every_client_is_refused_at_once_the_brake_stops_new_candidates_and_warns_once() {
    let rt = runtime();
    let (gw, _up) = keyed_gateway(
        &rt,
        "[shield]\nwindow_secs = 3600\nmode = \"enforce\"\nmin_new_candidates = 3\nmax_new_candidate_share = 0.5\n\
         thresholds = { auth = 2 }",
    );
    // Ten clients, all refused alike (the consumers' keys went missing, say): half of the
    // ten counted are offered (above the floor of three), then nothing new for a window.
    for _ in 0..3 {
        for last in 40..50 {
            bad_key(addr(last), &gw);
        }
    }
    let got = listed(&gw);
    assert_eq!(got.len(), 5, "{got:?}");
    assert_eq!(metric(&gw, "sluice_gateway_shield_brake"), 1.0);
    assert!(metric(&gw, "sluice_gateway_shield_braked_total") >= 5.0);
    // Those held stay.
    bad_key(addr(40), &gw);
    assert_eq!(listed(&gw), got);
    let start = Instant::now();
    while logged(&gw, BRAKED).is_empty() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let lines = logged(&gw, BRAKED);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["level"], "WARN");
    assert_eq!(lines[0]["fields"]["new_candidates"], 5);
    assert_eq!(logged(&gw, BECAME).len(), 5);
}

#[test]
fn shield_settings_are_refused_by_field() {
    let check = |section: &str| {
        let dir = support::Scratch::new("shield-check");
        let path = dir.path("gw.toml");
        std::fs::write(&path, GatewayToml::new().raw(section).build()).expect("write");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-gateway"))
            .args(["check", "--config", &path])
            .output()
            .expect("check");
        assert!(!out.status.success(), "{section} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    for (section, want) in [
        (
            "[shield]\nthresholds = { auth = 2000000 }",
            "gw.toml: shield.thresholds.auth: at most 1000000",
        ),
        (
            "[shield]\nwindow_secs = 0",
            "gw.toml: shield.window_secs: between 1 and 3600",
        ),
        (
            "[shield]\nmax_candidates = 5000",
            "gw.toml: shield.max_candidates: between 1 and 4096",
        ),
        (
            "[shield]\nmax_new_candidate_share = 2.0",
            "gw.toml: shield.max_new_candidate_share: between 0 and 1",
        ),
        (
            "[shield]\nwindow_secs = 3600\nmode = \"sometimes\"",
            "unknown variant `sometimes`",
        ),
    ] {
        let said = check(section);
        assert!(
            said.contains(want),
            "{section}\n  said {said}\n  wanted {want}"
        );
    }
}
