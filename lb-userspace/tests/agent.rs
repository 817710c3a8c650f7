//! `sluice-lb run` end to end on one machine: the real binary in a network namespace, real
//! backends (TCP servers) in another, health checks over a veth link. After each step the
//! test reads the pinned maps and, through BPF_PROG_TEST_RUN on a second copy of the program
//! sharing those maps, checks where packets go.
//!
//! Needs root. Namespaces, processes and pins are named per run and removed by a guard, on
//! success, failure or panic.

use std::{
    net::IpAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
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

/// Everything this run created, removed on drop.
struct World {
    tag: String,
    a: String,
    b: String,
    pin_dir: PathBuf,
    dir: PathBuf,
    agent: Option<Child>,
    servers: Vec<Option<Child>>,
}

impl World {
    fn new() -> Self {
        let tag = format!("slt{}", std::process::id() % 100000);
        let a = format!("{tag}a");
        let b = format!("{tag}b");
        let dir = std::env::temp_dir().join(format!("sluice-agent-{tag}"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let w = World {
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/sluice-{tag}")),
            tag,
            a,
            b,
            dir,
            agent: None,
            servers: Vec::new(),
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
        let list: Vec<String> = backends
            .iter()
            .map(|b| format!("{{ address = \"{b}\" }}"))
            .collect();
        format!(
            "[node]\ninterfaces = [\"ext0\"]\nxdp_mode = \"generic\"\ntunnel_source_v4 = \"10.1.0.1\"\n\
             pin_dir = \"{}\"\nflow_table_size = 4096\n\n[admin]\nlisten = \"127.0.0.1:19180\"\n\n\
             [health]\nkind = \"tcp\"\nport = 9000\ninterval_ms = {INTERVAL_MS}\ntimeout_ms = 100\nrise = 2\nfall = {FALL}\n\n\
             [[vip]]\naddress = \"{VIP}\"\nport = 80\nprotocol = \"tcp\"\nbackends = [{}]\n",
            self.pin_dir.display(),
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
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.b,
                "python3",
                "-m",
                "http.server",
                "--bind",
                BACKENDS[i],
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
        let config = self.dir.join("lb.toml");
        let n = std::fs::read_dir(&self.dir).map(|d| d.count()).unwrap_or(0);
        let log = std::fs::File::create(self.dir.join(format!("agent-{n}.log"))).expect("log file");
        let child = ns_command(&self.a, env!("CARGO_BIN_EXE_sluice-lb"))
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("agent");
        self.agent = Some(child);
    }

    fn stop_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            // SIGTERM, the way an operator or systemd stops it.
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
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
        let _ = &self.tag;
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

#[test]
fn agent_follows_health_drain_reload_and_restart() {
    if !privileged() {
        return;
    }
    let mut w = World::new();
    for i in 0..3 {
        w.start_server(i);
    }
    w.write_config(&w.config(&BACKENDS));
    // A refused config is reported with file, field and reason.
    let bad = w.dir.join("bad.toml");
    std::fs::write(&bad, w.config(&BACKENDS).replace("rise = 2", "rise = 0")).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-lb"))
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .expect("check");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bad.toml: health.rise: must be at least 1")
    );

    w.start_agent();
    let (a, pin_dir) = (w.a.clone(), w.pin_dir.clone());
    in_ns(&a, || {
        wait_until("pinned maps", Duration::from_secs(10), || {
            pin_dir.join("links/ext0").exists()
        });
    });
    in_ns(&a, || {
        let mut p = Probe::open(&pin_dir);
        wait_until("all backends up", Duration::from_secs(5), || {
            BACKENDS.iter().all(|b| p.flags(b) == Some(BACKEND_ALIVE))
        });
        // New flows spread over all three.
        let mut seen = std::collections::HashSet::new();
        for port in 1000..1060 {
            seen.insert(p.send([203, 0, 113, 7], port, true).expect("forwarded"));
        }
        assert_eq!(seen.len(), 3);
    });

    // A backend dies: it must leave new-flow selection within interval x fall + 100 ms.
    let victim_flow = in_ns(&a, || {
        let mut p = Probe::open(&pin_dir);
        (2000..3000)
            .find(|port| {
                p.send([203, 0, 113, 8], *port, true) == Some(BACKENDS[1].parse().expect("literal"))
            })
            .expect("a flow on the victim")
    });
    let budget = Duration::from_millis(INTERVAL_MS * FALL + 100);
    let took = in_ns(&a, || {
        let p = Probe::open(&pin_dir);
        w.stop_server(1);
        wait_until("victim marked down", Duration::from_secs(3), || {
            p.flags(BACKENDS[1]) == Some(0)
        })
    });
    eprintln!("backend down detected and applied after {took:?} (budget {budget:?})");
    assert!(
        took <= budget + Duration::from_millis(20),
        "took {took:?}, budget {budget:?}"
    );
    in_ns(&a, || {
        let mut p = Probe::open(&pin_dir);
        for port in 1000..1100 {
            assert_ne!(
                p.send([203, 0, 113, 9], port, true),
                Some(BACKENDS[1].parse().expect("literal"))
            );
        }
        // Its established flow is re-picked onto a live backend.
        let now = p
            .send([203, 0, 113, 8], victim_flow, false)
            .expect("forwarded");
        assert_ne!(now, BACKENDS[1].parse::<IpAddr>().expect("literal"));
    });
    w.start_server(1);
    in_ns(&a, || {
        let p = Probe::open(&pin_dir);
        wait_until("victim back up", Duration::from_secs(3), || {
            p.flags(BACKENDS[1]) == Some(BACKEND_ALIVE)
        });
    });

    // Drain through the CLI: established flows stay, new ones avoid it.
    let drained_flow = in_ns(&a, || {
        let mut p = Probe::open(&pin_dir);
        (3000..4000)
            .find(|port| {
                p.send([203, 0, 113, 10], *port, true)
                    == Some(BACKENDS[2].parse().expect("literal"))
            })
            .expect("a flow on the drained backend")
    });
    let (ok, out) = w.cli(&["drain", BACKENDS[2]]);
    assert!(ok, "{out}");
    let (ok, out) = w.cli(&["drain", "10.9.9.9"]);
    assert!(!ok && out.contains("not a backend of any VIP"), "{out}");
    in_ns(&a, || {
        let mut p = Probe::open(&pin_dir);
        assert_eq!(p.flags(BACKENDS[2]), Some(BACKEND_ALIVE | BACKEND_DRAINING));
        assert_eq!(
            p.send([203, 0, 113, 10], drained_flow, false),
            Some(BACKENDS[2].parse().expect("literal"))
        );
        for port in 5000..5100 {
            assert_ne!(
                p.send([203, 0, 113, 11], port, true),
                Some(BACKENDS[2].parse().expect("literal"))
            );
        }
    });
    // Weight 0 through the CLI takes a backend out of new-flow selection; no value restores it.
    let (ok, out) = w.cli(&["weight", BACKENDS[1], "0"]);
    assert!(ok, "{out}");
    in_ns(&a, || {
        let mut p = Probe::open(&pin_dir);
        for port in 7000..7100 {
            assert_ne!(
                p.send([203, 0, 113, 13], port, true),
                Some(BACKENDS[1].parse().expect("literal"))
            );
        }
    });
    let (ok, out) = w.cli(&["weight", BACKENDS[1]]);
    assert!(ok, "{out}");
    let (ok, out) = w.cli(&["weight", BACKENDS[1], "5000"]);
    assert!(
        !ok && out.contains("weight must be between 0 and 1000"),
        "{out}"
    );
    // SIGHUP reloads even an unchanged file.
    let generation = |w: &World| -> u64 {
        let (_, out) = w.cli(&["status", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        v["config"]["generation"].as_u64().expect("generation")
    };
    let before = generation(&w);
    if let Some(agent) = &w.agent {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(agent.id() as i32, libc::SIGHUP) };
    }
    wait_until("SIGHUP reload", Duration::from_secs(3), || {
        generation(&w) == before + 1
    });
    // Undrain restores it; drain again for the rest of the test.
    let (ok, out) = w.cli(&["undrain", BACKENDS[2]]);
    assert!(ok, "{out}");
    in_ns(&a, || {
        let p = Probe::open(&pin_dir);
        assert_eq!(p.flags(BACKENDS[2]), Some(BACKEND_ALIVE));
    });
    let (ok, out) = w.cli(&["drain", BACKENDS[2]]);
    assert!(ok, "{out}");
    let (ok, out) = w.cli(&["status"]);
    assert!(ok && out.contains("draining") && out.contains(VIP), "{out}");

    // A bad reload keeps the last valid config; a good one applies the difference.
    w.write_config(&w.config(&BACKENDS).replace("port = 80", "port = 0"));
    std::thread::sleep(Duration::from_millis(1500));
    let (ok, out) = w.cli(&["status", "--json"]);
    assert!(ok && out.contains("vip[0].port: must not be 0"), "{out}");
    w.write_config(&w.config(&BACKENDS[1..]));
    in_ns(&a, || {
        let p = Probe::open(&pin_dir);
        wait_until("backend 0 removed", Duration::from_secs(3), || {
            p.flags(BACKENDS[0]).is_none()
        });
    });

    // Restart: forwarding goes on while the agent is gone, and the new agent adopts the
    // pinned state without reshuffling anything.
    let before = in_ns(&a, || {
        let mut p = Probe::open(&pin_dir);
        (6000..6040)
            .map(|port| p.send([203, 0, 113, 12], port, true))
            .collect::<Vec<_>>()
    });
    let link_before = link_ids(&pin_dir);
    let (_, out) = w.cli(&["status", "--json"]);
    let st: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert!(st["table_generation"].as_u64().unwrap_or(0) >= 4, "{out}");
    let flows = |p: &Probe| -> Vec<Option<u32>> {
        (6000..6040)
            .map(|port| {
                let key = addr::flow_key(
                    "203.0.113.12".parse().expect("literal"),
                    port,
                    VIP.parse().expect("literal"),
                    80,
                    6,
                );
                p.dp.flow(&key).expect("read").map(|s| s.backend)
            })
            .collect()
    };
    let entries_before = in_ns(&a, || flows(&Probe::open(&pin_dir)));
    assert!(
        entries_before.iter().all(Option::is_some),
        "every SYN left a flow entry"
    );
    w.stop_agent();
    in_ns(&a, || {
        let mut p = Probe::open(&pin_dir);
        let during: Vec<_> = (6000..6040)
            .map(|port| p.send([203, 0, 113, 12], port, false))
            .collect();
        assert_eq!(
            during, before,
            "established flows keep forwarding without the agent"
        );
        assert!(during.iter().all(Option::is_some));
    });
    w.start_agent();
    std::thread::sleep(Duration::from_millis(1000));
    let (ok, out) = w.cli(&["status", "--json"]);
    assert!(ok, "{out}");
    let status: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        status["table_generation"], 0,
        "the adopted tables were already right: {out}"
    );
    // The flow table survived the restart entry for entry.
    assert_eq!(in_ns(&a, || flows(&Probe::open(&pin_dir))), entries_before);
    // The same link, now running the new agent's program: swapped with bpf_link_update.
    let link_after = link_ids(&pin_dir);
    assert_eq!(link_after.0, link_before.0, "link kept");
    assert_ne!(link_after.1, link_before.1, "program replaced");
    in_ns(&a, || {
        let mut p = Probe::open(&pin_dir);
        let after: Vec<_> = (6000..6040)
            .map(|port| p.send([203, 0, 113, 12], port, false))
            .collect();
        assert_eq!(after, before);
    });
    let metrics = in_ns(&a, || {
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
    });
    assert!(
        metrics.contains("sluice_lb_backend_up{backend=\"10.1.0.12\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_lb_backend_draining{backend=\"10.1.0.13\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_lb_packets_total{outcome=\"redirect\"}"),
        "{metrics}"
    );

    // Detach removes everything.
    w.stop_agent();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-lb"))
        .args(["detach", "--pin-dir"])
        .arg(&pin_dir)
        .output()
        .expect("detach");
    assert!(out.status.success());
    assert!(!pin_dir.exists());
    let link = Command::new("ip")
        .args(["-n", &a, "link", "show", "ext0"])
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
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = sluice_lb::attach::detach(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());
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
