//! The one plain HTTP/1.1 test client, blocking, over std sockets: for the end-to-end
//! tests and the demo (`http_get`, which reports failures, since they count them) and for
//! the gateway's tests (`request`, `raw`, `read_one`, `parse`, which panic on a failed
//! connect or write and read what arrived).

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

/// A response.
#[derive(Debug)]
pub struct Reply {
    /// Status code (0 if there was no status line).
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: HashMap<String, String>,
    /// Body, chunked transfer coding removed.
    pub body: String,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// An HTTP/1.1 request with `Connection: close`; `extra` are raw header lines, and a body
/// that is not empty gets its `Content-Length`.
pub fn request_text(method: &str, path: &str, host: &str, extra: &[&str], body: &str) -> String {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for h in extra {
        head.push_str(h);
        head.push_str("\r\n");
    }
    if !body.is_empty() {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    head.push_str(body);
    head
}

/// One request with `Host: test.local` and `Connection: close` (see [`request_text`]).
pub fn request(addr: SocketAddr, method: &str, path: &str, extra: &[&str], body: &str) -> Reply {
    raw(
        addr,
        request_text(method, path, "test.local", extra, body).as_bytes(),
    )
}

/// Sends `raw` bytes as they are on a new connection and reads the reply until the peer
/// closes it (or 10 s pass).
pub fn raw(addr: SocketAddr, raw: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(raw).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    parse(&out)
}

/// Reads one message head, through its blank line and no further (byte by byte, so what
/// follows stays unread); `None` if the stream ends or fails first.
pub fn read_head(s: &mut impl Read) -> Option<Vec<u8>> {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => raw.push(byte[0]),
            _ => return None,
        }
    }
    Some(raw)
}

/// Whether the peer closed `s` (a read sees the end) within `wait`.
pub fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    let _ = s.set_read_timeout(Some(wait));
    let mut byte = [0u8; 1];
    matches!(s.read(&mut byte), Ok(0))
}

/// Holds an admin listener at `addr` as a client that wants it for itself would, and checks
/// both daemons' bounds on it: of 70 connections, one trickling `partial` (a head begun),
/// at least 6 are closed at once (it holds at most 64); `meanwhile` runs while the rest are
/// held; and every one is closed by the 10 s head deadline, none before 9 s.
pub fn assert_capped_and_timed(
    addr: std::net::SocketAddr,
    partial: &[u8],
    meanwhile: impl FnOnce(),
) {
    use std::io::Write as _;
    let started = std::time::Instant::now();
    let mut held: Vec<TcpStream> = (0..70)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    held[0].write_all(partial).expect("write");
    let refused = held
        .iter_mut()
        .map(|s| closed_within(s, Duration::from_millis(300)))
        .filter(|&closed| closed)
        .count();
    assert!(refused >= 6, "{refused} of 70 closed at once");
    meanwhile();
    for (i, s) in held.iter_mut().enumerate() {
        let left = Duration::from_secs(15).saturating_sub(started.elapsed());
        assert!(
            closed_within(s, left.max(Duration::from_millis(10))),
            "connection {i} still open"
        );
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(9), "closed after {took:?}");
}

/// Reads exactly one response with a Content-Length body; `None` if the connection closed
/// first.
pub fn read_one(s: &mut TcpStream) -> Option<Reply> {
    let mut raw = read_head(s)?;
    let head = parse(&raw);
    let len: usize = head.headers.get("content-length")?.parse().ok()?;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    raw.extend_from_slice(&body);
    Some(parse(&raw))
}

/// Parses a whole HTTP/1.1 response (Content-Length or close-delimited; chunked decoded).
pub fn parse(raw: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|v| v == "chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Reply {
        status,
        headers,
        body,
    }
}

/// The data of a chunked body, up to the last chunk or what arrived of it.
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// One GET with `Connection: close` (connect within 3 s, answer within 5 s); (status, body).
/// Any failure, a read cut short included, is an error.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_get_from(addr, path, None)
}

/// The kernel's default range of ephemeral ports (`net.ipv4.ip_local_port_range`), which a
/// pinned local port must stay out of: a connection the kernel placed on the same port to
/// the same address would hold the 4-tuple, and the pinned connect would fail with
/// EADDRNOTAVAIL.
pub const EPHEMERAL_PORTS: std::ops::RangeInclusive<u16> = 32768..=60999;

/// Like [`http_get`], from a given local port (to pin the 5-tuple), which must be outside
/// [`EPHEMERAL_PORTS`].
pub fn http_get_from(
    addr: SocketAddr,
    path: &str,
    local_port: Option<u16>,
) -> std::io::Result<(u16, String)> {
    let mut s = match local_port {
        None => TcpStream::connect_timeout(&addr, Duration::from_secs(3))?,
        Some(port) => {
            assert!(
                !EPHEMERAL_PORTS.contains(&port),
                "pinned port {port} is in the ephemeral range {EPHEMERAL_PORTS:?}: another \
                 connection may hold it"
            );
            connect_from(addr, port)?
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(request_text("GET", path, &addr.to_string(), &[], "").as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    if local_port.is_some() {
        // Closed with a reset: a pinned 5-tuple is used again at once, and a FIN's state
        // (LAST_ACK until the peer's ACK arrives) would hold it; the whole answer is in.
        socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO))?;
    }
    let reply = parse(&raw);
    Ok((reply.status, reply.body))
}

/// One GET from the local address `from` (its port 0: any), with extra header lines, on a
/// connection that must be made within `connect` (a blocked source never gets an answer to
/// its SYN); (status, body).
pub fn http_get_as(
    addr: SocketAddr,
    from: std::net::IpAddr,
    path: &str,
    extra: &[&str],
    connect: Duration,
) -> std::io::Result<(u16, String)> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(from, 0).into())?;
    socket.connect_timeout(&addr.into(), connect)?;
    let mut s: TcpStream = socket.into();
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(request_text("GET", path, &addr.to_string(), extra, "").as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let reply = parse(&raw);
    Ok((reply.status, reply.body))
}

/// A connection to IPv4 `addr` from local port `port` (SO_REUSEADDR, so a port in
/// TIME_WAIT can be used again).
fn connect_from(addr: SocketAddr, port: u16) -> std::io::Result<TcpStream> {
    // SAFETY: socket has no preconditions.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh socket we own; converted to TcpStream right after connect.
    let stream = unsafe {
        use std::os::fd::FromRawFd;
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            4,
        );
        let local = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr { s_addr: 0 },
            sin_zero: [0; 8],
        };
        if libc::bind(
            fd,
            (&local as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        ) != 0
        {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        std::net::TcpStream::from_raw_fd(fd)
    };
    let SocketAddr::V4(v4) = addr else {
        panic!("IPv4 only")
    };
    let remote = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(v4.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    use std::os::fd::AsRawFd;
    // SAFETY: connecting our own socket to a valid address.
    if unsafe {
        libc::connect(
            stream.as_raw_fd(),
            (&remote as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stream)
}
