//! `cargo xtask bench gateway`: sluice-gateway beside nginx as a reverse proxy, same route,
//! same upstream, same core budget, measured in the same run.
//!
//! - The upstream is an nginx instance that answers a small fixed body.
//! - Two nginx proxies: one adding the same request headers as the gateway (the targets' reference)
//!   and one bare `proxy_pass`, printed beside it.
//! - Each proxy gets one worker pinned to CPU 0; wrk and the upstream run on CPU 1.
//! - wrk: 1 thread, 50 connections; after a 2 s warm-up of each, 15 rounds of a 1 s run of
//!   each proxy in turn. The machine is shared and its speed drifts, so ratios are taken
//!   within a round (the proxies see the same moments) and the figure is the median of those
//!   paired ratios, with their range and how many rounds the gateway was ahead.
//! - CPU time per request of each proxy, from `/proc/PID/stat` (user + system time of all of
//!   its processes) across each run: it moves less than requests/s when the host is busy.
//! - Memory: RSS (all processes of the proxy) with 10,000 idle keep-alive connections open.
//! - Policies: the same gateway on a route with JWT (RS256, a PyJWT-minted token) + one rate
//!   limit + two header transforms, against its plain route; then with the limit in a
//!   redis-server (on CPU 1 with the load generator).
//! - Two workers: the gateway with `--workers 2` (a thread each, `SO_REUSEPORT` sockets)
//!   against nginx with two worker processes, on both CPUs, which wrk (2 threads) and the
//!   upstream share.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

const CONNECTIONS: u32 = 50;
const SECONDS: u32 = 1;
const ROUNDS: usize = 15;
const IDLE: usize = 10_000;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn wait_for(addr: SocketAddr) {
    for _ in 0..200 {
        if TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("nothing listens on {addr}");
}

struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Proc(Child);

impl Drop for Proc {
    /// SIGTERM first: an nginx master killed outright leaves its workers running.
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        for _ in 0..100 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(30));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An nginx with `workers` worker processes on CPUs `affinity` (nginx's bit masks, one per
/// worker: "01" is CPU 0).
fn nginx(dir: &Path, name: &str, workers: u32, affinity: &str, body: &str) -> Proc {
    let conf = dir.join(format!("{name}.conf"));
    std::fs::create_dir_all(dir.join(format!("{name}-tmp"))).expect("dir");
    let text = format!(
        "worker_processes {workers};\nworker_cpu_affinity {affinity};\nworker_rlimit_nofile 30000;\ndaemon off;\n\
         error_log {dir}/{name}-error.log warn;\npid {dir}/{name}.pid;\n\
         events {{ worker_connections 20000; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {dir}/{name}-tmp;\n  proxy_temp_path {dir}/{name}-tmp;\n\
           fastcgi_temp_path {dir}/{name}-tmp;\n  uwsgi_temp_path {dir}/{name}-tmp;\n  scgi_temp_path {dir}/{name}-tmp;\n\
           keepalive_requests 100000;\n  keepalive_timeout 300s;\n{body}\n}}\n",
        dir = dir.display(),
    );
    std::fs::write(&conf, text).expect("nginx config");
    let child = Command::new("nginx")
        .args(["-e", "stderr", "-c"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx (installed by cargo xtask bench gateway)");
    Proc(child)
}

/// sluice-gateway with `workers` workers on CPUs `cpus`.
fn start_gateway(cpus: &str, workers: u32, config: &Path) -> Proc {
    Proc(
        Command::new("taskset")
            .args(["-c", cpus, env!("CARGO_BIN_EXE_sluice-gateway"), "run"])
            .arg("--workers")
            .arg(workers.to_string())
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("gateway"),
    )
}

/// Every PID whose parent chain leads to `root` (nginx forks its worker).
fn tree(root: u32) -> Vec<u32> {
    let mut pids = vec![root];
    let mut i = 0;
    while i < pids.len() {
        let parent = pids[i];
        if let Ok(out) = Command::new("pgrep")
            .args(["-P", &parent.to_string()])
            .output()
        {
            pids.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter_map(|l| l.trim().parse::<u32>().ok()),
            );
        }
        i += 1;
    }
    pids
}

fn rss_kib(root: u32) -> u64 {
    tree(root)
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}

struct Load {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// CPU time of the proxy per request answered, in microseconds (NaN if not measured).
    cpu_us: f64,
}

/// User plus system CPU time of every process of `root`'s tree, in seconds.
fn cpu_seconds(root: u32) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    tree(root)
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|s| {
            // Fields after the command name (which may hold spaces) in parentheses.
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
        })
        .sum::<f64>()
        / hz
}

/// Where wrk runs: its CPUs and threads.
#[derive(Clone, Copy)]
struct Client {
    cpus: &'static str,
    threads: u32,
}

/// wrk on CPU 1, beside the upstream, for proxies with one worker on CPU 0.
const BESIDE: Client = Client {
    cpus: "1",
    threads: 1,
};

/// wrk on both CPUs, sharing them with two-worker proxies (the machine has two).
const SHARED: Client = Client {
    cpus: "0,1",
    threads: 2,
};

/// A wrk run against a proxy whose processes are `pid`'s tree, with its CPU time per request.
fn wrk_measured(client: Client, url: &str, seconds: u32, header: Option<&str>, pid: u32) -> Load {
    let before = cpu_seconds(pid);
    let mut load = wrk(client, url, seconds, header);
    let used = cpu_seconds(pid) - before;
    load.cpu_us = used * 1e6 / (load.rps * seconds as f64);
    load
}

fn wrk(client: Client, url: &str, seconds: u32, header: Option<&str>) -> Load {
    let mut args: Vec<String> = [
        "-c",
        client.cpus,
        "wrk",
        &format!("-t{}", client.threads),
        &format!("-c{CONNECTIONS}"),
        &format!("-d{seconds}s"),
        "--latency",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(h) = header {
        args.push("-H".into());
        args.push(h.into());
    }
    args.push(url.into());
    let out = Command::new("taskset")
        .args(&args)
        .output()
        .expect("wrk (installed by cargo xtask bench gateway)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let ms = |v: &str| -> f64 {
        let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
        let n: f64 = num.parse().unwrap_or(f64::NAN);
        match unit {
            "us" => n / 1000.0,
            "ms" => n,
            "s" => n * 1000.0,
            _ => f64::NAN,
        }
    };
    let pct = |p: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(p))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(ms)
            .unwrap_or(f64::NAN)
    };
    let rps = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    let errors = text
        .lines()
        .any(|l| l.contains("Non-2xx") || l.contains("Socket errors"));
    assert!(!errors, "wrk saw errors:\n{text}");
    Load {
        rps,
        p50_ms: pct("50%"),
        p99_ms: pct("99%"),
        cpu_us: f64::NAN,
    }
}

/// Each figure's median over several runs.
fn median(runs: &[Load]) -> Load {
    let mid = |f: fn(&Load) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    Load {
        rps: mid(|l| l.rps),
        p50_ms: mid(|l| l.p50_ms),
        p99_ms: mid(|l| l.p99_ms),
        cpu_us: mid(|l| l.cpu_us),
    }
}

/// Ratios taken round by round, `f(case) / f(reference)`: their median, lowest and highest,
/// and in how many rounds `ahead` held.
struct Paired {
    median: f64,
    low: f64,
    high: f64,
    ahead: usize,
}

fn paired(
    case: &[Load],
    reference: &[Load],
    f: fn(&Load) -> f64,
    ahead: fn(f64) -> bool,
) -> Paired {
    let mut r: Vec<f64> = case
        .iter()
        .zip(reference)
        .map(|(c, r)| f(c) / f(r))
        .collect();
    r.sort_by(f64::total_cmp);
    Paired {
        median: r.get(r.len() / 2).copied().unwrap_or(f64::NAN),
        low: r.first().copied().unwrap_or(f64::NAN),
        high: r.last().copied().unwrap_or(f64::NAN),
        ahead: r.iter().filter(|x| ahead(**x)).count(),
    }
}

/// The lowest and highest requests/s of several runs.
fn range(runs: &[Load]) -> String {
    let lo = runs.iter().map(|l| l.rps).fold(f64::INFINITY, f64::min);
    let hi = runs.iter().map(|l| l.rps).fold(0.0, f64::max);
    format!("{lo:.0}-{hi:.0}")
}

/// Opens `n` keep-alive connections, each after one request, and holds them.
fn idle_connections(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
            .expect("write");
        let mut buf = [0u8; 512];
        let _ = s.read(&mut buf);
        held.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    held
}

fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on our own process.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn main() {
    raise_nofile();
    let dir = std::env::temp_dir().join(format!("sluice-bench-gw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    // Removed however the bench ends (declared first, so dropped after the processes).
    let _cleanup = Cleanup(dir.clone());
    let upstream_port = free_port();
    let _upstream = nginx(
        &dir,
        "upstream",
        1,
        "10",
        &format!("  server {{ listen 127.0.0.1:{upstream_port} reuseport backlog=4096; location / {{ return 200 \"hello from upstream\\n\"; }} }}"),
    );
    let upstream: SocketAddr = format!("127.0.0.1:{upstream_port}").parse().expect("addr");
    wait_for(upstream);

    // Two nginx references on CPU 0, never loaded at the same time:
    // - "same headers" does what the gateway does by default to every proxied request: keeps the
    //   client's Host, adds X-Forwarded-For/-Proto/-Host, RFC 7239 Forwarded, a generated
    //   X-Request-Id (also returned to the client) and a generated W3C traceparent. This is the
    //   like-for-like reference the targets are judged against.
    // - "bare proxy_pass" is nginx's default proxy, which forwards only the client's own headers
    //   (with Host rewritten to the pool's name); it is printed beside, for the record.
    let same_headers = "      proxy_set_header Host $http_host;\n\
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
      proxy_set_header Forwarded \"for=$remote_addr;proto=$scheme;host=\\\"$host\\\"\";\n\
      proxy_set_header traceparent \"00-$request_id-$span_id-01\";\n\
      proxy_set_header X-Forwarded-Proto $scheme;\n\
      proxy_set_header X-Request-Id $request_id;\n\
      proxy_set_header X-Forwarded-Host $http_host;\n\
      add_header X-Request-Id $request_id always;\n";
    let nginx_proxy = |name: &str, headers: &str, workers: u32, affinity: &str| {
        let port = free_port();
        let proc = nginx(
            &dir,
            name,
            workers,
            affinity,
            &format!(
                "  upstream app {{ server {upstream}; keepalive 64; }}\n\
                   map $request_id $span_id {{ \"~^(?<span>.{{16}})\" $span; }}\n\
                   server {{ listen 127.0.0.1:{port} backlog=4096;\n\
                     location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\";\n{headers}    }} }}"
            ),
        );
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        wait_for(addr);
        (proc, addr)
    };
    let (nginx_same, nginx_same_addr) = nginx_proxy("proxy-same-headers", same_headers, 1, "01");
    let (nginx_bare, nginx_bare_addr) = nginx_proxy("proxy-bare", "", 1, "01");

    // A token minted by PyJWT, and the public key it verifies with.
    let mint = Command::new("/usr/bin/python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/jwt/mint.py"))
        .arg(&dir)
        .output()
        .expect("python3 with PyJWT (installed by cargo xtask setup)");
    let tokens: serde_json::Value = serde_json::from_slice(&mint.stdout).expect("tokens");
    let token = tokens["RS256"].as_str().expect("RS256 token").to_string();
    let redis_port = free_port();
    let redis = Proc(
        Command::new("taskset")
            .args(["-c", "1", "redis-server", "--bind", "127.0.0.1", "--port"])
            .arg(redis_port.to_string())
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (installed by cargo xtask setup)"),
    );
    wait_for(format!("127.0.0.1:{redis_port}").parse().expect("addr"));

    let gw_port = free_port();
    let admin_port = free_port();
    let policed = |name: &str, limit: &str| {
        format!(
            "[[route]]\nname = \"{name}\"\npath = {{ prefix = \"/{name}\" }}\nupstream = \"app\"\n\
             auth = {{ methods = [\"jwt\"] }}\nrate_limits = [\"{limit}\"]\n\
             request_transform = {{ set_headers = {{ \"x-gateway\" = \"sluice\" }}, remove_headers = [\"x-debug\"] }}\n\n"
        )
    };
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\n[[listener]]\nname = \"bench\"\naddress = \"127.0.0.1:{gw_port}\"\nmax_connections = 20000\nheader_read_timeout_ms = 300000\n\n\
         [[upstream]]\nname = \"app\"\ntargets = [{{ address = \"{upstream}\" }}]\n\n\
         [[jwt_issuer]]\nname = \"bench\"\nissuer = \"https://issuer.test\"\naudiences = [\"sluice-api\"]\nalgorithms = [\"RS256\"]\nkeys = [{{ file = \"{key}\" }}]\n\n\
         [redis]\nurl = \"redis://127.0.0.1:{redis_port}\"\ntimeout_ms = 100\non_failure = \"closed\"\n\n\
         [[rate_limit]]\nname = \"local\"\nrequests = 1000000000\nwindow_ms = 1000\nkey = \"consumer\"\n\n\
         [[rate_limit]]\nname = \"shared\"\nrequests = 1000000000\nwindow_ms = 1000\nkey = \"consumer\"\nstore = \"redis\"\n\n\
         [[rate_limit]]\nname = \"leased\"\nrequests = 1000000000\nwindow_ms = 1000\nkey = \"consumer\"\nstore = \"redis\"\nlease = 64\nlease_ms = 100\n\n\
         {}{}{}[[route]]\nname = \"all\"\nupstream = \"app\"\n",
        policed("policy", "local"),
        policed("redis", "shared"),
        policed("leased", "leased"),
        key = dir.join("rsa.pem").display(),
    );
    let config_path: PathBuf = dir.join("gateway.toml");
    std::fs::write(&config_path, config).expect("config");
    let gateway = start_gateway("0", 1, &config_path);
    let gw_addr: SocketAddr = format!("127.0.0.1:{gw_port}").parse().expect("addr");
    wait_for(gw_addr);

    let proxies = [
        ("nginx, same headers", nginx_same_addr, nginx_same.0.id()),
        ("nginx, bare proxy_pass", nginx_bare_addr, nginx_bare.0.id()),
        ("sluice-gateway", gw_addr, gateway.0.id()),
    ];
    // Alternating runs, so that a drift in the machine's speed (it is shared) falls on all.
    let mut runs: [Vec<Load>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for (_, addr, _) in &proxies {
        let _warm = wrk(BESIDE, &format!("http://{addr}/"), 2, None);
    }
    for _ in 0..ROUNDS {
        for (k, (_, addr, pid)) in proxies.iter().enumerate() {
            runs[k].push(wrk_measured(
                BESIDE,
                &format!("http://{addr}/"),
                SECONDS,
                None,
                *pid,
            ));
        }
    }
    let mut rss = [0u64; 3];
    for (k, (_, addr, pid)) in proxies.iter().enumerate() {
        let idle = idle_connections(*addr, IDLE);
        rss[k] = rss_kib(*pid);
        drop(idle);
    }
    let loads: Vec<Load> = runs.iter().map(|r| median(r)).collect();
    println!("Gateway vs nginx: one worker each on CPU 0; wrk (1 thread, {CONNECTIONS} connections) and the upstream on CPU 1;");
    println!("{ROUNDS} rounds of a {SECONDS} s run of each in turn; medians. Requests/s ranges:");
    for (k, (name, _, _)) in proxies.iter().enumerate() {
        println!("- {name}: {}", range(&runs[k]));
    }
    println!();
    println!("| | requests/s | p50 ms | p99 ms | CPU µs/request | RSS with {IDLE} idle keep-alive connections |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (k, (name, _, _)) in proxies.iter().enumerate() {
        println!(
            "| {name} | {:.0} | {:.3} | {:.3} | {:.1} | {:.1} MiB |",
            loads[k].rps,
            loads[k].p50_ms,
            loads[k].p99_ms,
            loads[k].cpu_us,
            rss[k] as f64 / 1024.0
        );
    }
    println!();
    println!("Paired by round (median ratio, range, rounds the gateway was ahead):");
    println!("| sluice-gateway over | requests/s | p99 | CPU per request | idle RSS | target |");
    println!("|---|---:|---:|---:|---:|---|");
    let mut missed = Vec::new();
    let s_rss = rss[2];
    for (k, name, rps_target) in [
        (0, "nginx, same headers", 1.3),
        (1, "nginx, bare proxy_pass", 1.1),
    ] {
        let rps = paired(&runs[2], &runs[k], |l| l.rps, |x| x > 1.0);
        let p99 = paired(&runs[2], &runs[k], |l| l.p99_ms, |x| x <= 1.0);
        let cpu = paired(&runs[2], &runs[k], |l| l.cpu_us, |x| x < 1.0);
        let shown = |p: &Paired| {
            format!(
                "{:.2}x ({:.2}-{:.2}, {}/{ROUNDS})",
                p.median, p.low, p.high, p.ahead
            )
        };
        println!(
            "| {name} | {} | {} | {} | {:.2}x | requests/s >= {rps_target}x, p99 <= 1x, RSS <= 1x |",
            shown(&rps),
            shown(&p99),
            shown(&cpu),
            s_rss as f64 / rss[k] as f64
        );
        if rps.median < rps_target {
            missed.push(format!("requests/s >= {rps_target}x {name}"));
        }
        if p99.median > 1.0 {
            missed.push(format!("p99 <= {name}"));
        }
        if s_rss > rss[k] {
            missed.push(format!("idle RSS <= {name}"));
        }
    }
    // The policy chain's cost, on the same gateway process, against its plain route.
    let bearer = format!("Authorization: Bearer {token}");
    let routes = [
        ("", None),
        ("policy", Some(bearer.as_str())),
        ("redis", Some(&bearer)),
        ("leased", Some(&bearer)),
    ];
    for (route, header) in routes {
        let _warm = wrk(BESIDE, &format!("http://{gw_addr}/{route}"), 2, header);
    }
    let mut route_runs: [Vec<Load>; 4] = Default::default();
    let gw_pid = gateway.0.id();
    for _ in 0..ROUNDS {
        for (k, (route, header)) in routes.iter().enumerate() {
            route_runs[k].push(wrk_measured(
                BESIDE,
                &format!("http://{gw_addr}/{route}"),
                SECONDS,
                *header,
                gw_pid,
            ));
        }
    }
    let plain = median(&route_runs[0]);
    let policy = [
        median(&route_runs[1]),
        median(&route_runs[2]),
        median(&route_runs[3]),
    ];
    println!();
    println!("Policy chain: JWT RS256 + one rate limit + two header transforms, same gateway ({ROUNDS} rounds of a {SECONDS} s run of each route in turn; medians, and the median of the paired ratios to the plain route with their range)");
    println!();
    println!("| route | requests/s | p50 ms | p99 ms | CPU µs/request | requests/s over plain | target |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (k, name, target) in [
        (0, "plain proxy (reference)", None),
        (1, "JWT + local limit + 2 transforms", Some(0.9)),
        (
            2,
            "JWT + Redis limit, exact (a call per request) + 2 transforms",
            None,
        ),
        (
            3,
            "JWT + Redis limit, leases of up to 64 for 100 ms + 2 transforms",
            Some(0.85),
        ),
    ] {
        let l = [&plain, &policy[0], &policy[1], &policy[2]][k];
        let ratio = paired(&route_runs[k], &route_runs[0], |l| l.rps, |x| x >= 1.0);
        println!(
            "| {name} | {:.0} | {:.3} | {:.3} | {:.1} | {:.2}x ({:.2}-{:.2}) | {} |",
            l.rps,
            l.p50_ms,
            l.p99_ms,
            l.cpu_us,
            ratio.median,
            ratio.low,
            ratio.high,
            target.map_or("-".to_string(), |t| format!(">= {t}x"))
        );
        if let Some(t) = target {
            if ratio.median < t {
                missed.push(format!("{name} >= {t}x of the plain route"));
            }
        }
    }
    drop(gateway);
    drop(redis);

    // Two workers each (the gateway's threads with SO_REUSEPORT sockets, nginx's processes),
    // on both CPUs, which wrk and the upstream share: this machine has two.
    let (nginx_two, nginx_two_addr) =
        nginx_proxy("proxy-same-headers-two", same_headers, 2, "01 10");
    drop((nginx_same, nginx_bare));
    let two_port = free_port();
    let two_config = dir.join("gateway-two.toml");
    std::fs::write(
        &two_config,
        format!(
            "[admin]\nlisten = \"127.0.0.1:{}\"\n\n[[listener]]\nname = \"bench\"\naddress = \"127.0.0.1:{two_port}\"\n\n\
             [[upstream]]\nname = \"app\"\ntargets = [{{ address = \"{upstream}\" }}]\n\n[[route]]\nname = \"all\"\nupstream = \"app\"\n",
            free_port()
        ),
    )
    .expect("config");
    let gateway_two = start_gateway("0,1", 2, &two_config);
    let two_addr: SocketAddr = format!("127.0.0.1:{two_port}").parse().expect("addr");
    wait_for(two_addr);
    let two = [
        (nginx_two_addr, nginx_two.0.id()),
        (two_addr, gateway_two.0.id()),
    ];
    for (addr, _) in &two {
        let _warm = wrk(SHARED, &format!("http://{addr}/"), 2, None);
    }
    let mut two_runs: [Vec<Load>; 2] = Default::default();
    for _ in 0..ROUNDS {
        for (k, (addr, pid)) in two.iter().enumerate() {
            two_runs[k].push(wrk_measured(
                SHARED,
                &format!("http://{addr}/"),
                SECONDS,
                None,
                *pid,
            ));
        }
    }
    println!();
    println!("Two workers each, on both CPUs, shared with wrk (2 threads, {CONNECTIONS} connections) and the upstream; {ROUNDS} rounds of a {SECONDS} s run of each in turn:");
    println!();
    println!("| | requests/s | p50 ms | p99 ms | CPU µs/request |");
    println!("|---|---:|---:|---:|---:|");
    for (k, name) in [
        "nginx, same headers, 2 workers",
        "sluice-gateway, 2 workers",
    ]
    .iter()
    .enumerate()
    {
        let l = median(&two_runs[k]);
        println!(
            "| {name} | {:.0} | {:.3} | {:.3} | {:.1} |",
            l.rps, l.p50_ms, l.p99_ms, l.cpu_us
        );
    }
    let rps = paired(&two_runs[1], &two_runs[0], |l| l.rps, |x| x > 1.0);
    let p99 = paired(&two_runs[1], &two_runs[0], |l| l.p99_ms, |x| x <= 1.0);
    let cpu = paired(&two_runs[1], &two_runs[0], |l| l.cpu_us, |x| x < 1.0);
    println!();
    println!(
        "Paired, gateway over nginx with 2 workers each: requests/s {:.2}x ({:.2}-{:.2}, ahead in {}/{ROUNDS}), p99 {:.2}x, CPU per request {:.2}x (target as with one worker: requests/s >= 1.3x, p99 <= 1x)",
        rps.median, rps.low, rps.high, rps.ahead, p99.median, cpu.median
    );
    if rps.median < 1.3 {
        missed.push("requests/s >= 1.3x nginx with 2 workers each".into());
    }
    if p99.median > 1.0 {
        missed.push("p99 <= nginx with 2 workers each".into());
    }
    drop(gateway_two);
    println!();
    if missed.is_empty() {
        println!("targets met");
    } else {
        println!("targets missed: {}", missed.join(", "));
    }
}
