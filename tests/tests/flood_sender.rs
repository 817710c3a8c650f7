//! The SYN flood sender against a real kernel: two namespaces of this run joined by a veth
//! pair, the flood sent from one end and counted at the other, where the receiving TCP stack
//! also verifies every checksum.

use std::{
    net::IpAddr,
    process::Command,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
    time::Duration,
};

use sluice_e2e::{
    flood::{interface_mac, Flood, FloodReport},
    in_ns, privileged, sh,
};

/// The tests here take turns: a flood measured while another floods would measure the
/// contention between them (the machine may have two cores).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Two namespaces of this run, `tx` and `rx`, joined by a veth pair (`fl0` in `tx`, `fl1`
/// in `rx`); `rx` holds the VIPs (`198.51.100.1/24`, `2001:db8::1/64`) and nothing else.
/// Deleted on drop, whether the test passes, fails or panics; their names start with the
/// harness's `sx<pid>`, so the next `World` sweeps them away if this run is killed outright.
struct Link {
    tx: String,
    rx: String,
}

impl Link {
    fn new() -> Link {
        static N: AtomicUsize = AtomicUsize::new(0);
        let tag = format!(
            "sx{}fl{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let link = Link {
            tx: format!("{tag}tx"),
            rx: format!("{tag}rx"),
        };
        // From here on, a failing step still deletes whatever was made.
        let (tx, rx) = (&link.tx, &link.rx);
        sh(&format!("ip netns add {tx}"));
        sh(&format!("ip netns add {rx}"));
        sh(&format!(
            "ip -n {tx} link add fl0 type veth peer name fl1 netns {rx}"
        ));
        // Spoofed sources have no route back: without this a reverse-path filter (strict or
        // loose, as a distribution may set it) drops every SYN before TCP sees it.
        sh(&format!(
            "ip netns exec {rx} sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.fl1.rp_filter=0"
        ));
        sh(&format!("ip -n {rx} addr add 198.51.100.1/24 dev fl1"));
        sh(&format!(
            "ip -n {rx} -6 addr add 2001:db8::1/64 dev fl1 nodad"
        ));
        sh(&format!("ip -n {rx} link set fl1 up"));
        sh(&format!("ip -n {tx} link set fl0 up"));
        link
    }

    /// A flood from `tx` to `rx`'s end of the link, to port 80 of `vip`.
    fn flood(&self, sources: &str, vip: IpAddr, count: u64, max_duration: Duration) -> Flood {
        Flood {
            ifname: "fl0".into(),
            src_mac: in_ns(&self.tx, || interface_mac("fl0")).expect("tx MAC"),
            dst_mac: in_ns(&self.rx, || interface_mac("fl1")).expect("rx MAC"),
            sources: sources.parse().expect("literal"),
            dst: (vip, 80).into(),
            count,
            max_duration,
            rate_pps: None,
            seed: 16,
        }
    }

    /// Runs `flood` in `tx`.
    fn send(&self, flood: &Flood) -> FloodReport {
        in_ns(&self.tx, || flood.run()).expect("flood")
    }

    /// `rx`'s counters: packets its end of the link received, and TCP segments its stack
    /// received and found a bad checksum in.
    ///
    /// Read through /proc/thread-self, inside the namespace: /sys/class/net shows the
    /// namespace /sys was mounted in, not the reading thread's, and /proc/self/net is the
    /// main thread's namespace.
    fn rx_counters(&self) -> RxCounters {
        in_ns(&self.rx, || {
            let dev = std::fs::read_to_string("/proc/thread-self/net/dev").expect("net/dev");
            let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp").expect("net/snmp");
            RxCounters {
                packets: dev
                    .lines()
                    .find_map(|l| l.trim_start().strip_prefix("fl1:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                    .expect("fl1 in net/dev"),
                tcp_segments: snmp_field(&snmp, "Tcp", "InSegs"),
                tcp_checksum_errors: snmp_field(&snmp, "Tcp", "InCsumErrors"),
            }
        })
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth, and with it the other end.
        for ns in [&self.tx, &self.rx] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct RxCounters {
    packets: u64,
    tcp_segments: u64,
    tcp_checksum_errors: u64,
}

/// A field of /proc/net/snmp, where each protocol has a line of names followed by a line of
/// values.
fn snmp_field(snmp: &str, proto: &str, name: &str) -> u64 {
    let prefix = format!("{proto}:");
    let mut lines = snmp.lines().filter(|l| l.starts_with(&prefix));
    let names = lines.next().expect("snmp names");
    let values = lines.next().expect("snmp values");
    let i = names
        .split_whitespace()
        .position(|n| n == name)
        .unwrap_or_else(|| panic!("{proto} {name} in snmp"));
    values
        .split_whitespace()
        .nth(i)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{proto} {name} value"))
}

/// Floods through a fresh link and checks what arrived: at least 90% of what was sent, as
/// TCP segments with good checksums.
fn flood_arrives(sources: &str, vip: &str, count: u64) {
    let link = Link::new();
    let flood = link.flood(
        sources,
        vip.parse().expect("literal"),
        count,
        Duration::from_secs(5),
    );
    let before = link.rx_counters();
    let report = link.send(&flood);
    let after = link.rx_counters();
    let packets = after.packets - before.packets;
    let segments = after.tcp_segments - before.tcp_segments;
    eprintln!(
        "{sources} -> {vip}: sent {} of {count} in {:.3} s: {:.0} packets/s, {} send errors; \
         received {packets} packets, {segments} TCP segments",
        report.sent,
        report.elapsed.as_secs_f64(),
        report.rate(),
        report.errors,
    );
    assert!(
        report.sent == count || report.elapsed >= flood.max_duration,
        "{report:?}"
    );
    assert!(report.sent > 0, "{report:?}");
    assert!(packets * 10 >= report.sent * 9, "{packets} of {report:?}");
    assert!(segments * 10 >= report.sent * 9, "{segments} of {report:?}");
    assert_eq!(
        after.tcp_checksum_errors, before.tcp_checksum_errors,
        "the receiver found bad TCP checksums"
    );
}

#[test]
fn an_ipv4_flood_arrives_with_good_checksums() {
    if !privileged() {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    flood_arrives("10.99.0.0/16", "198.51.100.1", 200_000);
}

#[test]
fn an_ipv6_flood_arrives_with_good_checksums() {
    if !privileged() {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    flood_arrives("2001:db8:99::/64", "2001:db8::1", 100_000);
}

#[test]
fn the_time_bound_and_the_pace_hold() {
    if !privileged() {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let link = Link::new();
    // Endless in count: only the time bound stops it.
    let mut flood = link.flood(
        "10.99.0.0/16",
        "198.51.100.1".parse().expect("literal"),
        u64::MAX,
        Duration::from_millis(500),
    );
    flood.rate_pps = Some(20_000);
    let report = link.send(&flood);
    eprintln!("paced: {report:?}, {:.0} packets/s", report.rate());
    assert!(report.elapsed >= flood.max_duration, "{report:?}");
    assert!(report.elapsed < Duration::from_secs(2), "{report:?}");
    // 10 000 at 20 000/s for half a second; pacing neither far behind nor ahead.
    assert!((8_000..=10_500).contains(&report.sent), "{report:?}");
}

#[test]
fn a_missing_interface_is_an_error_not_a_hang() {
    if !privileged() {
        return;
    }
    let link = Link::new();
    let mut flood = link.flood(
        "10.99.0.0/16",
        "198.51.100.1".parse().expect("literal"),
        10,
        Duration::from_secs(1),
    );
    flood.ifname = "nosuch0".into();
    let err = in_ns(&link.tx, || flood.run()).expect_err("no such interface");
    assert!(err.to_string().contains("nosuch0"), "{err}");
}
