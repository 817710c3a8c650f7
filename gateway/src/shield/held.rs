//! The candidates: clients that crossed a threshold, each held until its time runs out.
//!
//! Kept apart from the counted clients and bounded on its own (`max_candidates`), so a
//! flood of new addresses, which churns the counted table, cannot wash out a client already
//! found. When the set is full a newcomer waits for room: the candidates held are as
//! guilty, and holding them keeps the answer the L4 tier sees stable.

use std::{collections::HashMap, sync::Mutex};

use ipnet::IpNet;
use sluice_util::shield::{Candidate, Class};

/// One candidate.
#[derive(Debug, Clone, Copy)]
struct Entry {
    class: Class,
    count: u32,
    /// Held until (coarse ms).
    until_ms: u64,
}

/// What an offer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// A new candidate.
    New,
    /// Already one: its class, count and time were renewed.
    Renewed,
    /// Not taken: the set is full.
    Full,
}

#[derive(Debug, Default)]
struct Set {
    entries: HashMap<IpNet, Entry>,
    /// No entry runs out before this (coarse ms): the set is swept only once one may have.
    next_expiry: u64,
}

/// The candidate set, one per prefix.
#[derive(Debug, Default)]
pub struct Held {
    set: Mutex<Set>,
}

impl Set {
    /// Drops the entries whose time has run out, if any may have.
    fn expire(&mut self, now_ms: u64) {
        if now_ms < self.next_expiry {
            return;
        }
        self.entries.retain(|_, e| e.until_ms > now_ms);
        self.next_expiry = self
            .entries
            .values()
            .map(|e| e.until_ms)
            .min()
            .unwrap_or(u64::MAX);
    }
}

impl Held {
    fn lock(&self) -> std::sync::MutexGuard<'_, Set> {
        self.set.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Offers `prefix`, which reached `count` refusals of `class`, for `ttl_ms` from
    /// `now_ms`, in a set of at most `max`.
    pub fn offer(
        &self,
        prefix: IpNet,
        class: Class,
        count: u32,
        now_ms: u64,
        ttl_ms: u64,
        max: usize,
    ) -> Offer {
        let until_ms = now_ms.saturating_add(ttl_ms);
        let entry = Entry {
            class,
            count,
            until_ms,
        };
        let mut set = self.lock();
        set.expire(now_ms);
        let full = set.entries.len() >= max;
        let offer = match set.entries.get_mut(&prefix) {
            Some(e) => {
                *e = entry;
                Offer::Renewed
            }
            None if full => return Offer::Full,
            None => {
                set.entries.insert(prefix, entry);
                Offer::New
            }
        };
        set.next_expiry = set.next_expiry.min(until_ms);
        offer
    }

    /// The candidates at `now_ms`, by prefix.
    pub fn list(&self, now_ms: u64) -> Vec<Candidate> {
        let mut set = self.lock();
        set.expire(now_ms);
        let mut out: Vec<Candidate> = set
            .entries
            .iter()
            .map(|(prefix, e)| Candidate {
                prefix: *prefix,
                class: e.class,
                count: e.count,
                ttl_ms: e.until_ms.saturating_sub(now_ms),
            })
            .collect();
        drop(set);
        out.sort_by_key(|c| c.prefix);
        out
    }

    /// Candidates held at `now_ms`.
    pub fn len(&self, now_ms: u64) -> usize {
        let mut set = self.lock();
        set.expire(now_ms);
        set.entries.len()
    }

    /// Keeps at most `max` candidates: those held longest.
    pub fn trim(&self, max: usize) {
        let mut set = self.lock();
        if set.entries.len() <= max {
            return;
        }
        let mut by_until: Vec<(u64, IpNet)> =
            set.entries.iter().map(|(p, e)| (e.until_ms, *p)).collect();
        by_until.sort_unstable_by(|a, b| b.cmp(a));
        for (_, prefix) in by_until.iter().skip(max) {
            set.entries.remove(prefix);
        }
        set.next_expiry = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> IpNet {
        s.parse().expect("literal")
    }

    #[test]
    fn candidates_are_renewed_expire_and_are_bounded() {
        let h = Held::default();
        assert_eq!(
            h.offer(p("10.0.0.1/32"), Class::Auth, 5, 1000, 500, 2),
            Offer::New
        );
        assert_eq!(
            h.offer(p("10.0.0.2/32"), Class::Deadline, 9, 1100, 500, 2),
            Offer::New
        );
        // Full: the newcomer waits; a candidate held is renewed, with its latest class.
        assert_eq!(
            h.offer(p("10.0.0.3/32"), Class::Auth, 5, 1200, 500, 2),
            Offer::Full
        );
        assert_eq!(
            h.offer(p("10.0.0.1/32"), Class::Malformed, 12, 1300, 500, 2),
            Offer::Renewed
        );
        let l = h.list(1400);
        assert_eq!(l.len(), 2);
        assert_eq!(
            (l[0].prefix, l[0].class, l[0].count, l[0].ttl_ms),
            (p("10.0.0.1/32"), Class::Malformed, 12, 400)
        );
        assert_eq!(l[1].ttl_ms, 200);
        // 10.0.0.2 runs out at 1600: room for the newcomer.
        assert_eq!(h.len(1600), 1);
        assert_eq!(
            h.offer(p("10.0.0.3/32"), Class::Auth, 5, 1650, 500, 2),
            Offer::New
        );
        assert_eq!(h.len(1799), 2);
        assert_eq!(h.len(1800), 1);
        assert!(h.list(2150).is_empty());
    }

    #[test]
    fn trimming_keeps_those_held_longest() {
        let h = Held::default();
        for i in 0..10u64 {
            let prefix = p(&format!("10.0.0.{i}/32"));
            h.offer(prefix, Class::Auth, 1, 1000 + i, 1000, 100);
        }
        h.trim(3);
        let kept: Vec<String> = h.list(1500).iter().map(|c| c.prefix.to_string()).collect();
        assert_eq!(kept, ["10.0.0.7/32", "10.0.0.8/32", "10.0.0.9/32"]);
        h.trim(0);
        assert_eq!(h.len(1500), 0);
    }
}
