//! The shared rate-limit store: Redis, one server or a Redis Cluster, updated atomically by
//! Lua scripts that run the same arithmetic as [`super::limit`], timed by the Redis server's
//! clock so that every gateway node agrees.
//!
//! Every call is bounded by `timeout_ms`, the first connection included: the connection is
//! made by a task of its own (with a budget of at least [`CONNECT_BUDGET`], which a remote
//! TLS server may need), and a request waits for it only until its own deadline. After a
//! failure the store is not asked again for [`BACKOFF`], so an outage costs requests nothing
//! but the configured fail-open or fail-closed answer. In a cluster the back-off is per hash
//! slot while other calls succeed, so one master down leaves the keys of the others exact.
//!
//! Each script reads and writes one key, so it is single-slot by construction. In a cluster
//! the key's identity sits in a hash tag ([`RedisStore::key`]).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::{Duration, Instant},
};

use redis::{
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
    ErrorKind, RedisError, Script, ServerErrorKind,
};
use tokio::sync::watch;

use sluice_util::FieldError;

use super::rate::{Grant, Rate, Verdict};
use crate::config::{
    policy::{Algorithm, RedisTarget},
    Redis,
};

/// Least time a connection attempt is given, in the background (TCP, TLS, AUTH, and in a
/// cluster the slot map and a connection to each master).
pub const CONNECT_BUDGET: Duration = Duration::from_secs(1);

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
    /// No connection yet within `timeout_ms` (the attempt goes on in the background).
    #[error("no connection within {0} ms")]
    ConnectTimeout(u128),
    /// The connection attempt failed.
    #[error("connecting: {0}")]
    Connect(String),
    /// No answer within `timeout_ms`.
    #[error("no answer within {0} ms")]
    Timeout(u128),
    /// Redis (or the connection to it) refused.
    #[error("{0}")]
    Redis(#[from] RedisError),
    /// The script answered something other than four integers.
    #[error("unexpected script answer {0:?}")]
    Answer(Vec<i64>),
}

impl CallError {
    /// Whether the call had no connection to use: then the whole store rests, a cluster too.
    fn unconnected(&self) -> bool {
        matches!(self, CallError::ConnectTimeout(_) | CallError::Connect(_))
    }
}

/// How long the store is left alone after a failure.
pub const BACKOFF: Duration = Duration::from_millis(500);

/// Hash slots of a Redis Cluster.
const SLOTS: usize = 16384;

// The scripts run `rate::gcra_take` and `rate::token_bucket_take` step by step. ARGV:
// interval (us), burst, want. The answer: granted, remaining, reset (us), retry (us).
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tau = interval * (tonumber(ARGV[2]) - 1)
local want = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local horizon = now + tau + interval
local n = math.min(want, math.floor((horizon - tat) / interval))
if n >= 1 then
  local nxt = tat + n * interval
  redis.call('SET', KEYS[1], string.format('%.0f', nxt), 'PX', math.floor((nxt - now) / 1000) + 1)
  return {n, math.floor((horizon - nxt) / interval), nxt - now, 0}
end
return {0, 0, tat - now, math.max(0, tat - tau - now)}
"#;

const TOKEN_BUCKET: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local cap = tonumber(ARGV[2]) * interval
local want = tonumber(ARGV[3])
local s = redis.call('HMGET', KEYS[1], 'c', 'l')
local credit = tonumber(s[1]) or cap
local last = tonumber(s[2]) or now
credit = math.min(cap, credit + math.max(0, now - last))
local n = math.min(want, math.floor(credit / interval))
local retry = 0
if n >= 1 then
  credit = credit - n * interval
else
  n = 0
  retry = interval - credit
end
redis.call('HSET', KEYS[1], 'c', string.format('%.0f', credit), 'l', string.format('%.0f', now))
redis.call('PEXPIRE', KEYS[1], math.floor((cap - credit) / 1000) + 1)
return {n, math.floor(credit / interval), cap - credit, retry}
"#;

/// What the store talks to, built once from `[redis]` (one per store, so the variants'
/// sizes do not matter).
#[allow(clippy::large_enum_variant)]
enum Target {
    /// One server (`url`).
    Single(redis::Client),
    /// A Redis Cluster (`cluster`).
    Cluster(ClusterClient),
}

/// A live connection. Both kinds reconnect by themselves once made (the cluster one also
/// follows the slot map), so one is made per store and kept.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Where a connection attempt stands.
#[derive(Clone)]
enum Attempt {
    /// Under way.
    Pending,
    /// Made: the connection is in [`Link::conn`].
    Made,
    /// Failed, with why.
    Failed(String),
}

/// One worker's connection and the attempt to make it, shared with the attempt's task. Each
/// [`crate::worker`] shard has its own, made on its own runtime: a connection is polled by the
/// runtime that made it, and a worker's limited requests never wait on another thread.
struct Link {
    target: Arc<Target>,
    /// The worker shard whose runtime makes and drives the connection.
    shard: usize,
    /// Set once, by the attempt that made it.
    conn: OnceLock<Conn>,
    /// The attempt under way, or the last one.
    attempt: Mutex<Option<watch::Receiver<Attempt>>>,
    /// The connection's own bounds: a reply within `timeout_ms`, a connection within the
    /// budget.
    timeout: Duration,
    budget: Duration,
    /// Microseconds since the store's epoch before which this connection is not used (a
    /// worker whose connection failed rests alone: the others' may answer).
    resting_until: AtomicU64,
    /// Microseconds since the store's epoch of its last call that succeeded (0: none yet).
    last_success: AtomicU64,
}

impl Link {
    /// The current attempt if one is under way, else a new one, started in a task so that it
    /// runs to its end whoever waits for it.
    fn attempt(self: &Arc<Self>) -> watch::Receiver<Attempt> {
        let mut slot = self.attempt.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = slot.as_ref() {
            if matches!(*rx.borrow(), Attempt::Pending | Attempt::Made) {
                return rx.clone();
            }
        }
        // The worker's own runtime, whoever asks (`start` runs on the main thread). Never
        // outside a runtime otherwise (requests and `start` run in one); a failure rather
        // than a panic should it ever be.
        let Some(runtime) = crate::worker::runtime(self.shard)
            .or_else(|| tokio::runtime::Handle::try_current().ok())
        else {
            return watch::channel(Attempt::Failed("no async runtime".into())).1;
        };
        let (tx, rx) = watch::channel(Attempt::Pending);
        *slot = Some(rx.clone());
        drop(slot);
        let link = self.clone();
        runtime.spawn(async move {
            let outcome = match tokio::time::timeout(link.budget, link.connect()).await {
                Ok(Ok(conn)) => {
                    let _ = link.conn.set(conn);
                    Attempt::Made
                }
                Ok(Err(e)) => Attempt::Failed(e.to_string()),
                Err(_) => Attempt::Failed(format!(
                    "no connection within {} ms",
                    link.budget.as_millis()
                )),
            };
            if let Attempt::Failed(why) = &outcome {
                tracing::warn!(error = %why, "connecting to the shared rate-limit store failed");
            }
            tx.send_replace(outcome);
        });
        rx
    }

    /// Makes the connection. No retries of its own: the callers' timeout and back-off
    /// decide, and the server's own error (auth, protected mode) reaches the log.
    async fn connect(&self) -> Result<Conn, RedisError> {
        match &*self.target {
            Target::Single(client) => {
                let cfg = ConnectionManagerConfig::new()
                    .set_number_of_retries(0)
                    .set_connection_timeout(Some(self.budget))
                    .set_response_timeout(Some(self.timeout));
                ConnectionManager::new_with_config(client.clone(), cfg)
                    .await
                    .map(Conn::Single)
            }
            Target::Cluster(client) => client.get_async_connection().await.map(Conn::Cluster),
        }
    }

    /// The connection, waiting for an attempt until `deadline` at most.
    async fn connection(
        self: &Arc<Self>,
        deadline: tokio::time::Instant,
    ) -> Result<Conn, CallError> {
        if let Some(c) = self.conn.get() {
            return Ok(c.clone());
        }
        let mut rx = self.attempt();
        let waited =
            tokio::time::timeout_at(deadline, rx.wait_for(|a| !matches!(a, Attempt::Pending)))
                .await;
        let outcome = match waited {
            Ok(Ok(a)) => a.clone(),
            // The task ended without a word (the runtime is shutting down).
            Ok(Err(_)) => Attempt::Failed("the attempt was abandoned".into()),
            Err(_) => return Err(CallError::ConnectTimeout(self.timeout.as_millis())),
        };
        match (outcome, self.conn.get()) {
            (Attempt::Failed(why), _) => Err(CallError::Connect(why)),
            (_, Some(c)) => Ok(c.clone()),
            (_, None) => Err(CallError::Connect("no connection".into())),
        }
    }
}

/// A Redis-backed store.
pub struct RedisStore {
    /// Its config.
    pub config: Redis,
    /// By worker shard.
    links: Box<[Arc<Link>]>,
    /// Whether the target is a cluster (keys carry a hash tag; back-off per slot).
    cluster: bool,
    gcra: Script,
    bucket: Script,
    epoch: Instant,
    /// In a cluster, microseconds since `epoch` before which a hash slot is not asked (empty
    /// for one server); a whole connection's rest is its [`Link`]'s.
    slot_resting_until: Box<[AtomicU64]>,
    /// Calls that failed and let the request through.
    pub failed_open: AtomicU64,
    /// Calls that failed and refused the request.
    pub failed_closed: AtomicU64,
}

impl RedisStore {
    /// A store for a `[redis]` section (checked as data by [`crate::config`]); connects when
    /// [`RedisStore::start`]ed or on first use. Refusals name fields of `[redis]`.
    pub fn build(config: Redis) -> Result<Self, FieldError> {
        let timeout = Duration::from_millis(config.timeout_ms);
        let budget = timeout.max(CONNECT_BUDGET);
        let root = match &config.ca_file {
            None => None,
            Some(ca) => Some(
                std::fs::read(ca).map_err(|e| FieldError::new("ca_file", format!("{ca}: {e}")))?,
            ),
        };
        let target = match config.target()? {
            RedisTarget::Single(url) => Target::Single(single_client(url, root)?),
            RedisTarget::Cluster(seeds) => {
                Target::Cluster(cluster_client(seeds, root, timeout, budget)?)
            }
        };
        let cluster = matches!(target, Target::Cluster(_));
        let target = Arc::new(target);
        Ok(RedisStore {
            config,
            links: (0..crate::worker::shards())
                .map(|shard| {
                    Arc::new(Link {
                        target: target.clone(),
                        shard,
                        conn: OnceLock::new(),
                        attempt: Mutex::new(None),
                        timeout,
                        budget,
                        resting_until: AtomicU64::new(0),
                        last_success: AtomicU64::new(0),
                    })
                })
                .collect(),
            cluster,
            gcra: Script::new(GCRA),
            bucket: Script::new(TOKEN_BUCKET),
            epoch: Instant::now(),
            slot_resting_until: (0..if cluster { SLOTS } else { 0 })
                .map(|_| AtomicU64::new(0))
                .collect(),
            failed_open: AtomicU64::new(0),
            failed_closed: AtomicU64::new(0),
        })
    }

    /// Starts connecting in the background, so that the first limited request finds the
    /// connection made (it would wait for it no longer than `timeout_ms` anyway).
    pub fn start(&self) {
        for link in crate::worker::serving().filter_map(|s| self.links.get(s)) {
            if link.conn.get().is_none() {
                let _ = link.attempt();
            }
        }
    }

    /// The current thread's worker's connection (shard 0's if the worker count was set
    /// after this store was built, which a running gateway never does).
    fn link(&self) -> Result<&Arc<Link>, CallError> {
        self.links
            .get(crate::worker::shard())
            .or(self.links.first())
            .ok_or_else(|| CallError::Connect("no connection".into()))
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

    /// The Redis key of `limit`'s counter for `key` (route and key value) under
    /// `algorithm`'s tag. The limit's name is part of it: two limits of a route never share
    /// a counter.
    ///
    /// One server: `{prefix}{tag}:{limit}:{key}`, e.g. `sluice:g:per-client:limited|10.0.0.1`.
    /// A cluster: the same after the prefix in a hash tag, `sluice:{g:per-client:limited|10.0.0.1}`,
    /// so the slot is CRC16 of the limit's identity (what `CLUSTER KEYSLOT` says), never of
    /// the prefix, which may hold no brace; a key value holding `}` ends the tag early, which
    /// still gives the one key one slot.
    pub fn key(&self, algorithm: Algorithm, limit: &str, key: &str) -> String {
        let prefix = &self.config.prefix;
        let tag = match algorithm {
            Algorithm::Gcra => "g",
            Algorithm::TokenBucket => "b",
        };
        if self.cluster {
            format!("{prefix}{{{tag}:{limit}:{key}}}")
        } else {
            format!("{prefix}{tag}:{limit}:{key}")
        }
    }

    /// One atomic check-and-update of `key` under limit `limit`, taking up to `want` tokens
    /// (1 for the exact check of one request).
    pub async fn take(
        &self,
        limit: &str,
        key: &str,
        algorithm: Algorithm,
        rate: Rate,
        want: u64,
    ) -> Result<Grant, StoreError> {
        let link = self.link().map_err(StoreError::Failed)?;
        if self.now() < link.resting_until.load(Ordering::Relaxed) {
            return Err(StoreError::Resting);
        }
        let full_key = self.key(algorithm, limit, key);
        let slot = if self.cluster {
            self.slot_resting_until
                .get(usize::from(slot_of(full_key.as_bytes())))
        } else {
            None
        };
        if slot.is_some_and(|s| self.now() < s.load(Ordering::Relaxed)) {
            return Err(StoreError::Resting);
        }
        let result = self.call(link, full_key, algorithm, rate, want).await;
        let now = self.now();
        match &result {
            Ok(_) => link.last_success.store(now.max(1), Ordering::Relaxed),
            Err(e) => {
                let until = now + BACKOFF.as_micros() as u64;
                // One slot rests when other calls still succeed (one master down); the
                // whole store when nothing does, or there is no connection at all.
                let last = link.last_success.load(Ordering::Relaxed);
                let others_answer = last > 0 && now - last.min(now) < BACKOFF.as_micros() as u64;
                match slot {
                    Some(s) if others_answer && !e.unconnected() => {
                        s.store(until, Ordering::Relaxed)
                    }
                    _ => link.resting_until.store(until, Ordering::Relaxed),
                }
            }
        }
        result.map_err(StoreError::Failed)
    }

    async fn call(
        &self,
        link: &Arc<Link>,
        key: String,
        algorithm: Algorithm,
        rate: Rate,
        want: u64,
    ) -> Result<Grant, CallError> {
        let timeout = link.timeout;
        // One deadline for the whole call: waiting for the connection and the script.
        let deadline = tokio::time::Instant::now() + timeout;
        let mut conn = link.connection(deadline).await?;
        let (script, source) = match algorithm {
            Algorithm::Gcra => (&self.gcra, GCRA),
            Algorithm::TokenBucket => (&self.bucket, TOKEN_BUCKET),
        };
        // EVALSHA, and EVAL when the node does not know the script yet (which also caches
        // it there). Both are routed by their one key: unlike `Script::invoke_async`, whose
        // SCRIPT LOAD a cluster client sends to every master, this needs only the key's.
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha
            .arg(script.get_hash())
            .arg(1)
            .arg(&key)
            .arg(rate.interval_us)
            .arg(rate.burst)
            .arg(want);
        let invoke = async {
            match evalsha.query_async::<Vec<i64>>(&mut conn).await {
                Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    let mut eval = redis::cmd("EVAL");
                    eval.arg(source)
                        .arg(1)
                        .arg(&key)
                        .arg(rate.interval_us)
                        .arg(rate.burst)
                        .arg(want);
                    eval.query_async::<Vec<i64>>(&mut conn).await
                }
                r => r,
            }
        };
        let r = tokio::time::timeout_at(deadline, invoke)
            .await
            .map_err(|_| CallError::Timeout(timeout.as_millis()))??;
        let [granted, remaining, reset, retry] = r[..] else {
            return Err(CallError::Answer(r));
        };
        // More than was asked for would be spent as if it were exact: refused as an answer.
        let granted = u64::try_from(granted)
            .ok()
            .filter(|&g| g <= want)
            .ok_or_else(|| CallError::Answer(r.clone()))?;
        let u = |v: i64| v.max(0) as u64;
        Ok(Grant {
            granted,
            verdict: Verdict {
                allowed: granted >= 1,
                remaining: u(remaining),
                reset_us: u(reset),
                retry_us: u(retry),
            },
        })
    }
}

/// The client of one server; `root` is the CA a `rediss://` server must chain to.
fn single_client(url: &str, root: Option<Vec<u8>>) -> Result<redis::Client, FieldError> {
    match root {
        None => redis::Client::open(url),
        Some(root) => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root),
            },
        ),
    }
    .map_err(|e| FieldError::new("url", format!("not a valid Redis URL: {e}")))
}

/// The client of a cluster from its seed nodes. They must agree on user and password (the
/// client uses one for every node it finds) and use database 0 (the only one a cluster has).
fn cluster_client(
    seeds: &[String],
    root: Option<Vec<u8>>,
    timeout: Duration,
    budget: Duration,
) -> Result<ClusterClient, FieldError> {
    use redis::IntoConnectionInfo;
    let mut nodes = Vec::with_capacity(seeds.len());
    for (i, seed) in seeds.iter().enumerate() {
        let field = || format!("cluster[{i}]");
        let info = seed
            .as_str()
            .into_connection_info()
            .map_err(|e| FieldError::new(field(), format!("not a valid Redis URL: {e}")))?;
        let settings = info.redis_settings();
        if settings.db() != 0 {
            return Err(FieldError::new(
                field(),
                "a Redis Cluster has database 0 only",
            ));
        }
        if let Some(first) = nodes
            .first()
            .map(|n: &redis::ConnectionInfo| n.redis_settings())
        {
            if (first.username(), first.password()) != (settings.username(), settings.password()) {
                return Err(FieldError::new(
                    field(),
                    "every seed node takes cluster[0]'s user and password",
                ));
            }
        }
        nodes.push(info);
    }
    let mut builder = ClusterClient::builder(nodes)
        .connection_timeout(budget)
        .response_timeout(timeout)
        // A redirect (resharding) or a reconnect may be retried within the call's timeout,
        // soon: the default waits start at more than a second.
        .retries(2)
        .min_retry_wait(10)
        .max_retry_wait(100);
    if let Some(root) = root {
        builder = builder.certs(redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(root),
        });
    }
    builder
        .build()
        .map_err(|e| FieldError::new("cluster", format!("not a usable cluster: {e}")))
}

/// The hash slot of a Redis Cluster key: CRC16 (XMODEM) of its hash tag (what lies between
/// the first `{` and the next `}`, when not empty) or of the whole key, mod 16384.
pub fn slot_of(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|&b| b == b'}')
                .filter(|&close| close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key);
    let crc = hashed.iter().fold(0u16, |mut crc, &b| {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
        crc
    });
    crc % SLOTS as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_cluster_spec() {
        // CRC16/XMODEM check value, and the spec's examples.
        assert_eq!(slot_of(b"123456789"), 0x31C3);
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        assert_eq!(slot_of(b"foo{{bar}}zap"), slot_of(b"{bar"));
        assert_eq!(slot_of(b"foo{bar}{zap}"), slot_of(b"bar"));
        // What a redis-server 7.0 answered to CLUSTER KEYSLOT.
        assert_eq!(slot_of(b"sluice:{g:x:r|a}"), 8162);
    }

    fn store(target: &str) -> RedisStore {
        let config: Redis = toml::from_str(target).expect("config");
        RedisStore::build(config).expect("store")
    }

    #[test]
    fn keys_are_readable_on_one_server_and_tagged_in_a_cluster() {
        let single = store("url = \"redis://127.0.0.1:1\"");
        assert_eq!(
            single.key(Algorithm::Gcra, "per-client", "limited|10.10.1.2"),
            "sluice:g:per-client:limited|10.10.1.2"
        );
        let cluster = store("cluster = [\"redis://127.0.0.1:1\", \"redis://127.0.0.1:2\"]");
        let k = cluster.key(Algorithm::TokenBucket, "per-client", "limited|10.10.1.2");
        assert_eq!(k, "sluice:{b:per-client:limited|10.10.1.2}");
        assert_eq!(
            slot_of(k.as_bytes()),
            slot_of(b"b:per-client:limited|10.10.1.2")
        );
    }

    #[test]
    fn cluster_seeds_are_refused_by_field() {
        for (seeds, want) in [
            (
                "[\"redis://a:1/3\"]",
                "cluster[0]: a Redis Cluster has database 0 only",
            ),
            (
                "[\"redis://:x@a:1\", \"redis://:y@b:1\"]",
                "cluster[1]: every seed node takes cluster[0]'s user and password",
            ),
            (
                "[\"redis://a:1\", \"redis://a b:1\"]",
                "cluster[1]: not a valid Redis URL",
            ),
        ] {
            let config: Redis = toml::from_str(&format!("cluster = {seeds}")).expect("config");
            let e = RedisStore::build(config).err().expect(seeds).to_string();
            assert!(e.starts_with(want), "{seeds}: {e}");
        }
    }
}
