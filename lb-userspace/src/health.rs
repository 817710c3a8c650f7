//! Health checks: each backend probed directly, a TCP connect or an HTTP GET, with rise/fall
//! hysteresis and jitter. Probers only report transitions; the agent decides what they mean.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use rand::Rng;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
    time::{sleep_until, timeout},
};

use crate::config::{CheckKind, HealthCheck};

/// Rise/fall state of one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hysteresis {
    up: Option<bool>,
    streak: u32,
}

impl Hysteresis {
    /// A backend whose state is not known yet, or one adopted as `up`.
    pub fn new(initial: Option<bool>) -> Self {
        Self {
            up: initial,
            streak: 0,
        }
    }

    /// Feeds one probe result; returns the new state if it changed. The first result of a
    /// backend with no known state decides it at once, so a fresh agent forwards after one
    /// successful probe rather than after `rise`.
    pub fn observe(&mut self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        match self.up {
            None => {
                self.up = Some(ok);
                self.streak = 0;
                Some(ok)
            }
            Some(up) if up == ok => {
                self.streak = 0;
                None
            }
            Some(_) => {
                self.streak += 1;
                let needed = if ok { rise } else { fall };
                if self.streak >= needed {
                    self.up = Some(ok);
                    self.streak = 0;
                    Some(ok)
                } else {
                    None
                }
            }
        }
    }
}

/// A state change of one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// Backend address.
    pub addr: IpAddr,
    /// New state.
    pub up: bool,
}

/// Runs one probe.
pub async fn probe(addr: IpAddr, check: &HealthCheck) -> bool {
    let deadline = Duration::from_millis(check.timeout_ms);
    let target = SocketAddr::new(addr, check.port);
    let attempt = async {
        let mut stream = TcpStream::connect(target).await.ok()?;
        if check.kind == CheckKind::Tcp {
            return Some(true);
        }
        let host = match addr {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
        };
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: sluice-lb\r\nConnection: close\r\n\r\n",
            check.path
        );
        stream.write_all(req.as_bytes()).await.ok()?;
        // The status line is all we need: "HTTP/1.1 200 ...".
        let mut buf = [0u8; 64];
        let mut len = 0;
        while len < 12 {
            let n = stream.read(&mut buf[len..]).await.ok()?;
            if n == 0 {
                break;
            }
            len += n;
        }
        let line = std::str::from_utf8(&buf[..len]).ok()?;
        let status: u16 = line.get(9..12)?.parse().ok()?;
        Some(line.starts_with("HTTP/1.") && status == check.expect_status)
    };
    matches!(timeout(deadline, attempt).await, Ok(Some(true)))
}

/// Probes `addr` forever with `check`, sending transitions. Probes start every interval
/// whatever each one took (so `fall` failures take at most `fall` intervals), less up to 10%
/// jitter so that many LB nodes do not probe a gateway in lockstep. Ends when the receiver
/// is gone.
pub async fn watch(
    addr: IpAddr,
    check: HealthCheck,
    initial: Option<bool>,
    tx: mpsc::UnboundedSender<Transition>,
) {
    let mut state = Hysteresis::new(initial);
    loop {
        let started = tokio::time::Instant::now();
        let ok = probe(addr, &check).await;
        if let Some(up) = state.observe(ok, check.rise, check.fall) {
            if tx.send(Transition { addr, up }).is_err() {
                return;
            }
        }
        let jitter = rand::thread_rng().gen_range(0..=check.interval_ms / 10);
        sleep_until(started + Duration::from_millis(check.interval_ms - jitter)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rise_and_fall() {
        let mut h = Hysteresis::new(Some(true));
        assert_eq!(h.observe(false, 2, 3), None);
        assert_eq!(h.observe(false, 2, 3), None);
        assert_eq!(
            h.observe(true, 2, 3),
            None,
            "a success resets the failure streak"
        );
        assert_eq!(h.observe(false, 2, 3), None);
        assert_eq!(h.observe(false, 2, 3), None);
        assert_eq!(h.observe(false, 2, 3), Some(false));
        assert_eq!(h.observe(true, 2, 3), None);
        assert_eq!(h.observe(true, 2, 3), Some(true));
    }

    #[test]
    fn unknown_state_is_decided_by_the_first_probe() {
        assert_eq!(Hysteresis::new(None).observe(true, 5, 5), Some(true));
        assert_eq!(Hysteresis::new(None).observe(false, 5, 5), Some(false));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn tcp_and_http_probes_against_real_sockets() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 512];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]).to_string();
                    let status = if req.starts_with("GET /readyz ") {
                        "200 OK"
                    } else {
                        "503 Service Unavailable"
                    };
                    let _ = s
                        .write_all(
                            format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes(),
                        )
                        .await;
                });
            }
        });
        let lo: IpAddr = "127.0.0.1".parse().expect("literal");
        let mut check = HealthCheck {
            port,
            ..HealthCheck::default()
        };
        assert!(probe(lo, &check).await, "tcp connect");
        check.kind = CheckKind::Http;
        assert!(probe(lo, &check).await, "http 200 on /readyz");
        check.path = "/other".into();
        assert!(!probe(lo, &check).await, "503 is not the expected status");
        // Nothing listens here (the port was just released): refused at once.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let closed_port = closed.local_addr().expect("addr").port();
        drop(closed);
        check.port = closed_port;
        assert!(!probe(lo, &check).await);
    }
}
