//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), with weights.
//!
//! Each backend has a permutation of the M slots given by an offset and a skip derived from
//! its address. Backends take turns claiming their next preferred free slot until the table is
//! full. With weights, a backend's turns per round are proportional to its weight: every round
//! it earns its weight in credit and claims one slot per `max_weight` of credit.
//!
//! Determinism across LB nodes: permutations come from the backend's address (not its id or
//! its place in the config), with a fixed hash, and backends take turns in address order. Two
//! nodes with the same backend set and weights therefore build identical tables.

use std::net::IpAddr;

use sluice_common::{hash_words, MAX_TABLE_SIZE};
use thiserror::Error;

use crate::addr;

/// Seeds of the two permutation hashes (offset and skip).
const OFFSET_SEED: u32 = 0x6d61_676c;
const SKIP_SEED: u32 = 0x6576_2121;

/// A backend as the table builder sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// Backend id written into the table.
    pub id: u32,
    /// Address: determines the permutation.
    pub addr: IpAddr,
    /// Relative weight; 0 takes no slots.
    pub weight: u32,
}

/// Why a table cannot be built.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MaglevError {
    /// M must be prime for every skip to generate a full permutation.
    #[error("table size {0} is not prime")]
    NotPrime(u32),
    /// M is larger than the data plane's table buffers.
    #[error("table size {size} is larger than the maximum {max}")]
    TooLarge {
        /// Requested size.
        size: u32,
        /// Largest supported size.
        max: u32,
    },
    /// More weighted backends than slots.
    #[error("{backends} backends do not fit in a table of {size} slots")]
    TooManyBackends {
        /// Number of weighted backends.
        backends: usize,
        /// Table size.
        size: u32,
    },
    /// The same address appears twice.
    #[error("backend address {0} appears more than once")]
    DuplicateAddress(IpAddr),
}

/// True if `n` is prime.
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3u32;
    while (d as u64) * (d as u64) <= n as u64 {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// The (offset, skip) pair that defines `addr`'s preference order over `size` slots: its
/// j-th choice is `(offset + j * skip) % size`.
pub fn permutation(addr: IpAddr, size: u32) -> (u64, u64) {
    let m = size as u64;
    let (words, family) = addr::words(addr);
    let key = [words[0], words[1], words[2], words[3], family as u32];
    (
        hash_words(&key, OFFSET_SEED) as u64 % m,
        hash_words(&key, SKIP_SEED) as u64 % (m - 1) + 1,
    )
}

/// Builds a table of `size` slots. Slots hold backend ids; with no weighted backend every slot
/// is 0, which the data plane reads as "no backend".
pub fn build(members: &[Member], size: u32) -> Result<Vec<u32>, MaglevError> {
    if size > MAX_TABLE_SIZE {
        return Err(MaglevError::TooLarge {
            size,
            max: MAX_TABLE_SIZE,
        });
    }
    if !is_prime(size) {
        return Err(MaglevError::NotPrime(size));
    }
    let mut active: Vec<&Member> = members.iter().filter(|m| m.weight > 0).collect();
    active.sort_by_key(|m| m.addr);
    if let Some(w) = active.windows(2).find(|w| w[0].addr == w[1].addr) {
        return Err(MaglevError::DuplicateAddress(w[0].addr));
    }
    let mut table = vec![0u32; size as usize];
    if active.is_empty() {
        return Ok(table);
    }
    if active.len() > size as usize {
        return Err(MaglevError::TooManyBackends {
            backends: active.len(),
            size,
        });
    }
    let m = size as u64;
    // Current position in each backend's permutation and its step.
    let mut pos = Vec::with_capacity(active.len());
    let mut skip = Vec::with_capacity(active.len());
    for member in &active {
        let (offset, step) = permutation(member.addr, size);
        pos.push(offset);
        skip.push(step);
    }
    let max_weight = active.iter().map(|m| m.weight as u64).max().unwrap_or(1);
    let mut credit = vec![0u64; active.len()];
    let mut filled = vec![false; size as usize];
    let mut remaining = size as usize;
    while remaining > 0 {
        for (i, member) in active.iter().enumerate() {
            credit[i] += member.weight as u64;
            if credit[i] < max_weight {
                continue;
            }
            credit[i] -= max_weight;
            // Walk the permutation to the next free slot; one exists because remaining > 0.
            let mut p = pos[i];
            while filled[p as usize] {
                p += skip[i];
                if p >= m {
                    p -= m;
                }
            }
            filled[p as usize] = true;
            table[p as usize] = member.id;
            p += skip[i];
            if p >= m {
                p -= m;
            }
            pos[i] = p;
            remaining -= 1;
            if remaining == 0 {
                break;
            }
        }
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: u32) -> Vec<Member> {
        (0..n)
            .map(|i| Member {
                id: i + 1,
                addr: IpAddr::from([10, 1, (i >> 8) as u8, i as u8]),
                weight: 1,
            })
            .collect()
    }

    fn counts(table: &[u32], n: usize) -> Vec<usize> {
        let mut c = vec![0usize; n + 1];
        for id in table {
            c[*id as usize] += 1;
        }
        c
    }

    #[test]
    fn primes() {
        assert!(is_prime(65537));
        assert!(is_prime(2));
        assert!(!is_prime(65535));
        assert!(!is_prime(1));
        assert!(!is_prime(0));
    }

    #[test]
    fn rejects_bad_sizes() {
        assert_eq!(build(&members(3), 100), Err(MaglevError::NotPrime(100)));
        assert!(matches!(
            build(&members(3), 131_071),
            Err(MaglevError::TooLarge { .. })
        ));
        assert!(matches!(
            build(&members(10), 7),
            Err(MaglevError::TooManyBackends { .. })
        ));
    }

    #[test]
    fn empty_set_means_no_backend() {
        let t = build(&[], 13).expect("valid");
        assert!(t.iter().all(|id| *id == 0));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

        /// Max/min slots per backend stays within 1% for up to 100 equal backends.
        #[test]
        fn balanced(n in 2u32..=100) {
            let t = build(&members(n), 65537).expect("valid");
            let c = counts(&t, n as usize);
            let (min, max) = (c[1..].iter().min().copied().unwrap_or(0), c[1..].iter().max().copied().unwrap_or(0));
            proptest::prop_assert!(max as f64 / min as f64 <= 1.01, "n={} min={} max={}", n, min, max);
        }

        /// Removing one of N backends moves at most 1/N of the slots plus 1% of M.
        #[test]
        fn minimal_disruption(n in 2u32..=100, gone in 0u32..100) {
            let m = members(n);
            let before = build(&m, 65537).expect("valid");
            let removed = m[(gone % n) as usize].id;
            let rest: Vec<Member> = m.iter().copied().filter(|x| x.id != removed).collect();
            let after = build(&rest, 65537).expect("valid");
            let moved = before.iter().zip(&after).filter(|(b, a)| b != a && **b != removed).count();
            let changed = before.iter().zip(&after).filter(|(b, a)| b != a).count();
            let bound = 65537.0 / n as f64 + 0.01 * 65537.0;
            proptest::prop_assert!(changed as f64 <= bound, "changed {} > {}", changed, bound);
            // Slots of surviving backends that moved elsewhere: the disruption Maglev minimises.
            proptest::prop_assert!(moved as f64 <= 0.01 * 65537.0, "moved {}", moved);
        }

        /// Slot shares follow the weights within 1 percentage point.
        #[test]
        fn weighted(weights in proptest::collection::vec(1u32..=10, 2..=20)) {
            let m: Vec<Member> = weights
                .iter()
                .enumerate()
                .map(|(i, w)| Member { id: i as u32 + 1, addr: IpAddr::from([10, 2, 0, i as u8]), weight: *w })
                .collect();
            let t = build(&m, 65537).expect("valid");
            let c = counts(&t, m.len());
            let total: u32 = weights.iter().sum();
            for (i, w) in weights.iter().enumerate() {
                let share = c[i + 1] as f64 / 65537.0;
                let want = *w as f64 / total as f64;
                proptest::prop_assert!((share - want).abs() <= 0.01, "backend {} share {} want {}", i, share, want);
            }
        }
    }

    #[test]
    fn every_slot_filled_and_order_independent() {
        let m = members(7);
        let t = build(&m, 65537).expect("valid");
        assert!(t.iter().all(|id| (1..=7).contains(id)));
        let mut rev = m.clone();
        rev.reverse();
        assert_eq!(build(&rev, 65537).expect("valid"), t);
    }
}
