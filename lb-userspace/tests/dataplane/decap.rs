//! `sluice_decap`: strips the tunnel the forwarder adds, refuses what is not for it, and
//! drops what an LB node did not send.
//!
//! The tunnelled inputs are the frames `sluice_lb` must emit ([`golden::tunnelled`], which
//! the forwarding table checks `sluice_lb` against), built independently of either program.

use sluice_common::stats::Decap;

use crate::{
    action,
    golden::{self, Counter, Golden, Hop, Program},
    lab::{backend_addr, backend_mac, INT_MAC},
    pkt::{build, eth, Extra, Flow, Tcp},
    with_lab,
};

/// The frame `sluice_lb` sends `flow` (`payload`, tagged `vlan`) in to `backend` with, and
/// the client's packet in it.
fn tunnel(flow: &Flow, payload: &[u8], vlan: Option<u16>, backend: u32) -> (Vec<u8>, Vec<u8>) {
    let extra = Extra {
        vlan,
        ..Default::default()
    };
    let input = build(flow, Tcp::Syn, payload, &extra);
    let l2 = if vlan.is_some() { 18 } else { 14 };
    let inner = input[l2..].to_vec();
    (
        golden::tunnelled(&input, flow, 0, backend, Hop::Redirect),
        inner,
    )
}

/// The gateway sees the client's packet as sent, under the frame's own MACs and tag.
fn stripped(inner: &[u8], backend: u32, vlan: Option<u16>) -> Vec<u8> {
    let ethertype = if inner[0] >> 4 == 4 { 0x0800 } else { 0x86dd };
    let mut want = eth(backend_mac(backend), INT_MAC, vlan, ethertype);
    want.extend_from_slice(inner);
    want
}

/// A row for a tunnel frame to local `backend`, stripped.
fn decapsulated(name: &'static str, flow: &Flow, backend: u32) -> Golden {
    let (input, inner) = tunnel(flow, b"hello gateway", None, backend);
    let counted = if backend_addr(backend).is_ipv4() {
        Decap::DecapV4
    } else {
        Decap::DecapV6
    };
    Golden {
        name,
        input,
        action: action::PASS,
        output: Some(stripped(&inner, backend, None)),
        counts: vec![counted.into()],
    }
}

/// A tagged tunnel frame to local backend 1 (the tag inserted after the MACs).
fn tagged_row() -> Golden {
    let flow = Flow::tcp("203.0.113.9", 40000, "198.51.100.1", 80);
    let (untagged, inner) = tunnel(&flow, b"tagged", None, 1);
    let mut input = untagged[..12].to_vec();
    input.extend_from_slice(&[0x81, 0x00, 0x00, 42]);
    input.extend_from_slice(&untagged[12..]);
    Golden {
        name: "a tagged tunnel frame keeps its tag",
        input,
        action: action::PASS,
        output: Some(stripped(&inner, 1, Some(42))),
        counts: vec![Decap::DecapV4.into()],
    }
}

/// Rows for frames that are not this node's tunnels, or broken ones.
fn refused_rows() -> Vec<Golden> {
    let flow = Flow::tcp("203.0.113.7", 40000, "198.51.100.1", 80);
    let plain = build(&flow, Tcp::Syn, b"x", &Extra::default());
    // Tunnelled to backend 2, which is not local here.
    let (foreign, _) = tunnel(&flow, b"x", None, 2);
    // The same frame readdressed to local backend 1 (10.1.0.11), then broken.
    let mut local = foreign.clone();
    local[14 + 16..14 + 20].copy_from_slice(&[10, 1, 0, 11]);
    let mut inner_v6 = local.clone();
    inner_v6[34] = 0x60;
    let mut short = local.clone();
    short.truncate(short.len() - 1);
    let mut fragment = local.clone();
    fragment[14 + 6] = 0x20; // MF
                             // From outside the LB nodes' prefixes: anyone, writing any client address inside.
    let mut spoofed = local;
    spoofed[14 + 12..14 + 16].copy_from_slice(&[192, 0, 2, 66]);
    let flow6 = Flow::tcp("2001:db8:c::5", 40000, "2001:db8::1", 80);
    let (mut spoofed6, _) = tunnel(&flow6, b"x", None, 5);
    spoofed6[14 + 8] = 0xfd;
    spoofed6[14 + 9] = 0x02; // fd02::1, outside fd01::/64
    let counts = |c: Decap| -> Vec<Counter> { vec![c.into()] };
    vec![
        golden::untouched(
            "tunnelled to another node",
            foreign,
            &counts(Decap::RefusedAddr),
        ),
        golden::untouched("plain traffic", plain, &counts(Decap::Pass)),
        golden::dropped(
            "outer IPv4 says IPv4 inside, the inner version is 6",
            inner_v6,
            &counts(Decap::Malformed),
        ),
        golden::dropped(
            "outer total length beyond the frame",
            short,
            &counts(Decap::Malformed),
        ),
        golden::untouched(
            "an outer fragment cannot be reassembled here",
            fragment,
            &counts(Decap::RefusedFragment),
        ),
        golden::dropped(
            "an IPv4 tunnel from outside the LB nodes' prefix",
            spoofed,
            &counts(Decap::RefusedSource),
        ),
        golden::dropped(
            "an IPv6 tunnel from outside the LB nodes' prefix",
            spoofed6,
            &counts(Decap::RefusedSource),
        ),
    ]
}

/// The LB nodes' tunnel sources in the lab: the node's IPv4 address alone and its IPv6
/// network.
fn lb_sources() -> Vec<ipnet::IpNet> {
    ["10.1.0.1/32", "fd01::/64"]
        .iter()
        .map(|p| p.parse().expect("literal"))
        .collect()
}

/// A tunnel of each family to a local backend: (name, client, VIP, backend).
const FAMILIES: [(&str, &str, &str, u32); 4] = [
    ("4in4", "203.0.113.7", "198.51.100.1", 1),
    ("6in6", "2001:db8:c::5", "2001:db8::1", 5),
    ("4in6", "203.0.113.8", "198.51.100.2", 5),
    ("6in4", "2001:db8:c::6", "2001:db8::2", 1),
];

#[test]
fn decap_golden_packets() {
    let mut rows: Vec<Golden> = FAMILIES
        .iter()
        .map(|&(name, client, vip, backend)| {
            decapsulated(name, &Flow::tcp(client, 40000, vip, 80), backend)
        })
        .collect();
    rows.push(tagged_row());
    rows.extend(refused_rows());
    with_lab(|lab| {
        for id in [1, 5] {
            lab.dp.add_decap_addr(backend_addr(id)).expect("decap addr");
        }
        lab.dp.set_decap_sources(&lb_sources()).expect("sources");
        golden::check(lab, Program::Decap, &rows);
    });
}

/// The accepted sources are replaced, not added to; with none, no tunnel is taken.
#[test]
fn decap_sources_are_replaced_and_none_takes_no_tunnel() {
    let flow = Flow::tcp("203.0.113.7", 40000, "198.51.100.1", 80);
    let accepted = [decapsulated("from an accepted prefix", &flow, 1)];
    let refused = |name| {
        let (input, _) = tunnel(&flow, b"hello gateway", None, 1);
        [golden::dropped(name, input, &[Decap::RefusedSource.into()])]
    };
    with_lab(|lab| {
        lab.dp.add_decap_addr(backend_addr(1)).expect("decap addr");
        let other: Vec<ipnet::IpNet> = vec!["192.0.2.0/24".parse().expect("literal")];
        lab.dp.set_decap_sources(&other).expect("sources");
        golden::check(lab, Program::Decap, &refused("another prefix only"));
        lab.dp.set_decap_sources(&lb_sources()).expect("sources");
        assert_eq!(lab.dp.decap_sources().expect("read"), lb_sources());
        golden::check(lab, Program::Decap, &accepted);
        // More than the map holds is refused before anything changes.
        let too_many: Vec<ipnet::IpNet> = (0..=256u32)
            .map(|i| ipnet::IpNet::new(std::net::Ipv4Addr::from(i << 8).into(), 24).expect("net"))
            .collect();
        assert!(lab.dp.set_decap_sources(&too_many).is_err());
        assert_eq!(lab.dp.decap_sources().expect("read"), lb_sources());
        lab.dp.set_decap_sources(&[]).expect("sources");
        assert!(lab.dp.decap_sources().expect("read").is_empty());
        golden::check(lab, Program::Decap, &refused("no prefix at all"));
    });
}
