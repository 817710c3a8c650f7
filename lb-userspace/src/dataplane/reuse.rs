//! What an id given to a new backend or VIP must not inherit from the one that had it
//! before: flow entries and traffic counters are kept by id, and outlive a removal.

use std::collections::HashSet;

use aya::maps::{HashMap, Map, MapData, PerCpuArray, PerCpuValues};
use sluice_common::{names, FlowKey, FlowKey4, FlowState, Traffic};

use super::{key_gone, map_err, DataPlane, DataPlaneError, Result};

impl DataPlane {
    /// Clears what backends `ids` left behind before new backends take those ids: their
    /// traffic counters, and every flow entry naming them. Flow entries name a backend by id
    /// alone, so a stale entry (a UDP flow whose backend was removed, not seen since) would
    /// otherwise send its flow to whichever backend takes the id next, which may not serve
    /// that VIP at all. Walks both flow tables: run only when an id changes hands.
    /// Returns how many flow entries were removed.
    pub fn clear_backends(&mut self, ids: &HashSet<u32>) -> Result<usize> {
        if ids.is_empty() {
            return Ok(0);
        }
        for id in ids {
            self.zero_traffic(names::BACKEND_STATS, *id)?;
        }
        Ok(self.remove_flows_of::<FlowKey>(names::FLOWS, ids)?
            + self.remove_flows_of::<FlowKey4>(names::FLOWS4, ids)?)
    }

    /// Clears VIP `id`'s traffic counters before a new VIP takes the id. Its flow entries
    /// need nothing: a VIP taking an id gets a new generation, which they do not match.
    pub fn clear_vip(&mut self, id: u32) -> Result<()> {
        self.zero_traffic(names::VIP_STATS, id)
    }

    fn zero_traffic(&mut self, name: &'static str, id: u32) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| DataPlaneError::Cpus(e))?;
        let mut map: PerCpuArray<&mut MapData, Traffic> =
            PerCpuArray::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        let zero =
            PerCpuValues::try_from(vec![Traffic::default(); cpus]).map_err(DataPlaneError::Cpus)?;
        map.set(id, zero, 0).map_err(map_err(name))
    }

    fn remove_flows_of<K: aya::Pod>(
        &mut self,
        name: &'static str,
        ids: &HashSet<u32>,
    ) -> Result<usize> {
        // A walk restarts from the first key when the data plane evicts the one it stands
        // on: bounded by the table's size, so that a busy table cannot keep it going.
        let capacity = match self.map(name)? {
            Map::LruHashMap(data) | Map::HashMap(data) => {
                data.info().map_err(map_err(name))?.max_entries() as usize
            }
            _ => return Err(DataPlaneError::MissingMap(name)),
        };
        let mut map: HashMap<&mut MapData, K, FlowState> =
            HashMap::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        // Keys first: removing while walking would restart the walk at every removal.
        let mut stale: Vec<K> = Vec::new();
        for entry in map.iter().take(capacity) {
            match entry {
                Ok((key, state)) if ids.contains(&state.backend) => stale.push(key),
                Ok(_) => {}
                // Evicted between the walk's two reads.
                Err(e) if key_gone(&e) => {}
                Err(e) => return Err(map_err(name)(e)),
            }
        }
        let mut removed = 0;
        for key in &stale {
            match map.remove(key) {
                Ok(()) => removed += 1,
                // Evicted meanwhile, or seen twice by a restarted walk.
                Err(e) if key_gone(&e) => {}
                Err(e) => return Err(map_err(name)(e)),
            }
        }
        Ok(removed)
    }
}
