//! `sluice-lb run` end to end on one machine: the real binary in a network namespace, real
//! backends (TCP servers) in another, health checks over a veth link. Each test starts its own
//! agent over three live backends ([`World::running`]), changes one thing (health, drain,
//! weight, reload, restart, detach), then reads the pinned maps and, through
//! BPF_PROG_TEST_RUN on a second copy of the program sharing those maps, checks where packets
//! go.
//!
//! Needs root. Namespaces, processes and pins are named per test and removed by a guard, on
//! success, failure or panic; the tests take turns.

use std::{
    collections::HashSet,
    net::IpAddr,
    ops::Range,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex, MutexGuard, PoisonError,
    },
    time::{Duration, Instant},
};

use sluice_common::{programs, BACKEND_ALIVE, BACKEND_DRAINING};
use sluice_lb::{
    addr,
    dataplane::{DataPlane, LoadOptions},
};

// Namespace plumbing shared with the end-to-end harness.
use sluice_e2e::{in_ns, in_ns_command as ns_command, privileged, sh};

const VIP: &str = "198.51.100.1";
const BACKENDS: [&str; 3] = ["10.1.0.11", "10.1.0.12", "10.1.0.13"];
const INTERVAL_MS: u64 = 200;
const FALL: u64 = 2;

/// One agent at a time: the health budget is timed, and the machine may have two cores.
static SERIAL: Mutex<()> = Mutex::new(());

/// Everything one test created, removed on drop.
struct World {
    a: String,
    b: String,
    pin_dir: PathBuf,
    dir: PathBuf,
    agent: Option<Child>,
    servers: Vec<Option<Child>>,
    /// Held until everything else is gone (fields drop after `Drop::drop`).
    _serial: MutexGuard<'static, ()>,
}

impl World {
    /// If privileged: the namespaces, three live backends and a running agent that sees them
    /// all up.
    fn running() -> Option<Self> {
        if !privileged() {
            return None;
        }
        let mut w = World::new();
        for i in 0..3 {
            w.start_server(i);
        }
        w.write_config(&w.config(&BACKENDS));
        w.start_agent();
        let pin_dir = w.pin_dir.clone();
        in_ns(&w.a, || {
            wait_until("pinned maps", Duration::from_secs(10), || {
                pin_dir.join("links/ext0").exists()
            });
        });
        w.probe(|p| {
            wait_until("all backends up", Duration::from_secs(5), || {
                BACKENDS.iter().all(|b| p.flags(b) == Some(BACKEND_ALIVE))
            });
        });
        Some(w)
    }

    fn new() -> Self {
        let serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
        static N: AtomicUsize = AtomicUsize::new(0);
        let tag = format!(
            "slt{}x{}",
            std::process::id() % 100000,
            N.fetch_add(1, Ordering::SeqCst)
        );
        let a = format!("{tag}a");
        let b = format!("{tag}b");
        let dir = std::env::temp_dir().join(format!("sluice-agent-{tag}"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let w = World {
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/sluice-{tag}")),
            a,
            b,
            dir,
            agent: None,
            servers: Vec::new(),
            _serial: serial,
        };
        w.cleanup_names();
        sh(&format!("ip netns add {}", w.a));
        sh(&format!("ip netns add {}", w.b));
        let (a, b) = (&w.a, &w.b);
        sh(&format!("ip -n {a} link set lo up"));
        sh(&format!("ip -n {b} link set lo up"));
        sh(&format!("ip -n {a} link add ext0 type veth peer name ext1"));
        sh(&format!(
            "ip -n {a} link add int0 type veth peer name int1 netns {b}"
        ));
        for l in ["ext0", "ext1", "int0"] {
            sh(&format!("ip -n {a} link set {l} up"));
        }
        sh(&format!("ip -n {b} link set int1 up"));
        sh(&format!("ip -n {a} addr add 10.0.0.1/24 dev ext0"));
        sh(&format!("ip -n {a} addr add 10.1.0.1/24 dev int0"));
        for be in BACKENDS {
            sh(&format!("ip -n {b} addr add {be}/24 dev int1"));
        }
        sh(&format!(
            "ip netns exec {a} sysctl -qw net.ipv4.conf.all.forwarding=1"
        ));
        w
    }

    fn cleanup_names(&self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = sluice_lb::attach::detach(&self.pin_dir);
    }

    fn config(&self, backends: &[&str]) -> String {
        World::config_text(&self.pin_dir, backends)
    }

    /// The agent's config for `backends`, pinning under `pin_dir`.
    fn config_text(pin_dir: &Path, backends: &[&str]) -> String {
        let list: Vec<String> = backends
            .iter()
            .map(|b| format!("{{ address = \"{b}\" }}"))
            .collect();
        format!(
            "[node]\ninterfaces = [\"ext0\"]\nxdp_mode = \"generic\"\ntunnel_source_v4 = \"10.1.0.1\"\n\
             pin_dir = \"{}\"\nflow_table_size = 4096\ndown_grace_ms = 0\n\n[admin]\nlisten = \"127.0.0.1:19180\"\n\n\
             [health]\nkind = \"tcp\"\nport = 9000\ninterval_ms = {INTERVAL_MS}\ntimeout_ms = 100\nrise = 2\nfall = {FALL}\n\n\
             [[vip]]\naddress = \"{VIP}\"\nport = 80\nprotocol = \"tcp\"\nbackends = [{}]\n",
            pin_dir.display(),
            list.join(", ")
        )
    }

    fn write_config(&self, text: &str) -> PathBuf {
        let p = self.dir.join("lb.toml");
        // Write then rename, so the agent's file watcher never sees half a file.
        let tmp = self.dir.join("lb.toml.tmp");
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, &p).expect("rename config");
        p
    }

    fn start_server(&mut self, i: usize) {
        self.start_server_at(i, BACKENDS[i]);
    }

    /// Starts server `i` on `address` (one of the backend namespace's addresses).
    fn start_server_at(&mut self, i: usize, address: &str) {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.b,
                "python3",
                "-m",
                "http.server",
                "--bind",
                address,
                "9000",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("backend server");
        if self.servers.len() <= i {
            self.servers.resize_with(i + 1, || None);
        }
        self.servers[i] = Some(child);
    }

    fn stop_server(&mut self, i: usize) {
        if let Some(mut c) = self.servers.get_mut(i).and_then(Option::take) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn start_agent(&mut self) {
        self.start_agent_with(&[]);
    }

    /// Starts the agent with `extra` arguments to `run`.
    fn start_agent_with(&mut self, extra: &[&str]) {
        let config = self.dir.join("lb.toml");
        let n = std::fs::read_dir(&self.dir).map(|d| d.count()).unwrap_or(0);
        let log = std::fs::File::create(self.dir.join(format!("agent-{n}.log"))).expect("log file");
        let child = ns_command(&self.a, env!("CARGO_BIN_EXE_sluice-lb"))
            .args(["run", "--config"])
            .arg(&config)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("agent");
        self.agent = Some(child);
    }

    fn stop_agent(&mut self) {
        // SIGTERM, the way an operator or systemd stops it.
        self.signal_agent(libc::SIGTERM);
        if let Some(mut c) = self.agent.take() {
            let _ = c.wait();
        }
    }

    fn signal_agent(&self, sig: i32) {
        if let Some(c) = &self.agent {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// Runs `f` in the agent's namespace with a fresh view of the pinned maps.
    fn probe<R: Send>(&self, f: impl FnOnce(&mut Probe) -> R + Send) -> R {
        in_ns(&self.a, || f(&mut Probe::open(&self.pin_dir)))
    }

    fn cli(&self, args: &[&str]) -> (bool, String) {
        let out = ns_command(&self.a, env!("CARGO_BIN_EXE_sluice-lb"))
            .args(args)
            .args(["--admin", "127.0.0.1:19180"])
            .output()
            .expect("cli");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}

impl World {
    /// Runs the CLI against the agent; its output, which must say it succeeded.
    fn cli_ok(&self, args: &[&str]) -> String {
        let (ok, out) = self.cli(args);
        assert!(ok, "sluice-lb {args:?}: {out}");
        out
    }

    /// The config generation `status` reports.
    fn config_generation(&self) -> u64 {
        let v: serde_json::Value =
            serde_json::from_str(&self.cli_ok(&["status", "--json"])).expect("json");
        v["config"]["generation"].as_u64().expect("generation")
    }

    /// The agent's `/metrics` text.
    fn metrics(&self) -> String {
        in_ns(&self.a, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("rt");
            rt.block_on(sluice_lb::admin::call(
                "127.0.0.1:19180".parse().expect("literal"),
                hyper::Method::GET,
                "/metrics",
            ))
            .expect("metrics")
            .1
        })
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop_agent();
        if std::thread::panicking() {
            // The agent's own account of what happened, for the failure report.
            if let Ok(entries) = std::fs::read_dir(&self.dir) {
                for e in entries.flatten() {
                    if e.file_name().to_string_lossy().starts_with("agent-") {
                        let log = std::fs::read_to_string(e.path()).unwrap_or_default();
                        eprintln!("--- {} ---\n{log}", e.path().display());
                    }
                }
            }
        }
        for i in 0..self.servers.len() {
            self.stop_server(i);
        }
        self.cleanup_names();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A view of the data plane through the pinned maps, with its own copy of the program.
struct Probe {
    dp: DataPlane,
    ifindex: u32,
}

impl Probe {
    fn open(pin_dir: &std::path::Path) -> Self {
        let mut dp = DataPlane::load(&LoadOptions {
            pin_dir: Some(pin_dir.to_owned()),
            flow_table_size: Some(4096),
            ..Default::default()
        })
        .expect("adopt pinned maps");
        dp.program(programs::LB).expect("program");
        let ifindex = sluice_lb::attach::ifindex("ext0").expect("ext0");
        Probe { dp, ifindex }
    }

    fn flags(&self, backend: &str) -> Option<u8> {
        let ip: IpAddr = backend.parse().expect("literal");
        self.dp
            .backends()
            .expect("read")
            .into_iter()
            .find(|(_, b)| addr::ip(&b.addr, b.family) == ip)
            .map(|(_, b)| b.flags)
    }

    /// Sends one TCP packet from `client:port` and returns the backend it was tunnelled to.
    fn send(&mut self, client: [u8; 4], port: u16, syn: bool) -> Option<IpAddr> {
        let mut pkt = Vec::new();
        let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
            .ipv4(client, [198, 51, 100, 1], 64)
            .tcp(port, 80, 1, 1000);
        let b = if syn { b.syn() } else { b.ack(1) };
        b.write(&mut pkt, b"x").expect("build");
        let md: [u32; 6] = [0, pkt.len() as u32, 0, self.ifindex, 0, 0];
        let ctx: Vec<u8> = md.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let mut out = vec![0u8; pkt.len() + 256];
        let mut opts = aya::programs::TestRunOptions::new();
        opts.data_in = Some(&pkt);
        opts.data_out = Some(&mut out);
        opts.ctx_in = Some(&ctx);
        let prog = self.dp.program(programs::LB).expect("program");
        let res = aya::programs::TestRun::test_run(prog, opts).expect("test run");
        // Redirected (4), or handed to the kernel (2) while the neighbour is unresolved: both
        // carry the tunnel; the outer destination names the backend.
        if res.return_value != 4 && res.return_value != 2 {
            return None;
        }
        if out[14] >> 4 != 4 || out[14 + 9] != 4 {
            return None;
        }
        Some(IpAddr::from(
            <[u8; 4]>::try_from(&out[30..34]).expect("4 bytes"),
        ))
    }
}

/// (link id, program id) of the pinned XDP link on ext0.
fn link_ids(pin_dir: &std::path::Path) -> (u32, u32) {
    let pinned = aya::programs::links::PinnedLink::from_pin(pin_dir.join("links/ext0"))
        .expect("pinned link");
    let link: aya::programs::links::FdLink = pinned.into();
    let info = link.info().expect("link info");
    (info.id(), info.program_id())
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

/// Runs its closure when dropped: cleanup however a test ends.
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// `client`'s address as the test sends it.
fn ip4(client: &str) -> [u8; 4] {
    client
        .parse::<std::net::Ipv4Addr>()
        .expect("literal")
        .octets()
}

/// Backend `i`'s address.
fn backend(i: usize) -> IpAddr {
    BACKENDS[i].parse().expect("literal")
}

/// The backend each SYN from `client` on `ports` goes to.
fn picks(p: &mut Probe, client: &str, ports: Range<u16>, syn: bool) -> Vec<Option<IpAddr>> {
    ports.map(|port| p.send(ip4(client), port, syn)).collect()
}

/// The backend of each flow entry from `client` on `ports`.
fn flow_entries(p: &Probe, client: &str, ports: Range<u16>) -> Vec<Option<u32>> {
    ports
        .map(|port| {
            let key = addr::flow_key(
                client.parse().expect("literal"),
                port,
                VIP.parse().expect("literal"),
                80,
                6,
            );
            p.dp.flow(&key).expect("read").map(|s| s.backend)
        })
        .collect()
}

/// A port in `ports` whose SYN from `client` goes to backend `i`.
fn port_on(p: &mut Probe, client: &str, ports: Range<u16>, i: usize) -> u16 {
    ports
        .into_iter()
        .find(|port| p.send(ip4(client), *port, true) == Some(backend(i)))
        .unwrap_or_else(|| panic!("no flow from {client} lands on {}", BACKENDS[i]))
}

/// Asserts that no SYN from `client` on `ports` goes to backend `i`.
fn assert_avoided(p: &mut Probe, client: &str, ports: Range<u16>, i: usize) {
    for port in ports {
        assert_ne!(
            p.send(ip4(client), port, true),
            Some(backend(i)),
            "a new flow from {client}:{port} went to {}",
            BACKENDS[i]
        );
    }
}

#[test]
fn check_names_file_field_and_reason() {
    let scratch = sluice_e2e::scratch::Scratch::new("agent-check");
    let dir = scratch.0.clone();
    let bad = dir.join("bad.toml");
    let text = World::config_text(&dir.join("pins"), &BACKENDS);
    std::fs::write(&bad, text.replace("rise = 2", "rise = 0")).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-lb"))
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .expect("check");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.toml: health.rise: must be at least 1"),
        "{stderr}"
    );
}

#[test]
fn new_flows_spread_over_every_backend() {
    let Some(w) = World::running() else {
        return;
    };
    w.probe(|p| {
        let seen: HashSet<_> = picks(p, "203.0.113.7", 1000..1060, true)
            .into_iter()
            .map(|b| b.expect("forwarded"))
            .collect();
        assert_eq!(seen.len(), 3);
    });
}

#[test]
fn a_dead_backend_leaves_within_the_health_budget_and_comes_back() {
    let Some(mut w) = World::running() else {
        return;
    };
    let victim_flow = w.probe(|p| port_on(p, "203.0.113.8", 2000..3000, 1));
    // It must leave new-flow selection within interval x fall + 100 ms.
    let budget = Duration::from_millis(INTERVAL_MS * FALL + 100);
    let mut victim = w.servers[1].take().expect("backend 1 running");
    let took = in_ns(&w.a, || {
        let p = Probe::open(&w.pin_dir);
        let _ = victim.kill();
        let _ = victim.wait();
        wait_until("victim marked down", Duration::from_secs(3), || {
            p.flags(BACKENDS[1]) == Some(0)
        })
    });
    eprintln!("backend down detected and applied after {took:?} (budget {budget:?})");
    assert!(
        took <= budget + Duration::from_millis(20),
        "took {took:?}, budget {budget:?}"
    );
    w.probe(|p| {
        assert_avoided(p, "203.0.113.9", 1000..1100, 1);
        // Its established flow is re-picked onto a live backend.
        let now = p
            .send(ip4("203.0.113.8"), victim_flow, false)
            .expect("forwarded");
        assert_ne!(now, backend(1));
    });
    w.start_server(1);
    w.probe(|p| {
        wait_until("victim back up", Duration::from_secs(3), || {
            p.flags(BACKENDS[1]) == Some(BACKEND_ALIVE)
        });
    });
}

#[test]
fn drain_keeps_established_flows_and_turns_new_ones_away() {
    let Some(w) = World::running() else {
        return;
    };
    let drained_flow = w.probe(|p| port_on(p, "203.0.113.10", 3000..4000, 2));
    w.cli_ok(&["drain", BACKENDS[2]]);
    let (ok, out) = w.cli(&["drain", "10.9.9.9"]);
    assert!(!ok && out.contains("not a backend of any VIP"), "{out}");
    w.probe(|p| {
        assert_eq!(p.flags(BACKENDS[2]), Some(BACKEND_ALIVE | BACKEND_DRAINING));
        assert_eq!(
            p.send(ip4("203.0.113.10"), drained_flow, false),
            Some(backend(2))
        );
        assert_avoided(p, "203.0.113.11", 5000..5100, 2);
    });
    let out = w.cli_ok(&["status"]);
    assert!(out.contains("draining") && out.contains(VIP), "{out}");
    // Undrain restores it.
    w.cli_ok(&["undrain", BACKENDS[2]]);
    w.probe(|p| assert_eq!(p.flags(BACKENDS[2]), Some(BACKEND_ALIVE)));
}

/// With `admin.token_file`, every change needs the token (the CLI's `--token-file`, or
/// `SLUICE_ADMIN_TOKEN_FILE`), loopback included; reads stay open; a reload reads the file
/// again.
#[test]
fn the_admin_token_guards_every_change_and_a_reload_rotates_it() {
    let Some(w) = World::running() else {
        return;
    };
    let first = "1111111111111111111111111111111111111111";
    let second = "2222222222222222222222222222222222222222";
    let configured = w.dir.join("admin.token");
    let (first_file, second_file) = (w.dir.join("first.token"), w.dir.join("second.token"));
    for (path, token) in [
        (&configured, first),
        (&first_file, first),
        (&second_file, second),
    ] {
        write_private(path, token);
    }
    let listen = "listen = \"127.0.0.1:19180\"\n";
    let with_token = w.config(&BACKENDS).replacen(
        listen,
        &format!(
            "{listen}token_file = {:?}\n",
            configured.display().to_string()
        ),
        1,
    );
    let before = w.config_generation();
    w.write_config(&with_token);
    wait_until("the config with a token", Duration::from_secs(3), || {
        w.config_generation() > before
    });
    let with = |file: &Path, args: &[&str]| {
        let mut all = vec!["--token-file", file.to_str().expect("utf-8")];
        all.extend_from_slice(args);
        w.cli(&all)
    };

    // Without the token, or with another, every change is refused and nothing changes.
    for args in [
        &["drain", BACKENDS[0]][..],
        &["weight", BACKENDS[0], "0"],
        &["block", "192.0.2.0/24", "--ttl", "60s"],
        &["maintenance", "on"],
    ] {
        let (ok, out) = w.cli(args);
        assert!(
            !ok && out.contains("401") && out.contains("admin.token_file"),
            "{args:?}: {out}"
        );
        let (ok, out) = with(&second_file, args);
        assert!(
            !ok && out.contains("401"),
            "{args:?} with another token: {out}"
        );
    }
    w.probe(|p| assert_eq!(p.flags(BACKENDS[0]), Some(BACKEND_ALIVE)));
    assert!(shield_entries(&w).is_empty());
    // Reads need nothing.
    w.cli_ok(&["status"]);

    // With it, the change is made; the variable stands for the option.
    let (ok, out) = with(&first_file, &["drain", BACKENDS[0]]);
    assert!(ok, "{out}");
    w.probe(|p| assert_eq!(p.flags(BACKENDS[0]), Some(BACKEND_ALIVE | BACKEND_DRAINING)));
    let out = ns_command(&w.a, env!("CARGO_BIN_EXE_sluice-lb"))
        .args(["undrain", BACKENDS[0], "--admin", "127.0.0.1:19180"])
        .env("SLUICE_ADMIN_TOKEN_FILE", &first_file)
        .output()
        .expect("cli");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    w.probe(|p| assert_eq!(p.flags(BACKENDS[0]), Some(BACKEND_ALIVE)));

    // A reload reads the file again: the second token replaces the first.
    write_private(&configured, second);
    let before = w.config_generation();
    w.signal_agent(libc::SIGHUP);
    wait_until("the reload", Duration::from_secs(3), || {
        w.config_generation() > before
    });
    let (ok, out) = with(&first_file, &["drain", BACKENDS[0]]);
    assert!(
        !ok && out.contains("401"),
        "the old token after the rotation: {out}"
    );
    let (ok, out) = with(&second_file, &["drain", BACKENDS[0]]);
    assert!(ok, "{out}");

    // The file changing is a reload of its own, as the config file's is: the third token
    // replaces the second without a signal.
    let third = "3333333333333333333333333333333333333333";
    let third_file = w.dir.join("third.token");
    write_private(&third_file, third);
    let before = w.config_generation();
    write_private(&configured, third);
    wait_until(
        "the reload on the file's change",
        Duration::from_secs(5),
        || w.config_generation() > before,
    );
    let (ok, out) = with(&second_file, &["undrain", BACKENDS[0]]);
    assert!(
        !ok && out.contains("401"),
        "the second token after the file changed: {out}"
    );
    let (ok, out) = with(&third_file, &["undrain", BACKENDS[0]]);
    assert!(ok, "{out}");

    // One every user may read is refused, naming the field; the token in force stays.
    std::fs::set_permissions(&configured, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    w.signal_agent(libc::SIGHUP);
    wait_until("the refused reload", Duration::from_secs(3), || {
        let v: serde_json::Value =
            serde_json::from_str(&w.cli_ok(&["status", "--json"])).expect("json");
        v["config"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("admin.token_file") && e.contains("every user may read"))
    });
    let (ok, out) = with(&third_file, &["drain", BACKENDS[0]]);
    assert!(ok, "the token in force after a refused file: {out}");
}

/// Writes `token` to a file only its owner may read, as a token file must be.
fn write_private(path: &Path, token: &str) {
    std::fs::write(path, format!("{token}\n")).expect("token file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

#[test]
fn weight_zero_takes_a_backend_out_of_new_flows() {
    let Some(w) = World::running() else {
        return;
    };
    w.cli_ok(&["weight", BACKENDS[1], "0"]);
    w.probe(|p| assert_avoided(p, "203.0.113.13", 7000..7100, 1));
    // Without a value: back to the configured weight.
    w.cli_ok(&["weight", BACKENDS[1]]);
    let (ok, out) = w.cli(&["weight", BACKENDS[1], "5000"]);
    assert!(
        !ok && out.contains("weight must be between 0 and 1000"),
        "{out}"
    );
}

#[test]
fn reloads_on_sighup_and_file_change_and_keeps_the_last_valid_config() {
    let Some(w) = World::running() else {
        return;
    };
    // SIGHUP reloads even an unchanged file.
    let before = w.config_generation();
    w.signal_agent(libc::SIGHUP);
    wait_until("SIGHUP reload", Duration::from_secs(3), || {
        w.config_generation() == before + 1
    });
    // A bad file is refused and reported; the last valid config stays.
    w.write_config(&w.config(&BACKENDS).replace("port = 80", "port = 0"));
    std::thread::sleep(Duration::from_millis(1500));
    let out = w.cli_ok(&["status", "--json"]);
    assert!(out.contains("vip[0].port: must not be 0"), "{out}");
    w.probe(|p| assert!(p.flags(BACKENDS[0]).is_some(), "backend 0 still in place"));
    // A good one applies the difference.
    w.write_config(&w.config(&BACKENDS[1..]));
    w.probe(|p| {
        wait_until("backend 0 removed", Duration::from_secs(3), || {
            p.flags(BACKENDS[0]).is_none()
        });
    });
    // Removed while up, then gone, then added again: it starts down, not with the health
    // it had when its probe stopped.
    let mut w = w;
    w.stop_server(0);
    let before = w.config_generation();
    w.write_config(&w.config(&BACKENDS));
    wait_until("backend 0 added again", Duration::from_secs(3), || {
        w.config_generation() > before
    });
    w.probe(|p| {
        assert_eq!(p.flags(BACKENDS[0]), Some(0), "in the maps, not alive");
    });
}

#[test]
fn what_cannot_be_applied_is_refused_and_changes_nothing() {
    let Some(w) = World::running() else {
        return;
    };
    let status = || -> serde_json::Value {
        serde_json::from_str(&w.cli_ok(&["status", "--json"])).expect("json")
    };
    // Settings taken at start: refused with the file and field, nothing else changes.
    let before = w.config_generation();
    for (from, to, field) in [
        (
            "flow_table_size = 4096",
            "flow_table_size = 8192",
            "node.flow_table_size",
        ),
        (
            "xdp_mode = \"generic\"",
            "xdp_mode = \"native\"",
            "node.xdp_mode",
        ),
        ("127.0.0.1:19180", "127.0.0.1:19181", "admin.listen"),
        ("sluice-slt", "sluice-other-slt", "node.pin_dir"),
    ] {
        let text = w.config(&BACKENDS[..2]).replace(from, to);
        assert_ne!(text, w.config(&BACKENDS[..2]), "{from}");
        w.write_config(&text);
        let want = format!("lb.toml: {field}: taken at start: a change needs a restart");
        wait_until(field, Duration::from_secs(3), || {
            status()["config"]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains(&want))
        });
        assert_eq!(w.config_generation(), before, "{field}");
        w.probe(|p| assert!(p.flags(BACKENDS[2]).is_some(), "{field}: backend 2 stays"));
        assert!(
            w.pin_dir.join("links/ext0").exists(),
            "{field}: still attached"
        );
    }
    // A table of two slots for three backends, one of them weighted 0: applied.
    let small = w
        .config(&BACKENDS)
        .replace("protocol = \"tcp\"", "protocol = \"tcp\"\ntable_size = 2")
        .replace(
            &format!("{{ address = \"{}\" }}", BACKENDS[2]),
            &format!("{{ address = \"{}\", weight = 0 }}", BACKENDS[2]),
        );
    w.write_config(&small);
    wait_until("the small table", Duration::from_secs(3), || {
        w.config_generation() == before + 1
    });
    // Weighting the third backend cannot be built: refused, and not recorded, so what
    // comes after still applies.
    let (ok, out) = w.cli(&["weight", BACKENDS[2], "1"]);
    assert!(
        !ok && out.contains("do not fit in a table of 2 slots"),
        "{out}"
    );
    w.cli_ok(&["drain", BACKENDS[0]]);
    w.cli_ok(&["undrain", BACKENDS[0]]);
    w.signal_agent(libc::SIGHUP);
    wait_until("a reload after it", Duration::from_secs(3), || {
        w.config_generation() == before + 2
    });
}

#[test]
fn a_command_line_xdp_mode_stands_for_the_files_at_every_reload() {
    let Some(mut w) = World::running() else {
        return;
    };
    // The file says native; the operator runs it in generic mode.
    w.stop_agent();
    w.write_config(
        &w.config(&BACKENDS)
            .replace("xdp_mode = \"generic\"", "xdp_mode = \"native\""),
    );
    w.start_agent_with(&["--xdp-mode", "generic"]);
    wait_until("the agent's admin API", Duration::from_secs(10), || {
        in_ns(&w.a, || {
            std::net::TcpStream::connect("127.0.0.1:19180").is_ok()
        })
    });
    let before = w.config_generation();
    w.signal_agent(libc::SIGHUP);
    wait_until("the reload", Duration::from_secs(3), || {
        w.config_generation() == before + 1
    });
    let status: serde_json::Value =
        serde_json::from_str(&w.cli_ok(&["status", "--json"])).expect("json");
    assert!(status["config"]["last_error"].is_null(), "{status}");
}

#[test]
fn an_interface_a_reload_removes_loses_the_program_even_when_adopted() {
    let Some(mut w) = World::running() else {
        return;
    };
    let xdp_on = |w: &World, iface: &str| {
        let out = ns_command(&w.a, "ip")
            .args(["-d", "link", "show", iface])
            .output()
            .expect("ip");
        String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
    };
    let both = w.config(&BACKENDS).replace(
        "interfaces = [\"ext0\"]",
        "interfaces = [\"ext0\", \"int0\"]",
    );
    w.write_config(&both);
    wait_until("int0 attached", Duration::from_secs(5), || {
        xdp_on(&w, "int0")
    });
    // A restarted agent adopts both pinned links; a reload then drops int0.
    w.stop_agent();
    w.start_agent();
    wait_until("the agent's admin API", Duration::from_secs(10), || {
        in_ns(&w.a, || {
            std::net::TcpStream::connect("127.0.0.1:19180").is_ok()
        })
    });
    let before = w.config_generation();
    w.write_config(&w.config(&BACKENDS));
    wait_until("the reload", Duration::from_secs(5), || {
        w.config_generation() == before + 1
    });
    wait_until("int0 detached", Duration::from_secs(3), || {
        !xdp_on(&w, "int0")
    });
    assert!(xdp_on(&w, "ext0"), "ext0 keeps its program");
}

#[test]
fn a_restarted_agent_adopts_the_pinned_state_without_reshuffling() {
    let Some(mut w) = World::running() else {
        return;
    };
    // A drained backend: state the new agent must find in the maps.
    w.cli_ok(&["drain", BACKENDS[2]]);
    let client = "203.0.113.12";
    let before = w.probe(|p| picks(p, client, 6000..6040, true));
    let link_before = link_ids(&w.pin_dir);
    let st: serde_json::Value =
        serde_json::from_str(&w.cli_ok(&["status", "--json"])).expect("json");
    assert!(st["table_generation"].as_u64().unwrap_or(0) >= 2, "{st}");
    let entries_before = w.probe(|p| flow_entries(p, client, 6000..6040));
    assert!(
        entries_before.iter().all(Option::is_some),
        "every SYN left a flow entry"
    );
    // Forwarding goes on while the agent is gone.
    w.stop_agent();
    w.probe(|p| {
        let during = picks(p, client, 6000..6040, false);
        assert_eq!(
            during, before,
            "established flows keep forwarding without the agent"
        );
        assert!(during.iter().all(Option::is_some));
    });
    w.start_agent();
    std::thread::sleep(Duration::from_millis(1000));
    let out = w.cli_ok(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        status["table_generation"], 0,
        "the adopted tables were already right: {out}"
    );
    // The flow table survived the restart entry for entry.
    assert_eq!(
        w.probe(|p| flow_entries(p, client, 6000..6040)),
        entries_before
    );
    // The same link, now running the new agent's program: swapped with bpf_link_update.
    let link_after = link_ids(&w.pin_dir);
    assert_eq!(link_after.0, link_before.0, "link kept");
    assert_ne!(link_after.1, link_before.1, "program replaced");
    assert_eq!(w.probe(|p| picks(p, client, 6000..6040, false)), before);
    let metrics = w.metrics();
    for line in [
        "sluice_lb_backend_up{backend=\"10.1.0.12\"} 1",
        "sluice_lb_backend_draining{backend=\"10.1.0.13\"} 1",
        "sluice_lb_packets_total{outcome=\"redirect\"}",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
}

#[test]
fn detach_removes_programs_links_and_maps() {
    let Some(mut w) = World::running() else {
        return;
    };
    w.stop_agent();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-lb"))
        .args(["detach", "--pin-dir"])
        .arg(&w.pin_dir)
        .output()
        .expect("detach");
    assert!(out.status.success());
    assert!(!w.pin_dir.exists());
    let link = Command::new("ip")
        .args(["-n", &w.a, "link", "show", "ext0"])
        .output()
        .expect("ip");
    assert!(
        !String::from_utf8_lossy(&link.stdout).contains("xdp"),
        "program still attached"
    );
}

#[test]
fn pinned_maps_of_another_layout_are_refused_clearly() {
    if !privileged() {
        return;
    }
    let dir = PathBuf::from(format!("/sys/fs/bpf/sluice-layout-{}", std::process::id()));
    let maps = dir.join("maps");
    std::fs::create_dir_all(&maps).expect("pin dir");
    let _cleanup = OnDrop(|| {
        let _ = sluice_lb::attach::detach(&dir);
    });
    // An older build's VIP map: 8-byte values instead of this build's VipMeta.
    let path = maps.join("SLUICE_VIPS");
    sh(&format!(
        "bpftool map create {} type hash key 20 value 8 entries 4 name SLUICE_VIPS flags 1",
        path.display()
    ));
    let err = DataPlane::load(&LoadOptions {
        pin_dir: Some(dir.clone()),
        ..Default::default()
    })
    .err()
    .expect("must refuse the pinned map");
    let msg = err.to_string();
    assert!(
        msg.contains("pinned map SLUICE_VIPS has key/value sizes 20/8 but this build needs 20/20"),
        "{msg}"
    );
}

#[test]
fn pinned_counters_of_another_size_are_made_anew() {
    if !privileged() {
        return;
    }
    let dir = PathBuf::from(format!(
        "/sys/fs/bpf/sluice-counters-{}",
        std::process::id()
    ));
    let maps = dir.join("maps");
    std::fs::create_dir_all(&maps).expect("pin dir");
    let _cleanup = OnDrop(|| {
        let _ = sluice_lb::attach::detach(&dir);
    });
    // An earlier build's outcome counters, one fewer than this build counts: counts, not
    // state, so an upgrade makes them anew rather than stopping (their counts restart).
    let path = maps.join("SLUICE_LB_STATS");
    let entries = sluice_common::stats::LB_COUNTERS;
    sh(&format!(
        "bpftool map create {} type percpu_array key 4 value 8 entries {} name SLUICE_LB_STATS",
        path.display(),
        entries - 1
    ));
    let opts = LoadOptions {
        pin_dir: Some(dir.clone()),
        ..Default::default()
    };
    let dp = DataPlane::load(&opts).expect("counters of another size do not stop a load");
    let pinned = aya::maps::MapInfo::from_pin(&path).expect("pinned again");
    assert_eq!(
        pinned.max_entries(),
        entries,
        "made anew at this build's size"
    );
    drop(dp);
    DataPlane::load(&opts).expect("this build's own pins are adopted");
}

/// The SYN of `client:port` to the VIP is forwarded (not blocked).
fn forwarded(w: &World, client: &str, port: u16) -> bool {
    w.probe(|p| p.send(ip4(client), port, true).is_some())
}

fn shield_entries(w: &World) -> Vec<serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_str(&w.cli_ok(&["status", "--json"])).expect("json");
    v["shield"]["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn blocks_hold_their_bounds_survive_a_restart_and_expire() {
    let Some(mut w) = World::running() else {
        return;
    };
    let shield = "\n[shield]\nmax_entries = 3\nallow = [\"203.0.113.64/26\"]\n";
    w.write_config(&(w.config(&BACKENDS) + shield));
    wait_until("the [shield] config", Duration::from_secs(5), || {
        w.config_generation() == 2
    });
    assert!(forwarded(&w, "203.0.113.7", 7000));
    w.cli_ok(&["block", "203.0.113.7", "--ttl", "1h", "--reason", "scanner"]);
    assert!(!forwarded(&w, "203.0.113.7", 7001), "blocked in XDP");
    assert!(forwarded(&w, "203.0.113.8", 7002), "its neighbour is not");
    // The bounds: the allow list, the widest prefix, the entry count, the TTL.
    for (args, why) in [
        (vec!["block", "203.0.113.70", "--ttl", "1h"], "allow list"),
        (vec!["block", "203.0.113.0/24", "--ttl", "1h"], "allow list"),
        (vec!["block", "10.0.0.0/8", "--ttl", "1h"], "wider than /16"),
        (
            vec!["block", "2001:db8::/24", "--ttl", "1h"],
            "wider than /16",
        ),
        (vec!["block", "198.18.0.1", "--ttl", "0s"], "TTL"),
        (vec!["block", "198.18.0.1", "--ttl", "400d"], "TTL"),
        (
            vec!["block", "not-an-address", "--ttl", "1h"],
            "not a prefix",
        ),
        (vec!["unblock", "198.18.9.9"], "not blocked"),
    ] {
        let (ok, out) = w.cli(&args);
        assert!(!ok, "{args:?} must be refused: {out}");
        assert!(out.contains(why), "{args:?}: {out}");
    }
    w.cli_ok(&["block", "10.0.0.0/8", "--ttl", "1h", "--force"]);
    w.cli_ok(&["block", "2001:db8:1::/64", "--ttl", "2s"]);
    let (ok, out) = w.cli(&["block", "198.18.0.2", "--ttl", "1h"]);
    assert!(!ok && out.contains("maximum of 3"), "{out}");
    let entries = shield_entries(&w);
    let scanner = entries
        .iter()
        .find(|e| e["prefix"] == "203.0.113.7/32")
        .expect("listed");
    assert_eq!(scanner["note"], "scanner");
    assert_eq!(scanner["reason"], "manual");
    assert!(scanner["drops"].as_u64().unwrap_or(0) >= 1, "{scanner}");
    let left = scanner["remaining_ms"].as_u64().unwrap_or(0);
    assert!(left > 3_500_000 && left <= 3_600_000, "{scanner}");
    let text = w.cli_ok(&["status"]);
    assert!(
        text.contains("203.0.113.7/32") && text.contains("scanner"),
        "{text}"
    );
    let metrics = w.metrics();
    for line in [
        "sluice_lb_shield_entries 3",
        "sluice_lb_shield_entry_dropped_packets_total{prefix=\"203.0.113.7/32\",reason=\"manual\"}",
        "sluice_lb_packets_total{outcome=\"blocked\"}",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    // The short block is swept once it expires.
    wait_until("the 2 s block swept", Duration::from_secs(5), || {
        shield_entries(&w).len() == 2
    });
    // Pinned: a restarted agent keeps the blocks, their notes and their counters.
    w.stop_agent();
    assert!(
        !forwarded(&w, "203.0.113.7", 7003),
        "blocked without the agent"
    );
    w.start_agent();
    wait_until("the agent back", Duration::from_secs(10), || {
        w.cli(&["status", "--json"]).0
    });
    let entries = shield_entries(&w);
    assert_eq!(entries.len(), 2, "{entries:?}");
    let scanner = entries
        .iter()
        .find(|e| e["prefix"] == "203.0.113.7/32")
        .expect("adopted");
    assert_eq!(scanner["note"], "scanner");
    assert!(scanner["drops"].as_u64().unwrap_or(0) >= 2, "{scanner}");
    w.cli_ok(&["unblock", "203.0.113.7/32"]);
    assert!(forwarded(&w, "203.0.113.7", 7004), "unblocked");
}

#[test]
fn nested_blocks_never_expire_first_and_a_reload_applies_the_allow_list() {
    let Some(w) = World::running() else {
        return;
    };
    w.cli_ok(&["block", "10.0.0.0/8", "--ttl", "1h", "--force"]);
    w.cli_ok(&["block", "10.1.2.3", "--ttl", "2s", "--reason", "short"]);
    let inner = shield_entries(&w)
        .into_iter()
        .find(|e| e["prefix"] == "10.1.2.3/32")
        .expect("listed");
    // The data plane obeys the longest match: had the /32 expired first, 10.1.2.3 would
    // pass while the /8 is still in force.
    let left = inner["remaining_ms"].as_u64().unwrap_or(0);
    assert!(left > 3_500_000, "raised to the /8's expiry: {inner}");
    std::thread::sleep(Duration::from_millis(2500));
    assert!(!forwarded(&w, "10.1.2.3", 7100), "still blocked after 2 s");
    // Adding an address to the allow list frees it at the reload, and the /8 around it.
    let allow = "\n[shield]\nallow = [\"10.1.2.3/32\"]\n";
    w.write_config(&(w.config(&BACKENDS) + allow));
    wait_until("the reload", Duration::from_secs(5), || {
        w.config_generation() == 2
    });
    assert_eq!(shield_entries(&w), Vec::<serde_json::Value>::new());
    assert!(
        forwarded(&w, "10.1.2.3", 7101),
        "on the allow list: forwarded"
    );
}

#[test]
fn an_interface_made_again_gets_the_program_again() {
    let Some(mut w) = World::running() else {
        return;
    };
    let xdp_on_ext0 = |w: &World| {
        let out = ns_command(&w.a, "ip")
            .args(["-d", "link", "show", "ext0"])
            .output()
            .expect("ip");
        String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
    };
    // Removed and made again under the same name (as a driver reload or a rebuilt bond
    // does): the pinned link stays, but holds the program on no interface.
    let make_again = |a: &str| {
        sh(&format!("ip -n {a} link del ext0"));
        sh(&format!("ip -n {a} link add ext0 type veth peer name ext1"));
        sh(&format!("ip -n {a} link set ext0 up"));
        sh(&format!("ip -n {a} link set ext1 up"));
        sh(&format!("ip -n {a} addr add 10.0.0.1/24 dev ext0"));
        sh(&format!(
            "ip netns exec {a} sysctl -qw net.ipv4.conf.ext0.forwarding=1"
        ));
    };
    let on_the_new_ext0 = |w: &World| {
        let pin = w.pin_dir.join("links/ext0");
        let index = in_ns(&w.a, || sluice_lb::attach::ifindex("ext0")).expect("ext0");
        let linked = sluice_lb::attach::link_ifindex(&pin).expect("pinned link");
        assert_eq!(linked, index, "the pinned link is on the new ext0");
        assert!(xdp_on_ext0(w));
    };
    assert!(xdp_on_ext0(&w), "attached at start");
    // While the agent runs: it puts the program back within its next node check.
    make_again(&w.a);
    let took = wait_until(
        "the program on the new ext0",
        Duration::from_secs(5),
        || xdp_on_ext0(&w),
    );
    eprintln!("attached again after {took:?}");
    wait_until("healthz", Duration::from_secs(5), || healthz(&w).0 == 200);
    on_the_new_ext0(&w);
    // While it is stopped: the next agent attaches anew instead of failing to update a
    // link that lost its interface.
    w.stop_agent();
    make_again(&w.a);
    w.start_agent();
    wait_until(
        "the restarted agent's admin API",
        Duration::from_secs(10),
        || {
            in_ns(&w.a, || {
                std::net::TcpStream::connect("127.0.0.1:19180").is_ok()
            })
        },
    );
    wait_until("healthz after a restart", Duration::from_secs(10), || {
        healthz(&w).0 == 200
    });
    on_the_new_ext0(&w);
}

fn healthz(w: &World) -> (u16, String) {
    in_ns(&w.a, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        let (code, body) = rt
            .block_on(sluice_lb::admin::call(
                "127.0.0.1:19180".parse().expect("literal"),
                hyper::Method::GET,
                "/healthz",
            ))
            .expect("healthz");
        (code.as_u16(), body)
    })
}

fn set_forwarding(w: &World, on: bool) {
    sh(&format!(
        "ip netns exec {} sysctl -qw net.ipv4.conf.ext0.forwarding={}",
        w.a,
        u8::from(on)
    ));
}

#[test]
fn forwarding_turned_off_is_fixed_or_reported_and_its_drops_are_a_rate() {
    let Some(w) = World::running() else {
        return;
    };
    assert_eq!(healthz(&w).0, 200);
    // manage_sysctls (the default): put right within a second.
    set_forwarding(&w, false);
    wait_until("forwarding set again", Duration::from_secs(3), || {
        std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/forwarding").is_ok()
            && in_ns(&w.a, || {
                std::fs::read_to_string("/proc/sys/net/ipv4/conf/ext0/forwarding")
                    .map(|v| v.trim() == "1")
                    .unwrap_or(false)
            })
    });
    // Without it: reported in status, /healthz and /metrics; every VIP packet is a
    // fib_failure, and that is a rate and a log line.
    let text = w.config(&BACKENDS).replace(
        "flow_table_size = 4096\n",
        "flow_table_size = 4096\nmanage_sysctls = false\n",
    );
    w.write_config(&text);
    wait_until("the reload", Duration::from_secs(5), || {
        w.config_generation() == 2
    });
    set_forwarding(&w, false);
    wait_until("the check failing", Duration::from_secs(3), || {
        healthz(&w).0 == 503
    });
    let (_, body) = healthz(&w);
    assert!(body.contains("ipv4_forwarding ext0"), "{body}");
    for port in 0..50 {
        assert!(
            !forwarded(&w, "203.0.113.40", 7200 + port),
            "dropped: forwarding off"
        );
    }
    wait_until("the drop rate", Duration::from_secs(3), || {
        w.metrics().lines().any(|l| {
            l.starts_with("sluice_lb_dropped_packets_per_second{reason=\"fib_failure\"}")
                && !l.ends_with(" 0")
        })
    });
    let metrics = w.metrics();
    assert!(
        metrics.contains("sluice_lb_node_check_ok{check=\"ipv4_forwarding ext0\"} 0"),
        "{metrics}"
    );
    let log: String = std::fs::read_dir(&w.dir)
        .expect("dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("agent-"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(log.contains("node check failing"), "{log}");
    assert!(log.contains("VIP packets are being dropped"), "{log}");
    set_forwarding(&w, true);
    wait_until("healthy again", Duration::from_secs(3), || {
        healthz(&w).0 == 200
    });
}

#[test]
fn a_down_backend_keeps_its_established_flows_for_the_grace_and_a_flap_breaks_none() {
    let Some(w) = World::running() else {
        return;
    };
    let text = w
        .config(&BACKENDS)
        .replace("down_grace_ms = 0\n", "down_grace_ms = 1500\n");
    w.write_config(&text);
    wait_until("the reload", Duration::from_secs(5), || {
        w.config_generation() == 2
    });
    let mut w = w;
    let flow = w.probe(|p| port_on(p, "203.0.113.8", 2000..3000, 1));
    // Down: out of new-flow selection at once, its established flow stays on it.
    w.stop_server(1);
    w.probe(|p| {
        wait_until("out of the tables", Duration::from_secs(3), || {
            p.send(ip4("203.0.113.9"), 1000, true) != Some(backend(1))
                && picks(p, "203.0.113.9", 1000..1060, true)
                    .iter()
                    .all(|b| *b != Some(backend(1)))
        });
        assert_eq!(
            p.flags(BACKENDS[1]),
            Some(BACKEND_ALIVE),
            "alive for its flows"
        );
        assert_eq!(p.send(ip4("203.0.113.8"), flow, false), Some(backend(1)));
    });
    // Back within the grace (a flap): the flow never moved.
    w.start_server(1);
    w.probe(|p| {
        wait_until("back in the tables", Duration::from_secs(3), || {
            picks(p, "203.0.113.9", 1000..1100, true).contains(&Some(backend(1)))
        });
        assert_eq!(p.send(ip4("203.0.113.8"), flow, false), Some(backend(1)));
    });
    // Down for longer than the grace: the flow is re-picked after it.
    w.stop_server(1);
    let took = w.probe(|p| {
        wait_until("re-picked after the grace", Duration::from_secs(5), || {
            p.flags(BACKENDS[1]) == Some(0)
        })
    });
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    w.probe(|p| {
        assert_ne!(p.send(ip4("203.0.113.8"), flow, false), Some(backend(1)));
    });
}

/// A gateway whose candidates answer slower than the pull interval gets one fetch at a time:
/// the next starts once the last has ended, rather than a new connection every interval
/// until the agent runs out of descriptors.
#[test]
fn a_slow_gateway_gets_one_candidate_fetch_at_a_time() {
    let Some(mut w) = World::running() else {
        return;
    };
    // Gateway 10.1.0.11's candidates port takes connections (the kernel's backlog) and
    // never answers.
    let silent = Command::new("ip")
        .args(["netns", "exec", &w.b, "python3", "-c"])
        .arg(
            "import socket, time\n\
             s = socket.socket()\n\
             s.bind(('10.1.0.11', 9100))\n\
             s.listen(64)\n\
             time.sleep(60)\n",
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("a silent listener");
    w.servers.push(Some(silent));
    // HTTP checks (python's server answers `/` with 200), which the pulls need, with a
    // timeout five times the pull interval.
    let text = w
        .config(&BACKENDS)
        .replace("kind = \"tcp\"", "kind = \"http\"\npath = \"/\"")
        .replace(
            "interval_ms = 200\ntimeout_ms = 100",
            "interval_ms = 500\ntimeout_ms = 500",
        )
        + "\n[shield]\npull = \"observe\"\npull_port = 9100\npull_interval_ms = 100\n";
    let before = w.config_generation();
    w.write_config(&text);
    wait_until("the config with pulls", Duration::from_secs(3), || {
        w.config_generation() > before
    });
    let fetches = || {
        let out = ns_command(&w.a, "ss")
            .args(["-Htn", "state", "established", "dst", "10.1.0.11:9100"])
            .output()
            .expect("ss");
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    // Pulls start once the gateway is up again under the HTTP check.
    wait_until("a first fetch", Duration::from_secs(5), || fetches() > 0);
    let mut most = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        most = most.max(fetches());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(most, 1, "fetches at once to a gateway that never answers");
}

/// A config of the most VIPs a node holds that replaces one (another port) is taken: the id
/// of the VIP it drops goes to the one it adds, whose entry replaces the old one's in the
/// same reload (no packet for the old VIP finds the new one's table).
#[test]
fn a_vip_replaced_at_the_limit_takes_the_id_of_the_one_it_replaces() {
    let Some(w) = World::running() else {
        return;
    };
    let with_ports = |ports: std::ops::Range<u16>| {
        let base = w.config(&BACKENDS);
        let (head, vip) = base.split_at(base.find("[[vip]]").expect("a VIP"));
        let mut text = head.to_string();
        for port in ports {
            text.push_str(&vip.replace("port = 80", &format!("port = {port}")));
            text.push('\n');
        }
        text
    };
    let max = sluice_common::MAX_VIPS as u16;
    let ports = |p: &mut Probe| {
        let mut ports: Vec<u16> =
            p.dp.vips()
                .expect("vips")
                .into_iter()
                .filter(|(_, m)| m.flags & sluice_common::VIP_ADDRESS_MARKER == 0)
                .map(|(k, _)| u16::from_be(k.port))
                .collect();
        ports.sort_unstable();
        ports
    };
    let before = w.config_generation();
    w.write_config(&with_ports(80..80 + max));
    wait_until(
        "the config of the most VIPs",
        Duration::from_secs(5),
        || w.config_generation() > before,
    );
    let vip_id = |p: &Probe, port: u16| {
        p.dp.vips()
            .expect("vips")
            .into_iter()
            .find(|(k, m)| {
                u16::from_be(k.port) == port && m.flags & sluice_common::VIP_ADDRESS_MARKER == 0
            })
            .map(|(_, m)| m.id)
            .expect("the VIP")
    };
    let first = w.probe(|p| {
        assert_eq!(ports(p), (80..80 + max).collect::<Vec<_>>());
        // Traffic counted against the first VIP's id.
        p.send(ip4("192.0.2.9"), 30000, true).expect("forwarded");
        let id = vip_id(p, 80);
        assert!(p.dp.vip_traffic(id).expect("traffic").packets > 0);
        id
    });
    // The first VIP (port 80) replaced by one on port 80 + max.
    let before = w.config_generation();
    w.write_config(&with_ports(81..81 + max));
    wait_until(
        "the config with one VIP replaced",
        Duration::from_secs(5),
        || w.config_generation() > before,
    );
    w.probe(|p| {
        assert_eq!(ports(p), (81..81 + max).collect::<Vec<_>>());
        // It took the first one's id, and none of its counts.
        assert_eq!(vip_id(p, 80 + max), first);
        let traffic = p.dp.vip_traffic(first).expect("traffic");
        assert_eq!((traffic.packets, traffic.bytes), (0, 0));
    });
    let status: serde_json::Value =
        serde_json::from_str(&w.cli_ok(&["status", "--json"])).expect("json");
    assert!(status["config"]["last_error"].is_null(), "{status}");
}

/// With `manage_sysctls = false`, the agent changes no sysctl, attaching included: a
/// restart leaves `accept_local` as the operator set it, and reports it instead.
#[test]
fn an_agent_told_not_to_manage_sysctls_sets_none_when_it_attaches() {
    let Some(mut w) = World::running() else {
        return;
    };
    let text = w.config(&BACKENDS).replace(
        "flow_table_size = 4096\n",
        "flow_table_size = 4096\nmanage_sysctls = false\n",
    );
    w.write_config(&text);
    wait_until("the reload", Duration::from_secs(5), || {
        w.config_generation() == 2
    });
    let knob = "/proc/sys/net/ipv4/conf/ext0/accept_local";
    in_ns(&w.a, || {
        std::fs::write(knob, "0").expect("accept_local off")
    });
    w.stop_agent();
    w.start_agent();
    wait_until("the agent's admin API", Duration::from_secs(10), || {
        in_ns(&w.a, || {
            std::net::TcpStream::connect("127.0.0.1:19180").is_ok()
        })
    });
    wait_until("the check failing", Duration::from_secs(5), || {
        healthz(&w).0 == 503
    });
    let (_, body) = healthz(&w);
    assert!(body.contains("accept_local ext0"), "{body}");
    let now = in_ns(&w.a, || std::fs::read_to_string(knob).expect("read"));
    assert_eq!(now.trim(), "0", "accept_local was changed");
}

/// A backend id that changes hands carries nothing over from the backend that had it: flow
/// entries name a backend by id alone, so a stale entry of the removed backend would send its
/// flow to the new one (which need not serve that VIP), and the id's traffic counters would
/// be reported as the new backend's.
#[test]
fn a_reused_backend_id_inherits_no_flow_entries_and_no_counters() {
    let Some(mut w) = World::running() else {
        return;
    };
    const NEW: &str = "10.1.0.14";
    let client = "192.0.2.7";
    let ports = 30000..30064;
    let id_of = |p: &Probe, address: &str| {
        let ip: IpAddr = address.parse().expect("literal");
        p.dp.backends()
            .expect("read")
            .into_iter()
            .find(|(_, b)| addr::ip(&b.addr, b.family) == ip)
            .map(|(id, _)| id)
    };
    let apply = |w: &World, backends: &[&str]| {
        let before = w.config_generation();
        w.write_config(&w.config(backends));
        wait_until("the reload", Duration::from_secs(5), || {
            w.config_generation() > before
        });
    };
    let id = w.probe(|p| {
        picks(p, client, ports.clone(), true);
        let id = id_of(p, BACKENDS[2]).expect("an id");
        assert!(flow_entries(p, client, ports.clone()).contains(&Some(id)));
        assert!(p.dp.backend_traffic(id).expect("traffic").packets > 0);
        id
    });
    // The backend leaves; its flow entries stay behind, naming its id.
    apply(&w, &BACKENDS[..2]);
    w.probe(|p| {
        assert_eq!(id_of(p, BACKENDS[2]), None);
        assert!(flow_entries(p, client, ports.clone()).contains(&Some(id)));
    });
    // The same backend coming back takes its own id again, and keeps its flows.
    apply(&w, &BACKENDS);
    w.probe(|p| {
        wait_until("the backend back up", Duration::from_secs(5), || {
            p.flags(BACKENDS[2]) == Some(BACKEND_ALIVE)
        });
        assert_eq!(id_of(p, BACKENDS[2]), Some(id));
        assert!(flow_entries(p, client, ports.clone()).contains(&Some(id)));
        assert!(p.dp.backend_traffic(id).expect("traffic").packets > 0);
    });
    apply(&w, &BACKENDS[..2]);
    // A new backend takes the id it freed.
    sh(&format!("ip -n {} addr add {NEW}/24 dev int1", w.b));
    w.start_server_at(3, NEW);
    apply(&w, &[BACKENDS[0], BACKENDS[1], NEW]);
    w.probe(|p| {
        wait_until("the new backend up", Duration::from_secs(5), || {
            p.flags(NEW) == Some(BACKEND_ALIVE)
        });
        assert_eq!(id_of(p, NEW), Some(id), "the freed id is the lowest free");
        let entries = flow_entries(p, client, ports.clone());
        assert!(!entries.contains(&Some(id)), "{entries:?}");
        let traffic = p.dp.backend_traffic(id).expect("traffic");
        assert_eq!((traffic.packets, traffic.bytes), (0, 0));
    });
}

/// `detach --config` withdraws the VIPs from BGP before it removes anything; when BIRD
/// refuses the withdrawal, it detaches nothing (the routers would go on sending to a node
/// that drops what it gets) unless told `--force`. With no BIRD at all, nothing is
/// announced, and it detaches.
#[test]
fn detach_removes_nothing_while_the_vips_cannot_be_withdrawn_unless_forced() {
    use std::io::{BufRead, BufReader, Write};
    let scratch = sluice_e2e::scratch::Scratch::new("agent-detach");
    let dir = scratch.0.clone();
    let pin_dir = dir.join("pins");
    let pins = || {
        for sub in ["links", "maps"] {
            std::fs::create_dir_all(pin_dir.join(sub)).expect("dir");
            std::fs::write(pin_dir.join(sub).join("x"), "").expect("pin stand-in");
        }
    };
    // A BIRD that refuses every configure.
    let socket = dir.join("bird.ctl");
    let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.write_all(b"0001 BIRD 2.0.12 ready.\n");
            let reader = BufReader::new(conn.try_clone().expect("clone"));
            for _ in reader.lines().map_while(Result::ok) {
                let _ = conn.write_all(b"8002 bird.conf:3:1 syntax error\n");
            }
        }
    });
    let config = |socket: &Path| {
        let path = dir.join("lb.toml");
        std::fs::write(
            &path,
            format!(
                "{}\n[bgp]\nlocal_as = 65001\nrouter_id = \"10.1.0.1\"\n\
                 peers = [{{ address = \"10.1.0.254\", as = 65000 }}]\n\
                 bird_socket = \"{}\"\nbird_dir = \"{}/bird\"\n",
                World::config_text(&pin_dir, &BACKENDS),
                socket.display(),
                dir.display()
            ),
        )
        .expect("config");
        path
    };
    let detach = |config: &Path, force: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice-lb"));
        cmd.args(["detach", "--config"]).arg(config);
        if force {
            cmd.arg("--force");
        }
        cmd.output().expect("detach")
    };
    pins();
    let refusing = config(&socket);
    let out = detach(&refusing, false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("could not withdraw") && stderr.contains("syntax error"),
        "{stderr}"
    );
    assert!(pin_dir.join("links/x").exists(), "nothing is detached");
    let out = detach(&refusing, true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!pin_dir.exists(), "detached when forced");
    // No BIRD on the socket: nothing to withdraw.
    pins();
    let out = detach(&config(&dir.join("no-bird.ctl")), false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("BIRD is not running"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!pin_dir.exists(), "detached");
}
