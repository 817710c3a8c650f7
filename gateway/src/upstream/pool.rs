//! A pool of weighted targets: their live load and health, outlier ejection, session
//! persistence, and how a target is picked (round robin, least request, P2C over EWMA
//! latency, or a consistent hash).

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use hyper::header::HeaderName;
use rand::Rng;
use sluice_util::FieldError;
use smallvec::SmallVec;

use crate::config::{Balance, HealthCheck, Outlier, Upstream};

/// One target and its live load and health figures.
#[derive(Debug)]
pub struct TargetState {
    /// Address.
    pub addr: SocketAddr,
    /// `addr` as a URI authority, made once.
    pub authority: String,
    /// Weight.
    pub weight: u32,
    /// Requests in flight.
    pub in_flight: AtomicUsize,
    /// EWMA of response-head latency, in microseconds (0 = none yet).
    pub ewma_us: AtomicU64,
    /// Passing its active health check (true until a check says otherwise).
    pub healthy: AtomicBool,
    /// Ejected by outlier detection until this time (ms on the process clock; 0 = not).
    pub ejected_until_ms: AtomicU64,
    /// How many times it has been ejected.
    pub ejections: AtomicU32,
    consecutive_5xx: AtomicU32,
    consecutive_connect: AtomicU32,
}

/// The clock ejections are kept on (coarse monotonic milliseconds).
fn now_ms() -> u64 {
    crate::clock::monotonic_ms()
}

impl TargetState {
    /// Healthy and not ejected: may get new requests.
    pub fn usable(&self) -> bool {
        self.weight > 0
            && self.healthy.load(Ordering::Relaxed)
            && match self.ejected_until_ms.load(Ordering::Relaxed) {
                0 => true,
                until => until <= now_ms(),
            }
    }
}

/// How an attempt on a target ended, for outlier detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A response below 500.
    Ok,
    /// A 5xx response.
    ServerError,
    /// The connection could not be made.
    ConnectError,
}

/// A pool.
#[derive(Debug)]
pub struct Pool {
    /// Name.
    pub name: String,
    /// Balancing.
    pub balance: Balance,
    /// Targets.
    pub targets: Vec<Arc<TargetState>>,
    /// Smooth weighted round-robin schedule (target indices).
    schedule: Vec<usize>,
    next: AtomicUsize,
    /// Requests in flight to the pool.
    pub in_flight: AtomicUsize,
    /// Limit on `in_flight`.
    pub max_concurrent: usize,
    /// Speak HTTP/2 to targets.
    pub http2: bool,
    /// Active health check.
    pub health: Option<HealthCheck>,
    /// Outlier ejection.
    pub outlier: Option<Outlier>,
    /// Session-persistence cookie name.
    pub session_cookie: Option<String>,
    /// The header a `hash-header` pool hashes on, parsed once.
    pub hash_header: Option<HeaderName>,
    /// Its health prober has been started (see [`super::health::start`]).
    pub(super) started: AtomicBool,
}

/// The smooth weighted round-robin order (as nginx): each target appears `weight` times,
/// spread out rather than in runs.
fn smooth_schedule(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|w| *w as i64).sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = None;
        for (i, w) in weights.iter().enumerate() {
            current[i] += *w as i64;
            if *w > 0 && best.is_none_or(|b: usize| current[i] > current[b]) {
                best = Some(i);
            }
        }
        if let Some(b) = best {
            current[b] -= total;
            out.push(b);
        }
    }
    out
}

/// What a hash-balanced pick hashes.
pub struct HashInput<'a> {
    /// Header value, for `hash-header`.
    pub header: Option<&'a str>,
    /// Cookie value, for `hash-cookie`.
    pub cookie: Option<&'a str>,
    /// Client address.
    pub client: IpAddr,
}

fn fnv1a(data: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Final avalanche (splitmix64) so similar keys land far apart.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

impl Pool {
    /// Builds a pool (nothing runs until [`super::health::start`]); a `hash-header` name
    /// that is not a header name is refused as `balance`.
    pub fn build(u: &Upstream) -> Result<Self, FieldError> {
        let hash_header = match &u.balance {
            Balance::HashHeader(h) => {
                Some(HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                    FieldError::new("balance", format!("{h:?} is not a header name"))
                })?)
            }
            _ => None,
        };
        let weights: Vec<u32> = u.targets.iter().map(|t| t.weight).collect();
        Ok(Pool {
            name: u.name.clone(),
            balance: u.balance.clone(),
            targets: u
                .targets
                .iter()
                .map(|t| {
                    Arc::new(TargetState {
                        addr: t.address,
                        authority: t.address.to_string(),
                        weight: t.weight,
                        in_flight: AtomicUsize::new(0),
                        ewma_us: AtomicU64::new(0),
                        healthy: AtomicBool::new(true),
                        ejected_until_ms: AtomicU64::new(0),
                        ejections: AtomicU32::new(0),
                        consecutive_5xx: AtomicU32::new(0),
                        consecutive_connect: AtomicU32::new(0),
                    })
                })
                .collect(),
            schedule: smooth_schedule(&weights),
            next: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_concurrent: u.max_concurrent_requests,
            http2: u.http2,
            health: u.health.clone(),
            outlier: u.outlier.clone(),
            session_cookie: u.session_cookie.clone(),
            hash_header,
            started: AtomicBool::new(false),
        })
    }

    /// The opaque cookie value that names target `i` (a hash of its address, so it stays
    /// valid across reloads and on every gateway node).
    pub fn session_token(&self, i: usize) -> Option<String> {
        self.targets
            .get(i)
            .map(|t| format!("{:016x}", fnv1a(t.addr.to_string().as_bytes(), 0x5e55)))
    }

    /// The usable target a session cookie names, if any.
    pub fn session_target(&self, token: &str) -> Option<usize> {
        (0..self.targets.len())
            .find(|i| self.targets[*i].usable() && self.session_token(*i).as_deref() == Some(token))
    }

    /// Records how an attempt ended; ejects the target after too many consecutive failures,
    /// for longer each time, as long as no more than the allowed share of the pool is out.
    pub fn report(&self, target: usize, outcome: Outcome) {
        let (Some(o), Some(t)) = (&self.outlier, self.targets.get(target)) else {
            return;
        };
        let (count, limit) = match outcome {
            Outcome::Ok => {
                t.consecutive_5xx.store(0, Ordering::Relaxed);
                t.consecutive_connect.store(0, Ordering::Relaxed);
                return;
            }
            Outcome::ServerError => (
                t.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1,
                o.consecutive_5xx,
            ),
            Outcome::ConnectError => (
                t.consecutive_connect.fetch_add(1, Ordering::Relaxed) + 1,
                o.consecutive_connect_errors,
            ),
        };
        if limit == 0 || count < limit {
            return;
        }
        let now = now_ms();
        if t.ejected_until_ms.load(Ordering::Relaxed) > now {
            return;
        }
        let out = self
            .targets
            .iter()
            .filter(|x| x.ejected_until_ms.load(Ordering::Relaxed) > now)
            .count();
        if (out + 1) * 100 > self.targets.len() * o.max_ejection_percent as usize {
            return;
        }
        let n = t.ejections.fetch_add(1, Ordering::Relaxed) as u64 + 1;
        t.ejected_until_ms
            .store(now + o.base_ejection_ms * n, Ordering::Relaxed);
        t.consecutive_5xx.store(0, Ordering::Relaxed);
        t.consecutive_connect.store(0, Ordering::Relaxed);
        tracing::warn!(pool = %self.name, target = %t.addr, ejection = n, ms = o.base_ejection_ms * n, "target ejected");
    }

    /// Picks a target, skipping those in `exclude` (already tried) when others remain.
    pub fn pick(&self, key: &HashInput<'_>, exclude: &[usize]) -> Option<usize> {
        // Healthy, not ejected, not tried yet; failing that, anything healthy; failing that,
        // anything with a weight (a pool with every target down still tries rather than
        // refuse outright: a wrong health check must not take a whole service down).
        // On the stack for pools of up to 16 targets (no allocation per request).
        let choose = |f: &dyn Fn(&TargetState) -> bool| -> SmallVec<[usize; 16]> {
            (0..self.targets.len())
                .filter(|i| f(&self.targets[*i]))
                .collect()
        };
        let mut usable = choose(&|t| t.usable());
        usable.retain(|i| !exclude.contains(i));
        if usable.is_empty() {
            usable = choose(&|t| t.usable());
        }
        if usable.is_empty() {
            usable = choose(&|t| t.weight > 0);
        }
        if usable.is_empty() {
            return None;
        }
        match &self.balance {
            Balance::RoundRobin => {
                for _ in 0..self.schedule.len().max(1) {
                    let n = self.next.fetch_add(1, Ordering::Relaxed);
                    let i = *self.schedule.get(n % self.schedule.len().max(1))?;
                    if usable.contains(&i) {
                        return Some(i);
                    }
                }
                usable.first().copied()
            }
            Balance::LeastRequest => {
                // Fewest in flight per unit of weight; ties broken at random.
                let load = |i: &usize| {
                    let t = &self.targets[*i];
                    (t.in_flight.load(Ordering::Relaxed) as u64 * 1_000_000) / t.weight as u64
                };
                let min = usable.iter().map(load).min()?;
                let ties: SmallVec<[usize; 16]> =
                    usable.iter().copied().filter(|i| load(i) == min).collect();
                ties.get(rand::thread_rng().gen_range(0..ties.len()))
                    .copied()
            }
            Balance::P2cEwma => {
                let mut rng = rand::thread_rng();
                let a = usable[rng.gen_range(0..usable.len())];
                let b = usable[rng.gen_range(0..usable.len())];
                let cost = |i: usize| {
                    let t = &self.targets[i];
                    let ewma = t.ewma_us.load(Ordering::Relaxed).max(1);
                    ewma * (t.in_flight.load(Ordering::Relaxed) as u64 + 1) / t.weight as u64
                };
                Some(if cost(a) <= cost(b) { a } else { b })
            }
            Balance::HashHeader(_) | Balance::HashCookie(_) | Balance::HashClientIp => {
                let client = key.client.to_string();
                let k = match &self.balance {
                    Balance::HashHeader(_) => key.header.unwrap_or(&client),
                    Balance::HashCookie(_) => key.cookie.unwrap_or(&client),
                    _ => &client,
                };
                // Weighted rendezvous hashing: stable when targets come and go.
                usable.iter().copied().max_by(|a, b| {
                    let score = |i: usize| {
                        let t = &self.targets[i];
                        let h = fnv1a(k.as_bytes(), fnv1a(t.addr.to_string().as_bytes(), 0));
                        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
                        t.weight as f64 / -u.ln()
                    };
                    score(*a).total_cmp(&score(*b))
                })
            }
        }
    }

    /// Records a response-head latency for `target` (EWMA, weight 0.3 for the newest).
    pub fn observe(&self, target: usize, latency: Duration) {
        if let Some(t) = self.targets.get(target) {
            let sample = latency.as_micros().min(u64::MAX as u128) as u64;
            let old = t.ewma_us.load(Ordering::Relaxed);
            let new = if old == 0 {
                sample
            } else {
                (old * 7 + sample * 3) / 10
            };
            t.ewma_us.store(new.max(1), Ordering::Relaxed);
        }
    }
}

/// A request's place in a pool's concurrency limit, and in its target's load once it has
/// one; given back when dropped (also when the request is cancelled).
pub struct PoolSlot<'a> {
    pool: &'a Pool,
    target: Option<usize>,
}

impl Pool {
    /// Takes a place under `max_concurrent_requests`, if there is one.
    pub fn admit(&self) -> Option<PoolSlot<'_>> {
        if self.in_flight.fetch_add(1, Ordering::Relaxed) >= self.max_concurrent {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(PoolSlot {
            pool: self,
            target: None,
        })
    }
}

impl PoolSlot<'_> {
    /// Counts the request against target `i` too.
    pub fn on_target(&mut self, i: usize) {
        if let Some(t) = self.pool.targets.get(i) {
            t.in_flight.fetch_add(1, Ordering::Relaxed);
            self.target = Some(i);
        }
    }
}

impl Drop for PoolSlot<'_> {
    fn drop(&mut self) {
        self.pool.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(t) = self.target.and_then(|i| self.pool.targets.get(i)) {
            t.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Target;

    fn pool(balance: Balance, weights: &[u32]) -> Pool {
        Pool::build(&Upstream {
            name: "p".into(),
            balance,
            targets: weights
                .iter()
                .enumerate()
                .map(|(i, w)| Target {
                    address: SocketAddr::from(([127, 0, 0, 1], 10_000 + i as u16)),
                    weight: *w,
                })
                .collect(),
            max_concurrent_requests: 100,
            http2: false,
            session_cookie: None,
            health: None,
            outlier: Some(Outlier {
                consecutive_5xx: 2,
                consecutive_connect_errors: 1,
                base_ejection_ms: 60_000,
                max_ejection_percent: 50,
            }),
        })
        .expect("a valid pool")
    }

    fn key() -> HashInput<'static> {
        HashInput {
            header: None,
            cookie: None,
            client: IpAddr::from([192, 0, 2, 1]),
        }
    }

    #[test]
    fn outliers_are_ejected_for_longer_each_time_within_the_share() {
        let p = pool(Balance::RoundRobin, &[1, 1, 1, 1]);
        p.report(0, Outcome::ServerError);
        assert!(p.targets[0].usable(), "one 5xx is not enough");
        p.report(0, Outcome::ServerError);
        assert!(!p.targets[0].usable());
        let until = p.targets[0].ejected_until_ms.load(Ordering::Relaxed);
        assert!(until >= now_ms() + 59_000);
        assert!(
            (0..50).all(|_| p.pick(&key(), &[]) != Some(0)),
            "ejected targets get nothing"
        );
        p.report(1, Outcome::ConnectError);
        assert!(!p.targets[1].usable());
        // Half the pool is out: a third ejection is not allowed.
        p.report(2, Outcome::ConnectError);
        assert!(p.targets[2].usable());
        // Back in, then out again: twice as long.
        p.targets[0].ejected_until_ms.store(0, Ordering::Relaxed);
        p.targets[1].ejected_until_ms.store(0, Ordering::Relaxed);
        p.report(0, Outcome::ServerError);
        p.report(0, Outcome::ServerError);
        assert!(p.targets[0].ejected_until_ms.load(Ordering::Relaxed) >= now_ms() + 119_000);
        // A success resets the streak.
        p.report(3, Outcome::ServerError);
        p.report(3, Outcome::Ok);
        p.report(3, Outcome::ServerError);
        assert!(p.targets[3].usable());
    }

    #[test]
    fn round_robin_follows_weights_smoothly() {
        let p = pool(Balance::RoundRobin, &[5, 1, 1]);
        let picks: Vec<usize> = (0..7).map(|_| p.pick(&key(), &[]).expect("pick")).collect();
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0], "nginx's smooth order");
        let mut counts = [0; 3];
        for _ in 0..700 {
            counts[p.pick(&key(), &[]).expect("pick")] += 1;
        }
        assert_eq!(counts, [500, 100, 100]);
    }

    #[test]
    fn least_request_prefers_the_idle_target() {
        let p = pool(Balance::LeastRequest, &[1, 1, 1]);
        p.targets[0].in_flight.store(3, Ordering::Relaxed);
        p.targets[1].in_flight.store(1, Ordering::Relaxed);
        p.targets[2].in_flight.store(2, Ordering::Relaxed);
        assert_eq!(p.pick(&key(), &[]), Some(1));
        assert_eq!(p.pick(&key(), &[1]), Some(2), "retries skip what was tried");
    }

    #[test]
    fn p2c_avoids_the_slow_target() {
        let p = pool(Balance::P2cEwma, &[1, 1]);
        p.observe(0, Duration::from_millis(100));
        p.observe(1, Duration::from_millis(1));
        let slow = (0..1000).filter(|_| p.pick(&key(), &[]) == Some(0)).count();
        // Only when both random choices are the slow one (about a quarter of the time).
        assert!(
            (150..350).contains(&slow),
            "slow target picked {slow} times of 1000"
        );
    }

    #[test]
    fn consistent_hash_is_stable_and_moves_little() {
        let p = pool(Balance::HashHeader("x-user".into()), &[1, 1, 1, 1]);
        let users: Vec<String> = (0..2000).map(|i| format!("user-{i}")).collect();
        let pick = |p: &Pool, u: &str, ex: &[usize]| {
            p.pick(
                &HashInput {
                    header: Some(u),
                    cookie: None,
                    client: IpAddr::from([192, 0, 2, 1]),
                },
                ex,
            )
        };
        let before: Vec<_> = users.iter().map(|u| pick(&p, u, &[])).collect();
        let again: Vec<_> = users.iter().map(|u| pick(&p, u, &[])).collect();
        assert_eq!(before, again);
        let mut counts = [0usize; 4];
        for b in before.iter().flatten() {
            counts[*b] += 1;
        }
        assert!(counts.iter().all(|c| (400..600).contains(c)), "{counts:?}");
        // Take target 3 away: only its keys move.
        let after: Vec<_> = users.iter().map(|u| pick(&p, u, &[3])).collect();
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        let on3 = before.iter().filter(|b| **b == Some(3)).count();
        assert_eq!(moved, on3);
    }
}
