//! Leases of a shared limit's tokens (`lease` > 1): one Redis call reserves up to `lease`
//! tokens of a key at once, and this gateway spends them locally for `lease_ms`.
//!
//! Why leases rather than only pipelining: the connection is already multiplexed, so
//! concurrent calls share it, but each request still costs a script run in Redis and a
//! round trip. A lease removes both for all but one request in `lease`.
//!
//! What stays exact, and what loosens (T is the limit's emission interval, L is `lease_ms`):
//! - Every token spent was first reserved by the same atomic script as an exact check, at
//!   most L before it is spent. So in any span of time D the requests allowed across all
//!   gateways are at most `burst + (D + L) / T`, where exact checks allow `burst + D / T`:
//!   the limit overshoots by at most `L / T` requests (rate × lease time) rounded up,
//!   whatever the number of gateways. Config keeps L within the limit's window.
//! - The other way, a gateway holds at most two leases per key (the one it spends and the
//!   next; per limit generation, and an entry dropped from a full table leaves its tokens
//!   unspent), so at most `2 × lease` unspent tokens that the others cannot have while they
//!   are held; a lease's leftover when it expires is lost, as if spent. Lease sizes keep
//!   that small: they start at one token, double while a lease runs out before it
//!   expires, and fall back to what the last lease used when one expires, so a gateway
//!   reserves about what it spends in `lease_ms`.
//! - The next lease is asked for ahead of need, in the background, once half the current
//!   one is spent in under half its time, so the requests of a busy key do not wait for
//!   the store. A key used more slowly never asks ahead, and nothing is asked ahead while a
//!   refusal stands. Concurrent requests that find both leases spent wait for the one call
//!   under way (a cold burst of N waits for about log2 N calls in turn, as leases grow).
//! - Leftovers are not given back to the store. Moving the stored state back by them would
//!   hand out, a second time, the part of the quota that time had already renewed while
//!   they were held (a randomized test found the overshoot), and the bound above would be
//!   lost.
//! - A refusal is remembered until its `Retry-After`: the store can give nothing sooner
//!   (its state only moves forward), so the remembered answer is the store's own.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use super::rate::{Grant, Verdict};

/// Tokens one call reserved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Batch {
    /// Reserved tokens not spent yet.
    tokens: u64,
    /// When the call that reserved them was made (microseconds on the leases' clock).
    asked: u64,
    /// When they may no longer be spent.
    expires: u64,
    /// The store's `remaining` when it granted them.
    remaining: u64,
    /// When the store's quota is whole again, as it said then.
    reset_at: u64,
}

impl Batch {
    fn live(&self, now: u64) -> bool {
        self.tokens > 0 && now < self.expires
    }
}

/// One key's lease on this gateway.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Held {
    /// The lease being spent.
    current: Batch,
    /// A lease asked for ahead of need, spent once the current one runs out or expires.
    next: Batch,
    /// Tokens spent from the current lease.
    spent: u64,
    /// The last lease's size (0: none yet).
    size: u64,
    /// The store refused until then: no call before.
    refused_until: u64,
    /// When the store last refused, and the reset it gave then.
    refused_reset_at: u64,
    /// A call is under way.
    asking: bool,
}

/// What [`Held::spend`] decided without the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    /// A leased token was spent, or the remembered refusal stands. With `ahead`, the lease
    /// runs low fast: ask the store for that many tokens in the background (then
    /// [`Held::granted`] with `ahead`).
    Answer {
        /// The request's verdict.
        verdict: Verdict,
        /// Tokens to ask for ahead of need.
        ahead: Option<u64>,
    },
    /// The store must be asked for up to this many tokens now, and the answer is this
    /// request's (see [`Held::granted`]).
    Ask(u64),
    /// Another request's call is under way: wait for it, then spend again.
    Wait,
}

impl Held {
    /// Spends a leased token at `now`, or repeats a refusal, or says how many tokens to ask
    /// the store for (at most `max`, over a lease time of `life`), or to wait for a call.
    pub fn spend(&mut self, now: u64, max: u64, life: u64) -> Local {
        if !self.current.live(now) && self.next.live(now) {
            self.current = std::mem::take(&mut self.next);
            self.spent = 0;
        }
        let max = max.max(1);
        if self.current.live(now) {
            self.current.tokens -= 1;
            self.spent += 1;
            let verdict = self.allowed(now);
            // Half the lease gone in under half its time, and nothing asked for yet: the
            // next lease is asked for now, so that requests do not wait for it. A key used
            // slowly never asks ahead, so it never holds two leases for nothing.
            let fast = now.saturating_sub(self.current.asked) < life / 2;
            let ahead = (!self.asking
                && now >= self.refused_until
                && !self.next.live(now)
                && self.size >= 2
                && self.current.tokens * 2 <= self.size
                && fast)
                .then(|| {
                    self.asking = true;
                    self.size.saturating_mul(2).clamp(1, max)
                });
            return Local::Answer { verdict, ahead };
        }
        if now < self.refused_until {
            let verdict = Verdict {
                allowed: false,
                remaining: 0,
                reset_us: self.refused_reset_at.saturating_sub(now),
                retry_us: self.refused_until - now,
            };
            return Local::Answer {
                verdict,
                ahead: None,
            };
        }
        if self.asking {
            return Local::Wait;
        }
        let want = if self.size == 0 {
            1
        } else if now < self.current.expires {
            // Ran out before it expired: demand is ahead of the lease.
            self.size.saturating_mul(2)
        } else {
            self.spent
        };
        self.asking = true;
        Local::Ask(want.clamp(1, max))
    }

    /// Takes the store's answer to a call for `want` tokens, asked at `asked` and answered
    /// at `now`; `life` is the lease time. `ahead` for a call [`Local::Answer`] asked for:
    /// the tokens wait in the next lease. Otherwise the asking request spends one, and its
    /// verdict is returned.
    pub fn granted(
        &mut self,
        want: u64,
        grant: Grant,
        asked: u64,
        now: u64,
        life: u64,
        ahead: bool,
    ) -> Verdict {
        self.asking = false;
        let v = grant.verdict;
        if grant.granted == 0 {
            // The size stays: a refusal says nothing of this gateway's demand.
            self.refused_until = now.saturating_add(v.retry_us);
            self.refused_reset_at = now.saturating_add(v.reset_us);
            return v;
        }
        self.size = want;
        self.refused_until = 0;
        let batch = Batch {
            tokens: grant.granted,
            asked,
            // Counted from the ask: the store reserved the tokens after it.
            expires: asked.saturating_add(life),
            remaining: v.remaining,
            reset_at: now.saturating_add(v.reset_us),
        };
        if ahead {
            self.next = batch;
            return v;
        }
        self.current = batch;
        self.current.tokens -= 1;
        self.spent = 1;
        self.allowed(now)
    }

    /// The call failed: others may ask again.
    pub fn failed(&mut self) {
        self.asking = false;
    }

    /// Whether a call is under way.
    pub fn asking(&self) -> bool {
        self.asking
    }

    /// The verdict of a spent token: what the store said last (the next lease's answer, when
    /// one is held: it is the later), plus the live tokens held here.
    fn allowed(&self, now: u64) -> Verdict {
        let current = if self.current.live(now) {
            self.current.tokens
        } else {
            0
        };
        let (store, next) = if self.next.live(now) {
            (&self.next, self.next.tokens)
        } else {
            (&self.current, 0)
        };
        Verdict {
            allowed: true,
            remaining: store.remaining.saturating_add(current).saturating_add(next),
            reset_us: store.reset_at.saturating_sub(now),
            retry_us: 0,
        }
    }

    /// Whether dropping this entry loses nothing but a call: no live tokens, no refusal,
    /// no call under way.
    fn idle(&self, now: u64) -> bool {
        !self.current.live(now) && !self.next.live(now) && now >= self.refused_until && !self.asking
    }
}

/// One key's entry: its lease, and the signal that a call was answered.
#[derive(Default)]
pub struct Entry {
    /// The lease, locked only for its arithmetic, never across a call.
    pub held: Mutex<Held>,
    /// Woken when a call ends, for requests that [`Local::Wait`]ed.
    pub answered: tokio::sync::Notify,
}

impl Entry {
    /// The lease, locked (a poisoned lock is only arithmetic left half done: taken as it is).
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

const SHARDS: usize = 16;

/// The leases of one limit, by key.
pub struct Leases {
    shards: Vec<Mutex<HashMap<String, Arc<Entry>>>>,
    per_shard: usize,
    epoch: Instant,
}

impl Leases {
    /// Leases for at most about `max_keys` keys.
    pub fn new(max_keys: usize) -> Self {
        Leases {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: max_keys.div_ceil(SHARDS).max(1),
            epoch: Instant::now(),
        }
    }

    /// Microseconds on the leases' clock.
    pub fn now(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Keys held now.
    pub fn keys(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    /// The entry of `key`, made if new. When a shard is full, idle entries go first, then any
    /// not in use: dropping one with live tokens only strands them (never more allowed).
    pub fn entry(&self, key: &str, hash: usize) -> Arc<Entry> {
        let now = self.now();
        let mut map = self.shards[hash % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(e) = map.get(key) {
            return e.clone();
        }
        if map.len() >= self.per_shard {
            let unused = |e: &Arc<Entry>| Arc::strong_count(e) == 1;
            map.retain(|_, e| !(unused(e) && e.held.try_lock().is_ok_and(|h| h.idle(now))));
            if map.len() >= self.per_shard {
                if let Some(k) = map.iter().find(|(_, e)| unused(e)).map(|(k, _)| k.clone()) {
                    map.remove(&k);
                }
            }
        }
        map.entry(key.to_string()).or_default().clone()
    }
}

#[cfg(test)]
impl Held {
    /// When the lease being spent was asked for.
    fn current_asked(&self) -> u64 {
        self.current.asked
    }
}

#[cfg(test)]
mod tests {
    use super::super::rate::{gcra_take, tests::next, Rate};
    use super::*;

    /// The store as the Lua script runs it (`rate::gcra_take`), for one key.
    struct Store {
        rate: Rate,
        tat: Option<u64>,
    }

    impl Store {
        fn new(rate: Rate) -> Self {
            Store { rate, tat: None }
        }

        /// A call for `want` tokens asked at `asked`, reserved and answered at `at`, handed to
        /// `h`: the tokens granted, and the verdict `h` gives.
        fn call(
            &mut self,
            h: &mut Held,
            asked: u64,
            at: u64,
            want: u64,
            life: u64,
            ahead: bool,
        ) -> (u64, Verdict) {
            let (t, g) = gcra_take(self.tat, at, self.rate, want);
            self.tat = Some(t);
            (g.granted, h.granted(want, g, asked, at, life, ahead))
        }
    }

    /// A call asked ahead and not answered yet: (tokens wanted, asked at, answered at).
    type Pending = Option<(u64, u64, u64)>;

    /// Answers, in time order, every call ahead answered by `until`; the store reserves at
    /// the answer's time (after the ask, as a real store does).
    fn answer_ahead(
        pending: &mut [Pending],
        held: &mut [Held],
        store: &mut Store,
        life: u64,
        until: u64,
    ) {
        while let Some((g, (want, asked, at))) = pending
            .iter()
            .enumerate()
            .filter_map(|(g, p)| p.map(|p| (g, p)))
            .filter(|(_, p)| p.2 <= until)
            .min_by_key(|(_, p)| p.2)
        {
            pending[g] = None;
            store.call(&mut held[g], asked, at, want, life, true);
        }
    }

    /// Gateways sharing one key through leases, against the store's own arithmetic:
    /// requests at random times on random gateways, calls ahead answered after a random
    /// delay. In every span of time, the requests allowed stay within the stated bound,
    /// `burst + (span + L) / T`; no token is spent later than L after its lease was asked
    /// for; and the calls are fewer than the requests.
    #[test]
    fn leases_overshoot_by_at_most_the_lease_time() {
        let mut seed = 0x2545_f491_4f6c_dd1d;
        for round in 0..200 {
            let rate = Rate {
                interval_us: 100 + next(&mut seed) % 2_000,
                burst: 1 + next(&mut seed) % 30,
            };
            let life = 1 + next(&mut seed) % 20_000;
            let max = 2 + next(&mut seed) % 64;
            let delay = 1 + next(&mut seed) % 5_000;
            let gateways = 1 + (next(&mut seed) % 4) as usize;
            let mut held = vec![Held::default(); gateways];
            let mut pending: Vec<Pending> = vec![None; gateways];
            let mut store = Store::new(rate);
            let mut now = 1_000_000u64;
            let mut allowed = Vec::new();
            let (mut requests, mut calls) = (0u64, 0u64);
            for _ in 0..500 {
                // Bursts faster than the rate, with quiet spells up to a lease time and
                // more, so that leases outlive a refill.
                now += if next(&mut seed).is_multiple_of(8) {
                    next(&mut seed) % (life + rate.burst * rate.interval_us)
                } else {
                    next(&mut seed) % (rate.interval_us / 4 + 1)
                };
                let g = (next(&mut seed) % gateways as u64) as usize;
                requests += 1;
                let v = loop {
                    answer_ahead(&mut pending, &mut held, &mut store, life, now);
                    match held[g].spend(now, max, life) {
                        Local::Answer { verdict, ahead } => {
                            if verdict.allowed {
                                let asked = held[g].current_asked();
                                assert!(
                                    now < asked + life,
                                    "round {round}: spent an expired token"
                                );
                            }
                            if let Some(want) = ahead {
                                assert!(want <= max && pending[g].is_none());
                                calls += 1;
                                pending[g] = Some((want, now, now + next(&mut seed) % delay));
                            }
                            break verdict;
                        }
                        Local::Wait => {
                            // The request waits for the call under way.
                            let (_, _, at) = pending[g].expect("a call under way");
                            now = now.max(at);
                        }
                        Local::Ask(want) => {
                            calls += 1;
                            assert!(want <= max);
                            break store.call(&mut held[g], now, now, want, life, false).1;
                        }
                    }
                };
                if v.allowed {
                    allowed.push(now);
                }
            }
            let t = rate.interval_us;
            for (i, &start) in allowed.iter().enumerate() {
                for (j, &end) in allowed.iter().enumerate().skip(i) {
                    let within = (j - i + 1) as u64;
                    let bound = rate.burst + (end - start + life) / t;
                    assert!(
                        within <= bound,
                        "round {round}: {within} allowed in {} us, bound {bound}",
                        end - start
                    );
                }
            }
            assert!(calls < requests, "round {round}");
        }
    }

    /// A steady demand on one gateway grows the lease to its most, each next lease asked
    /// for ahead of need (so no request waits for the store once it has grown), about once
    /// per lease; after an expiry the next lease is what the last one used.
    #[test]
    fn leases_grow_with_demand_are_asked_ahead_and_shrink_to_it() {
        let rate = Rate {
            interval_us: 1,
            burst: 1_000_000_000,
        };
        let life = 1_000_000;
        let mut h = Held::default();
        let mut store = Store::new(rate);
        let mut now = 0;
        let mut calls = Vec::new();
        for _ in 0..1_000 {
            now += 10;
            match h.spend(now, 64, life) {
                Local::Answer { verdict, ahead } => {
                    assert!(verdict.allowed);
                    if let Some(want) = ahead {
                        calls.push(("ahead", want));
                        store.call(&mut h, now, now, want, life, true);
                    }
                }
                Local::Ask(want) => {
                    calls.push(("now", want));
                    assert!(store.call(&mut h, now, now, want, life, false).1.allowed);
                }
                Local::Wait => unreachable!("no call is left under way here"),
            }
        }
        assert_eq!(
            calls[..8],
            [
                ("now", 1),
                ("now", 2),
                ("ahead", 4),
                ("ahead", 8),
                ("ahead", 16),
                ("ahead", 32),
                ("ahead", 64),
                ("ahead", 64)
            ]
        );
        assert!(calls[2..].iter().all(|c| c.0 == "ahead"), "{calls:?}");
        assert!(calls.len() <= 1_000 / 64 + 8, "{}", calls.len());
        // A lease of 64 with ten spent when it expires: the next call asks for ten, and
        // a lease spent slowly asks nothing ahead.
        let mut h = Held::default();
        let (_, g) = gcra_take(None, 0, rate, 64);
        assert_eq!(h.granted(64, g, 0, 0, 100, false).remaining, rate.burst - 1);
        for left in (54..63).rev() {
            assert_eq!(
                h.spend(99, 64, 100),
                Local::Answer {
                    verdict: Verdict {
                        allowed: true,
                        remaining: rate.burst - 64 + left,
                        reset_us: 0,
                        retry_us: 0
                    },
                    ahead: None
                }
            );
        }
        assert_eq!(h.spend(100, 64, 100), Local::Ask(10));
    }

    /// One request now and then (further apart than half a lease): nothing is asked ahead,
    /// and the key reserves no more than it spends, but for the last lease's leftover.
    #[test]
    fn a_key_used_slowly_reserves_what_it_spends() {
        let rate = Rate {
            interval_us: 1_000,
            burst: 1_000,
        };
        for gap in [60, 99, 100, 150, 1_000] {
            let mut h = Held::default();
            let mut store = Store::new(rate);
            let (mut reserved, mut spent) = (0, 0);
            for i in 1..=200 {
                let now = i * gap;
                let v = match h.spend(now, 64, 100) {
                    Local::Ask(want) => {
                        let (granted, v) = store.call(&mut h, now, now, want, 100, false);
                        reserved += granted;
                        v
                    }
                    Local::Answer {
                        verdict,
                        ahead: None,
                    } => verdict,
                    other => panic!("gap {gap}, request {i}: {other:?}"),
                };
                assert!(v.allowed);
                spent += 1;
            }
            assert!(
                reserved - spent <= 2,
                "gap {gap}: {reserved} reserved, {spent} spent"
            );
        }
    }

    /// With one gateway and no time for the quota to renew, what the headers say remains is
    /// exactly the burst less what was spent, with a lease and a next one held or not; and
    /// once the store refuses an ahead call, nothing more is asked until the retry time
    /// while the current lease's tokens are spent.
    #[test]
    fn remaining_counts_every_token_once_and_a_refusal_stops_asking_ahead() {
        let rate = Rate {
            interval_us: 1_000_000,
            burst: 50,
        };
        let life = 10_000;
        let mut h = Held::default();
        let mut store = Store::new(rate);
        let mut spent = 0;
        let mut asks = Vec::new();
        let mut refusals = 0;
        for now in 0..80u64 {
            let v = match h.spend(now, 16, life) {
                Local::Answer { verdict, ahead } => {
                    if let Some(want) = ahead {
                        let (granted, _) = store.call(&mut h, now, now, want, life, true);
                        asks.push((now, want, granted));
                    }
                    verdict
                }
                Local::Ask(want) => {
                    let (granted, v) = store.call(&mut h, now, now, want, life, false);
                    asks.push((now, want, granted));
                    v
                }
                Local::Wait => unreachable!(),
            };
            if v.allowed {
                spent += 1;
                assert_eq!(v.remaining, rate.burst - spent, "request at {now}");
            } else {
                refusals += 1;
                assert_eq!(v.remaining, 0);
            }
        }
        assert_eq!(spent, rate.burst);
        assert_eq!(refusals, 80 - rate.burst);
        // Exactly one call was refused: after it, the lease in hand was spent without a
        // call, and the refusal was then repeated locally.
        let refused: Vec<_> = asks.iter().filter(|a| a.2 == 0).collect();
        assert_eq!(refused.len(), 1, "{asks:?}");
    }

    /// A refusal is kept until its retry time, with no call; a second request while a call
    /// is under way waits for it.
    #[test]
    fn a_refusal_is_remembered_until_its_retry_time() {
        let rate = Rate {
            interval_us: 1_000,
            burst: 2,
        };
        let mut h = Held::default();
        let mut store = Store::new(rate);
        let mut answers = Vec::new();
        for now in [0, 1, 2, 3, 999, 1_000] {
            let v = match h.spend(now, 8, 10_000) {
                Local::Answer { verdict, ahead } => {
                    assert_eq!(ahead, None);
                    ("local", verdict)
                }
                Local::Ask(want) => ("store", store.call(&mut h, now, now, want, 10_000, false).1),
                Local::Wait => unreachable!(),
            };
            answers.push((v.0, v.1.allowed, v.1.retry_us));
        }
        assert_eq!(
            answers,
            [
                ("store", true, 0),
                ("store", true, 0),
                ("store", false, 998),
                ("local", false, 997),
                ("local", false, 1),
                ("store", true, 0),
            ]
        );
        let mut h = Held::default();
        assert_eq!(h.spend(0, 8, 100), Local::Ask(1));
        assert_eq!(h.spend(0, 8, 100), Local::Wait);
        h.failed();
        assert_eq!(h.spend(0, 8, 100), Local::Ask(1));
    }
}
