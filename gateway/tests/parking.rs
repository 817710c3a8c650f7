//! Idle HTTP/1.1 keep-alive connections are parked between requests, without hyper's
//! buffers, and woken by their next request. Nothing a client sends is lost across a park,
//! and a parked connection still ends on time and at shutdown.

mod support;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use support::{connect, fixed, metric, read_one, runtime, upstream, Gateway, GatewayToml};

fn gateway(up: SocketAddr) -> Gateway {
    gateway_waiting(up, 5000, 5000)
}

/// With `keepalive_timeout_ms = keepalive_ms` and `header_read_timeout_ms = head_ms`.
fn gateway_waiting(up: SocketAddr, keepalive_ms: u64, head_ms: u64) -> Gateway {
    Gateway::start(
        &GatewayToml::empty()
            .raw("[admin]\nlisten = \"127.0.0.1:0\"\nshutdown_deadline_ms = 8000\nhost_names = [\"test.local\"]")
            .raw(&format!(
                "[[listener]]\nname = \"main\"\naddress = \"127.0.0.1:0\"\nheader_read_timeout_ms = {head_ms}\n\
                 keepalive_timeout_ms = {keepalive_ms}\nmax_body_bytes = 4096"
            ))
            .upstream("a", &[up])
            .route_all("r", "a")
            .build(),
    )
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")
}

/// Waits up to 5 s for a metric to reach `want`.
fn settles(gw: &Gateway, series: &str, want: f64) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if metric(gw, series) == want {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn idle_connections_park_and_wake_for_their_next_request() {
    let rt = runtime();
    let up = upstream(&rt, "a", fixed(200, Duration::ZERO));
    let gw = gateway(up.addr);
    let mut conns: Vec<TcpStream> = (0..20).map(|_| connect(&gw)).collect();
    for (i, s) in conns.iter_mut().enumerate() {
        s.write_all(get(&format!("/first/{i}")).as_bytes())
            .expect("write");
        let r = read_one(s).expect("first response");
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["path"], format!("/first/{i}"));
    }
    assert!(
        settles(&gw, "sluice_gateway_parked_connections ", 20.0),
        "20 idle connections parked: {}",
        metric(&gw, "sluice_gateway_parked_connections ")
    );
    assert_eq!(metric(&gw, "sluice_gateway_active_connections "), 20.0);
    // Each wakes for its next request, on the same connection, and parks again.
    for (i, s) in conns.iter_mut().enumerate() {
        s.write_all(get(&format!("/second/{i}")).as_bytes())
            .expect("write");
        let r = read_one(s).expect("second response");
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["path"], format!("/second/{i}"));
    }
    assert_eq!(up.hits.load(Ordering::SeqCst), 40);
    assert!(settles(&gw, "sluice_gateway_parked_connections ", 20.0));
    drop(conns);
    assert!(
        settles(&gw, "sluice_gateway_parked_connections ", 0.0),
        "closed connections leave the parked count"
    );
    assert!(settles(&gw, "sluice_gateway_active_connections ", 0.0));
}

#[test]
fn pipelined_and_split_requests_survive_a_park() {
    let rt = runtime();
    let up = upstream(&rt, "a", fixed(200, Duration::ZERO));
    let gw = gateway(up.addr);

    // Two whole requests in one write: both answered, in order.
    let mut s = connect(&gw);
    s.write_all(format!("{}{}", get("/p1"), get("/p2")).as_bytes())
        .expect("write");
    for path in ["/p1", "/p2"] {
        let r = read_one(&mut s).expect("pipelined response");
        assert_eq!((r.status, r.json()["path"].clone()), (200, path.into()));
    }

    // The next request's first bytes arrive with the previous one and wait through the
    // park; the rest comes later.
    let mut s = connect(&gw);
    s.write_all(format!("{}GET /sp", get("/before")).as_bytes())
        .expect("write");
    let r = read_one(&mut s).expect("first response");
    assert_eq!(r.json()["path"], "/before");
    std::thread::sleep(Duration::from_millis(300));
    s.write_all(b"lit HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let r = read_one(&mut s).expect("split request answered");
    assert_eq!((r.status, r.json()["path"].clone()), (200, "/split".into()));

    // One byte at a time, with pauses longer than a park takes.
    let mut s = connect(&gw);
    s.write_all(get("/warm").as_bytes()).expect("write");
    assert_eq!(read_one(&mut s).expect("response").status, 200);
    for b in get("/slowly").bytes() {
        s.write_all(&[b]).expect("write");
        std::thread::sleep(Duration::from_millis(5));
    }
    let r = read_one(&mut s).expect("byte-by-byte request answered");
    assert_eq!(
        (r.status, r.json()["path"].clone()),
        (200, "/slowly".into())
    );
    // Still kept alive: stopping hyper to park never told the client to close.
    assert_eq!(r.headers.get("connection"), None);
    s.write_all(get("/again").as_bytes()).expect("write");
    let r = read_one(&mut s).expect("the connection is still open");
    assert_eq!(r.json()["path"], "/again");
}

#[test]
fn requests_with_bodies_keep_the_connection_in_step() {
    let rt = runtime();
    let up = upstream(&rt, "a", fixed(200, Duration::ZERO));
    let gw = gateway(up.addr);
    let mut s = connect(&gw);
    s.write_all(b"POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        .expect("write");
    let r = read_one(&mut s).expect("POST answered");
    assert_eq!((r.status, r.json()["body"].clone()), (200, "hello".into()));
    s.write_all(get("/after-post").as_bytes()).expect("write");
    let r = read_one(&mut s).expect("GET after POST answered");
    assert_eq!(r.json()["path"], "/after-post");
    assert!(settles(&gw, "sluice_gateway_parked_connections ", 1.0));

    // A body refused before it is read (over max_body_bytes), whole or still arriving: the
    // rest of it is never taken for a request.
    let mut answered = 0;
    for sent_first in [5000, 1000] {
        let mut s = connect(&gw);
        let body = "x".repeat(5000);
        let (first, rest) = body.split_at(sent_first);
        s.write_all(
            format!("POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{first}")
                .as_bytes(),
        )
        .expect("write");
        let r = read_one(&mut s).expect("413 answered");
        assert_eq!(r.status, 413);
        std::thread::sleep(Duration::from_millis(100));
        let _ = s.write_all(format!("{rest}{}", get("/after-413")).as_bytes());
        match read_one(&mut s) {
            None => {} // the connection was closed after the refused body
            Some(r) => {
                assert_eq!(
                    (r.status, r.json()["path"].clone()),
                    (200, "/after-413".into()),
                    "sent first: {sent_first}"
                );
                answered += 1;
            }
        }
    }
    assert_eq!(
        up.hits.load(Ordering::SeqCst),
        2 + answered,
        "the refused requests never reached the upstream"
    );
}

#[test]
fn parked_connections_end_when_idle_too_long_and_at_shutdown() {
    let rt = runtime();
    let up = upstream(&rt, "a", fixed(200, Duration::ZERO));
    // A short idle limit: a parked connection is closed after it.
    let gw = Gateway::start(
        &GatewayToml::new()
            .upstream("a", &[up.addr])
            .route_all("r", "a")
            .build(),
    );
    let mut s = connect(&gw);
    s.write_all(get("/").as_bytes()).expect("write");
    assert_eq!(read_one(&mut s).expect("response").status, 200);
    let idle = Instant::now();
    let mut buf = [0u8; 16];
    assert_eq!(s.read(&mut buf).expect("read until close"), 0);
    let waited = idle.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_millis(2000),
        "closed after header_read_timeout_ms (500): {waited:?}"
    );
    drop(gw);

    // Shutdown closes parked connections at once instead of waiting for the deadline (8 s).
    let mut gw = gateway(up.addr);
    let mut conns: Vec<TcpStream> = (0..5).map(|_| connect(&gw)).collect();
    for s in &mut conns {
        s.write_all(get("/").as_bytes()).expect("write");
        assert_eq!(read_one(s).expect("response").status, 200);
    }
    assert!(settles(&gw, "sluice_gateway_parked_connections ", 5.0));
    let start = Instant::now();
    gw.signal(libc::SIGTERM);
    for s in &mut conns {
        assert_eq!(s.read(&mut buf).expect("closed"), 0);
    }
    assert!(gw.wait().success());
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "exited without waiting for the parked connections: {:?}",
        start.elapsed()
    );
}

#[test]
fn a_request_that_asked_for_an_upgrade_and_got_none_keeps_its_connection() {
    let rt = runtime();
    let up = upstream(&rt, "a", fixed(200, Duration::ZERO));
    let gw = gateway(up.addr);
    let mut s = connect(&gw);
    // What `curl --http2 http://...` sends; the upstream answers HTTP/1.1 without switching.
    s.write_all(
        b"GET /h2c HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
    )
    .expect("write");
    let r = read_one(&mut s).expect("answered without an upgrade");
    assert_eq!((r.status, r.json()["path"].clone()), (200, "/h2c".into()));
    std::thread::sleep(Duration::from_millis(200));
    s.write_all(get("/after").as_bytes()).expect("write");
    let r = read_one(&mut s).expect("the connection is still open");
    assert_eq!((r.status, r.json()["path"].clone()), (200, "/after".into()));
}

#[test]
fn a_parked_connection_waits_for_the_keep_alive_deadline_and_its_next_head_for_the_head_one() {
    let rt = runtime();
    let up = upstream(&rt, "a", fixed(200, Duration::ZERO));
    let gw = gateway_waiting(up.addr, 1000, 500);
    // Parked with nothing more: closed after the keep-alive deadline.
    let mut s = connect(&gw);
    s.write_all(get("/").as_bytes()).expect("write");
    assert_eq!(read_one(&mut s).expect("response").status, 200);
    let idle = Instant::now();
    let mut buf = [0u8; 64];
    assert_eq!(s.read(&mut buf).expect("read until close"), 0);
    let waited = idle.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(1600),
        "closed {waited:?} after the park"
    );
    // Parked for 700 ms, then a head one byte per 100 ms that never ends: it has the head
    // deadline (500 ms) from its first byte, however long the wait before it.
    let mut s = connect(&gw);
    s.write_all(get("/").as_bytes()).expect("write");
    assert_eq!(read_one(&mut s).expect("response").status, 200);
    std::thread::sleep(Duration::from_millis(700));
    let first_byte = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let head = b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut closed_at = None;
    for b in head {
        if s.write_all(&[*b]).is_err() {
            closed_at = Some(first_byte.elapsed());
            break;
        }
        // The read timeout paces the bytes: 100 ms each while the connection is open.
        match s.read(&mut buf) {
            Ok(0) => {
                closed_at = Some(first_byte.elapsed());
                break;
            }
            Ok(_) => panic!("no response was due"),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                closed_at = Some(first_byte.elapsed());
                break;
            }
        }
    }
    let waited = closed_at.expect("closed while the head trickled in");
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_millis(1000),
        "closed {waited:?} after the head's first byte"
    );
}

#[test]
fn a_first_request_parks_at_once_and_a_reused_connection_after_a_tick() {
    let rt = runtime();
    let up = upstream(&rt, "a", fixed(200, Duration::ZERO));
    let gw = gateway(up.addr);
    let mut s = connect(&gw);
    s.write_all(get("/one").as_bytes()).expect("write");
    assert_eq!(read_one(&mut s).expect("response").status, 200);
    // Parked in the same step that wrote the response: no tick (250 ms) is waited for.
    let start = Instant::now();
    while metric(&gw, "sluice_gateway_parked_connections ") != 1.0 {
        assert!(
            start.elapsed() < Duration::from_millis(200),
            "a connection that carried one request parks at once"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Reused: it is served unparked and parks again once idle through a tick.
    for path in ["/two", "/three"] {
        s.write_all(get(path).as_bytes()).expect("write");
        assert_eq!(read_one(&mut s).expect("response").json()["path"], path);
    }
    assert!(settles(&gw, "sluice_gateway_parked_connections ", 1.0));
    s.write_all(get("/four").as_bytes()).expect("write");
    assert_eq!(read_one(&mut s).expect("response").json()["path"], "/four");
}

#[test]
fn a_reused_connection_ends_at_shutdown_without_waiting_to_park() {
    let rt = runtime();
    let up = upstream(&rt, "a", fixed(200, Duration::ZERO));
    let mut gw = gateway(up.addr);
    let mut s = connect(&gw);
    // Two requests: the connection is reused, so it stays unparked through a tick.
    for path in ["/one", "/two"] {
        s.write_all(get(path).as_bytes()).expect("write");
        assert_eq!(read_one(&mut s).expect("response").status, 200);
    }
    let idle = Instant::now();
    gw.signal(libc::SIGTERM);
    let mut buf = [0u8; 16];
    assert_eq!(s.read(&mut buf).expect("closed"), 0);
    // Woken by the stop itself: a connection that missed it would stay open until its
    // header-read timeout (5 s), the sweep having stopped with the listener.
    assert!(
        idle.elapsed() < Duration::from_secs(2),
        "closed {:?} after the shutdown began",
        idle.elapsed()
    );
    assert!(gw.wait().success());
}
