//! Rate limits (GCRA or token bucket, see [`super::rate`]) and per-key concurrency limits.
//!
//! Hand-written rather than `governor`: the same arithmetic has to run inside Redis (as a Lua
//! script, see [`super::redis_store`]) so that local and shared limits agree to the request,
//! the answer must carry the remaining quota for the `RateLimit` headers, and the local store
//! must stay bounded under a flood of distinct keys. All three are awkward through governor.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Instant,
};

use hyper::{
    header::{HeaderName, HeaderValue},
    http::request::Parts,
    StatusCode,
};

use sluice_util::FieldError;

use super::{
    lease::{Entry, Leases, Local},
    rate::{gcra, token_bucket, Rate, Verdict},
    redis_store::{CallError, RedisStore, StoreError},
    refuse, Context, Granted, Refusal,
};
use crate::{
    config::{
        policy::{Algorithm, LimitKey, OnFailure, Store},
        RateLimit,
    },
    shield::Fault,
};

#[derive(Clone, Copy)]
enum State {
    Tat(u64),
    Bucket(u64, u64),
}

const SHARDS: usize = 16;

/// The in-process store: sharded maps, each bounded. When a shard is full, keys whose
/// quota is whole again (they carry no information) are dropped; if none are, one arbitrary
/// key is, which can only make the limit more lenient for that key.
struct LocalStore {
    shards: Vec<Mutex<HashMap<String, State>>>,
    per_shard: usize,
    epoch: Instant,
}

impl LocalStore {
    fn new(max_keys: usize) -> Self {
        LocalStore {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: max_keys.div_ceil(SHARDS).max(1),
            epoch: Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    fn check(&self, key: &str, algorithm: Algorithm, rate: Rate) -> Verdict {
        let now = self.now();
        let shard = fxhash(key) % SHARDS;
        let Ok(mut map) = self.shards[shard].lock() else {
            return Verdict {
                allowed: true,
                remaining: 0,
                reset_us: 0,
                retry_us: 0,
            };
        };
        // One lookup for a key already held, the common case.
        if let Some(state) = map.get_mut(key) {
            let (new, verdict) = step(Some(*state), algorithm, now, rate);
            *state = new;
            return verdict;
        }
        if map.len() >= self.per_shard {
            let full_again = |s: &State| match *s {
                State::Tat(tat) => tat <= now,
                State::Bucket(credit, last) => {
                    credit.saturating_add(now.saturating_sub(last))
                        >= rate.burst.saturating_mul(rate.interval_us)
                }
            };
            map.retain(|_, s| !full_again(s));
            if map.len() >= self.per_shard {
                if let Some(k) = map.keys().next().cloned() {
                    map.remove(&k);
                }
            }
        }
        let (new, verdict) = step(None, algorithm, now, rate);
        map.insert(key.to_string(), new);
        verdict
    }
}

/// One request against a key's state under `algorithm` (a limit has one algorithm, so the
/// state is of its kind; any other counts as none).
fn step(old: Option<State>, algorithm: Algorithm, now: u64, rate: Rate) -> (State, Verdict) {
    match algorithm {
        Algorithm::Gcra => {
            let tat = match old {
                Some(State::Tat(t)) => Some(t),
                _ => None,
            };
            let (tat, v) = gcra(tat, now, rate);
            (State::Tat(tat), v)
        }
        Algorithm::TokenBucket => {
            let bucket = match old {
                Some(State::Bucket(c, l)) => Some((c, l)),
                _ => None,
            };
            let (b, v) = token_bucket(bucket, now, rate);
            (State::Bucket(b.0, b.1), v)
        }
    }
}

fn fxhash(s: &str) -> usize {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    }) as usize
}

/// Requests in flight per key, for a concurrency limit.
#[derive(Default)]
struct Concurrent(Mutex<HashMap<String, u64>>);

/// A concurrency slot, given back when dropped.
pub struct Slot {
    limit: Arc<Limit>,
    key: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut m) = self.limit.concurrent.0.lock() {
            if let Some(n) = m.get_mut(&self.key) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&self.key);
                }
            }
        }
    }
}

/// One configured limit with its counters.
pub struct Limit {
    /// Its config.
    pub config: RateLimit,
    rate: Option<Rate>,
    local: LocalStore,
    concurrent: Concurrent,
    redis: Option<Arc<RedisStore>>,
    /// A shared limit's leases (`lease` > 1).
    leases: Option<Leases>,
    /// The header a `key = { header = … }` limit counts by.
    key_header: Option<HeaderName>,
    /// Requests allowed.
    pub allowed: AtomicU64,
    /// Requests refused.
    pub limited: AtomicU64,
    /// Calls to the shared store (fewer than requests with leases).
    pub store_calls: AtomicU64,
    /// The `RateLimit-Policy` and `X-RateLimit-Limit` values, which never change.
    policy_value: HeaderValue,
    limit_value: HeaderValue,
    /// The start of every `RateLimit` value, `"name";r=`.
    rate_prefix: Box<[u8]>,
}

impl Limit {
    /// Builds a limit (checked as data by [`crate::config`]); `redis` is used when its
    /// store is Redis. Refusals name fields of the `[[rate_limit]]`.
    pub fn build(config: RateLimit, redis: Option<Arc<RedisStore>>) -> Result<Self, FieldError> {
        let (q, w) = quota(&config);
        let key_header = match &config.key {
            LimitKey::Header(h) => Some(HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                FieldError::new("key.header", format!("{h:?} is not a header name"))
            })?),
            _ => None,
        };
        let redis = match config.store {
            Store::Redis => Some(redis.ok_or_else(|| {
                FieldError::new("store", "store = \"redis\" needs a [redis] section")
            })?),
            Store::Local => None,
        };
        Ok(Limit {
            policy_value: header(format!("\"{}\";q={q};w={w}", config.name))
                .ok_or_else(|| FieldError::new("name", "letters, digits, - and _ only"))?,
            limit_value: HeaderValue::from(q),
            rate_prefix: format!("\"{}\";r=", config.name).into_bytes().into(),
            rate: Rate::of(&config),
            local: LocalStore::new(config.max_keys),
            concurrent: Concurrent::default(),
            leases: (config.lease > 1 && redis.is_some()).then(|| Leases::new(config.max_keys)),
            redis,
            key_header,
            allowed: AtomicU64::new(0),
            limited: AtomicU64::new(0),
            store_calls: AtomicU64::new(0),
            config,
        })
    }

    /// Whether a reload may keep this limit with the store it would get now.
    pub fn same_store(&self, redis: Option<&Arc<RedisStore>>) -> bool {
        match (&self.redis, redis) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, _) => self.config.store == Store::Local,
            _ => false,
        }
    }

    /// Keys held by the local store, or by the leases of a shared limit.
    pub fn local_keys(&self) -> usize {
        self.local.len() + self.leases.as_ref().map_or(0, Leases::keys)
    }

    /// Whose doing this rate limit's 429 is, for the shield: the client's only when the
    /// quota is its own, a `client_ip` limit whose key stands for it alone. A quota keyed
    /// by route, consumer or header is shared (one caller draining a route-wide bucket
    /// would otherwise make every client of the route a block candidate), and a consumer's
    /// or header's key says nothing about the address the L4 tier would block.
    fn fault(&self, ctx: &Context<'_>) -> Fault {
        match self.config.key {
            LimitKey::ClientIp if ctx.limit_client_alone => Fault::Client,
            _ => Fault::NotClient,
        }
    }

    fn key(&self, parts: &Parts, ctx: &Context<'_>) -> String {
        use std::fmt::Write;
        // The route is part of every key: one limit used by two routes counts them apart.
        let mut key = String::with_capacity(ctx.route.len() + 48);
        key.push_str(ctx.route);
        key.push('|');
        match &self.config.key {
            LimitKey::ClientIp => {
                let _ = write!(key, "{}", ctx.limit_client);
            }
            LimitKey::Consumer => key.push_str(
                ctx.identity
                    .as_ref()
                    .map(|i| &*i.consumer)
                    .unwrap_or("anonymous"),
            ),
            LimitKey::Route => {}
            LimitKey::Header(_) => {
                match self.key_header.as_ref().and_then(|h| parts.headers.get(h)) {
                    Some(v) => push_header_value(&mut key, v.as_bytes()),
                    None => key.push('-'),
                }
            }
        }
        key
    }
}

/// Longest header value kept as it is in a limit's key.
const MAX_KEY_VALUE: usize = 64;

/// Appends a header's value to a limit key: as it is when it is short and printable (a user
/// id, an API client's name), else as `sha256:` and the hex of its digest's first 16 bytes.
/// A key's size is then bounded whatever the client sends: the local store counts keys, not
/// bytes, and Redis has no cap on keys at all, so 16 KiB values, one per request, would grow
/// either by that much per request.
fn push_header_value(key: &mut String, value: &[u8]) {
    use std::fmt::Write;
    if value.len() <= MAX_KEY_VALUE && value.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        key.push_str(&String::from_utf8_lossy(value));
        return;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, value);
    key.push_str("sha256:");
    for b in &digest.as_ref()[..16] {
        let _ = write!(key, "{b:02x}");
    }
}

fn header(v: String) -> Option<HeaderValue> {
    HeaderValue::from_str(&v).ok()
}

/// Requests per window, and the window in seconds, as the headers state them.
fn quota(c: &RateLimit) -> (u64, u64) {
    (
        c.requests.unwrap_or(0),
        c.window_ms.unwrap_or(0).div_ceil(1000).max(1),
    )
}

fn secs_ceil(us: u64) -> u64 {
    us.div_ceil(1_000_000)
}

/// Runs every limit of a route; all must allow. Sets the `RateLimit` headers (of the most
/// constrained limit) on `admitted`, and takes concurrency slots.
pub async fn check_all(
    limits: &[Arc<Limit>],
    parts: &Parts,
    ctx: &Context<'_>,
    admitted: &mut Granted,
) -> Result<(), Refusal> {
    let mut tightest: Option<(&Arc<Limit>, Verdict)> = None;
    for limit in limits {
        let key = limit.key(parts, ctx);
        if let Some(max) = limit.config.concurrent {
            admitted.slots.push(take_slot(limit, key, max)?);
            continue;
        }
        let Some(rate) = limit.rate else { continue };
        // Awaited here, not in a helper `async fn`: see `pipeline::serve`.
        let verdict = match &limit.redis {
            None => limit.local.check(&key, limit.config.algorithm, rate),
            Some(store) => {
                let taken = match &limit.leases {
                    None => {
                        let asked =
                            store.take(&limit.config.name, &key, limit.config.algorithm, rate, 1);
                        let answer = asked.await;
                        limit.count_call(&answer);
                        answer.map(|g| g.verdict)
                    }
                    Some(leases) => leased(limit, leases, store, &key, rate).await,
                };
                match taken {
                    Ok(v) => v,
                    Err(e) => {
                        limit.store_failed(store, &e)?;
                        continue;
                    }
                }
            }
        };
        if !verdict.allowed {
            limit.limited.fetch_add(1, Ordering::Relaxed);
            let mut r = refuse(
                StatusCode::TOO_MANY_REQUESTS,
                &format!("limit {} exceeded", limit.config.name),
            );
            set_headers(r.headers_mut(), limit, &verdict);
            if let Some(v) = header(secs_ceil(verdict.retry_us).max(1).to_string()) {
                r.headers_mut().insert(hyper::header::RETRY_AFTER, v);
            }
            r.extensions_mut().insert(limit.fault(ctx));
            return Err(r);
        }
        limit.allowed.fetch_add(1, Ordering::Relaxed);
        if tightest.is_none_or(|(_, t)| verdict.remaining < t.remaining) {
            tightest = Some((limit, verdict));
        }
    }
    admitted.rate = tightest.map(|(limit, v)| (limit.clone(), v));
    Ok(())
}

/// One request of a leased shared limit: a token of this gateway's lease for `key`, or the
/// store's answer when the lease is spent (see [`super::lease`]).
async fn leased(
    limit: &Arc<Limit>,
    leases: &Leases,
    store: &Arc<RedisStore>,
    key: &str,
    rate: Rate,
) -> Result<Verdict, StoreError> {
    let entry = leases.entry(key, fxhash(key));
    let life = limit.config.lease_ms.saturating_mul(1000);
    loop {
        let asked_at = leases.now();
        let local = entry.lock().spend(asked_at, limit.config.lease, life);
        match local {
            Local::Answer { verdict, ahead } => {
                if let Some(want) = ahead {
                    ask_ahead(limit, store, Call::new(entry.clone()), key, rate, want);
                }
                return Ok(verdict);
            }
            Local::Wait => {
                // Registered, then the call looked at again: a call that ended in between
                // is not waited for, and one that ends after wakes this request.
                let answered = entry.answered.notified();
                tokio::pin!(answered);
                answered.as_mut().enable();
                if !entry.lock().asking() {
                    continue;
                }
                // The call under way is bounded by the store's timeout; a wait that outlives
                // it (a call lost with its task) is a failed call for this request.
                let timeout_ms = store.config.timeout_ms;
                let bound = std::time::Duration::from_millis(timeout_ms + 100);
                if tokio::time::timeout(bound, answered).await.is_err() {
                    return Err(StoreError::Failed(CallError::Timeout(timeout_ms.into())));
                }
            }
            Local::Ask(want) => {
                let call = Call::new(entry.clone());
                let asked = store.take(&limit.config.name, key, limit.config.algorithm, rate, want);
                let answer = asked.await;
                limit.count_call(&answer);
                let verdict = answer.map(|g| {
                    entry
                        .lock()
                        .granted(want, g, asked_at, leases.now(), life, false)
                });
                call.answered(verdict.is_ok());
                return verdict;
            }
        }
    }
}

/// Asks for the next lease in a task of its own: the request that noticed the lease running
/// low has its token already. `call` was made before the task, so that a task never run
/// still frees the key.
fn ask_ahead(
    limit: &Arc<Limit>,
    store: &Arc<RedisStore>,
    call: Call,
    key: &str,
    rate: Rate,
    want: u64,
) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return; // `call` is dropped here: the key may be asked for again.
    };
    let (limit, store, key) = (limit.clone(), store.clone(), key.to_string());
    runtime.spawn(async move {
        let Some(leases) = &limit.leases else { return };
        let life = limit.config.lease_ms.saturating_mul(1000);
        let asked_at = leases.now();
        let asked = store.take(&limit.config.name, &key, limit.config.algorithm, rate, want);
        let answer = asked.await;
        limit.count_call(&answer);
        match answer {
            Ok(g) => {
                call.entry
                    .lock()
                    .granted(want, g, asked_at, leases.now(), life, true);
                call.answered(true);
            }
            // No request's answer depends on it; the next one that needs the store asks
            // again (and meets the store's back-off, with its on_failure answer).
            Err(StoreError::Failed(why)) => {
                tracing::warn!(limit = %limit.config.name, error = %why, "asking ahead for a lease failed");
            }
            Err(StoreError::Resting) => {}
        }
    });
}

/// A call to the store for a lease under way. However it ends (answered, failed, or the
/// request or task dropped mid-call, or never run), the key may be asked for again and its
/// waiters are woken.
struct Call {
    entry: Arc<Entry>,
    granted: bool,
}

impl Call {
    fn new(entry: Arc<Entry>) -> Self {
        Call {
            entry,
            granted: false,
        }
    }

    /// Ends the call: `granted` when the store's answer was taken by
    /// [`super::lease::Held::granted`].
    fn answered(mut self, granted: bool) {
        self.granted = granted;
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.granted {
            self.entry.lock().failed();
        }
        self.entry.answered.notify_waiters();
    }
}

impl Limit {
    /// Counts a call that reached the store (not one the store's back-off answered).
    fn count_call<T>(&self, answer: &Result<T, StoreError>) {
        if !matches!(answer, Err(StoreError::Resting)) {
            self.store_calls.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A concurrency slot of `limit` for `key`, or 429 when `max` are in flight already.
fn take_slot(limit: &Arc<Limit>, key: String, max: u64) -> Result<Slot, Refusal> {
    let taken = limit
        .concurrent
        .0
        .lock()
        .map(|mut m| {
            let n = m.entry(key.clone()).or_insert(0);
            if *n >= max {
                false
            } else {
                *n += 1;
                true
            }
        })
        .unwrap_or(true);
    if !taken {
        limit.limited.fetch_add(1, Ordering::Relaxed);
        let mut r = refuse(
            StatusCode::TOO_MANY_REQUESTS,
            &format!(
                "limit {}: {max} requests in flight already",
                limit.config.name
            ),
        );
        r.headers_mut()
            .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("1"));
        // Never the client's doing for the shield, whatever the key: slots are held as long
        // as the upstream takes, so a slow upstream alone fills them.
        r.extensions_mut().insert(Fault::NotClient);
        return Err(r);
    }
    limit.allowed.fetch_add(1, Ordering::Relaxed);
    Ok(Slot {
        limit: limit.clone(),
        key,
    })
}

impl Limit {
    /// A failed shared store: `Ok` lets the request through (`on_failure = "open"`), `Err`
    /// is the 503 that refuses it.
    fn store_failed(&self, store: &RedisStore, e: &StoreError) -> Result<(), Refusal> {
        let open = store.config.on_failure == OnFailure::Open;
        store.failed(open);
        // Logged once per failure, not for every request of the back-off.
        if let StoreError::Failed(why) = e {
            tracing::warn!(limit = %self.config.name, error = %why, fail_open = open, "shared rate-limit store failed");
        }
        if open {
            return Ok(());
        }
        let mut r = refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "limit {}: the shared store is unavailable",
                self.config.name
            ),
        );
        r.headers_mut()
            .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("1"));
        Err(r)
    }
}

/// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers), and the legacy
/// `X-RateLimit-*` trio, replacing any already there.
pub fn set_headers(h: &mut hyper::HeaderMap, limit: &Limit, v: &Verdict) {
    // Names parsed once; the constant values made once per limit (see `Limit::build`).
    const POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
    const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
    const X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
    const X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
    const X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
    let legacy = limit.config.legacy_headers;
    // Room for all of them at once rather than growing the map on the way.
    h.reserve(if legacy { 5 } else { 2 });
    let reset = secs_ceil(v.reset_us);
    h.insert(POLICY, limit.policy_value.clone());
    // `"name";r=N;t=M`, without the formatting machinery: this runs for every request.
    let mut digits = itoa::Buffer::new();
    let mut value = Vec::with_capacity(limit.rate_prefix.len() + 24);
    value.extend_from_slice(&limit.rate_prefix);
    value.extend_from_slice(digits.format(v.remaining).as_bytes());
    value.extend_from_slice(b";t=");
    value.extend_from_slice(digits.format(reset).as_bytes());
    if let Ok(r) = HeaderValue::from_maybe_shared(bytes::Bytes::from(value)) {
        h.insert(RATELIMIT, r);
    }
    if legacy {
        h.insert(X_LIMIT, limit.limit_value.clone());
        h.insert(X_REMAINING, HeaderValue::from(v.remaining));
        h.insert(X_RESET, HeaderValue::from(reset));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lease call that ends any way but with the store's answer taken (failed, or its
    /// request dropped mid-call) lets the key be asked for again and wakes its waiters.
    #[tokio::test]
    async fn a_lease_call_dropped_midway_frees_its_key() {
        let entry = Arc::new(Entry::default());
        assert_eq!(entry.lock().spend(0, 8, 1_000), Local::Ask(1));
        assert_eq!(entry.lock().spend(0, 8, 1_000), Local::Wait);
        let answered = entry.answered.notified();
        tokio::pin!(answered);
        answered.as_mut().enable();
        drop(Call::new(entry.clone()));
        tokio::time::timeout(std::time::Duration::from_secs(5), answered)
            .await
            .expect("the waiter was woken");
        let after = entry.lock().spend(0, 8, 1_000);
        assert_eq!(after, Local::Ask(1));
    }

    #[test]
    fn local_store_stays_bounded() {
        let s = LocalStore::new(160);
        let rate = Rate {
            interval_us: 1_000_000_000,
            burst: 5,
        };
        for i in 0..10_000 {
            s.check(&format!("k{i}"), Algorithm::Gcra, rate);
        }
        assert!(s.len() <= 160, "{}", s.len());
    }
}
