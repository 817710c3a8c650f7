//! Shared rate limits through a real redis-server started by the test: one global limit
//! across two gateway processes, fail-open and fail-closed when Redis dies, recovery when it
//! returns, a frozen Redis bounding even the first request, password auth and TLS. Redis
//! Cluster is `redis_cluster.rs`.

mod support;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use support::{
    fixed, metric,
    redis_server::{policy_answers_within, wait_for_verdicts, Redis},
    request, runtime, upstream, Gateway, GatewayToml, Scratch,
};

fn gateway(up: SocketAddr, redis: &str, on_failure: &str, requests: u64) -> Gateway {
    gateway_timeout(up, redis, on_failure, requests, 1000)
}

fn gateway_timeout(
    up: SocketAddr,
    redis: &str,
    on_failure: &str,
    requests: u64,
    timeout_ms: u64,
) -> Gateway {
    Gateway::start(
        &GatewayToml::new()
            .upstream("u", &[up])
            .raw(&format!(
                r#"[redis]
{redis}
timeout_ms = {timeout_ms}
on_failure = "{on_failure}"

[[rate_limit]]
name = "global"
requests = {requests}
window_ms = 60000
key = "route"
store = "redis""#
            ))
            .route("r", "/", "u")
            .with(r#"rate_limits = ["global"]"#)
            .build(),
    )
}

#[test]
fn two_gateways_share_one_limit() {
    let rt = runtime();
    let up = upstream(&rt, "u", fixed(200, Duration::ZERO));
    let redis = Redis::start(&["--requirepass".into(), "s3cret".into()]);
    let url = format!("url = \"redis://:s3cret@127.0.0.1:{}/0\"", redis.port);
    let a = gateway(up.addr, &url, "closed", 10);
    let b = gateway(up.addr, &url, "closed", 10);
    let mut allowed = 0;
    let mut remaining = Vec::new();
    for i in 0..30 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let r = request(gw.http, "GET", "/", &[], "");
        match r.status {
            200 => {
                allowed += 1;
                remaining.push(r.headers["x-ratelimit-remaining"].clone());
            }
            429 => assert!(r.headers["retry-after"].parse::<u64>().unwrap() >= 1),
            s => panic!("request {i}: status {s}: {}", r.body),
        }
    }
    assert_eq!(allowed, 10, "one limit of 10 across both gateways");
    // The count went down by one per request, whichever gateway served it.
    let want: Vec<String> = (0..10).rev().map(|n| n.to_string()).collect();
    assert_eq!(remaining, want);
    // The state is one key in Redis (prefix, algorithm, route, key value), with an expiry
    // no longer than the time to refill.
    let ttl = redis.cli(&[
        "-a",
        "s3cret",
        "--no-auth-warning",
        "PTTL",
        "sluice:g:global:r|",
    ]);
    let ttl: i64 = ttl.trim().parse().unwrap_or_else(|_| panic!("PTTL: {ttl}"));
    assert!((50_000..=61_000).contains(&ttl), "{ttl}");
    // A wrong password is an unusable store: fail closed answers 503, in bounded time.
    let bad = gateway(
        up.addr,
        &format!("url = \"redis://:wrong@127.0.0.1:{}/0\"", redis.port),
        "closed",
        10,
    );
    let started = Instant::now();
    let r = request(bad.http, "GET", "/", &[], "");
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn redis_dying_fails_open_or_closed_and_recovers() {
    let rt = runtime();
    let up = upstream(&rt, "u", fixed(200, Duration::ZERO));
    let mut redis = Redis::start(&[]);
    let url = format!("url = \"redis://127.0.0.1:{}\"", redis.port);
    let open = gateway(up.addr, &url, "open", 3);
    let closed = gateway(up.addr, &url, "closed", 3);
    // Working: the shared quota of 3 runs out.
    let statuses: Vec<u16> = (0..4)
        .map(|i| {
            request(
                if i % 2 == 0 { open.http } else { closed.http },
                "GET",
                "/",
                &[],
                "",
            )
            .status
        })
        .collect();
    assert_eq!(statuses, [200, 200, 200, 429]);
    redis.stop();
    for _ in 0..5 {
        let started = Instant::now();
        let r = request(open.http, "GET", "/", &[], "");
        assert_eq!(r.status, 200, "fail open: {}", r.body);
        let r = request(closed.http, "GET", "/", &[], "");
        assert_eq!(r.status, 503, "fail closed: {}", r.body);
        assert_eq!(r.headers["content-type"], "application/problem+json");
        assert_eq!(r.headers["retry-after"], "1");
        // Never a hang: both answers within the call timeout and then some.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    assert!(
        metric(
            &open,
            "sluice_gateway_rate_limit_store_failures_total{outcome=\"fail_open\"}"
        ) >= 1.0
    );
    assert!(
        metric(
            &closed,
            "sluice_gateway_rate_limit_store_failures_total{outcome=\"fail_closed\"}"
        ) >= 1.0
    );
    // Redis returns (empty): limits apply again, shared.
    redis.restart();
    // Each gateway is back once the store answers it again, on every worker (each worker's
    // connection recovers on its own: its first call finds the old one broken, and rests
    // that worker alone).
    for gw in [&open, &closed] {
        wait_for_verdicts(gw, "/", &[]);
    }
    assert!(redis.cli(&["FLUSHALL"]).contains("OK"));
    let after: Vec<u16> = (0..4)
        .map(|i| {
            request(
                if i % 2 == 0 { open.http } else { closed.http },
                "GET",
                "/",
                &[],
                "",
            )
            .status
        })
        .collect();
    assert_eq!(after, [200, 200, 200, 429]);
}

/// Redis frozen (SIGSTOP: the kernel accepts connections, nothing answers) before the
/// gateways ever reached it: every limited request is answered by the policy within
/// `timeout_ms` and a small margin, the first one included (its connection used to get a
/// second of its own), and so are those after the background attempt gave up and a new
/// one began. Thawed, the limit is exact again.
#[test]
fn a_frozen_redis_bounds_even_the_first_request() {
    const TIMEOUT_MS: u64 = 200;
    let rt = runtime();
    let up = upstream(&rt, "u", fixed(200, Duration::ZERO));
    let redis = Redis::start(&[]);
    let url = format!("url = \"redis://127.0.0.1:{}\"", redis.port);
    let frozen = redis.freeze();
    let open = gateway_timeout(up.addr, &url, "open", 3, TIMEOUT_MS);
    let closed = gateway_timeout(up.addr, &url, "closed", 3, TIMEOUT_MS);
    let bound = Duration::from_millis(TIMEOUT_MS + 150);
    let seen = policy_answers_within(&open, &closed, "/", &[], Duration::from_millis(1600), bound);
    eprintln!(
        "frozen Redis, timeout_ms = {TIMEOUT_MS}: first request waited {:?} (open) and {:?} \
         (closed); longest of {} rounds {:?}",
        seen.waits[0].0,
        seen.waits[0].1,
        seen.waits.len(),
        seen.max()
    );
    // The first request of each waited for the connection until its deadline, no longer.
    assert!(
        seen.waits[0].0 >= Duration::from_millis(TIMEOUT_MS / 2)
            || seen.waits[0].1 >= Duration::from_millis(TIMEOUT_MS / 2),
        "{seen:?}"
    );
    drop(frozen);
    for gw in [&open, &closed] {
        wait_for_verdicts(gw, "/", &[]);
    }
    assert!(redis.cli(&["FLUSHALL"]).contains("OK"));
    let after: Vec<u16> = (0..4)
        .map(|i| request([&open, &closed][i % 2].http, "GET", "/", &[], "").status)
        .collect();
    assert_eq!(after, [200, 200, 200, 429]);
}

#[test]
fn rediss_with_a_private_ca() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let dir = Scratch::new("redis-tls");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().expect("key");
    let ca = ca_params.clone().self_signed(&ca_key).expect("ca");
    let leaf_key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("params")
        .signed_by(&leaf_key, &ca, &ca_key)
        .expect("leaf");
    std::fs::write(dir.path("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.path("redis.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.path("redis.key"), leaf_key.serialize_pem()).unwrap();
    let redis = Redis::start(&[
        "--tls-port".into(),
        "{port}".into(),
        "--tls-cert-file".into(),
        dir.path("redis.pem"),
        "--tls-key-file".into(),
        dir.path("redis.key"),
        "--tls-ca-cert-file".into(),
        dir.path("ca.pem"),
        "--tls-auth-clients".into(),
        "no".into(),
    ]);
    let rt = runtime();
    let up = upstream(&rt, "u", fixed(200, Duration::ZERO));
    let gw = gateway(
        up.addr,
        &format!(
            "url = \"rediss://127.0.0.1:{}\"\nca_file = \"{}\"",
            redis.port,
            dir.path("ca.pem")
        ),
        "closed",
        2,
    );
    let statuses: Vec<u16> = (0..3)
        .map(|_| request(gw.http, "GET", "/", &[], "").status)
        .collect();
    assert_eq!(
        statuses,
        [200, 200, 429],
        "limits work over TLS (closed: no store = 503)"
    );
    // A CA that did not sign the server's certificate: the store is unusable.
    let other_key = KeyPair::generate().expect("key");
    let other = ca_params.self_signed(&other_key).expect("other ca");
    std::fs::write(dir.path("other.pem"), other.pem()).unwrap();
    let wrong = gateway(
        up.addr,
        &format!(
            "url = \"rediss://127.0.0.1:{}\"\nca_file = \"{}\"",
            redis.port,
            dir.path("other.pem")
        ),
        "closed",
        2,
    );
    assert_eq!(request(wrong.http, "GET", "/", &[], "").status, 503);
}

#[test]
fn two_limits_of_a_route_keep_their_own_counters() {
    let rt = runtime();
    let up = upstream(&rt, "u", fixed(200, Duration::ZERO));
    let redis = Redis::start(&[]);
    let gw = Gateway::start(
        &GatewayToml::new()
            .upstream("u", &[up.addr])
            .raw(&format!(
                r#"[redis]
url = "redis://127.0.0.1:{}"

[[rate_limit]]
name = "small"
requests = 3
window_ms = 60000
key = "route"
store = "redis"

[[rate_limit]]
name = "large"
requests = 100
window_ms = 60000
key = "route"
store = "redis""#,
                redis.port
            ))
            .route("r", "/", "u")
            .with(r#"rate_limits = ["large", "small"]"#)
            .build(),
    );
    let statuses: Vec<u16> = (0..5)
        .map(|_| request(gw.http, "GET", "/", &[], "").status)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    let keys = redis.cli(&["--scan", "--pattern", "sluice:*"]);
    let mut keys: Vec<&str> = keys.lines().collect();
    keys.sort_unstable();
    assert_eq!(keys, ["sluice:g:large:r|", "sluice:g:small:r|"]);
}

/// A gateway started with a shared limit of `requests` a minute, keyed by route, with
/// `lease` tokens per call held for `lease_ms`.
fn leasing_gateway(up: SocketAddr, port: u16, algorithm: &str, requests: u64) -> Gateway {
    Gateway::start(
        &GatewayToml::new()
            .upstream("u", &[up])
            .raw(&format!(
                r#"[redis]
url = "redis://127.0.0.1:{port}"
on_failure = "closed"

[[rate_limit]]
name = "leased"
algorithm = "{algorithm}"
requests = {requests}
window_ms = 60000
key = "route"
store = "redis"
lease = 8
lease_ms = 5000"#
            ))
            .route("r", "/", "u")
            .with(r#"rate_limits = ["leased"]"#)
            .build(),
    )
}

#[test]
fn leases_keep_a_shared_limit_with_few_calls() {
    let rt = runtime();
    let up = upstream(&rt, "u", fixed(200, Duration::ZERO));
    let redis = Redis::start(&[]);
    for algorithm in ["gcra", "token_bucket"] {
        redis.cli(&["FLUSHALL"]);
        let a = leasing_gateway(up.addr, redis.port, algorithm, 20);
        let b = leasing_gateway(up.addr, redis.port, algorithm, 20);
        let started = Instant::now();
        let mut allowed = [0u64; 2];
        for i in 0..60 {
            let (n, gw) = if i % 2 == 0 { (0, &a) } else { (1, &b) };
            let r = request(gw.http, "GET", "/", &[], "");
            match r.status {
                200 => allowed[n] += 1,
                429 => {
                    assert!(r.headers["retry-after"].parse::<u64>().unwrap() >= 1);
                    assert!(r.headers["ratelimit"].contains("r=0"), "{:?}", r.headers);
                }
                s => panic!("{algorithm}: request {i}: status {s}: {}", r.body),
            }
        }
        // Every token was reserved by the store's script before it was spent, and the
        // tokens one gateway leased are spent by it (lease_ms outlives the test): the two
        // together allow the limit, plus what one token per 3 s renews while they run.
        let total = allowed[0] + allowed[1];
        let renewed = started.elapsed().as_secs() / 3;
        assert!(
            (20..=20 + renewed).contains(&total),
            "{algorithm}: {allowed:?} allowed"
        );
        assert!(allowed[0] > 0 && allowed[1] > 0, "{algorithm}: {allowed:?}");
        // Leases of 1, 2, 4 and then 8 tokens (the later ones asked for ahead of need, and
        // granted in part as the quota runs out), and each gateway's refusal remembered
        // until its Retry-After: a third of the calls exact checks make, or fewer.
        let calls = |gw: &Gateway| {
            metric(
                gw,
                "sluice_gateway_rate_limit_store_calls_total{limit=\"leased\"}",
            )
        };
        let (ca, cb) = (calls(&a), calls(&b));
        assert!(
            ca + cb <= 20.0 && ca >= 2.0 && cb >= 2.0,
            "{algorithm}: {ca} + {cb} calls"
        );
        let tag = if algorithm == "gcra" { "g" } else { "b" };
        let keys = redis.cli(&["--scan", "--pattern", "sluice:*"]);
        assert_eq!(keys.trim(), format!("sluice:{tag}:leased:r|"));
    }
}

/// The gateway's connections to `redis` (its clients other than redis-cli).
fn gateway_clients(redis: &Redis) -> usize {
    redis
        .cli(&["CLIENT", "LIST"])
        .lines()
        .filter(|l| l.contains("id=") && !l.contains("cmd=client"))
        .count()
}

#[test]
fn each_worker_has_its_own_connection_made_at_start() {
    let rt = runtime();
    let up = upstream(&rt, "u", fixed(200, Duration::ZERO));
    let redis = Redis::start(&[]);
    let url = format!("url = \"redis://127.0.0.1:{}\"", redis.port);
    // Two workers (`Gateway::start`): a connection each, made before any request.
    let gw = gateway(up.addr, &url, "closed", 1000);
    let started = Instant::now();
    while gateway_clients(&redis) < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{}",
            redis.cli(&["CLIENT", "LIST"])
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // 40 requests on fresh client connections, spread over both workers, use those two.
    for _ in 0..40 {
        assert_eq!(request(gw.http, "GET", "/", &[], "").status, 200);
    }
    assert_eq!(
        gateway_clients(&redis),
        2,
        "{}",
        redis.cli(&["CLIENT", "LIST"])
    );
    for w in [0, 1] {
        let accepted = metric(
            &gw,
            &format!("sluice_gateway_connections_accepted_total{{worker=\"{w}\"}}"),
        );
        assert!(accepted > 0.0, "worker {w}");
    }
}

/// A limit keyed by a header keeps each value's own count, but a long value is stored under
/// its digest: Redis holds one key of bounded size per value, however large the values a
/// client sends (each 8 KiB here), and short ones stay readable.
#[test]
fn a_header_keyed_limit_stores_long_values_by_digest() {
    let rt = runtime();
    let up = upstream(&rt, "u", fixed(200, Duration::ZERO));
    let redis = Redis::start(&[]);
    let gw = Gateway::start(
        &GatewayToml::new()
            .upstream("u", &[up.addr])
            .raw(&format!(
                r#"[redis]
url = "redis://127.0.0.1:{}"

[[rate_limit]]
name = "per-user"
requests = 2
window_ms = 60000
key = {{ header = "x-user" }}
store = "redis""#,
                redis.port
            ))
            .route("r", "/", "u")
            .with(r#"rate_limits = ["per-user"]"#)
            .build(),
    );
    let long = |c: char| format!("x-user: {}", c.to_string().repeat(8192));
    for user in [long('a'), long('b'), "x-user: alice".to_string()] {
        let statuses: Vec<u16> = (0..3)
            .map(|_| request(gw.http, "GET", "/", &[&user], "").status)
            .collect();
        assert_eq!(statuses, [200, 200, 429], "{}", &user[..12]);
    }
    let keys = redis.cli(&["--scan", "--pattern", "sluice:*"]);
    let mut keys: Vec<&str> = keys.lines().collect();
    keys.sort_unstable();
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert!(keys.contains(&"sluice:g:per-user:r|alice"), "{keys:?}");
    for k in keys.iter().filter(|k| !k.ends_with("alice")) {
        assert!(k.starts_with("sluice:g:per-user:r|sha256:"), "{k}");
        assert_eq!(k.len(), "sluice:g:per-user:r|sha256:".len() + 32, "{k}");
    }
}
