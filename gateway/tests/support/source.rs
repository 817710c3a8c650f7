//! Clients from a chosen loopback address: all of 127.0.0.0/8 is local, so a test can play
//! several clients, each seen by the gateway under its own address.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::Duration,
};

use sluice_e2e::http::{parse, request_text, Reply};

/// A blocking connection to `to` from `from` (10 s read timeout).
pub fn connect_from(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("runtime");
    let stream = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(SocketAddr::from((from, 0))).expect("bind");
        let s = socket.connect(to).await.expect("connect");
        s.into_std().expect("std stream")
    });
    stream.set_nonblocking(false).expect("blocking");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
}

/// Sends `raw` from `from` on a new connection and reads the reply until the gateway
/// closes the connection.
pub fn raw_from(from: Ipv4Addr, to: SocketAddr, raw: &[u8]) -> Reply {
    let mut s = connect_from(from, to);
    s.write_all(raw).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    parse(&out)
}

/// One request from `from` with `Host: test.local` and `Connection: close`.
pub fn request_from(from: Ipv4Addr, to: SocketAddr, path: &str, extra: &[&str]) -> Reply {
    raw_from(
        from,
        to,
        request_text("GET", path, "test.local", extra, "").as_bytes(),
    )
}
