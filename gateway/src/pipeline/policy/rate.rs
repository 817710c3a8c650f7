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

/// GCRA: the state is the theoretical arrival time `tat`. Returns the new `tat` to store
/// and the verdict.
pub fn gcra(tat: Option<u64>, now: u64, rate: Rate) -> (u64, Verdict) {
    // Saturating throughout: absurd configs (years-long windows, huge bursts) must not
    // overflow.
    let t = rate.interval_us.max(1);
    let tau = t.saturating_mul(rate.burst.saturating_sub(1));
    let tat = tat.unwrap_or(now).max(now);
    let next = tat.saturating_add(t);
    // Allowed while the new tat is within burst tolerance of now.
    if next - now <= tau.saturating_add(t) {
        let remaining = (now.saturating_add(tau).saturating_add(t) - next) / t;
        (
            next,
            Verdict {
                allowed: true,
                remaining,
                reset_us: next - now,
                retry_us: 0,
            },
        )
    } else {
        (
            tat,
            Verdict {
                allowed: false,
                remaining: 0,
                reset_us: tat - now,
                retry_us: tat.saturating_sub(tau).saturating_sub(now),
            },
        )
    }
}

/// Token bucket: the state is (credit, last refill), with credit counted in microseconds
/// of refill time (one token = `T`), so refilling is exact integer arithmetic. Returns the
/// new state.
pub fn token_bucket(state: Option<(u64, u64)>, now: u64, rate: Rate) -> ((u64, u64), Verdict) {
    let t = rate.interval_us.max(1);
    let cap = rate.burst.saturating_mul(t);
    let (credit, last) = state.unwrap_or((cap, now));
    let credit = cap.min(credit.saturating_add(now.saturating_sub(last)));
    if credit >= t {
        let left = credit - t;
        (
            (left, now),
            Verdict {
                allowed: true,
                remaining: left / t,
                reset_us: cap - left,
                retry_us: 0,
            },
        )
    } else {
        (
            (credit, now),
            Verdict {
                allowed: false,
                remaining: 0,
                reset_us: cap - credit,
                retry_us: t - credit,
            },
        )
    }
}

#[cfg(test)]
mod tests {
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
