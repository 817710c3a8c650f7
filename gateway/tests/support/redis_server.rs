//! Real redis-servers for the shared-limit tests: one server ([`Redis`]) or a three-master
//! Redis Cluster ([`Cluster`]), on free loopback ports, with [`Frozen`] to stop a process
//! (SIGSTOP) until dropped. Everything started is killed on drop, and a cluster's directory
//! removed, whether the test passes, fails or panics; every wait is bounded.

use std::{
    marker::PhantomData,
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::Scratch;

/// A free loopback port (bound and released: another process could take it first, which
/// makes the server fail to start and the test fail loudly, never hang).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn spawn(args: &[String]) -> Child {
    Command::new("redis-server")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("redis-server (apt install redis-server; cargo xtask setup does)")
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "redis-server on {port} did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One redis-cli command against `port` (with `options`: password, TLS), answer as text; at
/// most 10 s (coreutils `timeout`), so a server that does not answer cannot hang the test.
pub fn cli(port: u16, options: &[String], args: &[&str]) -> String {
    let out = Command::new("timeout")
        .args(["10", "redis-cli", "-p", &port.to_string()])
        .args(options)
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A stopped process (SIGSTOP), continued (SIGCONT) when dropped: a frozen Redis accepts
/// TCP connections (the kernel does) and never answers.
/// It borrows the processes' owner, so they are continued before they can be killed and
/// reaped (no signal to a reused process id).
pub struct Frozen<'a>(Vec<u32>, PhantomData<&'a ()>);

impl Frozen<'_> {
    fn new(pids: Vec<u32>) -> Self {
        for &pid in &pids {
            // SAFETY: signalling a child of this test.
            unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        }
        Frozen(pids, PhantomData)
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: as above; the process is still our (unreaped) child.
            unsafe { libc::kill(pid as i32, libc::SIGCONT) };
        }
    }
}

/// A redis-server on a free loopback port, killed on drop.
pub struct Redis {
    child: Child,
    /// Its port.
    pub port: u16,
    args: Vec<String>,
}

impl Redis {
    /// A server with `extra` arguments (`{port}` in them is replaced by the port; with
    /// `--tls-port` the plain port is off).
    pub fn start(extra: &[String]) -> Redis {
        let port = free_port();
        let tls = extra.iter().any(|a| a == "--tls-port");
        let mut args: Vec<String> = vec![
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            "--port".into(),
            if tls { "0".into() } else { port.to_string() },
        ];
        args.extend(extra.iter().map(|a| a.replace("{port}", &port.to_string())));
        let child = spawn(&args);
        // Owned before the wait, so a server that never answers is still killed.
        let redis = Redis { child, port, args };
        wait_listening(redis.port);
        redis
    }

    /// Kills it.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills it and starts it again, empty, on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.child = spawn(&self.args);
        wait_listening(self.port);
    }

    /// Stops the process until the guard is dropped.
    pub fn freeze(&self) -> Frozen<'_> {
        Frozen::new(vec![self.child.id()])
    }

    /// One redis-cli command, answer as text.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, &[], args)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One master of a [`Cluster`].
struct Node {
    child: Option<Child>,
    port: u16,
    args: Vec<String>,
}

impl Node {
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// TLS for a [`Cluster`]: PEM files of the nodes' certificate and key (for 127.0.0.1, also
/// used on the cluster bus) and of the CA that signed it.
pub struct ClusterTls {
    /// Certificate.
    pub cert: String,
    /// Its key.
    pub key: String,
    /// The CA.
    pub ca: String,
}

/// A Redis Cluster of three masters and no replicas on free loopback ports, password
/// protected, with its node files in a scratch directory. `cluster-require-full-coverage no`:
/// with a master down the others keep serving their own slots (with the default, the whole
/// cluster would refuse every key).
pub struct Cluster {
    nodes: Vec<Node>,
    /// The password of every node.
    pub password: &'static str,
    /// `redis` or `rediss`.
    scheme: &'static str,
    /// redis-cli's options: password, TLS.
    cli_options: Vec<String>,
    /// Removed after the nodes are killed (a field drops after `drop` ran).
    _dir: Scratch,
}

impl Cluster {
    /// Starts three plain nodes (see [`Cluster::start_with`]).
    pub fn start() -> Cluster {
        Self::start_with(None)
    }

    /// Starts three nodes (TLS only, clients and bus, with `tls`), joins them with
    /// `redis-cli --cluster create`, and waits until every node says `cluster_state:ok`.
    pub fn start_with(tls: Option<&ClusterTls>) -> Cluster {
        let dir = Scratch::new("redis-cluster");
        let password = "cl-s3cret";
        let mut cli_options: Vec<String> = ["-a", password, "--no-auth-warning"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        if let Some(t) = tls {
            cli_options.extend(["--tls".into(), "--cacert".into(), t.ca.clone()]);
        }
        let mut cluster = Cluster {
            nodes: Vec::new(),
            password,
            scheme: if tls.is_some() { "rediss" } else { "redis" },
            cli_options,
            _dir: dir,
        };
        for _ in 0..3 {
            let (port, bus) = (free_port(), free_port());
            let ports: Vec<String> = match tls {
                None => vec!["--port".into(), port.to_string()],
                Some(t) => [
                    "--port",
                    "0",
                    "--tls-port",
                    &port.to_string(),
                    "--tls-cluster",
                    "yes",
                    "--tls-cert-file",
                    &t.cert,
                    "--tls-key-file",
                    &t.key,
                    "--tls-ca-cert-file",
                    &t.ca,
                    "--tls-auth-clients",
                    "no",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            };
            let mut args: Vec<String> = [
                "--bind",
                "127.0.0.1",
                "--cluster-port",
                &bus.to_string(),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &cluster._dir.path(&format!("nodes-{port}.conf")),
                "--cluster-node-timeout",
                "5000",
                "--cluster-require-full-coverage",
                "no",
                "--dir",
                &cluster._dir.path(""),
                "--save",
                "",
                "--appendonly",
                "no",
                "--requirepass",
                password,
                "--masterauth",
                password,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend(ports);
            // Owned before the wait, so a node that never answers is still killed.
            cluster.nodes.push(Node {
                child: Some(spawn(&args)),
                port,
                args,
            });
            wait_listening(port);
        }
        let addrs: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut create = Command::new("timeout");
        create
            .args(["30", "redis-cli"])
            .args(&cluster.cli_options)
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null());
        let status = create.status().expect("redis-cli --cluster create");
        assert!(status.success(), "redis-cli --cluster create: {status}");
        cluster.wait_ok();
        cluster
    }

    /// Seed URLs for `[redis] cluster = [...]` (every node, with the password).
    pub fn seeds(&self) -> String {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .map(|n| {
                format!(
                    "\"{}://:{}@127.0.0.1:{}\"",
                    self.scheme, self.password, n.port
                )
            })
            .collect();
        format!("[{}]", urls.join(", "))
    }

    /// One redis-cli command against node `i`.
    pub fn cli(&self, i: usize, args: &[&str]) -> String {
        cli(self.nodes[i].port, &self.cli_options, args)
    }

    /// Waits (at most 30 s) until every running node says `cluster_state:ok` and knows
    /// the three masters, each with its slots.
    pub fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for (i, n) in self.nodes.iter().enumerate() {
            if n.child.is_none() {
                continue;
            }
            loop {
                let info = self.cli(i, &["CLUSTER", "INFO"]);
                let owners = self.slot_owners(i);
                if info.contains("cluster_state:ok") && owners.len() == 3 {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {i} never came to cluster_state:ok: {info}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// The slot of `key`, as the cluster computes it (`CLUSTER KEYSLOT`).
    pub fn keyslot(&self, key: &str) -> u16 {
        let alive = self.alive();
        let s = self.cli(alive, &["CLUSTER", "KEYSLOT", key]);
        s.trim()
            .parse()
            .unwrap_or_else(|_| panic!("CLUSTER KEYSLOT {key}: {s:?}"))
    }

    /// Which node serves `slot`, from a running node's `CLUSTER NODES`.
    pub fn owner(&self, slot: u16) -> usize {
        let owners = self.slot_owners(self.alive());
        owners
            .iter()
            .find(|(_, ranges)| ranges.iter().any(|r| r.contains(&slot)))
            .map(|(port, _)| {
                self.nodes
                    .iter()
                    .position(|n| n.port == *port)
                    .expect("a node of ours")
            })
            .unwrap_or_else(|| panic!("no master serves slot {slot}"))
    }

    /// Masters with their slot ranges (by port), as node `i` sees them.
    fn slot_owners(&self, i: usize) -> Vec<(u16, Vec<std::ops::RangeInclusive<u16>>)> {
        self.cli(i, &["CLUSTER", "NODES"])
            .lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() < 9 || !f[2].contains("master") {
                    return None;
                }
                let port = f[1].split(['@', ':']).nth(1)?.parse().ok()?;
                let ranges: Vec<_> = f[8..]
                    .iter()
                    .filter_map(|r| {
                        let (a, b) = r.split_once('-').unwrap_or((r, r));
                        Some(a.parse().ok()?..=b.parse().ok()?)
                    })
                    .collect();
                (!ranges.is_empty()).then_some((port, ranges))
            })
            .collect()
    }

    fn alive(&self) -> usize {
        self.nodes
            .iter()
            .position(|n| n.child.is_some())
            .expect("a running node")
    }

    /// Kills node `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again: same port and node file, so it rejoins with its slots
    /// (empty: nothing is saved).
    pub fn restart(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.kill();
        node.child = Some(spawn(&node.args));
        wait_listening(node.port);
        self.wait_ok();
    }

    /// Stops every node until the guard is dropped.
    pub fn freeze(&self) -> Frozen<'_> {
        Frozen::new(
            self.nodes
                .iter()
                .filter_map(|n| n.child.as_ref().map(Child::id))
                .collect(),
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
    }
}

/// What a fail-open and a fail-closed gateway answered while their store was unusable.
#[derive(Debug, Default)]
pub struct PolicyWaits {
    /// Each request's wait, in order: (fail open, fail closed).
    pub waits: Vec<(Duration, Duration)>,
}

impl PolicyWaits {
    /// The longest wait of either gateway.
    pub fn max(&self) -> Duration {
        self.waits
            .iter()
            .map(|&(a, b)| a.max(b))
            .max()
            .unwrap_or_default()
    }
}

/// Sends `GET path` with `headers` (`"name: value"` lines) to `open` and `closed` (the same limit, `on_failure`
/// open and closed) every 100 ms for `span`, and checks that each answer is the policy's —
/// 200 without `RateLimit` headers (no verdict was had), or 503 problem+json with
/// `Retry-After: 1` — within `bound`.
pub fn policy_answers_within(
    open: &super::Gateway,
    closed: &super::Gateway,
    path: &str,
    headers: &[&str],
    span: Duration,
    bound: Duration,
) -> PolicyWaits {
    let mut out = PolicyWaits::default();
    let end = Instant::now() + span;
    loop {
        let timed = |gw: &super::Gateway| {
            let started = Instant::now();
            let r = super::request(gw.http, "GET", path, headers, "");
            (r, started.elapsed())
        };
        let (r, open_wait) = timed(open);
        assert_eq!(r.status, 200, "fail open: {}", r.body);
        assert!(!r.headers.contains_key("ratelimit"), "{:?}", r.headers);
        let (r, closed_wait) = timed(closed);
        assert_eq!(r.status, 503, "fail closed: {}", r.body);
        assert_eq!(r.headers["content-type"], "application/problem+json");
        assert_eq!(r.headers["retry-after"], "1");
        assert!(
            open_wait < bound && closed_wait < bound,
            "request {}: open waited {open_wait:?}, closed {closed_wait:?}, bound {bound:?}",
            out.waits.len()
        );
        out.waits.push((open_wait, closed_wait));
        if Instant::now() >= end {
            return out;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (at most 15 s) until `gw` answers `GET path` with a verdict of the store again
/// (a `RateLimit` header: a fail-open pass has none), 20 times in a row: each request on a
/// fresh connection, so over every worker, each of which has a connection of its own to
/// recover.
pub fn wait_for_verdicts(gw: &super::Gateway, path: &str, headers: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut in_a_row = 0;
    loop {
        let r = super::request(gw.http, "GET", path, headers, "");
        if r.headers.contains_key("ratelimit") {
            in_a_row += 1;
            if in_a_row == 20 {
                return;
            }
            continue;
        }
        in_a_row = 0;
        assert!(
            Instant::now() < deadline,
            "no verdicts again: {} {}",
            r.status,
            r.body
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
