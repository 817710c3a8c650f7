//! Real TCP from a client namespace through the router, the XDP load balancers and the
//! gateways to the backends, and back directly (DSR).

use std::{net::SocketAddr, time::Duration};

use sluice_e2e::{gateway_addr, http_get, http_get_from, in_ns, privileged, World, VIP};

fn vip() -> SocketAddr {
    format!("{VIP}:80").parse().expect("literal")
}

#[test]
fn requests_reach_the_backends_through_every_gateway() {
    if !privileged() {
        return;
    }
    let w = World::start();
    let before: Vec<u64> = (1..=3).map(|i| w.gateway_requests(i)).collect();
    let total = 1200;
    let failures = in_ns(&w.ns["c"], || {
        (0..total)
            .filter(|_| match http_get(vip(), "/index.html") {
                Ok((200, body)) => body != "hello from a sluice backend\n",
                _ => true,
            })
            .count()
    });
    assert_eq!(failures, 0);
    let shares: Vec<u64> = (1..=3)
        .map(|i| w.gateway_requests(i) - before[i - 1])
        .collect();
    eprintln!("requests per gateway: {shares:?} of {total}");
    assert_eq!(shares.iter().sum::<u64>(), total as u64);
    // Each within 15% of an equal share.
    let equal = total as f64 / 3.0;
    for s in &shares {
        assert!((*s as f64 - equal).abs() <= 0.15 * equal, "{shares:?}");
    }
}

/// Which gateway served one request from `port` (by the gateways' request counters).
fn served_by(w: &World, port: u16) -> usize {
    let n = w.gateway_count();
    let before: Vec<u64> = (1..=n).map(|i| w.gateway_requests(i)).collect();
    let (status, _) = in_ns(&w.ns["c"], || {
        http_get_from(vip(), "/index.html", Some(port))
    })
    .expect("request");
    assert_eq!(status, 200);
    let after: Vec<u64> = (1..=n).map(|i| w.gateway_requests(i)).collect();
    let moved: Vec<usize> = (0..n)
        .filter(|i| after[*i] > before[*i])
        .map(|i| i + 1)
        .collect();
    assert_eq!(moved.len(), 1, "{before:?} -> {after:?}");
    moved[0]
}

#[test]
fn a_five_tuple_keeps_its_gateway_whichever_lb_node_ecmp_picks() {
    if !privileged() {
        return;
    }
    let w = World::start();
    let ports: Vec<u16> = (21000..21012).collect();
    let first: Vec<usize> = ports.iter().map(|p| served_by(&w, *p)).collect();
    assert!(
        first.iter().collect::<std::collections::HashSet<_>>().len() > 1,
        "{first:?}"
    );
    // The router now sends every flow to one LB node: the other is put in maintenance, so
    // it withdraws the VIPs (the router's BIRD owns the route; a route written by hand
    // would be overwritten).
    for (only, other) in [(1, 2), (2, 1)] {
        w.lb_maintenance(other, true);
        w.wait_routed(VIP, &[only], std::time::Duration::from_secs(5));
        let again: Vec<usize> = ports.iter().map(|p| served_by(&w, *p)).collect();
        assert_eq!(again, first, "via LB {only} only");
        w.lb_maintenance(other, false);
        w.wait_routed(VIP, &[1, 2], std::time::Duration::from_secs(5));
    }
}

#[test]
fn draining_a_gateway_fails_no_request() {
    if !privileged() {
        return;
    }
    let w = World::start();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (failed, total) = std::thread::scope(|s| {
        let load = s.spawn(|| {
            in_ns(&w.ns["c"], || {
                let (mut failed, mut total) = (0, 0);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && total < 20_000 {
                    total += 1;
                    if !matches!(http_get(vip(), "/index.html"), Ok((200, _))) {
                        failed += 1;
                    }
                }
                (failed, total)
            })
        });
        std::thread::sleep(std::time::Duration::from_millis(500));
        for lb in [1, 2] {
            w.lb_cli(lb, &["drain", "10.20.0.21"]);
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        let drained_before = w.gateway_requests(1);
        std::thread::sleep(std::time::Duration::from_millis(500));
        let drained_after = w.gateway_requests(1);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            drained_after, drained_before,
            "the drained gateway still got new connections"
        );
        load.join().expect("load")
    });
    eprintln!("drain under load: {failed} failed of {total}");
    assert!(total > 100);
    assert_eq!(failed, 0);
}

/// Runs steady load from the client while `during` acts; returns (failed, total).
fn under_load(client_ns: &str, during: impl FnOnce()) -> (u64, u64) {
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let load = s.spawn(|| {
            in_ns(client_ns, || {
                let (mut failed, mut total) = (0u64, 0u64);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && total < 50_000 {
                    total += 1;
                    if !matches!(http_get(vip(), "/index.html"), Ok((200, _))) {
                        failed += 1;
                    }
                }
                (failed, total)
            })
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        during();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        load.join().expect("load")
    })
}

#[test]
fn a_gateway_shutting_down_gracefully_fails_no_request() {
    if !privileged() {
        return;
    }
    let w = World::start();
    let client = w.ns["c"].clone();
    let (failed, total) = under_load(&client, || {
        // SIGTERM: readiness fails, the LB agents see 503 and stop new flows, then the
        // gateway closes its listeners and finishes what it has.
        w.signal("g1", libc::SIGTERM);
        std::thread::sleep(std::time::Duration::from_millis(2500));
    });
    eprintln!("gateway SIGTERM under load: {failed} failed of {total}");
    assert!(total > 100);
    assert_eq!(failed, 0);
}

#[test]
fn restarting_the_lb_agents_fails_no_request() {
    if !privileged() {
        return;
    }
    let mut w = World::start();
    let client = w.ns["c"].clone();
    let (failed, total) = under_load(&client, || {
        // One node at a time, as an operator would: a stopped agent withdraws the VIPs
        // (the router moves its flows to the other node) and the pinned program keeps
        // forwarding what still arrives; the restarted agent announces them again.
        for i in 1..=2 {
            w.stop_lb(i);
            w.wait_routed(VIP, &[3 - i], std::time::Duration::from_secs(5));
            std::thread::sleep(std::time::Duration::from_millis(300));
            w.start_lb(i);
            w.wait_lb_ready(i);
            w.wait_routed(VIP, &[1, 2], std::time::Duration::from_secs(5));
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    });
    eprintln!("agent restart under load: {failed} failed of {total}");
    assert!(total > 100);
    assert_eq!(failed, 0);
}

#[test]
fn killing_a_gateway_fails_only_what_reached_it_within_the_health_budget() {
    if !privileged() {
        return;
    }
    let mut w = World::start();
    let killed = std::sync::Mutex::new(None);
    let failures = std::sync::Mutex::new(Vec::new());
    let stop = std::sync::atomic::AtomicBool::new(false);
    let client = w.ns["c"].clone();
    let total = std::thread::scope(|s| {
        let load = s.spawn(|| {
            in_ns(&client, || {
                let mut total = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && total < 50_000 {
                    total += 1;
                    if !matches!(http_get(vip(), "/index.html"), Ok((200, _))) {
                        failures
                            .lock()
                            .expect("lock")
                            .push(std::time::Instant::now());
                    }
                }
                total
            })
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        *killed.lock().expect("lock") = Some(std::time::Instant::now());
        w.kill("g2");
        std::thread::sleep(std::time::Duration::from_millis(2000));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        load.join().expect("load")
    });
    let killed = killed.lock().expect("lock").expect("killed");
    let failures = failures.lock().expect("lock");
    let gap = failures
        .last()
        .map(|t| t.duration_since(killed))
        .unwrap_or_default();
    eprintln!(
        "gateway killed under load: {} of {total} requests failed, over {gap:?}",
        failures.len()
    );
    // Health checks every 200 ms, down after 2 failures: interval x fall + 100 ms, with a
    // little room for the client's last attempt to fail.
    let budget = std::time::Duration::from_millis(200 * 2 + 100);
    assert!(
        gap <= budget + std::time::Duration::from_millis(200),
        "failures went on for {gap:?}"
    );
    assert!(
        failures.iter().all(|t| *t >= killed),
        "a failure before the kill"
    );
    assert!(total > 100);
}

#[test]
fn tls_with_sni_end_to_end() {
    if !privileged() {
        return;
    }
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    // Removed however the test ends.
    let scratch = sluice_e2e::scratch::Scratch::new("e2e-tls");
    let dir = scratch.0.clone();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().expect("key");
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write");
    for name in ["a", "b"] {
        let mut p = CertificateParams::new(vec![format!("{name}.example")]).expect("params");
        p.distinguished_name
            .push(DnType::CommonName, format!("{name}.example"));
        let key = KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, &ca, &ca_key).expect("sign");
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).expect("write");
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).expect("write");
    }
    let w = World::start_with(Some(dir.clone()));
    for name in ["a.example", "b.example"] {
        let out = sluice_e2e::in_ns_command(&w.ns["c"], "curl")
            .args(["-sv", "--http2", "--cacert"])
            .arg(dir.join("ca.pem"))
            .args([
                "--resolve",
                &format!("{name}:443:{VIP}"),
                &format!("https://{name}/index.html"),
            ])
            .output()
            .expect("curl");
        let body = String::from_utf8_lossy(&out.stdout);
        let trace = String::from_utf8_lossy(&out.stderr);
        assert_eq!(body, "hello from a sluice backend\n", "{trace}");
        assert!(
            trace.contains(&format!("subject: CN={name}")),
            "certificate chosen by SNI: {trace}"
        );
        assert!(trace.contains("using HTTP/2"), "{trace}");
    }
    drop(w);
}

#[test]
fn adding_a_gateway_moves_few_flows_and_breaks_none() {
    if !privileged() {
        return;
    }
    use std::io::{Read, Write};
    let mut w = World::start();
    // Established keep-alive connections, one request each so far.
    let client = w.ns["c"].clone();
    let ask = |s: &mut std::net::TcpStream| -> bool {
        if s.write_all(b"GET /index.html HTTP/1.1\r\nHost: vip\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains("hello from a sluice backend") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return false,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&got).starts_with("HTTP/1.0 200")
            || String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200")
    };
    let mut open: Vec<std::net::TcpStream> = in_ns(&client, || {
        (0..12)
            .map(|_| {
                let mut s = std::net::TcpStream::connect(vip()).expect("connect");
                s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                    .expect("timeout");
                assert!(ask(&mut s));
                s
            })
            .collect()
    });
    let ports: Vec<u16> = (22000..22150).collect();
    let before: Vec<usize> = ports.iter().map(|p| served_by(&w, *p)).collect();
    // The connections were last used before that sampling: one more request each keeps
    // them inside the gateways' 10 s keep-alive timeout however slow a busy host makes
    // the 150 samples and the new gateway's start (the flows, not idleness, are tested).
    let warm = in_ns(&client, || {
        open.iter_mut().map(ask).filter(|ok| *ok).count()
    });
    assert_eq!(warm, 12, "connections closed before the gateway was added");
    let added = w.add_gateway();
    // Every established connection still works, on the gateway it started on.
    let alive = in_ns(&client, || {
        open.iter_mut().map(ask).filter(|ok| *ok).count()
    });
    assert_eq!(alive, 12, "established connections broke");
    let after: Vec<usize> = ports.iter().map(|p| served_by(&w, *p)).collect();
    let moved: Vec<(usize, usize)> = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| b != a)
        .map(|(b, a)| (*b, *a))
        .collect();
    let share = moved.len() as f64 / ports.len() as f64;
    eprintln!(
        "adding gateway {added}: {} of {} flows moved ({:.1}%)",
        moved.len(),
        ports.len(),
        100.0 * share
    );
    // Maglev moves flows only to the new gateway, about 1/N of them (N = 4); the bound
    // leaves room for sampling 150 flows.
    assert!(
        moved.iter().all(|(_, a)| *a == added),
        "a flow moved between old gateways: {moved:?}"
    );
    assert!(share <= 0.25 + 0.01 + 0.11, "{share}");
    assert!(!moved.is_empty());
}

#[test]
fn the_ipv6_path_end_to_end() {
    if !privileged() {
        return;
    }
    let w = World::start();
    let vip6: SocketAddr = format!("[{}]:80", sluice_e2e::VIP6)
        .parse()
        .expect("literal");
    let before: Vec<u64> = (1..=3).map(|i| w.gateway_requests(i)).collect();
    let ok = in_ns(&w.ns["c"], || {
        (0..150)
            .filter(|_| matches!(http_get(vip6, "/index.html"), Ok((200, ref b)) if b == "hello from a sluice backend\n"))
            .count()
    });
    assert_eq!(ok, 150);
    let shares: Vec<u64> = (1..=3)
        .map(|i| w.gateway_requests(i) - before[i - 1])
        .collect();
    eprintln!("IPv6 requests per gateway: {shares:?}");
    assert!(shares.iter().all(|s| *s > 0), "{shares:?}");
    // The IPv6 VIP's traffic went through the LB nodes' tunnels.
    let v6_of = |status: serde_json::Value| {
        status["vips"]
            .as_array()
            .expect("vips")
            .iter()
            .find(|v| v["vip"] == "[2001:db8::1]:80/tcp")
            .expect("v6 vip")
            .clone()
    };
    let (v6, v6b) = (v6_of(lb_status(&w, 1)), v6_of(lb_status(&w, 2)));
    assert!(v6["packets"].as_u64().unwrap_or(0) + v6b["packets"].as_u64().unwrap_or(0) > 0);
}

#[test]
fn policies_key_on_the_real_client_address_across_gateways() {
    if !privileged() {
        return;
    }
    // One limit per client address, kept in Redis so that it holds across all gateways
    // the L4 tier spreads the client's connections over.
    let w = World::start_with_policies(sluice_e2e::PER_CLIENT_LIMIT);
    let n = w.gateway_count();
    let before: Vec<u64> = (1..=n).map(|i| w.gateway_requests(i)).collect();
    let statuses: Vec<u16> = in_ns(&w.ns["c"], || {
        (0..30)
            .map(|_| {
                http_get(vip(), "/limited/index.html")
                    .map(|r| r.0)
                    .unwrap_or(0)
            })
            .collect()
    });
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(
        (ok, limited),
        (10, 20),
        "{statuses:?}\n{}",
        w.log("gw1.log")
    );
    let served: Vec<u64> = (1..=n)
        .map(|i| w.gateway_requests(i) - before[i - 1])
        .collect();
    assert!(
        served.iter().filter(|s| **s > 0).count() >= 2,
        "one gateway took everything: {served:?}"
    );
    // The key the gateways counted under is the client's own address (10.10.1.2), which
    // only reaches them because the L4 tier tunnels the packet unchanged (DSR).
    let out = sluice_e2e::in_ns_command(&w.ns["b1"], "redis-cli")
        .args(["-h", "10.20.0.31", "-a", "sluice-e2e", "--no-auth-warning"])
        .args(["--scan", "--pattern", "sluice:*"])
        .output()
        .expect("redis-cli");
    let keys = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        keys.trim(),
        "sluice:g:per-client:limited|10.10.1.2",
        "{served:?}"
    );
}

#[test]
fn a_vip_address_on_a_port_no_vip_serves_is_dropped_at_the_lb_not_looped() {
    if !privileged() {
        return;
    }
    let w = World::start();
    // The router's forwarded datagrams: nothing else crosses it while the client is quiet
    // (health checks and BGP stay on the LB nodes' own link, or end at the router).
    let forwarded = || {
        let out = sluice_e2e::in_ns_command(&w.ns["r"], "cat")
            .arg("/proc/net/snmp")
            .output()
            .expect("cat");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut ip = text.lines().filter(|l| l.starts_with("Ip:"));
        let (names, values) = (ip.next().expect("Ip header"), ip.next().expect("Ip values"));
        let at = names
            .split_whitespace()
            .position(|n| n == "ForwDatagrams")
            .expect("ForwDatagrams");
        values
            .split_whitespace()
            .nth(at)
            .and_then(|v| v.parse::<u64>().ok())
            .expect("a count")
    };
    let no_service = |w: &World| -> u64 {
        (1..=2)
            .flat_map(|i| {
                lb_status(w, i)["outcomes"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter(|o| o[0] == "no_service")
            .map(|o| o[1].as_u64().unwrap_or(0))
            .sum()
    };
    let before = (forwarded(), no_service(&w));
    // A connection to a port no VIP serves, and a ping, from the client: the LB node the
    // router picks must drop them. Passed to its kernel, which is not the VIP's host and
    // forwards, each would go back to the router and round again until its TTL ran out.
    let c = &w.ns["c"];
    let _ = sluice_e2e::in_ns_command(c, "curl")
        .args(["-s", "--max-time", "1", &format!("http://{VIP}:81/")])
        .output();
    let pings = format!(
        "from scapy.all import IP, ICMP, send; send(IP(dst='{VIP}')/ICMP(), count=2, verbose=0)"
    );
    let sent = sluice_e2e::in_ns_command(c, "/usr/bin/python3")
        .args(["-c", &pings])
        .status()
        .expect("python3 (scapy: cargo xtask setup)");
    assert!(sent.success(), "scapy sent the pings");
    let (fwd, dropped) = (forwarded() - before.0, no_service(&w) - before.1);
    eprintln!("the router forwarded {fwd} datagrams; the LB nodes dropped {dropped} as no_service");
    assert!(
        dropped >= 3,
        "{dropped} packets counted no_service (a SYN and two pings at least)"
    );
    // Once each through the router (a SYN, its retransmission, two pings), not ~30 times.
    assert!(
        fwd <= dropped + 2,
        "the router forwarded {fwd} datagrams for {dropped} dropped packets: they loop"
    );
}

/// A client that tunnels to a gateway itself (IPIP to its tunnel address, as an LB node
/// would) to pass as another client: the gateway drops it (`refused_source`) and only the
/// LB nodes' tunnels, which carry the real traffic, are taken.
#[test]
fn a_tunnel_from_outside_the_lb_nodes_is_dropped_at_the_gateway() {
    if !privileged() {
        return;
    }
    let w = World::start();
    let count = |name: &str| w.decap_counts(1)[name].as_u64().expect("a count");
    let before = (count("refused_source"), count("decap_ipv4"));
    let spoof = format!(
        "from scapy.all import IP, TCP, send; \
         send(IP(dst='{}')/IP(src='198.18.0.7', dst='{VIP}')/TCP(sport=4242, dport=80, flags='S'), \
         count=3, verbose=0)",
        gateway_addr(1)
    );
    let sent = sluice_e2e::in_ns_command(&w.ns["c"], "/usr/bin/python3")
        .args(["-c", &spoof])
        .status()
        .expect("python3 (scapy: cargo xtask setup)");
    assert!(sent.success(), "scapy sent the tunnels");
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while count("refused_source") < before.0 + 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the spoofed tunnels were not refused: {}",
            w.decap_counts(1)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        count("decap_ipv4"),
        before.1,
        "a spoofed tunnel was decapsulated"
    );
    // Real traffic still comes through the LB nodes' tunnels.
    let served = in_ns(&w.ns["c"], || {
        (0..20)
            .filter(|_| matches!(http_get(vip(), "/index.html"), Ok((200, _))))
            .count()
    });
    assert_eq!(served, 20);
    assert!(
        (1..=3)
            .map(|i| w.decap_counts(i)["decap_ipv4"].as_u64().unwrap_or(0))
            .sum::<u64>()
            >= 20,
        "the requests were tunnelled"
    );
}

/// `sluice-lb status --json` on LB node `i`.
fn lb_status(w: &World, i: usize) -> serde_json::Value {
    let out = sluice_e2e::in_ns_command(&w.ns[&*format!("l{i}")], sluice_e2e::bin("sluice-lb"))
        .args(["status", "--json", "--admin", "127.0.0.1:9180"])
        .output()
        .expect("status");
    serde_json::from_slice(&out.stdout).expect("json")
}

#[test]
fn the_lb_agents_read_each_gateways_load_from_its_readiness() {
    if !privileged() {
        return;
    }
    let w = World::start();
    // Traffic, so the reports have requests in them.
    let failures = in_ns(&w.ns["c"], || {
        (0..300)
            .filter(|_| !matches!(http_get(vip(), "/index.html"), Ok((200, _))))
            .count()
    });
    assert_eq!(failures, 0);
    let start = std::time::Instant::now();
    loop {
        let mut seen = Vec::new();
        for node in 1..=2 {
            let status = lb_status(&w, node);
            let v4 = status["vips"]
                .as_array()
                .expect("vips")
                .iter()
                .find(|v| v["vip"] == format!("{VIP}:80/tcp"))
                .expect("v4 vip")
                .clone();
            for b in v4["backends"].as_array().expect("backends") {
                seen.push((node, b["address"].clone(), b["load"].clone()));
            }
        }
        // Every gateway reports to both nodes, recently, with the traffic just sent in
        // some of the reports.
        let all_fresh = seen
            .iter()
            .all(|(_, _, l)| l["age_ms"].as_u64().is_some_and(|a| a < 5_000));
        let rps: f64 = seen.iter().filter_map(|(_, _, l)| l["rps"].as_f64()).sum();
        if all_fresh && rps > 0.0 && seen.len() == 6 {
            for (_, _, l) in &seen {
                assert!(l["usable_cpus"].as_f64().is_some_and(|c| c > 0.0), "{l}");
                assert!(
                    l["cpu_utilization"].as_f64().is_some_and(|c| c >= 0.0),
                    "{l}"
                );
            }
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(15),
            "load reports: {seen:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// The IPv4 VIP's effective weight per gateway on LB node `i`.
fn v4_weights(w: &World, i: usize) -> Vec<(String, u64)> {
    let status = lb_status(w, i);
    status["vips"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["vip"] == format!("{VIP}:80/tcp"))
        .and_then(|v| v["backends"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|b| {
            (
                b["address"].as_str().unwrap_or("").to_string(),
                b["weight"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

#[test]
fn a_cpu_limited_gateway_gets_fewer_new_flows_and_none_fail() {
    if !privileged() {
        return;
    }
    use std::sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    };
    use std::time::{Duration, Instant};
    let mut w = World::start();
    w.weigh_by_load();
    // Steady load from four clients, a new connection (a new flow) per request.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let client_ns = w.ns["c"].clone();
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        std::thread::spawn(move || {
            in_ns(&client_ns, || {
                std::thread::scope(|s| {
                    for _ in 0..4 {
                        s.spawn(|| {
                            while !stop.load(Ordering::Relaxed) {
                                match http_get(vip(), "/index.html") {
                                    Ok((200, _)) => ok.fetch_add(1, Ordering::Relaxed),
                                    _ => failed.fetch_add(1, Ordering::Relaxed),
                                };
                            }
                        });
                    }
                })
            })
        })
    };
    // The share of new requests gateway 1 takes over the next `span`.
    let share_of_g1 = |w: &World, span: Duration| {
        let before: Vec<u64> = (1..=3).map(|i| w.gateway_requests(i)).collect();
        std::thread::sleep(span);
        let d: Vec<u64> = (1..=3)
            .map(|i| w.gateway_requests(i) - before[i - 1])
            .collect();
        d[0] as f64 / d.iter().sum::<u64>().max(1) as f64
    };
    std::thread::sleep(Duration::from_secs(3));
    let even = share_of_g1(&w, Duration::from_secs(3));
    eprintln!("gateway 1's share before the limit: {even:.2}");
    // A real CPU limit on gateway 1: a fifth of a CPU.
    let limit = sluice_e2e::cgroup::CpuLimit::new(w.pid("g1").expect("g1"), 0.2);
    let start = Instant::now();
    let mut limited = 1.0;
    while start.elapsed() < Duration::from_secs(40) {
        limited = share_of_g1(&w, Duration::from_secs(3));
        eprintln!(
            "{:>4.0} s: gateway 1's share {limited:.2}",
            start.elapsed().as_secs_f64()
        );
        if limited < 0.2 {
            break;
        }
    }
    let took = start.elapsed();
    assert!(
        limited < 0.2,
        "gateway 1 kept {limited:.2} of new requests under its limit"
    );
    // Both LB nodes settle on the same weights, so a flow ECMP moves keeps its gateway.
    let settle = Instant::now();
    while v4_weights(&w, 1) != v4_weights(&w, 2) {
        assert!(
            settle.elapsed() < Duration::from_secs(20),
            "{:?} vs {:?}",
            v4_weights(&w, 1),
            v4_weights(&w, 2)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // The limit lifted, its share comes back.
    limit.set(None);
    let lifted = Instant::now();
    let mut back = 0.0;
    while lifted.elapsed() < Duration::from_secs(40) {
        back = share_of_g1(&w, Duration::from_secs(3));
        if back > 0.25 {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = load.join();
    drop(limit);
    eprintln!(
        "limited to {limited:.2} in {took:?}, back to {back:.2}; {} requests answered, {} failed",
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    assert!(
        back > 0.25,
        "gateway 1's share stayed at {back:.2} after the limit was lifted"
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0, "requests failed");
    // Every push moved at most max_disruption (5%) of the table.
    for node in ["lb1.log", "lb2.log"] {
        let log = w.log(node);
        let pushes: Vec<f64> = log
            .lines()
            .filter(|l| l.contains("load weights pushed"))
            .filter_map(|l| {
                l.split("disruption=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .collect();
        assert!(!pushes.is_empty(), "{node}: no load-weight push logged");
        assert!(
            pushes.iter().all(|d| *d <= 0.05 + 1e-9),
            "{node}: {pushes:?}"
        );
    }
}
