//! The gateway's pooled HTTP/1.1 connections to upstream targets, against a raw-socket
//! upstream that counts its connections: reuse, chunked bodies, interim responses, a target
//! closing idle connections (or closing one just as a request is sent), the route's idle
//! timeout, a response body cut short, a request body the upstream never read, and responses
//! whose framing is suspect or broken.

mod support;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use support::{parse, runtime, Gateway, GatewayToml};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How the raw upstream answers each request on a connection.
#[derive(Clone, Copy)]
enum Answer {
    /// `Content-Length` body, connection kept.
    Length,
    /// Chunked body in two chunks, connection kept.
    Chunked,
    /// Chunked body with a trailer field, connection kept.
    ChunkedTrailers,
    /// `Content-Length` body, then the connection is closed 50 ms later if no request came.
    ClosesIdle,
    /// A large `Content-Length` body sent slowly, so a client can leave in the middle.
    Slow,
    /// Answers with the request line as soon as the head arrives, never reading a request
    /// body, and closes 100 ms later.
    EarlyClose,
    /// Answers `ok` as soon as the head arrives and keeps the connection (what follows a
    /// head, a body included, is read as the start of the next head).
    EarlyKeep,
    /// `100 Continue` and `103 Early Hints` before a `Content-Length` body.
    Interim,
    /// Both `Content-Length` (wrong) and chunked framing: chunked must win.
    BothFramings,
    /// A `Content-Length` that is not a number.
    BadLength,
    /// Answers the first request on a connection; closes the connection, unanswered, when
    /// the second request arrives (the race a pooled connection can lose).
    DropsSecond,
    /// Full duplex: sends its response head at once, then echoes the request body (of the
    /// request's `Content-Length`) as it reads it, chunk by chunk.
    Duplex,
}

struct Counts {
    accepted: AtomicUsize,
    open: AtomicUsize,
    requests: AtomicUsize,
}

fn raw_upstream(rt: &tokio::runtime::Runtime, answer: Answer) -> (SocketAddr, Arc<Counts>) {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let counts = Arc::new(Counts {
        accepted: AtomicUsize::new(0),
        open: AtomicUsize::new(0),
        requests: AtomicUsize::new(0),
    });
    let c = counts.clone();
    rt.spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            c.accepted.fetch_add(1, Ordering::SeqCst);
            c.open.fetch_add(1, Ordering::SeqCst);
            let c = c.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let mut served = 0;
                'conn: loop {
                    // One request head (the gateway sends no body for GET).
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        let read = if matches!(answer, Answer::ClosesIdle) {
                            match tokio::time::timeout(
                                Duration::from_millis(50),
                                s.read(&mut chunk),
                            )
                            .await
                            {
                                Ok(r) => r,
                                Err(_) => break 'conn, // idle: close
                            }
                        } else {
                            s.read(&mut chunk).await
                        };
                        match read {
                            Ok(0) | Err(_) => break 'conn,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf
                        .windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .map_or(0, |p| p + 4);
                    let line = buf
                        .split(|b| *b == b'\r')
                        .next()
                        .map(<[u8]>::to_vec)
                        .unwrap_or_default();
                    let length = String::from_utf8_lossy(&buf[..end])
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    buf.drain(..end);
                    c.requests.fetch_add(1, Ordering::SeqCst);
                    served += 1;
                    let ok = match answer {
                        Answer::Length | Answer::ClosesIdle | Answer::EarlyKeep => s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .await
                            .is_ok(),
                        Answer::Interim => s
                            .write_all(
                                b"HTTP/1.1 100 Continue\r\n\r\n\
                                  HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n\
                                  HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                            )
                            .await
                            .is_ok(),
                        Answer::BothFramings => s
                            .write_all(
                                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\
                                  Transfer-Encoding: chunked\r\n\r\n7\r\nchunked\r\n0\r\n\r\n",
                            )
                            .await
                            .is_ok(),
                        Answer::BadLength => s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: two\r\n\r\nok")
                            .await
                            .is_ok(),
                        Answer::Duplex => {
                            let mut ok = s
                                .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                                .await
                                .is_ok();
                            let mut left = length;
                            while ok && left > 0 {
                                if buf.is_empty() {
                                    match s.read(&mut chunk).await {
                                        Ok(0) | Err(_) => break 'conn,
                                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                                    }
                                }
                                let n = buf.len().min(left);
                                let part: Vec<u8> = buf.drain(..n).collect();
                                left -= n;
                                let mut framed = format!("{n:x}\r\n").into_bytes();
                                framed.extend_from_slice(&part);
                                framed.extend_from_slice(b"\r\n");
                                ok = s.write_all(&framed).await.is_ok();
                            }
                            ok && s.write_all(b"0\r\n\r\n").await.is_ok()
                        }
                        Answer::DropsSecond if served == 2 => false,
                        Answer::DropsSecond => s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .await
                            .is_ok(),
                        Answer::ChunkedTrailers => s
                            .write_all(
                                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n\
                                  3\r\nchu\r\n4\r\nnked\r\n0\r\nx-sum: 7\r\n\r\n",
                            )
                            .await
                            .is_ok(),
                        Answer::Chunked => s
                            .write_all(
                                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                                  3\r\nchu\r\n4\r\nnked\r\n0\r\n\r\n",
                            )
                            .await
                            .is_ok(),
                        Answer::EarlyClose => {
                            let head = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                                line.len()
                            );
                            let _ = s.write_all(head.as_bytes()).await;
                            let _ = s.write_all(&line).await;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            false
                        }
                        Answer::Slow => {
                            let mut ok = s
                                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
                                .await
                                .is_ok();
                            for _ in 0..100 {
                                if !ok {
                                    break;
                                }
                                ok = s.write_all(&[b'x'; 1000]).await.is_ok();
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            ok
                        }
                    };
                    if !ok {
                        break;
                    }
                }
                c.open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, counts)
}

fn gateway(up: SocketAddr, idle_ms: u64) -> Gateway {
    gateway_with(up, &format!("idle_ms = {idle_ms}"))
}

/// A gateway whose one route to `up` has these `timeouts`. One worker: these tests count
/// the target's connections across fresh client connections, and each worker keeps
/// connections of its own (`each_worker_reuses_only_its_own_connections`).
fn gateway_with(up: SocketAddr, timeouts: &str) -> Gateway {
    Gateway::start_with_workers(
        &GatewayToml::new()
            .upstream("a", &[up])
            .route_all("r", "a")
            .with(&format!("timeouts = {{ {timeouts} }}"))
            .build(),
        1,
    )
}

/// One request on a fresh client connection, answered whole.
fn get(gw: &Gateway) -> support::Reply {
    support::request(gw.http, "GET", "/", &[], "")
}

/// Starts an upload of 1,000 bytes, sends 300 of them, and reads the response the target
/// gives before reading the body.
fn start_upload(gw: &Gateway) -> (TcpStream, support::Reply) {
    let mut s = support::connect(gw);
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        .expect("write");
    s.write_all(&[b'a'; 300]).expect("write");
    let r = support::read_one(&mut s).expect("answered before the body was read");
    (s, r)
}

fn eventually(what: &str, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(5), "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sequential_requests_reuse_one_connection_for_length_chunked_trailer_and_interim_answers() {
    let rt = runtime();
    for answer in [
        Answer::Length,
        Answer::Chunked,
        Answer::ChunkedTrailers,
        Answer::Interim,
    ] {
        let (up, counts) = raw_upstream(&rt, answer);
        let gw = gateway(up, 60_000);
        for _ in 0..20 {
            let asked = Instant::now();
            let r = get(&gw);
            assert_eq!(r.status, 200);
            assert!(r.body == "ok" || r.body == "chunked", "{}", r.body);
            // `Connection: close` is honoured at the end of the body, not at the idle limit
            // (header_read_timeout_ms = 500).
            assert!(
                asked.elapsed() < Duration::from_millis(400),
                "closed after {:?}",
                asked.elapsed()
            );
        }
        assert_eq!(counts.requests.load(Ordering::SeqCst), 20);
        assert_eq!(
            counts.accepted.load(Ordering::SeqCst),
            1,
            "every request went over the one pooled connection"
        );
    }
}

#[test]
fn each_worker_reuses_only_its_own_connections() {
    let rt = runtime();
    let (up, counts) = raw_upstream(&rt, Answer::Length);
    let gw = Gateway::start_with_workers(
        &GatewayToml::new()
            .upstream("a", &[up])
            .route_all("r", "a")
            .with("timeouts = { idle_ms = 60000 }")
            .build(),
        2,
    );
    for _ in 0..40 {
        assert_eq!(get(&gw).status, 200);
    }
    // The kernel spread the 40 client connections over both workers' sockets...
    let by_worker = [0, 1].map(|w| {
        support::metric(
            &gw,
            &format!("sluice_gateway_connections_accepted_total{{worker=\"{w}\"}}"),
        )
    });
    assert!(by_worker.iter().all(|&n| n > 0.0), "{by_worker:?}");
    assert_eq!(by_worker.iter().sum::<f64>(), 40.0);
    // ...and each worker opened one connection to the target and reused it.
    assert_eq!(counts.requests.load(Ordering::SeqCst), 40);
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 2);
}

#[test]
fn a_connection_the_target_closed_while_idle_is_not_used_again() {
    let rt = runtime();
    let (up, counts) = raw_upstream(&rt, Answer::ClosesIdle);
    let gw = gateway(up, 60_000);
    for round in 1..=3 {
        assert_eq!(get(&gw).status, 200, "round {round}");
        // The target closes the idle connection after 50 ms.
        eventually("the target closed its idle connection", || {
            counts.open.load(Ordering::SeqCst) == 0
        });
    }
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 3);
    assert_eq!(counts.requests.load(Ordering::SeqCst), 3);
}

#[test]
fn idle_connections_close_after_the_routes_idle_timeout() {
    let rt = runtime();
    let (up, counts) = raw_upstream(&rt, Answer::Length);
    let gw = gateway(up, 300);
    assert_eq!(get(&gw).status, 200);
    assert_eq!(counts.open.load(Ordering::SeqCst), 1);
    let idle = Instant::now();
    eventually("the gateway closed the idle connection", || {
        counts.open.load(Ordering::SeqCst) == 0
    });
    assert!(
        idle.elapsed() >= Duration::from_millis(250),
        "not before idle_ms: {:?}",
        idle.elapsed()
    );
    // The next request opens a new one.
    assert_eq!(get(&gw).status, 200);
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 2);
}

#[test]
fn a_body_cut_short_does_not_return_its_connection() {
    let rt = runtime();
    let (up, counts) = raw_upstream(&rt, Answer::Slow);
    let gw = gateway(up, 60_000);
    let mut s = TcpStream::connect(gw.http).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut part = [0u8; 4096];
    let n = s.read(&mut part).expect("response starts");
    assert!(part[..n].starts_with(b"HTTP/1.1 200"));
    drop(s); // the client leaves in the middle of the body
    eventually("the half-read upstream connection was closed", || {
        counts.open.load(Ordering::SeqCst) == 0
    });
    // A later request gets a connection of its own, and its whole body.
    let mut s = TcpStream::connect(gw.http).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("whole response");
    let r = parse(&raw);
    assert_eq!((r.status, r.body.len()), (200, 100_000));
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 2);
}

#[test]
fn a_request_body_the_upstream_never_read_is_not_taken_for_the_next_request() {
    let rt = runtime();
    let (up, _counts) = raw_upstream(&rt, Answer::EarlyClose);
    let gw = gateway(up, 60_000);
    // Part of the body (max_body_bytes is 1024); the upstream answers with the request line
    // and closes without reading it.
    let (mut s, r) = start_upload(&gw);
    assert_eq!((r.status, r.body.as_str()), (200, "POST /upload HTTP/1.1"));
    // The upstream has closed (after 100 ms), with the body still coming.
    std::thread::sleep(Duration::from_millis(400));
    // The rest of the body, crafted to read as a request if it were parsed as one, then a
    // real request.
    let mut rest = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    rest.resize(700, b'a');
    let _ = s.write_all(&rest);
    let _ = s.write_all(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut after = Vec::new();
    let _ = s.read_to_end(&mut after);
    let after = String::from_utf8_lossy(&after);
    // Whatever the gateway does with the connection, the body's bytes are never a request
    // (parking this connection once the response was done would have smuggled one).
    assert!(!after.contains("HTTP/1.1 400"), "{after}");
    assert!(!after.contains("smuggled"), "{after}");
}

#[test]
fn a_request_never_waits_behind_another_requests_upload() {
    let rt = runtime();
    let (up, counts) = raw_upstream(&rt, Answer::EarlyKeep);
    let gw = gateway_with(up, "request_ms = 3000");
    // A: an upload the target answers at once, then stalls (its connection is still sending
    // the body when A's response is done).
    let (a, r) = start_upload(&gw);
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    // B goes to the same target: on another connection, at once.
    let asked = Instant::now();
    let r = get(&gw);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        asked.elapsed() < Duration::from_millis(1500),
        "waited {:?} behind the stalled upload",
        asked.elapsed()
    );
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 2);
    drop(a);
}

#[test]
fn chunked_framing_wins_over_a_content_length_and_the_connection_is_not_reused() {
    let rt = runtime();
    let (up, counts) = raw_upstream(&rt, Answer::BothFramings);
    let gw = gateway(up, 60_000);
    for _ in 0..3 {
        let r = get(&gw);
        assert_eq!((r.status, r.body.as_str()), (200, "chunked"));
    }
    assert_eq!(
        counts.accepted.load(Ordering::SeqCst),
        3,
        "a response framed two ways may be a smuggling attempt: its connection is closed"
    );
}

#[test]
fn a_broken_response_head_is_a_502_problem() {
    let rt = runtime();
    let (up, _counts) = raw_upstream(&rt, Answer::BadLength);
    let gw = gateway(up, 60_000);
    let r = get(&gw);
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(
        r.headers.get("content-type").map(String::as_str),
        Some("application/problem+json")
    );
}

#[test]
fn a_safe_request_on_a_connection_closed_under_it_goes_again_and_a_delete_does_not() {
    let rt = runtime();
    let (up, counts) = raw_upstream(&rt, Answer::DropsSecond);
    let gw = gateway(up, 60_000);
    assert_eq!(get(&gw).status, 200);
    // The pooled connection looks alive; the target closes it on seeing this request.
    let r = get(&gw);
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "ok"),
        "sent again on a new connection"
    );
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 2);
    assert_eq!(counts.requests.load(Ordering::SeqCst), 3);
    // A DELETE (idempotent, but not safe) may have had its effect before the connection
    // closed: it is not sent again.
    let r = support::request(gw.http, "DELETE", "/", &[], "");
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 2);
}

#[test]
fn uploads_reach_the_target_whole_with_their_length_or_chunked() {
    let rt = runtime();
    let up = support::upstream(&rt, "echo", support::fixed(200, Duration::ZERO));
    let gw = gateway(up.addr, 60_000);
    let body: String = (0..1000).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    // Known length: passed on with a Content-Length.
    let r = support::request(gw.http, "POST", "/len", &[], &body);
    let seen: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(seen["body"], body.as_str());
    assert_eq!(seen["headers"]["content-length"], "1000");
    assert!(seen["headers"].get("transfer-encoding").is_none());
    // Unknown length (the client chunked it): chunked to the target too.
    let mut s = support::connect(&gw);
    let mut wire =
        b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for part in [&body[..1], &body[1..400], &body[400..900]] {
        wire.extend_from_slice(format!("{:x}\r\n{part}\r\n", part.len()).as_bytes());
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    s.write_all(&wire).expect("write");
    let r = support::read_one(&mut s).expect("reply");
    assert_eq!(r.status, 200, "{}", r.body);
    let seen: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(seen["body"], &body[..900]);
    assert_eq!(seen["headers"]["transfer-encoding"], "chunked");
    assert!(seen["headers"].get("content-length").is_none());
    // An empty chunked upload goes as an empty body.
    s.write_all(b"POST /empty HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        .expect("write");
    let r = support::read_one(&mut s).expect("reply");
    let seen: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(seen["headers"]["content-length"], "0");
    assert!(seen["headers"].get("transfer-encoding").is_none());
}

#[test]
fn a_target_that_answers_while_reading_the_upload_gets_all_of_it() {
    let rt = runtime();
    let (up, counts) = raw_upstream(&rt, Answer::Duplex);
    let gw = gateway(up, 60_000);
    for round in 0..2 {
        let mut s = support::connect(&gw);
        s.write_all(b"POST /duplex HTTP/1.1\r\nHost: x\r\nContent-Length: 600\r\n\r\n")
            .expect("write");
        s.write_all(&[b'a'; 300]).expect("write");
        // The rest only after the response has started.
        std::thread::sleep(Duration::from_millis(200));
        s.write_all(&[b'b'; 300]).expect("write");
        // The echo comes back chunked: read to its last chunk.
        let mut raw = Vec::new();
        let mut byte = [0u8; 1];
        while !raw.ends_with(b"\r\n0\r\n\r\n") {
            match s.read(&mut byte) {
                Ok(1) => raw.push(byte[0]),
                other => panic!(
                    "round {round}: {other:?} after {:?}",
                    String::from_utf8_lossy(&raw)
                ),
            }
        }
        let r = parse(&raw);
        assert_eq!(r.status, 200, "round {round}");
        assert_eq!(r.body, format!("{}{}", "a".repeat(300), "b".repeat(300)));
    }
    assert_eq!(
        counts.accepted.load(Ordering::SeqCst),
        1,
        "the upload was sent whole, so the connection was reused"
    );
}

#[test]
fn a_chunked_upload_is_not_held_back_waiting_for_its_first_chunk() {
    let rt = runtime();
    let (up, _counts) = raw_upstream(&rt, Answer::EarlyKeep);
    let gw = gateway_with(up, "request_ms = 3000");
    // A client that sends its body only once the response has begun.
    let mut s = support::connect(&gw);
    let asked = Instant::now();
    s.write_all(b"POST /stream HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .expect("write");
    let r = support::read_one(&mut s).expect("answered before any chunk");
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    assert!(
        asked.elapsed() < Duration::from_millis(1500),
        "the head waited {:?} for a chunk",
        asked.elapsed()
    );
}
