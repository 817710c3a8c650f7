//! ICMP, MTU, fragments, VLAN, IP options, IPv6 extension headers, truncation and non-VIP
//! traffic.

use etherparse::{
    icmpv4, icmpv6, Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type, IpNumber, Ipv4Header,
    Ipv6Header, PacketBuilder,
};
use sluice_common::stats::{Lb, LbFlow};

use crate::{
    action, assert_flow_events, assert_outcomes,
    golden::{
        self, outer_for, Counter, FixtureVip, Golden, Hop, OUTSIDE_DEVMAP, SAME_LINK, VIP4, VIP6,
        WEB4, WEB6,
    },
    lab::{self, backend_mac, EXT_MAC, INT_MAC, ROUTER_MAC},
    pkt::{build, encapsulated, eth, Extra, Flow, Tcp},
    with_lab,
};

fn o4(s: &str) -> [u8; 4] {
    s.parse::<std::net::Ipv4Addr>().expect("literal").octets()
}

fn o6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().expect("literal").octets()
}

/// The first 28 bytes (IPv4 header + 8) of a TCP packet the VIP sent to the client.
fn quoted_v4(flow: &Flow) -> Vec<u8> {
    let mut q = Vec::new();
    PacketBuilder::ipv4(o4(VIP4), o4(&flow.src.to_string()), 64)
        .tcp(flow.dport, flow.sport, 7, 1000)
        .ack(1)
        .write(&mut q, &[0u8; 100])
        .expect("write");
    q.truncate(28);
    q
}

#[test]
fn icmp_error_follows_the_flow_it_quotes() {
    with_lab(|lab| {
        lab.vip(0, VIP4, 80, 6, 0, &[1, 2, 3]);
        let flow = Flow::tcp("203.0.113.7", 40000, VIP4, 80);
        lab.run(&build(&flow, Tcp::Syn, b"", &Extra::default()));
        let owner = lab.backend_of(&flow);
        // Move every new flow away from the owner: only the flow table can send it back there.
        let others: Vec<u32> = [1, 2, 3].into_iter().filter(|i| *i != owner).collect();
        lab.retable(0, &others);
        let mut icmp = Vec::new();
        PacketBuilder::ethernet2(ROUTER_MAC, EXT_MAC)
            .ipv4(o4("10.0.0.254"), o4(VIP4), 64)
            .icmpv4(Icmpv4Type::DestinationUnreachable(
                icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
            ))
            .write(&mut icmp, &quoted_v4(&flow))
            .expect("write");
        let out = lab.run(&icmp);
        assert_eq!(out.action, action::REDIRECT);
        assert_eq!(
            out.data,
            encapsulated(
                &icmp,
                14,
                None,
                backend_mac(owner),
                INT_MAC,
                &outer_for(&flow, owner, 0)
            )
        );
        assert_outcomes(lab, &[(Lb::Redirect, 2)]);
        assert_flow_events(lab, &[(LbFlow::MissSyn, 1), (LbFlow::IcmpError, 1)]);
    });
}

/// An ICMP error sent to a VIP's address that quotes a packet from another source is no error
/// about the VIP's traffic: dropped as `no_service`, as any other packet to that address on
/// no service of it. Passed to the kernel, which does not hold the address, it would be
/// routed back to the router, which sends it here again, until its TTL ran out.
#[test]
fn an_icmp_error_to_a_vip_quoting_another_source_is_dropped() {
    with_lab(|lab| {
        lab.vip(0, VIP4, 80, 6, 0, &[1, 2, 3]);
        lab.vip(2, VIP6, 443, 6, 0, &[5, 6, 7]);
        let mut quoted = Vec::new();
        PacketBuilder::ipv4(o4("192.0.2.9"), o4("203.0.113.7"), 64)
            .udp(53, 5353)
            .write(&mut quoted, &[0u8; 16])
            .expect("write");
        quoted.truncate(28);
        let mut icmp = Vec::new();
        PacketBuilder::ethernet2(ROUTER_MAC, EXT_MAC)
            .ipv4(o4("10.0.0.254"), o4(VIP4), 64)
            .icmpv4(Icmpv4Type::DestinationUnreachable(
                icmpv4::DestUnreachableHeader::Port,
            ))
            .write(&mut icmp, &quoted)
            .expect("write");
        assert_eq!(lab.run(&icmp).action, action::DROP);
        let mut quoted = Vec::new();
        PacketBuilder::ipv6(o6("2001:db8:9::9"), o6("2001:db8:c::5"), 64)
            .tcp(443, 50000, 7, 1000)
            .ack(1)
            .write(&mut quoted, &[0u8; 16])
            .expect("write");
        quoted.truncate(48);
        let mut icmp = Vec::new();
        PacketBuilder::ethernet2(ROUTER_MAC, EXT_MAC)
            .ipv6(o6("fd00::fe"), o6(VIP6), 64)
            .icmpv6(Icmpv6Type::PacketTooBig { mtu: 1400 })
            .write(&mut icmp, &quoted)
            .expect("write");
        assert_eq!(lab.run(&icmp).action, action::DROP);
        assert_outcomes(lab, &[(Lb::NoService, 2)]);
        assert_flow_events(lab, &[]);
    });
}

#[test]
fn icmpv6_error_follows_the_flow_it_quotes() {
    with_lab(|lab| {
        lab.vip(2, VIP6, 443, 6, 0, &[5, 6, 7]);
        let flow = Flow::tcp("2001:db8:c::5", 50000, VIP6, 443);
        lab.run(&build(&flow, Tcp::Syn, b"", &Extra::default()));
        let owner = lab.backend_of(&flow);
        let others: Vec<u32> = [5, 6, 7].into_iter().filter(|i| *i != owner).collect();
        lab.retable(2, &others);
        let mut quoted = Vec::new();
        PacketBuilder::ipv6(o6(VIP6), o6("2001:db8:c::5"), 64)
            .tcp(443, 50000, 7, 1000)
            .ack(1)
            .write(&mut quoted, &[0u8; 100])
            .expect("write");
        quoted.truncate(48);
        let mut icmp = Vec::new();
        PacketBuilder::ethernet2(ROUTER_MAC, EXT_MAC)
            .ipv6(o6("fd00::fe"), o6(VIP6), 64)
            .icmpv6(Icmpv6Type::PacketTooBig { mtu: 1400 })
            .write(&mut icmp, &quoted)
            .expect("write");
        let out = lab.run(&icmp);
        assert_eq!(out.action, action::REDIRECT);
        assert_eq!(
            out.data,
            encapsulated(
                &icmp,
                14,
                None,
                backend_mac(owner),
                INT_MAC,
                &outer_for(&flow, owner, 0)
            )
        );
        assert_flow_events(lab, &[(LbFlow::MissSyn, 1), (LbFlow::IcmpError, 1)]);
        // An error about a flow this node has not seen still goes where the table sends it,
        // and creates no flow entry.
        let flow2 = Flow::tcp("2001:db8:c::6", 50001, VIP6, 443);
        let mut quoted = Vec::new();
        PacketBuilder::ipv6(o6(VIP6), o6("2001:db8:c::6"), 64)
            .tcp(443, 50001, 7, 1000)
            .write(&mut quoted, &[])
            .expect("write");
        let mut icmp = Vec::new();
        PacketBuilder::ethernet2(ROUTER_MAC, EXT_MAC)
            .ipv6(o6("fd00::fe"), o6(VIP6), 64)
            .icmpv6(Icmpv6Type::DestinationUnreachable(
                icmpv6::DestUnreachableCode::Port,
            ))
            .write(&mut icmp, &quoted)
            .expect("write");
        let out = lab.run(&icmp);
        let t = lab::table(&others, sluice_common::DEFAULT_TABLE_SIZE);
        let want = t
            [(sluice_common::flow_hash(&flow2.key()) % sluice_common::DEFAULT_TABLE_SIZE) as usize];
        assert_eq!(
            out.data,
            encapsulated(
                &icmp,
                14,
                None,
                backend_mac(want),
                INT_MAC,
                &outer_for(&flow2, want, 0)
            )
        );
        assert_eq!(lab.dp.flow(&flow2.key()).expect("read"), None);
    });
}

/// The ICMP fragmentation-needed answer to IPv4 `input` (untagged) carrying `flow`: from the
/// VIP back to the client, quoting 128 bytes, sent back out as it came.
fn frag_needed(flow: &Flow, input: &[u8], mtu: u16) -> Vec<u8> {
    let quote = &input[14..14 + 128];
    let icmp = Icmpv4Header::with_checksum(
        Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::FragmentationNeeded {
            next_hop_mtu: mtu,
        }),
        quote,
    );
    let (vip, client) = (o4(&flow.dst.to_string()), o4(&flow.src.to_string()));
    let mut ip =
        Ipv4Header::new((8 + quote.len()) as u16, 64, IpNumber::ICMP, vip, client).expect("header");
    ip.dont_fragment = false;
    ip.header_checksum = ip.calc_header_checksum();
    let mut want = eth(ROUTER_MAC, EXT_MAC, None, 0x0800);
    want.extend_from_slice(&ip.to_bytes());
    want.extend_from_slice(&icmp.to_bytes());
    want.extend_from_slice(quote);
    want
}

/// The ICMPv6 packet-too-big answer to IPv6 `input` tagged `vlan` carrying `flow`.
fn packet_too_big(flow: &Flow, input: &[u8], vlan: u16, mtu: u32) -> Vec<u8> {
    let quote = &input[18..18 + 128];
    let (vip, client) = (o6(&flow.dst.to_string()), o6(&flow.src.to_string()));
    let icmp = Icmpv6Header::with_checksum(Icmpv6Type::PacketTooBig { mtu }, vip, client, quote)
        .expect("checksum");
    let ip = Ipv6Header {
        traffic_class: 0,
        flow_label: Default::default(),
        payload_length: (8 + quote.len()) as u16,
        next_header: IpNumber::IPV6_ICMP,
        hop_limit: 64,
        source: vip,
        destination: client,
    };
    let mut want = eth(ROUTER_MAC, EXT_MAC, Some(vlan), 0x86dd);
    want.extend_from_slice(&ip.to_bytes());
    want.extend_from_slice(&icmp.to_bytes());
    want.extend_from_slice(quote);
    want
}

/// int0's MTU is 1500, so the largest IPv4 packet that fits a 4in4 tunnel is 1480 bytes:
/// a TCP payload of 1440.
#[test]
fn too_big_for_the_tunnel_is_answered() {
    let ack = |vip: &FixtureVip, port: u16, payload: usize, vlan: Option<u16>| {
        let flow = vip.flow(
            if vip.address.contains(':') {
                "2001:db8:c::5"
            } else {
                "203.0.113.7"
            },
            port,
        );
        let extra = Extra {
            vlan,
            ..Default::default()
        };
        let input = build(&flow, Tcp::Ack, &vec![0x5a; payload], &extra);
        (flow, input)
    };
    let too_big: [Counter; 2] = [Lb::TooBig.into(), LbFlow::MissOther.into()];
    let (f1, over) = ack(&WEB4, 40001, 1460, None);
    assert_eq!(over.len(), 14 + 1500);
    let (f2, fits) = ack(&WEB4, 40002, 1440, None);
    assert_eq!(fits.len(), 14 + 1480);
    let (f3, one_more) = ack(&WEB4, 40003, 1441, None);
    let (f4, over6) = ack(&WEB6, 50001, 1440, Some(7));
    let rows = vec![
        Golden {
            name: "IPv4, 1500 bytes: fragmentation needed, MTU 1480",
            output: Some(frag_needed(&f1, &over, 1480)),
            input: over,
            action: action::TX,
            counts: too_big.to_vec(),
        },
        golden::tunnelled_row(
            "IPv4 at the advertised MTU: fits",
            &WEB4,
            &f2,
            fits,
            0,
            Hop::Redirect,
            &[Lb::Redirect.into(), LbFlow::MissOther.into()],
        ),
        Golden {
            name: "IPv4, one byte over the advertised MTU: fragmentation needed",
            output: Some(frag_needed(&f3, &one_more, 1480)),
            input: one_more,
            action: action::TX,
            counts: too_big.to_vec(),
        },
        Golden {
            name: "IPv6, VLAN-tagged: packet too big, MTU 1460, tag kept",
            output: Some(packet_too_big(&f4, &over6, 7, 1460)),
            input: over6,
            action: action::TX,
            counts: too_big.to_vec(),
        },
    ];
    golden::check_lb(rows);
}

/// An IPv4 fragment from a client to `dst` at `offset` (in 8-byte units), more to come.
fn fragment4(dst: &str, offset: u16) -> Vec<u8> {
    let mut h = Ipv4Header::new(0, 64, IpNumber::UDP, o4("203.0.113.7"), o4(dst)).expect("header");
    h.more_fragments = true;
    h.fragment_offset = etherparse::IpFragOffset::try_new(offset).expect("offset");
    let mut out = Vec::new();
    PacketBuilder::ethernet2(ROUTER_MAC, EXT_MAC)
        .ip(etherparse::IpHeaders::Ipv4(h, Default::default()))
        .udp(5353, 53)
        .write(&mut out, &[1u8; 64])
        .expect("write");
    out
}

/// An IPv6 first fragment (fragment header: next header UDP, offset 0, M set) to `dst`.
fn fragment6(dst: &str) -> Vec<u8> {
    let mut udp = Vec::new();
    PacketBuilder::ipv6(o6("2001:db8:c::5"), o6(dst), 64)
        .udp(5353, 53)
        .write(&mut udp, &[2u8; 64])
        .expect("write");
    let mut p = udp[..40].to_vec();
    p[6] = 44;
    let plen = u16::from_be_bytes([p[4], p[5]]) + 8;
    p[4..6].copy_from_slice(&plen.to_be_bytes());
    p.extend_from_slice(&[17, 0, 0, 1, 0, 0, 0, 9]);
    p.extend_from_slice(&udp[40..]);
    let mut f = eth(EXT_MAC, ROUTER_MAC, None, 0x86dd);
    f.extend_from_slice(&p);
    f
}

fn syn(flow: &Flow) -> Vec<u8> {
    build(flow, Tcp::Syn, b"", &Extra::default())
}

#[test]
fn fragments_and_traffic_not_for_a_vip() {
    let mut arp = eth([0xff; 6], ROUTER_MAC, None, 0x0806);
    arp.extend_from_slice(&[0u8; 28]);
    let mut icmp_echo = Vec::new();
    PacketBuilder::ethernet2(ROUTER_MAC, EXT_MAC)
        .ipv4(o4("203.0.113.7"), o4(VIP4), 64)
        .icmpv4_echo_request(1, 1)
        .write(&mut icmp_echo, b"ping")
        .expect("write");
    let fragment: &[Counter] = &[Lb::Fragment.into()];
    let pass: &[Counter] = &[Lb::Pass.into()];
    // The node is not a VIP address's host: what no service of it takes is dropped, or
    // the kernel would route it back to the router, which sends it here again.
    let no_service: &[Counter] = &[Lb::NoService.into()];
    let rows = vec![
        golden::dropped(
            "IPv4 first fragment to a VIP address",
            fragment4(VIP4, 0),
            fragment,
        ),
        golden::dropped(
            "IPv4 later fragment to a VIP address",
            fragment4(VIP4, 100),
            fragment,
        ),
        golden::untouched(
            "IPv4 first fragment elsewhere",
            fragment4("198.51.100.99", 0),
            pass,
        ),
        golden::untouched(
            "IPv4 later fragment elsewhere",
            fragment4("198.51.100.99", 100),
            pass,
        ),
        golden::dropped("IPv6 fragment to a VIP address", fragment6(VIP6), fragment),
        golden::untouched("IPv6 fragment elsewhere", fragment6("2001:db8::99"), pass),
        golden::untouched(
            "not a VIP address",
            syn(&Flow::tcp("203.0.113.7", 1, "198.51.100.200", 80)),
            pass,
        ),
        golden::dropped(
            "a VIP address, another port",
            syn(&Flow::tcp("203.0.113.7", 1, VIP4, 81)),
            no_service,
        ),
        golden::dropped(
            "a VIP's address and port, another protocol",
            build(
                &Flow::udp("203.0.113.7", 1, VIP4, 80),
                Tcp::Ack,
                b"",
                &Extra::default(),
            ),
            no_service,
        ),
        golden::dropped(
            "an IPv6 VIP address, another port",
            syn(&Flow::tcp("2001:db8:c::1", 1, VIP6, 81)),
            no_service,
        ),
        golden::untouched(
            "IPv6, not a VIP address",
            syn(&Flow::tcp("2001:db8:c::1", 1, "2001:db8::200", 80)),
            pass,
        ),
        golden::untouched("ARP", arp, pass),
        golden::dropped("ICMP echo to a VIP", icmp_echo, no_service),
    ];
    golden::check_lb(rows);
}

/// `plain`, an untagged IPv6 TCP frame, with a hop-by-hop (8 bytes: PadN) and a
/// destination-options header (8 bytes) before TCP.
fn with_ipv6_options(plain: &[u8]) -> Vec<u8> {
    let mut ip = plain[14..54].to_vec();
    ip[6] = 0;
    let plen = u16::from_be_bytes([ip[4], ip[5]]) + 16;
    ip[4..6].copy_from_slice(&plen.to_be_bytes());
    ip.extend_from_slice(&[60, 0, 1, 4, 0, 0, 0, 0]);
    ip.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]);
    ip.extend_from_slice(&plain[54..]);
    let mut input = plain[..14].to_vec();
    input.extend_from_slice(&ip);
    input
}

#[test]
fn vlan_tags_ip_options_and_extension_headers() {
    let tagged = Extra {
        vlan: Some(100),
        ..Default::default()
    };
    // Router alert (4 bytes) and 4 NOPs: IHL 7.
    let options = Extra {
        ipv4_options: vec![0x94, 0x04, 0x00, 0x00, 1, 1, 1, 1],
        ..Default::default()
    };
    let (f1, f2) = (
        WEB4.flow("203.0.113.7", 40010),
        SAME_LINK.flow("203.0.113.7", 40011),
    );
    let (f3, f4) = (
        WEB4.flow("203.0.113.7", 40012),
        WEB6.flow("2001:db8:c::5", 50010),
    );
    let with_options = build(&f3, Tcp::Syn, b"opt", &options);
    assert_eq!(with_options[14] & 0x0f, 7);
    let with_ext = with_ipv6_options(&build(&f4, Tcp::Syn, b"ext", &Extra::default()));
    let tagged_redirect = build(&f1, Tcp::Syn, b"tagged", &tagged);
    let tagged_tx = build(&f2, Tcp::Syn, b"tagged", &tagged);
    let f5 = OUTSIDE_DEVMAP.flow("203.0.113.7", 40013);
    let tagged_miss = build(&f5, Tcp::Syn, b"tagged", &tagged);
    // (name, VIP, flow, input, next hop, outcome)
    #[rustfmt::skip]
    let table = [
        ("VLAN tag, out of another interface: dropped", &WEB4,      &f1, tagged_redirect, Hop::Redirect, Lb::Redirect),
        ("VLAN tag, back out of the same link: kept",   &SAME_LINK, &f2, tagged_tx,       Hop::Tx,       Lb::Tx),
        ("VLAN tag, redirect refused: untagged to kernel", &OUTSIDE_DEVMAP, &f5, tagged_miss, Hop::KernelOtherLink, Lb::RedirectMiss),
        ("IPv4 options",                                &WEB4,      &f3, with_options,    Hop::Redirect, Lb::Redirect),
        ("IPv6 hop-by-hop and destination options",     &WEB6,      &f4, with_ext,        Hop::Redirect, Lb::Redirect),
    ];
    let rows = table
        .into_iter()
        .map(|(name, vip, flow, input, hop, outcome)| {
            let counts = [outcome.into(), LbFlow::MissSyn.into()];
            golden::tunnelled_row(name, vip, flow, input, 0, hop, &counts)
        })
        .collect();
    golden::check_lb(rows);
}

/// Sets an IP packet's length field (IPv4 total length or IPv6 payload length) to match a
/// frame cut to `frame_len`, so only the layer above is short.
fn fix_length(frame: &mut [u8], l2: usize) {
    let ip_len = frame.len() - l2;
    if frame[l2] >> 4 == 4 {
        frame[l2 + 2..l2 + 4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    } else {
        frame[l2 + 4..l2 + 6].copy_from_slice(&((ip_len - 40) as u16).to_be_bytes());
    }
}

#[test]
fn truncation_at_every_length_is_dropped_and_counted_by_reason() {
    with_lab(|lab| {
        lab.vip(0, VIP4, 80, 6, 0, &[1]);
        lab.vip(1, VIP6, 53, 17, 0, &[5]);
        lab.vip(2, VIP4, 53, 17, 0, &[1]);
        let tcp4 = build(
            &Flow::tcp("203.0.113.7", 40000, VIP4, 80),
            Tcp::Syn,
            b"payload",
            &Extra {
                vlan: Some(5),
                ..Default::default()
            },
        );
        let udp6 = build(
            &Flow::udp("2001:db8:c::5", 5353, VIP6, 53),
            Tcp::Ack,
            b"payload",
            &Extra::default(),
        );
        let mut icmp = Vec::new();
        let flow = Flow::udp("203.0.113.7", 5353, VIP4, 53);
        let mut quoted = Vec::new();
        PacketBuilder::ipv4(o4(VIP4), o4("203.0.113.7"), 64)
            .udp(53, 5353)
            .write(&mut quoted, &[])
            .expect("write");
        PacketBuilder::ethernet2(ROUTER_MAC, EXT_MAC)
            .ipv4(o4("10.0.0.254"), o4(VIP4), 64)
            .icmpv4(Icmpv4Type::TimeExceeded(
                icmpv4::TimeExceededCode::TtlExceededInTransit,
            ))
            .write(&mut icmp, &quoted)
            .expect("write");
        let _ = flow;
        lab.vip(3, VIP6, 443, 6, 0, &[5]);
        let tcp6 = build(
            &Flow::tcp("2001:db8:c::5", 5000, VIP6, 443),
            Tcp::Syn,
            b"p",
            &Extra::default(),
        );
        let udp4 = build(
            &Flow::udp("203.0.113.7", 5353, VIP4, 53),
            Tcp::Ack,
            b"p",
            &Extra::default(),
        );
        let mut quoted6 = Vec::new();
        PacketBuilder::ipv6(o6(VIP6), o6("2001:db8:c::5"), 64)
            .tcp(443, 5000, 1, 100)
            .write(&mut quoted6, &[])
            .expect("write");
        let mut icmp6 = Vec::new();
        PacketBuilder::ethernet2(ROUTER_MAC, EXT_MAC)
            .ipv6(o6("fd00::fe"), o6(VIP6), 64)
            .icmpv6(Icmpv6Type::PacketTooBig { mtu: 1400 })
            .write(&mut icmp6, &quoted6[..48])
            .expect("write");
        // (frame, L2 length, L4 start, L4 header bytes the parser needs, reason for a cut
        // inside L3, reason for a cut inside L4)
        type Case<'a> = (&'a Vec<u8>, usize, usize, usize, Lb, Lb);
        let cases: [Case<'_>; 6] = [
            (&tcp4, 18, 38, 20, Lb::MalformedIpv4, Lb::MalformedL4),
            (&udp4, 14, 34, 8, Lb::MalformedIpv4, Lb::MalformedL4),
            (&udp6, 14, 54, 8, Lb::MalformedIpv6, Lb::MalformedL4),
            (&tcp6, 14, 54, 20, Lb::MalformedIpv6, Lb::MalformedL4),
            (
                &icmp,
                14,
                34,
                8 + 20 + 4,
                Lb::MalformedIpv4,
                Lb::MalformedIcmp,
            ),
            (
                &icmp6,
                14,
                54,
                8 + 40 + 4,
                Lb::MalformedIpv6,
                Lb::MalformedIcmp,
            ),
        ];
        let mut expected: std::collections::HashMap<Lb, u64> = Default::default();
        for (frame, l2, l4, l4_min, l3_reason, l4_reason) in cases {
            let whole = lab.run(frame);
            assert_ne!(whole.action, action::DROP, "the whole frame is valid");
            let key = match whole.action {
                action::REDIRECT => Lb::Redirect,
                _ => panic!("unexpected action {}", whole.action),
            };
            *expected.entry(key).or_default() += 1;
            // Every cut from the smallest frame the kernel accepts up to one byte short.
            for cut in 14..frame.len() {
                let mut f = frame[..cut].to_vec();
                let reason = if cut < l2 {
                    Lb::MalformedL2
                } else if cut < l4 {
                    l3_reason
                } else {
                    // Cut inside L4 with consistent IP lengths: the L4 parser must catch it.
                    fix_length(&mut f, l2);
                    if cut - l4 >= l4_min {
                        continue; // complete headers: a valid (short-payload) packet
                    }
                    l4_reason
                };
                let out = lab.run(&f);
                assert_eq!(out.action, action::DROP, "cut at {cut} of {}", frame.len());
                *expected.entry(reason).or_default() += 1;
            }
            // A cut inside L3 with the IP length left as it was: length check, not a read.
            let f = frame[..frame.len() - 1].to_vec();
            assert_eq!(lab.run(&f).action, action::DROP);
            *expected.entry(l3_reason).or_default() += 1;
        }
        let expected: Vec<(Lb, u64)> = expected.into_iter().collect();
        assert_outcomes(lab, &expected);
    });
}
