//! The shield's upkeep in the agent: expired blocks swept, the gateways' candidates pulled
//! and applied, the data plane's switch kept in line.

use std::{
    collections::{BTreeMap, HashSet},
    net::IpAddr,
    time::Duration,
};

use tracing::error;

use super::{Agent, CommandError};
use crate::{config, shield};

/// One gateway's block candidates, or why they could not be fetched.
pub(super) struct Pulled {
    pub(super) gateway: IpAddr,
    pub(super) result: Result<sluice_util::shield::Candidates, shield::pull::PullError>,
}

/// The way a fetch's answer goes back to the agent. A fetch that ends without one (its task
/// panicked, or was dropped) still answers, as a failure, so that its gateway leaves the
/// agent's `pulling` set and is fetched from again.
struct Answer {
    tx: tokio::sync::mpsc::UnboundedSender<Pulled>,
    /// The gateway asked, until its answer is sent.
    gateway: Option<IpAddr>,
}

impl Answer {
    fn send(mut self, result: Result<sluice_util::shield::Candidates, shield::pull::PullError>) {
        if let Some(gateway) = self.gateway.take() {
            let _ = self.tx.send(Pulled { gateway, result });
        }
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if let Some(gateway) = self.gateway.take() {
            let _ = self.tx.send(Pulled {
                gateway,
                result: Err(shield::pull::PullError::Ended),
            });
        }
    }
}

impl Agent {
    /// Turns the data plane's shield switch on or off to match whether any entry is held.
    pub(super) fn shield_switch(&mut self) -> Result<(), CommandError> {
        if self.applied.shield_switch() == Some(self.shield.active()) {
            return Ok(());
        }
        self.apply().map_err(CommandError::Apply)
    }

    /// Removes expired blocks (the data plane already ignores them).
    pub(super) fn sweep_blocks(&mut self) {
        if self.shield.sweep(&mut self.dp) > 0 {
            if let Err(e) = self.shield_switch() {
                error!(error = %e, "turning the shield off failed");
            }
        }
    }

    /// Fetches the block candidates of each healthy gateway whose readiness is probed over
    /// HTTP (at that port); the answers come back through `on_pulled`.
    pub(super) fn pull_candidates(&mut self) {
        if self.config.shield.pull == sluice_util::shield::Mode::Off {
            return;
        }
        let mut targets = BTreeMap::new();
        for v in &self.config.vips {
            let check = v.check(&self.config.health);
            if check.kind != config::CheckKind::Http {
                continue;
            }
            for b in &v.backends {
                if self.status.get(&b.address).is_some_and(|s| s.healthy) {
                    let port = self.config.shield.pull_port.unwrap_or(check.port);
                    targets.entry(b.address).or_insert((port, check.timeout_ms));
                }
            }
        }
        let known: HashSet<IpAddr> = targets.keys().copied().collect();
        self.shield.retain_gateways(|a| known.contains(a));
        for (gateway, (port, timeout_ms)) in targets {
            if !self.pulling.insert(gateway) {
                continue;
            }
            let answer = Answer {
                tx: self.pull_tx.clone(),
                gateway: Some(gateway),
            };
            tokio::spawn(async move {
                let target = std::net::SocketAddr::new(gateway, port);
                let result = shield::pull::fetch(target, Duration::from_millis(timeout_ms)).await;
                answer.send(result);
            });
        }
    }

    pub(super) fn on_pulled(&mut self, pulled: Pulled) {
        self.pulling.remove(&pulled.gateway);
        match pulled.result {
            Ok(c) => {
                self.shield
                    .apply_candidates(&mut self.dp, &self.config.shield, pulled.gateway, &c);
                if let Err(e) = self.shield_switch() {
                    error!(error = %e, "turning the shield on failed");
                }
            }
            Err(e) => {
                tracing::debug!(gateway = %pulled.gateway, error = %e, "pulling block candidates failed");
                self.shield.pull_failed(pulled.gateway, e.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fetch answers exactly once: with its result, or, ended without one, as a failure.
    #[test]
    fn a_fetch_answers_once_however_it_ends() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let gateway: IpAddr = "10.1.0.11".parse().expect("literal");
        let answer = || Answer {
            tx: tx.clone(),
            gateway: Some(gateway),
        };
        answer().send(Err(shield::pull::PullError::Timeout));
        drop(answer());
        let got: Vec<String> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|p| {
                assert_eq!(p.gateway, gateway);
                p.result.err().map(|e| e.to_string()).unwrap_or_default()
            })
            .collect();
        assert_eq!(got, ["timed out", "the fetch ended without an answer"]);
    }
}
