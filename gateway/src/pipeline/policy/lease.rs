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
//!   the limit overshoots by at most `L / T` requests (rate × lease time), whatever the
//!   number of gateways.
//! - The other way, a gateway holds at most `lease` unspent tokens per key, which the
//!   others cannot have while they are held; a lease's leftover when it expires is lost,
//!   as if spent. Lease sizes keep that small: they start at one token, double while a
//!   lease runs out before it expires, and fall back to what the last lease used when one
//!   expires, so a gateway reserves about what it spends in `lease_ms`.
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

/// One key's lease on this gateway.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Held {
    /// Reserved tokens not spent yet.
    tokens: u64,
    /// When they may no longer be spent (microseconds on the leases' clock).
    expires: u64,
    /// Tokens spent from the current lease.
    spent: u64,
    /// The current lease's size (0: none yet).
    size: u64,
    /// The store's `remaining` when it granted the lease.
    remaining: u64,
    /// When the store's quota is whole again, as it said then.
    reset_at: u64,
    /// The store refused until then: no call before.
    refused_until: u64,
}

/// What [`Held::spend`] decided without the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    /// A leased token was spent, or the remembered refusal stands.
    Answer(Verdict),
    /// The store must be asked for up to this many tokens (see [`Held::granted`]).
    Ask(u64),
}

impl Held {
    /// Spends a leased token at `now`, or repeats a refusal, or says how many tokens to ask
    /// the store for, at most `max`.
    pub fn spend(&mut self, now: u64, max: u64) -> Local {
        if self.tokens > 0 && now < self.expires {
            self.tokens -= 1;
            self.spent += 1;
            return Local::Answer(self.allowed(now));
        }
        if now < self.refused_until {
            return Local::Answer(Verdict {
                allowed: false,
                remaining: 0,
                reset_us: self.reset_at.saturating_sub(now),
                retry_us: self.refused_until - now,
            });
        }
        let want = if self.size == 0 {
            1
        } else if now < self.expires {
            // Ran out before it expired: demand is ahead of the lease.
            self.size.saturating_mul(2)
        } else {
            self.spent
        };
        Local::Ask(want.clamp(1, max.max(1)))
    }

    /// Takes the store's answer to a call for `want` tokens, asked at `asked` and answered
    /// at `now`; `life` is the lease time. Returns the asking request's verdict.
    pub fn granted(&mut self, want: u64, grant: Grant, asked: u64, now: u64, life: u64) -> Verdict {
        // A new lease replaces the old one (asked for only once it ran out or expired).
        self.tokens = 0;
        self.spent = 0;
        self.size = want;
        let v = grant.verdict;
        self.reset_at = now.saturating_add(v.reset_us);
        if grant.granted == 0 {
            self.refused_until = now.saturating_add(v.retry_us);
            self.expires = 0;
            return v;
        }
        self.refused_until = 0;
        // Counted from the ask: the store reserved the tokens after it.
        self.expires = asked.saturating_add(life);
        self.tokens = grant.granted - 1;
        self.spent = 1;
        self.remaining = v.remaining;
        self.allowed(now)
    }

    fn allowed(&self, now: u64) -> Verdict {
        Verdict {
            allowed: true,
            remaining: self.remaining.saturating_add(self.tokens),
            reset_us: self.reset_at.saturating_sub(now),
            retry_us: 0,
        }
    }

    /// Whether dropping this entry loses nothing but a call: no live tokens, no refusal.
    fn idle(&self, now: u64) -> bool {
        (self.tokens == 0 || now >= self.expires) && now >= self.refused_until
    }
}

const SHARDS: usize = 16;

/// The leases of one limit, by key. Each key's entry is locked across its call to the store,
/// so concurrent requests of a key wait for one call rather than each making their own.
pub struct Leases {
    shards: Vec<Mutex<HashMap<String, Arc<tokio::sync::Mutex<Held>>>>>,
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
    pub fn entry(&self, key: &str, hash: usize) -> Arc<tokio::sync::Mutex<Held>> {
        let now = self.now();
        let mut map = self.shards[hash % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(e) = map.get(key) {
            return e.clone();
        }
        if map.len() >= self.per_shard {
            let unused = |e: &Arc<tokio::sync::Mutex<Held>>| Arc::strong_count(e) == 1;
            map.retain(|_, e| !(unused(e) && e.try_lock().is_ok_and(|h| h.idle(now))));
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
mod tests {
    use super::super::rate::{gcra_take, Rate};
    use super::*;

    fn next(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    /// Gateways sharing one key through leases, against the store's own arithmetic:
    /// requests at random times on random gateways. In every span of time, the requests
    /// allowed stay within the stated bound, `burst + (span + L) / T`; no token is spent
    /// after its lease expired; and the calls are far fewer than the requests.
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
            let gateways = 1 + (next(&mut seed) % 4) as usize;
            let mut held = vec![Held::default(); gateways];
            let mut leased_at = vec![0; gateways];
            let mut tat = None;
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
                let v = match held[g].spend(now, max) {
                    Local::Answer(v) => {
                        if v.allowed {
                            assert!(
                                now < leased_at[g] + life,
                                "round {round}: spent an expired token"
                            );
                        }
                        v
                    }
                    Local::Ask(want) => {
                        calls += 1;
                        assert!(want <= max);
                        let (t, grant) = gcra_take(tat, now, rate, want);
                        tat = Some(t);
                        leased_at[g] = now;
                        held[g].granted(want, grant, now, now, life)
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

    /// A steady demand on one gateway grows the lease to its most and then asks the store
    /// about once per lease; after an expiry the next lease is what the last one used, and
    /// the leftover is never spent.
    #[test]
    fn leases_grow_with_demand_and_shrink_to_it() {
        let rate = Rate {
            interval_us: 1,
            burst: 1_000_000_000,
        };
        let mut h = Held::default();
        let mut tat = None;
        let (mut calls, mut now) = (0, 0);
        let mut wants = Vec::new();
        for _ in 0..1_000 {
            now += 10;
            match h.spend(now, 64) {
                Local::Answer(v) => assert!(v.allowed),
                Local::Ask(want) => {
                    calls += 1;
                    wants.push(want);
                    let (t, g) = gcra_take(tat, now, rate, want);
                    tat = Some(t);
                    assert!(h.granted(want, g, now, now, 1_000_000).allowed);
                }
            }
        }
        assert_eq!(wants[..8], [1, 2, 4, 8, 16, 32, 64, 64]);
        assert!(calls <= 1_000 / 64 + 7, "{calls}");
        // A lease of 64 with ten spent when it expires: the next call asks for ten.
        let mut h = Held::default();
        let (_, g) = gcra_take(None, 0, rate, 64);
        assert_eq!(h.granted(64, g, 0, 0, 100).remaining, rate.burst - 1);
        for left in (54..63).rev() {
            assert!(
                matches!(h.spend(99, 64), Local::Answer(v) if v.allowed && v.remaining == rate.burst - 64 + left)
            );
        }
        assert_eq!(h.spend(100, 64), Local::Ask(10));
    }

    /// A refusal is kept until its retry time, with no call.
    #[test]
    fn a_refusal_is_remembered_until_its_retry_time() {
        let rate = Rate {
            interval_us: 1_000,
            burst: 2,
        };
        let mut h = Held::default();
        let mut tat = None;
        let mut answers = Vec::new();
        for now in [0, 1, 2, 3, 999, 1_000] {
            let v = match h.spend(now, 8) {
                Local::Answer(v) => ("local", v),
                Local::Ask(want) => {
                    let (t, g) = gcra_take(tat, now, rate, want);
                    tat = Some(t);
                    ("store", h.granted(want, g, now, now, 10_000))
                }
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
    }
}
