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

/// The gateway's answer on `/shield/candidates`, as an L4 agent reads it.
fn answer(gw: &Gateway) -> Candidates {
    let r = admin_get(gw, PATH);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.headers["content-type"], "application/json");
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
        "[shield]\nmode = \"enforce\"\nthresholds = { auth = 5 }",
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
fn off_counts_nothing() {
    let rt = runtime();
    let (gw, _up) = keyed_gateway(&rt, "[shield]\nmode = \"off\"\nthresholds = { auth = 2 }");
    for _ in 0..5 {
        bad_key(addr(2), &gw);
    }
    let r = admin_get(&gw, PATH);
    assert_eq!(r.body, r#"{"mode":"off","candidates":[]}"#);
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
    let shield = |mode: &str| format!("[shield]\nmode = \"{mode}\"\nthresholds = {{ auth = 3 }}");
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
            .raw("[shield]\nmode = \"enforce\"\nthresholds = { auth = 2 }")
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
            "[shield]\nmode = \"sometimes\"",
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
