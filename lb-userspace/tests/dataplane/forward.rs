//! The forwarding paths: encapsulation per family, next hop, flow table and table changes.

use sluice_common::{
    flow_hash,
    stats::{Lb, LbFlow},
    FlowKey, FlowKey4, FlowState, BACKEND_ALIVE, BACKEND_DRAINING, VIP_HASH_SOURCE_ONLY,
};

use crate::{
    action, assert_flow_events, assert_outcomes,
    golden::{self, model_pick, Counter, FixtureVip, Golden, Hop, VIP4},
    golden::{
        DNS4, EMPTY, NO_NEIGHBOUR, NO_ROUTE, OUTSIDE_DEVMAP, SAME_LINK, V4_ON_V6, V6_ON_V4, WEB4,
        WEB6,
    },
    lab::{self, backend_addr, backend_mac, pin_to_current_cpu, Lab, NODE_V4},
    pkt::{self, build, Extra, Flow, Tcp},
    with_lab,
};

/// Which backend the data plane chose, from the outer destination of an encapsulated frame.
pub fn chosen(out: &[u8], l2: usize) -> std::net::IpAddr {
    if out[l2] >> 4 == 4 {
        let d: [u8; 4] = out[l2 + 16..l2 + 20].try_into().expect("4 bytes");
        d.into()
    } else {
        let d: [u8; 16] = out[l2 + 24..l2 + 40].try_into().expect("16 bytes");
        d.into()
    }
}

/// The backend id of a gateway address.
pub fn id_of(addr: std::net::IpAddr) -> u32 {
    (1..=12)
        .find(|i| backend_addr(*i) == addr)
        .expect("known backend")
}

/// A tunnelled golden packet: (name, VIP, client address, client port, TCP flags (UDP:
/// ignored), TOS, next hop, outcome, flow event). Each carries the payload `golden`.
pub type TunnelRow = (
    &'static str,
    &'static FixtureVip,
    &'static str,
    u16,
    Tcp,
    u8,
    Hop,
    Lb,
    LbFlow,
);

#[rustfmt::skip]
pub const TUNNELLED: [TunnelRow; 8] = {
    use {Hop::*, Tcp::*};
    [
        ("4in4 TCP SYN, TOS copied",           &WEB4,           "203.0.113.7",   40000, Syn, 0xb8, Redirect, Lb::Redirect,     LbFlow::MissSyn),
        ("4in4 UDP",                           &DNS4,           "203.0.113.9",   5353,  Ack, 0,    Redirect, Lb::Redirect,     LbFlow::MissOther),
        ("6in6 TCP SYN, traffic class copied", &WEB6,           "2001:db8:c::5", 50000, Syn, 0x28, Redirect, Lb::Redirect,     LbFlow::MissSyn),
        ("4in6: IPv4 VIP, IPv6 gateway",       &V4_ON_V6,       "203.0.113.1",   1234,  Syn, 0,    Redirect, Lb::Redirect,     LbFlow::MissSyn),
        ("6in4: IPv6 VIP, IPv4 gateway",       &V6_ON_V4,       "2001:db8:c::1", 1234,  Syn, 0,    Redirect, Lb::Redirect,     LbFlow::MissSyn),
        ("next hop out of the ingress link",   &SAME_LINK,      "203.0.113.7",   40000, Syn, 0,    Tx,       Lb::Tx,           LbFlow::MissSyn),
        ("no neighbour entry: to the kernel",  &NO_NEIGHBOUR,   "203.0.113.7",   40000, Syn, 0,    Kernel,   Lb::KernelNeigh,  LbFlow::MissSyn),
        ("port outside the devmap: to kernel", &OUTSIDE_DEVMAP, "203.0.113.7",   40000, Syn, 0,    KernelOtherLink, Lb::RedirectMiss, LbFlow::MissSyn),
    ]
};

fn tunnelled_rows() -> Vec<Golden> {
    TUNNELLED
        .iter()
        .map(
            |&(name, vip, client, port, tcp, tos, hop, outcome, event)| {
                let flow = vip.flow(client, port);
                let extra = Extra {
                    tos,
                    ..Default::default()
                };
                let input = build(&flow, tcp, b"golden", &extra);
                let counts = [outcome.into(), event.into()];
                golden::tunnelled_row(name, vip, &flow, input, tos, hop, &counts)
            },
        )
        .collect()
}

fn dropped_rows() -> Vec<Golden> {
    let syn = |vip: &FixtureVip| {
        build(
            &vip.flow("203.0.113.7", 40000),
            Tcp::Syn,
            b"x",
            &Extra::default(),
        )
    };
    let counts = |outcome: Lb| -> [Counter; 2] { [outcome.into(), LbFlow::MissSyn.into()] };
    vec![
        golden::dropped(
            "the picked backend has no route",
            syn(&NO_ROUTE),
            &counts(Lb::FibFailure),
        ),
        golden::dropped(
            "the VIP has no backend",
            syn(&EMPTY),
            &counts(Lb::NoBackend),
        ),
    ]
}

#[test]
fn tunnel_families_and_next_hops() {
    let mut rows = tunnelled_rows();
    rows.extend(dropped_rows());
    golden::check_lb(rows);
}

/// Every tunnelled row again as an established flow: its first packet makes the flow entry
/// (and caches the next hop), and the next two, a flow-table hit each, must give the same
/// golden bytes. Untagged IPv4 packets take the fast path
/// (`xdp-ebpf/src/fast_path.rs`) and the rest the general one, so this holds both to the
/// same bytes and counters.
#[test]
fn established_packets_give_the_golden_bytes() {
    let mut rows = Vec::new();
    for &(name, vip, client, port, _, tos, hop, outcome, _) in &TUNNELLED {
        let flow = vip.flow(client, port);
        let extra = Extra {
            tos,
            ..Default::default()
        };
        let first = build(&flow, Tcp::Syn, b"first", &extra);
        let first_event = if vip.tcp {
            LbFlow::MissSyn
        } else {
            LbFlow::MissOther
        };
        rows.push(golden::tunnelled_row(
            name,
            vip,
            &flow,
            first,
            tos,
            hop,
            &[outcome.into(), first_event.into()],
        ));
        for payload in [&b"established"[..], b"and again"] {
            let input = build(&flow, Tcp::Ack, payload, &extra);
            rows.push(golden::tunnelled_row(
                name,
                vip,
                &flow,
                input,
                tos,
                hop,
                &[outcome.into()],
            ));
        }
    }
    golden::check_lb(rows);
}

/// IPv4 flows an earlier version left in the dual-stack table are moved to the IPv4 one
/// and keep their backend, even one the table would no longer pick; an entry this build made
/// meanwhile wins over the old one.
#[test]
fn ipv4_flows_left_in_the_dual_stack_table_are_moved_and_keep_their_backend() {
    with_lab(|lab| {
        lab.vip(0, VIP4, 80, 6, 0, &[1, 2, 3]);
        let flow = Flow::tcp("203.0.113.7", 40000, VIP4, 80);
        lab.run(&build(&flow, Tcp::Syn, b"", &Extra::default()));
        let made = lab.dp.flow(&flow.key()).expect("read").expect("entry");
        let other = [1, 2, 3]
            .into_iter()
            .find(|b| *b != made.backend)
            .expect("another backend");
        let old = FlowState {
            backend: other,
            ..made
        };
        let key = flow.key();
        fn flows4(
            lab: &mut Lab,
        ) -> aya::maps::HashMap<&mut aya::maps::MapData, FlowKey4, FlowState> {
            let map = lab.dp.ebpf_mut().map_mut("SLUICE_FLOWS4").expect("map");
            aya::maps::HashMap::try_from(map).expect("hash")
        }
        let leave_old = |lab: &mut Lab| {
            let map = lab.dp.ebpf_mut().map_mut("SLUICE_FLOWS").expect("map");
            let mut m: aya::maps::HashMap<_, FlowKey, FlowState> =
                aya::maps::HashMap::try_from(map).expect("hash");
            m.insert(key, old, 0).expect("insert");
        };
        // As an earlier version left it: in the dual-stack table only.
        flows4(lab).remove(&key.v4()).expect("remove");
        leave_old(lab);
        assert_eq!(lab.dp.migrate_v4_flows().expect("migrate"), 1);
        assert_eq!(lab.dp.flow(&key).expect("read"), Some(old));
        assert_eq!(
            lab.dp.flow_count_entries().expect("count"),
            1,
            "moved, not copied"
        );
        let out = lab.run(&build(&flow, Tcp::Ack, b"data", &Extra::default()));
        assert_eq!(id_of(chosen(&out.data, 14)), other, "kept its backend");
        assert_flow_events(lab, &[(LbFlow::MissSyn, 1)]);
        // Left again while this build made its own entry: the new one stays.
        flows4(lab).insert(key.v4(), made, 0).expect("insert");
        leave_old(lab);
        assert_eq!(lab.dp.migrate_v4_flows().expect("migrate"), 1);
        assert_eq!(lab.dp.flow(&key).expect("read"), Some(made));
        assert_eq!(lab.dp.flow_count_entries().expect("count"), 1);
    });
}

/// With entropy bits in the outer IPv4 source, an established packet carries the same outer
/// source as its flow's first packet: both paths take it from the flow hash.
#[test]
fn established_packets_keep_the_outer_source_entropy() {
    with_lab(|lab| {
        golden::configure(lab);
        // The last two octets of the outer source come from the flow hash.
        lab.set_node(|n| n.src_v4_entropy = u32::from_ne_bytes([0, 0, 0xff, 0xff]));
        for port in 40000..40008 {
            let flow = WEB4.flow("203.0.113.7", port);
            let syn = lab.run(&build(&flow, Tcp::Syn, b"", &Extra::default()));
            let ack = lab.run(&build(&flow, Tcp::Ack, b"", &Extra::default()));
            assert_eq!(ack.action, action::REDIRECT);
            let h = flow_hash(&flow.key()).to_ne_bytes();
            let node: std::net::Ipv4Addr = NODE_V4.parse().expect("literal");
            let o = node.octets();
            let want = [o[0], o[1], h[2], h[3]];
            assert_eq!(syn.data[26..30], want, "first packet's outer source");
            assert_eq!(ack.data[26..30], want, "established packet's outer source");
            // The outer headers differ only in their total length and checksum.
            assert_eq!(syn.data[..16], ack.data[..16]);
            assert_eq!(syn.data[18..24], ack.data[18..24]);
            assert_eq!(syn.data[26..34], ack.data[26..34]);
        }
    });
}

#[test]
fn forwarded_flows_are_remembered_and_counted() {
    with_lab(|lab| {
        golden::configure(lab);
        let flow = WEB4.flow("203.0.113.7", 40000);
        let input = build(&flow, Tcp::Syn, b"hello", &Extra::default());
        assert_eq!(lab.run(&input).action, action::REDIRECT);
        let b = model_pick(&flow, WEB4.backends, false);
        assert_eq!(
            lab.dp.flow(&flow.key()).expect("read").map(|s| s.backend),
            Some(b)
        );
        let vip = lab.dp.vip_traffic(WEB4.id).expect("read");
        assert_eq!((vip.packets, vip.bytes), (1, input.len() as u64));
        let be = lab.dp.backend_traffic(b).expect("read");
        assert_eq!((be.packets, be.bytes), (1, input.len() as u64));
        // A second datagram of a UDP flow hits the flow table.
        let flow = DNS4.flow("203.0.113.9", 5353);
        let input = build(&flow, Tcp::Ack, b"query", &Extra::default());
        let first = lab.run(&input);
        assert_eq!(first.action, action::REDIRECT);
        let second = lab.run(&input);
        assert_eq!(second.data, first.data);
        assert_outcomes(lab, &[(Lb::Redirect, 3)]);
        assert_flow_events(lab, &[(LbFlow::MissSyn, 1), (LbFlow::MissOther, 1)]);
    });
}

#[test]
fn established_flow_keeps_its_backend_after_a_table_change() {
    with_lab(|lab| {
        lab.vip(0, VIP4, 80, 6, 0, &[1, 2, 3]);
        let flow = Flow::tcp("203.0.113.7", 40000, VIP4, 80);
        let syn = build(&flow, Tcp::Syn, b"", &Extra::default());
        let first = chosen(&lab.run(&syn).data, 14);
        // Rebuild the table without that backend (it stays alive: e.g. a weight change).
        let others: Vec<u32> = [1, 2, 3]
            .into_iter()
            .filter(|i| backend_addr(*i) != first)
            .collect();
        lab.retable(0, &others);
        let ack = build(&flow, Tcp::Ack, b"data", &Extra::default());
        let out = lab.run(&ack);
        assert_eq!(out.action, action::REDIRECT);
        assert_eq!(
            chosen(&out.data, 14),
            first,
            "flow-table hit keeps the backend"
        );
        assert_flow_events(lab, &[(LbFlow::MissSyn, 1)]);
        // A new SYN for the same 5-tuple takes a fresh pick from the new table.
        let out = lab.run(&syn);
        let again = chosen(&out.data, 14);
        assert_ne!(again, first);
        assert_eq!(id_of(again), model_pick(&flow, &others, false));
        assert_eq!(
            lab.dp.flow(&flow.key()).expect("read").map(|s| s.backend),
            Some(id_of(again))
        );
    });
}

#[test]
fn dead_backend_entry_is_repicked() {
    with_lab(|lab| {
        lab.vip(0, VIP4, 80, 6, 0, &[1, 2, 3]);
        let flow = Flow::tcp("203.0.113.8", 40001, VIP4, 80);
        let first = id_of(chosen(
            &lab.run(&build(&flow, Tcp::Syn, b"", &Extra::default()))
                .data,
            14,
        ));
        lab.set_flags(first, 0);
        let others: Vec<u32> = [1, 2, 3].into_iter().filter(|i| *i != first).collect();
        lab.retable(0, &others);
        let out = lab.run(&build(&flow, Tcp::Ack, b"", &Extra::default()));
        assert_eq!(out.action, action::REDIRECT);
        let now = id_of(chosen(&out.data, 14));
        assert_eq!(now, model_pick(&flow, &others, false));
        assert_flow_events(lab, &[(LbFlow::MissSyn, 1), (LbFlow::Repick, 1)]);
        assert_eq!(
            lab.dp.flow(&flow.key()).expect("read").map(|s| s.backend),
            Some(now)
        );
    });
}

#[test]
fn draining_backend_keeps_established_flows_and_gets_no_new_ones() {
    with_lab(|lab| {
        lab.vip(0, VIP4, 80, 6, 0, &[1, 2, 3]);
        // Find a flow that lands on backend 2.
        let flow = (40000..41000)
            .map(|p| Flow::tcp("203.0.113.10", p, VIP4, 80))
            .find(|f| model_pick(f, &[1, 2, 3], false) == 2)
            .expect("some port maps to backend 2");
        lab.run(&build(&flow, Tcp::Syn, b"", &Extra::default()));
        lab.set_flags(2, BACKEND_ALIVE | BACKEND_DRAINING);
        lab.retable(0, &[1, 3]);
        let out = lab.run(&build(&flow, Tcp::Ack, b"more", &Extra::default()));
        assert_eq!(
            id_of(chosen(&out.data, 14)),
            2,
            "established flow stays on the draining backend"
        );
        // New connections avoid it, including a SYN reusing the same 5-tuple.
        let out = lab.run(&build(&flow, Tcp::Syn, b"", &Extra::default()));
        assert_ne!(id_of(chosen(&out.data, 14)), 2);
        for p in 50000..50050 {
            let f = Flow::tcp("203.0.113.11", p, VIP4, 80);
            let out = lab.run(&build(&f, Tcp::Syn, b"", &Extra::default()));
            assert_ne!(id_of(chosen(&out.data, 14)), 2);
        }
    });
}

#[test]
fn client_ip_persistence_hashes_the_source_only() {
    with_lab(|lab| {
        lab.vip(0, VIP4, 80, 6, VIP_HASH_SOURCE_ONLY, &[1, 2, 3, 4]);
        let mut seen = std::collections::HashSet::new();
        for p in 1000..1064 {
            let flow = Flow::tcp("203.0.113.50", p, VIP4, 80);
            let out = lab.run(&build(&flow, Tcp::Syn, b"", &Extra::default()));
            let id = id_of(chosen(&out.data, 14));
            assert_eq!(id, model_pick(&flow, &[1, 2, 3, 4], true));
            seen.insert(id);
        }
        assert_eq!(
            seen.len(),
            1,
            "every port of one client reaches one backend"
        );
        // Different clients still spread.
        let spread: std::collections::HashSet<u32> = (1..=64)
            .map(|i| {
                let flow = Flow::tcp(&format!("203.0.113.{i}"), 1000, VIP4, 80);
                id_of(chosen(
                    &lab.run(&build(&flow, Tcp::Syn, b"", &Extra::default()))
                        .data,
                    14,
                ))
            })
            .collect();
        assert!(spread.len() > 1);
    });
}

#[test]
fn outer_source_entropy_and_ttl_follow_node_config() {
    with_lab(|lab| {
        lab.vip(0, VIP4, 80, 6, 0, &[1]);
        let (src, _) = sluice_lb::addr::words(NODE_V4.parse().expect("literal"));
        let mask = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
        lab.dp
            .set_node(&sluice_common::NodeConfig {
                src_v4: src[0],
                src_v4_entropy: mask,
                ttl: 17,
                ..Default::default()
            })
            .expect("node");
        let flow = Flow::tcp("203.0.113.7", 40000, VIP4, 80);
        let input = build(&flow, Tcp::Syn, b"", &Extra::default());
        let out = lab.run(&input);
        let h = flow_hash(&flow.key());
        let want_src = (src[0] & !mask) | (h & mask);
        assert_eq!(&out.data[14 + 12..14 + 16], &want_src.to_ne_bytes());
        assert_eq!(out.data[14 + 8], 17, "outer TTL");
        let ip = etherparse::Ipv4HeaderSlice::from_slice(&out.data[14..]).expect("outer header");
        assert_eq!(ip.header_checksum(), ip.to_header().calc_header_checksum());
        // The inner packet is untouched.
        assert_eq!(&out.data[34..], &input[14..]);
        let _ = pkt::inner_ip_len(&input[14..]);
    });
}

#[test]
fn next_hop_is_cached_briefly_then_looked_up_again() {
    with_lab(|lab| {
        lab.vip(0, VIP4, 80, 6, 0, &[1]);
        let flow = Flow::tcp("203.0.113.7", 40000, VIP4, 80);
        let input = build(&flow, Tcp::Syn, b"", &Extra::default());
        // The cache is per CPU: keep this thread on one.
        pin_to_current_cpu();
        assert_eq!(&lab.run(&input).data[..6], &backend_mac(1));
        let cached_at = std::time::Instant::now();
        // The neighbour moves: the cached answer is used until it expires.
        sluice_e2e::sh(
            "ip neigh replace 10.1.0.11 lladdr 02:00:00:00:09:99 nud permanent dev int0",
        );
        let still = lab.run(&input);
        // The shortest lifetime (at HZ=1000) is 25 ms; a slower host may have passed it.
        if cached_at.elapsed()
            < std::time::Duration::from_millis(sluice_common::NEXT_HOP_TTL_JIFFIES)
        {
            assert_eq!(&still.data[..6], &backend_mac(1));
        }
        let ttl = std::time::Duration::from_millis(sluice_common::NEXT_HOP_TTL_MAX_MS);
        std::thread::sleep(ttl + std::time::Duration::from_millis(50));
        assert_eq!(&lab.run(&input).data[..6], &[0x02, 0, 0, 0, 0x09, 0x99]);
        // Giving the backend id another address drops its cached next hop at once.
        lab.dp
            .set_backend(1, &sluice_lb::addr::backend(backend_addr(2), BACKEND_ALIVE))
            .expect("backend");
        let out = lab.run(&input);
        assert_eq!(&out.data[..6], &backend_mac(2));
        assert_eq!(chosen(&out.data, 14), backend_addr(2));
    });
}

#[test]
fn removing_a_vip_invalidates_its_flows() {
    with_lab(|lab| {
        lab.vip(0, VIP4, 80, 6, 0, &[1, 2, 3]);
        let flow = Flow::tcp("203.0.113.7", 40000, VIP4, 80);
        let ack = build(&flow, Tcp::Ack, b"", &Extra::default());
        assert_eq!(lab.run(&ack).action, action::REDIRECT);
        let key = sluice_lb::addr::vip_key(VIP4.parse().expect("literal"), 80, 6);
        let gen = lab.dp.vip(&key).expect("read").expect("vip").gen;
        lab.dp.remove_vip(&key).expect("remove");
        // The flow entry is still in the table, but no longer honoured: the address is still
        // a VIP's (its marker stays while any VIP uses it), with no service on that port.
        assert!(lab.dp.flow(&flow.key()).expect("read").is_some());
        assert_eq!(lab.run(&ack).action, action::DROP);
        // Re-created, even with the same id: a new incarnation, so the flow is picked afresh.
        lab.vip(0, VIP4, 80, 6, 0, &[4]);
        assert_ne!(lab.dp.vip(&key).expect("read").expect("vip").gen, gen);
        let out = lab.run(&ack);
        assert_eq!(id_of(chosen(&out.data, 14)), 4);
        assert_flow_events(lab, &[(LbFlow::MissOther, 2)]);
        // A table change keeps the generation, so established flows survive it.
        let gen = lab.dp.vip(&key).expect("read").expect("vip").gen;
        lab.retable(0, &[1]);
        assert_eq!(lab.dp.vip(&key).expect("read").expect("vip").gen, gen);
        assert_eq!(id_of(chosen(&lab.run(&ack).data, 14)), 4);
    });
}

/// Collects aya-log records.
struct Capture(std::sync::Mutex<Vec<String>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        if let Ok(mut v) = self.0.lock() {
            v.push(record.args().to_string());
        }
    }
    fn flush(&self) {}
}

#[test]
fn debug_logging_exists_only_when_switched_on_at_load() {
    if !sluice_e2e::privileged() {
        return;
    }
    // The helpers the verified program calls, from its translated code: the verifier
    // removes the branch the load-time switch rules out, so logging is there only when on.
    let calls = |debug: bool| {
        sluice_e2e::in_new_ns(|| {
            let mut lab = Lab::new(&sluice_lb::dataplane::LoadOptions {
                debug,
                ..Default::default()
            });
            let prog = lab
                .dp
                .program(sluice_common::programs::LB)
                .expect("program");
            let id = prog.info().expect("info").id().to_string();
            let out = std::process::Command::new("bpftool")
                .args(["prog", "dump", "xlated", "id", &id])
                .output()
                .expect("bpftool (installed by cargo xtask setup)");
            assert!(out.status.success(), "bpftool prog dump xlated");
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.split(" call ").nth(1))
                .map(|c| c.split('#').next().unwrap_or(c).to_string())
                .collect::<std::collections::BTreeSet<_>>()
        })
    };
    let (off, on) = (calls(false), calls(true));
    let logs = |calls: &std::collections::BTreeSet<String>| {
        calls.iter().any(|c| c.starts_with("bpf_ringbuf_"))
    };
    assert!(
        logs(&on),
        "the debug build logs (through aya-log's ring buffer): {on:?}"
    );
    assert!(!logs(&off), "logging must be removed when off: {off:?}");

    sluice_e2e::in_new_ns(|| {
        let mut lab = Lab::new(&sluice_lb::dataplane::LoadOptions {
            debug: true,
            ..Default::default()
        });
        let capture: &'static Capture = Box::leak(Box::new(Capture(Default::default())));
        let mut logger =
            aya_log::EbpfLogger::init_with_logger(lab.dp.ebpf_mut(), capture).expect("logger");
        lab.vip(3, VIP4, 80, 6, 0, &[2]);
        let flow = Flow::tcp("203.0.113.7", 40000, VIP4, 80);
        // The established packet is logged as well: with logging on, the general path,
        // which logs, takes every packet (the fast path and the logging would not fit in
        // the verifier's stack together).
        for tcp in [Tcp::Syn, Tcp::Ack] {
            let out = lab.run(&build(&flow, tcp, b"", &Extra::default()));
            assert_eq!(out.action, action::REDIRECT);
        }
        logger.flush();
        let got = capture.0.lock().expect("lock").clone();
        assert_eq!(got, vec!["vip 3 backend 2".to_string(); 2]);
    });
}

#[test]
fn table_flips_under_traffic_drop_nothing() {
    if !sluice_e2e::privileged() {
        return;
    }
    let pin_dir =
        std::path::PathBuf::from(format!("/sys/fs/bpf/sluice-flip-{}", std::process::id()));
    struct Unpin(std::path::PathBuf);
    impl Drop for Unpin {
        fn drop(&mut self) {
            let _ = sluice_lb::attach::detach(&self.0);
        }
    }
    let _unpin = Unpin(pin_dir.clone());
    let opts = sluice_lb::dataplane::LoadOptions {
        pin_dir: Some(pin_dir.clone()),
        ..Default::default()
    };
    sluice_e2e::in_new_ns(|| {
        let mut lab = Lab::new(&opts);
        lab.vip(0, VIP4, 80, 6, 0, &[1, 2]);
        let table_a = lab::table(&[1, 2], sluice_common::DEFAULT_TABLE_SIZE);
        let table_b = lab::table(&[3, 4], sluice_common::DEFAULT_TABLE_SIZE);
        let stop = std::sync::atomic::AtomicBool::new(false);
        let flipped = std::sync::atomic::AtomicU32::new(0);
        let flips = std::thread::scope(|s| {
            // Another process's view of the same pinned maps flips the VIP between two
            // backend sets as fast as it can, the way the agent would.
            let updater = s.spawn(|| {
                let mut dp = sluice_lb::dataplane::DataPlane::load(&opts).expect("adopt pins");
                let key = sluice_lb::addr::vip_key(VIP4.parse().expect("literal"), 80, 6);
                let mut flips = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let mut meta = dp.vip(&key).expect("read").expect("vip");
                    let next = meta.active ^ 1;
                    let table = if flips.is_multiple_of(2) {
                        &table_b
                    } else {
                        &table_a
                    };
                    dp.write_table(0, next, table).expect("write");
                    meta.active = next;
                    dp.set_vip(&key, &meta).expect("flip");
                    flips += 1;
                    flipped.store(flips, std::sync::atomic::Ordering::Relaxed);
                }
                flips
            });
            // Traffic starts once the flipping has.
            while flipped.load(std::sync::atomic::Ordering::Relaxed) == 0 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            for port in 0..3000u16 {
                let flow = Flow::tcp("203.0.113.60", 10_000 + port, VIP4, 80);
                let out = lab.run(&build(&flow, Tcp::Syn, b"", &Extra::default()));
                assert_eq!(
                    out.action,
                    action::REDIRECT,
                    "packet {port} dropped during a flip"
                );
                let slot = sluice_common::maglev_slot(
                    flow_hash(&flow.key()),
                    sluice_common::DEFAULT_TABLE_SIZE,
                ) as usize;
                let got = id_of(chosen(&out.data, 14));
                assert!(
                    got == table_a[slot] || got == table_b[slot],
                    "packet {port} went to {got}, in neither table"
                );
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            updater.join().expect("updater")
        });
        eprintln!("{flips} table flips during 3000 packets");
        assert!(flips > 10, "only {flips} flips happened during the traffic");
        assert_outcomes(&lab, &[(Lb::Redirect, 3000)]);
    });
}
