//! The node checks, and which VIP addresses this node announces over BGP.

use tracing::{info, warn};

use super::Agent;
use crate::bgp::{Announcement, Announcer};

impl Agent {
    /// Decides which VIP addresses this node announces and tells BIRD if that changed: an
    /// address is announced while the program is attached to every interface, the maps
    /// hold the current plan, and a VIP on it has a backend alive.
    pub(super) fn announce(&mut self) {
        if self.bgp.is_none() {
            return;
        }
        // Until every backend has had its first verdict since this agent started (a probe,
        // or the pinned state adopted), a node starting from empty maps would announce a
        // table that differs from its peers', and flows ECMP moves to it would land on
        // other gateways. Later changes to the pool (a reload) hold nothing back.
        if !self.health_settled {
            self.health_settled = self
                .config
                .vips
                .iter()
                .flat_map(|v| &v.backends)
                .all(|b| self.status.contains_key(&b.address));
        }
        let Some(bgp) = self.bgp.as_mut() else {
            return;
        };
        // The node checks say whether the program is on each interface (not only pinned).
        let attached = self
            .checks
            .iter()
            .filter(|c| c.name.starts_with(crate::node_check::ATTACHED))
            .all(|c| c.ok);
        // A node that cannot forward (forwarding off, say) must not draw traffic.
        let failing = self.checks.iter().find(|c| !c.ok).map(|c| c.name.clone());
        let mut decision: Vec<Announcement> = Vec::new();
        for v in &self.config.vips {
            let alive = v
                .backends
                .iter()
                .any(|b| self.status.get(&b.address).is_some_and(|s| s.healthy));
            match decision.iter_mut().find(|d| d.address == v.address) {
                Some(d) => d.announced |= alive,
                None => decision.push(Announcement {
                    address: v.address,
                    announced: alive,
                    reason: String::new(),
                }),
            }
        }
        let carried = |a: std::net::IpAddr| self.config.bgp.as_ref().is_some_and(|b| b.carries(a));
        for d in &mut decision {
            let why = if !carried(d.address) {
                let family = if d.address.is_ipv4() { "IPv4" } else { "IPv6" };
                format!("no {family} BGP peer to announce it to")
            } else if !attached {
                "the XDP program is not attached".to_string()
            } else if let Some(check) = &failing {
                format!("node check failing: {check}")
            } else if !self.health_settled {
                "waiting for every backend's first health check".to_string()
            } else if !self.synced {
                "the maps are not in sync".to_string()
            } else if !d.announced {
                "no backend alive".to_string()
            } else {
                String::new()
            };
            d.announced = why.is_empty();
            d.reason = why;
        }
        if self.health_settled {
            bgp.announce(decision);
        } else {
            bgp.hold(decision);
        }
    }

    /// Applies a reloaded `[bgp]`: started, reconfigured, or withdrawn and dropped.
    pub(super) fn sync_bgp(&mut self) {
        match (&self.config.bgp, self.bgp.as_mut()) {
            (Some(b), Some(a)) => a.reconfigure(b),
            (Some(b), None) => self.bgp = Some(Announcer::start(b)),
            (None, Some(a)) => {
                a.announce(Vec::new());
                self.bgp = None;
            }
            (None, None) => {}
        }
        self.announce();
    }

    /// Runs the node checks, logging what changed, and announces accordingly.
    pub(super) fn check_node(&mut self) {
        let mut now = crate::node_check::run(&self.config);
        if self.attach_lost(&now) {
            now = crate::node_check::run(&self.config);
        }
        crate::node_check::log_changes(&self.checks, &now);
        self.checks = now;
    }

    /// Puts the program back on each configured interface whose pinned link lost it: one
    /// removed and made again (a driver reload, a bond or VLAN rebuilt) keeps its name but
    /// not its program. A pin that is gone is left so (`sluice-lb detach`, or an operator,
    /// removed it on purpose) and only reported by the node check. True if any was
    /// attached.
    fn attach_lost(&mut self, checks: &[crate::node_check::Check]) -> bool {
        let mut any = false;
        for iface in self.config.node.interfaces.clone() {
            let name = format!("{} {iface}", crate::node_check::ATTACHED);
            // Read the link only for a failing check: the common tick costs no syscall here.
            if !checks.iter().any(|c| c.name == name && !c.ok) {
                continue;
            }
            let pin = self.config.node.pin_dir.join("links").join(&iface);
            let Ok(index) = crate::attach::ifindex(&iface) else {
                continue;
            };
            if !crate::attach::link_ifindex(&pin).is_ok_and(|i| i != index) {
                continue;
            }
            let node = &self.config.node;
            match crate::attach::attach(&mut self.dp, &node.pin_dir, &iface, node.xdp_mode) {
                Ok(_) => {
                    info!(iface, "the program is on the interface again");
                    any = true;
                }
                Err(e) => warn!(iface, error = %e, "attaching again failed; retrying each second"),
            }
        }
        if any {
            if let Err(e) = self.dp.forget_next_hops() {
                warn!(error = %e, "clearing the next-hop cache failed");
            }
        }
        any
    }
}
