//! The HTTP health probe: one `GET` over a fresh connection, answered by its status code.
//!
//! `sluice-lb` probes each gateway's readiness with it and `sluice-gateway` its upstream
//! targets. Only the status line is read: a probe costs one connection and a few bytes, and a
//! target that answers with a huge or endless body cannot hold it.

use std::{net::SocketAddr, time::Duration};

use crate::load::{LoadReport, HEADER};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};

/// Why a probe got no status.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The whole probe took longer than its timeout.
    #[error("timed out")]
    Timeout,
    /// The TCP connection failed.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// Writing the request or reading the answer failed.
    #[error("i/o: {0}")]
    Io(std::io::Error),
    /// The answer did not start with an HTTP/1.x status line.
    #[error("not an HTTP/1.x status line")]
    Malformed,
}

impl ProbeError {
    /// Whether the probe failed on this host rather than at its target: out of descriptors,
    /// buffers or memory. Such a failure says nothing of the target's health, and counting
    /// it would mark every target down at once when the prober's host is short.
    pub fn is_local(&self) -> bool {
        match self {
            ProbeError::Connect(e) | ProbeError::Io(e) => is_local_shortage(e),
            _ => false,
        }
    }
}

/// Whether `e` is this host running short (out of descriptors, buffers or memory) rather than
/// anything a peer did: a failure that must not count against the peer's health.
pub fn is_local_shortage(e: &std::io::Error) -> bool {
    // EMFILE, ENFILE, ENOBUFS, ENOMEM on Linux.
    const LOCAL: [i32; 4] = [24, 23, 105, 12];
    e.raw_os_error().is_some_and(|n| LOCAL.contains(&n))
}

/// Whether `path` can be probed: it goes into the request line as it is, so it must start
/// with `/` and be printable ASCII without spaces. `Err` is the reason, for a config error.
pub fn check_path(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("must start with '/'");
    }
    if !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("printable ASCII without spaces (percent-encode the rest)");
    }
    Ok(())
}

/// What to probe, and how long it may take.
#[derive(Debug, Clone, Copy)]
pub struct Probe<'a> {
    /// The target.
    pub target: SocketAddr,
    /// The path requested with `GET`.
    pub path: &'a str,
    /// The `User-Agent` sent, so the target's logs say who is asking.
    pub user_agent: &'a str,
    /// The limit for the whole probe, connect included.
    pub timeout: Duration,
}

impl Probe<'_> {
    /// Connects and sends `GET path`; the status code of the answer.
    pub async fn status(&self) -> Result<u16, ProbeError> {
        match timeout(self.timeout, self.exchange()).await {
            Ok(result) => result,
            Err(_) => Err(ProbeError::Timeout),
        }
    }

    /// Like [`Probe::status`], but reads the answer's head (at most [`MAX_HEAD`] bytes) for
    /// the load report a gateway's readiness carries.
    pub async fn readiness(&self) -> Result<Readiness, ProbeError> {
        match timeout(self.timeout, self.read_head()).await {
            Ok(result) => result,
            Err(_) => Err(ProbeError::Timeout),
        }
    }

    /// Only connects: `Ok` once the TCP handshake is done.
    pub async fn connect(&self) -> Result<(), ProbeError> {
        match timeout(self.timeout, TcpStream::connect(self.target)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(ProbeError::Connect(e)),
            Err(_) => Err(ProbeError::Timeout),
        }
    }

    async fn read_head(&self) -> Result<Readiness, ProbeError> {
        let mut stream = self.send().await?;
        let mut head = Vec::with_capacity(512);
        let mut buf = [0u8; 1024];
        while head.len() < MAX_HEAD && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.map_err(ProbeError::Io)?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let status = status_of(&head).ok_or(ProbeError::Malformed)?;
        Ok(Readiness {
            status,
            load: load_header(&head).and_then(LoadReport::parse),
        })
    }

    /// Connects and writes the request.
    async fn send(&self) -> Result<TcpStream, ProbeError> {
        let mut stream = TcpStream::connect(self.target)
            .await
            .map_err(ProbeError::Connect)?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: {}\r\nConnection: close\r\n\r\n",
            self.path, self.target, self.user_agent
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(ProbeError::Io)?;
        Ok(stream)
    }

    async fn exchange(&self) -> Result<u16, ProbeError> {
        let mut stream = self.send().await?;
        // "HTTP/1.1 200" is all that is read.
        let mut head = [0u8; 12];
        let mut len = 0;
        while len < head.len() {
            let n = stream
                .read(&mut head[len..])
                .await
                .map_err(ProbeError::Io)?;
            if n == 0 {
                break;
            }
            len += n;
        }
        status_of(&head[..len]).ok_or(ProbeError::Malformed)
    }
}

/// The most of an answer's head a readiness probe reads.
pub const MAX_HEAD: usize = 4096;

/// What a readiness probe learned.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Readiness {
    /// The status code.
    pub status: u16,
    /// The load report, if the answer carried a valid one.
    pub load: Option<LoadReport>,
}

/// The value of the load-report field in a response head, if it has one.
fn load_header(head: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(head.split(|b| *b == 0).next()?).ok()?;
    let end = text.find("\r\n\r\n").unwrap_or(text.len());
    text[..end].split("\r\n").skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case(HEADER)
            .then_some(value.trim())
    })
}

/// The status code of `HTTP/1.x NNN`.
fn status_of(head: &[u8]) -> Option<u16> {
    let rest = head.strip_prefix(b"HTTP/1.")?;
    let (&minor, rest) = rest.split_first()?;
    let digits = rest.strip_prefix(b" ")?.get(..3)?;
    if !minor.is_ascii_digit() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0, |n, d| n * 10 + u16::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Out of descriptors, buffers or memory here is no verdict on the target; a refused or
    /// unreachable connection, a timeout or garbage is.
    #[test]
    fn failures_on_this_host_are_told_apart() {
        let os = |n| std::io::Error::from_raw_os_error(n);
        for n in [24, 23, 105, 12] {
            assert!(ProbeError::Connect(os(n)).is_local(), "{n}");
            assert!(ProbeError::Io(os(n)).is_local(), "{n}");
        }
        for e in [
            ProbeError::Connect(os(111)),
            ProbeError::Connect(os(113)),
            ProbeError::Io(os(104)),
            ProbeError::Timeout,
            ProbeError::Malformed,
        ] {
            assert!(!e.is_local(), "{e}");
        }
    }
    use tokio::net::TcpListener;

    #[test]
    fn paths_that_would_break_the_request_line_are_refused() {
        assert_eq!(check_path("/readyz?x=1"), Ok(()));
        assert!(check_path("readyz").is_err());
        assert!(check_path("/a b").is_err());
        assert!(check_path("/a\r\nX-Injected: 1").is_err());
        assert!(check_path("/caf\u{e9}").is_err());
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_of(b"HTTP/1.1 200"), Some(200));
        assert_eq!(status_of(b"HTTP/1.0 503"), Some(503));
        assert_eq!(status_of(b"HTTP/2 200 x"), None);
        assert_eq!(status_of(b"HTTP/1.1 2x0"), None);
        assert_eq!(status_of(b"HTTP/1.1 20"), None);
        assert_eq!(status_of(b""), None);
    }

    /// A one-shot server answering `answer` after reading the request head.
    async fn serve_once(answer: &'static [u8]) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        serve_pieces(vec![answer.to_vec()], Duration::ZERO).await
    }

    /// A one-shot server answering `pieces` one after another, `gap` apart.
    async fn serve_pieces(
        pieces: Vec<Vec<u8>>,
        gap: Duration,
    ) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 1024];
            let mut len = 0;
            while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                len += s.read(&mut buf[len..]).await.expect("read");
            }
            for piece in pieces {
                tokio::time::sleep(gap).await;
                if s.write_all(&piece).await.is_err() {
                    break;
                }
            }
            String::from_utf8_lossy(&buf[..len]).into_owned()
        });
        (addr, task)
    }

    fn probe(target: SocketAddr) -> Probe<'static> {
        Probe {
            target,
            path: "/readyz",
            user_agent: "probe-test",
            timeout: Duration::from_secs(2),
        }
    }

    #[tokio::test]
    async fn reads_the_status_and_sends_a_plain_get() {
        let (addr, task) = serve_once(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        assert_eq!(probe(addr).status().await.expect("status"), 503);
        let request = task.await.expect("server");
        assert!(request.starts_with("GET /readyz HTTP/1.1\r\n"), "{request}");
        assert!(
            request.contains(&format!("\r\nHost: {addr}\r\n")),
            "{request}"
        );
        assert!(
            request.contains("\r\nUser-Agent: probe-test\r\n"),
            "{request}"
        );
    }

    #[tokio::test]
    async fn readiness_reads_the_load_report_from_the_head() {
        let (addr, _task) = serve_once(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nEndpoint-Load-Metrics: TEXT cpu_utilization=0.250, rps_fractional=40.0, eps=1.0, named_metrics.p99_ms=3.500\r\n\r\nready\n",
        )
        .await;
        let r = probe(addr).readiness().await.expect("readiness");
        assert_eq!(r.status, 200);
        let load = r.load.expect("a report");
        assert_eq!(
            (load.cpu_utilization, load.rps, load.eps, load.p99_ms),
            (0.25, 40.0, 1.0, 3.5)
        );
        // No report, or a broken one: the status still counts.
        let (addr, _task) = serve_once(
            b"HTTP/1.1 503 Service Unavailable\r\nendpoint-load-metrics: nonsense\r\n\r\n",
        )
        .await;
        let r = probe(addr).readiness().await.expect("readiness");
        assert_eq!((r.status, r.load), (503, None));
    }

    #[tokio::test]
    async fn a_head_split_in_pieces_is_read_whole() {
        let head = b"HTTP/1.1 200 OK\r\nendpoint-load-metrics: TEXT cpu_utilization=0.5, rps_fractional=9\r\n\r\n";
        let pieces = head.chunks(7).map(<[u8]>::to_vec).collect();
        let (addr, _task) = serve_pieces(pieces, Duration::from_millis(5)).await;
        let r = probe(addr).readiness().await.expect("readiness");
        assert_eq!(r.load.map(|l| l.rps), Some(9.0));
    }

    #[tokio::test]
    async fn an_oversized_or_dribbled_head_is_bounded() {
        // A head that never ends within MAX_HEAD: the read stops there, the status counts,
        // and a report past the limit is not looked for.
        let mut long = b"HTTP/1.1 200 OK\r\nx-filler: ".to_vec();
        long.extend(std::iter::repeat_n(b'a', 3 * MAX_HEAD));
        long.extend(
            b"\r\nendpoint-load-metrics: TEXT cpu_utilization=0.5, rps_fractional=9\r\n\r\n",
        );
        let (addr, _task) = serve_pieces(vec![long], Duration::ZERO).await;
        let r = probe(addr).readiness().await.expect("readiness");
        assert_eq!((r.status, r.load), (200, None));
        // A target that dribbles its head slower than the probe's timeout: timed out.
        let slow = b"HTTP/1.1 200 OK\r\n".iter().map(|b| vec![*b]).collect();
        let (addr, _task) = serve_pieces(slow, Duration::from_millis(50)).await;
        let r = Probe {
            timeout: Duration::from_millis(200),
            ..probe(addr)
        }
        .readiness()
        .await;
        assert!(matches!(r, Err(ProbeError::Timeout)), "{r:?}");
        // Two report fields: the first is taken.
        let (addr, _task) = serve_once(b"HTTP/1.1 200 OK\r\nendpoint-load-metrics: TEXT cpu_utilization=0.1, rps_fractional=1\r\nendpoint-load-metrics: TEXT cpu_utilization=0.9, rps_fractional=2\r\n\r\n").await;
        let r = probe(addr).readiness().await.expect("readiness");
        assert_eq!(r.load.map(|l| l.rps), Some(1.0));
    }

    #[tokio::test]
    async fn garbage_and_silence_are_errors() {
        let (addr, _task) = serve_once(b"SSH-2.0-OpenSSH\r\n").await;
        assert!(matches!(
            probe(addr).status().await,
            Err(ProbeError::Malformed)
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let silent = Probe {
            timeout: Duration::from_millis(100),
            ..probe(listener.local_addr().expect("addr"))
        };
        assert!(matches!(silent.status().await, Err(ProbeError::Timeout)));
    }
}
