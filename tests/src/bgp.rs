//! BGP in the topology: the router runs BIRD, which learns the VIPs from both LB nodes (each
//! agent drives a BIRD of its own, configured from the `[bgp]` section the harness writes)
//! and installs them into the router's kernel table as one multipath route (ECMP), with BFD
//! on every session.
//!
//! ```text
//!   router (AS 65000, 10.20.0.1 / fd20::1)
//!     ├─ BGP + BFD ─ lb1 (AS 65001, 10.20.0.11 / fd20::11)   one session per family
//!     └─ BGP + BFD ─ lb2 (AS 65001, 10.20.0.12 / fd20::12)
//!   BIRD kernel protocols: export all, merge paths → VIP via lb1 and lb2
//! ```
//!
//! Every BIRD runs inside a namespace of the run, with its config, control socket and pid
//! file in the run's directory; the router's is the harness's child, the LB nodes' are
//! started by their agents in a session of their own (so that they outlive the agent, as
//! in production) and are killed through their pid files. Both kinds are found again by
//! their command line if a run dies without cleaning up (see [`sweep_dead_runs`]).

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use crate::{bin, in_ns_command, sh, World, PREFIX, VIP, VIP6};

/// The router's AS.
pub const ROUTER_AS: u32 = 65000;
/// The LB nodes' AS.
pub const LB_AS: u32 = 65001;
/// BFD transmit/receive interval on both sides.
pub const BFD_INTERVAL_MS: u64 = 100;
/// Missed BFD packets before a session is declared down.
pub const BFD_MULTIPLIER: u64 = 3;
/// How long an agent waits after withdrawing on a graceful stop.
pub const WITHDRAW_DELAY_MS: u64 = 1000;
/// The BIRD binary (Debian's `bird2`, installed by `cargo xtask setup`).
pub const BIRD: &str = "/usr/sbin/bird";

/// How long `World::start*` waits for both VIPs to reach the router's table through both
/// LB nodes: the agents' health checks rise (2 × 200 ms), the BGP sessions connect (BIRD's
/// connect delay, 1 s, or a retry after 2 s) and the routes are exchanged.
const ANNOUNCE_WAIT: Duration = Duration::from_secs(30);

/// The router's route for one destination, as its kernel table holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Who installed it (`bird` for BIRD's kernel protocol).
    pub protocol: String,
    /// Its next hops: one for a plain route, several for a multipath one.
    pub next_hops: Vec<IpAddr>,
}

/// BIRD's config for the router: the kernel protocols export what BGP learns, merging
/// equal paths into one multipath route; every session has BFD at the LB nodes' timers.
fn router_config(log: &Path) -> String {
    let mut c = format!(
        "# Written by the sluice-e2e harness.\n\
         router id 10.20.0.1;\n\
         log \"{log}\" all;\n\
         protocol device {{ scan time 10; }}\n\
         # ECMP: the best route and every route equal to it go to the kernel as one\n\
         # multipath route. Nothing is learned from the kernel.\n\
         protocol kernel kernel4 {{\n  merge paths yes;\n  ipv4 {{ import none; export all; }};\n}}\n\
         protocol kernel kernel6 {{\n  merge paths yes;\n  ipv6 {{ import none; export all; }};\n}}\n\
         protocol bfd {{\n  interface \"br0\" {{ interval {BFD_INTERVAL_MS} ms; multiplier {BFD_MULTIPLIER}; }};\n}}\n\
         template bgp lb {{\n  local as {ROUTER_AS};\n  bfd on;\n  \
         # A restarted LB node is back within seconds, not BIRD's default two minutes.\n  \
         connect delay time 1;\n  connect retry time 2;\n  error wait time 1, 10;\n}}\n",
        log = log.display()
    );
    for i in 1..=2 {
        for (family, addr) in [
            ("ipv4", format!("10.20.0.1{i}")),
            ("ipv6", format!("fd20::1{i}")),
        ] {
            c.push_str(&format!(
                "protocol bgp lb{i}{v} from lb {{\n  neighbor {addr} as {LB_AS};\n  \
                 {family} {{ import all; export none; }};\n}}\n",
                v = &family[2..],
            ));
        }
    }
    c
}

/// The `[bgp]` section of LB node `i`'s config: BIRD's files under the run's directory.
pub(crate) fn lb_section(dir: &Path, i: usize) -> String {
    let bird = lb_bird_dir(dir, i);
    format!(
        "\n[bgp]\nlocal_as = {LB_AS}\nrouter_id = \"10.20.0.1{i}\"\n\
         peers = [{{ address = \"10.20.0.1\", as = {ROUTER_AS} }}, {{ address = \"fd20::1\", as = {ROUTER_AS} }}]\n\
         bfd = {{ enabled = true, interval_ms = {BFD_INTERVAL_MS}, multiplier = {BFD_MULTIPLIER} }}\n\
         bird_socket = \"{sock}\"\nbird_dir = \"{dir}\"\nbird_binary = \"{BIRD}\"\n\
         state_dir = \"{dir}/state\"\n\
         withdraw_delay_ms = {WITHDRAW_DELAY_MS}\n",
        sock = bird.join("bird.ctl").display(),
        dir = bird.display(),
    )
}

/// Where LB node `i`'s agent keeps BIRD's config, socket and pid file.
fn lb_bird_dir(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("bird-l{i}"))
}

/// The node (1 or 2) a next hop on the router's bridge belongs to.
fn node_of(hop: IpAddr) -> Option<usize> {
    let last = match hop {
        IpAddr::V4(a) if a.octets()[..3] == [10, 20, 0] => u16::from(a.octets()[3]),
        IpAddr::V6(a) if a.segments()[..7] == [0xfd20, 0, 0, 0, 0, 0, 0] => {
            // fd20::11 is segment 0x11: the same digits as the IPv4 host part.
            let s = a.segments()[7];
            (s >> 4) * 10 + (s & 0xf)
        }
        _ => return None,
    };
    match last {
        11 => Some(1),
        12 => Some(2),
        _ => None,
    }
}

/// The route for `dest` in `ip -j route show` output, if there is one.
fn parse_route(json: &[u8]) -> Option<Route> {
    let routes: serde_json::Value = serde_json::from_slice(json).ok()?;
    let r = routes.as_array()?.first()?;
    let hop = |v: &serde_json::Value| v["gateway"].as_str()?.parse::<IpAddr>().ok();
    let next_hops = match r["nexthops"].as_array() {
        Some(hops) => hops.iter().filter_map(hop).collect(),
        None => hop(r).into_iter().collect(),
    };
    Some(Route {
        protocol: r["protocol"].as_str().unwrap_or("").to_string(),
        next_hops,
    })
}

impl World {
    /// Starts BIRD on the router and waits until its control socket answers.
    pub(crate) fn start_router_bird(&mut self) {
        let conf = self.dir.join("bird-r.conf");
        std::fs::write(&conf, router_config(&self.dir.join("bird-r.log"))).expect("bird config");
        let log = std::fs::File::create(self.dir.join("bird-r.out")).expect("log");
        let err = log.try_clone().expect("log");
        // In the foreground: the harness's own child, killed with the others.
        let child = in_ns_command(&self.ns["r"], BIRD)
            .arg("-f")
            .arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg(self.bird_socket("r"))
            .arg("-P")
            .arg(self.dir.join("bird-r.pid"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("bird (installed by cargo xtask setup)");
        self.procs.insert("bird-r".into(), child);
        let start = Instant::now();
        while !self.birdc_ok("r", "show status") {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the router's BIRD did not start: {}{}",
                self.log("bird-r.out"),
                self.log("bird-r.log")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The control socket of the BIRD of `role` (`r`, `l1`, `l2`).
    pub fn bird_socket(&self, role: &str) -> PathBuf {
        match role {
            "r" => self.dir.join("bird-r.ctl"),
            _ => {
                let i = role
                    .strip_prefix('l')
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("no BIRD on {role}"));
                lb_bird_dir(&self.dir, i).join("bird.ctl")
            }
        }
    }

    /// `birdc` on the BIRD of `role` (`r`, `l1`, `l2`), run in that namespace: its output
    /// (an error text if it could not talk to BIRD).
    pub fn birdc(&self, role: &str, cmd: &str) -> String {
        match self.birdc_output(role, cmd) {
            Ok(text) => text,
            Err(e) => format!("birdc {cmd}: {e}"),
        }
    }

    fn birdc_ok(&self, role: &str, cmd: &str) -> bool {
        self.birdc_output(role, cmd).is_ok()
    }

    fn birdc_output(&self, role: &str, cmd: &str) -> Result<String, String> {
        let out = in_ns_command(&self.ns[role], "birdc")
            .arg("-s")
            .arg(self.bird_socket(role))
            .args(cmd.split_whitespace())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        // birdc exits 0 even when it cannot connect; it then says so.
        if !out.status.success() || text.contains("Unable to connect") {
            return Err(format!(
                "{text}{}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(text)
    }

    /// The router's kernel route for `vip` (an address, `/32` or `/128` implied).
    pub fn router_route(&self, vip: &str) -> Option<Route> {
        route_in(&self.ns["r"], vip)
    }

    /// The next hops of the router's route for the IPv4 VIP (none without a route).
    pub fn router_vip_next_hops(&self) -> Vec<IpAddr> {
        self.router_route(VIP)
            .map(|r| r.next_hops)
            .unwrap_or_default()
    }

    /// The next hops of the router's route for the IPv6 VIP.
    pub fn router_vip6_next_hops(&self) -> Vec<IpAddr> {
        self.router_route(VIP6)
            .map(|r| r.next_hops)
            .unwrap_or_default()
    }

    /// The LB nodes (1, 2) the router sends `vip` to, in order; a next hop that is no LB
    /// node shows as 0.
    pub fn routed_nodes(&self, vip: &str) -> Vec<usize> {
        routed_nodes_in(&self.ns["r"], vip)
    }

    /// Waits until the router sends `vip` to exactly `nodes` (none: no route) through a
    /// route BIRD installed; returns how long that took. Polls every 20 ms; panics with
    /// BIRD's view after `timeout`.
    pub fn wait_routed(&self, vip: &str, nodes: &[usize], timeout: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let route = self.router_route(vip);
            let by_bird = route.as_ref().is_none_or(|r| r.protocol == "bird");
            if by_bird && self.routed_nodes(vip) == nodes {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < timeout,
                "the router's route for {vip} is {route:?}, not via LB nodes {nodes:?}, after \
                 {timeout:?}\n{}\n{}",
                self.birdc("r", "show protocols"),
                self.birdc("r", "show route all"),
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the router reaches both VIPs through both LB nodes.
    pub(crate) fn wait_both_announced(&self) {
        for vip in [VIP, VIP6] {
            self.wait_routed(vip, &[1, 2], ANNOUNCE_WAIT);
        }
    }

    /// `sluice-lb maintenance on|off` on LB node `i`.
    pub fn lb_maintenance(&self, i: usize, on: bool) {
        self.lb_cli(i, &["maintenance", if on { "on" } else { "off" }]);
    }

    /// Stops LB node `i`'s agent gracefully (SIGTERM: it withdraws, waits
    /// `withdraw_delay_ms`, exits) and waits for it to exit; returns how long it took.
    pub fn stop_lb(&mut self, i: usize) -> Duration {
        let name = format!("l{i}");
        let start = Instant::now();
        let Some(mut child) = self.procs.remove(&name) else {
            return Duration::ZERO;
        };
        // SAFETY: signalling our own child, not yet reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return start.elapsed();
            }
            if start.elapsed() > Duration::from_secs(15) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("LB {i}'s agent did not stop within 15 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The pid of the BIRD LB node `i`'s agent started, if it runs.
    pub fn lb_bird_pid(&self, i: usize) -> Option<i32> {
        let dir = lb_bird_dir(&self.dir, i);
        let pid: i32 = std::fs::read_to_string(dir.join("bird.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        is_bird_of(pid, &dir).then_some(pid)
    }

    /// LB node `i` dies: its link to the router goes down, then its agent and its BIRD are
    /// killed (SIGKILL, so nothing is withdrawn). The link first, as when a node loses
    /// power: a BIRD killed on a live link would have its kernel close the BGP connections,
    /// and the router would learn of the death from that rather than from BFD.
    ///
    /// The router's end of the link is set down; the node's end loses its carrier but stays
    /// up, keeping its addresses and routes (an IPv6 address would not survive its
    /// interface going down).
    pub fn kill_lb_node(&mut self, i: usize) {
        sh(&format!("ip -n {} link set l{i} down", self.ns["r"]));
        // The agent before BIRD: it would start BIRD again.
        self.kill(&format!("l{i}"));
        if let Some(pid) = self.lb_bird_pid(i) {
            kill_and_wait(pid);
        }
    }

    /// Brings LB node `i` back after [`World::kill_lb_node`]: its link up, then its agent,
    /// which starts BIRD again. With `cold`, its pinned programs and maps are removed
    /// first, as after a reboot: the agent starts from empty maps.
    pub fn revive_lb_node(&mut self, i: usize, cold: bool) {
        if cold {
            self.remove_lb_pins(i);
        }
        sh(&format!("ip -n {} link set l{i} up", self.ns["r"]));
        self.start_lb(i);
    }

    /// Removes LB node `i`'s pinned links and maps (`sluice-lb detach`), which detaches
    /// its program: its next agent starts from empty maps. The agent must not run.
    pub fn remove_lb_pins(&self, i: usize) {
        let out = Command::new(bin("sluice-lb"))
            .args(["detach", "--pin-dir", &self.pin_dir(&format!("l{i}"))])
            .output()
            .expect("sluice-lb detach");
        assert!(
            out.status.success(),
            "detach: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Kills every BIRD of this run (the router's is a child, killed with the others).
    pub(crate) fn kill_lb_birds(&self) {
        for i in 1..=2 {
            if let Some(pid) = self.lb_bird_pid(i) {
                kill_and_wait(pid);
            }
        }
        // Any other BIRD whose files are in this run's directory (a pid file overwritten,
        // a BIRD started twice).
        for pid in birds_under(&self.dir.to_string_lossy()) {
            kill_and_wait(pid);
        }
    }

    /// Wall-clock times of the lines of a log of this run that contain every one of
    /// `needles` (the agents log through `tracing`, each line starting with an RFC 3339 UTC
    /// time).
    pub fn log_times(&self, name: &str, needles: &[&str]) -> Vec<SystemTime> {
        self.log(name)
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .filter_map(|l| parse_rfc3339(l.split_whitespace().next()?))
            .collect()
    }

    /// BIRD's logs, for a failure report.
    pub(crate) fn bird_logs(&self) -> String {
        let mut out = String::new();
        for (name, path) in [
            ("router", self.dir.join("bird-r.log")),
            ("lb1", lb_bird_dir(&self.dir, 1).join("bird.log")),
            ("lb2", lb_bird_dir(&self.dir, 2).join("bird.log")),
        ] {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            // The end is what matters; BIRD logs every session change.
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            out.push_str(&format!("--- BIRD {name} (last lines) ---\n"));
            for l in tail.iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

/// The kernel route for `vip` (an address, `/32` or `/128` implied) in namespace `ns`.
pub fn route_in(ns: &str, vip: &str) -> Option<Route> {
    let ip: IpAddr = vip.parse().ok()?;
    let (family, len) = if ip.is_ipv4() {
        ("-4", 32)
    } else {
        ("-6", 128)
    };
    let out = Command::new("ip")
        .args(["-j", family, "-n", ns, "route", "show"])
        .arg(format!("{ip}/{len}"))
        .output()
        .ok()?;
    parse_route(&out.stdout)
}

/// The LB nodes (1, 2) the router in namespace `ns` sends `vip` to, in order (for a thread
/// that watches the router without the `World`); a next hop that is no LB node shows as 0.
pub fn routed_nodes_in(ns: &str, vip: &str) -> Vec<usize> {
    let mut nodes: Vec<usize> = route_in(ns, vip)
        .map(|r| r.next_hops)
        .unwrap_or_default()
        .into_iter()
        .map(|h| node_of(h).unwrap_or(0))
        .collect();
    nodes.sort_unstable();
    nodes
}

/// Whether `pid` is a BIRD whose command line names `dir` (a pid file can outlive its
/// process, and the pid be reused).
fn is_bird_of(pid: i32, dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    args.first().is_some_and(|a| a.ends_with("bird"))
        && args.iter().any(|a| a.starts_with(&*dir.to_string_lossy()))
        && !is_zombie(pid)
}

/// BIRD processes whose command line names a path under `prefix`.
fn birds_under(prefix: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| is_bird_of(*pid, Path::new(prefix)))
        .collect()
}

/// A process that exited but was not reaped (BIRD's parent is whoever adopted it).
fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // The state follows the command name, which is in parentheses.
            let after = s.rsplit_once(')')?.1;
            after.split_whitespace().next().map(|st| st == "Z")
        })
        .unwrap_or(false)
}

/// SIGKILL, then waits (at most 2 s) until the process is gone: reaped here if this
/// process adopted it (see [`adopt_orphans`]), else gone or a zombie of whoever did.
fn kill_and_wait(pid: i32) {
    // SAFETY: a pid checked to be a BIRD of this harness.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        // SAFETY: waits for one given pid only, never for children that a `Child` owns.
        let reaped = unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        if reaped == pid || !Path::new(&format!("/proc/{pid}")).exists() {
            return;
        }
        if reaped < 0 && is_zombie(pid) {
            // Not ours to reap.
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Makes this process the subreaper of its descendants. The LB nodes' BIRDs daemonize, so
/// their parent exits and they are reparented: to init otherwise, which on some machines
/// never reaps them, leaving a zombie per BIRD; to this process now, which reaps each one
/// when it kills it.
pub(crate) fn adopt_orphans() {
    // SAFETY: prctl with an integer argument; it only sets a flag on this process.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
}

/// Kills BIRDs left by runs whose process is gone: their command lines name the run's
/// directory, `<tmp>/sluice-e2e-sx<pid>x<n>/…`.
pub(crate) fn sweep_dead_runs() {
    let prefix = std::env::temp_dir().join(format!("sluice-e2e-{PREFIX}"));
    let prefix = prefix.to_string_lossy().into_owned();
    for pid in birds_under(&prefix) {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline).into_owned();
        let Some(rest) = text.split(&*prefix).nth(1) else {
            continue;
        };
        let owner: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        let alive = owner
            .parse::<i32>()
            .is_ok_and(|p| Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            kill_and_wait(pid);
        }
    }
}

/// `2026-01-02T03:04:05.678901Z` as a time (UTC; fractional digits optional).
fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (h, min, s) = (t.next()??, t.next()??, t.next()??);
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().take(9).collect();
        let n: u32 = digits.parse().ok()?;
        n * 10u32.pow(9 - digits.len() as u32)
    };
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + min * 60 + s;
    let secs = u64::try_from(secs).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_from_ip_json() {
        let multi = br#"[{"dst":"198.51.100.1","protocol":"bird","metric":32,"flags":[],
            "nexthops":[{"gateway":"10.20.0.11","dev":"br0","weight":1,"flags":[]},
                        {"gateway":"10.20.0.12","dev":"br0","weight":1,"flags":[]}]}]"#;
        let r = parse_route(multi).expect("route");
        assert_eq!(r.protocol, "bird");
        assert_eq!(r.next_hops.len(), 2);
        let one = br#"[{"dst":"2001:db8::1","gateway":"fd20::12","dev":"br0","protocol":"bird","metric":32,"flags":[],"pref":"medium"}]"#;
        let r = parse_route(one).expect("route");
        assert_eq!(
            r.next_hops,
            ["fd20::12".parse::<IpAddr>().expect("literal")]
        );
        assert_eq!(parse_route(b"[]"), None);
        assert_eq!(parse_route(b""), None);
    }

    #[test]
    fn next_hops_to_nodes() {
        let n = |s: &str| node_of(s.parse().expect("literal"));
        assert_eq!(n("10.20.0.11"), Some(1));
        assert_eq!(n("fd20::12"), Some(2));
        assert_eq!(n("10.20.0.21"), None);
        assert_eq!(n("fd20::1"), None);
    }

    #[test]
    fn log_times() {
        let t = parse_rfc3339("1970-01-02T00:00:01.5Z").expect("time");
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).expect("after"),
            Duration::from_millis(86_401_500)
        );
        let t = parse_rfc3339("2024-03-01T12:00:00.000123Z").expect("time");
        // 2024-03-01 is day 19783 since the epoch.
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).expect("after"),
            Duration::new(19_783 * 86_400 + 12 * 3600, 123_000)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn router_config_has_every_session() {
        let c = router_config(Path::new("/tmp/x.log"));
        for n in ["10.20.0.11", "10.20.0.12", "fd20::11", "fd20::12"] {
            assert!(c.contains(&format!("neighbor {n} as {LB_AS};")), "{c}");
        }
        assert!(c.contains("merge paths yes;"));
    }
}
