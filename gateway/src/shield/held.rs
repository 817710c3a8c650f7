//! The candidates: clients that crossed a threshold, each held until its time runs out.
//!
//! Kept apart from the counted clients and bounded on its own (`max_candidates`), so a
//! flood of new addresses, which churns the counted table, cannot wash out a client already
//! found. When the set is full, a newcomer with more refusals than the lightest candidate
//! (fewest refusals, then the one whose time runs out first) takes its place; one with no
//! more is turned away. Turning every newcomer away would let anyone fill the set once
//! with throwaway addresses (an IPv6 `/64` each costs nothing) and keep every later abuser
//! out for as long as it renews them; displacing only the lighter keeps the set's answer
//! stable (the held candidates stay while they are as heavy) and makes filling it cost as
//! many refusals as the heaviest abuser it would keep out.
//!
//! The brake: new candidates within a window are bounded by a share of the clients counted
//! (`max_new_candidate_share`), but never below a floor (`min_new_candidates`). Abuse
//! comes from a few of the clients the gateway refuses; when most of them cross at once,
//! the refusals are more likely the gateway's own doing (keys it cannot fetch, a clock gone
//! wrong, a misconfigured policy) than abuse, and blocking them at L4 would take the
//! service down for all of them. Past the bound, no new candidate is taken for a window;
//! those held stay, and are renewed as before.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Mutex,
};

use ipnet::IpNet;
use sluice_util::shield::{Candidate, Class};

use super::window::Tally;

/// One candidate.
#[derive(Debug, Clone, Copy)]
struct Entry {
    class: Class,
    count: u32,
    /// Held until (coarse ms).
    until_ms: u64,
}

impl Entry {
    /// Its place in [`Set::by_weight`]: the first is the one a heavier newcomer displaces.
    fn weight(&self, prefix: IpNet) -> (u32, u64, IpNet) {
        (self.count, self.until_ms, prefix)
    }
}

/// What an offer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// A new candidate.
    New,
    /// A new candidate, in the place of this one, which had fewer refusals.
    Replaced(IpNet),
    /// Already one: its class, count and time were renewed.
    Renewed,
    /// Not taken: the set is full of candidates with as many refusals or more.
    Full,
    /// Not taken: the brake is on.
    Braked(Braked),
}

/// Why the brake turned a newcomer away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Braked {
    /// This offer put the brake on, after a window or more without it: worth a warning.
    pub engaged: bool,
    /// New candidates within the window when it was put on.
    pub recent: u32,
    /// The most new candidates the window could bring when the brake was put on (the
    /// share of the clients counted, or the floor).
    pub limit: u32,
}

/// The set's bounds: its size, and the brake's settings with a way to read the clients
/// counted.
pub struct Bounds<'a> {
    /// Most candidates held.
    pub max: usize,
    /// The window new candidates are counted over.
    pub window_ms: u64,
    /// Share of the clients counted that a window's new candidates may reach.
    pub share: f64,
    /// New candidates a window may always bring, whatever the share.
    pub floor: u32,
    /// The clients counted now; asked only for a newcomer, and with the set's lock held
    /// (the client table's locks are never held while taking it).
    pub tracked: &'a dyn Fn() -> usize,
}

impl Bounds<'_> {
    /// The most new candidates a window may bring now.
    fn limit(&self) -> u32 {
        // Saturating float-to-int: a share of at most 1 of at most 10 million clients.
        let share = (self.share * (self.tracked)() as f64) as u32;
        share.max(self.floor)
    }
}

#[derive(Debug, Default)]
struct Set {
    entries: HashMap<IpNet, Entry>,
    /// The entries ordered by weight (refusals, then expiry): the lightest first.
    by_weight: BTreeSet<(u32, u64, IpNet)>,
    /// No entry runs out before this (coarse ms): the set is swept only once one may have.
    next_expiry: u64,
    /// New candidates over the sliding window.
    recent: Tally,
    /// The brake is on until this (coarse ms); 0: never put on.
    braked_until: u64,
    /// The limit it was put on at.
    braked_limit: u32,
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
        let gone: Vec<IpNet> = self
            .entries
            .iter()
            .filter(|(_, e)| e.until_ms <= now_ms)
            .map(|(p, _)| *p)
            .collect();
        for p in gone {
            self.remove(p);
        }
        self.next_expiry = self
            .entries
            .values()
            .map(|e| e.until_ms)
            .min()
            .unwrap_or(u64::MAX);
    }

    fn remove(&mut self, prefix: IpNet) {
        if let Some(e) = self.entries.remove(&prefix) {
            self.by_weight.remove(&e.weight(prefix));
        }
    }

    fn insert(&mut self, prefix: IpNet, entry: Entry) {
        if let Some(old) = self.entries.insert(prefix, entry) {
            self.by_weight.remove(&old.weight(prefix));
        }
        self.by_weight.insert(entry.weight(prefix));
        self.next_expiry = self.next_expiry.min(entry.until_ms);
    }

    /// Whether the brake lets a newcomer in at `now_ms`; puts it on if not.
    fn brake(&mut self, now_ms: u64, bounds: &Bounds<'_>) -> Result<(), Braked> {
        let recent = self.recent.get(now_ms, bounds.window_ms);
        if now_ms < self.braked_until {
            return Err(Braked {
                engaged: false,
                recent,
                limit: self.braked_limit,
            });
        }
        let limit = bounds.limit();
        if recent < limit {
            return Ok(());
        }
        // Put on again within a window of coming off: the same episode, already told.
        let engaged =
            self.braked_until == 0 || now_ms >= self.braked_until.saturating_add(bounds.window_ms);
        self.braked_until = now_ms.saturating_add(bounds.window_ms);
        self.braked_limit = limit;
        Err(Braked {
            engaged,
            recent,
            limit,
        })
    }
}

impl Held {
    fn lock(&self) -> std::sync::MutexGuard<'_, Set> {
        self.set.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Offers `prefix`, which reached `count` refusals of `class`, for `ttl_ms` from
    /// `now_ms`, within `bounds`.
    pub fn offer(
        &self,
        prefix: IpNet,
        class: Class,
        count: u32,
        now_ms: u64,
        ttl_ms: u64,
        bounds: &Bounds<'_>,
    ) -> Offer {
        let entry = Entry {
            class,
            count,
            until_ms: now_ms.saturating_add(ttl_ms),
        };
        let mut set = self.lock();
        set.expire(now_ms);
        if set.entries.contains_key(&prefix) {
            set.insert(prefix, entry);
            return Offer::Renewed;
        }
        if let Err(b) = set.brake(now_ms, bounds) {
            return Offer::Braked(b);
        }
        let mut offer = Offer::New;
        if set.entries.len() >= bounds.max {
            match set.by_weight.first() {
                Some(&(lightest, _, victim)) if count > lightest => {
                    set.remove(victim);
                    offer = Offer::Replaced(victim);
                }
                _ => return Offer::Full,
            }
        }
        set.insert(prefix, entry);
        set.recent.add(now_ms, bounds.window_ms);
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

    /// Whether the brake is on at `now_ms`.
    pub fn braked(&self, now_ms: u64) -> bool {
        now_ms < self.lock().braked_until
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
            set.remove(*prefix);
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

    fn v4(n: u32) -> IpNet {
        IpNet::from(std::net::IpAddr::from(std::net::Ipv4Addr::from(n)))
    }

    /// At most `max`, and a brake that never holds anything back.
    fn bounds(max: usize) -> Bounds<'static> {
        Bounds {
            max,
            window_ms: 10_000,
            share: 1.0,
            floor: u32::MAX,
            tracked: &|| 0,
        }
    }

    #[test]
    fn candidates_are_renewed_expire_and_are_bounded() {
        let h = Held::default();
        assert_eq!(
            h.offer(p("10.0.0.1/32"), Class::Auth, 5, 1000, 500, &bounds(2)),
            Offer::New
        );
        assert_eq!(
            h.offer(p("10.0.0.2/32"), Class::Deadline, 9, 1100, 500, &bounds(2)),
            Offer::New
        );
        // Full, and the newcomer is no heavier than the lightest: it is turned away. A
        // candidate held is renewed, with its latest class.
        assert_eq!(
            h.offer(p("10.0.0.3/32"), Class::Auth, 5, 1200, 500, &bounds(2)),
            Offer::Full
        );
        assert_eq!(
            h.offer(
                p("10.0.0.1/32"),
                Class::Malformed,
                12,
                1300,
                500,
                &bounds(2)
            ),
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
            h.offer(p("10.0.0.3/32"), Class::Auth, 5, 1650, 500, &bounds(2)),
            Offer::New
        );
        assert_eq!(h.len(1799), 2);
        assert_eq!(h.len(1800), 1);
        assert!(h.list(2150).is_empty());
    }

    #[test]
    fn a_heavier_newcomer_displaces_the_lightest_candidate_soonest_to_expire_first() {
        let h = Held::default();
        // Three throwaway addresses fill the set at the threshold, one heavier one.
        for (i, count) in [(1, 5), (2, 5), (3, 9)] {
            let prefix = p(&format!("2001:db8:{i}::/64"));
            assert_eq!(
                h.offer(prefix, Class::Auth, count, 1000 + i, 10_000, &bounds(3)),
                Offer::New
            );
        }
        // As many refusals as the lightest: turned away.
        assert_eq!(
            h.offer(p("192.0.2.1/32"), Class::Auth, 5, 2000, 10_000, &bounds(3)),
            Offer::Full
        );
        // More: it takes the place of the lightest that runs out first (…:1::, held until
        // 11001), then of the next lightest.
        assert_eq!(
            h.offer(p("192.0.2.1/32"), Class::Auth, 6, 2001, 10_000, &bounds(3)),
            Offer::Replaced(p("2001:db8:1::/64"))
        );
        assert_eq!(
            h.offer(
                p("192.0.2.2/32"),
                Class::Malformed,
                40,
                2002,
                10_000,
                &bounds(3)
            ),
            Offer::Replaced(p("2001:db8:2::/64"))
        );
        // A renewal moves a candidate in the order: 2001:db8:3:: (9) renewed with 50 is
        // now the heaviest, and 192.0.2.1 (6) the lightest.
        assert_eq!(
            h.offer(
                p("2001:db8:3::/64"),
                Class::Auth,
                50,
                2003,
                10_000,
                &bounds(3)
            ),
            Offer::Renewed
        );
        assert_eq!(
            h.offer(p("192.0.2.3/32"), Class::Auth, 7, 2004, 10_000, &bounds(3)),
            Offer::Replaced(p("192.0.2.1/32"))
        );
        let kept: Vec<String> = h.list(2005).iter().map(|c| c.prefix.to_string()).collect();
        assert_eq!(kept, ["192.0.2.2/32", "192.0.2.3/32", "2001:db8:3::/64"]);
        // The order follows expiry too: nothing stale is left behind in it.
        assert!(h.list(12_004).is_empty());
        let set = h.lock();
        assert!(set.by_weight.is_empty() && set.entries.is_empty());
    }

    #[test]
    fn the_brake_holds_new_candidates_to_a_share_of_the_clients_counted() {
        let h = Held::default();
        let tracked = std::cell::Cell::new(100usize);
        let read = || tracked.get();
        let b = Bounds {
            max: 1000,
            window_ms: 10_000,
            share: 0.5,
            floor: 3,
            tracked: &read,
        };
        let offer = |n: u32, now: u64| {
            let prefix = v4(0xc000_0200 + n);
            h.offer(prefix, Class::Auth, 5, now, 60_000, &b)
        };
        // Half of 100 clients counted: 50 new candidates in a window, not 51.
        for n in 0..50 {
            assert_eq!(offer(n, 1000 + u64::from(n)), Offer::New, "{n}");
        }
        assert_eq!(
            offer(50, 1100),
            Offer::Braked(Braked {
                engaged: true,
                recent: 50,
                limit: 50
            })
        );
        assert!(h.braked(1100));
        // For a whole window: even with many more clients counted now, and a candidate
        // held is still renewed.
        tracked.set(10_000);
        assert!(matches!(
            offer(51, 5000),
            Offer::Braked(Braked { engaged: false, .. })
        ));
        assert_eq!(offer(0, 5000), Offer::Renewed);
        assert_eq!(h.len(5000), 50);
        // Off after the window. What the last window brought still counts, fading (44 of
        // the 50 now): six more, and it is on again, in the same episode (not told again).
        tracked.set(100);
        assert!(!h.braked(11_100));
        for n in 51..57 {
            assert_eq!(offer(n, 11_100), Offer::New, "{n}");
        }
        assert_eq!(
            offer(57, 11_100),
            Offer::Braked(Braked {
                engaged: false,
                recent: 50,
                limit: 50
            })
        );
        // Windows later, a new episode is told again.
        for n in 58..108 {
            assert_eq!(offer(n, 41_200), Offer::New, "{n}");
        }
        assert!(matches!(
            offer(108, 41_200),
            Offer::Braked(Braked { engaged: true, .. })
        ));
        // The floor holds however few clients are counted.
        let h = Held::default();
        let b = Bounds {
            tracked: &|| 1,
            ..b
        };
        for n in 0..3 {
            let prefix = v4(0xc633_6400 + n);
            assert_eq!(
                h.offer(prefix, Class::Auth, 5, 1000, 60_000, &b),
                Offer::New
            );
        }
        let fourth = v4(0xc633_6409);
        assert!(matches!(
            h.offer(fourth, Class::Auth, 5, 1000, 60_000, &b),
            Offer::Braked(Braked {
                engaged: true,
                limit: 3,
                ..
            })
        ));
    }

    #[test]
    fn trimming_keeps_those_held_longest() {
        let h = Held::default();
        for i in 0..10u64 {
            let prefix = p(&format!("10.0.0.{i}/32"));
            h.offer(prefix, Class::Auth, 1, 1000 + i, 1000, &bounds(100));
        }
        h.trim(3);
        let kept: Vec<String> = h.list(1500).iter().map(|c| c.prefix.to_string()).collect();
        assert_eq!(kept, ["10.0.0.7/32", "10.0.0.8/32", "10.0.0.9/32"]);
        assert_eq!(h.lock().by_weight.len(), 3);
        h.trim(0);
        assert_eq!(h.len(1500), 0);
    }
}
