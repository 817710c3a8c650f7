//! From config plus backend states to what the data plane must hold, and applying it.
//!
//! `plan` is pure: the same config and states give the same plan on every LB node (ids
//! aside, which never reach the wire). `Applied` remembers what was written, so `apply`
//! touches only what changed, and flips each changed VIP to its idle table buffer.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
};

use sluice_common::{
    Backend, NodeConfig, VipKey, VipMeta, AGENT_DRAINED, AGENT_GRACE, AGENT_NOT_READY,
    BACKEND_ALIVE, BACKEND_DRAINING, MAX_BACKENDS, MAX_VIPS, VIP_HASH_SOURCE_ONLY,
};

use crate::{
    addr,
    config::{Config, HashMode, WeightMode},
    dataplane::{DataPlane, DataPlaneError},
    maglev::{self, MaglevError, Member},
};

/// What is known about a backend (a gateway node), across all VIPs that use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BackendStatus {
    /// Passing its health check.
    pub healthy: bool,
    /// Drained by the operator: no new flows, established ones stay.
    pub draining: bool,
    /// Alive but reporting itself not ready (a draining gateway): treated like `draining`.
    pub not_ready: bool,
    /// Weight set by the operator, replacing the configured one in every VIP.
    pub weight: Option<u32>,
    /// The load factor, in percent, applied in `weights = "load"` VIPs (absent: 100).
    pub load_percent: Option<u32>,
    /// Failing its health checks, but within `[node] down_grace_ms` of the failure: no new
    /// flows, and its established flows still go to it (a probe hiccup or a short stall
    /// then breaks no connection).
    pub grace: bool,
}

/// Stable ids for backends and VIPs, kept across reloads (and adopted from the maps after a
/// restart) so that flow entries and counters keep meaning the same thing.
#[derive(Debug, Default, Clone)]
pub struct Ids {
    backends: BTreeMap<IpAddr, u32>,
    vips: HashMap<VipKey, u32>,
}

impl Ids {
    /// Records an existing assignment.
    pub fn adopt_backend(&mut self, addr: IpAddr, id: u32) {
        self.backends.insert(addr, id);
    }

    /// Records an existing assignment.
    pub fn adopt_vip(&mut self, key: VipKey, id: u32) {
        self.vips.insert(key, id);
    }

    /// The id of backend `addr`, given a free one if it has none. Ids are freed only once an
    /// apply no longer uses them ([`Ids::retain`]): flow entries name a backend by id with no
    /// generation, so an id reused within one plan would take the old backend's flows, and
    /// new ones picked before the tables change, to the new backend.
    fn backend(&mut self, addr: IpAddr) -> Option<u32> {
        if let Some(id) = self.backends.get(&addr) {
            return Some(*id);
        }
        let used: HashSet<u32> = self.backends.values().copied().collect();
        let id = (1..MAX_BACKENDS).find(|i| !used.contains(i))?;
        self.backends.insert(addr, id);
        Some(id)
    }

    /// The id of VIP `key`, given a free one if it has none; when none is free, those of VIPs
    /// `config` no longer has are freed at once (a config of the most VIPs that replaces one
    /// must find it an id). Unlike a backend's, a reused VIP id gets a new generation, which
    /// the old VIP's flow entries do not match.
    fn vip(&mut self, key: VipKey, config: &Config) -> Option<u32> {
        if let Some(id) = self.vips.get(&key) {
            return Some(*id);
        }
        let free = |ids: &Self| {
            let used: HashSet<u32> = ids.vips.values().copied().collect();
            (0..MAX_VIPS).find(|i| !used.contains(i))
        };
        let id = match free(self) {
            Some(id) => id,
            None => {
                let kept: HashSet<VipKey> = config
                    .vips
                    .iter()
                    .map(|v| addr::vip_key(v.address, v.port, v.protocol.number()))
                    .collect();
                self.vips.retain(|k, _| kept.contains(k));
                free(self)?
            }
        };
        self.vips.insert(key, id);
        Some(id)
    }

    /// Frees the ids of backends and VIPs the plan no longer has, so they can be reused.
    /// (A reused VIP id gets a new generation, so flows of the old VIP never match it.)
    pub fn retain(&mut self, plan: &Plan) {
        let vips: std::collections::HashSet<VipKey> = plan.vips.iter().map(|v| v.key).collect();
        self.vips.retain(|k, _| vips.contains(k));
        self.backends.retain(|_, id| plan.backends.contains_key(id));
    }

    /// The id of backend `addr`, if it has one.
    pub fn backend_id(&self, addr: &IpAddr) -> Option<u32> {
        self.backends.get(addr).copied()
    }
}

/// One VIP as the data plane must hold it.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedVip {
    /// VIP id.
    pub id: u32,
    /// Map key.
    pub key: VipKey,
    /// Address.
    pub address: IpAddr,
    /// `VIP_*` flags.
    pub flags: u32,
    /// The table.
    pub table: Vec<u32>,
    /// Members with their effective weights.
    pub members: Vec<Member>,
}

/// Everything the data plane must hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Node config.
    pub node: NodeConfig,
    /// Backend records by id.
    pub backends: BTreeMap<u32, Backend>,
    /// VIPs.
    pub vips: Vec<PlannedVip>,
}

/// Why a plan cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// Out of ids (the config validation bounds this).
    #[error("no free {0} id")]
    NoId(&'static str),
    /// A table could not be built.
    #[error("VIP {vip}: {source}")]
    Table {
        /// The VIP.
        vip: String,
        /// Cause.
        #[source]
        source: MaglevError,
    },
}

/// Mask of the low `bits` bits of an address word in wire order.
fn low_bits_mask(bits: u8) -> u32 {
    let host = if bits >= 32 {
        u32::MAX
    } else {
        (1u32 << bits) - 1
    };
    u32::from_ne_bytes(host.to_be_bytes())
}

/// The node config the data plane must hold.
pub fn node_config(config: &Config) -> NodeConfig {
    let mask = low_bits_mask(config.node.source_entropy_bits);
    let (src_v4, _) = config
        .node
        .tunnel_source_v4
        .map(addr::words)
        .unwrap_or_default();
    let (src_v6, _) = config
        .node
        .tunnel_source_v6
        .map(addr::words)
        .unwrap_or_default();
    NodeConfig {
        src_v4: src_v4[0],
        src_v4_entropy: mask,
        src_v6,
        src_v6_entropy: mask,
        ttl: config.node.ttl,
        shield: 0,
        pad: [0; 2],
        flood_limit: config.flood_guard.limit_per_window(),
        pad2: 0,
    }
}

/// The `AGENT_*` bits that record why a backend's flags are what they are.
fn agent_bits(s: &BackendStatus) -> u8 {
    let mut bits = 0;
    if s.not_ready {
        bits |= AGENT_NOT_READY;
    }
    if s.grace && !s.healthy {
        bits |= AGENT_GRACE;
    }
    if s.draining {
        bits |= AGENT_DRAINED;
    }
    bits
}

/// The state a pinned backend record stands for, as the agent that wrote it saw it: a
/// backend failing readiness stays not ready (not an operator's drain, which would outlast
/// its recovery), and one within the down grace stays in it (not healthy, which would give
/// it new flows). A record without `AGENT_*` bits, from an agent that did not write them,
/// reads as before: alive is healthy, draining is drained. Operator weights and load factors
/// are not recorded: the tables are rebuilt at the configured weights.
fn adopted(b: &Backend) -> BackendStatus {
    let alive = b.flags & BACKEND_ALIVE != 0;
    let grace = alive && b.agent & AGENT_GRACE != 0;
    BackendStatus {
        healthy: alive && !grace,
        draining: b.agent & AGENT_DRAINED != 0 || (b.agent == 0 && b.flags & BACKEND_DRAINING != 0),
        not_ready: alive && !grace && b.agent & AGENT_NOT_READY != 0,
        weight: None,
        load_percent: None,
        grace,
    }
}

/// Works out the data plane's contents for `config` with backends in `status` (a backend
/// missing from `status` counts as not healthy and not drained).
pub fn plan(
    config: &Config,
    status: &HashMap<IpAddr, BackendStatus>,
    ids: &mut Ids,
) -> Result<Plan, PlanError> {
    let mut backends = BTreeMap::new();
    let mut vips = Vec::new();
    for v in &config.vips {
        let key = addr::vip_key(v.address, v.port, v.protocol.number());
        let id = ids.vip(key, config).ok_or(PlanError::NoId("VIP"))?;
        let mut members = Vec::new();
        for b in &v.backends {
            let bid = ids.backend(b.address).ok_or(PlanError::NoId("backend"))?;
            let s = status.get(&b.address).copied().unwrap_or_default();
            let mut flags = 0;
            if s.healthy || s.grace {
                flags |= BACKEND_ALIVE;
            }
            if s.draining || s.not_ready {
                flags |= BACKEND_DRAINING;
            }
            let mut record = addr::backend(b.address, flags);
            record.agent = agent_bits(&s);
            backends.insert(bid, record);
            let weight = if s.healthy && !s.draining && !s.not_ready {
                let base = s.weight.unwrap_or(b.weight);
                match v.weights {
                    WeightMode::Static => base,
                    // In hundredths of the base, never 0 for a base above 0: only a drain
                    // or failing readiness takes new flows away.
                    WeightMode::Load => crate::weights::effective_weight(
                        base,
                        s.load_percent.unwrap_or(100) as f64 / 100.0,
                    ),
                }
            } else {
                0
            };
            members.push(Member {
                id: bid,
                addr: b.address,
                weight,
            });
        }
        let table = maglev::build(&members, v.table_size).map_err(|source| PlanError::Table {
            vip: format!("{}:{}/{:?}", v.address, v.port, v.protocol),
            source,
        })?;
        let flags = match v.hash {
            HashMode::FiveTuple => 0,
            HashMode::SourceIp => VIP_HASH_SOURCE_ONLY,
        };
        vips.push(PlannedVip {
            id,
            key,
            address: v.address,
            flags,
            table,
            members,
        });
    }
    Ok(Plan {
        node: node_config(config),
        backends,
        vips,
    })
}

/// Share of a table's slots that moved away from backends present before and after: the
/// disruption a change causes to flows that had no reason to move. A change of table size
/// moves everything.
pub fn disruption(old: &[u32], new: &[u32], survivors: &HashSet<u32>) -> f64 {
    if old.len() != new.len() || old.is_empty() {
        return if old.is_empty() { 0.0 } else { 1.0 };
    }
    let moved = old
        .iter()
        .zip(new)
        .filter(|(o, n)| o != n && survivors.contains(o))
        .count();
    moved as f64 / old.len() as f64
}

/// A VIP as written to the data plane.
#[derive(Debug, Clone)]
struct AppliedVip {
    key: VipKey,
    address: IpAddr,
    meta: VipMeta,
    table: Vec<u32>,
}

/// What has been written to the data plane.
#[derive(Debug, Default)]
pub struct Applied {
    node: Option<NodeConfig>,
    backends: BTreeMap<u32, Backend>,
    /// The address each id had when its backend was removed, until the id is taken again:
    /// a backend that comes back to its own id keeps its flows.
    freed: BTreeMap<u32, ([u32; 4], u8)>,
    vips: BTreeMap<u32, AppliedVip>,
    /// Table generation: counts table flips since start.
    pub generation: u64,
    /// Disruption of the last change that moved any slot.
    pub last_disruption: f64,
}

impl Applied {
    /// Rebuilds what a previous agent wrote, from the pinned maps.
    pub fn adopt(dp: &mut DataPlane, ids: &mut Ids) -> Result<Self, DataPlaneError> {
        let mut applied = Applied::default();
        for (id, b) in dp.backends()? {
            ids.adopt_backend(addr::ip(&b.addr, b.family), id);
            applied.backends.insert(id, b);
        }
        for (key, meta) in dp.vips()? {
            ids.adopt_vip(key, meta.id);
            let table = dp.read_table(meta.id, meta.active, meta.table_size as usize)?;
            applied.vips.insert(
                meta.id,
                AppliedVip {
                    key,
                    address: addr::ip(&key.addr, key.family),
                    meta,
                    table,
                },
            );
        }
        Ok(applied)
    }

    /// Backend states recorded in the adopted maps: what a restarted agent carries on from
    /// (see [`adopted`]).
    pub fn adopted_status(&self) -> HashMap<IpAddr, BackendStatus> {
        self.backends
            .values()
            .map(|b| (addr::ip(&b.addr, b.family), adopted(b)))
            .collect()
    }

    /// The data plane's shield switch as last written, if the node config was written.
    pub fn shield_switch(&self) -> Option<bool> {
        self.node.map(|n| n.shield != 0)
    }

    /// Writes what differs between `plan` and what is applied.
    pub fn apply(&mut self, dp: &mut DataPlane, plan: &Plan) -> Result<(), DataPlaneError> {
        if self.node != Some(plan.node) {
            dp.set_node(&plan.node)?;
            self.node = Some(plan.node);
        }
        // Backends that are (still) alive are written before the tables that may pick them;
        // backends losing `ALIVE` only after the tables stopped picking them, so no packet
        // meets a table entry whose backend is not alive.
        let (gaining, losing): (Vec<_>, Vec<_>) = plan
            .backends
            .iter()
            .filter(|(id, b)| self.backends.get(id) != Some(b))
            .partition(|(_, b)| b.flags & BACKEND_ALIVE != 0);
        self.write_backends(dp, gaining)?;
        // Addresses first, so a new VIP is never behind a clear filter bit.
        let addresses: HashSet<IpAddr> = plan.vips.iter().map(|v| v.address).collect();
        let old_addresses: HashSet<IpAddr> = self.vips.values().map(|v| v.address).collect();
        for a in addresses.difference(&old_addresses) {
            dp.set_vip_address(*a)?;
        }
        self.write_tables(dp, plan)?;
        self.write_backends(dp, losing)?;
        // Removed VIPs, then their addresses and the filter.
        self.remove_vips(dp, plan)?;
        if !old_addresses.is_subset(&addresses) {
            for a in old_addresses.difference(&addresses) {
                dp.remove_vip(&addr::vip_address_key(*a))?;
            }
            let all: Vec<IpAddr> = addresses.iter().copied().collect();
            dp.set_vip_filter(&all)?;
        }
        self.remove_unused_backends(dp, plan)
    }

    fn write_backends(
        &mut self,
        dp: &mut DataPlane,
        backends: Vec<(&u32, &Backend)>,
    ) -> Result<(), DataPlaneError> {
        // An id that changes hands first loses what the backend that had it left behind. The
        // holder before is the one applied, or the one removed last; after a restart that
        // removal is unknown, and the id is cleared.
        let new_hands: HashSet<u32> = backends
            .iter()
            .filter(|(id, b)| {
                let before = self
                    .backends
                    .get(id)
                    .map(|o| (o.addr, o.family))
                    .or_else(|| self.freed.get(id).copied());
                before != Some((b.addr, b.family))
            })
            .map(|(id, _)| **id)
            .collect();
        let stale = dp.clear_backends(&new_hands)?;
        if stale > 0 {
            tracing::info!(
                entries = stale,
                "removed flow entries naming reused backend ids"
            );
        }
        for (id, b) in backends {
            dp.set_backend(*id, b)?;
            self.backends.insert(*id, *b);
            self.freed.remove(id);
        }
        Ok(())
    }

    /// Writes every changed VIP's table and flips it in; the largest disruption among them
    /// becomes `last_disruption`.
    /// The largest disruption `plan` would cause to any table written now, before anything
    /// is written: what a load-driven push is held to.
    pub fn disruption_of(&self, plan: &Plan) -> f64 {
        plan.vips
            .iter()
            .filter_map(|v| {
                // An id given to another VIP moves nothing of that one.
                let old = self.vips.get(&v.id).filter(|o| o.key == v.key)?;
                Some(disruption(&old.table, &v.table, &survivors(v)))
            })
            .fold(0.0, f64::max)
    }

    fn write_tables(&mut self, dp: &mut DataPlane, plan: &Plan) -> Result<(), DataPlaneError> {
        let mut moved_any = None;
        for v in &plan.vips {
            // An id the plan gives another VIP: the old one's entry goes first, so that no
            // packet for it finds the new VIP's table, and the new one is written as new.
            if let Some(o) = self.vips.get(&v.id).filter(|o| o.key != v.key) {
                dp.remove_vip(&o.key)?;
                self.vips.remove(&v.id);
            }
            let old = self.vips.get(&v.id);
            let unchanged = old
                .is_some_and(|o| o.table == v.table && o.meta.flags == v.flags && o.key == v.key);
            if unchanged {
                continue;
            }
            // The disruption is known before anything is pushed.
            if let Some(o) = old {
                let d = disruption(&o.table, &v.table, &survivors(v));
                moved_any = Some(moved_any.map_or(d, |m: f64| m.max(d)));
            }
            if old.is_none() {
                // The id may have counted another VIP's traffic before.
                dp.clear_vip(v.id)?;
            }
            let active = old.map(|o| o.meta.active ^ 1).unwrap_or(0);
            self.write_vip(dp, v, active)?;
        }
        if let Some(d) = moved_any {
            self.last_disruption = d;
        }
        Ok(())
    }

    /// Writes `v`'s table into buffer `active`, then its `VipMeta` naming that buffer.
    fn write_vip(
        &mut self,
        dp: &mut DataPlane,
        v: &PlannedVip,
        active: u32,
    ) -> Result<(), DataPlaneError> {
        dp.write_table(v.id, active, &v.table)?;
        let meta = VipMeta {
            id: v.id,
            flags: v.flags,
            table_size: v.table.len() as u32,
            active,
            gen: 0,
        };
        dp.set_vip(&v.key, &meta)?;
        let meta = dp.vip(&v.key)?.unwrap_or(meta);
        self.generation += 1;
        self.vips.insert(
            v.id,
            AppliedVip {
                key: v.key,
                address: v.address,
                meta,
                table: v.table.clone(),
            },
        );
        Ok(())
    }

    /// VIPs applied but no longer planned.
    fn remove_vips(&mut self, dp: &mut DataPlane, plan: &Plan) -> Result<(), DataPlaneError> {
        let planned: HashSet<u32> = plan.vips.iter().map(|v| v.id).collect();
        let gone: Vec<u32> = self
            .vips
            .keys()
            .copied()
            .filter(|id| !planned.contains(id))
            .collect();
        for id in gone {
            if let Some(v) = self.vips.remove(&id) {
                dp.remove_vip(&v.key)?;
            }
        }
        Ok(())
    }

    /// Backends no longer in any VIP: not alive, so stray flow entries re-pick.
    fn remove_unused_backends(
        &mut self,
        dp: &mut DataPlane,
        plan: &Plan,
    ) -> Result<(), DataPlaneError> {
        let gone: Vec<u32> = self
            .backends
            .keys()
            .copied()
            .filter(|id| !plan.backends.contains_key(id))
            .collect();
        for id in gone {
            dp.set_backend(id, &Backend::default())?;
            if let Some(old) = self.backends.remove(&id) {
                self.freed.insert(id, (old.addr, old.family));
            }
        }
        Ok(())
    }
}

/// The ids of `v`'s members that keep a share of its table.
fn survivors(v: &PlannedVip) -> HashSet<u32> {
    v.members
        .iter()
        .filter(|m| m.weight > 0)
        .map(|m| m.id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(backends: &str) -> Config {
        let text = format!(
            "[node]\ninterfaces = [\"eth0\"]\ntunnel_source_v4 = \"10.1.0.1\"\nsource_entropy_bits = 8\n\n\
             [[vip]]\naddress = \"198.51.100.1\"\nport = 80\nprotocol = \"tcp\"\nbackends = [{backends}]\n"
        );
        crate::config::parse(Path::new("t.toml"), &text).expect("valid")
    }

    fn healthy(addrs: &[&str]) -> HashMap<IpAddr, BackendStatus> {
        addrs
            .iter()
            .map(|a| {
                (
                    a.parse().expect("literal"),
                    BackendStatus {
                        healthy: true,
                        ..Default::default()
                    },
                )
            })
            .collect()
    }

    #[test]
    fn down_and_draining_backends_leave_the_table_but_keep_their_flags() {
        let c = config(
            "{ address = \"10.1.0.11\" }, { address = \"10.1.0.12\" }, { address = \"10.1.0.13\" }",
        );
        let mut ids = Ids::default();
        let mut status = healthy(&["10.1.0.11", "10.1.0.12"]);
        status.insert(
            "10.1.0.12".parse().expect("literal"),
            BackendStatus {
                healthy: true,
                draining: true,
                not_ready: false,
                weight: None,
                load_percent: None,
                grace: false,
            },
        );
        let p = plan(&c, &status, &mut ids).expect("plan");
        let t = &p.vips[0].table;
        assert!(
            t.iter().all(|id| *id == 1),
            "only the healthy, undrained backend takes slots"
        );
        assert_eq!(p.backends[&1].flags, BACKEND_ALIVE);
        assert_eq!(p.backends[&2].flags, BACKEND_ALIVE | BACKEND_DRAINING);
        assert_eq!(p.backends[&3].flags, 0);
        assert_eq!(p.node.src_v4_entropy, u32::from_ne_bytes([0, 0, 0, 0xff]));
    }

    /// What a restarted agent reads back from the records the last one wrote is the state
    /// it wrote them for: failing readiness stays that (and not an operator's drain), the
    /// down grace stays a grace (not healthy), a drain stays a drain, both at once stay both.
    #[test]
    fn a_restarted_agent_reads_back_the_state_it_wrote() {
        let addrs = [
            "10.1.0.11",
            "10.1.0.12",
            "10.1.0.13",
            "10.1.0.14",
            "10.1.0.15",
            "10.1.0.16",
        ];
        let c = config(
            &addrs
                .iter()
                .map(|a| format!("{{ address = \"{a}\" }}"))
                .collect::<Vec<_>>()
                .join(", "),
        );
        let state = |healthy, draining, not_ready, grace| BackendStatus {
            healthy,
            draining,
            not_ready,
            grace,
            ..Default::default()
        };
        let written: HashMap<IpAddr, BackendStatus> = addrs
            .iter()
            .map(|a| a.parse().expect("literal"))
            .zip([
                state(true, false, false, false),
                state(true, true, false, false),
                state(true, false, true, false),
                state(true, true, true, false),
                state(false, false, false, true),
                state(false, false, false, false),
            ])
            .collect();
        let p = plan(&c, &written, &mut Ids::default()).expect("plan");
        let applied = Applied {
            backends: p.backends.clone(),
            ..Default::default()
        };
        assert_eq!(applied.adopted_status(), written);
        // A record from an agent that wrote no AGENT_* bits reads as it always did.
        let old = addr::backend(
            "10.1.0.11".parse().expect("literal"),
            BACKEND_ALIVE | BACKEND_DRAINING,
        );
        assert_eq!(adopted(&old), state(true, true, false, false));
    }

    #[test]
    fn load_factors_weigh_only_load_vips() {
        let backends = "{ address = \"10.1.0.11\" }, { address = \"10.1.0.12\" }";
        let mut status = healthy(&["10.1.0.11", "10.1.0.12"]);
        // The second gateway at a quarter of its configured weight.
        status
            .get_mut(&"10.1.0.12".parse().expect("literal"))
            .expect("present")
            .load_percent = Some(25);
        let share = |c: &Config| {
            let p = plan(c, &status, &mut Ids::default()).expect("plan");
            let t = &p.vips[0].table;
            t.iter().filter(|id| **id == 2).count() as f64 / t.len() as f64
        };
        let static_vip = config(backends);
        assert!(
            (share(&static_vip) - 0.5).abs() < 0.01,
            "static: factors ignored"
        );
        let mut load_vip = config(backends);
        load_vip.vips[0].weights = crate::config::WeightMode::Load;
        assert!((share(&load_vip) - 0.2).abs() < 0.01, "load: 100 to 25");
    }

    #[test]
    fn ids_are_stable_across_reloads() {
        let mut ids = Ids::default();
        let c1 = config("{ address = \"10.1.0.11\" }, { address = \"10.1.0.12\" }");
        plan(&c1, &HashMap::new(), &mut ids).expect("plan");
        let c2 = config("{ address = \"10.1.0.12\" }, { address = \"10.1.0.13\" }");
        let p = plan(&c2, &HashMap::new(), &mut ids).expect("plan");
        assert_eq!(
            ids.backend_id(&"10.1.0.12".parse().expect("literal")),
            Some(2)
        );
        assert_eq!(
            ids.backend_id(&"10.1.0.13".parse().expect("literal")),
            Some(3)
        );
        assert_eq!(p.backends.keys().copied().collect::<Vec<_>>(), vec![2, 3]);
    }

    #[test]
    fn disruption_counts_only_survivors_moving() {
        let old = vec![1, 2, 3, 1, 2, 3];
        let new = vec![1, 2, 1, 1, 2, 2];
        let survivors: HashSet<u32> = [1, 2].into_iter().collect();
        assert_eq!(disruption(&old, &new, &survivors), 0.0);
        let new = vec![2, 2, 1, 1, 2, 2];
        assert!((disruption(&old, &new, &survivors) - 1.0 / 6.0).abs() < 1e-9);
    }
}
