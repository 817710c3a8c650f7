//! `sluice_decap`: strips the tunnel the forwarder adds, refuses what is not for it.
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
    let mut fragment = local;
    fragment[14 + 6] = 0x20; // MF
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
    ]
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
        golden::check(lab, Program::Decap, &rows);
    });
}
