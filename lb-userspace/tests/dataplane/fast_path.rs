//! The IPv4 fast path (`xdp-ebpf/src/fast_path.rs`): which packets it takes, how it picks
//! new flows, and that `sluice_lb` with it changes nothing a node whose every packet takes
//! the general path would not.

use sluice_common::{
    stats::{Lb, LbFlow},
    BlockEntry, FloodState, FlowState, Traffic, BACKEND_ALIVE, BLOCK_FOREVER, VIP_HASH_SOURCE_ONLY,
};
use sluice_lb::{addr, dataplane::LoadOptions};

use crate::{
    action,
    forward::{chosen, id_of, TUNNELLED},
    golden::{self, model_pick, FixtureVip, Hop, VIP4},
    golden::{DNS4, EMPTY, NO_NEIGHBOUR, OUTSIDE_DEVMAP, V4_ON_V6, WEB4, WEB6},
    lab::{self, pin_to_current_cpu, Lab},
    pkt::{build, Extra, Flow, Tcp},
    with_lab,
};

/// Everything a packet may count or change besides the flow table: every `sluice_lb`
/// counter, the traffic of every fixture VIP and gateway, the shield's drops per entry, and
/// every CPU's flood window.
#[derive(Debug, PartialEq)]
struct State {
    outcomes: Vec<u64>,
    events: Vec<u64>,
    vips: Vec<Traffic>,
    backends: Vec<Traffic>,
    block_drops: Vec<u64>,
    flood: Vec<FloodState>,
}

impl State {
    fn read(lab: &Lab) -> Self {
        let dp = &lab.dp;
        State {
            outcomes: lab.outcome_counts(),
            events: lab.event_counts(),
            vips: (0..=VIP_IDS)
                .map(|i| dp.vip_traffic(i).expect("vip"))
                .collect(),
            backends: (1..=BACKEND_IDS)
                .map(|i| dp.backend_traffic(i).expect("be"))
                .collect(),
            block_drops: (0..BLOCK_SLOTS)
                .map(|i| dp.block_drops(i).expect("drops"))
                .collect(),
            flood: dp.flood_states().expect("flood states"),
        }
    }
}

/// The highest VIP id the tests here configure.
const VIP_IDS: u32 = 20;
/// The highest gateway id of the fixture.
const BACKEND_IDS: u32 = 12;
/// Shield slots the tests here use.
const BLOCK_SLOTS: u32 = 4;

/// How often a packet the fast path must take is tried: between warming this CPU's next
/// hop and the packet, a busy host may preempt the test for longer than the hop lives (25
/// ticks: 100 ms at HZ=250, 25 ms at HZ=1000). A declined packet is untouched and counted
/// nowhere, so trying again changes nothing.
const TRIES: usize = 5;

/// Runs `warm` through `sluice_lb` (which fills this CPU's next hops), then `pkt` through
/// the fast path alone, until the fast path takes it.
fn taken(lab: &mut Lab, warm: &[&[u8]], pkt: &[u8]) -> lab::Out {
    for _ in 0..TRIES {
        for w in warm {
            lab.run(w);
        }
        let out = lab.run_fast_path(pkt);
        if out.action != lab::DECLINED {
            return out;
        }
    }
    panic!("the fast path declined the packet {TRIES} times in a row")
}

/// Whether `flow` has a flow-table entry.
fn has_entry(lab: &Lab, flow: &Flow) -> bool {
    lab.dp.flow(&flow.key()).expect("read").is_some()
}

/// A flow from `client` to `vip` whose table pick is `backend`: the first client port from
/// `from` on that the reference model gives it.
fn flow_picking(vip: &FixtureVip, client: &str, from: u16, backend: u32) -> Flow {
    (from..from + 1000)
        .map(|port| vip.flow(client, port))
        .find(|f| model_pick(f, vip.backends, false) == backend)
        .expect("a port picking the backend")
}

/// Which packets the IPv4 fast path takes. Of each tunnelled row's flow, once its first
/// packet has cached the next hop on this CPU, the flow's next packet, its SYN again (a
/// retransmission) and the first packet of a new flow to the same gateway are taken, with
/// the golden bytes, exactly when they are IPv4 to a gateway (IPv4 or IPv6) reached
/// through a neighbour. A packet to a port of a VIP's address that no service listens on is passed
/// to the kernel, as the general path would. Every other packet is declined untouched,
/// having counted and recorded nothing, for the general path.
///
/// The flood guard is on with a high limit throughout, so that a new flow admitted by a
/// packet the fast path then declines would show in the flood window.
#[test]
fn the_fast_path_takes_exactly_the_common_packets() {
    with_lab(|lab| {
        // The next-hop cache is per CPU: the first packet must fill this CPU's.
        pin_to_current_cpu();
        golden::configure(lab);
        lab.set_node(|n| n.flood_limit = 1_000_000);
        for &(name, vip, client, port, _, tos, hop, _, _) in &TUNNELLED {
            let flow = vip.flow(client, port);
            let extra = Extra {
                tos,
                ..Default::default()
            };
            let backend = model_pick(&flow, vip.backends, false);
            let new = flow_picking(vip, client, port + 1, backend);
            let common = flow.dst.is_ipv4() && hop != Hop::Kernel;
            let packets = [
                ("next packet", &flow, Tcp::Ack),
                ("SYN again", &flow, Tcp::Syn),
                ("a new flow", &new, Tcp::Syn),
            ];
            // The flow's first packet through `sluice_lb`: it makes the entry and fills the
            // next hop.
            let first = build(&flow, Tcp::Syn, b"first", &extra);
            for (what, flow, tcp) in packets {
                let pkt = build(flow, tcp, b"fast", &extra);
                if common {
                    let out = taken(lab, &[&first], &pkt);
                    let want = golden::tunnelled(&pkt, flow, tos, backend, hop);
                    assert_eq!(out.data, want, "{name}, {what}: the golden bytes");
                } else {
                    lab.run(&first);
                    let before = State::read(lab);
                    let out = lab.run_fast_path(&pkt);
                    assert_eq!(out.action, lab::DECLINED, "{name}, {what}: declined");
                    assert_eq!(out.data, pkt, "{name}, {what}: untouched");
                    assert_eq!(State::read(lab), before, "{name}, {what}: nothing counted");
                }
            }
            assert_eq!(has_entry(lab, &new), common, "{name}: the new flow's entry");
            if common {
                assert_eq!(
                    lab.backend_of(&new),
                    backend,
                    "{name}: the new flow's owner"
                );
            }
        }
        // Packets to a known gateway that need the general path. Each is tried just after
        // the plain packet has (re)filled the next hop, and the plain packet is taken just
        // after it: a declined case is declined for what it is, not for a stale next hop.
        let flow = WEB4.flow("203.0.113.7", 40000);
        let ack = |extra: &Extra| build(&flow, Tcp::Ack, b"established", extra);
        let plain = ack(&Extra::default());
        let mut fragment = plain.clone();
        fragment[20] |= 0x20; // more fragments
        let mut longer = plain.clone();
        longer[17] += 1; // IPv4 total length one past the frame
        let no_service = Flow::tcp("203.0.113.7", 40000, VIP4, 81);
        let no_backend = EMPTY.flow("203.0.113.7", 40000);
        let declined = [
            (
                "a tagged frame",
                ack(&Extra {
                    vlan: Some(7),
                    ..Default::default()
                }),
            ),
            (
                "IP options",
                ack(&Extra {
                    ipv4_options: vec![1, 1, 1, 0],
                    ..Default::default()
                }),
            ),
            ("a fragment", fragment),
            ("a total length past the frame", longer),
            ("a frame cut in the ports", plain[..36].to_vec()),
            ("a frame cut in the TCP header", plain[..44].to_vec()),
            (
                "a SYN to a VIP with no backend",
                build(&no_backend, Tcp::Syn, b"", &Extra::default()),
            ),
        ];
        for (what, pkt) in declined {
            lab.run(&plain);
            let before = State::read(lab);
            let out = lab.run_fast_path(&pkt);
            assert_eq!(out.action, lab::DECLINED, "{what}: declined");
            assert_eq!(out.data, pkt, "{what}: untouched");
            assert_eq!(State::read(lab), before, "{what}: nothing counted");
            taken(lab, &[&plain], &plain);
        }
        // A port of the VIP's address that no service listens on: dropped, as the
        // general path would say, and said here without repeating both lookups there.
        for tcp in [Tcp::Syn, Tcp::Ack] {
            let pkt = build(&no_service, tcp, b"", &Extra::default());
            let mut want = State::read(lab);
            let at = Lb::ALL.iter().position(|o| *o == Lb::NoService);
            want.outcomes[at.expect("no_service")] += 1;
            let out = lab.run_fast_path(&pkt);
            assert_eq!(out.action, action::DROP, "no service: dropped");
            assert_eq!(
                State::read(lab),
                want,
                "no service: counted as no_service, only"
            );
        }
        assert!(!has_entry(lab, &no_service) && !has_entry(lab, &no_backend));
        // And the plain packet is taken with the shield on as well (its source not
        // blocked), with the bytes of `sluice_lb`.
        lab.set_node(|n| n.shield = 1);
        let out = taken(lab, &[&plain], &plain);
        assert_eq!(out.data, lab.run(&plain).data);
        lab.set_node(|n| n.shield = 0);
        // Its backend down while the table still names it: no live pick, so the general
        // path drops it and says why; the entry is left as it was.
        let owner = lab.backend_of(&flow);
        let entry = lab.dp.flow(&flow.key()).expect("read");
        lab.run(&plain);
        lab.set_flags(owner, 0);
        let before = State::read(lab);
        let out = lab.run_fast_path(&plain);
        assert_eq!(out.action, lab::DECLINED, "a dead backend: declined");
        assert_eq!(out.data, plain, "a dead backend: untouched");
        assert_eq!(State::read(lab), before, "a dead backend: nothing counted");
        assert_eq!(
            lab.dp.flow(&flow.key()).expect("read"),
            entry,
            "entry unchanged"
        );
        lab.set_flags(owner, BACKEND_ALIVE);
    });
}

/// New flows on the fast path, as the general path would take them: client-address
/// persistence, a UDP flow's first packet, the flood guard (new flows forwarded by their
/// pick alone, without an entry), and a re-pick once the table drops a dead backend.
#[test]
fn the_fast_path_picks_new_flows_as_the_general_path_does() {
    with_lab(|lab| {
        pin_to_current_cpu();
        golden::configure(lab);
        // Packets that cache this CPU's next hop to each of the web service's gateways,
        // sent before each packet on the fast path: a next hop lives 100 ms at HZ=250.
        let warmers: Vec<Vec<u8>> = WEB4
            .backends
            .iter()
            .zip([1000, 2000, 3000])
            .map(|(&b, port)| flow_picking(&WEB4, "203.0.113.50", port, b))
            .map(|f| build(&f, Tcp::Ack, b"", &Extra::default()))
            .collect();
        let warm: Vec<&[u8]> = warmers.iter().map(|w| w.as_slice()).collect();
        let fast = |lab: &mut Lab, flow: &Flow, tcp: Tcp| {
            let out = taken(lab, &warm, &build(flow, tcp, b"new", &Extra::default()));
            assert_eq!(out.action, action::REDIRECT, "taken, redirected");
            out
        };
        let events = |lab: &Lab, e: LbFlow| lab.dp.flow_count(e).expect("counter");

        // Client-address persistence: every port of a client goes where its address hashes.
        lab.vip(
            20,
            "198.51.100.20",
            80,
            6,
            VIP_HASH_SOURCE_ONLY,
            WEB4.backends,
        );
        for port in [1000, 2000, 3000] {
            let flow = Flow::tcp("203.0.113.9", port, "198.51.100.20", 80);
            let want = model_pick(&flow, WEB4.backends, true);
            let out = fast(lab, &flow, Tcp::Syn);
            assert_eq!(
                id_of(chosen(&out.data, 14)),
                want,
                "port {port}: by address"
            );
            assert_eq!(lab.backend_of(&flow), want);
        }

        // A UDP flow's first packet is a miss, and makes the entry.
        let dns = flow_picking(&DNS4, "203.0.113.9", 7000, WEB4.backends[0]);
        // The warmers' flows were made by the first `fast` above: only this one misses.
        let misses = events(lab, LbFlow::MissOther);
        fast(lab, &dns, Tcp::Ack);
        assert_eq!(events(lab, LbFlow::MissOther), misses + 1);
        assert_eq!(lab.backend_of(&dns), WEB4.backends[0]);

        // The flood guard at one new flow per window: new flows are still forwarded, and
        // every one either made its entry or counted a skip.
        lab.set_node(|n| n.flood_limit = 1);
        let (syns, skips) = (events(lab, LbFlow::MissSyn), events(lab, LbFlow::FloodSkip));
        let flows: Vec<Flow> = (0..6)
            .map(|i| WEB4.flow("203.0.113.77", 20000 + i))
            .collect();
        let picks: Vec<u32> = flows
            .iter()
            .map(|f| model_pick(f, WEB4.backends, false))
            .collect();
        for (f, pick) in flows.iter().zip(picks) {
            let out = fast(lab, f, Tcp::Syn);
            assert_eq!(id_of(chosen(&out.data, 14)), pick);
        }
        let skipped = events(lab, LbFlow::FloodSkip) - skips;
        let made = flows.iter().filter(|f| has_entry(lab, f)).count() as u64;
        assert_eq!(events(lab, LbFlow::MissSyn), syns + 6);
        assert_eq!(made + skipped, 6, "each new flow inserted or skipped");
        assert!(skipped >= 4, "the guard held ({skipped} of 6 skipped)");
        lab.set_node(|n| n.flood_limit = 0);

        // A re-pick: the owner dies and the table is rebuilt without it. Last, as it leaves
        // a warmer on another gateway than the one it warms.
        let flow = WEB4.flow("203.0.113.7", 40000);
        fast(lab, &flow, Tcp::Syn);
        let owner = lab.backend_of(&flow);
        let rest: Vec<u32> = WEB4
            .backends
            .iter()
            .copied()
            .filter(|b| *b != owner)
            .collect();
        lab.set_flags(owner, 0);
        lab.retable(WEB4.id, &rest);
        // The warmer whose gateway died is re-picked now, so that only the flow counts below.
        for w in &warmers {
            lab.run(w);
        }
        let repicks = events(lab, LbFlow::Repick);
        let now = model_pick(&flow, &rest, false);
        let out = fast(lab, &flow, Tcp::Ack);
        assert_eq!(
            id_of(chosen(&out.data, 14)),
            now,
            "re-picked from the new table"
        );
        assert_eq!(lab.backend_of(&flow), now, "the entry rewritten");
        assert_eq!(events(lab, LbFlow::Repick), repicks + 1);
    });
}

/// One step of the differential test's script.
enum Step {
    /// A packet through `sluice_lb`, with what it is.
    Packet(&'static str, Vec<u8>),
    /// A change to the node.
    Change(fn(&mut Lab)),
}

/// Packets covering every way into and out of the fast path, with the changes between
/// them: hits, SYNs, misses, UDP, a port with no service, a VIP with no backend, IPv6 and
/// 4in6 gateways, the kernel hand-offs, blocked sources, the flood guard, a dead backend
/// before and after its table is rebuilt, and entries left by a VIP removed and added again.
fn script() -> (Vec<Step>, Vec<Flow>) {
    use Step::{Change, Packet};
    let web = |client: &str, port| WEB4.flow(client, port);
    let pkt = |flow: &Flow, tcp: Tcp| build(flow, tcp, b"payload", &Extra::default());
    let a = web("203.0.113.7", 40000);
    let b = web("203.0.113.8", 40001);
    let dns = DNS4.flow("203.0.113.9", 5353);
    let no_service = Flow::tcp("203.0.113.7", 40000, VIP4, 81);
    let not_a_vip = Flow::tcp("203.0.113.7", 40000, &filter_twin(), 80);
    let empty = EMPTY.flow("203.0.113.7", 40002);
    let v6 = WEB6.flow("2001:db8:c::5", 50000);
    let four_in_six = V4_ON_V6.flow("203.0.113.1", 1234);
    let outside = OUTSIDE_DEVMAP.flow("203.0.113.10", 1011);
    let no_neighbour = NO_NEIGHBOUR.flow("203.0.113.11", 1010);
    let blocked = web("203.0.113.66", 40003);
    let floods: Vec<Flow> = (0..4).map(|i| web("203.0.113.77", 30000 + i)).collect();
    let mut steps = vec![
        Packet("SYN, a new flow", pkt(&a, Tcp::Syn)),
        Packet("its next packet", pkt(&a, Tcp::Ack)),
        Packet("and the next", pkt(&a, Tcp::Ack)),
        Packet("its SYN again", pkt(&a, Tcp::Syn)),
        Packet("another flow's first packet, not a SYN", pkt(&b, Tcp::Ack)),
        Packet("its next packet", pkt(&b, Tcp::Ack)),
        Packet("UDP, a new flow", pkt(&dns, Tcp::Ack)),
        Packet("UDP, its next packet", pkt(&dns, Tcp::Ack)),
        Packet("SYN to a port with no service", pkt(&no_service, Tcp::Syn)),
        Packet("ACK to a port with no service", pkt(&no_service, Tcp::Ack)),
        Packet(
            "SYN to an address the VIP filter lets through, no VIP's",
            pkt(&not_a_vip, Tcp::Syn),
        ),
        Packet("SYN to a VIP with no backend", pkt(&empty, Tcp::Syn)),
        Packet("IPv6 SYN", pkt(&v6, Tcp::Syn)),
        Packet("IPv6 next packet", pkt(&v6, Tcp::Ack)),
        Packet("4in6 SYN", pkt(&four_in_six, Tcp::Syn)),
        Packet("4in6 next packet", pkt(&four_in_six, Tcp::Ack)),
        Packet("SYN to a port outside the devmap", pkt(&outside, Tcp::Syn)),
        Packet("its next packet", pkt(&outside, Tcp::Ack)),
        Packet(
            "SYN to a gateway with no neighbour",
            pkt(&no_neighbour, Tcp::Syn),
        ),
        Packet("its next packet", pkt(&no_neighbour, Tcp::Ack)),
        Packet("a flow to be blocked", pkt(&blocked, Tcp::Syn)),
        // shield on, 203.0.113.66 blocked.
        Change(|lab| {
            lab.set_node(|n| n.shield = 1);
            let entry = BlockEntry {
                expires_ns: BLOCK_FOREVER,
                slot: 1,
                reason: 0,
            };
            let prefix = "203.0.113.66/32".parse().expect("literal");
            lab.dp.set_block(prefix, &entry).expect("block");
        }),
        Packet("a blocked source's next packet", pkt(&blocked, Tcp::Ack)),
        Packet("a blocked source's SYN", pkt(&blocked, Tcp::Syn)),
        Packet("an unblocked source's packet, shield on", pkt(&a, Tcp::Ack)),
        Packet("a blocked source to a port with no service", {
            pkt(&Flow::tcp("203.0.113.66", 1, VIP4, 81), Tcp::Syn)
        }),
        // shield off.
        Change(|lab| lab.set_node(|n| n.shield = 0)),
        // flood guard at one new flow.
        Change(|lab| lab.set_node(|n| n.flood_limit = 1)),
    ];
    for f in &floods {
        steps.push(Packet("SYN under the flood guard", pkt(f, Tcp::Syn)));
    }
    steps.extend([
        // flood guard off.
        Change(|lab| lab.set_node(|n| n.flood_limit = 0)),
        // the first flow's gateway dies.
        Change(|lab| {
            let owner = lab.backend_of(&WEB4.flow("203.0.113.7", 40000));
            lab.set_flags(owner, 0);
        }),
        Packet("a dead gateway still in the table", pkt(&a, Tcp::Ack)),
        // the table rebuilt without it.
        Change(|lab| {
            let alive: Vec<u32> = (1..=3)
                .filter(|id| lab.dp.backend(*id).expect("backend").is_alive())
                .collect();
            lab.retable(WEB4.id, &alive);
        }),
        Packet("re-picked", pkt(&a, Tcp::Ack)),
        Packet("and kept", pkt(&a, Tcp::Ack)),
        // the web VIP removed and added again.
        Change(|lab| {
            let key = addr::vip_key(VIP4.parse().expect("literal"), 80, 6);
            lab.dp.remove_vip(&key).expect("remove");
            lab.vip(WEB4.id, VIP4, 80, 6, 0, &[1, 2, 3]);
        }),
        Packet("an entry of the old VIP", pkt(&b, Tcp::Ack)),
        Packet("and after", pkt(&b, Tcp::Ack)),
    ]);
    let mut flows = vec![a, b, dns, no_service, empty, v6, four_in_six, outside];
    flows.extend([no_neighbour, blocked, not_a_vip]);
    flows.extend(floods);
    (steps, flows)
}

/// `sluice_lb` against a node whose every packet takes the general path (debug logging on,
/// see `lb.rs`), on the same script: every packet's action and bytes, then every counter,
/// the traffic of every VIP and gateway, the shield's drops and every flow's entry must be
/// the same. This holds the fast path to the invariant it keeps: it changes nothing the
/// general path would not.
#[test]
fn the_fast_path_changes_nothing_the_general_path_would_not() {
    if !sluice_e2e::privileged() {
        return;
    }
    type Run = (Vec<(u32, Vec<u8>)>, State, Vec<Option<FlowState>>);
    let run = |general_only: bool| -> Run {
        sluice_e2e::in_new_ns(|| {
            // One CPU, whose next hops the first packets fill.
            pin_to_current_cpu();
            let mut lab = Lab::new(&LoadOptions {
                debug: general_only,
                ..Default::default()
            });
            golden::configure(&mut lab);
            let (steps, flows) = script();
            let mut outs = Vec::new();
            for step in steps {
                match step {
                    Step::Packet(_, pkt) => {
                        let out = lab.run(&pkt);
                        outs.push((out.action, out.data));
                    }
                    Step::Change(change) => change(&mut lab),
                }
            }
            let entries = flows
                .iter()
                .map(|f| lab.dp.flow(&f.key()).expect("read"))
                .collect();
            (outs, State::read(&lab), entries)
        })
    };
    let (general, fast) = (run(true), run(false));
    let (steps, flows) = script();
    let labels = steps.iter().filter_map(|s| match s {
        Step::Packet(what, _) => Some(*what),
        Step::Change(_) => None,
    });
    assert_eq!(general.0.len(), fast.0.len());
    for ((what, g), f) in labels.zip(&general.0).zip(&fast.0) {
        assert_eq!(g, f, "{what}: the same action and bytes");
    }
    let (g, f) = (&general.1, &fast.1);
    assert_eq!(g.outcomes, f.outcomes, "the same outcome counters");
    assert_eq!(g.events, f.events, "the same flow events");
    assert_eq!(g.vips, f.vips, "the same VIP traffic");
    assert_eq!(g.backends, f.backends, "the same gateway traffic");
    assert_eq!(g.block_drops, f.block_drops, "the same shield drops");
    for ((flow, g), f) in flows.iter().zip(&general.2).zip(&fast.2) {
        assert_eq!(g, f, "the same flow entry for {flow:?}");
    }
    // The script reaches what it is for.
    let event = |e: LbFlow| g.events[LbFlow::ALL.iter().position(|x| *x == e).expect("event")];
    let outcome = |o: Lb| g.outcomes[Lb::ALL.iter().position(|x| *x == o).expect("outcome")];
    for e in [
        LbFlow::MissSyn,
        LbFlow::MissOther,
        LbFlow::Repick,
        LbFlow::FloodSkip,
    ] {
        assert!(event(e) > 0, "the script never counted {}", e.name());
    }
    for o in [
        Lb::Redirect,
        Lb::Pass,
        Lb::NoService,
        Lb::Blocked,
        Lb::NoBackend,
        Lb::RedirectMiss,
    ] {
        assert!(outcome(o) > 0, "the script never ended in {}", o.name());
    }
}

/// An IPv4 address that carries no VIP but has `VIP4`'s bit in the VIP filter: one of the
/// false positives the filter lets through, which only the VIP lookup tells apart.
fn filter_twin() -> String {
    let bit = |ip: std::net::Ipv4Addr| {
        sluice_common::vip_filter_bit(&[u32::from_ne_bytes(ip.octets()), 0, 0, 0])
    };
    let vip = bit(VIP4.parse().expect("literal"));
    (0..=u16::MAX)
        .map(|i| std::net::Ipv4Addr::new(10, 99, (i >> 8) as u8, i as u8))
        .find(|a| bit(*a) == vip)
        .expect("one of 65,536 addresses shares the VIP's bit")
        .to_string()
}
