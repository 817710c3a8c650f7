//! The VIPs over BGP end to end (#17): each LB node's agent drives a BIRD that announces the
//! VIPs to the router's BIRD, which installs each as one multipath route (ECMP), with BFD on
//! every session. Maintenance and graceful stops under load, a node's death under load,
//! backends all failing, and a node's restart.

use std::{
    io::Write,
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime},
};

use sluice_e2e::{
    bgp::{BFD_INTERVAL_MS, BFD_MULTIPLIER, WITHDRAW_DELAY_MS},
    http::{read_one, request_text},
    http_get, http_get_as, in_ns, privileged, World, VIP, VIP6,
};

/// One at a time: the tests time failovers on a two-core machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn vip() -> SocketAddr {
    format!("{VIP}:80").parse().expect("literal")
}

fn vip6() -> SocketAddr {
    format!("[{VIP6}]:80").parse().expect("literal")
}

/// How long the router may take to follow an announcement or a withdrawal: BIRD's
/// reconfiguration, one UPDATE, the kernel route.
const CONVERGE: Duration = Duration::from_secs(5);

/// LB node `i`'s `bgp` status.
fn bgp(w: &World, i: usize) -> serde_json::Value {
    w.lb_status(i)["bgp"].clone()
}

/// (address, announced, reason) of each VIP address in LB node `i`'s status.
fn announcements(w: &World, i: usize) -> Vec<(String, bool, String)> {
    bgp(w, i)["vips"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|v| {
            (
                v["address"].as_str().unwrap_or("").to_string(),
                v["announced"].as_bool().unwrap_or(false),
                v["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Packets LB node `i` forwarded for its VIPs so far (both families).
fn vip_packets(w: &World, i: usize) -> u64 {
    w.lb_status(i)["vips"]
        .as_array()
        .map(|vs| vs.iter().filter_map(|v| v["packets"].as_u64()).sum())
        .unwrap_or(0)
}

/// Waits until `check` holds, polling every 100 ms; panics with `what` after `timeout`.
fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < timeout, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the router sends both VIPs to exactly `nodes`; the longer of the two waits.
fn wait_both(w: &World, nodes: &[usize]) -> Duration {
    let a = w.wait_routed(VIP, nodes, CONVERGE);
    let b = w.wait_routed(VIP6, nodes, CONVERGE);
    a.max(b)
}

/// A request on an open keep-alive connection: its status, if one came back.
fn ask(s: &mut TcpStream, host: &str) -> Option<u16> {
    let text =
        request_text("GET", "/index.html", host, &[], "").replace("Connection: close\r\n", "");
    s.write_all(text.as_bytes()).ok()?;
    read_one(s).map(|r| r.status)
}

/// A keep-alive connection to `addr` with one request answered.
fn keep_alive(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    match ask(&mut s, &addr.to_string()) {
        Some(200) => Ok(s),
        other => Err(std::io::Error::other(format!("first request: {other:?}"))),
    }
}

/// What one client thread saw.
#[derive(Default)]
struct Tally {
    ok: u64,
    /// When each failed request started, and how it failed.
    failed: Vec<(Instant, String)>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.failed.extend(other.failed);
    }
}

/// Clients in the client namespace until stopped: `fresh` threads each making one GET per
/// new connection, alternating between the IPv4 and the IPv6 VIP, and `kept` threads each
/// holding `per` keep-alive connections (half of them to each VIP) with a GET on each in
/// turn every 20 ms. A keep-alive connection that fails counts once and is opened again.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Tally>>,
}

impl Load {
    fn start(w: &World, fresh: usize, kept: usize, per: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for k in 0..fresh {
            let (ns, stop) = (w.ns["c"].clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                in_ns(&ns, || {
                    let mut t = Tally::default();
                    let mut n = k;
                    // Bounded in count as well as by the stop flag.
                    while !stop.load(Ordering::Relaxed) && n < 100_000 {
                        n += 1;
                        let addr = if n % 2 == 0 { vip() } else { vip6() };
                        let started = Instant::now();
                        match http_get(addr, "/index.html") {
                            Ok((200, _)) => t.ok += 1,
                            other => t.failed.push((started, format!("new {addr}: {other:?}"))),
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    t
                })
            }));
        }
        for _ in 0..kept {
            let (ns, stop) = (w.ns["c"].clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                in_ns(&ns, || {
                    let mut t = Tally::default();
                    let addrs: Vec<SocketAddr> = (0..per)
                        .map(|j| if j % 2 == 0 { vip() } else { vip6() })
                        .collect();
                    let mut conns: Vec<Option<TcpStream>> = addrs
                        .iter()
                        .map(|a| match keep_alive(*a) {
                            Ok(s) => Some(s),
                            Err(e) => {
                                t.failed.push((Instant::now(), format!("open {a}: {e}")));
                                None
                            }
                        })
                        .collect();
                    let mut rounds = 0;
                    while !stop.load(Ordering::Relaxed) && rounds < 10_000 {
                        rounds += 1;
                        for (c, addr) in conns.iter_mut().zip(&addrs) {
                            let started = Instant::now();
                            let answer = c.as_mut().and_then(|s| ask(s, &addr.to_string()));
                            if answer == Some(200) {
                                t.ok += 1;
                                continue;
                            }
                            if c.is_some() {
                                t.failed.push((started, format!("kept {addr}: {answer:?}")));
                            }
                            *c = keep_alive(*addr).ok();
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    t
                })
            }));
        }
        Load { stop, threads }
    }

    fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Tally::default();
        for t in self.threads {
            all.merge(t.join().expect("client thread"));
        }
        all
    }
}

#[test]
fn both_lb_nodes_announce_both_vips_and_the_router_spreads_them() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let w = World::start();
    for vip in [VIP, VIP6] {
        let route = w.router_route(vip).expect("a route");
        eprintln!("router: {vip} {route:?}");
        assert_eq!(route.protocol, "bird", "installed by the router's BIRD");
        assert_eq!(w.routed_nodes(vip), [1, 2], "{route:?}");
    }
    let routes = w.birdc("r", "show route");
    eprintln!("{routes}");
    for (vip, proto) in [
        (VIP, "lb1v4"),
        (VIP, "lb2v4"),
        (VIP6, "lb1v6"),
        (VIP6, "lb2v6"),
    ] {
        assert!(routes.contains(vip) && routes.contains(proto), "{routes}");
    }
    for i in 1..=2 {
        // The agent reads BIRD's sessions once a second.
        wait_for(
            &format!("LB {i} reports both sessions Established"),
            CONVERGE,
            || {
                bgp(&w, i)["sessions"]
                    .as_array()
                    .is_some_and(|s| s.len() == 2 && s.iter().all(|s| s["info"] == "Established"))
            },
        );
        let b = bgp(&w, i);
        eprintln!("LB {i}: {b}");
        // The BIRD the agent started holds none of its power over the data plane.
        let pid = w.lb_bird_pid(i).expect("LB's BIRD");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let set = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
                .unwrap_or_else(|| panic!("{name} in {status}"))
        };
        // CAP_NET_BIND_SERVICE, CAP_NET_ADMIN, CAP_NET_RAW and nothing else, in what it may
        // hold and what an exec of its own would give back.
        let bird = (1 << 10) | (1 << 12) | (1 << 13);
        assert_eq!(set("CapBnd:"), bird, "LB {i}: {status}");
        assert_eq!(set("CapPrm:") & !bird, 0, "LB {i}: {status}");
        assert_eq!(set("CapInh:") | set("CapAmb:"), 0, "LB {i}: {status}");
        assert_eq!(b["enabled"], true);
        assert_eq!(b["maintenance"], false);
        assert!(b["error"].is_null(), "{b}");
        let mut a = announcements(&w, i);
        a.sort();
        assert_eq!(
            a,
            [
                (VIP.to_string(), true, String::new()),
                (VIP6.to_string(), true, String::new())
            ],
            "LB {i}"
        );
    }
    // Both families answer through the VIPs.
    let answers = in_ns(&w.ns["c"], || {
        [vip(), vip6()].map(|a| http_get(a, "/index.html").map(|r| r.0).ok())
    });
    assert_eq!(answers, [Some(200), Some(200)]);
}

#[test]
fn maintenance_and_a_graceful_stop_under_load_fail_no_request() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let mut w = World::start();
    let load = Load::start(&w, 3, 3, 6);
    std::thread::sleep(Duration::from_millis(800));

    // Maintenance: node 1 withdraws both VIPs, every flow moves to node 2.
    let takeovers = w.lb_counter(2, "flow_miss_other");
    w.lb_maintenance(1, true);
    let moved = wait_both(&w, &[2]);
    eprintln!("maintenance on: the router sends everything to LB 2 after {moved:?}");
    let b = bgp(&w, 1);
    assert_eq!(b["maintenance"], true, "{b}");
    assert!(
        announcements(&w, 1)
            .iter()
            .all(|(_, on, why)| !on && why == "maintenance"),
        "{b}"
    );
    // Let the last packets routed to node 1 arrive, then nothing more reaches it.
    std::thread::sleep(Duration::from_millis(300));
    let quiet = vip_packets(&w, 1);
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(vip_packets(&w, 1), quiet, "LB 1 still gets VIP traffic");
    let taken = w.lb_counter(2, "flow_miss_other") - takeovers;
    eprintln!("LB 2 took over {taken} packets of flows it had not seen");
    assert!(taken > 0, "keep-alive connections moved to LB 2");
    w.lb_maintenance(1, false);
    let back = wait_both(&w, &[1, 2]);
    eprintln!("maintenance off: LB 1 back after {back:?}");
    std::thread::sleep(Duration::from_millis(800));

    // A graceful stop: the agent withdraws, waits withdraw_delay_ms, exits; the router has
    // moved the flows before it goes (the pinned program would still forward anyway).
    let watch = RouteWatch::start(&w);
    let stopping = SystemTime::now();
    let stopped = w.stop_lb(1);
    let seen = watch.stop();
    let moved = seen
        .iter()
        .find(|(_, v4, v6)| v4 == &[2] && v6 == &[2])
        .and_then(|(at, _, _)| at.duration_since(stopping).ok())
        .unwrap_or_else(|| {
            // Seen once in CI, not reproduced in isolation: say what the router did.
            panic!(
                "the router moved both VIPs to LB 2 before LB 1's agent exited ({stopped:?} \
                 after the SIGTERM); routes seen (v4, v6): {:?}; LB 1's log: {}",
                distinct(&seen),
                w.log("lb1.log")
            )
        });
    eprintln!(
        "LB 1's agent stopped gracefully in {stopped:?}; the router had moved both VIPs to \
         LB 2 {moved:?} after the SIGTERM"
    );
    assert!(
        stopped >= Duration::from_millis(WITHDRAW_DELAY_MS),
        "it waited withdraw_delay_ms before exiting: {stopped:?}"
    );
    assert!(moved < stopped, "the flows moved before the agent exited");
    assert_eq!(w.routed_nodes(VIP), [2]);
    assert_eq!(w.routed_nodes(VIP6), [2]);
    assert!(
        w.log("lb1.log")
            .contains("withdrawn from BGP; waiting before exit"),
        "{}",
        w.log("lb1.log")
    );
    std::thread::sleep(Duration::from_millis(500));
    w.start_lb(1);
    w.wait_lb_ready(1);
    let back = wait_both(&w, &[1, 2]);
    eprintln!("LB 1's agent restarted: announced again after {back:?}");
    std::thread::sleep(Duration::from_millis(800));

    let t = load.stop();
    eprintln!(
        "maintenance and graceful stop under load: {} requests, {} failed",
        t.ok,
        t.failed.len()
    );
    assert!(t.ok > 300, "{}", t.ok);
    assert!(t.failed.is_empty(), "{:?}", t.failed);
}

#[test]
fn a_dead_lb_node_keeps_its_connections_and_fails_new_ones_only_within_bfd_detection() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let mut w = World::start();
    let c = w.ns["c"].clone();
    // Keep-alive connections, opened before the failure, spread over both nodes by ECMP.
    const KEPT: usize = 200;
    let mut conns: Vec<(SocketAddr, TcpStream)> = in_ns(&c, || {
        (0..KEPT)
            .map(|j| {
                let a = if j % 2 == 0 { vip() } else { vip6() };
                (a, keep_alive(a).expect("keep-alive connection"))
            })
            .collect()
    });

    // New connections all along: one started every 5 ms, each in a thread of its own so
    // that one waiting does not delay the next, each to connect within 250 ms (a SYN
    // routed to the dead node is lost, and TCP would send it again only after 1 s).
    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(Mutex::new(Vec::<(Instant, bool)>::new()));
    let prober = {
        let (c, stop, attempts) = (c.clone(), stop.clone(), attempts.clone());
        std::thread::spawn(move || {
            in_ns(&c, || {
                let mut each = Vec::new();
                // Threads inherit this thread's network namespace.
                while !stop.load(Ordering::Relaxed) && each.len() < 2_000 {
                    let attempts = attempts.clone();
                    each.push(std::thread::spawn(move || {
                        let from = "10.10.1.2".parse().expect("literal");
                        let started = Instant::now();
                        let ok = http_get_as(
                            vip(),
                            from,
                            "/index.html",
                            &[],
                            Duration::from_millis(250),
                        )
                        .is_ok_and(|r| r.0 == 200);
                        attempts.lock().expect("lock").push((started, ok));
                    }));
                    std::thread::sleep(Duration::from_millis(5));
                }
                for t in each {
                    t.join().expect("attempt");
                }
            })
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let takeovers = w.lb_counter(2, "flow_miss_other");
    let watch = RouteWatch::start(&w);
    std::thread::sleep(Duration::from_millis(100));

    let (killed, killed_at) = (Instant::now(), SystemTime::now());
    w.kill_lb_node(1);
    // A request on every kept connection, ten at a time (all at once, they would
    // overwhelm the backends behind the gateways and come back 502): those routed to the
    // dead node are lost until the router moves them, and TCP sends them again.
    let answers: Vec<Option<u16>> = in_ns(&c, || {
        let mut answers = Vec::new();
        for wave in conns.chunks_mut(10) {
            let sent: Vec<bool> = wave
                .iter_mut()
                .map(|(a, s)| {
                    let text = request_text("GET", "/index.html", &a.to_string(), &[], "")
                        .replace("Connection: close\r\n", "");
                    s.write_all(text.as_bytes()).is_ok()
                })
                .collect();
            for ((_, s), sent) in wave.iter_mut().zip(sent) {
                answers.push(sent.then(|| read_one(s).map(|r| r.status)).flatten());
            }
        }
        answers
    });
    w.wait_routed(VIP, &[2], CONVERGE);
    w.wait_routed(VIP6, &[2], CONVERGE);
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    prober.join().expect("prober");
    let seen = watch.stop();
    let converged = seen
        .iter()
        .find(|(at, v4, v6)| *at >= killed_at && v4 == &[2] && v6 == &[2])
        .and_then(|(at, _, _)| at.duration_since(killed_at).ok())
        .expect("the router moved both VIPs to LB 2");

    let attempts = attempts.lock().expect("lock");
    let failed_before = attempts.iter().filter(|(t, ok)| *t < killed && !ok).count();
    let failed: Vec<Duration> = attempts
        .iter()
        .filter(|(t, ok)| *t >= killed && !ok)
        .map(|(t, _)| t.duration_since(killed))
        .collect();
    // New connections succeed again from the start of the last one that failed.
    let window = failed.iter().max().copied().unwrap_or_default();
    // Answered at all on the same connection: it reached the gateway that holds it (any
    // other would have reset it). A 502 is that gateway's upstream failing, not the LB.
    let survived = answers.iter().filter(|a| a.is_some()).count();
    let ok = answers.iter().filter(|a| **a == Some(200)).count();
    let taken = w.lb_counter(2, "flow_miss_other") - takeovers;
    let detection = Duration::from_millis(BFD_INTERVAL_MS * BFD_MULTIPLIER);
    // The bound: BFD's detection (3 × 100 ms), the router's BIRD withdrawing LB 1's paths
    // and rewriting the kernel route (milliseconds), and room for a loaded two-core
    // machine: 1.5 s.
    let bound = Duration::from_millis(1500);
    eprintln!(
        "LB 1 killed: the router had only LB 2 for both VIPs {converged:?} after the kill \
         (BFD detection {detection:?}); new connections failed for {window:?} after the kill \
         ({} of {} attempts failed; bound {bound:?}); {survived} of {KEPT} keep-alive \
         connections answered on the same connection, {ok} with 200; LB 2 took over {taken} \
         packets of flows it had not seen",
        failed.len(),
        attempts.len()
    );
    eprintln!("{}", w.birdc("r", "show protocols"));
    assert_eq!(failed_before, 0, "no failure before the kill");
    assert!(attempts.len() > 100, "{}", attempts.len());
    assert!(
        survived * 100 >= KEPT * 99 && ok * 100 >= KEPT * 99,
        "at least 99% of the connections survive: {answers:?}"
    );
    assert!(taken > 0, "LB 2 carried LB 1's established flows");
    // BFD noticed, not something faster (a closed TCP connection): it declares the session
    // down once `multiplier` intervals pass without a packet, counted from the last packet
    // before the kill, so at least (multiplier - 1) intervals after it.
    let earliest = Duration::from_millis(BFD_INTERVAL_MS * (BFD_MULTIPLIER - 1));
    assert!(
        converged >= earliest,
        "noticed before BFD could: {converged:?}"
    );
    assert!(
        converged < bound,
        "the router converged after {converged:?}"
    );
    assert!(
        window < bound,
        "new connections failed for {window:?} after the kill"
    );
}

#[test]
fn a_vip_whose_backends_all_fail_is_withdrawn_by_both_nodes_and_comes_back_with_one() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let mut w = World::start();
    let killed = Instant::now();
    for g in 1..=3 {
        w.kill(&format!("g{g}"));
    }
    let gone = wait_both(&w, &[]);
    eprintln!(
        "all gateways killed: both VIPs withdrawn by both nodes {:?} after the kill",
        killed.elapsed()
    );
    let _ = gone;
    for i in 1..=2 {
        let a = announcements(&w, i);
        assert!(
            a.len() == 2
                && a.iter()
                    .all(|(_, on, why)| !on && why == "no backend alive"),
            "LB {i}: {a:?}"
        );
    }
    let routes = w.birdc("r", "show route");
    assert!(!routes.contains(VIP) && !routes.contains(VIP6), "{routes}");

    let started = Instant::now();
    w.start_gateway(2);
    let back = wait_both(&w, &[1, 2]);
    eprintln!(
        "gateway 2 back: both VIPs announced by both nodes {:?} after its start",
        started.elapsed()
    );
    let _ = back;
    let answers = in_ns(&w.ns["c"], || {
        [vip(), vip6()].map(|a| http_get(a, "/index.html").map(|r| r.0).ok())
    });
    assert_eq!(answers, [Some(200), Some(200)]);
}

#[test]
fn an_agent_restarting_beside_its_running_bird_withdraws_nothing() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let mut w = World::start();
    // The agent alone dies and comes back; its BIRD, and the pinned maps that keep
    // forwarding, stay. Nothing is withdrawn: the router's BIRD keeps LB 1's paths as they
    // were learned (a withdrawal and a new announcement, however quick, would show as a
    // new time on the path), and its table keeps both nodes throughout.
    let before = learned_from_lb1(&w);
    let watch = RouteWatch::start(&w);
    w.kill("l1");
    std::thread::sleep(Duration::from_millis(500));
    w.start_lb(1);
    w.wait_lb_ready(1);
    wait_for("LB 1 announces again", CONVERGE, || {
        announcements(&w, 1).iter().all(|(_, on, _)| *on)
    });
    std::thread::sleep(Duration::from_millis(1500));
    let seen = watch.stop();
    let after = learned_from_lb1(&w);
    eprintln!(
        "agent restarted with BIRD running: the router's next hops over {} polls: {:?}; \
         LB 1's paths in the router's BIRD before {before:?}, after {after:?}",
        seen.len(),
        distinct(&seen)
    );
    assert_eq!(before.len(), 2, "{before:?}");
    assert_eq!(
        after, before,
        "LB 1's paths were withdrawn and learned again"
    );
    assert!(
        seen.iter()
            .all(|(_, v4, v6)| v4 == &[1, 2] && v6 == &[1, 2]),
        "the router kept both nodes: {:?}",
        distinct(&seen)
    );
}

#[test]
fn a_restarting_node_announces_only_once_its_maps_are_written() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let mut w = World::start();

    // Its maps removed while its BIRD and BIRD's sessions stay up: the agent is stopped
    // gracefully (it withdraws), its pins are removed, and it starts again from empty
    // maps. An announcement reaches the router within milliseconds here, so one made before
    // the maps hold the VIPs and a live backend would show at once, as failed requests and
    // as a route seen before the agent decided.
    w.stop_lb(1);
    wait_both(&w, &[2]);
    w.remove_lb_pins(1);
    comes_back(&mut w, "maps removed, sessions up", |w| w.start_lb(1));

    // Dead and rebooted: node 1 dies (link, agent and BIRD), then comes back with its
    // pins removed: the agent starts BIRD again and announces once its maps are written.
    w.kill_lb_node(1);
    wait_both(&w, &[2]);
    comes_back(&mut w, "dead and rebooted", |w| w.revive_lb_node(1, true));
}

/// Runs `restart` (which brings LB node 1 back) under load, watching the router: no
/// request fails, and the router sends node 1 traffic only once its agent has announced,
/// which it does only after its first tables are written (its `sluice-lb running` line) and
/// a backend is up.
fn comes_back(w: &mut World, what: &str, restart: impl FnOnce(&mut World)) {
    let load = Load::start(w, 3, 3, 6);
    std::thread::sleep(Duration::from_millis(500));
    let watch = RouteWatch::start(w);
    let restarted = SystemTime::now();
    restart(w);
    wait_both(w, &[1, 2]);
    std::thread::sleep(Duration::from_millis(1000));
    let seen = watch.stop();
    let t = load.stop();
    let ms = |at: SystemTime| match at.duration_since(restarted) {
        Ok(d) => d.as_secs_f64() * 1e3,
        Err(e) => -e.duration().as_secs_f64() * 1e3,
    };
    let started = *w
        .log_times("lb1.log", &["sluice-lb running"])
        .last()
        .expect("the agent logged its start");
    for (family, vip) in [(0, VIP), (1, VIP6)] {
        let said = *w
            .log_times("lb1.log", &["announcing over BGP", &format!("vip={vip}")])
            .last()
            .expect("the agent logged the announcement");
        let seen_at = seen
            .iter()
            .find(|(_, v4, v6)| [v4, v6][family].contains(&1))
            .map(|(at, _, _)| *at)
            .expect("node 1 came back");
        eprintln!(
            "{what}: {vip}: agent running at {:.0} ms, announcing logged at {:.0} ms, in the \
             router's table at {:.0} ms (polled every 20 ms)",
            ms(started),
            ms(said),
            ms(seen_at)
        );
        assert!(
            started <= said,
            "announced before the first tables were written"
        );
        // The log line follows BIRD's answer, which may come after the router already
        // installed the route: one polling period of slack.
        assert!(
            seen_at + Duration::from_millis(20) >= said,
            "routed to node 1 {:.0} ms before its agent announced",
            ms(said) - ms(seen_at)
        );
    }
    eprintln!(
        "{what}: under load {} requests, {} failed; LB 1 forwarded {} VIP packets",
        t.ok,
        t.failed.len(),
        vip_packets(w, 1)
    );
    assert!(vip_packets(w, 1) > 0, "node 1 took its share again");
    assert!(t.ok > 300, "{}", t.ok);
    // A node that announced from a partial view of its backends (the first one up, the
    // others not probed yet) has a table unlike LB 2's: the established flows the router
    // moves to it change gateway and are reset.
    let timeline: Vec<String> = w
        .log("lb1.log")
        .lines()
        .filter(|l| l.contains("backend up") || l.contains("announcing"))
        .map(str::to_string)
        .collect();
    assert!(
        t.failed.is_empty(),
        "{what}: requests failed while LB 1 came back: {:?}\nLB 1: {timeline:#?}",
        t.failed
    );
}

/// One look at the router: when, and the LB nodes it sends the IPv4 and the IPv6 VIP to.
type Seen = (SystemTime, Vec<usize>, Vec<usize>);

/// The router's nodes for both VIPs, every 20 ms, with the wall-clock time of each poll.
struct RouteWatch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Seen>>,
}

impl RouteWatch {
    fn start(w: &World) -> RouteWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let r = w.ns["r"].clone();
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !flag.load(Ordering::Relaxed) && seen.len() < 5_000 {
                let at = SystemTime::now();
                seen.push((at, routed(&r, VIP), routed(&r, VIP6)));
                std::thread::sleep(Duration::from_millis(20));
            }
            seen
        });
        RouteWatch { stop, thread }
    }

    fn stop(self) -> Vec<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("route watch")
    }
}

/// The states seen, in order, without repeats.
fn distinct(seen: &[Seen]) -> Vec<(Vec<usize>, Vec<usize>)> {
    let mut out: Vec<(Vec<usize>, Vec<usize>)> = Vec::new();
    for (_, a, b) in seen {
        if out.last() != Some(&(a.clone(), b.clone())) {
            out.push((a.clone(), b.clone()));
        }
    }
    out
}

/// The LB nodes the router in namespace `r` sends `vip` to.
fn routed(r: &str, vip: &str) -> Vec<usize> {
    sluice_e2e::bgp::routed_nodes_in(r, vip)
}

/// LB 1's paths in the router's BIRD, each with the time BIRD learned it
/// (`lb1v4 12:00:01.234`).
fn learned_from_lb1(w: &World) -> Vec<String> {
    w.birdc("r", "show route")
        .lines()
        .filter_map(|l| {
            let at = l.find("[lb1v")?;
            let rest = &l[at + 1..];
            Some(rest[..rest.find(']')?].to_string())
        })
        .collect()
}
