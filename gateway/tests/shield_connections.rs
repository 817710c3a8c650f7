//! The shield's connection-level classes through the real gateway binary: malformed
//! requests whoever answers them (hyper itself, for a head it cannot parse or finds too
//! large, or the pipeline), and connections closed by a head or TLS-handshake deadline,
//! but never a keep-alive connection closed while idle.

mod support;

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use rcgen::{CertificateParams, KeyPair};
use rustls::{pki_types::ServerName, ClientConfig, RootCertStore};
use sluice_util::shield::{Candidates, Class, PATH};
use support::{
    admin_get, fixed, metric, read_one, runtime,
    source::{connect_from, raw_from},
    upstream, Gateway, GatewayToml, Scratch,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every deadline of the listener, in ms.
const LIMIT: u64 = 500;

/// A gateway with every deadline of its listener at [`LIMIT`], `listener` lines for it,
/// a route to an upstream answering 200, and `shield`.
fn gateway(rt: &tokio::runtime::Runtime, listener: &str, shield: &str) -> Gateway {
    let up = upstream(rt, "u", fixed(200, Duration::ZERO));
    Gateway::start(
        &GatewayToml::new()
            .with(&format!(
                "first_request_timeout_ms = {LIMIT}\ntls_handshake_timeout_ms = {LIMIT}\n{listener}"
            ))
            .upstream("u", &[up.addr])
            .route_all("r", "u")
            .raw(shield)
            .build(),
    )
}

fn addr(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

fn listed(gw: &Gateway) -> Vec<(String, Class, u32)> {
    Candidates::parse(admin_get(gw, PATH).body.as_bytes())
        .expect("a candidates document")
        .candidates
        .iter()
        .map(|c| (c.prefix.to_string(), c.class, c.count))
        .collect()
}

fn refusals(gw: &Gateway, class: &str) -> f64 {
    metric(
        gw,
        &format!("sluice_gateway_shield_refusals_total{{class=\"{class}\"}}"),
    )
}

/// Waits (5 s at most) until `done`: a connection-level refusal is counted as its
/// connection ends, which the client may see first.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(5), "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `class` has `want` refusals, and no more.
fn counted(gw: &Gateway, class: &str, want: f64) {
    eventually(&format!("{want} {class} refusals"), || {
        refusals(gw, class) >= want
    });
    assert_eq!(refusals(gw, class), want, "{class}");
}

/// Reads until the gateway closes the connection (5 s at most); how long that took.
fn until_closed(s: &mut std::net::TcpStream) -> Duration {
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return start.elapsed(),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return start.elapsed(),
            Err(e) => panic!("not closed within 5 s: {e}"),
        }
    }
}

#[test]
fn malformed_requests_count_whoever_answers_them() {
    let rt = runtime();
    let gw = gateway(
        &rt,
        "",
        "[shield]\nwindow_secs = 3600\nmode = \"enforce\"\nthresholds = { malformed = 5 }",
    );
    let from = addr(5);
    let text = |path: &str, extra: &[String], body: &str| {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        sluice_e2e::http::request_text("POST", path, "test.local", &extra, body)
    };
    let many: Vec<String> = (0..80).map(|i| format!("x-h{i}: v")).collect();
    let huge = vec![format!("x-big: {}", "a".repeat(20_000))];
    for (what, raw, status) in [
        // hyper's own answers, to heads it refuses.
        ("more fields than max_headers", text("/", &many, ""), 431),
        ("a head over max_header_bytes", text("/", &huge, ""), 431),
        (
            "no request line",
            "BAD REQUEST LINE\r\n\r\n".to_string(),
            400,
        ),
        // The pipeline's.
        ("an encoded slash", text("/a%2Fb", &[], ""), 400),
        (
            "a body over max_body_bytes",
            text("/", &[], &"x".repeat(2000)),
            413,
        ),
    ] {
        let r = raw_from(from, gw.http, raw.as_bytes());
        assert_eq!(r.status, status, "{what}: {r:?}");
    }
    counted(&gw, "malformed", 5.0);
    eventually("a candidate", || !listed(&gw).is_empty());
    assert_eq!(
        listed(&gw),
        [("127.0.0.5/32".to_string(), Class::Malformed, 5)]
    );
}

#[test]
fn head_deadlines_count_and_idle_keep_alive_does_not() {
    let rt = runtime();
    let gw = gateway(
        &rt,
        "",
        "[shield]\nwindow_secs = 3600\nmode = \"enforce\"\nthresholds = { deadline = 3 }",
    );
    let from = addr(6);
    // Keep-alive connections closed while idle after their request: no one's fault.
    for _ in 0..3 {
        let mut s = connect_from(from, gw.http);
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        assert_eq!(read_one(&mut s).expect("response").status, 200);
        until_closed(&mut s);
    }
    assert!(
        metric(
            &gw,
            "sluice_gateway_connections_closed_total{reason=\"deadline\"}"
        ) >= 3.0
    );
    assert_eq!(refusals(&gw, "deadline"), 0.0);
    // Nothing at all; half a head; half of a second head after a served request.
    let mut s = connect_from(from, gw.http);
    assert!(until_closed(&mut s) >= Duration::from_millis(LIMIT * 2 / 3));
    let mut s = connect_from(from, gw.http);
    s.write_all(b"GET / HTTP/1.1\r\nHo").expect("write");
    until_closed(&mut s);
    counted(&gw, "deadline", 2.0);
    assert!(listed(&gw).is_empty(), "two of three");
    let mut s = connect_from(from, gw.http);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    assert_eq!(read_one(&mut s).expect("response").status, 200);
    s.write_all(b"GET / HTTP/1.1\r\nHo").expect("write");
    until_closed(&mut s);
    counted(&gw, "deadline", 3.0);
    eventually("a candidate", || !listed(&gw).is_empty());
    assert_eq!(
        listed(&gw),
        [("127.0.0.6/32".to_string(), Class::Deadline, 3)]
    );
}

/// A self-signed certificate for `test.local` in `dir`, and a client trusting it.
fn tls_pair(dir: &Scratch) -> Arc<ClientConfig> {
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["test.local".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    std::fs::write(dir.0.join("cert.pem"), cert.pem()).expect("write");
    std::fs::write(dir.0.join("key.pem"), key.serialize_pem()).expect("write");
    let mut roots = RootCertStore::empty();
    roots.add(cert.der().clone()).expect("root");
    let mut c =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

/// A TLS connection to `to` from `from`.
async fn tls_from(
    from: Ipv4Addr,
    to: SocketAddr,
    cfg: &Arc<ClientConfig>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::from((from, 0))).expect("bind");
    let tcp = socket.connect(to).await.expect("connect");
    tokio_rustls::TlsConnector::from(cfg.clone())
        .connect(ServerName::try_from("test.local").expect("name"), tcp)
        .await
        .expect("handshake")
}

/// Reads from a TLS stream until it ends (5 s at most).
async fn tls_until_closed<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("not closed within 5 s"),
        }
    }
}

#[test]
fn tls_handshake_and_head_deadlines_count_and_idle_keep_alive_does_not() {
    let rt = runtime();
    let dir = Scratch::new("shield-tls");
    let client = tls_pair(&dir);
    let gw = gateway(
        &rt,
        &format!(
            "[listener.tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]",
            dir.path("cert.pem"),
            dir.path("key.pem")
        ),
        "[shield]\nwindow_secs = 3600\nmode = \"enforce\"\nthresholds = { deadline = 3, malformed = 1 }",
    );
    let from = addr(7);
    let to = gw.http;
    rt.block_on(async {
        // Keep-alive after a request, closed while idle: not counted.
        let mut s = tls_from(from, to, &client).await;
        s.write_all(b"GET / HTTP/1.1\r\nHost: test.local\r\n\r\n")
            .await
            .expect("write");
        let got = tls_until_closed(&mut s).await;
        assert!(got.starts_with(b"HTTP/1.1 200"), "{got:?}");
    });
    assert_eq!(refusals(&gw, "deadline"), 0.0);
    // No ClientHello within the handshake deadline.
    let mut s = connect_from(from, to);
    until_closed(&mut s);
    counted(&gw, "deadline", 1.0);
    rt.block_on(async {
        // After the handshake: nothing, then half a head.
        let mut s = tls_from(from, to, &client).await;
        tls_until_closed(&mut s).await;
        let mut s = tls_from(from, to, &client).await;
        s.write_all(b"GET / HTTP/1.1\r\nHo").await.expect("write");
        tls_until_closed(&mut s).await;
    });
    counted(&gw, "deadline", 3.0);
    eventually("a candidate", || !listed(&gw).is_empty());
    assert_eq!(
        listed(&gw),
        [("127.0.0.7/32".to_string(), Class::Deadline, 3)]
    );
    // A head hyper refuses over TLS is malformed there too.
    rt.block_on(async {
        let mut s = tls_from(addr(8), to, &client).await;
        s.write_all(b"BAD REQUEST LINE\r\n\r\n")
            .await
            .expect("write");
        let got = tls_until_closed(&mut s).await;
        assert!(got.starts_with(b"HTTP/1.1 400"), "{got:?}");
    });
    counted(&gw, "malformed", 1.0);
    eventually("a candidate", || listed(&gw).len() == 2);
    assert!(listed(&gw).contains(&("127.0.0.8/32".to_string(), Class::Malformed, 1)));
}
