//! The shield end to end: abuse the gateways see is dropped in XDP by both LB nodes, and a
//! spoofed SYN flood neither evicts established flows nor stops new ones.

use std::{
    io::Write,
    net::{IpAddr, SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use sluice_e2e::{
    http::{read_one, request_text},
    http_get_as, in_ns, privileged, Flood, World, VIP,
};

/// One at a time: the flood saturates a core, and the abuse test times its block.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn vip() -> SocketAddr {
    format!("{VIP}:80").parse().expect("literal")
}

const GOOD: &str = "10.10.1.2";
const ABUSER: &str = "10.10.1.3";
const ALLOWED_ABUSER: &str = "10.10.1.4";
/// A gateway offers a client after this many 401s in its window.
const AUTH_THRESHOLD: u32 = 5;
/// How long a gateway holds a candidate (and so how long the LB nodes block it).
const TTL_SECS: u64 = 6;

/// The abuser's sockets on the gateways (any state, TIME_WAIT included), by gateway and
/// port: a connection that reached a gateway's kernel leaves one.
fn abuser_sockets(w: &World) -> std::collections::BTreeSet<String> {
    (1..=3)
        .flat_map(|i| {
            let out = sluice_e2e::in_ns_command(&w.ns[&*format!("g{i}")], "ss")
                .args(["-Htan", "dst", ABUSER])
                .output()
                .expect("ss");
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| {
                    l.split_whitespace()
                        .nth(4)
                        .map(|peer| format!("g{i} {peer}"))
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The prefixes LB node `i` blocks, with their reasons.
fn blocked(w: &World, i: usize) -> Vec<(String, String)> {
    w.lb_status(i)["shield"]["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| {
            (
                e["prefix"].as_str().unwrap_or("").to_string(),
                e["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn get(from: &str, path: &str, extra: &[&str]) -> std::io::Result<(u16, String)> {
    let from: IpAddr = from.parse().expect("literal");
    http_get_as(vip(), from, path, extra, Duration::from_secs(1))
}

/// A well-behaved client in a loop until `stop`: (requests, failures).
fn good_client(ns: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(u64, u64)> {
    std::thread::spawn(move || {
        in_ns(&ns, || {
            let (mut n, mut failed) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                if !matches!(get(GOOD, "/index.html", &[]), Ok((200, _))) {
                    failed += 1;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (n, failed)
        })
    })
}

#[test]
fn an_abusive_client_is_dropped_in_xdp_by_both_lb_nodes_and_the_good_one_never_fails() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let gateway = sluice_e2e::attack::gateway_shield(AUTH_THRESHOLD, TTL_SECS);
    let w = World::start_with_configs(&gateway, sluice_e2e::attack::LB_SHIELD);
    let c = w.ns["c"].clone();
    let stop = Arc::new(AtomicBool::new(false));
    let good = good_client(c.clone(), stop.clone());

    // The allow-listed abuser collects its 401s and is never blocked.
    let allowed: Vec<u16> = in_ns(&c, || {
        (0..AUTH_THRESHOLD * 4)
            .map(|_| {
                get(ALLOWED_ABUSER, "/secure/index.html", &["x-api-key: wrong"]).map_or(0, |r| r.0)
            })
            .collect()
    });
    assert!(allowed.iter().all(|s| *s == 401), "{allowed:?}");

    // The abuser: bad keys until a connection attempt gets no answer.
    let started = Instant::now();
    let (refused, blocked_after) = in_ns(&c, || {
        let mut refused = 0;
        while started.elapsed() < Duration::from_secs(20) {
            match get(ABUSER, "/secure/index.html", &["x-api-key: wrong"]) {
                Ok((401, _)) => {
                    refused += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok((s, b)) => panic!("unexpected {s}: {b}"),
                Err(_) => return (refused, started.elapsed()),
            }
        }
        panic!("not blocked within 20 s after {refused} refusals");
    });
    eprintln!("abuser blocked after {refused} refusals, {blocked_after:?}");
    // Each gateway offers it after AUTH_THRESHOLD of its own refusals; the first offer is
    // enough for both LB nodes, within a pull interval (250 ms) and a fetch. The bound
    // stated: blocked within 3 s of its first refusal.
    assert!(refused >= AUTH_THRESHOLD, "{refused}");
    assert!(blocked_after < Duration::from_secs(3), "{blocked_after:?}");
    let both = |want: &str| (1..=2).all(|i| blocked(&w, i).iter().any(|(p, _)| p == want));
    let deadline = Instant::now() + Duration::from_secs(3);
    while !both("10.10.1.3/32") {
        assert!(
            Instant::now() < deadline,
            "{:?} {:?}",
            blocked(&w, 1),
            blocked(&w, 2)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for i in 1..=2 {
        assert_eq!(
            blocked(&w, i),
            [("10.10.1.3/32".to_string(), "auth".to_string())],
            "LB {i}: only the abuser, for its 401s"
        );
    }
    // Its packets are dropped in XDP: no new connection of it reaches a gateway's kernel.
    let sockets_before = abuser_sockets(&w);
    assert!(
        !sockets_before.is_empty(),
        "its earlier connections are seen"
    );
    let dropped_before: u64 = (1..=2).map(|i| w.lb_counter(i, "blocked")).sum();
    let served_before: u64 = (1..=3).map(|i| w.gateway_requests(i)).sum();
    let attempts = in_ns(&c, || {
        (0..3)
            .filter(|_| get(ABUSER, "/index.html", &[]).is_err())
            .count()
    });
    assert_eq!(attempts, 3, "every attempt unanswered");
    let new: Vec<String> = abuser_sockets(&w)
        .difference(&sockets_before)
        .cloned()
        .collect();
    assert!(
        new.is_empty(),
        "connections from the abuser reached a gateway: {new:?}"
    );
    let dropped: u64 = (1..=2).map(|i| w.lb_counter(i, "blocked")).sum::<u64>() - dropped_before;
    assert!(dropped >= 3, "SYNs dropped in XDP: {dropped}");
    let allowed_seen: u64 = (1..=2)
        .map(|i| {
            w.lb_status(i)["shield"]["candidates"]
                .as_array()
                .and_then(|a| a.iter().find(|p| p[0] == "allowed"))
                .and_then(|p| p[1].as_u64())
                .unwrap_or(0)
        })
        .sum();
    assert!(
        allowed_seen > 0,
        "the allow-listed abuser was offered and refused"
    );

    // After the TTL the blocks lapse and the abuser reaches the gateways again.
    let deadline = Instant::now() + Duration::from_secs(TTL_SECS + 6);
    while (1..=2).any(|i| !blocked(&w, i).is_empty()) {
        assert!(Instant::now() < deadline, "blocks still held");
        std::thread::sleep(Duration::from_millis(200));
    }
    let back = in_ns(&c, || get(ABUSER, "/index.html", &[]));
    assert_eq!(back.map(|r| r.0).ok(), Some(200));

    // With the LB nodes in observe mode the same abuse is logged and counted, not blocked.
    let mut w = w;
    w.set_lb_extra(&sluice_e2e::attack::LB_SHIELD.replace("\"enforce\"", "\"observe\""));
    let observed = |w: &World| -> u64 {
        (1..=2)
            .map(|i| {
                w.lb_status(i)["shield"]["candidates"]
                    .as_array()
                    .and_then(|a| a.iter().find(|p| p[0] == "observed"))
                    .and_then(|p| p[1].as_u64())
                    .unwrap_or(0)
            })
            .sum()
    };
    let before = observed(&w);
    let answers: Vec<u16> = in_ns(&c, || {
        (0..60)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(30));
                get(ABUSER, "/secure/index.html", &["x-api-key: wrong"]).map_or(0, |r| r.0)
            })
            .collect()
    });
    assert!(
        answers.iter().all(|s| *s == 401),
        "observe never blocks: {answers:?}"
    );
    assert!(observed(&w) > before, "the candidates were observed");
    assert!((1..=2).all(|i| blocked(&w, i).is_empty()));
    stop.store(true, Ordering::Relaxed);
    let (n, failed) = good.join().expect("good client");
    eprintln!("good client: {n} requests, {failed} failed");
    assert!(n > 50, "{n}");
    assert_eq!(failed, 0);
    let served_after: u64 = (1..=3).map(|i| w.gateway_requests(i)).sum();
    assert!(served_after > served_before);
}

/// Keep-alive connections to the VIP, each with a request answered before the flood.
fn keep_alive(n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut s =
                TcpStream::connect_timeout(&vip(), Duration::from_secs(3)).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            ask(&mut s).expect("first request");
            s
        })
        .collect()
}

fn ask(s: &mut TcpStream) -> Option<u16> {
    let text =
        request_text("GET", "/index.html", VIP, &[], "").replace("Connection: close\r\n", "");
    s.write_all(text.as_bytes()).ok()?;
    read_one(s).map(|r| r.status)
}

/// Floods the VIP from the flooder namespace for at most `secs`, in a thread; meanwhile
/// `during` runs in the client namespace. Returns (packets sent, what `during` returned).
fn flood_while<R: Send + 'static>(
    w: &World,
    flooder: &(String, [u8; 6], [u8; 6]),
    secs: u64,
    during: impl FnOnce() -> R + Send + 'static,
) -> (u64, R) {
    // One sender per CPU, each pinned: the flow table keeps an LRU list per CPU, and a
    // frame is handled on the CPU that sent it, so a flood from one CPU would churn only
    // that CPU's list and leave flows on the other untouched, by chance of scheduling.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let senders: Vec<_> = (0..cpus)
        .map(|cpu| {
            let f = w.ns["f"].clone();
            let (ifname, src_mac, dst_mac) = flooder.clone();
            std::thread::spawn(move || {
                // SAFETY: a zeroed cpu_set_t is valid; CPU_SET stays within it; only this
                // thread's affinity changes.
                unsafe {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(cpu, &mut set);
                    libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
                }
                in_ns(&f, || {
                    Flood {
                        ifname,
                        src_mac,
                        dst_mac,
                        sources: "10.99.0.0/16".parse().expect("literal"),
                        dst: format!("{VIP}:80").parse().expect("literal"),
                        count: 2_000_000 / cpus as u64,
                        max_duration: Duration::from_secs(secs),
                        // Far above the guard's limit and the table's size, without
                        // starving the two-core machine the whole topology shares.
                        rate_pps: Some(150_000 / cpus as u64),
                        seed: 16 + cpu as u64,
                    }
                    .run()
                    .expect("flood")
                })
            })
        })
        .collect();
    let c = w.ns["c"].clone();
    let result = std::thread::spawn(move || in_ns(&c, during))
        .join()
        .expect("client");
    let sent = senders
        .into_iter()
        .map(|s| s.join().expect("flooder").sent)
        .sum();
    (sent, result)
}

#[test]
fn a_syn_flood_neither_evicts_established_flows_nor_stops_new_ones() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    // A table small enough for a flood to churn through (512 flows per CPU).
    let mut w = World::start_with_flow_table("[flood_guard]\nenabled = false\n", 1024);
    let flooder = w.add_flooder();
    let misses = |w: &World| -> u64 { (1..=2).map(|i| w.lb_counter(i, "flow_miss_other")).sum() };

    for guard in [false, true] {
        if guard {
            w.set_lb_extra("[flood_guard]\nnew_flows_per_second = 1000\n");
        }
        let conns = in_ns(&w.ns["c"], || keep_alive(8));
        let before = misses(&w);
        let (sent, answers) = flood_while(&w, &flooder, 4, move || {
            let mut conns = conns;
            let mut answers = Vec::new();
            for _ in 0..10 {
                std::thread::sleep(Duration::from_millis(300));
                answers.extend(conns.iter_mut().map(ask));
            }
            answers
        });
        let evicted = misses(&w) - before;
        let flooding: u64 = (1..=2)
            .map(|i| {
                w.lb_status(i)["shield"]["flood"]["inserts_skipped"]
                    .as_u64()
                    .unwrap_or(0)
            })
            .sum();
        eprintln!(
            "guard {guard}: {sent} spoofed SYNs, {evicted} established packets missed the flow \
             table, {flooding} inserts skipped"
        );
        assert!(sent > 50_000, "the flood was too small to matter: {sent}");
        // Every request on a kept connection is answered by the gateway that holds it: the
        // L4 property (a flow kept, or re-picked to the same gateway). The gateway's own
        // upstream may fail a rare request while a flood starves this 2-core machine (one
        // 502 in 80 seen in CI), which is not what this test is about, so a few are allowed.
        assert!(
            answers.iter().all(Option::is_some),
            "keep-alive connections keep working either way (Maglev re-picks the same \
             gateway): {answers:?}"
        );
        let ok = answers.iter().filter(|a| **a == Some(200)).count();
        assert!(
            ok * 20 >= answers.len() * 19,
            "most requests succeed during the flood: {answers:?}"
        );
        if guard {
            assert_eq!(
                evicted, 0,
                "guard on: every established flow kept its entry"
            );
            assert!(flooding > 0, "the guard turned on");
        } else {
            assert!(
                evicted > 0,
                "guard off: the flood evicted established flows"
            );
            assert_eq!(flooding, 0);
        }
    }

    // New connections during a flood succeed (forwarded by their pick alone).
    let ok = Arc::new(AtomicU64::new(0));
    let counted = ok.clone();
    let (_, failed) = flood_while(&w, &flooder, 3, move || {
        (0..20)
            .filter(|_| {
                let good = get(GOOD, "/index.html", &[]).map(|r| r.0).ok() == Some(200);
                counted.fetch_add(u64::from(good), Ordering::Relaxed);
                !good
            })
            .count()
    });
    assert_eq!(
        failed,
        0,
        "{} of 20 new connections succeeded",
        ok.load(Ordering::Relaxed)
    );
}
