//! Active health checks of a pool's targets, with the shared HTTP probe
//! ([`sluice_util::probe`]) and rise/fall hysteresis.

use std::{
    net::SocketAddr,
    sync::{atomic::Ordering, Arc, Weak},
    time::Duration,
};

use sluice_util::probe::Probe;

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
            results.push(h.await.unwrap_or(false));
        }
        for ((t, ok), (up, streak)) in p.targets.iter().zip(results).zip(streaks.iter_mut()) {
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

/// One HTTP/1.1 GET; true if the status is the expected one within the timeout.
async fn probe(addr: SocketAddr, check: HealthCheck) -> bool {
    let probe = Probe {
        target: addr,
        path: &check.path,
        user_agent: "sluice-gateway",
        timeout: Duration::from_millis(check.timeout_ms),
    };
    matches!(probe.status().await, Ok(s) if s == check.expect_status)
}
