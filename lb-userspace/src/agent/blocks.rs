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
            let tx = self.pull_tx.clone();
            tokio::spawn(async move {
                let target = std::net::SocketAddr::new(gateway, port);
                let result = shield::pull::fetch(target, Duration::from_millis(timeout_ms)).await;
                let _ = tx.send(Pulled { gateway, result });
            });
        }
    }

    pub(super) fn on_pulled(&mut self, pulled: Pulled) {
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
