//! The clients being counted: a table of at most `max_clients` prefixes, in shards each
//! behind its own lock (held for one update, never across an await), so refusals on
//! different worker threads seldom wait for each other.
//!
//! When a shard is full, a new prefix takes the place of the lightest of [`SAMPLE`] entries
//! picked at random (fewest refusals in the window, then the longest unseen), as Redis
//! samples for its LRU: O(1) per event, and a flood of addresses seen once each replaces
//! its own kind, not a client that has piled up refusals. A client that crossed a threshold
//! is held apart anyway, in the candidate set.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::Mutex,
};

use ipnet::IpNet;
use rand::Rng;
use sluice_util::shield::Class;

use super::window::Counts;

/// Entries compared to choose the one a newcomer replaces.
pub const SAMPLE: usize = 8;

/// Entries looked at, on each new prefix, for one whose refusals have all aged out: the
/// table shrinks back as a flood ends.
const SWEEP: usize = 2;

/// Clients per shard below which more shards are not worth it.
const PER_SHARD: usize = 4096;
const MAX_SHARDS: usize = 16;

/// One counted client.
#[derive(Debug)]
struct Client {
    prefix: IpNet,
    counts: Counts,
    /// Its latest refusal (coarse ms).
    seen_ms: u64,
    /// When it was last offered as a candidate (coarse ms; 0: never).
    offered_ms: u64,
}

/// What counting one refusal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    /// The class's refusals within the window, this one included.
    pub count: u32,
    /// It crossed the threshold and was not offered within the last `reoffer_ms`: offer
    /// it (again) now.
    pub offer: bool,
    /// Another client was dropped to make room for this one.
    pub evicted: bool,
}

/// One shard: the entries in a vector (so that sampling is an index) and where each is.
#[derive(Debug, Default)]
struct Shard {
    slots: Vec<Client>,
    index: HashMap<IpNet, usize>,
    cap: usize,
}

/// The whole table.
#[derive(Debug)]
pub struct Clients {
    shards: Vec<Mutex<Shard>>,
    hasher: RandomState,
}

impl Clients {
    /// A table for at most `max` clients.
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        let n = (max / PER_SHARD).clamp(1, MAX_SHARDS);
        // The shards' capacities add up to `max` exactly.
        let shards = (0..n)
            .map(|i| {
                Mutex::new(Shard {
                    cap: max / n + usize::from(i < max % n),
                    ..Shard::default()
                })
            })
            .collect();
        Clients {
            shards,
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, prefix: &IpNet) -> std::sync::MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(prefix) % self.shards.len() as u64) as usize;
        // A panic elsewhere cannot leave a shard inconsistent mid-update: take it as it is.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a refusal of `class` by `prefix` at `now_ms`, against `threshold` (not 0).
    /// A client at or over it is to be offered, at most once per `reoffer_ms`.
    pub fn count(
        &self,
        prefix: IpNet,
        class: Class,
        threshold: u32,
        now_ms: u64,
        window_ms: u64,
        reoffer_ms: u64,
    ) -> Counted {
        let mut shard = self.shard(&prefix);
        let (i, evicted) = shard.slot(prefix, now_ms, window_ms);
        let c = &mut shard.slots[i];
        c.seen_ms = now_ms;
        let count = c.counts.add(class, now_ms, window_ms);
        let offer = count >= threshold
            && (c.offered_ms == 0 || now_ms.saturating_sub(c.offered_ms) >= reoffer_ms);
        if offer {
            c.offered_ms = now_ms.max(1);
        }
        Counted {
            count,
            offer,
            evicted,
        }
    }

    /// Clients held.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).slots.len())
            .sum()
    }
}

impl Shard {
    /// The slot of `prefix`, made if new; whether another client was evicted for it.
    fn slot(&mut self, prefix: IpNet, now_ms: u64, window_ms: u64) -> (usize, bool) {
        if let Some(&i) = self.index.get(&prefix) {
            return (i, false);
        }
        self.sweep(now_ms, window_ms);
        let mut evicted = false;
        if self.slots.len() >= self.cap {
            if let Some(victim) = self.lightest(now_ms, window_ms) {
                self.remove(victim);
                evicted = true;
            }
        }
        self.slots.push(Client {
            prefix,
            counts: Counts::default(),
            seen_ms: now_ms,
            offered_ms: 0,
        });
        let i = self.slots.len() - 1;
        self.index.insert(prefix, i);
        (i, evicted)
    }

    /// Drops entries among a few picked at random whose refusals have all aged out.
    fn sweep(&mut self, now_ms: u64, window_ms: u64) {
        let mut rng = rand::thread_rng();
        for _ in 0..SWEEP {
            if self.slots.is_empty() {
                return;
            }
            let i = rng.gen_range(0..self.slots.len());
            if self.slots[i].counts.total(now_ms, window_ms) == 0 {
                self.remove(i);
            }
        }
    }

    /// The lightest of [`SAMPLE`] entries picked at random.
    fn lightest(&self, now_ms: u64, window_ms: u64) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mut rng = rand::thread_rng();
        (0..SAMPLE)
            .map(|_| rng.gen_range(0..self.slots.len()))
            .min_by_key(|&i| {
                let c = &self.slots[i];
                (c.counts.total(now_ms, window_ms), c.seen_ms)
            })
    }

    /// Removes slot `i` (the last entry moves into its place).
    fn remove(&mut self, i: usize) {
        let gone = self.slots.swap_remove(i);
        self.index.remove(&gone.prefix);
        if let Some(moved) = self.slots.get(i) {
            self.index.insert(moved.prefix, i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(n: u32) -> IpNet {
        sluice_util::shield::client_prefix(std::net::Ipv4Addr::from(n).into())
    }

    #[test]
    fn shards_add_up_to_the_bound() {
        for max in [1, 7, 4095, 4096, 65_536, 100_001] {
            let c = Clients::new(max);
            let caps: usize = c.shards.iter().map(|s| s.lock().expect("lock").cap).sum();
            assert_eq!(caps, max, "{max}");
            assert!(c.shards.len() <= MAX_SHARDS);
        }
    }

    #[test]
    fn a_flood_of_addresses_stays_within_the_bound_and_spares_the_heavy_client() {
        const MAX: usize = 2048;
        let t = Clients::new(MAX);
        let (window, now) = (60_000, 1_000_000);
        let abuser = v4(0x0a00_0001);
        for _ in 0..15 {
            t.count(abuser, Class::Auth, 100, now, window, 1000);
        }
        let mut evictions = 0;
        for n in 0..(10 * MAX as u32) {
            let at = now + u64::from(n / 1000);
            let counted = t.count(v4(0xc000_0000 + n), Class::Malformed, 100, at, window, 1000);
            evictions += usize::from(counted.evicted);
            assert!(t.len() <= MAX);
        }
        assert_eq!(t.len(), MAX);
        assert!(evictions >= 9 * MAX, "{evictions}");
        // Still counted, with all its refusals.
        let c = t.count(abuser, Class::Auth, 100, now + 20, window, 1000);
        assert_eq!((c.count, c.evicted), (16, false));
    }

    #[test]
    fn offers_at_the_threshold_then_at_most_once_per_interval() {
        let t = Clients::new(16);
        let p = v4(7);
        let offers: Vec<bool> = (0..5)
            .map(|i| t.count(p, Class::Auth, 3, 1000 + i, 60_000, 1000).offer)
            .collect();
        assert_eq!(offers, [false, false, true, false, false]);
        assert!(t.count(p, Class::Auth, 3, 2002, 60_000, 1000).offer);
    }

    #[test]
    fn aged_out_entries_are_swept_as_new_ones_come() {
        let t = Clients::new(4096);
        for n in 0..64 {
            t.count(v4(n), Class::Auth, 100, 1000, 1000, 1000);
        }
        // Two windows on, those 64 hold nothing: newcomers sweep most of them away (each
        // looks at two entries; some 11 of the 64 are expected to be left).
        for n in 100..356 {
            t.count(v4(n), Class::Auth, 100, 5000, 1000, 1000);
        }
        assert!(t.len() <= 256 + 32, "{}", t.len());
    }
}
