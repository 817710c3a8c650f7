//! Active health checks of a pool's targets, with the shared HTTP probe
//! ([`sluice_util::probe`]) and rise/fall hysteresis.

use std::{
    net::SocketAddr,
    sync::{atomic::Ordering, Arc, Weak},
    time::Duration,
};

use sluice_util::probe::{Probe, ProbeError};

use super::pool::Pool;
use crate::config::HealthCheck;

/// Starts probing `pool` if it has a health check and is not probed yet. The prober ends
/// when the pool is dropped (a reload that replaces it). Called once a generation is
/// accepted, so a refused config probes nothing.
pub fn start(pool: &Arc<Pool>) {
    if pool.health.is_none() || pool.started.swap(true, Ordering::Relaxed) {
        return;
    }
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(check_health(Arc::downgrade(pool)));
    }
}

/// Probes every target of `pool` until the pool is dropped (a reload that replaces it).
pub async fn check_health(pool: Weak<Pool>) {
    let Some(check) = pool.upgrade().and_then(|p| p.health.clone()) else {
        return;
    };
    let mut streaks: Vec<(bool, u32)> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(check.interval_ms));
    loop {
        tick.tick().await;
        let Some(p) = pool.upgrade() else { return };
        streaks.resize(p.targets.len(), (true, 0));
        // Probes of one pool run together, so one slow target does not delay the others.
        let probes: Vec<_> = p
            .targets
            .iter()
            .map(|t| tokio::spawn(probe(t.addr, check.clone())))
            .collect();
        let mut results = Vec::with_capacity(probes.len());
        for h in probes {
            results.push(h.await.unwrap_or(Some(false)));
        }
        for ((t, ok), (up, streak)) in p.targets.iter().zip(results).zip(streaks.iter_mut()) {
            let Some(ok) = ok else {
                // Out of descriptors or memory here: no verdict on the target, whose state
                // and streak stay as they were, rather than every target failing at once.
                tracing::warn!(pool = %p.name, target = %t.addr, "health probe failed on this host; state kept");
                continue;
            };
            if ok == *up {
                *streak = 0;
                continue;
            }
            *streak += 1;
            if *streak >= if ok { check.rise } else { check.fall } {
                *up = ok;
                *streak = 0;
                t.healthy.store(ok, Ordering::Relaxed);
                tracing::info!(pool = %p.name, target = %t.addr, healthy = ok, "health changed");
            }
        }
    }
}

/// One HTTP/1.1 GET; see [`verdict`].
async fn probe(addr: SocketAddr, check: HealthCheck) -> Option<bool> {
    let probe = Probe {
        target: addr,
        path: &check.path,
        user_agent: "sluice-gateway",
        timeout: Duration::from_millis(check.timeout_ms),
    };
    verdict(probe.status().await, check.expect_status)
}

/// Whether a probe's answer is the expected status within the timeout, or `None` when the
/// probe failed on this host ([`ProbeError::is_local`]: out of descriptors, buffers or memory),
/// which says nothing of the target.
fn verdict(answer: Result<u16, ProbeError>, expect: u16) -> Option<bool> {
    match answer {
        Ok(status) => Some(status == expect),
        Err(e) if e.is_local() => None,
        Err(_) => Some(false),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Error, ErrorKind};

    use super::*;

    #[test]
    fn a_probe_that_fails_on_this_host_gives_no_verdict() {
        assert_eq!(verdict(Ok(200), 200), Some(true));
        assert_eq!(verdict(Ok(503), 200), Some(false));
        assert_eq!(verdict(Err(ProbeError::Timeout), 200), Some(false));
        let refused = Error::from(ErrorKind::ConnectionRefused);
        assert_eq!(verdict(Err(ProbeError::Connect(refused)), 200), Some(false));
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            let local = Error::from_raw_os_error(errno);
            assert_eq!(
                verdict(Err(ProbeError::Connect(local)), 200),
                None,
                "{errno}"
            );
        }
    }
}
