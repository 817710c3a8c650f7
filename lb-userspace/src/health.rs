//! Health checks: each backend probed directly, a TCP connect or an HTTP GET, with rise/fall
//! hysteresis and jitter. Probers only report transitions; the agent decides what they mean.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use rand::Rng;
use sluice_util::{
    load::LoadReport,
    probe::{Probe, ProbeError},
};
use tokio::{sync::mpsc, time::sleep_until};

use crate::config::{CheckKind, HealthCheck};

/// What the health checks say about a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Ready: gets new flows.
    Up,
    /// Alive but not ready (its readiness endpoint answered 503, as a draining gateway's
    /// does): no new flows, but its established flows stay.
    NotReady,
    /// Not answering: its flows are re-picked.
    Down,
}

/// Rise/fall state of one backend: a new state holds after `rise` (to `Up`) or `fall` (to
/// anything else) consecutive probes that agree on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hysteresis {
    state: Option<Health>,
    candidate: Option<Health>,
    streak: u32,
}

impl Hysteresis {
    /// A backend whose state is not known yet, or one adopted in `initial`.
    pub fn new(initial: Option<Health>) -> Self {
        Self {
            state: initial,
            candidate: None,
            streak: 0,
        }
    }

    /// Feeds one probe result; returns the new state if it changed. The first result of a
    /// backend with no known state decides it at once, so a fresh agent forwards after one
    /// successful probe rather than after `rise`.
    pub fn observe(&mut self, seen: Health, rise: u32, fall: u32) -> Option<Health> {
        let Some(state) = self.state else {
            self.state = Some(seen);
            return Some(seen);
        };
        if seen == state {
            self.candidate = None;
            self.streak = 0;
            return None;
        }
        if self.candidate == Some(seen) {
            self.streak += 1;
        } else {
            self.candidate = Some(seen);
            self.streak = 1;
        }
        let needed = if seen == Health::Up { rise } else { fall };
        if self.streak >= needed {
            self.state = Some(seen);
            self.candidate = None;
            self.streak = 0;
            Some(seen)
        } else {
            None
        }
    }
}

/// A state change of one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// Backend address.
    pub addr: IpAddr,
    /// New state.
    pub health: Health,
}

/// What a prober tells the agent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Observed {
    /// The backend's state changed.
    Health(Transition),
    /// Its readiness answer carried a load report (a gateway's, see `sluice_util::load`).
    Load {
        /// Backend address.
        addr: IpAddr,
        /// The report.
        report: LoadReport,
    },
}

/// Runs one probe: `Up` on the expected status (or a TCP connect), `NotReady` on an HTTP 503,
/// `Down` otherwise.
pub async fn probe(addr: IpAddr, check: &HealthCheck) -> Health {
    probe_with_load(addr, check).await.0
}

/// [`probe`], and the load report an HTTP check's answer carried, if any.
pub async fn probe_with_load(addr: IpAddr, check: &HealthCheck) -> (Health, Option<LoadReport>) {
    let (health, load) = verdict(addr, check).await;
    (health.unwrap_or(Health::Down), load)
}

/// One probe's verdict, `None` when it failed on this host ([`ProbeError::is_local`]: out
/// of descriptors, say) and so says nothing of the target; and the load report it carried.
async fn verdict(addr: IpAddr, check: &HealthCheck) -> (Option<Health>, Option<LoadReport>) {
    let probe = Probe {
        target: SocketAddr::new(addr, check.port),
        path: &check.path,
        user_agent: "sluice-lb",
        timeout: Duration::from_millis(check.timeout_ms),
    };
    let failed = |e: ProbeError| (!e.is_local()).then_some(Health::Down);
    match check.kind {
        CheckKind::Tcp => match probe.connect().await {
            Ok(()) => (Some(Health::Up), None),
            Err(e) => (failed(e), None),
        },
        CheckKind::Http => match probe.readiness().await {
            Ok(r) if r.status == check.expect_status => (Some(Health::Up), r.load),
            Ok(r) if r.status == 503 => (Some(Health::NotReady), r.load),
            Ok(r) => (Some(Health::Down), r.load),
            Err(e) => (failed(e), None),
        },
    }
}

/// Probes `addr` forever with `check`, sending transitions and load reports. Probes start every interval
/// whatever each one took (so `fall` failures take at most `fall` intervals), less up to 10%
/// jitter so that many LB nodes do not probe a gateway in lockstep. Ends when the receiver
/// is gone.
pub async fn watch(
    addr: IpAddr,
    check: HealthCheck,
    initial: Option<Health>,
    tx: mpsc::UnboundedSender<Observed>,
) {
    let mut state = Hysteresis::new(initial);
    loop {
        let started = tokio::time::Instant::now();
        let (seen, load) = verdict(addr, &check).await;
        if let Some(report) = load {
            if tx.send(Observed::Load { addr, report }).is_err() {
                return;
            }
        }
        match seen.map(|seen| state.observe(seen, check.rise, check.fall)) {
            Some(Some(health)) => {
                if tx
                    .send(Observed::Health(Transition { addr, health }))
                    .is_err()
                {
                    return;
                }
            }
            Some(None) => {}
            None => tracing::warn!(
                backend = %addr,
                "this host could not probe (out of descriptors or memory): no verdict"
            ),
        }
        let jitter = rand::thread_rng().gen_range(0..=check.interval_ms / 10);
        sleep_until(started + Duration::from_millis(check.interval_ms - jitter)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use Health::{Down, NotReady, Up};

    #[test]
    fn rise_and_fall() {
        let mut h = Hysteresis::new(Some(Up));
        assert_eq!(h.observe(Down, 2, 3), None);
        assert_eq!(h.observe(Down, 2, 3), None);
        assert_eq!(
            h.observe(Up, 2, 3),
            None,
            "a success resets the failure streak"
        );
        assert_eq!(h.observe(Down, 2, 3), None);
        assert_eq!(h.observe(Down, 2, 3), None);
        assert_eq!(h.observe(Down, 2, 3), Some(Down));
        assert_eq!(h.observe(Up, 2, 3), None);
        assert_eq!(h.observe(Up, 2, 3), Some(Up));
        // Not ready, then gone: each state needs its own streak.
        assert_eq!(h.observe(NotReady, 2, 2), None);
        assert_eq!(h.observe(NotReady, 2, 2), Some(NotReady));
        assert_eq!(h.observe(Down, 2, 2), None);
        assert_eq!(
            h.observe(NotReady, 2, 2),
            None,
            "back to the state it is in"
        );
        assert_eq!(h.observe(Down, 2, 2), None);
        assert_eq!(h.observe(Down, 2, 2), Some(Down));
    }

    #[test]
    fn unknown_state_is_decided_by_the_first_probe() {
        assert_eq!(Hysteresis::new(None).observe(Up, 5, 5), Some(Up));
        assert_eq!(Hysteresis::new(None).observe(Down, 5, 5), Some(Down));
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
                    } else if req.starts_with("GET /draining ") {
                        "503 Service Unavailable"
                    } else {
                        "404 Not Found"
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
            kind: CheckKind::Tcp,
            ..HealthCheck::default()
        };
        assert_eq!(probe(lo, &check).await, Up, "tcp connect");
        check.kind = CheckKind::Http;
        assert_eq!(probe(lo, &check).await, Up, "http 200 on /readyz");
        check.path = "/draining".into();
        assert_eq!(probe(lo, &check).await, NotReady, "503: alive, not ready");
        check.path = "/other".into();
        assert_eq!(probe(lo, &check).await, Down, "any other status");
        // Nothing listens here (the port was just released): refused at once.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let closed_port = closed.local_addr().expect("addr").port();
        drop(closed);
        check.port = closed_port;
        assert_eq!(probe(lo, &check).await, Down);
    }
}
