//! The shared rate-limit store: Redis, updated atomically by Lua scripts that run the same
//! arithmetic as [`super::limit`], timed by the Redis server's clock so that every gateway
//! node agrees. Every call is bounded by `timeout_ms`; after a failure the store is not
//! asked again for [`BACKOFF`], so an outage costs requests nothing but the configured
//! fail-open or fail-closed answer.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use redis::{
    aio::{ConnectionManager, ConnectionManagerConfig},
    Script,
};
use tokio::sync::OnceCell;

use sluice_util::FieldError;

use super::rate::{Rate, Verdict};
use crate::config::{policy::Algorithm, Redis};

/// Least time allowed for setting up the connection.
const CONNECT_BUDGET: Duration = Duration::from_secs(1);

/// Why the store gave no verdict.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A recent failure: not asked (see [`BACKOFF`]).
    #[error("resting after a failure")]
    Resting,
    /// The call failed.
    #[error("{0}")]
    Failed(#[from] CallError),
}

/// Why one call to Redis failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No connection within the budget.
    #[error("no connection within {0} ms")]
    ConnectTimeout(u128),
    /// No answer within `timeout_ms`.
    #[error("no answer within {0} ms")]
    Timeout(u128),
    /// Redis (or the connection to it) refused.
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    /// The script answered something other than four integers.
    #[error("unexpected script answer {0:?}")]
    Answer(Vec<i64>),
}

/// How long the store is left alone after a failure.
pub const BACKOFF: Duration = Duration::from_millis(500);

const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tau = interval * (tonumber(ARGV[2]) - 1)
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local nxt = tat + interval
if nxt - now <= tau + interval then
  redis.call('SET', KEYS[1], string.format('%.0f', nxt), 'PX', math.floor((nxt - now) / 1000) + 1)
  return {1, math.floor((now + tau + interval - nxt) / interval), nxt - now, 0}
end
return {0, 0, tat - now, tat - tau - now}
"#;

const TOKEN_BUCKET: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local cap = tonumber(ARGV[2]) * interval
local s = redis.call('HMGET', KEYS[1], 'c', 'l')
local credit = tonumber(s[1]) or cap
local last = tonumber(s[2]) or now
credit = math.min(cap, credit + math.max(0, now - last))
local allowed = 0
local retry = 0
if credit >= interval then
  credit = credit - interval
  allowed = 1
else
  retry = interval - credit
end
redis.call('HSET', KEYS[1], 'c', string.format('%.0f', credit), 'l', string.format('%.0f', now))
redis.call('PEXPIRE', KEYS[1], math.floor((cap - credit) / 1000) + 1)
return {allowed, math.floor(credit / interval), cap - credit, retry}
"#;

/// A Redis-backed store.
pub struct RedisStore {
    /// Its config.
    pub config: Redis,
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    gcra: Script,
    bucket: Script,
    epoch: Instant,
    /// Microseconds since `epoch` before which the store is not asked.
    resting_until: AtomicU64,
    /// Calls that failed and let the request through.
    pub failed_open: AtomicU64,
    /// Calls that failed and refused the request.
    pub failed_closed: AtomicU64,
}

impl RedisStore {
    /// A store for a `[redis]` section (checked as data by [`crate::config`]); connects on
    /// first use. Refusals name fields of `[redis]`.
    pub fn build(config: Redis) -> Result<Self, FieldError> {
        let client = match &config.ca_file {
            None => redis::Client::open(config.url.as_str()),
            Some(ca) => {
                let root = std::fs::read(ca)
                    .map_err(|e| FieldError::new("ca_file", format!("{ca}: {e}")))?;
                redis::Client::build_with_tls(
                    config.url.as_str(),
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root),
                    },
                )
            }
        }
        .map_err(|e| FieldError::new("url", format!("not a valid Redis URL: {e}")))?;
        Ok(RedisStore {
            config,
            client,
            conn: OnceCell::new(),
            gcra: Script::new(GCRA),
            bucket: Script::new(TOKEN_BUCKET),
            epoch: Instant::now(),
            resting_until: AtomicU64::new(0),
            failed_open: AtomicU64::new(0),
            failed_closed: AtomicU64::new(0),
        })
    }

    /// Counts a failure by its outcome.
    pub fn failed(&self, open: bool) {
        let c = if open {
            &self.failed_open
        } else {
            &self.failed_closed
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// One atomic check-and-update of `key` under limit `limit`.
    pub async fn check(
        &self,
        limit: &str,
        key: &str,
        algorithm: Algorithm,
        rate: Rate,
    ) -> Result<Verdict, StoreError> {
        if self.now() < self.resting_until.load(Ordering::Relaxed) {
            return Err(StoreError::Resting);
        }
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let result = self.call(limit, key, algorithm, rate, timeout).await;
        if result.is_err() {
            self.resting_until
                .store(self.now() + BACKOFF.as_micros() as u64, Ordering::Relaxed);
        }
        result.map_err(StoreError::Failed)
    }

    async fn call(
        &self,
        limit: &str,
        key: &str,
        algorithm: Algorithm,
        rate: Rate,
        timeout: Duration,
    ) -> Result<Verdict, CallError> {
        // Setting up the connection (TCP, TLS, AUTH) gets a budget of its own, at least a
        // second: a remote TLS server may need more than one call's timeout.
        let budget = timeout.max(CONNECT_BUDGET);
        let connect = self.conn.get_or_try_init(|| {
            // No retries of its own: the caller's timeout and backoff decide, and the
            // server's own error (auth, protected mode) reaches the log.
            let cfg = ConnectionManagerConfig::new()
                .set_number_of_retries(0)
                .set_connection_timeout(Some(budget))
                .set_response_timeout(Some(timeout));
            ConnectionManager::new_with_config(self.client.clone(), cfg)
        });
        let conn = tokio::time::timeout(budget, connect)
            .await
            .map_err(|_| CallError::ConnectTimeout(budget.as_millis()))??;
        let mut conn = conn.clone();
        let (script, tag) = match algorithm {
            Algorithm::Gcra => (&self.gcra, "g"),
            Algorithm::TokenBucket => (&self.bucket, "b"),
        };
        // The limit's name is part of the key: two limits of a route never share a counter.
        let full_key = format!("{}{tag}:{limit}:{key}", self.config.prefix);
        let mut invocation = script.key(full_key);
        invocation.arg(rate.interval_us).arg(rate.burst);
        let invoke = invocation.invoke_async::<Vec<i64>>(&mut conn);
        let r = tokio::time::timeout(timeout, invoke)
            .await
            .map_err(|_| CallError::Timeout(timeout.as_millis()))??;
        let [allowed, remaining, reset, retry] = r[..] else {
            return Err(CallError::Answer(r));
        };
        let u = |v: i64| v.max(0) as u64;
        Ok(Verdict {
            allowed: allowed == 1,
            remaining: u(remaining),
            reset_us: u(reset),
            retry_us: u(retry),
        })
    }
}
