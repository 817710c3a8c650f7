//! The shield's maps: blocked prefixes, their drop counters, and the flood guard's state.

use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    Array, MapData, PerCpuArray,
};
use ipnet::IpNet;
use sluice_common::{
    names, stats::BlockReason, BlockEntry, BlockKey, FloodState, BLOCK_KEY_FAMILY_BITS,
    BLOCK_NOTE_LEN,
};

use super::{map_err, DataPlane, Result};
use crate::addr;

/// Now on the clock the data plane compares expiry times with (`CLOCK_MONOTONIC`, which
/// `bpf_ktime_get_ns` reads).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

/// The trie key of `prefix` (its host bits cleared).
pub fn block_key(prefix: IpNet) -> Key<BlockKey> {
    let prefix = prefix.trunc();
    let (addr, family) = addr::words(prefix.addr());
    Key::new(
        BLOCK_KEY_FAMILY_BITS + u32::from(prefix.prefix_len()),
        BlockKey {
            family,
            pad: 0,
            pad2: 0,
            addr,
        },
    )
}

/// The prefix a trie key stands for, if it is one this build writes.
pub fn prefix_of(key: &Key<BlockKey>) -> Option<IpNet> {
    let data = key.data();
    let len = key.prefix_len().checked_sub(BLOCK_KEY_FAMILY_BITS)?;
    IpNet::new(addr::ip(&data.addr, data.family), u8::try_from(len).ok()?).ok()
}

impl DataPlane {
    /// Blocks `prefix` with `entry`, replacing any entry for exactly that prefix.
    pub fn set_block(&mut self, prefix: IpNet, entry: &BlockEntry) -> Result<()> {
        let name = names::BLOCKS;
        let mut map: LpmTrie<&mut MapData, BlockKey, BlockEntry> =
            LpmTrie::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        map.insert(&block_key(prefix), entry, 0)
            .map_err(map_err(name))
    }

    /// Removes the entry for exactly `prefix`; `false` if there was none.
    pub fn remove_block(&mut self, prefix: IpNet) -> Result<bool> {
        let name = names::BLOCKS;
        let mut map: LpmTrie<&mut MapData, BlockKey, BlockEntry> =
            LpmTrie::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        match map.remove(&block_key(prefix)) {
            Ok(()) => Ok(true),
            Err(e) if super::key_gone(&e) => Ok(false),
            Err(e) => Err(map_err(name)(e)),
        }
    }

    /// Every block entry.
    pub fn blocks(&self) -> Result<Vec<(IpNet, BlockEntry)>> {
        let name = names::BLOCKS;
        let map: LpmTrie<&MapData, BlockKey, BlockEntry> =
            LpmTrie::try_from(self.map(name)?).map_err(map_err(name))?;
        let mut out = Vec::new();
        for item in map.iter() {
            let (key, entry) = item.map_err(map_err(name))?;
            if let Some(p) = prefix_of(&key) {
                out.push((p, entry));
            }
        }
        Ok(out)
    }

    /// Stores the note of the entry in `slot` (cut to [`BLOCK_NOTE_LEN`] bytes at a
    /// character boundary).
    pub fn set_block_note(&mut self, slot: u32, note: &str) -> Result<()> {
        let name = names::BLOCK_NOTES;
        let mut bytes = [0u8; BLOCK_NOTE_LEN];
        let mut end = note.len().min(BLOCK_NOTE_LEN);
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        bytes[..end].copy_from_slice(&note.as_bytes()[..end]);
        let mut map: Array<&mut MapData, [u8; BLOCK_NOTE_LEN]> =
            Array::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        map.set(slot, bytes, 0).map_err(map_err(name))
    }

    /// The note of the entry in `slot`.
    pub fn block_note(&self, slot: u32) -> Result<String> {
        let name = names::BLOCK_NOTES;
        let map: Array<&MapData, [u8; BLOCK_NOTE_LEN]> =
            Array::try_from(self.map(name)?).map_err(map_err(name))?;
        let bytes = map.get(&slot, 0).map_err(map_err(name))?;
        let end = bytes.iter().position(|b| *b == 0).unwrap_or(BLOCK_NOTE_LEN);
        Ok(String::from_utf8_lossy(&bytes[..end]).into_owned())
    }

    /// Packets dropped by the entry holding counter `slot`, summed over CPUs.
    pub fn block_drops(&self, slot: u32) -> Result<u64> {
        self.counter_sum(names::BLOCK_DROPS, slot)
    }

    /// Zeroes counter `slot`, before a new entry takes it.
    pub fn reset_block_drops(&mut self, slot: u32) -> Result<()> {
        let name = names::BLOCK_DROPS;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| super::DataPlaneError::Cpus(e))?;
        let mut map: PerCpuArray<&mut MapData, u64> =
            PerCpuArray::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        let zeros = aya::maps::PerCpuValues::try_from(vec![0u64; cpus])
            .map_err(super::DataPlaneError::Cpus)?;
        map.set(slot, zeros, 0).map_err(map_err(name))
    }

    /// Packets the shield dropped for `reason`, summed over CPUs.
    pub fn block_reason_drops(&self, reason: BlockReason) -> Result<u64> {
        self.counter_sum(names::BLOCK_REASONS, reason as u32)
    }

    /// Each CPU's flood-guard state.
    pub fn flood_states(&self) -> Result<Vec<FloodState>> {
        let name = names::FLOOD;
        let map: PerCpuArray<&MapData, FloodState> =
            PerCpuArray::try_from(self.map(name)?).map_err(map_err(name))?;
        let values = map.get(&0, 0).map_err(map_err(name))?;
        Ok(values.iter().copied().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_clear_host_bits() {
        for (given, stored) in [
            ("10.1.2.3/32", "10.1.2.3/32"),
            ("10.1.2.3/16", "10.1.0.0/16"),
            ("fd00::1:2/64", "fd00::/64"),
            ("0.0.0.0/0", "0.0.0.0/0"),
        ] {
            let key = block_key(given.parse().expect("literal"));
            assert_eq!(prefix_of(&key).map(|p| p.to_string()), Some(stored.into()));
        }
        let v4 = block_key("10.0.0.0/8".parse().expect("literal"));
        assert_eq!(v4.prefix_len(), BLOCK_KEY_FAMILY_BITS + 8);
        assert_eq!(v4.data().family, sluice_common::FAMILY_V4);
    }
}
