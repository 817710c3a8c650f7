//! `cargo xtask demo`: the two tiers together in network namespaces, with traffic, a
//! failover and a drain, narrated as it happens.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use sluice_e2e::{gateway_addr, http_get, in_ns, in_ns_command, World, VIP};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn catch_ctrl_c() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_interrupt as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_interrupt as *const () as libc::sighandler_t,
        );
    }
}

/// What the load threads saw in one second.
#[derive(Default)]
struct Window {
    ok: u64,
    failed: u64,
    latencies_us: Vec<u64>,
}

struct Load {
    stop: Arc<AtomicBool>,
    window: Arc<Mutex<Window>>,
    total_ok: Arc<AtomicU64>,
    total_failed: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn start_load(client_ns: &str, workers: usize) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let window = Arc::new(Mutex::new(Window::default()));
    let total_ok = Arc::new(AtomicU64::new(0));
    let total_failed = Arc::new(AtomicU64::new(0));
    let threads = (0..workers)
        .map(|_| {
            let (stop, window, ok, failed) = (
                stop.clone(),
                window.clone(),
                total_ok.clone(),
                total_failed.clone(),
            );
            let ns = client_ns.to_string();
            std::thread::spawn(move || {
                in_ns(&ns, || {
                    let vip = format!("{VIP}:80").parse().expect("literal");
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        let good = matches!(http_get(vip, "/index.html"), Ok((200, _)));
                        let us = t.elapsed().as_micros() as u64;
                        if let Ok(mut w) = window.lock() {
                            if good {
                                w.ok += 1;
                                w.latencies_us.push(us);
                            } else {
                                w.failed += 1;
                            }
                        }
                        if good {
                            ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        // A steady, modest rate: this is a demo, not a benchmark.
                        std::thread::sleep(Duration::from_millis(5));
                    }
                })
            })
        })
        .collect();
    Load {
        stop,
        window,
        total_ok,
        total_failed,
        threads,
    }
}

impl Load {
    /// Stops the load threads; the requests answered and failed in all.
    fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        (
            self.total_ok.load(Ordering::Relaxed),
            self.total_failed.load(Ordering::Relaxed),
        )
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

/// Prints one line per second for `seconds`, tracking gateway shares from their counters.
fn watch(w: &World, load: &Load, seconds: u64, last: &mut [u64; 3]) -> Result<()> {
    for _ in 0..seconds {
        std::thread::sleep(Duration::from_secs(1));
        if INTERRUPTED.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        let now: Vec<u64> = (1..=3).map(|i| w.gateway_requests(i)).collect();
        let per: Vec<u64> = (0..3).map(|i| now[i].saturating_sub(last[i])).collect();
        last.copy_from_slice(&now);
        let sum: u64 = per.iter().sum::<u64>().max(1);
        let window = std::mem::take(&mut *load.window.lock().map_err(|_| anyhow::anyhow!("lock"))?);
        let mut lat = window.latencies_us;
        lat.sort_unstable();
        let shares: Vec<String> = per
            .iter()
            .enumerate()
            .map(|(i, n)| {
                format!(
                    "gw{} {:>4}/s {:>3.0}%",
                    i + 1,
                    n,
                    100.0 * *n as f64 / sum as f64
                )
            })
            .collect();
        println!(
            "  {}   errors {:>3}   p50 {:>5.2} ms  p99 {:>5.2} ms",
            shares.join("  "),
            window.failed,
            percentile(&lat, 0.5),
            percentile(&lat, 0.99)
        );
    }
    Ok(())
}

fn sluice_lb(w: &World, node: &str, args: &[&str]) -> Result<String> {
    let out = in_ns_command(&w.ns[node], sluice_e2e::bin("sluice-lb"))
        .args(args)
        .args(["--admin", "127.0.0.1:9180"])
        .output()?;
    if !out.status.success() {
        bail!(
            "sluice-lb {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs the demo. `bin_dir` holds the release binaries.
pub fn run(bin_dir: &std::path::Path, keep: bool) -> Result<()> {
    std::env::set_var("SLUICE_BIN_DIR", bin_dir);
    catch_ctrl_c();
    println!(
        "\nSluice demo: a client, a router that spreads the VIP {VIP} over two XDP load balancers\n\
         by ECMP, three gateways that receive IPIP tunnels (sluice_decap) and answer the client\n\
         directly (DSR), and two backends: each in its own network namespace on this machine.\n"
    );
    println!(
        "Building the topology and waiting for both load balancers to see every gateway healthy..."
    );
    let gateways = format!(
        "{}{}",
        sluice_e2e::PER_CLIENT_LIMIT,
        sluice_e2e::attack::gateway_shield(ABUSE_THRESHOLD, ABUSE_TTL_SECS)
    );
    let mut w = World::start_with_configs(&gateways, sluice_e2e::attack::LB_SHIELD);
    println!(
        "Ready. Traffic starts: 4 clients, each request on a new TCP connection (a new flow).\n"
    );
    let load = start_load(&w.ns["c"], 4);
    let mut last = [0u64; 3];
    for (i, slot) in last.iter_mut().enumerate() {
        *slot = w.gateway_requests(i + 1);
    }
    let result = failover_and_drain(&mut w, &load, &mut last)
        .and_then(|()| load_weights(&mut w, &load, &mut last))
        .and_then(|()| rate_limit(&w))
        .and_then(|()| shield(&w, &load))
        .and_then(|()| lb_node_failure(&mut w, &load, &mut last))
        .and_then(|()| lb_status(&w));
    let (ok, failed) = load.stop();
    println!("\nSummary: {ok} requests answered, {failed} failed. The drain moved traffic without losing any;\nthe kill lost what was in flight and what reached the gateway before health checks took it out.");
    match result {
        Err(e) if e.to_string() == "interrupted" => println!("Interrupted."),
        Err(e) => return Err(e),
        Ok(()) if keep => keep_until_interrupted(&w),
        Ok(()) => {}
    }
    println!("Removing namespaces, processes and pinned programs...");
    drop(w);
    println!("Done: nothing is left behind.");
    Ok(())
}

/// Steps 1 to 4: steady state, a gateway killed and back, a gateway drained.
fn failover_and_drain(w: &mut World, load: &Load, last: &mut [u64; 3]) -> Result<()> {
    println!("1. Steady state: Maglev spreads new flows evenly over the three gateways.");
    watch(w, load, 4, last)?;
    println!("\n2. Failover: gateway 2 ({}) is killed. The LB agents' health checks (every\n   200 ms, down after 2 failures) take it out of the Maglev tables; flows pinned to it re-pick.", gateway_addr(2));
    let failed_before = load.total_failed.load(Ordering::Relaxed);
    let killed = Instant::now();
    w.kill("g2");
    watch(w, load, 4, last)?;
    let lost = load.total_failed.load(Ordering::Relaxed) - failed_before;
    println!("   (requests that failed around the kill: {lost}: new flows sent to it before the\n   health checks noticed, and the ones it was serving)");
    println!(
        "\n3. Gateway 2 comes back and takes its share again ({:.1} s after the kill).",
        killed.elapsed().as_secs_f64()
    );
    w.start_gateway(2);
    watch(w, load, 4, last)?;
    println!("\n4. Drain: the operator drains gateway 1 on both LB nodes (`sluice-lb drain {}`).\n   It gets no new flows, and no request fails.", gateway_addr(1));
    let failed_before = load.total_failed.load(Ordering::Relaxed);
    for lb in ["l1", "l2"] {
        sluice_lb(w, lb, &["drain", &gateway_addr(1)])?;
    }
    watch(w, load, 4, last)?;
    println!(
        "   (requests that failed during the drain: {})",
        load.total_failed.load(Ordering::Relaxed) - failed_before
    );
    Ok(())
}

/// Step 5: a gateway under a CPU limit, with static and then load-aware weights.
fn load_weights(w: &mut World, load: &Load, last: &mut [u64; 3]) -> Result<()> {
    for lb in ["l1", "l2"] {
        sluice_lb(w, lb, &["undrain", &gateway_addr(1)])?;
    }
    println!("\n5. Load-aware weights. Gateway 1 is back in service, and gateway 3 ({}) is put in a\n   cgroup limited to 0.05 CPU (a slower or busier machine). With static weights it keeps a\n   third of the new flows, and p99 climbs:", gateway_addr(3));
    let limit = sluice_e2e::cgroup::CpuLimit::new(
        w.pid("g3").ok_or_else(|| anyhow::anyhow!("no gateway 3"))?,
        0.05,
    );
    watch(w, load, 4, last)?;
    println!("   The LB nodes switch the VIP to weights = \"load\": every second they weigh each gateway\n   by the capacity its readiness reports (requests per second per CPU used), moving at most\n   5% of the table per push. Gateway 3's share shrinks to what it can serve; p99 recovers:");
    let failed_before = load.total_failed.load(Ordering::Relaxed);
    w.weigh_by_load();
    watch(w, load, 12, last)?;
    println!("   The limit is lifted, and its share comes back:");
    limit.set(None);
    watch(w, load, 8, last)?;
    drop(limit);
    println!(
        "   (requests that failed during this step: {})",
        load.total_failed.load(Ordering::Relaxed) - failed_before
    );
    Ok(())
}

/// Step 6: the per-client limit in Redis, keyed on the real client address.
fn rate_limit(w: &World) -> Result<()> {
    println!("\n6. Policy on the real client: /limited allows 10 requests per client address per\n   10 minutes, counted in Redis so the limit holds whichever gateway a flow lands on.\n   The gateways see the client's own address because the tunnel delivers its packets\n   unchanged (DSR). 15 requests, each on a new connection:");
    let vip: std::net::SocketAddr = format!("{VIP}:80").parse()?;
    let answers: Vec<(u16, String)> = in_ns(&w.ns["c"], || {
        (0..15)
            .filter_map(|_| http_get(vip, "/limited/index.html").ok())
            .collect()
    });
    let ok = answers.iter().filter(|a| a.0 == 200).count();
    let refused: Vec<&(u16, String)> = answers.iter().filter(|a| a.0 == 429).collect();
    println!("   {ok} answered, {} refused with 429", refused.len());
    if let Some((_, body)) = refused.first() {
        println!("   a refusal: {}", body.trim());
    }
    let keys = in_ns_command(&w.ns["b1"], "redis-cli")
        .args(["-h", "10.20.0.31", "-a", "sluice-e2e", "--no-auth-warning"])
        .args(["--scan", "--pattern", "sluice:*"])
        .output()?;
    println!(
        "   the counter in Redis: {}",
        String::from_utf8_lossy(&keys.stdout).trim()
    );
    Ok(())
}

/// A gateway offers a client to the LB nodes after this many 401s in 30 s.
const ABUSE_THRESHOLD: u32 = 10;
/// How long an offered client stays blocked.
const ABUSE_TTL_SECS: u64 = 20;

/// Step 7: a client collecting 401s is blocked in XDP by both LB nodes.
fn shield(w: &World, load: &Load) -> Result<()> {
    println!("\n7. The shield. A client at 10.10.1.3 sends requests with a bad API key. Each gateway\n   counts its refusals per real client address (DSR again) and, past {ABUSE_THRESHOLD} in 30 s, offers it\n   as a block candidate on its admin port; both LB agents pull the candidates of their\n   healthy gateways and drop its packets in XDP, before any TCP handshake, for {ABUSE_TTL_SECS} s.\n   The well-behaved clients go on:");
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicU64::new(0));
    let unanswered = Arc::new(AtomicU64::new(0));
    let abuser = {
        let (stop, refused, unanswered) = (stop.clone(), refused.clone(), unanswered.clone());
        let c = w.ns["c"].clone();
        std::thread::spawn(move || {
            in_ns(&c, || {
                let vip = format!("{VIP}:80").parse().expect("literal");
                let from = "10.10.1.3".parse().expect("literal");
                while !stop.load(Ordering::Relaxed) {
                    let got = sluice_e2e::http_get_as(
                        vip,
                        from,
                        "/secure/index.html",
                        &["x-api-key: guess"],
                        Duration::from_millis(500),
                    );
                    match got {
                        Ok(_) => refused.fetch_add(1, Ordering::Relaxed),
                        Err(_) => unanswered.fetch_add(1, Ordering::Relaxed),
                    };
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        })
    };
    let failed_before = load.total_failed.load(Ordering::Relaxed);
    let result = watch_shield(w, load, &refused, &unanswered, 8);
    stop.store(true, Ordering::Relaxed);
    let _ = abuser.join();
    result?;
    println!(
        "   (requests of the well-behaved clients that failed during this step: {})",
        load.total_failed.load(Ordering::Relaxed) - failed_before
    );
    println!("   LB node 1's shield (`sluice-lb status`, shield part):");
    let status = sluice_lb(w, "l1", &["status"])?;
    for line in status
        .lines()
        .skip_while(|l| !l.starts_with("shield:"))
        .take_while(|l| !l.starts_with("table generation"))
    {
        println!("   {line}");
    }
    Ok(())
}

/// One line per second: the good clients' rate and p99, the abuser's answers, and the
/// packets both LB nodes dropped in XDP.
fn watch_shield(
    w: &World,
    load: &Load,
    refused: &AtomicU64,
    unanswered: &AtomicU64,
    seconds: u64,
) -> Result<()> {
    for _ in 0..seconds {
        std::thread::sleep(Duration::from_secs(1));
        if INTERRUPTED.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        let window = std::mem::take(&mut *load.window.lock().map_err(|_| anyhow::anyhow!("lock"))?);
        let mut lat = window.latencies_us;
        lat.sort_unstable();
        let dropped: u64 = (1..=2).map(|i| w.lb_counter(i, "blocked")).sum();
        println!(
            "  good clients {:>4}/s  errors {:>2}  p99 {:>5.2} ms   abuser: {:>3} refused with 401, {:>3} unanswered   dropped in XDP {:>5}",
            window.ok,
            window.failed,
            percentile(&lat, 0.99),
            refused.load(Ordering::Relaxed),
            unanswered.load(Ordering::Relaxed),
            dropped
        );
    }
    Ok(())
}

/// Step 8: the routers' view over BGP, and an LB node that dies.
fn lb_node_failure(w: &mut World, load: &Load, last: &mut [u64; 3]) -> Result<()> {
    println!("\n8. BGP. Each LB node's agent drives a BIRD that announces the VIPs to the router, whose\n   BIRD merges the two paths into one ECMP route. The router's view (`birdc show route`):");
    for line in w
        .birdc("r", &format!("show route {VIP}/32"))
        .lines()
        .filter(|l| !l.starts_with("BIRD "))
    {
        println!("   {line}");
    }
    println!(
        "   and its kernel table: {VIP} via {:?}",
        w.router_vip_next_hops()
    );
    println!("\n   LB node 1 dies: its agent and BIRD are killed and its link goes down. BFD (100 ms x 3)\n   tells the router, which withdraws it; flows move to LB node 2, which builds the same\n   Maglev table, so they reach the same gateways:");
    // The shares count from here, not from the last step that watched them.
    for (i, slot) in last.iter_mut().enumerate() {
        *slot = w.gateway_requests(i + 1);
    }
    let failed_before = load.total_failed.load(Ordering::Relaxed);
    let killed = Instant::now();
    w.kill_lb_node(1);
    let moved = w.wait_routed(VIP, &[2], Duration::from_secs(5));
    println!(
        "   (the router sent everything to LB node 2 {:.0} ms after the kill)",
        moved.as_secs_f64() * 1e3
    );
    watch(w, load, 4, last)?;
    println!(
        "   (requests that failed since the kill: {}, {:.1} s ago)",
        load.total_failed.load(Ordering::Relaxed) - failed_before,
        killed.elapsed().as_secs_f64()
    );
    println!("   LB node 1 comes back: its agent adopts the pinned maps and announces once every\n   gateway has had a first health check:");
    w.revive_lb_node(1, false);
    let back = w.wait_routed(VIP, &[1, 2], Duration::from_secs(10));
    println!(
        "   (both LB nodes routed again {:.1} s after the restart)",
        back.as_secs_f64()
    );
    watch(w, load, 3, last)?;
    Ok(())
}

/// What LB node 1's `sluice-lb status` prints.
fn lb_status(w: &World) -> Result<()> {
    println!("\nWhat LB node 1 reports (`sluice-lb status`):\n");
    print!("{}", sluice_lb(w, "l1", &["status"])?);
    Ok(())
}

/// `--keep`: forwards the dashboards to this machine's loopback, says how to look at the
/// topology and waits for Ctrl-C.
fn keep_until_interrupted(w: &World) {
    use sluice_e2e::forward::Forward;
    // Each admin listener listens on its own namespace's loopback; a browser on this
    // machine reaches it through a port on 127.0.0.1 (the same port when it is free).
    let lb = Forward::start(&w.ns["l1"], ([127, 0, 0, 1], 9180).into(), 9180);
    let gw = Forward::start(&w.ns["g1"], ([127, 0, 0, 1], 9000).into(), 9000);
    match (&lb, &gw) {
        (Ok(lb), Ok(gw)) => println!(
            "\nDashboards (open them in a browser on this machine):\n  \
             LB node 1:  http://{}/\n  \
             gateway 1:  http://{}/",
            lb.local, gw.local
        ),
        (Err(e), _) | (_, Err(e)) => println!("\n(the dashboards could not be forwarded: {e})"),
    }
    println!(
        "\nThe topology stays up (--keep). Try, in another shell:\n  \
         ip netns exec {c} curl http://{VIP}/index.html\n  \
         ip netns exec {l1} {lb} status\n  \
         ip netns exec {r} curl http://{g1}:9000/metrics\n\
         Press Ctrl-C to remove everything.",
        c = w.ns["c"],
        l1 = w.ns["l1"],
        r = w.ns["r"],
        g1 = gateway_addr(1),
        lb = sluice_e2e::bin("sluice-lb").display()
    );
    while !INTERRUPTED.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
    }
}
