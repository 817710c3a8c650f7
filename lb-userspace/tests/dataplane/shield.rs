//! The shield (blocked source prefixes) and the flood guard, through BPF_PROG_TEST_RUN.

use sluice_common::{
    stats::{BlockReason, Lb, LbFlow},
    BlockEntry, BLOCK_FOREVER, FLOOD_WINDOW_NS,
};
use sluice_lb::dataplane::{monotonic_ns, LoadOptions};

use crate::{
    action, assert_flow_events, assert_outcomes,
    golden::{model_pick, VIP4, VIP6},
    lab::{backend_addr, pin_to_cpu, Lab},
    pkt::{build, Extra, Flow, Tcp},
    with_lab,
};

const WEB: &[u32] = &[1, 2, 3];
const WEB_V6: &[u32] = &[5, 6, 7];

fn setup(lab: &mut Lab) {
    lab.vip(0, VIP4, 80, 6, 0, WEB);
    lab.vip(1, VIP6, 443, 6, 0, WEB_V6);
    lab.set_node(|n| n.shield = 1);
}

fn block(lab: &mut Lab, prefix: &str, slot: u32, reason: BlockReason, expires_ns: u64) {
    let entry = BlockEntry {
        expires_ns,
        slot,
        reason: reason as u32,
    };
    lab.dp
        .set_block(prefix.parse().expect("literal"), &entry)
        .expect("block");
}

fn syn(src: &str, dst: &str, port: u16) -> Vec<u8> {
    build(
        &Flow::tcp(src, 40000, dst, port),
        Tcp::Syn,
        b"",
        &Extra::default(),
    )
}

fn in_a_minute() -> u64 {
    monotonic_ns() + 60_000_000_000
}

/// A source blocked after its flow was established: its next packets, flow-table hits that
/// the fast path would forward, are dropped and counted against the entry.
#[test]
fn a_source_blocked_mid_flow_is_dropped() {
    with_lab(|lab| {
        setup(lab);
        let flow = Flow::tcp("203.0.113.7", 40000, VIP4, 80);
        let ack = build(&flow, Tcp::Ack, b"data", &Extra::default());
        assert_eq!(
            lab.run(&syn("203.0.113.7", VIP4, 80)).action,
            action::REDIRECT
        );
        assert_eq!(lab.run(&ack).action, action::REDIRECT);
        block(
            lab,
            "203.0.113.7/32",
            3,
            BlockReason::RateLimited,
            in_a_minute(),
        );
        for _ in 0..3 {
            assert_eq!(lab.run(&ack).action, action::DROP);
        }
        assert_outcomes(lab, &[(Lb::Redirect, 2), (Lb::Blocked, 3)]);
        assert_eq!(lab.dp.block_drops(3).expect("read"), 3);
        assert_eq!(
            lab.dp
                .block_reason_drops(BlockReason::RateLimited)
                .expect("read"),
            3
        );
        // Unblocked, the flow goes on to the backend it had.
        lab.dp
            .remove_block("203.0.113.7/32".parse().expect("literal"))
            .expect("unblock");
        assert_eq!(lab.run(&ack).action, action::REDIRECT);
        assert_flow_events(lab, &[(LbFlow::MissSyn, 1)]);
    });
}

#[test]
fn blocked_sources_are_dropped_before_any_flow_work() {
    with_lab(|lab| {
        setup(lab);
        block(lab, "203.0.113.0/24", 7, BlockReason::Auth, in_a_minute());
        // The IPv4 fast path drops it itself (before its pick is recorded or counted).
        let out = lab.run_fast_path(&syn("203.0.113.7", VIP4, 80));
        assert_eq!(out.action, action::DROP);
        assert_outcomes(lab, &[(Lb::Blocked, 1)]);
        assert_flow_events(lab, &[]);
        let flow = Flow::tcp("203.0.113.7", 40000, VIP4, 80);
        assert_eq!(lab.dp.flow(&flow.key()).expect("read"), None, "no entry");
        assert_eq!(lab.dp.block_drops(7).expect("read"), 1);
        assert_eq!(
            lab.dp.block_reason_drops(BlockReason::Auth).expect("read"),
            1
        );
        // An established packet from the same source is dropped as well.
        let ack = build(&flow, Tcp::Ack, b"data", &Extra::default());
        assert_eq!(lab.run(&ack).action, action::DROP);
        assert_eq!(lab.dp.block_drops(7).expect("read"), 2);
        // And a tagged SYN, which the general path parses and drops, with no flow work.
        let tagged = Extra {
            vlan: Some(7),
            ..Default::default()
        };
        let out = lab.run(&build(&flow, Tcp::Syn, b"", &tagged));
        assert_eq!(out.action, action::DROP);
        assert_flow_events(lab, &[]);
        assert_eq!(lab.dp.block_drops(7).expect("read"), 3);
        // A source outside the prefix is forwarded as usual.
        let out = lab.run(&syn("203.0.114.7", VIP4, 80));
        assert_eq!(out.action, action::REDIRECT);
        assert_outcomes(lab, &[(Lb::Blocked, 3), (Lb::Redirect, 1)]);
        for r in BlockReason::ALL {
            let want = if *r == BlockReason::Auth { 3 } else { 0 };
            assert_eq!(lab.dp.block_reason_drops(*r).expect("read"), want, "{r:?}");
        }
    });
}

/// An ICMP fragmentation-needed error from `sender` about the VIP's packet to `client`.
fn icmp_error(sender: &str, client: &str) -> Vec<u8> {
    use etherparse::{icmpv4, Icmpv4Type, PacketBuilder};
    let o4 = |s: &str| s.parse::<std::net::Ipv4Addr>().expect("literal").octets();
    let mut quoted = Vec::new();
    PacketBuilder::ipv4(o4(VIP4), o4(client), 64)
        .tcp(80, 40000, 7, 1000)
        .ack(1)
        .write(&mut quoted, &[0u8; 100])
        .expect("write");
    quoted.truncate(28);
    let mut icmp = Vec::new();
    PacketBuilder::ethernet2(crate::lab::ROUTER_MAC, crate::lab::EXT_MAC)
        .ipv4(o4(sender), o4(VIP4), 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 68 },
        ))
        .write(&mut icmp, &quoted)
        .expect("write");
    icmp
}

#[test]
fn icmp_errors_are_blocked_by_their_sender_and_by_the_client_they_quote() {
    with_lab(|lab| {
        setup(lab);
        block(
            lab,
            "198.51.100.0/24",
            1,
            BlockReason::Manual,
            in_a_minute(),
        );
        block(lab, "203.0.113.7/32", 2, BlockReason::Auth, in_a_minute());
        // A blocked host forging an error about someone else's flow.
        let out = lab.run(&icmp_error("198.51.100.9", "192.0.2.55"));
        assert_eq!(out.action, action::DROP);
        // An error about a blocked client's flow.
        let out = lab.run(&icmp_error("10.0.0.254", "203.0.113.7"));
        assert_eq!(out.action, action::DROP);
        // Neither blocked: routed to the quoted flow's gateway.
        let out = lab.run(&icmp_error("10.0.0.254", "192.0.2.55"));
        assert_eq!(out.action, action::REDIRECT);
        assert_outcomes(lab, &[(Lb::Blocked, 2), (Lb::Redirect, 1)]);
        assert_eq!(lab.dp.block_drops(1).expect("read"), 1);
        assert_eq!(lab.dp.block_drops(2).expect("read"), 1);
    });
}

#[test]
fn the_longest_prefix_decides_and_counts() {
    with_lab(|lab| {
        setup(lab);
        block(lab, "203.0.0.0/16", 1, BlockReason::Manual, in_a_minute());
        block(
            lab,
            "203.0.113.7/32",
            2,
            BlockReason::RateLimited,
            in_a_minute(),
        );
        for src in ["203.0.113.7", "203.0.113.7", "203.0.9.9"] {
            assert_eq!(lab.run(&syn(src, VIP4, 80)).action, action::DROP, "{src}");
        }
        assert_eq!(lab.dp.block_drops(2).expect("read"), 2, "the /32");
        assert_eq!(lab.dp.block_drops(1).expect("read"), 1, "the /16");
        assert_eq!(
            lab.dp
                .block_reason_drops(BlockReason::RateLimited)
                .expect("read"),
            2
        );
        assert_eq!(
            lab.dp
                .block_reason_drops(BlockReason::Manual)
                .expect("read"),
            1
        );
        // Just outside the /16 on either side.
        for src in ["203.1.0.0", "202.255.255.255"] {
            assert_eq!(
                lab.run(&syn(src, VIP4, 80)).action,
                action::REDIRECT,
                "{src}"
            );
        }
        // Removing the /32 leaves the /16 in force for that address.
        assert!(lab
            .dp
            .remove_block("203.0.113.7/32".parse().expect("literal"))
            .expect("rm"));
        assert!(!lab
            .dp
            .remove_block("203.0.113.7/32".parse().expect("literal"))
            .expect("rm"));
        assert_eq!(lab.run(&syn("203.0.113.7", VIP4, 80)).action, action::DROP);
        assert_eq!(lab.dp.block_drops(1).expect("read"), 2);
        let listed: Vec<String> = lab
            .dp
            .blocks()
            .expect("list")
            .iter()
            .map(|(p, _)| p.to_string())
            .collect();
        assert_eq!(listed, ["203.0.0.0/16"]);
    });
}

#[test]
fn ipv6_prefixes_and_families_never_mix() {
    with_lab(|lab| {
        setup(lab);
        block(
            lab,
            "2001:db8:c::/64",
            3,
            BlockReason::Malformed,
            in_a_minute(),
        );
        // 32.1.13.184 is the first four bytes of 2001:db8::/32: an IPv4 entry must not
        // match IPv6 sources that start with the same bytes, nor the reverse.
        block(lab, "32.1.13.184/32", 4, BlockReason::Manual, in_a_minute());
        assert_eq!(
            lab.run(&syn("2001:db8:c::5", VIP6, 443)).action,
            action::DROP
        );
        assert_eq!(
            lab.run(&syn("2001:db8:d::5", VIP6, 443)).action,
            action::REDIRECT,
            "another /64"
        );
        assert_eq!(lab.dp.block_drops(3).expect("read"), 1);
        assert_eq!(lab.dp.block_drops(4).expect("read"), 0, "the IPv4 entry");
        assert_eq!(lab.run(&syn("32.1.13.184", VIP4, 80)).action, action::DROP);
        assert_eq!(lab.dp.block_drops(4).expect("read"), 1);
        assert_outcomes(lab, &[(Lb::Blocked, 2), (Lb::Redirect, 1)]);
    });
}

#[test]
fn expired_entries_no_longer_drop() {
    with_lab(|lab| {
        setup(lab);
        block(
            lab,
            "203.0.113.1/32",
            1,
            BlockReason::Auth,
            monotonic_ns() - 1,
        );
        block(lab, "203.0.113.2/32", 2, BlockReason::Auth, BLOCK_FOREVER);
        let short = monotonic_ns() + 300_000_000;
        block(lab, "203.0.113.3/32", 3, BlockReason::Auth, short);
        let flow = Flow::tcp("203.0.113.1", 40000, VIP4, 80);
        let out = lab.run(&build(&flow, Tcp::Syn, b"", &Extra::default()));
        assert_eq!(out.action, action::REDIRECT, "expired: forwarded as usual");
        assert_eq!(
            lab.dp.flow(&flow.key()).expect("read").map(|s| s.backend),
            Some(model_pick(&flow, WEB, false))
        );
        assert_eq!(lab.run(&syn("203.0.113.2", VIP4, 80)).action, action::DROP);
        assert_eq!(lab.run(&syn("203.0.113.3", VIP4, 80)).action, action::DROP);
        while monotonic_ns() <= short {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(
            lab.run(&syn("203.0.113.3", VIP4, 80)).action,
            action::REDIRECT,
            "expired while installed"
        );
        assert_eq!(lab.dp.block_drops(1).expect("read"), 0);
        assert_eq!(lab.dp.block_drops(3).expect("read"), 1);
    });
}

#[test]
fn traffic_not_for_a_vip_is_never_blocked() {
    with_lab(|lab| {
        setup(lab);
        block(lab, "203.0.113.0/24", 1, BlockReason::Manual, BLOCK_FOREVER);
        // Another address: to the kernel; a VIP address on a port that is no VIP: dropped
        // as no service's, not as the shield's.
        for (dst, port) in [("10.0.0.1", 22), ("10.0.0.1", 80)] {
            let out = lab.run(&syn("203.0.113.7", dst, port));
            assert_eq!(out.action, action::PASS, "{dst}:{port}");
        }
        assert_eq!(lab.run(&syn("203.0.113.7", VIP4, 22)).action, action::DROP);
        assert_outcomes(lab, &[(Lb::Pass, 2), (Lb::NoService, 1)]);
        assert_eq!(lab.dp.block_drops(1).expect("read"), 0);
        // With the switch off the entries are not even looked at.
        lab.set_node(|n| n.shield = 0);
        assert_eq!(
            lab.run(&syn("203.0.113.7", VIP4, 80)).action,
            action::REDIRECT
        );
    });
}

/// Runs SYNs of `n` distinct never-seen flows (client ports from `first_port`), each
/// checked against the model's pick.
fn syn_flood(lab: &mut Lab, src: &str, first_port: u16, n: u16) -> Vec<Flow> {
    let flows = fast_flood(lab, src, first_port, n);
    for (flow, out) in &flows {
        let dst = &out[14 + 16..14 + 20];
        let want = backend_addr(model_pick(flow, WEB, false));
        assert_eq!(
            std::net::IpAddr::from(<[u8; 4]>::try_from(dst).expect("4")),
            want
        );
    }
    flows.into_iter().map(|(f, _)| f).collect()
}

/// The same, built first and run back to back (a flood must be faster than the guard's
/// limit), with only the action checked.
fn fast_flood(lab: &mut Lab, src: &str, first_port: u16, n: u16) -> Vec<(Flow, Vec<u8>)> {
    let frames: Vec<(Flow, Vec<u8>)> = (0..n)
        .map(|i| {
            let flow = Flow::tcp(src, first_port + i, VIP4, 80);
            let frame = build(&flow, Tcp::Syn, b"", &Extra::default());
            (flow, frame)
        })
        .collect();
    frames
        .into_iter()
        .map(|(flow, frame)| {
            let out = lab.run(&frame);
            assert_eq!(out.action, action::REDIRECT, "forwarded during a flood too");
            (flow, out.data)
        })
        .collect()
}

#[test]
fn the_flood_guard_stops_inserts_then_resumes() {
    with_lab(|lab| {
        lab.vip(0, VIP4, 80, 6, 0, WEB);
        lab.set_node(|n| n.flood_limit = 5);
        // Pin the thread: the guard counts per CPU.
        pin_to_cpu(0);
        let ran = fast_flood(lab, "198.18.0.1", 10000, 40);
        // A flow that misses during the flood is still forwarded to its Maglev pick, and
        // still gets no entry.
        let late = ran[39].0.clone();
        let ack = build(&late, Tcp::Ack, b"data", &Extra::default());
        assert_eq!(lab.run(&ack).action, action::REDIRECT);
        assert_eq!(lab.dp.flow(&late.key()).expect("read"), None);
        for (flow, out) in &ran {
            let dst = <[u8; 4]>::try_from(&out[14 + 16..14 + 20]).expect("4");
            let want = backend_addr(model_pick(flow, WEB, false));
            assert_eq!(std::net::IpAddr::from(dst), want, "the table's pick");
        }
        let flows: Vec<Flow> = ran.into_iter().map(|(f, _)| f).collect();
        let inserted = flows
            .iter()
            .filter(|f| lab.dp.flow(&f.key()).expect("read").is_some())
            .count();
        assert_eq!(
            inserted, 5,
            "only the first `limit` new flows of the window"
        );
        assert_flow_events(
            lab,
            &[
                (LbFlow::MissSyn, 40),
                (LbFlow::MissOther, 1),
                (LbFlow::FloodSkip, 36),
            ],
        );
        // A quiet window ends the flood; the next new flow is inserted again.
        std::thread::sleep(std::time::Duration::from_nanos(3 * FLOOD_WINDOW_NS));
        let after = syn_flood(lab, "198.18.0.2", 20000, 1);
        assert!(lab.dp.flow(&after[0].key()).expect("read").is_some());
        let states = lab.dp.flood_states().expect("read");
        assert!(states.iter().all(|s| s.flood_since_ns == 0), "{states:?}");
        assert!(
            states.iter().any(|s| s.flood_ns > 0),
            "time in flood counted: {states:?}"
        );
    });
}

#[test]
fn without_the_guard_a_flood_evicts_established_flows_and_with_it_none() {
    if !sluice_e2e::privileged() {
        return;
    }
    // The table's LRU lists are per possible CPU: 512 flows for each, whatever the host.
    let cpus = aya::util::nr_cpus().map_or(2, |n| n.max(1)) as u32;
    for (guard, survive) in [(0, false), (20, true)] {
        sluice_e2e::in_new_ns(move || {
            let mut lab = Lab::new(&LoadOptions {
                flow_table_size: Some(512 * cpus),
                ..Default::default()
            });
            pin_to_cpu(0);
            lab.vip(0, VIP4, 80, 6, 0, WEB);
            lab.set_node(|n| n.flood_limit = guard);
            let established = syn_flood(&mut lab, "192.0.2.10", 30000, 16);
            std::thread::sleep(std::time::Duration::from_nanos(3 * FLOOD_WINDOW_NS));
            fast_flood(&mut lab, "198.18.7.7", 1, 10 * 512);
            let kept = established
                .iter()
                .filter(|f| lab.dp.flow(&f.key()).expect("read").is_some())
                .count();
            if survive {
                assert_eq!(kept, 16, "guard on: every established flow survives");
            } else {
                assert_eq!(kept, 0, "guard off: the flood evicted them");
            }
        });
    }
}
