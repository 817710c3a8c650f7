//! A client's broken or oversized request body is the client's error: 400 or 413 as
//! problem+json, counted as such, never 502, and the upstream exchange it was feeding is
//! abandoned (that upstream connection closes) — whether the body streams, is buffered for
//! retries, or comes over HTTP/2.

mod support;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use support::{fixed, metric, raw, runtime, upstream, Gateway, GatewayToml, Reply};

/// What a raw upstream saw on each connection: the bytes, and whether it ended (EOF or
/// reset) within 3 s.
type Seen = Arc<Mutex<Vec<(Vec<u8>, bool)>>>;

/// An upstream that never answers: it records what arrives and when the gateway hangs up,
/// and counts the connections it accepted.
fn silent_upstream() -> (SocketAddr, Seen, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen: Seen = Arc::default();
    let accepted = Arc::new(AtomicUsize::new(0));
    let (record, count) = (seen.clone(), accepted.clone());
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            count.fetch_add(1, Ordering::SeqCst);
            let record = record.clone();
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                let ended = loop {
                    match s.read(&mut buf) {
                        Ok(0) => break true,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                        Err(_) => break false,
                    }
                };
                record.lock().expect("seen").push((got, ended));
            });
        }
    });
    (addr, seen, accepted)
}

/// One upstream `a` at `addr` and one route `r` taking every request to it.
fn to_one(addr: SocketAddr) -> String {
    GatewayToml::new()
        .upstream("a", &[addr])
        .route_all("r", "a")
        .build()
}

fn problem(r: &Reply, status: u16) {
    assert_eq!(r.status, status, "{r:?}");
    assert_eq!(
        r.headers["content-type"], "application/problem+json",
        "{r:?}"
    );
}

fn chunked(path: &str, extra: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n{extra}Connection: close\r\n\r\n{body}"
    )
    .into_bytes()
}

/// Bodies over the limit (1024 bytes) and malformed ones, on a streaming route and on one
/// that buffers for retries.
fn bad_bodies() -> Vec<(String, String, u16)> {
    let big = format!(
        "320\r\n{}\r\n320\r\n{}\r\n0\r\n\r\n",
        "a".repeat(800),
        "b".repeat(800)
    );
    let extensions = format!("5;{}\r\nhello\r\n0\r\n\r\n", "e=x;".repeat(8000));
    vec![
        (
            "malformed size".into(),
            "5\r\nhello\r\nzz\r\nmore\r\n0\r\n\r\n".into(),
            400,
        ),
        (
            "hex overflow".into(),
            "5\r\nhello\r\nfffffffffffffffffffff\r\nx\r\n0\r\n\r\n".into(),
            400,
        ),
        (
            "bad chunk end".into(),
            "5\r\nhelloXX3\r\nabc\r\n0\r\n\r\n".into(),
            400,
        ),
        ("chunk extensions".into(), extensions, 400),
        ("over the limit".into(), big, 413),
    ]
}

#[test]
fn malformed_and_oversized_bodies_are_the_clients_error() {
    let rt = runtime();
    let up = upstream(&rt, "a", fixed(200, Duration::ZERO));
    let gw = Gateway::start(
        &GatewayToml::new()
            .upstream("a", &[up.addr])
            .route("stream", "/stream", "a")
            .route("buffer", "/buffer", "a")
            .with("methods = [\"POST\"]\nretries = { attempts = 1, on_status = [503] }")
            .build(),
    );
    let mut want = std::collections::HashMap::<(&str, u16), f64>::new();
    for route in ["stream", "buffer"] {
        for (case, body, status) in bad_bodies() {
            for expect in ["", "Expect: 100-continue\r\n"] {
                let r = raw(gw.http, &chunked(&format!("/{route}"), expect, &body));
                // A 100 Continue may come first for a chunked body; the answer is the last head.
                let last = String::from_utf8_lossy(r.body.as_bytes()).into_owned();
                let r = if r.status == 100 {
                    support::parse(last.as_bytes())
                } else {
                    r
                };
                problem(&r, status);
                let _ = case;
                *want.entry((route, status)).or_default() += 1.0;
            }
        }
    }
    // A declared length over the limit with Expect: 413 at once, and no 100 Continue.
    let r = raw(
        gw.http,
        b"POST /stream HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
    );
    problem(&r, 413);
    *want.entry(("stream", 413)).or_default() += 1.0;
    // Counted as the client's errors, under their routes.
    for ((route, status), n) in want {
        let series = format!(
            "sluice_gateway_requests_total{{route=\"{route}\",method=\"POST\",status=\"{status}\"}}"
        );
        assert_eq!(metric(&gw, &series), n, "{series}");
    }
    assert_eq!(
        metric(
            &gw,
            "sluice_gateway_requests_total{route=\"stream\",method=\"POST\",status=\"502\"}"
        ),
        0.0
    );
    // The upstream was not blamed: a good request still goes through.
    let r = raw(gw.http, &chunked("/stream", "", "5\r\nhello\r\n0\r\n\r\n"));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["body"], "hello");
}

#[test]
fn a_broken_body_abandons_the_upstream_exchange() {
    let (addr, seen, accepted) = silent_upstream();
    let gw = Gateway::start(&to_one(addr));
    for (case, body, status) in bad_bodies() {
        seen.lock().expect("seen").clear();
        accepted.store(0, Ordering::SeqCst);
        let start = Instant::now();
        let r = raw(gw.http, &chunked("/", "", &body));
        problem(&r, status);
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{case}: {:?}",
            start.elapsed()
        );
        // Either the body failed before anything was sent (no connection), or the upstream
        // saw the request start and then the connection close, its chunked body never
        // terminated.
        let conns = settled(&seen, &accepted);
        assert!(conns.len() <= 1, "{case}: {conns:?}");
        for (bytes, ended) in &conns {
            assert!(*ended, "{case}: the upstream connection was left open");
            let text = String::from_utf8_lossy(bytes);
            assert!(text.starts_with("POST / HTTP/1.1\r\n"), "{case}: {text}");
            assert!(
                !text.ends_with("0\r\n\r\n"),
                "{case}: the body looked complete: {text}"
            );
        }
    }
    // A first chunk streamed to the upstream, then a malformed one: 400, and the upstream
    // connection that carried the first chunk is closed.
    seen.lock().expect("seen").clear();
    accepted.store(0, Ordering::SeqCst);
    let mut s = std::net::TcpStream::connect(gw.http).expect("connect");
    s.write_all(&chunked("/", "", "5\r\nhello\r\n"))
        .expect("write");
    std::thread::sleep(Duration::from_millis(300));
    s.write_all(b"zz\r\nmore\r\n0\r\n\r\n").expect("write");
    let mut out = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let _ = s.read_to_end(&mut out);
    problem(&support::parse(&out), 400);
    let conns = settled(&seen, &accepted);
    assert_eq!(conns.len(), 1, "{conns:?}");
    let (bytes, ended) = &conns[0];
    assert!(*ended, "the upstream connection was left open");
    let text = String::from_utf8_lossy(bytes);
    assert!(text.ends_with("5\r\nhello\r\n"), "{text}");
}

/// What the silent upstream saw once every connection it accepted has ended (or 4 s).
fn settled(seen: &Seen, accepted: &AtomicUsize) -> Vec<(Vec<u8>, bool)> {
    // A connection the gateway opened may not have been accepted yet.
    std::thread::sleep(Duration::from_millis(200));
    let deadline = Instant::now() + Duration::from_secs(4);
    loop {
        let s = seen.lock().expect("seen").clone();
        if s.len() == accepted.load(Ordering::SeqCst) || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_http2_body_over_the_limit_is_413() {
    let rt = runtime();
    let up = upstream(&rt, "a", fixed(200, Duration::ZERO));
    let gw = Gateway::start(&to_one(up.addr));
    let statuses = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(gw.http)
            .await
            .expect("connect");
        let (mut client, conn) = h2::client::handshake(tcp).await.expect("h2");
        tokio::spawn(conn);
        let mut out = Vec::new();
        // No content-length: the limit is found while streaming. Then a declared one.
        for declared in [None, Some("3000")] {
            let mut req = http::Request::post("http://x/up");
            if let Some(n) = declared {
                req = req.header("content-length", n);
            }
            client = client.ready().await.expect("ready");
            let (resp, mut send) = client
                .send_request(req.body(()).expect("req"), false)
                .expect("send");
            for _ in 0..3 {
                send.reserve_capacity(1000);
                if send
                    .send_data(bytes::Bytes::from(vec![b'x'; 1000]), false)
                    .is_err()
                {
                    break;
                }
            }
            let _ = send.send_data(bytes::Bytes::new(), true);
            let resp = resp.await.expect("response");
            let ctype = resp
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap_or("").to_string());
            out.push((resp.status().as_u16(), ctype));
        }
        out
    });
    for (status, ctype) in statuses {
        assert_eq!(status, 413);
        assert_eq!(ctype.as_deref(), Some("application/problem+json"));
    }
}

/// A body that stops coming is answered 408 within the listener's `body_read_timeout_ms`,
/// whether the gateway streams it, reads it whole for a retry or for a JSON transform, or
/// it comes over HTTP/2; nothing reaches the upstream of a body read whole.
#[test]
fn a_stalled_body_is_408_within_its_deadline() {
    let rt = runtime();
    let up = upstream(&rt, "a", fixed(200, Duration::ZERO));
    let gw = Gateway::start(
        &GatewayToml::new()
            .with("body_read_timeout_ms = 300")
            .upstream("a", &[up.addr])
            .route("streamed", "/streamed", "a")
            .route("retried", "/retried", "a")
            .with("retries = { attempts = 1 }")
            .route("json", "/json", "a")
            .raw("[route.request_transform]\njson_set = { \"via\" = \"sluice\" }")
            .build(),
    );
    for path in ["/streamed", "/retried", "/json"] {
        let mut s = std::net::TcpStream::connect(gw.http).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let started = Instant::now();
        // Five bytes of a promised hundred, then nothing.
        s.write_all(
            format!(
                "PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"a\":"
            )
            .as_bytes(),
        )
        .expect("write");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let took = started.elapsed();
        let reply = support::parse(&out);
        problem(&reply, 408);
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(5),
            "{path}: {took:?}"
        );
    }
    // The two routes that read the body whole sent nothing upstream; the streamed one may
    // have started its exchange.
    assert!(up.hits.load(Ordering::SeqCst) <= 1);
    // Over HTTP/2: a stream that sends part of its body and stops.
    let status = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(gw.http)
            .await
            .expect("connect");
        let (mut client, conn) = h2::client::handshake(tcp).await.expect("h2");
        tokio::spawn(conn);
        client = client.ready().await.expect("ready");
        let req = http::Request::put("http://x/retried")
            .header("content-length", "100")
            .body(())
            .expect("req");
        let (resp, mut send) = client.send_request(req, false).expect("send");
        send.send_data(bytes::Bytes::from_static(b"12345"), false)
            .expect("data");
        let resp = tokio::time::timeout(Duration::from_secs(5), resp)
            .await
            .expect("answered within the deadline")
            .expect("response");
        drop(send);
        resp.status().as_u16()
    });
    assert_eq!(status, 408);
    // Counted as the route's 408s (one over HTTP/1.1, one over HTTP/2).
    assert_eq!(
        metric(
            &gw,
            "sluice_gateway_requests_total{route=\"retried\",method=\"PUT\",status=\"408\"}"
        ),
        2.0
    );
}

/// Bodies read whole are held to one budget for the process (256 MiB): one HTTP/2
/// connection's streams, each holding up to the listener's `max_body_bytes`, cannot take
/// more. Past it a request is 503 with `Retry-After`; the budget comes back as bodies go.
#[test]
fn bodies_read_whole_are_held_to_the_process_budget() {
    const STREAMS: usize = 32;
    const EACH: usize = 9 << 20;
    let rt = runtime();
    let up = upstream(&rt, "a", fixed(200, Duration::ZERO));
    let config = GatewayToml::new()
        .upstream("a", &[up.addr])
        .route_all("retried", "a")
        .with("retries = { attempts = 1 }")
        .build()
        .replacen("max_body_bytes = 1024", "max_body_bytes = 10485760", 1);
    let gw = Gateway::start(&config);
    let (statuses, after) = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(gw.http)
            .await
            .expect("connect");
        let (client, conn) = h2::client::Builder::new()
            .initial_window_size(EACH as u32)
            .handshake::<_, bytes::Bytes>(tcp)
            .await
            .expect("h2");
        tokio::spawn(conn);
        // Every stream sends its body but does not end it, so every body is held at once.
        let mut open = Vec::new();
        for _ in 0..STREAMS {
            let mut client = client.clone().ready().await.expect("ready");
            let req = http::Request::put("http://x/up")
                .header("content-length", EACH.to_string())
                .body(())
                .expect("req");
            let (resp, mut send) = client.send_request(req, false).expect("send");
            send.send_data(bytes::Bytes::from(vec![b'x'; EACH]), false)
                .expect("data");
            open.push((resp, send));
        }
        // Those past the budget are answered now.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut statuses = Vec::new();
        for (resp, mut send) in open {
            let _ = send.send_data(bytes::Bytes::new(), true);
            let resp = tokio::time::timeout(Duration::from_secs(10), resp)
                .await
                .expect("answered")
                .expect("response");
            let retry_after = resp.headers().contains_key("retry-after");
            statuses.push((resp.status().as_u16(), retry_after));
        }
        // Every body is gone: the budget is whole again.
        let mut client = client.ready().await.expect("ready");
        let req = http::Request::put("http://x/up")
            .header("content-length", "5")
            .body(())
            .expect("req");
        let (resp, mut send) = client.send_request(req, false).expect("send");
        send.send_data(bytes::Bytes::from_static(b"12345"), true)
            .expect("data");
        let after = resp.await.expect("response").status().as_u16();
        (statuses, after)
    });
    let over = statuses.iter().filter(|(s, _)| *s == 503).count();
    let ok = statuses.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(over + ok, STREAMS, "{statuses:?}");
    // 256 MiB holds at most 28 bodies of 9 MiB (fewer if refused streams held part of
    // it while others were under way); some were refused.
    assert!((1..=28).contains(&ok) && over >= 4, "{statuses:?}");
    assert!(
        statuses.iter().all(|(s, retry)| *s != 503 || *retry),
        "{statuses:?}"
    );
    assert_eq!(after, 200);
}

/// Once the upstream's answer has begun, an upload that goes quiet (a full-duplex stream)
/// is left to the response's deadlines: `body_read_timeout_ms` does not cut it.
#[test]
fn a_quiet_upload_under_a_streaming_answer_is_not_cut() {
    // Answers at once, then streams its body for a while, never reading the upload's end.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                if support::read_head(&mut s).is_none() {
                    return;
                }
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n",
                );
                std::thread::sleep(Duration::from_millis(900));
                let _ = s.write_all(b"4\r\nlast\r\n0\r\n\r\n");
                std::thread::sleep(Duration::from_secs(2));
            });
        }
    });
    let gw = Gateway::start(
        &GatewayToml::new()
            .with("body_read_timeout_ms = 300")
            .upstream("a", &[addr])
            .route_all("r", "a")
            .build(),
    );
    let mut s = std::net::TcpStream::connect(gw.http).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // Part of the upload, then nothing for three times the body deadline.
    s.write_all(b"PUT /stream HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nhello")
        .expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"0\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("first") && text.contains("last"), "{text}");
}

/// Over HTTP/2 as over HTTP/1.1: a route changing JSON fields refuses (415) a body of
/// another type, takes one that turns out empty (HEADERS, then an empty DATA frame ending
/// the stream, no length), and an encoded query name is removed as its plain one is.
#[test]
fn http2_requests_meet_the_json_and_query_rules_as_http1_ones_do() {
    let rt = runtime();
    let up = upstream(&rt, "a", fixed(200, Duration::ZERO));
    let gw = Gateway::start(
        &GatewayToml::new()
            .upstream("a", &[up.addr])
            .route("t", "/t", "a")
            .raw(
                r#"[route.request_transform]
remove_query = ["debug"]
json_set = { "tenant" = "acme" }"#,
            )
            .build(),
    );
    let answers = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(gw.http)
            .await
            .expect("connect");
        let (mut client, conn) = h2::client::handshake(tcp).await.expect("h2");
        tokio::spawn(conn);
        let mut out = Vec::new();
        for (path, ctype, body) in [
            ("/t/x", "text/plain", &b"{\"tenant\":\"evil\"}"[..]),
            ("/t/x?%64ebug=1&keep=2", "text/plain", &b""[..]),
        ] {
            client = client.ready().await.expect("ready");
            let req = http::Request::post(format!("http://x{path}"))
                .header("content-type", ctype)
                .body(())
                .expect("req");
            let (resp, mut send) = client.send_request(req, false).expect("send");
            send.send_data(bytes::Bytes::copy_from_slice(body), true)
                .expect("data");
            let resp = resp.await.expect("response");
            let status = resp.status().as_u16();
            let mut body = resp.into_body();
            let mut got = Vec::new();
            while let Some(chunk) = body.data().await {
                got.extend_from_slice(&chunk.expect("chunk"));
            }
            out.push((status, String::from_utf8_lossy(&got).into_owned()));
        }
        out
    });
    assert_eq!(answers[0].0, 415, "{answers:?}");
    assert!(answers[0].1.contains("JSON"), "{answers:?}");
    assert_eq!(answers[1].0, 200, "{answers:?}");
    let seen: serde_json::Value = serde_json::from_str(&answers[1].1).expect("the echo");
    assert_eq!(seen["path"], "/t/x?keep=2", "{seen}");
}
