//! `sluice_decap`: strips the tunnel the forwarder adds, refuses what is not for it.

use sluice_common::stats::Decap;

use crate::{
    action,
    lab::{backend_addr, backend_mac, Lab, INT_MAC},
    pkt::{build, eth, Extra, Flow, Tcp},
    with_lab,
};

fn assert_decap_counts(lab: &Lab, expected: &[(Decap, u64)]) {
    for o in Decap::ALL {
        let want = expected
            .iter()
            .find(|(e, _)| e == o)
            .map(|(_, n)| *n)
            .unwrap_or(0);
        assert_eq!(
            lab.dp.decap_count(*o).expect("counter"),
            want,
            "counter {}",
            o.name()
        );
    }
}

/// Forwards `input` through `sluice_lb`, then the result through `sluice_decap`.
fn round_trip(lab: &mut Lab, input: &[u8], l2: usize, vlan: Option<u16>, backend: u32) {
    let tunnelled = lab.run(input);
    assert_eq!(tunnelled.action, action::REDIRECT);
    let out = lab.decap(&tunnelled.data);
    assert_eq!(out.action, action::PASS);
    // The gateway sees the client's packet as sent, under the frame's own MACs.
    let ethertype = if input[l2] >> 4 == 4 { 0x0800 } else { 0x86dd };
    let mut want = eth(backend_mac(backend), INT_MAC, vlan, ethertype);
    want.extend_from_slice(&input[l2..]);
    assert_eq!(out.data, want);
}

#[test]
fn every_tunnel_family_is_stripped_back_to_the_client_packet() {
    with_lab(|lab| {
        for id in [1, 5] {
            lab.dp.add_decap_addr(backend_addr(id)).expect("decap addr");
        }
        // 4in4, 6in6, 4in6, 6in4
        let cases = [
            ("203.0.113.7", "198.51.100.1", 1),
            ("2001:db8:c::5", "2001:db8::1", 5),
            ("203.0.113.8", "198.51.100.2", 5),
            ("2001:db8:c::6", "2001:db8::2", 1),
        ];
        for (i, (client, vip, backend)) in cases.into_iter().enumerate() {
            lab.vip(i as u32, vip, 80, 6, 0, &[backend]);
            let input = build(
                &Flow::tcp(client, 40000, vip, 80),
                Tcp::Syn,
                b"hello gateway",
                &Extra::default(),
            );
            round_trip(lab, &input, 14, None, backend);
        }
        // A tagged tunnel frame keeps its tag once stripped of the tunnel.
        let input = build(
            &Flow::tcp("203.0.113.9", 40000, "198.51.100.1", 80),
            Tcp::Ack,
            b"tagged",
            &Extra {
                vlan: Some(42),
                ..Default::default()
            },
        );
        let tunnelled = lab.run(&input).data;
        let mut tagged = tunnelled[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 42]);
        tagged.extend_from_slice(&tunnelled[12..]);
        let out = lab.decap(&tagged);
        assert_eq!(out.action, action::PASS);
        let mut want = eth(backend_mac(1), INT_MAC, Some(42), 0x0800);
        want.extend_from_slice(&input[18..]);
        assert_eq!(out.data, want);
        assert_decap_counts(lab, &[(Decap::DecapV4, 3), (Decap::DecapV6, 2)]);
    });
}

#[test]
fn foreign_malformed_and_plain_packets() {
    with_lab(|lab| {
        lab.dp.add_decap_addr(backend_addr(1)).expect("decap addr");
        lab.vip(0, "198.51.100.1", 80, 6, 0, &[2]);
        let input = build(
            &Flow::tcp("203.0.113.7", 40000, "198.51.100.1", 80),
            Tcp::Syn,
            b"x",
            &Extra::default(),
        );
        // Tunnelled to backend 2, which is not local here: passed untouched.
        let foreign = lab.run(&input).data;
        let out = lab.decap(&foreign);
        assert_eq!((out.action, &out.data), (action::PASS, &foreign));
        // Plain traffic: passed untouched.
        let out = lab.decap(&input);
        assert_eq!((out.action, &out.data), (action::PASS, &input));
        // Outer header says IPv4 inside, but the inner version is 6: dropped.
        let mut bad = foreign.clone();
        bad[14 + 16..14 + 20].copy_from_slice(&[10, 1, 0, 11]);
        bad[34] = 0x60;
        assert_eq!(lab.decap(&bad).action, action::DROP);
        // Outer total length beyond the frame: dropped.
        let mut bad = foreign.clone();
        bad[14 + 16..14 + 20].copy_from_slice(&[10, 1, 0, 11]);
        bad.truncate(bad.len() - 1);
        assert_eq!(lab.decap(&bad).action, action::DROP);
        // An outer fragment cannot be reassembled here: passed untouched and counted.
        let mut frag = foreign.clone();
        frag[14 + 16..14 + 20].copy_from_slice(&[10, 1, 0, 11]);
        frag[14 + 6] = 0x20; // MF
        let out = lab.decap(&frag);
        assert_eq!((out.action, &out.data), (action::PASS, &frag));
        assert_decap_counts(
            lab,
            &[
                (Decap::RefusedAddr, 1),
                (Decap::Pass, 1),
                (Decap::Malformed, 2),
                (Decap::RefusedFragment, 1),
            ],
        );
    });
}
