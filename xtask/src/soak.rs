//! `cargo xtask soak --minutes N`: the two-tier topology under steady load from several
//! clients while, on a schedule, everything an operator does happens to it: gateway config
//! reloads (good and bad), LB config reloads, a graceful gateway restart, a gateway killed
//! (the one planned failure), an agent restart, a Redis restart, a health flap, a drain and
//! undrain, and a certificate reload. It reports each process's RSS, open descriptors and
//! threads at the start (after warm-up), the middle and the end, the failed requests by
//! cause against what the plan allows, and a one-line verdict.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use sluice_e2e::{http_get_as, in_ns, World, VIP};

/// Routes the soak adds to the gateways: a Redis-backed limit that never refuses (so a
/// Redis restart shows only as store failures, failing open).
const GATEWAY_EXTRA: &str = r#"
[redis]
url = "redis://:sluice-e2e@10.20.0.31:6379"
timeout_ms = 200
on_failure = "open"

[[rate_limit]]
name = "roomy"
requests = 1000000
window_ms = 60000
key = "client_ip"
store = "redis"

[[route]]
name = "shared"
path = { prefix = "/shared" }
upstream = "app"
rate_limits = ["roomy"]
request_transform = { strip_prefix = "/shared" }
"#;

/// Growth allowed between the middle and the end, after warm-up: RSS, then descriptors.
const RSS_SLACK: f64 = 0.10;
const RSS_SLACK_KIB: u64 = 4096;
const FD_SLACK: u64 = 8;

/// One request that failed, and when.
struct Failure {
    at: Instant,
    cause: String,
}

/// A process's footprint.
#[derive(Clone, Copy, Default)]
struct Footprint {
    pid: u32,
    rss_kib: u64,
    fds: u64,
    threads: u64,
}

fn footprint(pid: u32) -> Option<Footprint> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some(Footprint {
        pid,
        rss_kib: field("VmRSS:")?,
        threads: field("Threads:")?,
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64,
    })
}

type Sample = BTreeMap<String, Footprint>;

fn sample(w: &World) -> Sample {
    w.process_ids()
        .into_iter()
        .filter_map(|(name, pid)| Some((name, footprint(pid)?)))
        .collect()
}

/// The clients: new connections, to a plain and to a Redis-limited route.
fn start_load(
    w: &World,
    stop: Arc<AtomicBool>,
    failures: Arc<Mutex<Vec<Failure>>>,
) -> Vec<std::thread::JoinHandle<u64>> {
    let vip: SocketAddr = format!("{VIP}:80").parse().expect("literal");
    (0..4)
        .map(|k| {
            let (c, stop, failures) = (w.ns["c"].clone(), stop.clone(), failures.clone());
            std::thread::spawn(move || {
                in_ns(&c, || {
                    let from = "10.10.1.2".parse().expect("literal");
                    let path = if k % 2 == 0 {
                        "/index.html"
                    } else {
                        "/shared/index.html"
                    };
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let cause = match http_get_as(vip, from, path, &[], Duration::from_secs(3))
                        {
                            Ok((200, _)) => None,
                            Ok((status, _)) => Some(format!("status {status}")),
                            Err(e) => Some(format!("{:?}", e.kind())),
                        };
                        if let Some(cause) = cause {
                            if let Ok(mut f) = failures.lock() {
                                f.push(Failure {
                                    at: Instant::now(),
                                    cause,
                                });
                            }
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    n
                })
            })
        })
        .collect()
}

/// Writes a self-signed certificate and key for `name` with openssl.
fn certificate(dir: &Path, stem: &str, name: &str) -> Result<()> {
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
        ])
        .arg("-keyout")
        .arg(dir.join(format!("{stem}.key")))
        .arg("-out")
        .arg(dir.join(format!("{stem}.pem")))
        .args([
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            &format!("subjectAltName=DNS:{name}"),
        ])
        .output()
        .context("openssl")?;
    if !out.status.success() {
        bail!("openssl: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// An event of the schedule: what it does, and whether requests may fail meanwhile.
struct Event {
    name: &'static str,
    may_fail: bool,
    run: fn(&mut World, &Path) -> Result<()>,
}

fn events() -> Vec<Event> {
    vec![
        Event {
            name: "gateway config reload",
            may_fail: false,
            run: |w, _| {
                w.edit_gateway_config(1, |t| format!("{t}\n# soak {:?}\n", Instant::now()));
                Ok(())
            },
        },
        Event {
            name: "bad gateway config, refused",
            may_fail: false,
            run: |w, _| {
                let good = w.edit_gateway_config(2, |t| format!("{t}\n[[route]]\nname = 7\n"));
                std::thread::sleep(Duration::from_secs(3));
                w.edit_gateway_config(2, |_| good);
                Ok(())
            },
        },
        Event {
            name: "LB config reload",
            may_fail: false,
            run: |w, _| {
                w.touch_lb_configs();
                Ok(())
            },
        },
        Event {
            name: "drain and undrain a gateway",
            may_fail: false,
            run: |w, _| {
                for l in ["l1", "l2"] {
                    lb_cli(w, l, &["drain", &sluice_e2e::gateway_addr(1)])?;
                }
                std::thread::sleep(Duration::from_secs(4));
                for l in ["l1", "l2"] {
                    lb_cli(w, l, &["undrain", &sluice_e2e::gateway_addr(1)])?;
                }
                Ok(())
            },
        },
        Event {
            name: "health flap (a gateway frozen 1.5 s)",
            may_fail: false,
            run: |w, _| {
                w.signal("g3", libc::SIGSTOP);
                std::thread::sleep(Duration::from_millis(1500));
                w.signal("g3", libc::SIGCONT);
                Ok(())
            },
        },
        Event {
            name: "graceful gateway restart",
            may_fail: false,
            run: |w, _| {
                w.stop_gateway(2);
                w.start_gateway(2);
                Ok(())
            },
        },
        Event {
            name: "agent restart",
            may_fail: false,
            run: |w, _| {
                w.stop_lb(1);
                w.start_lb(1);
                w.wait_lb_ready(1);
                Ok(())
            },
        },
        Event {
            name: "Redis restart",
            may_fail: false,
            run: |w, _| {
                w.kill("redis");
                std::thread::sleep(Duration::from_secs(2));
                w.start_redis();
                Ok(())
            },
        },
        Event {
            name: "certificate reload",
            may_fail: false,
            run: |_, certs| certificate(certs, "a", "a.example"),
        },
        Event {
            name: "gateway killed (planned)",
            may_fail: true,
            run: |w, _| {
                w.kill("g3");
                std::thread::sleep(Duration::from_secs(2));
                w.start_gateway(3);
                Ok(())
            },
        },
    ]
}

fn lb_cli(w: &World, node: &str, args: &[&str]) -> Result<()> {
    let out = sluice_e2e::in_ns_command(&w.ns[node], sluice_e2e::bin("sluice-lb"))
        .args(args)
        .args(["--admin", "127.0.0.1:9180"])
        .output()?;
    if !out.status.success() {
        bail!(
            "sluice-lb {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Runs the soak. `bin_dir` holds the release binaries.
pub fn run(bin_dir: &Path, minutes: u64) -> Result<()> {
    std::env::set_var("SLUICE_BIN_DIR", bin_dir);
    let certs = sluice_e2e::scratch::Scratch::new("soak-certs");
    certificate(certs.0.as_path(), "a", "a.example")?;
    certificate(certs.0.as_path(), "b", "b.example")?;
    println!("soak: {minutes} min; building the topology...");
    let mut w = World::start_with_tls_and_policies(certs.0.as_path().to_owned(), GATEWAY_EXTRA);
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let clients = start_load(&w, stop.clone(), failures.clone());
    let total = Duration::from_secs(minutes * 60);
    let warm = Duration::from_secs(30).min(total / 4);
    let started = Instant::now();
    std::thread::sleep(warm);
    let first = sample(&w);
    let schedule = events();
    let slots = ((total - warm).as_secs() / 20).max(1) as usize;
    let mut windows: Vec<(Instant, Instant, &Event)> = Vec::new();
    let mut middle = None;
    for k in 0..slots {
        let at = warm + (total - warm) * k as u32 / slots as u32;
        let now = started.elapsed();
        if at > now {
            std::thread::sleep(at - now);
        }
        if middle.is_none() && started.elapsed() >= total / 2 {
            middle = Some(sample(&w));
        }
        let e = &schedule[k % schedule.len()];
        let begin = Instant::now();
        let result = (e.run)(&mut w, certs.0.as_path());
        println!(
            "  {:>6.1} s  {}{}",
            started.elapsed().as_secs_f64(),
            e.name,
            result
                .as_ref()
                .err()
                .map(|err| format!(": {err}"))
                .unwrap_or_default()
        );
        // A failure shows up to a few seconds after its cause (client timeouts).
        windows.push((begin, Instant::now() + Duration::from_secs(4), e));
    }
    if started.elapsed() < total {
        std::thread::sleep(total - started.elapsed());
    }
    let last = sample(&w);
    stop.store(true, Ordering::Relaxed);
    let requests: u64 = clients.into_iter().map(|c| c.join().unwrap_or(0)).sum();
    let middle = middle.unwrap_or_else(|| first.clone());
    report(
        &w,
        &first,
        &middle,
        &last,
        started.elapsed(),
        requests,
        &failures,
        &windows,
    )
}

#[allow(clippy::too_many_arguments)]
fn report(
    _w: &World,
    first: &Sample,
    middle: &Sample,
    last: &Sample,
    took: Duration,
    requests: u64,
    failures: &Mutex<Vec<Failure>>,
    windows: &[(Instant, Instant, &Event)],
) -> Result<()> {
    let minutes = took.as_secs_f64() / 60.0;
    println!("\n| process | RSS KiB start / middle / end | fds | threads | RSS growth/min (middle→end) |");
    println!("|---|---|---|---|---|");
    let mut grew = Vec::new();
    for (name, end) in last {
        let (s, m) = (
            first.get(name).copied().unwrap_or_default(),
            middle.get(name).copied().unwrap_or_default(),
        );
        let same = m.pid == end.pid;
        let growth = if same {
            format!(
                "{:+.0} KiB",
                (end.rss_kib as f64 - m.rss_kib as f64) / (minutes / 2.0).max(0.1)
            )
        } else {
            "restarted".into()
        };
        println!(
            "| {name} | {} / {} / {} | {} / {} / {} | {} / {} / {} | {growth} |",
            s.rss_kib,
            m.rss_kib,
            end.rss_kib,
            s.fds,
            m.fds,
            end.fds,
            s.threads,
            m.threads,
            end.threads
        );
        if same && m.rss_kib > 0 {
            let rss_bound = (m.rss_kib as f64 * (1.0 + RSS_SLACK)) as u64 + RSS_SLACK_KIB;
            if end.rss_kib > rss_bound || end.fds > m.fds + FD_SLACK {
                grew.push(name.clone());
            }
        }
    }
    let failures = failures.lock().map_err(|_| anyhow::anyhow!("lock"))?;
    let mut planned = 0;
    let mut unplanned: BTreeMap<String, u64> = BTreeMap::new();
    for f in failures.iter() {
        let during = windows.iter().find(|(a, b, _)| f.at >= *a && f.at <= *b);
        match during {
            Some((_, _, e)) if e.may_fail => planned += 1,
            Some((_, _, e)) => {
                *unplanned
                    .entry(format!("{} during {}", f.cause, e.name))
                    .or_default() += 1
            }
            None => *unplanned.entry(f.cause.clone()).or_default() += 1,
        }
    }
    println!("\n{requests} requests in {minutes:.1} min; failed: {planned} during the planned kill (allowed), {} otherwise", unplanned.values().sum::<u64>());
    for (cause, n) in &unplanned {
        println!("  {n} x {cause}");
    }
    let ok = grew.is_empty() && unplanned.is_empty();
    println!(
        "verdict: {} (RSS within {:.0}% + {} MiB and descriptors within {FD_SLACK} from the middle to the end; no unplanned failure){}",
        if ok { "PASS" } else { "FAIL" },
        RSS_SLACK * 100.0,
        RSS_SLACK_KIB / 1024,
        if grew.is_empty() { String::new() } else { format!("; grew: {}", grew.join(", ")) }
    );
    if !ok {
        bail!("soak failed");
    }
    Ok(())
}
