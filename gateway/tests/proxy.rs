//! The gateway with real sockets on loopback, against upstreams started by the tests.

mod support;

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use support::{fixed, request, runtime, upstream, Gateway, GatewayToml};

/// One upstream `a` at `addr` and one route `r` taking every request to it.
fn to_one(addr: std::net::SocketAddr) -> String {
    GatewayToml::new()
        .upstream("a", &[addr])
        .route_all("r", "a")
        .build()
}

#[test]
fn forwards_with_proxy_headers_and_strips_hop_by_hop() {
    let rt = runtime();
    let up = upstream(&rt, "a", fixed(200, Duration::ZERO));
    let gw = Gateway::start(
        &GatewayToml::new()
            .upstream("a", &[up.addr])
            .route("api", "/api", "a")
            .build(),
    );
    let trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let r = request(
        gw.http,
        "GET",
        "/api/items?x=1",
        &[
            &format!("traceparent: {trace}"),
            "X-Forwarded-For: 198.51.100.9",
            "Connection: close, x-secret",
            "x-secret: 1",
            "x-request-id: abc-123",
        ],
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let j = r.json();
    let h = &j["headers"];
    assert_eq!(j["path"], "/api/items?x=1");
    assert_eq!(h["x-forwarded-for"], "198.51.100.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "test.local");
    assert_eq!(
        h["forwarded"],
        "for=127.0.0.1;proto=http;host=\"test.local\""
    );
    assert_eq!(h["x-request-id"], "abc-123");
    assert_eq!(r.headers["x-request-id"], "abc-123");
    assert!(
        h.get("x-secret").is_none(),
        "a header named in Connection is hop-by-hop"
    );
    assert!(h.get("connection").is_none());
    let tp = h["traceparent"].as_str().expect("traceparent");
    assert!(
        tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-") && tp.ends_with("-01"),
        "{tp}"
    );
    assert_ne!(tp, trace, "our hop gets its own span id");
    // Without a request id, one is made and returned.
    let r = request(gw.http, "GET", "/api/x", &[], "");
    assert_eq!(r.headers["x-request-id"].len(), 32);
    assert_eq!(
        r.json()["headers"]["x-request-id"],
        r.headers["x-request-id"].as_str()
    );
}

#[test]
fn forwarding_headers_keep_every_earlier_hop_and_admit_no_forged_entry() {
    use std::io::Write as _;
    let rt = runtime();
    let up = upstream(&rt, "a", fixed(200, Duration::ZERO));
    let gw = Gateway::start(
        &GatewayToml::new()
            .upstream("a", &[up.addr])
            .route_all("all", "a")
            .build(),
    );
    // A Host whose quote would end `Forwarded`'s quoted host and start a forged entry is
    // not a host at all: 400.
    let mut s = support::connect(&gw);
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\";by=x,for=6.6.6.6;host=\"b\r\n\r\n")
        .expect("write");
    let r = support::read_one(&mut s).expect("reply");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("invalid Host"), "{}", r.body);
    // Two X-Forwarded-For lines, a header named `Close` listed by `Connection: close`, and
    // a Host that is a valid authority but not a plain host name.
    let mut s = support::connect(&gw);
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: a,for=6.6.6.6\r\n\
          X-Forwarded-For: 198.51.100.1\r\nX-Forwarded-For: 198.51.100.2\r\n\
          Forwarded: for=192.0.2.60\r\nConnection: close\r\nClose: x\r\n\r\n",
    )
    .expect("write");
    let r = support::read_one(&mut s).expect("reply");
    assert_eq!(r.status, 200, "{}", r.body);
    let j = r.json();
    let h = &j["headers"];
    assert_eq!(
        h["x-forwarded-for"], "198.51.100.1, 198.51.100.2, 127.0.0.1",
        "every earlier line is kept"
    );
    assert_eq!(
        h["forwarded"], "for=192.0.2.60, for=127.0.0.1;proto=http",
        "no host= from a Host that is not a plain host name"
    );
    assert!(
        h.get("close").is_none(),
        "a header named in Connection is hop-by-hop"
    );
}

#[test]
fn no_route_is_404_problem_json() {
    let rt = runtime();
    let up = upstream(&rt, "a", fixed(200, Duration::ZERO));
    let gw = Gateway::start(
        &GatewayToml::new()
            .upstream("a", &[up.addr])
            .route_all("only", "a")
            .with("path = { exact = \"/only\" }")
            .build(),
    );
    let r = request(gw.http, "GET", "/nope", &[], "");
    assert_eq!(r.status, 404);
    assert_eq!(r.headers["content-type"], "application/problem+json");
    let j = r.json();
    assert_eq!(j["status"], 404);
    assert_eq!(j["title"], "Not Found");
    assert_eq!(j["detail"], "no route for GET /nope");
}

#[test]
fn round_robin_spreads_evenly_and_splits_follow_weights() {
    let rt = runtime();
    let ups: Vec<_> = ["a", "b", "c"]
        .into_iter()
        .map(|n| upstream(&rt, n, fixed(200, Duration::ZERO)))
        .collect();
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    let other = upstream(&rt, "d", fixed(200, Duration::ZERO));
    let gw = Gateway::start(
        &GatewayToml::new()
            .upstream("p", &addrs)
            .upstream("q", &[other.addr])
            .route("rr", "/rr", "p")
            .raw(
                "[[route]]\nname = \"split\"\npath = { prefix = \"/split\" }\n\
                 splits = [{ upstream = \"p\", weight = 3 }, { upstream = \"q\", weight = 1 }]",
            )
            .build(),
    );
    for _ in 0..90 {
        assert_eq!(request(gw.http, "GET", "/rr", &[], "").status, 200);
    }
    for u in &ups {
        assert_eq!(u.hits.load(Ordering::SeqCst), 30);
    }
    for _ in 0..400 {
        assert_eq!(request(gw.http, "GET", "/split", &[], "").status, 200);
    }
    let q = other.hits.load(Ordering::SeqCst);
    assert!((60..140).contains(&q), "a 1-in-4 split got {q} of 400");
}

#[test]
fn retries_on_status_within_the_budget() {
    let rt = runtime();
    let bad = upstream(&rt, "bad", fixed(503, Duration::ZERO));
    let good = upstream(&rt, "good", fixed(200, Duration::ZERO));
    let retrying = |budget: u32| {
        GatewayToml::new()
            .upstream("p", &[bad.addr, good.addr])
            .route_all("r", "p")
            .with(&format!(
                "retries = {{ attempts = 1, on_status = [503], budget_percent = {budget} }}"
            ))
            .build()
    };
    // A generous budget: every request that met the failing target is retried on the other.
    let gw = Gateway::start(&retrying(100));
    let ok = (0..20)
        .filter(|_| request(gw.http, "GET", "/", &[], "").status == 200)
        .count();
    assert_eq!(ok, 20);
    drop(gw);
    // No budget beyond the floor of 3 retries per window: the rest of the 503s reach the client.
    let gw = Gateway::start(&retrying(0));
    let bad_before = bad.hits.load(Ordering::SeqCst);
    let statuses: Vec<u16> = (0..20)
        .map(|_| request(gw.http, "GET", "/", &[], "").status)
        .collect();
    let failed = statuses.iter().filter(|s| **s == 503).count();
    let reached_bad = bad.hits.load(Ordering::SeqCst) - bad_before;
    // Every request that met the failing target either failed or was one of the 3 retries.
    assert_eq!(reached_bad, failed + 3, "{statuses:?}");
    assert!(failed >= 5, "{statuses:?}");
    // POST is not idempotent: never retried.
    let posts = (0..4)
        .filter(|_| request(gw.http, "POST", "/", &[], "x").status == 503)
        .count();
    assert_eq!(posts, 2);
}

#[test]
fn timeouts_connect_failures_and_concurrency_limits() {
    let rt = runtime();
    let slow = upstream(&rt, "slow", fixed(200, Duration::from_millis(800)));
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let gw = Gateway::start(
        &GatewayToml::new()
            .upstream("slow", &[slow.addr])
            .upstream("dead", &[closed])
            .upstream("narrow", &[slow.addr])
            .with("max_concurrent_requests = 1")
            .route("slow", "/slow", "slow")
            .with("timeouts = { request_ms = 200 }")
            .route("dead", "/dead", "dead")
            .route("narrow", "/narrow", "narrow")
            .build(),
    );
    let t = Instant::now();
    let r = request(gw.http, "GET", "/slow", &[], "");
    assert_eq!(r.status, 504, "{}", r.body);
    assert!(
        t.elapsed() < Duration::from_millis(700),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(r.headers["content-type"], "application/problem+json");
    let r = request(gw.http, "GET", "/dead", &[], "");
    assert_eq!(r.status, 502);
    assert!(r.json()["detail"]
        .as_str()
        .is_some_and(|d| d.contains("connection failed")));
    // One request holds the only slot; the next is turned away with Retry-After.
    let addr = gw.http;
    let first = std::thread::spawn(move || request(addr, "GET", "/narrow", &[], "").status);
    std::thread::sleep(Duration::from_millis(200));
    let r = request(gw.http, "GET", "/narrow", &[], "");
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(first.join().expect("first"), 200);
}

#[test]
fn hyper_s_own_limit_of_100_header_fields_applies_by_default() {
    // A redirect route: the gateway answers itself (an upstream would apply its own limit
    // to the fields the gateway adds).
    let gw = Gateway::start(
        &GatewayToml::new()
            .raw("[[route]]\nname = \"r\"\nredirect = { location = \"http://x/\" }")
            .build()
            .replace("max_headers = 50\n", ""),
    );
    // The request helper sends Host and Connection: 98 more make 100 fields, 99 make 101.
    for (extra, status) in [(98, 302), (99, 431)] {
        let many: Vec<String> = (0..extra).map(|i| format!("x-h{i}: v")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let r = request(gw.http, "GET", "/", &many, "");
        assert_eq!(r.status, status, "{extra} fields besides Host: {r:?}");
    }
}

#[test]
fn client_limits_and_slowloris() {
    let rt = runtime();
    let up = upstream(&rt, "a", fixed(200, Duration::ZERO));
    let gw = Gateway::start(&to_one(up.addr));
    // Body over max_body_bytes (1024).
    let r = request(gw.http, "POST", "/", &[], &"x".repeat(2000));
    assert_eq!(r.status, 413);
    assert_eq!(r.headers["content-type"], "application/problem+json");
    // More header fields than max_headers (50).
    let many: Vec<String> = (0..80).map(|i| format!("x-h{i}: v")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let r = request(gw.http, "GET", "/", &many, "");
    assert_eq!(r.status, 431, "{r:?}");
    // Slowloris: a head trickling in is cut off after header_read_timeout_ms (500).
    let mut s = TcpStream::connect(gw.http).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let start = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .expect("write");
    let mut buf = [0u8; 256];
    let mut closed = false;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(100));
        if s.write_all(b"X-Slow: 1\r\n").is_err() {
            closed = true;
            break;
        }
        s.set_nonblocking(true).expect("nonblocking");
        let r = s.read(&mut buf);
        s.set_nonblocking(false).expect("blocking");
        if r.is_ok() {
            closed = true;
            break;
        }
    }
    assert!(closed, "the slow client was not cut off");
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn h2c_prior_knowledge_with_curl() {
    let rt = runtime();
    let up = upstream(&rt, "a", fixed(200, Duration::ZERO));
    let gw = Gateway::start(&to_one(up.addr));
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "--http2-prior-knowledge",
            "-w",
            "\n%{http_version} %{http_code}",
        ])
        .arg(format!("http://{}/h2", gw.http))
        .output()
        .expect("curl (installed by cargo xtask setup)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("\n2 200"), "{text}");
    assert!(text.contains("\"upstream\":\"a\""), "{text}");
}

#[test]
fn reload_under_load_loses_nothing_and_bad_config_is_kept_out() {
    let rt = runtime();
    let a = upstream(&rt, "a", fixed(200, Duration::ZERO));
    let b = upstream(&rt, "b", fixed(200, Duration::ZERO));
    let cfg = |target: std::net::SocketAddr| {
        GatewayToml::new()
            .upstream("p", &[target])
            .route_all("r", "p")
            .build()
    };
    let gw = Gateway::start(&cfg(a.addr));
    let addr = gw.http;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let load = std::thread::spawn(move || {
        let mut statuses = Vec::new();
        while !flag.load(Ordering::SeqCst) && statuses.len() < 5000 {
            statuses.push(request(addr, "GET", "/", &[], "").status);
        }
        statuses
    });
    std::thread::sleep(Duration::from_millis(300));
    gw.rewrite("this is not toml [");
    std::thread::sleep(Duration::from_millis(1500));
    let m = request(gw.admin, "GET", "/metrics", &[], "");
    assert!(
        m.body
            .contains("sluice_gateway_config_last_reload_success 0"),
        "{}",
        m.body
    );
    gw.rewrite(&cfg(b.addr));
    let switched = Instant::now();
    while b.hits.load(Ordering::SeqCst) == 0 && switched.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    let statuses = load.join().expect("load");
    assert!(
        b.hits.load(Ordering::SeqCst) > 0,
        "the new config never took over"
    );
    assert!(
        statuses.iter().all(|s| *s == 200),
        "failed requests during reload"
    );
    let m = request(gw.admin, "GET", "/metrics", &[], "");
    assert!(
        m.body.contains("sluice_gateway_config_generation 2"),
        "{}",
        m.body
    );
    assert!(m
        .body
        .contains("sluice_gateway_config_last_reload_success 1"));
    assert!(m
        .body
        .contains("sluice_gateway_requests_total{route=\"r\",method=\"GET\",status=\"200\"}"));
    assert!(m
        .body
        .contains("sluice_gateway_request_duration_seconds_count{route=\"r\"}"));
    assert!(m
        .body
        .contains("sluice_gateway_upstream_duration_seconds_count{upstream=\"p\"}"));
    assert!(m.body.contains("sluice_gateway_active_connections"));
}

#[test]
fn sigterm_drains_then_finishes_in_flight_requests() {
    let rt = runtime();
    let slow = upstream(&rt, "slow", fixed(200, Duration::from_millis(1000)));
    let mut gw = Gateway::start(
        &GatewayToml::new()
            .upstream("slow", &[slow.addr])
            .route_all("r", "slow")
            .build(),
    );
    assert_eq!(request(gw.admin, "GET", "/readyz", &[], "").status, 200);
    let addr = gw.http;
    let in_flight = std::thread::spawn(move || request(addr, "GET", "/", &[], ""));
    std::thread::sleep(Duration::from_millis(300));
    gw.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(100));
    // Listeners are closed: new connections are refused while the old request finishes.
    assert!(
        TcpStream::connect(gw.http).is_err(),
        "listener still open after SIGTERM"
    );
    let r = in_flight.join().expect("in flight");
    assert_eq!(r.status, 200, "the in-flight request completes");
    assert!(gw.wait().success());
}

#[test]
fn methods_outside_the_standard_set_share_one_metrics_label() {
    let rt = runtime();
    let up = upstream(&rt, "a", fixed(200, Duration::ZERO));
    let gw = Gateway::start(&to_one(up.addr));
    for method in ["GET", "PATCH", "FOOBAR", "BAZ", "get"] {
        assert_eq!(
            request(gw.http, method, "/", &[], "").status,
            200,
            "{method}"
        );
    }
    let m = request(gw.admin, "GET", "/metrics", &[], "").body;
    let series = |method: &str| {
        format!("sluice_gateway_requests_total{{route=\"r\",method=\"{method}\",status=\"200\"}} ")
    };
    // Methods are case-sensitive: `get` is not GET.
    for (method, n) in [("GET", 1), ("PATCH", 1), ("other", 3)] {
        assert!(
            m.contains(&format!("{}{n}\n", series(method))),
            "{method}: {m}"
        );
    }
    assert!(!m.contains("FOOBAR") && !m.contains("BAZ"), "{m}");
}

#[test]
fn admin_drain_fails_readiness() {
    let rt = runtime();
    let up = upstream(&rt, "a", fixed(200, Duration::ZERO));
    let gw = Gateway::start(&to_one(up.addr));
    assert_eq!(request(gw.admin, "GET", "/healthz", &[], "").status, 200);
    assert_eq!(request(gw.admin, "GET", "/readyz", &[], "").status, 200);
    assert_eq!(request(gw.admin, "POST", "/drain", &[], "").status, 200);
    let r = request(gw.admin, "GET", "/readyz", &[], "");
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["content-type"], "application/problem+json");
    // Draining stops new flows at L4; requests that still arrive are served.
    assert_eq!(request(gw.http, "GET", "/", &[], "").status, 200);
}

/// A web page the operator has open cannot drive the admin API: a browser request naming a
/// host that is not an address or localhost (DNS rebinding) is refused, and so is a change
/// a browser says comes from another origin; clients that are not browsers, and the
/// dashboard itself, are served.
#[test]
fn admin_refuses_what_a_browser_was_led_to_send() {
    let rt = runtime();
    let up = upstream(&rt, "a", fixed(200, Duration::ZERO));
    let gw = Gateway::start(
        &GatewayToml::empty()
            .raw(
                "[admin]\nlisten = \"127.0.0.1:0\"\nhost_names = [\"gw1.internal\"]\n\n\
                 [[listener]]\nname = \"main\"\naddress = \"127.0.0.1:0\"",
            )
            .upstream("a", &[up.addr])
            .route_all("r", "a")
            .build(),
    );
    let send = |method: &str, path: &str, host: &str, extra: &[&str]| {
        support::raw(
            gw.admin,
            sluice_e2e::http::request_text(method, path, host, extra, "").as_bytes(),
        )
    };
    let firefox = "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Firefox/128.0";
    let own = gw.admin.to_string();
    // Rebinding: the page's own name in Host, same-origin as far as the browser knows.
    let r = send(
        "GET",
        "/metrics",
        "rebound.example:9000",
        &[firefox, "Sec-Fetch-Site: same-origin"],
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.headers["content-type"], "application/problem+json");
    // The same from a page that set its own User-Agent (Firefox allows it) and sent no
    // Sec-Fetch-* (browsers send none to plain http origins): the Host still gives it away.
    let r = send(
        "GET",
        "/metrics",
        "rebound.example:9000",
        &["User-Agent: x"],
    );
    assert_eq!(r.status, 403, "{}", r.body);
    // A post that looks like an old browser's and says nothing of its origin.
    assert_eq!(send("POST", "/drain", &own, &[firefox]).status, 403);
    let r = send(
        "POST",
        "/drain",
        "rebound.example:9000",
        &[firefox, "Origin: http://rebound.example:9000"],
    );
    assert_eq!(r.status, 403);
    // A form posted from another site to the listener's address.
    let r = send(
        "POST",
        "/drain",
        &own,
        &[
            firefox,
            "Origin: https://evil.example",
            "Sec-Fetch-Site: cross-site",
        ],
    );
    assert_eq!(r.status, 403);
    assert_eq!(
        send("GET", "/readyz", &own, &[]).status,
        200,
        "nothing was drained"
    );
    // The dashboard (same origin), and Prometheus or curl by address, are served; by a
    // name only once it is in `[admin] host_names`.
    let origin = format!("Origin: http://{own}");
    assert_eq!(send("GET", "/", &own, &[firefox]).status, 200);
    assert_eq!(
        send(
            "GET",
            "/dashboard/state",
            &format!("localhost:{}", gw.admin.port()),
            &[firefox]
        )
        .status,
        200
    );
    assert_eq!(
        send(
            "GET",
            "/metrics",
            "gw2.internal:9000",
            &["User-Agent: Prometheus/2.42.0"]
        )
        .status,
        403
    );
    assert_eq!(
        send(
            "GET",
            "/metrics",
            "GW1.internal:9000",
            &["User-Agent: Prometheus/2.42.0"]
        )
        .status,
        200,
        "a name in host_names"
    );
    assert_eq!(
        send("GET", "/metrics", &own, &["User-Agent: Prometheus/2.42.0"]).status,
        200
    );
    assert_eq!(
        send(
            "POST",
            "/drain",
            &own,
            &[firefox, &origin, "Sec-Fetch-Site: same-origin"]
        )
        .status,
        200
    );
    assert_eq!(send("GET", "/readyz", &own, &[]).status, 503);
}

/// An upstream whose `/healthz` answers 503 while `sick` is set, and that counts the other
/// requests it serves.
fn checked(
    rt: &tokio::runtime::Runtime,
    name: &'static str,
    sick: std::sync::Arc<std::sync::atomic::AtomicBool>,
    served: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> support::Upstream {
    upstream(
        rt,
        name,
        std::sync::Arc::new(move |path: &str| {
            if path == "/healthz" {
                (
                    if sick.load(Ordering::SeqCst) {
                        503
                    } else {
                        200
                    },
                    Duration::ZERO,
                )
            } else {
                served.fetch_add(1, Ordering::SeqCst);
                (200, Duration::ZERO)
            }
        }),
    )
}

#[test]
fn active_health_checks_take_a_target_out_and_back() {
    use std::sync::{
        atomic::{AtomicBool, AtomicUsize},
        Arc,
    };
    let rt = runtime();
    let (a_served, b_served) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let sick = Arc::new(AtomicBool::new(false));
    let a = checked(&rt, "a", Arc::new(AtomicBool::new(false)), a_served.clone());
    let b = checked(&rt, "b", sick.clone(), b_served.clone());
    let gw = Gateway::start(
        &GatewayToml::new()
            .upstream("p", &[a.addr, b.addr])
            .with(
                "health = { path = \"/healthz\", interval_ms = 100, timeout_ms = 50, rise = 2, fall = 2 }",
            )
            .route_all("r", "p")
            .build(),
    );
    let burst =
        || (0..20).for_each(|_| assert_eq!(request(gw.http, "GET", "/", &[], "").status, 200));
    burst();
    assert!(b_served.load(Ordering::SeqCst) > 0);
    sick.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(500));
    let before = b_served.load(Ordering::SeqCst);
    burst();
    assert_eq!(
        b_served.load(Ordering::SeqCst),
        before,
        "a failing target gets no requests"
    );
    let m = request(gw.admin, "GET", "/metrics", &[], "");
    assert!(
        m.body.contains(&format!(
            "sluice_gateway_upstream_healthy{{upstream=\"p\",target=\"{}\"}} 0",
            b.addr
        )),
        "{}",
        m.body
    );
    sick.store(false, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(500));
    let before = b_served.load(Ordering::SeqCst);
    burst();
    assert!(
        b_served.load(Ordering::SeqCst) > before,
        "a recovered target is used again"
    );
    assert!(a_served.load(Ordering::SeqCst) > 0);
}

#[test]
fn outlier_ejection_and_return() {
    let rt = runtime();
    let good = upstream(&rt, "good", fixed(200, Duration::ZERO));
    let bad = upstream(&rt, "bad", fixed(500, Duration::ZERO));
    let gw = Gateway::start(
        &GatewayToml::new()
            .upstream("p", &[good.addr, bad.addr])
            .with("outlier = { consecutive_5xx = 3, base_ejection_ms = 600 }")
            .route_all("r", "p")
            .build(),
    );
    // Round robin sends every other request to the failing target until it is ejected.
    let statuses: Vec<u16> = (0..10)
        .map(|_| request(gw.http, "GET", "/", &[], "").status)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 500).count(),
        3,
        "{statuses:?}"
    );
    let hits = bad.hits.load(Ordering::SeqCst);
    for _ in 0..10 {
        assert_eq!(request(gw.http, "GET", "/", &[], "").status, 200);
    }
    assert_eq!(bad.hits.load(Ordering::SeqCst), hits, "ejected");
    // After the ejection time it is tried again (and, still failing, ejected for longer).
    std::thread::sleep(Duration::from_millis(700));
    for _ in 0..10 {
        request(gw.http, "GET", "/", &[], "");
    }
    assert!(
        bad.hits.load(Ordering::SeqCst) > hits,
        "back after its ejection time"
    );
}

#[test]
fn websocket_echo_through_the_gateway() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let rt = runtime();
    let echo = support::websocket_echo(&rt);
    let gw = Gateway::start(
        &GatewayToml::new()
            .upstream("e", &[echo])
            .route("ws", "/ws", "e")
            .build(),
    );
    let addr = gw.http;
    rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut ws, resp) = tokio_tungstenite::client_async("ws://test.local/ws/chat", tcp)
            .await
            .expect("handshake through the gateway");
        assert_eq!(resp.status(), 101);
        for text in ["hello", "through", "sluice"] {
            ws.send(Message::Text(text.into())).await.expect("send");
            let back = ws.next().await.expect("frame").expect("message");
            assert_eq!(back, Message::Text(text.into()));
        }
        ws.close(None).await.expect("close");
    });
}

#[test]
fn session_cookie_pins_a_client_to_its_target() {
    let rt = runtime();
    let ups: Vec<_> = ["a", "b", "c"]
        .into_iter()
        .map(|n| upstream(&rt, n, fixed(200, Duration::ZERO)))
        .collect();
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    let gw = Gateway::start(
        &GatewayToml::new()
            .upstream("p", &addrs)
            .with("session_cookie = \"sluice_sid\"")
            .route_all("r", "p")
            .build(),
    );
    let first = request(gw.http, "GET", "/", &[], "");
    let set = first
        .headers
        .get("set-cookie")
        .expect("a session cookie is set")
        .clone();
    assert!(
        set.starts_with("sluice_sid=") && set.contains("HttpOnly"),
        "{set}"
    );
    let cookie = set.split(';').next().expect("pair").to_string();
    let home = first.json()["upstream"].clone();
    for _ in 0..12 {
        let r = request(
            gw.http,
            "GET",
            "/",
            &[&format!("Cookie: other=1; {cookie}")],
            "",
        );
        assert_eq!(
            r.json()["upstream"],
            home,
            "round robin would have moved it"
        );
        assert!(
            !r.headers.contains_key("set-cookie"),
            "no new cookie while it holds"
        );
    }
    // Without the cookie, round robin as usual.
    let seen: std::collections::HashSet<String> = (0..6)
        .map(|_| request(gw.http, "GET", "/", &[], "").json()["upstream"].to_string())
        .collect();
    assert_eq!(seen.len(), 3);
}

#[test]
fn freebind_binds_an_address_not_yet_on_this_host() {
    let rt = runtime();
    let up = upstream(&rt, "a", fixed(200, Duration::ZERO));
    // 198.51.100.77 is on no interface here (a VIP before it is added to lo).
    let cfg = |freebind: bool| {
        GatewayToml::empty()
            .raw(&format!(
                "[admin]\nlisten = \"127.0.0.1:0\"\nhost_names = [\"test.local\"]\n[[listener]]\nname = \"vip\"\naddress = \"198.51.100.77:8080\"\nfreebind = {freebind}\n\
                 [[listener]]\nname = \"lo\"\naddress = \"127.0.0.1:0\""
            ))
            .upstream("a", &[up.addr])
            .route_all("r", "a")
            .build()
    };
    let gw = Gateway::start(&cfg(true));
    assert_eq!(
        gw.listeners["vip"],
        "198.51.100.77:8080".parse().expect("literal")
    );
    assert_eq!(request(gw.listeners["lo"], "GET", "/", &[], "").status, 200);
    drop(gw);
    // Without freebind the same address cannot be bound, and the error says which listener.
    let scratch = support::Scratch::new("freebind");
    let dir = scratch.0.clone();
    std::fs::write(dir.join("gw.toml"), cfg(false)).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-gateway"))
        .args(["run", "--config"])
        .arg(dir.join("gw.toml"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listener vip on 198.51.100.77:8080"), "{err}");
}

#[test]
fn idle_keep_alive_connections_are_closed() {
    let rt = runtime();
    let up = upstream(&rt, "a", fixed(200, Duration::ZERO));
    let gw = Gateway::start(&to_one(up.addr));
    let mut s = TcpStream::connect(gw.http).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).expect("response");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // Kept alive, then idle past header_read_timeout_ms (500): the gateway closes it.
    let idle = Instant::now();
    let n = s.read(&mut buf).expect("read until close");
    assert_eq!(n, 0, "closed without another response");
    let waited = idle.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_millis(1500),
        "{waited:?}"
    );
}

#[test]
fn access_log_writes_the_configured_fields() {
    let rt = runtime();
    let up = upstream(&rt, "a", fixed(200, Duration::ZERO));
    let gw = Gateway::start(
        &GatewayToml::new()
            .raw("[access_log]\nfields = [\"status\", \"path\", \"client\"]")
            .upstream("a", &[up.addr])
            .route_all("r", "a")
            .build(),
    );
    assert_eq!(
        request(gw.http, "GET", "/logged?q=1", &["User-Agent: t"], "").status,
        200
    );
    let start = Instant::now();
    let line = loop {
        let found = gw
            .log
            .lock()
            .expect("log")
            .iter()
            .find(|l| l.contains("\"target\":\"access\""))
            .cloned();
        if let Some(l) = found {
            break l;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no access log line"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let v: serde_json::Value = serde_json::from_str(&line).expect("one JSON line");
    let fields = v["fields"].as_object().expect("fields");
    let mut keys: Vec<&str> = fields.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["client", "message", "path", "status"], "{line}");
    assert_eq!(fields["status"], 200);
    assert_eq!(fields["path"], "/logged");
    assert_eq!(fields["client"], "127.0.0.1");
}

#[test]
fn workers_do_not_share_an_address_another_gateway_listens_on() {
    let rt = runtime();
    let up = upstream(&rt, "a", fixed(200, Duration::ZERO));
    let first = Gateway::start(&to_one(up.addr));
    // A second gateway with two workers (SO_REUSEPORT sockets) on the first one's address,
    // as a copy started by mistake, or a new one while the old one drains.
    let config = to_one(up.addr).replace(
        "address = \"127.0.0.1:0\"",
        &format!("address = \"{}\"", first.http),
    );
    assert!(config.contains(&first.http.to_string()), "{config}");
    let dir = std::env::temp_dir().join(format!("sluice-gw-taken-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("gateway.toml");
    std::fs::write(&path, &config).expect("config");
    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-gateway"))
        .args(["run", "--workers", "2", "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("gateway");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = second.try_wait().expect("wait") {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = second.kill();
            let _ = second.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = std::fs::remove_dir_all(&dir);
    let mut stderr = String::new();
    if let Some(mut e) = second.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    let status = status.expect("the second gateway exits rather than sharing the address");
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("listener main on {}", first.http)) && stderr.contains("in use"),
        "{stderr}"
    );
    // The first one still has every connection.
    for _ in 0..20 {
        assert_eq!(request(first.http, "GET", "/", &[], "").status, 200);
    }
}
