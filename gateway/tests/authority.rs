//! Host and request-target authority (RFC 9112 §3.2, RFC 9113 §8.3.1): one Host, checked
//! against the target, and the authority that was routed on is the one the upstream gets,
//! as a Host field toward HTTP/1.1 and as the only `:authority` toward HTTP/2, checked by a
//! strict HTTP/2 server no one here wrote (python-hyper's h2).

mod support;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use support::{fixed, raw, runtime, upstream, Gateway, GatewayToml, Reply};

/// The strict h2c server (`tests/h2/strict_server.py`), killed when dropped.
struct Strict(Child, SocketAddr);

impl Drop for Strict {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn strict_h2_server() -> Strict {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/h2/strict_server.py");
    let mut child = Command::new("/usr/bin/python3")
        .arg(script)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 with h2 (apt install python3-h2; cargo xtask setup does)");
    let mut line = String::new();
    let out = child.stdout.take().expect("stdout");
    BufReader::new(out).read_line(&mut line).expect("port");
    let port: u16 = line.trim().parse().expect("port number");
    Strict(child, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// Routes by host: `a.example` to upstream `a`, `b.example` to `b`, `h2.example` to the
/// HTTP/2 upstream `h2`.
fn gateway(a: SocketAddr, b: SocketAddr, h2: SocketAddr) -> Gateway {
    Gateway::start(
        &GatewayToml::new()
            .upstream("a", &[a])
            .upstream("b", &[b])
            .upstream("h2", &[h2])
            .with("http2 = true")
            .route_all("a", "a")
            .with("host = \"a.example\"")
            .route_all("b", "b")
            .with("host = \"b.example\"")
            .route_all("h2", "h2")
            .with("host = \"h2.example\"")
            .route_all("other", "h2")
            .build(),
    )
}

fn send(gw: &Gateway, head: &str) -> Reply {
    raw(gw.http, format!("{head}\r\n").as_bytes())
}

fn refused(r: &Reply, why: &str) {
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.headers["content-type"], "application/problem+json");
    assert!(
        r.json()["detail"].as_str().unwrap_or("").contains(why),
        "{r:?}"
    );
}

#[test]
fn http1_host_rules_and_absolute_form() {
    let rt = runtime();
    let a = upstream(&rt, "a", fixed(200, Duration::ZERO));
    let b = upstream(&rt, "b", fixed(200, Duration::ZERO));
    let h2 = strict_h2_server();
    let gw = gateway(a.addr, b.addr, h2.1);
    let close = "Connection: close\r\n";
    refused(
        &send(&gw, &format!("GET / HTTP/1.1\r\n{close}")),
        "needs a Host",
    );
    refused(
        &send(&gw, &format!("GET http://a.example/ HTTP/1.1\r\n{close}")),
        "needs a Host",
    );
    refused(
        &send(
            &gw,
            &format!("GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n{close}"),
        ),
        "more than one Host",
    );
    refused(
        &send(
            &gw,
            &format!("GET / HTTP/1.1\r\nHost: a.example\r\nHost: a.example\r\n{close}"),
        ),
        "more than one Host",
    );
    refused(
        &send(
            &gw,
            &format!("GET http://u:p@a.example/ HTTP/1.1\r\nHost: a.example\r\n{close}"),
        ),
        "userinfo",
    );
    // Absolute-form: the target's authority wins, for routing and for the upstream's Host.
    let r = send(
        &gw,
        &format!("GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\n{close}"),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let j = r.json();
    assert_eq!(
        (j["upstream"].as_str(), j["path"].as_str()),
        (Some("a"), Some("/x"))
    );
    assert_eq!(j["headers"]["host"], "a.example");
    assert_eq!(j["headers"]["x-forwarded-host"], "a.example");
    // With a port, kept in the Host the upstream gets.
    let r = send(
        &gw,
        &format!("GET http://B.example:8080/y HTTP/1.1\r\nHost: a.example\r\n{close}"),
    );
    assert_eq!(r.json()["upstream"], "b", "{r:?}");
    assert_eq!(r.json()["headers"]["host"], "B.example:8080");
    // A fully qualified name (trailing dot) is the same host: it takes that host's route.
    for head in [
        format!("GET /t HTTP/1.1\r\nHost: A.example.\r\n{close}"),
        format!("GET /t HTTP/1.1\r\nHost: a.example.:8080\r\n{close}"),
        format!("GET http://a.example./t HTTP/1.1\r\nHost: b.example\r\n{close}"),
    ] {
        let r = send(&gw, &head);
        assert_eq!(
            (r.status, r.json()["upstream"].as_str()),
            (200, Some("a")),
            "{head}: {r:?}"
        );
        // Forwarded without the dot, as it was routed.
        let host = r.json()["headers"]["host"]
            .as_str()
            .unwrap_or("")
            .to_string();
        assert!(
            !host.contains(".:") && !host.ends_with('.'),
            "{head}: {host}"
        );
    }
    // Empty labels are not a host name.
    for host in [".", "a..example", ".a.example", "a.example..", ".:80"] {
        let r = send(&gw, &format!("GET / HTTP/1.1\r\nHost: {host}\r\n{close}"));
        refused(&r, "invalid Host");
    }
    // HTTP/1.0 may leave Host out.
    let r = send(&gw, "GET / HTTP/1.0\r\n");
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn http2_host_must_match_the_authority() {
    let rt = runtime();
    let a = upstream(&rt, "a", fixed(200, Duration::ZERO));
    let b = upstream(&rt, "b", fixed(200, Duration::ZERO));
    let h2 = strict_h2_server();
    let gw = gateway(a.addr, b.addr, h2.1);
    let results = rt.block_on(async {
        let mut client = support::h2_connect(gw.http).await;
        let mut out = Vec::new();
        for host in [
            None,
            Some("a.example"),
            Some("A.EXAMPLE"),
            Some("b.example"),
            Some("a.example:80"),
        ] {
            let mut req = http::Request::get("http://a.example/z");
            if let Some(h) = host {
                req = req.header("host", h);
            }
            let (status, body) = support::h2_fetch(&mut client, req.body(()).expect("req")).await;
            out.push((host, status, body));
        }
        out
    });
    for (host, status, body) in results {
        let agrees = host.is_none_or(|h| h.eq_ignore_ascii_case("a.example"));
        if agrees {
            assert_eq!(status, 200, "{host:?}: {body}");
            let j: serde_json::Value = serde_json::from_str(&body).expect("json");
            assert_eq!(j["upstream"], "a");
            assert_eq!(j["headers"]["host"], "a.example", "{host:?}");
        } else {
            assert_eq!(status, 400, "{host:?}: {body}");
            assert!(body.contains("differs from :authority"), "{body}");
        }
    }
}

#[test]
fn an_http2_upstream_gets_one_authority_the_routed_one() {
    let rt = runtime();
    let a = upstream(&rt, "a", fixed(200, Duration::ZERO));
    let h2 = strict_h2_server();
    let gw = gateway(a.addr, a.addr, h2.1);
    let close = "Connection: close\r\n";
    let check = |r: Reply, authority: &str| {
        assert_eq!(r.status, 200, "{r:?}");
        let j = r.json();
        assert_eq!(j["authority"], serde_json::json!([authority]), "{r:?}");
        assert_eq!(
            j["host"],
            serde_json::json!([]),
            "no host field beside :authority"
        );
        assert_eq!(j["headers"]["x-forwarded-host"], authority);
    };
    // HTTP/1.1 client, origin-form and absolute-form (its Host differs and loses).
    check(
        send(
            &gw,
            &format!("GET /p HTTP/1.1\r\nHost: h2.example\r\n{close}"),
        ),
        "h2.example",
    );
    check(
        send(
            &gw,
            &format!("GET http://h2.example:8443/p HTTP/1.1\r\nHost: x.example\r\n{close}"),
        ),
        "h2.example:8443",
    );
    // The Host goes on as the client wrote it (case and all).
    for _ in 0..3 {
        check(
            send(
                &gw,
                &format!("GET /p HTTP/1.1\r\nHost: H2.example\r\n{close}"),
            ),
            "H2.example",
        );
    }
    // However many spellings of the Host, one connection to the target carries them all:
    // one per worker (two here), whichever worker the client's connection landed on.
    let mut connections = std::collections::HashSet::new();
    for port in 1..=20 {
        let r = send(
            &gw,
            &format!("GET /p HTTP/1.1\r\nHost: h2.example:{port:03}\r\n{close}"),
        );
        assert_eq!(r.status, 200, "{r:?}");
        connections.insert(r.json()["connection"].clone());
    }
    assert!((1..=2).contains(&connections.len()), "{connections:?}");
    // HTTP/1.0 without Host: the target's address is the authority.
    let r = send(&gw, "GET /p HTTP/1.0\r\n");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["authority"], serde_json::json!([h2.1.to_string()]));
    assert_eq!(r.json()["host"], serde_json::json!([]));
    // An HTTP/2 client through the same route.
    let (status, body) = rt.block_on(async {
        let mut client = support::h2_connect(gw.http).await;
        let req = http::Request::get("http://h2.example/q")
            .body(())
            .expect("req");
        support::h2_fetch(&mut client, req).await
    });
    assert_eq!(status, 200, "{body}");
    let j: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(j["authority"], serde_json::json!(["h2.example"]), "{body}");
    assert_eq!(j["host"], serde_json::json!([]));
}
