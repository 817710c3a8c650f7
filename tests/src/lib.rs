//! The network-namespace harness: clients, a router running BIRD that learns the VIPs from
//! both LB nodes over BGP and spreads them by ECMP, two LB nodes running `sluice-lb` (which
//! drives a BIRD of its own), three gateway nodes running `sluice_decap` and
//! `sluice-gateway` with the VIP on `lo`, and two backends — all on one machine.
//!
//! ```text
//! client 10.10.1.2 ── router ── br0 10.20.0.0/24 ── lb1 .11, lb2 .12   (sluice_lb on eth0, BIRD)
//!                    (BIRD: VIP       ├─ gw1 .21, gw2 .22, gw3 .23   (sluice_decap, VIP on lo)
//!                     → lb1|lb2)      └─ be1 .31, be2 .32            (HTTP backends)
//! ```
//!
//! The BGP side is in [`bgp`].
//!
//! Every namespace, process and pin carries a tag unique to the run; the `World` guard
//! removes them on success, failure or panic, and a new run removes what a killed run left.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub mod attack;
pub mod bgp;
pub mod cgroup;
pub mod flood;
pub mod forward;
pub mod http;
pub mod ns;
pub mod scratch;
pub mod soak;

pub use bgp::Route;
pub use flood::{Flood, FloodReport};
pub use http::{http_get, http_get_as, http_get_from};
pub use ns::{in_new_ns, in_ns, in_ns_command, privileged, sh};

/// The VIP.
pub const VIP: &str = "198.51.100.1";
/// The IPv6 VIP (same service, tunnelled 6in6).
pub const VIP6: &str = "2001:db8::1";
/// Prefix of every namespace this harness makes.
const PREFIX: &str = "sx";

/// The workspace's binaries: `SLUICE_BIN_DIR` if set (the demo uses release builds), else
/// next to the running executable or one level up (test binaries live in `deps/`).
pub fn bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("SLUICE_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let exe = std::env::current_exe().expect("executable path");
    let near = exe.parent().map(|d| d.join(name));
    let up = exe.parent().and_then(|d| d.parent()).map(|d| d.join(name));
    match (near, up) {
        (Some(p), _) if p.exists() => p,
        (_, Some(p)) if p.exists() => p,
        _ => panic!("{name} is missing: run through `cargo xtask test` or `cargo xtask demo`"),
    }
}

/// Removes processes, namespaces and pins left by runs whose process is gone.
fn sweep_leftovers() {
    // BIRDs first: a namespace with a process in it outlives `ip netns del`.
    bgp::sweep_dead_runs();
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        let alive = pid
            .parse::<i32>()
            .is_ok_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            // Its agents, gateways, backends and BIRDs first.
            ns::kill_all_in(name);
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
    // Working directories of runs that were killed outright.
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(rest) = name.strip_prefix(&format!("sluice-e2e-{PREFIX}")) {
                let pid: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
                if pid
                    .parse::<i32>()
                    .is_ok_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
                {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir("/sys/fs/bpf") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(rest) = name.strip_prefix(&format!("{PREFIX}-")) {
                let pid: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
                if pid
                    .parse::<i32>()
                    .is_ok_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
                {
                    let _ = Command::new(bin("sluice-lb"))
                        .args(["detach", "--pin-dir"])
                        .arg(e.path())
                        .output();
                }
            }
        }
    }
}

/// The running topology.
pub struct World {
    tag: String,
    /// Namespace names by role: c, r, l1, l2, g1..g3, b1, b2.
    pub ns: HashMap<&'static str, String>,
    dir: PathBuf,
    procs: HashMap<String, Child>,
    tls: Option<PathBuf>,
    gateways: usize,
    /// Appended to every gateway's config (policies, extra routes).
    gateway_extra: String,
    /// The IPv4 VIP is `weights = "load"` on both LB nodes.
    load_weights: bool,
    /// Appended to both LB nodes' configs.
    lb_extra: String,
    /// The LB nodes' flow-table capacity.
    flow_table_size: u32,
    /// Failed probes before the LB nodes call a gateway down.
    probe_fall: u32,
}

/// The host parts of the client namespace's extra addresses (10.10.1.3 and up; the
/// first client address is 10.10.1.2).
pub const CLIENT_EXTRA_HOSTS: [u8; 3] = [3, 4, 5];

/// Gateway addresses by index 1..=3.
pub fn gateway_addr(i: usize) -> String {
    format!("10.20.0.{}", 20 + i)
}

/// Gateway IPv6 addresses by index.
pub fn gateway_addr6(i: usize) -> String {
    format!("fd20::{}", 20 + i)
}

impl World {
    /// Builds everything and waits until both LB nodes see all three gateways healthy.
    pub fn start() -> World {
        World::start_with(None)
    }

    /// Like [`World::start`]; with `tls`, a directory holding `a.pem`/`a.key` (for
    /// `a.example`) and `b.pem`/`b.key` (for `b.example`), every gateway also serves TLS on
    /// the VIP's port 443, choosing the certificate by SNI, and the LB nodes carry that VIP
    /// port too.
    pub fn start_with(tls: Option<PathBuf>) -> World {
        World::start_full(tls, String::new(), String::new())
    }

    /// Like [`World::start`], with a redis-server on backend node 1 (`10.20.0.31:6379`,
    /// password `sluice-e2e`, reachable from every gateway) and `extra` appended to every gateway's config.
    pub fn start_with_policies(extra: &str) -> World {
        World::start_full(None, extra.to_string(), String::new())
    }

    /// Like [`World::start_with_policies`], with `lb_extra` appended to both LB nodes'
    /// configs (a `[shield]` section, say).
    pub fn start_with_configs(gateway_extra: &str, lb_extra: &str) -> World {
        World::start_full(None, gateway_extra.to_string(), lb_extra.to_string())
    }

    /// Like [`World::start_with_configs`], with LB nodes whose flow tables hold only
    /// `flow_table_size` flows.
    pub fn start_with_flow_table(lb_extra: &str, flow_table_size: u32) -> World {
        World::start_inner(
            None,
            String::new(),
            lb_extra.to_string(),
            flow_table_size,
            2,
        )
    }

    /// Like [`World::start`], with LB nodes that call a gateway down only after `fall`
    /// failed probes (200 ms apart), for links that lose packets.
    pub fn start_with_probe_fall(fall: u32) -> World {
        World::start_inner(None, String::new(), String::new(), 65536, fall)
    }

    fn start_full(tls: Option<PathBuf>, gateway_extra: String, lb_extra: String) -> World {
        World::start_inner(tls, gateway_extra, lb_extra, 65536, 2)
    }

    fn start_inner(
        tls: Option<PathBuf>,
        gateway_extra: String,
        lb_extra: String,
        flow_table_size: u32,
        probe_fall: u32,
    ) -> World {
        sweep_leftovers();
        bgp::adopt_orphans();
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let tag = format!(
            "{PREFIX}{}x{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        let dir = std::env::temp_dir().join(format!("sluice-e2e-{tag}"));
        std::fs::create_dir_all(&dir).expect("dir");
        let roles = ["c", "r", "l1", "l2", "g1", "g2", "g3", "b1", "b2"];
        let ns: HashMap<&'static str, String> =
            roles.iter().map(|r| (*r, format!("{tag}{r}"))).collect();
        let mut w = World {
            tag,
            ns,
            dir,
            procs: HashMap::new(),
            tls,
            gateways: 3,
            gateway_extra,
            load_weights: false,
            lb_extra,
            flow_table_size,
            probe_fall,
        };
        for r in roles {
            sh(&format!("ip netns add {}", w.ns[r]));
            sh(&format!("ip -n {} link set lo up", w.ns[r]));
        }
        w.wire_router_and_client();
        w.wire_nodes();
        w.start_router_bird();
        for i in 1..=3 {
            w.setup_gateway(i);
        }
        w.start_backends();
        for i in 1..=2 {
            w.start_lb(i);
        }
        for i in 1..=2 {
            w.wait_lb_ready(i);
        }
        w.wait_both_announced();
        w
    }

    /// The router's bridge for the node subnet, with forwarding and multipath hashing on,
    /// and the client's link to it.
    fn wire_router_and_client(&self) {
        let r = self.ns["r"].clone();
        sh(&format!("ip -n {r} link add br0 type bridge"));
        sh(&format!("ip -n {r} addr add 10.20.0.1/24 dev br0"));
        sh(&format!("ip -n {r} -6 addr add fd20::1/64 dev br0 nodad"));
        sh(&format!("ip -n {r} link set br0 up"));
        sh(&format!("ip netns exec {r} sysctl -qw net.ipv4.ip_forward=1 net.ipv4.fib_multipath_hash_policy=1 net.ipv6.conf.all.forwarding=1 net.ipv6.fib_multipath_hash_policy=1"));
        // Client link.
        let c = self.ns["c"].clone();
        sh(&format!(
            "ip -n {r} link add c type veth peer name eth0 netns {c}"
        ));
        sh(&format!("ip -n {r} addr add 10.10.1.1/24 dev c"));
        sh(&format!("ip -n {r} link set c up"));
        sh(&format!("ip -n {c} addr add 10.10.1.2/24 dev eth0"));
        // More client addresses, for tests that need clients that differ by address.
        for host in CLIENT_EXTRA_HOSTS {
            sh(&format!("ip -n {c} addr add 10.10.1.{host}/24 dev eth0"));
        }
        sh(&format!("ip -n {c} link set eth0 up"));
        sh(&format!("ip -n {c} route add default via 10.10.1.1"));
        sh(&format!("ip -n {r} -6 addr add fd10::1/64 dev c nodad"));
        sh(&format!("ip -n {c} -6 addr add fd10::2/64 dev eth0 nodad"));
        sh(&format!("ip -n {c} -6 route add default via fd10::1"));
        // A veth hands the next hop partially computed checksums (checksum offload), which
        // are lost once XDP retransmits the frame (XDP_TX): the client computes them itself,
        // as packets from a wire have them.
        sh(&format!("ip netns exec {c} ethtool -K eth0 tx off"));
    }

    /// The LB nodes, gateways and backends on the bridge; the LB nodes forward and their
    /// router-side peers run a pass-all XDP program. No route to the VIPs: the router learns
    /// them from the LB nodes over BGP.
    fn wire_nodes(&self) {
        let r = self.ns["r"].clone();
        // Everything else hangs off the bridge.
        let nodes = [
            ("l1", 11),
            ("l2", 12),
            ("g1", 21),
            ("g2", 22),
            ("g3", 23),
            ("b1", 31),
            ("b2", 32),
        ];
        for (role, host) in nodes {
            self.wire(role, host);
        }
        for role in ["l1", "l2"] {
            sh(&format!(
                "ip netns exec {} sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1",
                self.ns[role]
            ));
            // A NIC drops unicast frames for other MACs before XDP sees them; a veth does
            // not. So that an LB node never forwards frames the router addressed to the
            // other one (the bridge floods them when it forgets a dead node's port), its
            // port gets no unknown unicast.
            sh(&format!(
                "ip -n {r} link set dev {role} type bridge_slave flood off"
            ));
            // veth delivers XDP_TX frames only to a peer that runs XDP: a pass-all program.
            let pins = self.pin_dir(&format!("peer-{role}"));
            self.run_ok(
                &r,
                &[
                    "decap",
                    "--iface",
                    role,
                    "--xdp-mode",
                    "native",
                    "--pin-dir",
                    &pins,
                ],
            );
        }
    }

    /// The two HTTP backends and, when the gateways get policies, a password-protected
    /// redis-server on `b1` for their shared limits.
    fn start_backends(&mut self) {
        for i in 1..=2 {
            let b = self.ns[&*format!("b{i}")].clone();
            let child = in_ns_command(&b, "python3")
                .args([
                    "-m",
                    "http.server",
                    "8080",
                    "--bind",
                    &format!("10.20.0.{}", 30 + i),
                ])
                .current_dir(&self.dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("backend");
            self.procs.insert(format!("b{i}"), child);
        }
        std::fs::write(self.dir.join("index.html"), "hello from a sluice backend\n").expect("page");
        if !self.gateway_extra.is_empty() {
            self.start_redis();
        }
    }

    /// Starts (or restarts) the harness's redis-server on `b1`.
    pub fn start_redis(&mut self) {
        let b = self.ns["b1"].clone();
        let child = in_ns_command(&b, "redis-server")
            .args([
                "--bind",
                "10.20.0.31",
                "--port",
                "6379",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--requirepass", "sluice-e2e"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (installed by cargo xtask setup)");
        self.procs.insert("redis".into(), child);
    }

    /// `sluice_decap`'s counters on gateway `i` (`sluice-lb decap-stats`), by name.
    pub fn decap_counts(&self, i: usize) -> serde_json::Value {
        let out = Command::new(bin("sluice-lb"))
            .args(["decap-stats", "--json", "--pin-dir"])
            .arg(self.pin_dir(&format!("g{i}")))
            .output()
            .expect("sluice-lb decap-stats");
        assert!(
            out.status.success(),
            "decap-stats: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("json")
    }

    fn pin_dir(&self, node: &str) -> String {
        format!(
            "/sys/fs/bpf/{PREFIX}-{}-{}-{node}",
            std::process::id(),
            self.tag
        )
    }

    /// `sluice-lb ARGS --admin 127.0.0.1:9180` against LB node `i`'s agent; panics with its
    /// stderr if it fails.
    pub fn lb_cli(&self, i: usize, args: &[&str]) {
        let mut all = args.to_vec();
        all.extend(["--admin", "127.0.0.1:9180"]);
        self.run_ok(&self.ns[&*format!("l{i}")], &all);
    }

    fn run_ok(&self, ns: &str, args: &[&str]) {
        let out = in_ns_command(ns, bin("sluice-lb"))
            .args(args)
            .output()
            .expect("sluice-lb");
        assert!(
            out.status.success(),
            "sluice-lb {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Connects node `role` to the router's bridge as 10.20.0.`host`.
    fn wire(&self, role: &str, host: u8) {
        let r = &self.ns["r"];
        let n = self.ns[role].clone();
        sh(&format!(
            "ip -n {r} link add {role} type veth peer name eth0 netns {n}"
        ));
        sh(&format!("ip -n {r} link set {role} master br0"));
        sh(&format!("ip -n {r} link set {role} up"));
        sh(&format!("ip -n {n} addr add 10.20.0.{host}/24 dev eth0"));
        sh(&format!("ip -n {n} link set eth0 up"));
        sh(&format!("ip -n {n} route add default via 10.20.0.1"));
        sh(&format!(
            "ip -n {n} -6 addr add fd20::{host}/64 dev eth0 nodad"
        ));
        sh(&format!("ip -n {n} -6 route add default via fd20::1"));
    }

    /// Adds gateway 4 (or the next one): namespace, tunnel endpoint, VIP, gateway process;
    /// then gives it to both LB nodes by rewriting their config files (they reload on
    /// change) and waits until both see it active.
    pub fn add_gateway(&mut self) -> usize {
        let i = self.gateways + 1;
        let role: &'static str = match i {
            4 => "g4",
            5 => "g5",
            _ => panic!("the harness adds at most two gateways"),
        };
        let g = format!("{}{role}", self.tag);
        sh(&format!("ip netns add {g}"));
        sh(&format!("ip -n {g} link set lo up"));
        self.ns.insert(role, g.clone());
        self.wire(role, 20 + i as u8);
        self.setup_gateway(i);
        self.gateways = i;
        for lb in 1..=2 {
            self.write_lb_config(lb);
        }
        for lb in 1..=2 {
            self.wait_lb_ready(lb);
        }
        i
    }

    /// Gateway `i`'s VIPs on `lo`, its tunnel endpoint and its gateway process.
    fn setup_gateway(&mut self, i: usize) {
        let g = self.ns[&*format!("g{i}")].clone();
        sh(&format!("ip -n {g} addr add {VIP}/32 dev lo"));
        sh(&format!("ip -n {g} -6 addr add {VIP6}/128 dev lo nodad"));
        let pins = self.pin_dir(&format!("g{i}"));
        let (v4, v6) = (gateway_addr(i), gateway_addr6(i));
        self.run_ok(
            &g,
            &[
                "decap",
                "--iface",
                "eth0",
                "--addr",
                &v4,
                "--addr",
                &v6,
                // The LB nodes' tunnel sources (.11, .12 and fd20::11, ::12), and nothing
                // else: a tunnel from anywhere else could carry any client address.
                "--from",
                LB_SOURCES_V4,
                "--from",
                LB_SOURCES_V6,
                "--xdp-mode",
                "native",
                "--pin-dir",
                &pins,
            ],
        );
        self.start_gateway(i);
    }

    /// Starts (or restarts) gateway `i`.
    pub fn start_gateway(&mut self, i: usize) {
        let g = self.ns[&*format!("g{i}")].clone();
        let cfg = self.dir.join(format!("gw{i}.toml"));
        let tls = self
            .tls
            .as_ref()
            .map(|d| {
                format!(
                    "[[listener]]\nname = \"vip-tls\"\naddress = \"{VIP}:443\"\n\
                     tls = {{ certificates = [{{ cert = \"{d}/a.pem\", key = \"{d}/a.key\", server_names = [\"a.example\"] }}, \
                     {{ cert = \"{d}/b.pem\", key = \"{d}/b.key\", server_names = [\"b.example\"] }}] }}\n\n",
                    d = d.display()
                )
            })
            .unwrap_or_default();
        std::fs::write(
            &cfg,
            format!(
                "[admin]\nlisten = \"[::]:9000\"\nshutdown_deadline_ms = 5000\ndrain_delay_ms = 1000\n\n\
                 [[listener]]\nname = \"vip\"\naddress = \"{VIP}:80\"\n\n\
                 [[listener]]\nname = \"vip6\"\naddress = \"[{VIP6}]:80\"\n\n{tls}\
                 [[upstream]]\nname = \"app\"\ntargets = [{{ address = \"10.20.0.31:8080\" }}, {{ address = \"10.20.0.32:8080\" }}]\n\n\
                 [[route]]\nname = \"all\"\nupstream = \"app\"\n\n{extra}",
                extra = self.gateway_extra,
            ),
        )
        .expect("gateway config");
        let log = std::fs::File::create(self.dir.join(format!("gw{i}.log"))).expect("log");
        let child = in_ns_command(&g, bin("sluice-gateway"))
            .args(["run", "--workers", "1", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "warn")
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("gateway");
        self.procs.insert(format!("g{i}"), child);
    }

    /// Writes LB node `i`'s config file for the current gateways; returns its path.
    fn write_lb_config(&self, i: usize) -> PathBuf {
        let cfg = self.dir.join(format!("lb{i}.toml"));
        let backends: Vec<String> = (1..=self.gateways)
            .map(|g| format!("{{ address = \"{}\" }}", gateway_addr(g)))
            .collect();
        // Written then renamed, so a running agent never reads half a file.
        let tmp = cfg.with_extension("tmp");
        std::fs::write(
            &tmp,
            format!(
                "[node]\ninterfaces = [\"eth0\"]\nxdp_mode = \"native\"\ntunnel_source_v4 = \"10.20.0.{}\"\ntunnel_source_v6 = \"fd20::{}\"\npin_dir = \"{}\"\nflow_table_size = {table}\n\n\
                 [admin]\nlisten = \"127.0.0.1:9180\"\n\n\
                 [health]\nkind = \"http\"\nport = 9000\npath = \"/readyz\"\ninterval_ms = 200\ntimeout_ms = 100\nrise = 2\nfall = {fall}\n\n\
                 [[vip]]\naddress = \"{VIP}\"\nport = 80\nprotocol = \"tcp\"\nbackends = [{list}]\n{weights}\n\
                 [[vip]]\naddress = \"{VIP6}\"\nport = 80\nprotocol = \"tcp\"\nbackends = [{list6}]\n{tls}{load}\n{lb_extra}\n{bgp}",
                10 + i,
                10 + i,
                self.pin_dir(&format!("l{i}")),
                list = backends.join(", "),
                list6 = (1..=self.gateways)
                    .map(|g| format!("{{ address = \"{}\" }}", gateway_addr6(g)))
                    .collect::<Vec<_>>()
                    .join(", "),
                weights = if self.load_weights {
                    "weights = \"load\"\n"
                } else {
                    ""
                },
                load = if self.load_weights {
                    "\n[load_weights]\nadjust_interval_ms = 1000\n"
                } else {
                    ""
                },
                lb_extra = self.lb_extra,
                // Last: a table header of its own, whatever the extra text ends with.
                bgp = bgp::lb_section(&self.dir, i),
                table = self.flow_table_size,
                fall = self.probe_fall,
                tls = if self.tls.is_some() {
                    format!("\n[[vip]]\naddress = \"{VIP}\"\nport = 443\nprotocol = \"tcp\"\nbackends = [{}]\n", backends.join(", "))
                } else {
                    String::new()
                }
            ),
        )
        .expect("lb config");
        std::fs::rename(&tmp, &cfg).expect("lb config");
        cfg
    }

    /// Makes the IPv4 VIP `weights = "load"` on both LB nodes (they reload their configs),
    /// adjusting once a second.
    pub fn weigh_by_load(&mut self) {
        self.load_weights = true;
        for i in 1..=2 {
            self.write_lb_config(i);
        }
    }

    /// The process id of a harness process (`g1`, `l2`, `b1`, …).
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.procs.get(name).map(Child::id)
    }

    /// Starts (or restarts) the agent of LB node `i`.
    pub fn start_lb(&mut self, i: usize) {
        let l = self.ns[&*format!("l{i}")].clone();
        let cfg = self.write_lb_config(i);
        let log = std::fs::File::create(self.dir.join(format!("lb{i}.log"))).expect("log");
        let child = in_ns_command(&l, bin("sluice-lb"))
            .args(["run", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("agent");
        self.procs.insert(format!("l{i}"), child);
    }

    /// Waits until LB node `i` reports all three gateways active.
    pub fn wait_lb_ready(&self, i: usize) {
        let l = self.ns[&*format!("l{i}")].clone();
        let start = Instant::now();
        loop {
            let out = in_ns_command(&l, bin("sluice-lb"))
                .args(["status", "--json", "--admin", "127.0.0.1:9180"])
                .output()
                .expect("status");
            let text = String::from_utf8_lossy(&out.stdout);
            let vips = if self.tls.is_some() { 3 } else { 2 };
            if out.status.success() && text.matches("\"active\"").count() == self.gateways * vips {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "LB {i} not ready: {text} {}",
                self.log(&format!("lb{i}.log"))
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A log file of this run.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    /// Sends a signal to a process of the topology.
    pub fn signal(&self, name: &str, sig: i32) {
        if let Some(c) = self.procs.get(name) {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// Kills a process and waits for it.
    pub fn kill(&mut self, name: &str) {
        if let Some(mut c) = self.procs.remove(name) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// How many gateways the topology has now.
    pub fn gateway_count(&self) -> usize {
        self.gateways
    }

    /// Requests handled by gateway `i` so far (from its metrics).
    pub fn gateway_requests(&self, i: usize) -> u64 {
        let addr: SocketAddr = format!("{}:9000", gateway_addr(i)).parse().expect("addr");
        let body = in_ns(&self.ns["r"], || {
            http_get(addr, "/metrics").map(|r| r.1).unwrap_or_default()
        });
        body.lines()
            .filter(|l| l.starts_with("sluice_gateway_requests_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let names: Vec<String> = self.procs.keys().cloned().collect();
        for n in names {
            self.kill(&n);
        }
        // The LB nodes' BIRDs run in sessions of their own: killing the agents left them.
        self.kill_lb_birds();
        if std::thread::panicking() {
            for f in ["lb1.log", "lb2.log", "gw1.log", "gw2.log", "gw3.log"] {
                eprintln!("--- {f} ---\n{}", self.log(f));
            }
            eprintln!("{}", self.bird_logs());
        }
        for n in self.ns.values() {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
        if let Ok(entries) = std::fs::read_dir("/sys/fs/bpf") {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().contains(&self.tag) {
                    let _ = Command::new(bin("sluice-lb"))
                        .args(["detach", "--pin-dir"])
                        .arg(e.path())
                        .output();
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The prefix of the LB nodes' IPv4 tunnel sources (10.20.0.8 to .15), which the gateways
/// take tunnels from.
pub const LB_SOURCES_V4: &str = "10.20.0.8/29";
/// The prefix of their IPv6 tunnel sources (fd20::10 to fd20::1f).
pub const LB_SOURCES_V6: &str = "fd20::10/124";

/// Gateway config for [`World::start_with_policies`]: route `/limited` allows 10 requests per
/// client address per 10 minutes, counted in the harness's redis-server, so the limit holds
/// whichever gateway a flow lands on (the end-to-end test and the demo both use it).
pub const PER_CLIENT_LIMIT: &str = r#"
[redis]
url = "redis://:sluice-e2e@10.20.0.31:6379"
timeout_ms = 1000
on_failure = "closed"

[[rate_limit]]
name = "per-client"
requests = 10
window_ms = 600000
key = "client_ip"
store = "redis"

[[route]]
name = "limited"
path = { prefix = "/limited" }
upstream = "app"
rate_limits = ["per-client"]
request_transform = { strip_prefix = "/limited" }
"#;
