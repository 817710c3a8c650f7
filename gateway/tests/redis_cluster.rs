//! Shared rate limits on a real Redis Cluster: three masters started by the test with
//! Debian's redis-server (`--cluster-enabled yes`, joined by `redis-cli --cluster create`),
//! password protected, on free ports, in a scratch directory; two real gateway processes
//! share it. Limits are exact across both on every master; a master killed makes the keys in
//! its slots fail open or closed, per policy, within `timeout_ms`, while the other masters'
//! keys stay exact; restarted, it rejoins and its keys are exact again. A frozen cluster
//! bounds even the first request. Everything started is killed on drop.

mod support;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use support::{
    fixed, metric,
    redis_server::{policy_answers_within, wait_for_verdicts, Cluster, ClusterTls},
    request, runtime, upstream, Gateway, GatewayToml, Scratch,
};

/// Requests per minute per client.
const LIMIT: usize = 5;

fn gateway(up: SocketAddr, cluster: &Cluster, on_failure: &str, timeout_ms: u64) -> Gateway {
    gateway_with(up, cluster, on_failure, timeout_ms, "")
}

/// With `extra` lines in `[redis]`.
fn gateway_with(
    up: SocketAddr,
    cluster: &Cluster,
    on_failure: &str,
    timeout_ms: u64,
    extra: &str,
) -> Gateway {
    Gateway::start(
        &GatewayToml::new()
            .upstream("u", &[up])
            .raw(&format!(
                r#"[redis]
cluster = {}
timeout_ms = {timeout_ms}
on_failure = "{on_failure}"
{extra}

[[rate_limit]]
name = "per-client"
requests = {LIMIT}
window_ms = 60000
key = {{ header = "x-client" }}
store = "redis""#,
                cluster.seeds()
            ))
            .route("r", "/", "u")
            .with(r#"rate_limits = ["per-client"]"#)
            .build(),
    )
}

/// The key the gateways keep `client`'s count under: the hash tag holds the limit's
/// identity (algorithm, limit, route, key value).
fn redis_key(client: &str) -> String {
    format!("sluice:{{g:per-client:r|{client}}}")
}

/// A client (an `x-client` value) whose key lives on master `node`, found with the
/// cluster's own `CLUSTER KEYSLOT` and `CLUSTER NODES`.
fn client_on(cluster: &Cluster, node: usize, tag: &str) -> String {
    (0..1000)
        .map(|i| format!("{tag}-{i}"))
        .find(|c| cluster.owner(cluster.keyslot(&redis_key(c))) == node)
        .unwrap_or_else(|| panic!("no {tag} client on node {node}"))
}

fn header(client: &str) -> String {
    format!("x-client: {client}")
}

/// `2 * LIMIT + 2` requests of `client`, alternating between `a` and `b`: exactly `LIMIT`
/// allowed, the remaining quota going down by one whichever gateway answered, then 429s.
fn exact_across(a: &Gateway, b: &Gateway, client: &str) {
    let h = header(client);
    let mut remaining = Vec::new();
    for i in 0..2 * LIMIT + 2 {
        let r = request([a, b][i % 2].http, "GET", "/", &[&h], "");
        match r.status {
            200 => remaining.push(r.headers["x-ratelimit-remaining"].clone()),
            429 => assert!(i >= LIMIT, "request {i} of {client} refused early"),
            s => panic!("{client}, request {i}: status {s}: {}", r.body),
        }
    }
    let want: Vec<String> = (0..LIMIT).rev().map(|n| n.to_string()).collect();
    assert_eq!(remaining, want, "{client}: one quota across both gateways");
}

/// The key of `client` is on master `node` itself (asked without following redirects),
/// with an expiry no longer than the time to refill.
fn stored_on(cluster: &Cluster, node: usize, client: &str) {
    let ttl = cluster.cli(node, &["PTTL", &redis_key(client)]);
    let ttl: i64 = ttl
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("PTTL {client} on node {node}: {ttl:?}"));
    assert!((40_000..=61_000).contains(&ttl), "{client}: PTTL {ttl}");
}

#[test]
fn limits_are_exact_across_two_gateways_and_a_dead_master_fails_by_policy() {
    const TIMEOUT_MS: u64 = 300;
    let bound = Duration::from_millis(TIMEOUT_MS + 200);
    let rt = runtime();
    let up = upstream(&rt, "u", fixed(200, Duration::ZERO));
    let mut cluster = Cluster::start();
    let open = gateway(up.addr, &cluster, "open", TIMEOUT_MS);
    let closed = gateway(up.addr, &cluster, "closed", TIMEOUT_MS);

    // (a) One quota per client across both gateways, on each of the three masters.
    for node in 0..3 {
        let client = client_on(&cluster, node, "a");
        exact_across(&open, &closed, &client);
        stored_on(&cluster, node, &client);
    }

    // (b) A master killed. Clients on it get the policy's answer, in bounded time; a
    // client on another master keeps its exact quota meanwhile (requests interleaved, so
    // each gateway keeps seeing other masters answer).
    let victim = 0;
    let dead = header(&client_on(&cluster, victim, "down"));
    let live = header(&client_on(&cluster, 1, "up"));
    cluster.kill(victim);
    let killed = Instant::now();
    let mut live_remaining = Vec::new();
    let mut waits = Vec::new();
    for i in 0..2 * LIMIT + 2 {
        let r = request([&open, &closed][i % 2].http, "GET", "/", &[&live], "");
        match r.status {
            200 => live_remaining.push(r.headers["x-ratelimit-remaining"].clone()),
            429 => assert!(i >= LIMIT, "live request {i} refused early"),
            s => panic!(
                "live request {i} with a master down: status {s}: {}",
                r.body
            ),
        }
        let seen = policy_answers_within(&open, &closed, "/", &[&dead], Duration::ZERO, bound);
        waits.extend(seen.waits);
    }
    let want: Vec<String> = (0..LIMIT).rev().map(|n| n.to_string()).collect();
    assert_eq!(live_remaining, want, "the other masters stay exact");
    let longest = waits
        .iter()
        .map(|&(a, b)| a.max(b))
        .max()
        .unwrap_or_default();
    eprintln!(
        "master down, timeout_ms = {TIMEOUT_MS}: {} requests of a client on it, longest \
         wait {longest:?}, first {:?}",
        waits.len() * 2,
        waits[0]
    );
    for (gw, outcome) in [(&open, "fail_open"), (&closed, "fail_closed")] {
        let series =
            format!("sluice_gateway_rate_limit_store_failures_total{{outcome=\"{outcome}\"}}");
        assert!(metric(gw, &series) >= 1.0, "{outcome}");
    }

    // (c) Restarted (same port, same node file): it rejoins with its slots, empty, and
    // once each gateway has its verdicts again, its clients' quotas are exact again.
    cluster.restart(victim);
    let probe = header(&client_on(&cluster, victim, "probe"));
    for gw in [&open, &closed] {
        wait_for_verdicts(gw, "/", &[&probe]);
    }
    eprintln!(
        "master restarted: verdicts again {:?} after the kill",
        killed.elapsed()
    );
    let back = client_on(&cluster, victim, "back");
    exact_across(&closed, &open, &back);
    stored_on(&cluster, victim, &back);
}

#[test]
fn a_frozen_cluster_bounds_even_the_first_request() {
    const TIMEOUT_MS: u64 = 200;
    let rt = runtime();
    let up = upstream(&rt, "u", fixed(200, Duration::ZERO));
    let cluster = Cluster::start();
    // Every node stopped before the gateways start: no connection, and none to be had.
    let frozen = cluster.freeze();
    let open = gateway(up.addr, &cluster, "open", TIMEOUT_MS);
    let closed = gateway(up.addr, &cluster, "closed", TIMEOUT_MS);
    let h = header("frozen");
    let seen = policy_answers_within(
        &open,
        &closed,
        "/",
        &[&h],
        Duration::from_millis(1600),
        Duration::from_millis(TIMEOUT_MS + 150),
    );
    eprintln!(
        "frozen cluster, timeout_ms = {TIMEOUT_MS}: first request waited {:?} (open) and {:?} \
         (closed); longest of {} rounds {:?}",
        seen.waits[0].0,
        seen.waits[0].1,
        seen.waits.len(),
        seen.max()
    );
    drop(frozen);
    cluster.wait_ok();
    let probe = header("probe");
    for gw in [&open, &closed] {
        wait_for_verdicts(gw, "/", &[&probe]);
    }
    exact_across(&open, &closed, "thawed");
}

/// `rediss://` seeds and `ca_file`: the cluster's nodes (found from the seeds) are reached
/// over TLS, verified against the CA, with the password; a CA that did not sign the nodes'
/// certificate makes the store unusable (fail closed: 503).
#[test]
fn a_tls_cluster_with_a_private_ca() {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let dir = Scratch::new("redis-cluster-tls");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Names of their own: redis-cli (OpenSSL) takes a leaf named like its issuer for
    // self-signed.
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "sluice test CA");
    let ca_key = KeyPair::generate().expect("key");
    let ca = ca_params.clone().self_signed(&ca_key).expect("ca");
    let leaf_key = KeyPair::generate().expect("key");
    let mut leaf_params = CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    let leaf = leaf_params
        .signed_by(&leaf_key, &ca, &ca_key)
        .expect("leaf");
    let other_key = KeyPair::generate().expect("key");
    let other = ca_params.self_signed(&other_key).expect("other ca");
    for (name, pem) in [
        ("ca.pem", ca.pem()),
        ("node.pem", leaf.pem()),
        ("node.key", leaf_key.serialize_pem()),
        ("other.pem", other.pem()),
    ] {
        std::fs::write(dir.path(name), pem).expect("write");
    }
    let cluster = Cluster::start_with(Some(&ClusterTls {
        cert: dir.path("node.pem"),
        key: dir.path("node.key"),
        ca: dir.path("ca.pem"),
    }));
    let rt = runtime();
    let up = upstream(&rt, "u", fixed(200, Duration::ZERO));
    let ca_file = |f: &str| format!("ca_file = \"{}\"", dir.path(f));
    let gw = gateway_with(up.addr, &cluster, "closed", 1000, &ca_file("ca.pem"));
    // Clients on every master: the nodes found from the seeds are reached over TLS too.
    for node in 0..3 {
        let client = client_on(&cluster, node, "tls");
        let h = header(&client);
        let statuses: Vec<u16> = (0..=LIMIT)
            .map(|_| request(gw.http, "GET", "/", &[&h], "").status)
            .collect();
        let mut want = vec![200; LIMIT];
        want.push(429);
        assert_eq!(statuses, want, "{client} on node {node}");
        stored_on(&cluster, node, &client);
    }
    let wrong = gateway_with(up.addr, &cluster, "closed", 1000, &ca_file("other.pem"));
    let r = request(wrong.http, "GET", "/", &[&header("x")], "");
    assert_eq!(r.status, 503, "{}", r.body);
}
