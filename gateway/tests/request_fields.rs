//! Request fields are read one way by the router, the policies and the upstream: protocol
//! switches other than WebSocket, `Connection`-named fields, underscored names, a second
//! credential and transfer codings other than `chunked` (real gateway, real sockets, an
//! upstream that tells what it received).

mod support;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use support::{
    fixed, parse, raw, read_head, request, runtime, sha256_hex, upstream, Gateway, GatewayToml,
    Reply, Scratch, Upstream,
};

/// An upstream that grants any protocol switch: it answers `101` with `switch_to` (or, if
/// `None`, the protocol asked for) to a request with `Upgrade`, then echoes the bytes; any
/// other request gets `200` with the request head it received as its body. It is what an
/// `h2c`-capable server (Go's `h2c.NewHandler`, Tomcat, Jetty) looks like to the gateway.
fn switching_upstream(switch_to: Option<&'static str>) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                loop {
                    let Some(head) = read_head(&mut s) else {
                        return;
                    };
                    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                    let asked = text
                        .lines()
                        .find_map(|l| l.strip_prefix("upgrade:"))
                        .map(|p| p.trim().to_string());
                    if let Some(asked) = asked {
                        let to = switch_to.map_or(asked, str::to_string);
                        let _ = write!(
                            s,
                            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {to}\r\n\r\n"
                        );
                        let mut buf = [0u8; 1024];
                        while let Ok(n) = s.read(&mut buf) {
                            if n == 0 || s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                        return;
                    }
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                        head.len()
                    );
                    let _ = s.write_all(&head);
                }
            });
        }
    });
    addr
}

/// A gateway with one route for every path, to an upstream that echoes the request.
fn one_route(rt: &tokio::runtime::Runtime) -> (Upstream, Gateway) {
    let up = upstream(rt, "u", fixed(200, Duration::ZERO));
    let gw = Gateway::start(
        &GatewayToml::new()
            .upstream("u", &[up.addr])
            .route("r", "/", "u")
            .build(),
    );
    (up, gw)
}

fn problem(reply: &Reply, status: u16) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(
        reply.headers.get("content-type").map(String::as_str),
        Some("application/problem+json"),
        "{reply:?}"
    );
}

#[test]
fn an_h2c_upgrade_is_served_as_a_plain_request_and_opens_no_tunnel() {
    let up = switching_upstream(None);
    let gw = Gateway::start(
        &GatewayToml::new()
            .upstream("app", &[up])
            .route("public", "/public", "app")
            .build(),
    );
    // The smuggling attempt: an open route's request asking to switch to h2c, after which
    // the client would speak HTTP/2 to the upstream, every further request unrouted.
    let reply = raw(
        gw.http,
        b"GET /public/x HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade, HTTP2-Settings, close\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    let forwarded = reply.body.to_ascii_lowercase();
    assert!(
        forwarded.starts_with("get /public/x http/1.1"),
        "{forwarded}"
    );
    for field in ["upgrade:", "http2-settings:", "connection: upgrade"] {
        assert!(
            !forwarded.contains(field),
            "{field} reached the upstream: {forwarded}"
        );
    }
    // Not named in Connection, HTTP2-Settings is still this hop's alone.
    let reply = raw(
        gw.http,
        b"GET /public/y HTTP/1.1\r\nHost: app.test\r\nConnection: upgrade, close\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        !reply.body.to_ascii_lowercase().contains("http2-settings"),
        "{}",
        reply.body
    );
}

/// Sends a WebSocket handshake for `/ws` and reads the answer's head (a `101` has no body).
fn websocket_handshake(gw: &Gateway) -> Reply {
    let mut s = TcpStream::connect(gw.http).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .expect("write");
    parse(&read_head(&mut s).expect("an answer"))
}

#[test]
fn an_upstream_switch_must_be_to_the_protocol_asked_for() {
    // Asked for WebSocket, the upstream switches to h2c: refused.
    let rogue = Gateway::start(
        &GatewayToml::new()
            .upstream("app", &[switching_upstream(Some("h2c"))])
            .route("ws", "/ws", "app")
            .build(),
    );
    problem(&websocket_handshake(&rogue), 502);
    // The same switch to WebSocket goes through (the positive control).
    let fair = Gateway::start(
        &GatewayToml::new()
            .upstream("app", &[switching_upstream(None)])
            .route("ws", "/ws", "app")
            .build(),
    );
    let reply = websocket_handshake(&fair);
    assert_eq!(reply.status, 101, "{reply:?}");
    assert_eq!(
        reply.headers.get("upgrade").map(String::as_str),
        Some("websocket")
    );
}

#[test]
fn connection_cannot_remove_a_field_the_request_was_routed_on() {
    let rt = runtime();
    let admin = upstream(&rt, "admin", fixed(200, Duration::ZERO));
    let public = upstream(&rt, "public", fixed(200, Duration::ZERO));
    let gw = Gateway::start(
        &GatewayToml::new()
            .upstream("admin", &[admin.addr])
            .upstream("public", &[public.addr])
            .raw(
                "[[route]]\nname = \"tenant-a\"\nupstream = \"admin\"\nheaders = { \"x-tenant\" = \"a\" }\n\n\
                 [[route]]\nname = \"public\"\nhost = \"public.test\"\nupstream = \"public\"\n",
            )
            .build(),
    );
    let host = |extra: &str| {
        raw(
            gw.http,
            format!("GET /x HTTP/1.1\r\nHost: public.test\r\n{extra}\r\n").as_bytes(),
        )
    };
    // Routed on Host, then forwarded without it (the upstream's default virtual host) was
    // the hole: now the request has no Host to route on, and HTTP/1.1 needs one.
    problem(&host("Connection: close, host\r\n"), 400);
    let plain = host("Connection: close\r\n");
    assert_eq!(plain.status, 200, "{plain:?}");
    assert_eq!(plain.json()["headers"]["host"], "public.test");
    // Absolute form: the authority is routed, and forwarded as the Host; without a Host
    // field an HTTP/1.1 request is refused all the same (RFC 9112 §3.2).
    let absolute = |extra: &str| {
        raw(
            gw.http,
            format!("GET http://public.test/x HTTP/1.1\r\nHost: other.test\r\n{extra}\r\n")
                .as_bytes(),
        )
    };
    problem(&absolute("Connection: close, host\r\n"), 400);
    let routed = absolute("Connection: close\r\n");
    assert_eq!(routed.status, 200, "{routed:?}");
    assert_eq!(routed.json()["upstream"], "public");
    assert_eq!(routed.json()["headers"]["host"], "public.test");
    // A field a route matches on and Connection names is gone before routing too: the
    // request is not routed on it.
    let tenant = request(
        gw.http,
        "GET",
        "/x",
        &["x-tenant: a", "Connection: x-tenant"],
        "",
    );
    assert_eq!(tenant.status, 404, "{tenant:?}");
    assert_eq!(admin.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    let routed = request(gw.http, "GET", "/x", &["x-tenant: a"], "");
    assert_eq!(routed.json()["upstream"], "admin");
    assert_eq!(routed.json()["headers"]["x-tenant"], "a");
}

#[test]
fn underscored_field_names_are_dropped_refused_or_kept_as_the_listener_says() {
    let rt = runtime();
    let up = upstream(&rt, "u", fixed(200, Duration::ZERO));
    // `.with()` right after `new()` is the listener's.
    let config = |setting: &str| {
        GatewayToml::new()
            .with(setting)
            .upstream("u", &[up.addr])
            .route("r", "/", "u")
            .build()
    };
    let start = |setting: &str| Gateway::start(&config(setting));
    let spoof = [
        "X_Consumer_Id: root",
        "X_Forwarded_For: 10.9.9.9",
        "x-kept: 1",
    ];
    let by_default = start("");
    let reply = request(by_default.http, "GET", "/", &spoof, "");
    assert_eq!(reply.status, 200, "{reply:?}");
    let seen = &reply.json()["headers"];
    assert!(seen.get("x_consumer_id").is_none(), "{seen}");
    assert!(seen.get("x_forwarded_for").is_none(), "{seen}");
    assert_eq!(seen["x-kept"], "1");
    let dropped = start("underscores_in_headers = \"drop\"");
    let seen = request(dropped.http, "GET", "/", &spoof, "").json()["headers"].clone();
    assert!(seen.get("x_consumer_id").is_none(), "{seen}");
    let refused = start("underscores_in_headers = \"reject\"");
    problem(&request(refused.http, "GET", "/", &spoof, ""), 400);
    assert_eq!(
        request(refused.http, "GET", "/", &["x-kept: 1"], "").status,
        200
    );
    let kept = start("underscores_in_headers = \"keep\"");
    let seen = request(kept.http, "GET", "/", &spoof, "").json()["headers"].clone();
    assert_eq!(seen["x_consumer_id"], "root");
    // A misspelt setting is refused with its field.
    let scratch = Scratch::new("underscores");
    let path = scratch.path("gateway.toml");
    std::fs::write(&path, config("underscores_in_headers = \"allow\"")).expect("config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-gateway"))
        .args(["check", "--config", &path])
        .output()
        .expect("sluice-gateway check");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("listener[0].underscores_in_headers (line "),
        "{said}"
    );
}

#[test]
fn a_second_credential_and_unknown_transfer_codings_are_refused() {
    let rt = runtime();
    let (up, gw) = one_route(&rt);
    problem(
        &request(
            gw.http,
            "GET",
            "/",
            &["Authorization: Bearer a.b.c", "Authorization: Bearer d.e.f"],
            "",
        ),
        400,
    );
    let chunked = |codings: &[&str]| {
        let mut head = String::from("POST / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n");
        for c in codings {
            head.push_str(&format!("Transfer-Encoding: {c}\r\n"));
        }
        head.push_str("\r\n5\r\nhello\r\n0\r\n\r\n");
        raw(gw.http, head.as_bytes())
    };
    // A coding the gateway does not decode would be dropped when it frames the body anew.
    problem(&chunked(&["gzip, chunked"]), 501);
    problem(&chunked(&["chunked", "chunked"]), 400);
    let fine = chunked(&["chunked"]);
    assert_eq!(fine.status, 200, "{fine:?}");
    assert_eq!(fine.json()["body"], "hello");
    assert_eq!(up.hits.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn a_route_that_checks_authorization_forwards_only_one_it_checked() {
    const KEY: &str = "key-of-alice";
    let rt = runtime();
    let up = upstream(&rt, "u", fixed(200, Duration::ZERO));
    let gw = Gateway::start(
        &GatewayToml::new()
            .upstream("u", &[up.addr])
            .raw(&format!(
                "[[consumer]]\nid = \"alice\"\napi_keys = [\"sha256:{}\"]\nbasic = {{ username = \"alice\", hash = \"{}\" }}\n",
                sha256_hex(KEY.as_bytes()),
                bcrypt::hash("s3cret", 4).expect("bcrypt")
            ))
            .route("both", "/both", "u")
            .with(r#"auth = { methods = ["api_key", "basic"] }"#)
            .route("key", "/key", "u")
            .with(r#"auth = { methods = ["api_key"] }"#)
            .route("pw", "/pw", "u")
            .with(r#"auth = { methods = ["basic", "api_key"], api_key_query = "api_key" }"#)
            .build(),
    );
    let forged = "Authorization: Basic cm9vdDpub3QtY2hlY2tlZA==";
    let key = format!("x-api-key: {KEY}");
    let both = request(gw.http, "GET", "/both", &[&key, forged], "");
    assert_eq!(both.status, 200, "{both:?}");
    let seen = &both.json()["headers"];
    assert_eq!(seen["x-consumer-id"], "alice");
    assert!(seen.get("authorization").is_none(), "{seen}");
    // A route that never reads Authorization leaves it to the upstream.
    let key_only = request(gw.http, "GET", "/key", &[&key, forged], "");
    assert_eq!(key_only.status, 200, "{key_only:?}");
    assert!(key_only.json()["headers"].get("authorization").is_some());
    // The other way round: admitted by a password, an API key this route would check is
    // not passed on unchecked, from its header or its query parameter.
    use base64::Engine;
    let password = format!(
        "Authorization: Basic {}",
        base64::engine::general_purpose::STANDARD.encode("alice:s3cret")
    );
    let by_password = request(
        gw.http,
        "GET",
        "/pw/x?api_key=forged&keep=1&api%5Fkey=forged&%61pi_key=forged",
        &[&password, "x-api-key: forged"],
        "",
    );
    assert_eq!(by_password.status, 200, "{by_password:?}");
    let seen = by_password.json();
    assert_eq!(seen["headers"]["x-consumer-id"], "alice");
    assert!(seen["headers"].get("x-api-key").is_none(), "{seen}");
    // However its name is written: the upstream decodes `api%5Fkey` to `api_key`.
    assert_eq!(seen["path"], "/pw/x?keep=1");
    // Admitted by the key itself: a second copy (which an upstream might read instead) is
    // refused, whichever comes first and however it is written.
    let by_key = request(gw.http, "GET", &format!("/pw/x?api_key={KEY}"), &[], "");
    assert_eq!(by_key.status, 200, "{by_key:?}");
    assert_eq!(by_key.json()["path"], "/pw/x");
    for twice in [
        format!("/pw/x?api_key={KEY}&api_key=forged"),
        format!("/pw/x?api%5Fkey=forged&api_key={KEY}"),
    ] {
        let r = request(gw.http, "GET", &twice, &[], "");
        assert_eq!(r.status, 401, "{twice}: {r:?}");
        assert!(r.body.contains("more than once"), "{r:?}");
    }
}

#[test]
fn every_head_hyper_refuses_is_answered_with_problem_json() {
    let rt = runtime();
    let (up, gw) = one_route(&rt);
    let many_fields: String = (0..60).map(|i| format!("x-f{i}: 1\r\n")).collect();
    let big_field = format!("x-big: {}\r\n", "a".repeat(20_000));
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(100_000));
    for (case, head, status) in [
        (
            "two lengths",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 4\r\n\r\n"
                .to_string(),
            400,
        ),
        (
            "a signed length",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc".into(),
            400,
        ),
        (
            "chunked not last",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n".into(),
            400,
        ),
        (
            "obs-fold",
            "GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  folded\r\n\r\n".into(),
            400,
        ),
        (
            "a NUL",
            "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\u{0}b\r\n\r\n".into(),
            400,
        ),
        ("garbage", "GARBAGE\r\n\r\n".into(), 400),
        (
            "too many fields",
            format!("GET / HTTP/1.1\r\nHost: a\r\n{many_fields}\r\n"),
            431,
        ),
        (
            "a field too large",
            format!("GET / HTTP/1.1\r\nHost: a\r\n{big_field}\r\n"),
            431,
        ),
        ("a target too long", long_target, 0),
    ] {
        let reply = raw(gw.http, head.as_bytes());
        if status != 0 {
            assert_eq!(reply.status, status, "{case}: {reply:?}");
        } else {
            assert!(matches!(reply.status, 414 | 431), "{case}: {reply:?}");
        }
        assert_eq!(
            reply.headers.get("content-type").map(String::as_str),
            Some("application/problem+json"),
            "{case}: {reply:?}"
        );
        assert_eq!(reply.json()["status"], reply.status, "{case}");
    }
    // A request before the malformed one on the same connection keeps its own answer. (The
    // refusal after it is hyper's own: only the first write of a connection's instance is
    // looked at, since any later one may be a body; see `parse_refusal`.)
    let mut s = TcpStream::connect(gw.http).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\nGARBAGE\r\n\r\n")
        .expect("write");
    let mut both = Vec::new();
    let _ = s.read_to_end(&mut both);
    let text = String::from_utf8_lossy(&both);
    let (first, rest) = text
        .split_once("HTTP/1.1 400 ")
        .unwrap_or_else(|| panic!("no 400 after the first answer: {text}"));
    assert!(first.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(first.contains("\"path\":\"/first\""), "{text}");
    assert!(rest.starts_with("Bad Request\r\n"), "{text}");
    assert_eq!(up.hits.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn an_http2_request_is_held_to_the_listeners_field_count() {
    let rt = runtime();
    let (up, gw) = one_route(&rt);
    // The test listener takes 50 fields (`support::config`); HTTP/1.1 gets hyper's 431.
    let statuses = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(gw.http)
            .await
            .expect("connect");
        let (mut client, conn) = h2::client::handshake(tcp).await.expect("h2");
        tokio::spawn(conn);
        let mut out = Vec::new();
        // 40 fields, 60 fields, and 60 cookies (one field in HTTP/1.1, one each here).
        for (fields, name) in [(40, "x-f"), (60, "x-f"), (60, "cookie")] {
            let mut req = http::Request::get("http://a.test/");
            for i in 0..fields {
                req = if name == "cookie" {
                    req.header("cookie", format!("c{i}=1"))
                } else {
                    req.header(format!("{name}{i}"), "1")
                };
            }
            client = client.ready().await.expect("ready");
            let (resp, _) = client
                .send_request(req.body(()).expect("req"), true)
                .expect("send");
            let resp = resp.await.expect("response");
            let ctype = resp
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap_or("").to_string());
            out.push((resp.status().as_u16(), ctype));
        }
        out
    });
    assert_eq!(statuses[0].0, 200, "{statuses:?}");
    assert_eq!(
        statuses[1],
        (431, Some("application/problem+json".to_string()))
    );
    assert_eq!(statuses[2].0, 200, "{statuses:?}");
    assert_eq!(up.hits.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// An upstream whose every answer is `200` with `fields` (each ending in CRLF) and `body`,
/// on a keep-alive connection.
fn answering(fields: &'static str, body: &'static [u8]) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            std::thread::spawn(move || {
                while read_head(&mut s).is_some() {
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\n{fields}Content-Length: {}\r\n\r\n",
                        body.len()
                    );
                    let _ = s.write_all(body);
                }
            });
        }
    });
    addr
}

#[test]
fn an_upstream_body_that_reads_like_a_refusal_passes_untouched() {
    // What hyper writes when it refuses a head, as a body: only hyper's own write may be
    // replaced, never bytes the upstream sent.
    const BODY: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
    let gw = Gateway::start(
        &GatewayToml::new()
            .upstream("u", &[answering("", BODY)])
            .route("r", "/", "u")
            .build(),
    );
    let mut s = TcpStream::connect(gw.http).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    for _ in 0..3 {
        s.write_all(b"GET /x HTTP/1.1\r\nHost: a.test\r\n\r\n")
            .expect("write");
        let reply = support::read_one(&mut s).expect("an answer");
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.body.as_bytes(), BODY);
    }
}

#[test]
fn an_upstream_cannot_speak_for_the_gateway_in_its_load_report() {
    // The L4 agents weigh a gateway by this field in its readiness answer: relayed from an
    // upstream (to a health check pointed at a proxied path), it would claim a capacity the
    // gateway never reported.
    const FIELDS: &str = "endpoint-load-metrics: TEXT cpu_utilization=0.01, \
                          named_metrics.sluice_capacity=1000000000\r\nx-app: kept\r\n";
    let gw = Gateway::start(
        &GatewayToml::new()
            .upstream("u", &[answering(FIELDS, b"ok")])
            .route("r", "/", "u")
            .build(),
    );
    let r = support::request(gw.http, "GET", "/ready", &[], "");
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    assert_eq!(r.headers["x-app"], "kept");
    assert!(
        !r.headers.contains_key("endpoint-load-metrics"),
        "{:?}",
        r.headers
    );
}
