//! Every phase of a client connection has a deadline, and a full listener makes room by
//! closing its longest-idle connection (issue: one byte of an HTTP/2 preface, an h2c
//! connection with no stream, or any TLS connection after its handshake held a slot
//! forever). Raw sockets, the `h2` crate and a rustls client play the attacker.

mod support;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::Arc,
    time::{Duration, Instant},
};

use rcgen::{CertificateParams, KeyPair};
use rustls::{pki_types::ServerName, ClientConfig, RootCertStore};
use support::{connect, metric, read_one, runtime, upstream, Gateway, GatewayToml, Scratch};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every deadline of the listener, in ms.
const LIMIT: u64 = 600;

/// A gateway whose listener has every deadline at [`LIMIT`] (or `limit_ms`), `extra` listener
/// lines (or tables of a test's own after them), and one route to `up` (whose `/slow` answers after 1.5 s: longer than every
/// deadline, which waiting for an upstream must not trip).
fn gateway(up: SocketAddr, extra: &str, limit_ms: u64) -> Gateway {
    Gateway::start(
        &GatewayToml::empty()
            .raw("[admin]\nlisten = \"127.0.0.1:0\"\nshutdown_deadline_ms = 3000\nhost_names = [\"test.local\"]")
            .raw(&format!(
                "[[listener]]\nname = \"main\"\naddress = \"127.0.0.1:0\"\n\
                 header_read_timeout_ms = {limit_ms}\ntls_handshake_timeout_ms = {limit_ms}\n\
                 first_request_timeout_ms = {limit_ms}\nkeepalive_timeout_ms = {limit_ms}\n\
                 http2_idle_timeout_ms = {limit_ms}\nstream_idle_timeout_ms = {limit_ms}"
            ))
            .with(extra)
            .upstream("a", &[up])
            .route_all("r", "a")
            .with("timeouts = { request_ms = 5000 }")
            .build(),
    )
}

fn slow_upstream(rt: &tokio::runtime::Runtime) -> support::Upstream {
    upstream(
        rt,
        "a",
        Arc::new(|path: &str| {
            let delay = if path == "/slow" { 1500 } else { 0 };
            (200, Duration::from_millis(delay))
        }),
    )
}

/// Reads until the peer closes (5 s at most); how long that took, and what came.
fn until_closed(s: &mut TcpStream) -> (Duration, Vec<u8>) {
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (start.elapsed(), out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (start.elapsed(), out)
            }
            Err(e) => panic!("not closed within 5 s ({e}), after {:?}", start.elapsed()),
        }
    }
}

/// Asserts a close one deadline (with slack for a loaded machine) after the wait began.
fn on_time(what: &str, waited: Duration) {
    assert!(
        waited >= Duration::from_millis(LIMIT * 2 / 3) && waited < Duration::from_millis(3500),
        "{what}: closed after {waited:?}, the deadline is {LIMIT} ms"
    );
}

/// The HTTP/2 frame types in `bytes` (a server's frames after its preface).
fn frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let len = (bytes[0] as usize) << 16 | (bytes[1] as usize) << 8 | bytes[2] as usize;
        types.push(bytes[3]);
        bytes = bytes.get(9 + len..).unwrap_or(&[]);
    }
    types
}

/// Over an HTTP/2 client on `io`: each of `uris` is answered 200 (however slow), then how
/// long the connection, idle, stays open (5 s at most).
async fn idle_after<T>(io: T, uris: &[&str]) -> Duration
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut client, conn) = support::h2_over(io).await;
    for uri in uris {
        let req = http::Request::get(*uri).body(()).expect("request");
        let (status, _) = support::h2_fetch(&mut client, req).await;
        assert_eq!(status, 200, "{uri} was cut");
    }
    let idle = Instant::now();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("closed within 5 s");
    idle.elapsed()
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const EMPTY_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
const GOAWAY: u8 = 7;

#[test]
fn every_phase_of_a_plain_connection_has_a_deadline() {
    let rt = runtime();
    let up = slow_upstream(&rt);
    let gw = gateway(up.addr, "", LIMIT);
    // Nothing at all; one byte of the HTTP/2 preface; the whole preface.
    for first in [&b""[..], b"P", b"PRI * HTTP/2.0\r\n", PREFACE] {
        let mut s = TcpStream::connect(gw.http).expect("connect");
        s.write_all(first).expect("write");
        let (waited, _) = until_closed(&mut s);
        on_time(
            &format!("after {:?}", String::from_utf8_lossy(first)),
            waited,
        );
    }
    // h2c: preface and SETTINGS, then no stream: GOAWAY, then closed.
    let mut s = TcpStream::connect(gw.http).expect("connect");
    s.write_all(PREFACE).expect("write");
    s.write_all(EMPTY_SETTINGS).expect("write");
    let (waited, got) = until_closed(&mut s);
    on_time("h2c without a stream", waited);
    assert!(frame_types(&got).contains(&GOAWAY), "{got:?}");
    // h2c after a request: idle with no stream for the HTTP/2 idle deadline; a request
    // slower than the deadline is not cut.
    let waited = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(gw.http)
            .await
            .expect("connect");
        idle_after(tcp, &["http://x/slow", "http://x/fast"]).await
    });
    on_time("h2c idle after a request", waited);
    // HTTP/1.1 keep-alive: idle after a response.
    let mut s = connect(&gw);
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    assert_eq!(read_one(&mut s).expect("slow response").status, 200);
    let (waited, _) = until_closed(&mut s);
    on_time("HTTP/1.1 keep-alive", waited);
    assert!(
        metric(
            &gw,
            "sluice_gateway_connections_closed_total{reason=\"deadline\"}"
        ) >= 6.0
    );
}

/// A CA-less self-signed certificate for `test.local` in `dir`, and a client trusting it.
fn tls_pair(dir: &Scratch, alpn: &[u8]) -> Arc<ClientConfig> {
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
    c.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(c)
}

async fn handshake(
    addr: SocketAddr,
    cfg: &Arc<ClientConfig>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tokio_rustls::TlsConnector::from(cfg.clone())
        .connect(ServerName::try_from("test.local").expect("name"), tcp)
        .await
        .expect("handshake")
}

/// Reads from a TLS stream until it ends (close_notify, EOF or reset); how long it took.
async fn tls_until_closed<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> (Duration, Vec<u8>) {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (start.elapsed(), out),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("not closed within 5 s"),
        }
    }
}

#[test]
fn every_phase_of_a_tls_connection_has_a_deadline() {
    let rt = runtime();
    let up = slow_upstream(&rt);
    let dir = Scratch::new("deadline-tls");
    let h1 = tls_pair(&dir, b"http/1.1");
    let mut h2 = (*h1).clone();
    h2.alpn_protocols = vec![b"h2".to_vec()];
    let h2 = Arc::new(h2);
    let gw = gateway(
        up.addr,
        &format!(
            "[listener.tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]",
            dir.path("cert.pem"),
            dir.path("key.pem")
        ),
        LIMIT,
    );
    // The handshake: no ClientHello at all, or the first bytes of one.
    for first in [&b""[..], &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01][..]] {
        let mut s = TcpStream::connect(gw.http).expect("connect");
        s.write_all(first).expect("write");
        let (waited, _) = until_closed(&mut s);
        on_time(&format!("handshake after {first:?}"), waited);
    }
    rt.block_on(async {
        // After the handshake, nothing: HTTP/1.1 and h2.
        for (what, cfg) in [("http/1.1", &h1), ("h2", &h2)] {
            let mut s = handshake(gw.http, cfg).await;
            let (waited, _) = tls_until_closed(&mut s).await;
            on_time(&format!("TLS {what} without a request"), waited);
        }
        // After the handshake, half a request head.
        let mut s = handshake(gw.http, &h1).await;
        s.write_all(b"GET / HTTP/1.1\r\nHost: te")
            .await
            .expect("write");
        let (waited, _) = tls_until_closed(&mut s).await;
        on_time("TLS http/1.1 with half a head", waited);
        // HTTP/1.1 keep-alive after a request slower than the deadline (not cut).
        let mut s = handshake(gw.http, &h1).await;
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: test.local\r\n\r\n")
            .await
            .expect("write");
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&head).contains("\"upstream\"") {
            let n = s.read(&mut buf).await.expect("response");
            assert!(n > 0, "closed before the slow response");
            head.extend_from_slice(&buf[..n]);
        }
        assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");
        let (waited, _) = tls_until_closed(&mut s).await;
        on_time("TLS http/1.1 keep-alive", waited);
        // h2 over TLS: idle with no stream after a slow request.
        let s = handshake(gw.http, &h2).await;
        on_time(
            "TLS h2 idle",
            idle_after(s, &["https://test.local/slow"]).await,
        );
    });
}

#[test]
fn a_full_listener_closes_its_longest_idle_connection_for_a_newcomer() {
    let rt = runtime();
    let up = slow_upstream(&rt);
    // Deadlines far away: only the limit closes connections here.
    let gw = gateway(up.addr, "max_connections = 4", 20_000);
    // Four connections in four idle states, oldest first: one byte of a preface, nothing,
    // half a head, parked after a request.
    let mut oldest = TcpStream::connect(gw.http).expect("connect");
    oldest.write_all(b"P").expect("write");
    std::thread::sleep(Duration::from_millis(50));
    let mut others = vec![TcpStream::connect(gw.http).expect("connect")];
    std::thread::sleep(Duration::from_millis(50));
    let mut half = TcpStream::connect(gw.http).expect("connect");
    half.write_all(b"GET / HTTP/1.1\r\nHo").expect("write");
    others.push(half);
    std::thread::sleep(Duration::from_millis(50));
    let mut parked = connect(&gw);
    parked
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    assert_eq!(read_one(&mut parked).expect("response").status, 200);
    // A fifth client is served: the longest-idle connection made room.
    let start = Instant::now();
    let r = support::request(gw.http, "GET", "/", &[], "");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    let (_, _) = until_closed(&mut oldest);
    assert_eq!(
        metric(
            &gw,
            "sluice_gateway_connections_closed_total{reason=\"evicted\"}"
        ),
        1.0
    );
    // The others are still open: the parked one still serves.
    parked
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    assert_eq!(read_one(&mut parked).expect("still open").status, 200);
    drop((others, parked));

    // With every connection busy, a newcomer is refused at once.
    let gw = gateway(up.addr, "max_connections = 2", 20_000);
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let addr = gw.http;
            std::thread::spawn(move || support::request(addr, "GET", "/slow", &[], "").status)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut s = TcpStream::connect(gw.http).expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let (waited, got) = until_closed(&mut s);
    assert!(
        got.is_empty() && waited < Duration::from_millis(500),
        "{waited:?} {got:?}"
    );
    for b in busy {
        assert_eq!(
            b.join().expect("busy request"),
            200,
            "busy requests were not cut"
        );
    }
    assert!(
        metric(
            &gw,
            "sluice_gateway_connections_closed_total{reason=\"over_limit\"}"
        ) >= 1.0
    );
}

#[test]
fn connections_per_client_address_are_limited() {
    let rt = runtime();
    let up = slow_upstream(&rt);
    let gw = gateway(up.addr, "max_connections_per_client = 2", 20_000);
    let mut first = connect(&gw);
    let _second = connect(&gw);
    std::thread::sleep(Duration::from_millis(100));
    let mut third = TcpStream::connect(gw.http).expect("connect");
    let (waited, got) = until_closed(&mut third);
    assert!(
        got.is_empty() && waited < Duration::from_millis(500),
        "{waited:?}"
    );
    assert_eq!(
        metric(
            &gw,
            "sluice_gateway_connections_closed_total{reason=\"over_client_limit\"}"
        ),
        1.0
    );
    // The two admitted ones are served; once one closes, a new one is admitted.
    first
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    assert_eq!(read_one(&mut first).expect("served").status, 200);
    drop(first);
    std::thread::sleep(Duration::from_millis(200));
    let r = support::request(gw.http, "GET", "/", &[], "");
    assert_eq!(r.status, 200, "{r:?}");
}

/// 8 MiB behind nginx, for clients that stop reading.
fn big_file_gateway(extra: &str) -> (Gateway, support::Nginx, Scratch) {
    let root = Scratch::new("deadline-big");
    std::fs::write(root.0.join("big"), vec![b'x'; 8 << 20]).expect("file");
    let nginx = support::Nginx::serve(&root.0);
    let gw = gateway(nginx.addr, extra, LIMIT);
    (gw, nginx, root)
}

/// Waits up to 5 s for a metric to reach `want`.
fn reaches(gw: &Gateway, series: &str, want: f64) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if metric(gw, series) >= want {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

const STALLED: &str = "sluice_gateway_connections_closed_total{reason=\"stalled\"}";

#[test]
fn a_client_that_stops_taking_its_response_is_closed() {
    // HTTP/1.1: the client asks for 8 MiB and reads nothing.
    let (gw, _nginx, _root) = big_file_gateway("");
    let mut s = TcpStream::connect(gw.http).expect("connect");
    s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    assert!(
        reaches(&gw, STALLED, 1.0),
        "the stalled HTTP/1.1 client was not closed"
    );
    let (_, got) = until_closed(&mut s);
    assert!(got.len() < 8 << 20, "the whole body came: {}", got.len());
    // HTTP/2: the client never gives flow-control credit back after its first 64 KiB.
    let rt = runtime();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(gw.http)
            .await
            .expect("connect");
        let (client, conn) = h2::client::handshake(tcp).await.expect("h2");
        let conn = tokio::spawn(conn);
        let mut client = client.ready().await.expect("ready");
        let req = http::Request::get("http://x/big")
            .body(())
            .expect("request");
        let (resp, _) = client.send_request(req, true).expect("send");
        let resp = resp.await.expect("response head");
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut got = 0;
        // Read what the window allows, releasing nothing.
        while let Ok(Some(Ok(chunk))) =
            tokio::time::timeout(Duration::from_secs(5), body.data()).await
        {
            got += chunk.len();
        }
        assert!(got < 8 << 20, "{got}");
        let _ = tokio::time::timeout(Duration::from_secs(5), conn)
            .await
            .expect("the stalled HTTP/2 connection was closed");
    });
    assert!(reaches(&gw, STALLED, 2.0));
}

#[test]
fn an_upgraded_connection_keeps_its_slot_and_ends_when_idle() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let rt = runtime();
    let echo = support::websocket_echo(&rt);
    // Tunnels end after this long without traffic.
    const TUNNEL_IDLE: u64 = 1500;
    let gw = gateway(echo, "max_connections = 2", TUNNEL_IDLE);
    let addr = gw.http;

    rt.block_on(async move {
        let open = || async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let (ws, resp) = tokio_tungstenite::client_async("ws://test.local/ws", tcp)
                .await
                .expect("handshake through the gateway");
            assert_eq!(resp.status(), 101);
            ws
        };
        let mut a = open().await;
        let mut b = open().await;

        // Both tunnels hold their slots, and neither is idle for eviction: a third
        // connection is refused.
        let mut third = tokio::net::TcpStream::connect(addr).await.expect("connect");
        third
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(3), third.read(&mut buf))
            .await
            .expect("refused at once")
            .unwrap_or(0);
        assert_eq!(
            n, 0,
            "a third connection was served past max_connections = 2"
        );
        // Traffic keeps a tunnel open past the idle deadline; silence ends it.
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(TUNNEL_IDLE * 2) {
            a.send(Message::Text("ping".into())).await.expect("send");
            let back = a.next().await.expect("frame").expect("message");
            assert_eq!(back, Message::Text("ping".into()));
            tokio::time::sleep(Duration::from_millis(TUNNEL_IDLE / 4)).await;
        }
        let ended = tokio::time::timeout(Duration::from_secs(5), b.next())
            .await
            .expect("the idle tunnel was closed");
        assert!(
            start.elapsed() < Duration::from_millis(TUNNEL_IDLE * 4),
            "{:?}",
            start.elapsed()
        );
        assert!(!matches!(ended, Some(Ok(Message::Text(_)))), "{ended:?}");
        // Its slot is free again.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _c = open().await;
        drop(a);
    });
}

/// Stalls count per response: an HTTP/2 stream waiting on a slow upstream does not hide
/// another that the client stopped reading.
#[test]
fn one_waiting_stream_does_not_hide_a_stalled_one() {
    let rt = runtime();
    let slow = upstream(&rt, "slow", support::fixed(200, Duration::from_secs(4)));
    let root = Scratch::new("deadline-big2");
    std::fs::write(root.0.join("big"), vec![b'x'; 8 << 20]).expect("file");
    let nginx = support::Nginx::serve(&root.0);
    let gw = gateway(
        nginx.addr,
        &GatewayToml::empty()
            .upstream("slow", &[slow.addr])
            .route("slow", "/slow", "slow")
            .with("timeouts = { request_ms = 10000 }")
            .build(),
        LIMIT,
    );
    let start = Instant::now();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(gw.http)
            .await
            .expect("connect");
        let (client, conn) = h2::client::handshake(tcp).await.expect("h2");
        let conn = tokio::spawn(conn);
        let mut client = client.ready().await.expect("ready");
        let (waiting, _) = client
            .send_request(
                http::Request::get("http://x/slow").body(()).expect("req"),
                true,
            )
            .expect("send");
        let mut client = client.ready().await.expect("ready");
        let (resp, _) = client
            .send_request(
                http::Request::get("http://x/big").body(()).expect("req"),
                true,
            )
            .expect("send");
        let resp = resp.await.expect("response head");
        let mut body = resp.into_body();
        while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(6), body.data()).await
        {
        }
        let _ = tokio::time::timeout(Duration::from_secs(6), conn)
            .await
            .expect("closed");
        drop(waiting);
    });
    assert!(
        start.elapsed() < Duration::from_millis(3500),
        "closed only after the slow upstream answered: {:?}",
        start.elapsed()
    );
    assert!(reaches(&gw, STALLED, 1.0));
}

/// An upstream that sends its response head and part of the body, then nothing, has the
/// response cut short once `read_idle_ms` passes (the head's arrival ended `request_ms`):
/// the client's connection ends with the body incomplete, rather than being held as long as
/// the upstream likes.
#[test]
fn an_upstream_that_goes_quiet_mid_body_is_cut_after_read_idle_ms() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let up = listener.local_addr().expect("addr");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let held = stop.clone();
    let server = std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nabc");
        // Held open, silent, until the test ends.
        while !held.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let gw = Gateway::start(
        &GatewayToml::new()
            .upstream("quiet", &[up])
            .route("r", "/", "quiet")
            .with("timeouts = { read_idle_ms = 500 }")
            .build(),
    );
    let mut c = std::net::TcpStream::connect(gw.http).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    c.write_all(b"GET / HTTP/1.1\r\nHost: test.local\r\n\r\n")
        .expect("send");
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let ended = loop {
        match c.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
            Err(_) => break true,
        }
    };
    let waited = start.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = server.join();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.ends_with("abc"),
        "the body's start was passed on: {text}"
    );
    assert!(ended, "the connection was held past 10 s");
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_secs(4),
        "cut after {waited:?}"
    );
}
