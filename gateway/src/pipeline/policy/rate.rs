//! The arithmetic of rate limits, shared by the local store ([`super::limit`]) and the Redis
//! store ([`super::redis_store`], whose Lua scripts run the same steps), so that local and
//! shared limits agree to the request.
//!
//! Time is in microseconds. A rate of `requests` per `window` gives an emission interval
//! `T = window / requests`; `burst` requests may arrive at once after a quiet spell.

use crate::config::RateLimit;

/// A limit's verdict for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the request may go on.
    pub allowed: bool,
    /// Requests left right now.
    pub remaining: u64,
    /// Microseconds until the quota is whole again.
    pub reset_us: u64,
    /// Microseconds until the next request would be allowed (0 when allowed).
    pub retry_us: u64,
}

/// Rate parameters in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Emission interval.
    pub interval_us: u64,
    /// Burst size.
    pub burst: u64,
}

impl Rate {
    /// The rate of a `requests` per `window_ms` limit (`None` for a concurrency limit).
    pub fn of(c: &RateLimit) -> Option<Rate> {
        let (r, w) = (c.requests?, c.window_ms?);
        Some(Rate {
            interval_us: (w.saturating_mul(1000) / r).max(1),
            burst: c.burst.unwrap_or(r),
        })
    }
}

/// What a limit gave when asked for up to `want` tokens at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Tokens taken, `0..=want`; the request that asked is allowed when at least one.
    pub granted: u64,
    /// The verdict for the asking request, `remaining` counted after all of `granted`.
    pub verdict: Verdict,
}

/// GCRA for one request: the state is the theoretical arrival time `tat`. Returns the new
/// `tat` to store and the verdict.
pub fn gcra(tat: Option<u64>, now: u64, rate: Rate) -> (u64, Verdict) {
    let (tat, g) = gcra_take(tat, now, rate, 1);
    (tat, g.verdict)
}

/// GCRA taking up to `want` tokens at once, as if that many requests arrived at `now`. The
/// Lua of [`super::redis_store`] runs these steps.
pub fn gcra_take(tat: Option<u64>, now: u64, rate: Rate, want: u64) -> (u64, Grant) {
    // Asking for none is asking for one: the request that asks is one.
    let want = want.max(1);
    // Saturating throughout: absurd configs (years-long windows, huge bursts) must not
    // overflow.
    let t = rate.interval_us.max(1);
    let tau = t.saturating_mul(rate.burst.saturating_sub(1));
    let tat = tat.unwrap_or(now).max(now);
    // A token fits while the new tat stays within burst tolerance of now.
    let horizon = now.saturating_add(tau).saturating_add(t);
    let granted = want.min(horizon.saturating_sub(tat) / t);
    if granted >= 1 {
        let next = tat.saturating_add(granted.saturating_mul(t));
        let verdict = Verdict {
            allowed: true,
            remaining: horizon.saturating_sub(next) / t,
            reset_us: next - now,
            retry_us: 0,
        };
        (next, Grant { granted, verdict })
    } else {
        let verdict = Verdict {
            allowed: false,
            remaining: 0,
            reset_us: tat - now,
            retry_us: tat.saturating_sub(tau).saturating_sub(now),
        };
        (
            tat,
            Grant {
                granted: 0,
                verdict,
            },
        )
    }
}

/// Token bucket for one request: the state is (credit, last refill), with credit counted in
/// microseconds of refill time (one token = `T`), so refilling is exact integer arithmetic.
/// Returns the new state.
pub fn token_bucket(state: Option<(u64, u64)>, now: u64, rate: Rate) -> ((u64, u64), Verdict) {
    let (state, g) = token_bucket_take(state, now, rate, 1);
    (state, g.verdict)
}

/// Token bucket taking up to `want` tokens at once.
pub fn token_bucket_take(
    state: Option<(u64, u64)>,
    now: u64,
    rate: Rate,
    want: u64,
) -> ((u64, u64), Grant) {
    let want = want.max(1);
    let t = rate.interval_us.max(1);
    let cap = rate.burst.saturating_mul(t);
    let (credit, last) = state.unwrap_or((cap, now));
    let credit = cap.min(credit.saturating_add(now.saturating_sub(last)));
    let granted = want.min(credit / t);
    if granted >= 1 {
        let left = credit - granted * t;
        let verdict = Verdict {
            allowed: true,
            remaining: left / t,
            reset_us: cap - left,
            retry_us: 0,
        };
        ((left, now), Grant { granted, verdict })
    } else {
        let verdict = Verdict {
            allowed: false,
            remaining: 0,
            reset_us: cap - credit,
            retry_us: t - credit,
        };
        (
            (credit, now),
            Grant {
                granted: 0,
                verdict,
            },
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn gcra_allows_the_burst_then_one_per_interval() {
        let rate = Rate {
            interval_us: 1000,
            burst: 3,
        };
        let mut tat = None;
        for want_left in [2, 1, 0] {
            let (t, v) = gcra(tat, 0, rate);
            assert!(v.allowed);
            assert_eq!(v.remaining, want_left);
            tat = Some(t);
        }
        let (t, v) = gcra(tat, 0, rate);
        assert!(!v.allowed);
        assert_eq!(v.retry_us, 1000);
        assert_eq!(t, 3000);
        assert!(!gcra(tat, 999, rate).1.allowed);
        assert!(gcra(tat, 1000, rate).1.allowed);
    }

    #[test]
    fn token_bucket_agrees_with_gcra_on_decisions() {
        let rate = Rate {
            interval_us: 700,
            burst: 4,
        };
        let (mut g, mut b) = (None, None);
        let mut now = 0;
        for i in 0..2000u64 {
            now += (i * 7919) % 900;
            let (gs, gv) = gcra(g, now, rate);
            let (bs, bv) = token_bucket(b, now, rate);
            assert_eq!(gv.allowed, bv.allowed, "request {i} at {now}");
            assert_eq!(gv.remaining, bv.remaining, "request {i} at {now}");
            g = Some(gs);
            b = Some(bs);
        }
    }

    /// A small deterministic generator, so the randomized tests need no dependency.
    pub(crate) fn next(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    #[test]
    fn taking_n_at_once_is_n_requests_at_one_instant() {
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..5_000 {
            let rate = Rate {
                interval_us: 1 + next(&mut seed) % 5_000,
                burst: 1 + next(&mut seed) % 40,
            };
            let now = 1_000_000 + next(&mut seed) % 100_000;
            let want = 1 + next(&mut seed) % 50;
            let gcra_start = Some(now - 50_000 + next(&mut seed) % 200_000);
            let bucket_start = Some((
                next(&mut seed) % (rate.burst * rate.interval_us + 1),
                now - 1000,
            ));
            let (g_state, g) = gcra_take(gcra_start, now, rate, want);
            let (b_state, b) = token_bucket_take(bucket_start, now, rate, want);
            // The same as one request at a time, until the first refusal.
            let (mut gs, mut bs) = (gcra_start, bucket_start);
            let (mut g_one, mut b_one) = (None, None);
            for _ in 0..want {
                let (s, v) = gcra(gs, now, rate);
                if !v.allowed {
                    break;
                }
                gs = Some(s);
                g_one = Some(v);
            }
            for _ in 0..want {
                let (s, v) = token_bucket(bs, now, rate);
                if !v.allowed {
                    break;
                }
                bs = Some(s);
                b_one = Some(v);
            }
            match g_one {
                Some(v) => {
                    assert_eq!(Some(g_state), gs);
                    assert_eq!(g.verdict, v);
                }
                None => assert_eq!(g.granted, 0),
            }
            match b_one {
                Some(v) => {
                    assert_eq!(Some(b_state), bs);
                    assert_eq!(b.verdict, v);
                }
                None => assert_eq!(b.granted, 0),
            }
            // The two algorithms grant alike from a full bucket.
            let (_, g_full) = gcra_take(None, now, rate, want);
            let (_, b_full) = token_bucket_take(None, now, rate, want);
            assert_eq!(g_full, b_full);
            assert_eq!(g_full.granted, want.min(rate.burst));
        }
    }

    #[test]
    fn absurd_rates_do_not_overflow() {
        let rate = Rate {
            interval_us: u64::MAX / 3,
            burst: u64::MAX,
        };
        for now in [0, 1, u64::MAX / 2, u64::MAX - 1] {
            let (tat, _) = gcra(Some(u64::MAX - 5), now, rate);
            let _ = gcra(Some(tat), now, rate);
            let (state, _) = token_bucket(Some((u64::MAX, 0)), now, rate);
            let _ = token_bucket(Some(state), now, rate);
        }
    }
}
