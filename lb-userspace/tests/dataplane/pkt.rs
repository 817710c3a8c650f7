//! Packets for the tests, built and checked with etherparse: an implementation independent of
//! the data plane's own parsing and header writing.

use etherparse::{
    EtherType, Ethernet2Header, IpNumber, Ipv4Dscp, Ipv4Ecn, Ipv4Header, Ipv6FlowLabel, Ipv6Header,
    PacketBuilder, SingleVlanHeader, VlanId,
};

use crate::lab::{EXT_MAC, ROUTER_MAC};

/// A TCP or UDP packet description.
#[derive(Clone, Debug)]
pub struct Flow {
    /// Client address.
    pub src: std::net::IpAddr,
    /// Client port.
    pub sport: u16,
    /// VIP address.
    pub dst: std::net::IpAddr,
    /// VIP port.
    pub dport: u16,
    /// TCP (true) or UDP.
    pub tcp: bool,
}

impl Flow {
    /// A TCP flow.
    pub fn tcp(src: &str, sport: u16, dst: &str, dport: u16) -> Self {
        Flow {
            src: src.parse().expect("literal"),
            sport,
            dst: dst.parse().expect("literal"),
            dport,
            tcp: true,
        }
    }

    /// A UDP flow.
    pub fn udp(src: &str, sport: u16, dst: &str, dport: u16) -> Self {
        Flow {
            tcp: false,
            ..Flow::tcp(src, sport, dst, dport)
        }
    }

    /// The data plane's key for this flow.
    pub fn key(&self) -> sluice_common::FlowKey {
        sluice_lb::addr::flow_key(
            self.src,
            self.sport,
            self.dst,
            self.dport,
            if self.tcp { 6 } else { 17 },
        )
    }
}

/// TCP flags for [`build`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tcp {
    /// SYN without ACK.
    Syn,
    /// ACK (an established flow).
    Ack,
}

/// Options for [`build`].
#[derive(Clone, Debug, Default)]
pub struct Extra {
    /// One 802.1Q tag with this VLAN id.
    pub vlan: Option<u16>,
    /// IPv4 TOS / IPv6 traffic class.
    pub tos: u8,
    /// IPv4 options (multiple of 4 bytes).
    pub ipv4_options: Vec<u8>,
}

fn v4(a: std::net::IpAddr) -> [u8; 4] {
    match a {
        std::net::IpAddr::V4(a) => a.octets(),
        _ => panic!("{a} is not IPv4"),
    }
}

fn v6(a: std::net::IpAddr) -> [u8; 16] {
    match a {
        std::net::IpAddr::V6(a) => a.octets(),
        _ => panic!("{a} is not IPv6"),
    }
}

/// A frame from the router to us carrying `flow` with `payload`.
pub fn build(flow: &Flow, tcp: Tcp, payload: &[u8], extra: &Extra) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(ROUTER_MAC, EXT_MAC);
    let mut out = Vec::new();
    macro_rules! finish {
        ($ip:expr) => {{
            if flow.tcp {
                let t = $ip.tcp(flow.sport, flow.dport, 1000, 4096);
                let t = match tcp {
                    Tcp::Syn => t.syn(),
                    Tcp::Ack => t.ack(2000),
                };
                t.write(&mut out, payload).expect("write");
            } else {
                $ip.udp(flow.sport, flow.dport)
                    .write(&mut out, payload)
                    .expect("write");
            }
        }};
    }
    let ip = ip_header(flow, extra);
    match extra.vlan {
        Some(vid) => {
            let b = eth
                .single_vlan(VlanId::try_new(vid).expect("vlan id"))
                .ip(ip);
            finish!(b)
        }
        None => {
            let b = eth.ip(ip);
            finish!(b)
        }
    }
    out
}

fn ip_header(flow: &Flow, extra: &Extra) -> etherparse::IpHeaders {
    let proto = if flow.tcp {
        IpNumber::TCP
    } else {
        IpNumber::UDP
    };
    if flow.src.is_ipv4() {
        let mut h = Ipv4Header::new(0, 64, proto, v4(flow.src), v4(flow.dst)).expect("header");
        h.dscp = Ipv4Dscp::try_new(extra.tos >> 2).expect("dscp");
        h.ecn = Ipv4Ecn::try_new(extra.tos & 3).expect("ecn");
        h.identification = 0x1234;
        h.options = extra.ipv4_options.as_slice().try_into().expect("options");
        etherparse::IpHeaders::Ipv4(h, Default::default())
    } else {
        let h = Ipv6Header {
            traffic_class: extra.tos,
            flow_label: Ipv6FlowLabel::try_new(0x12345).expect("label"),
            payload_length: 0,
            next_header: proto,
            hop_limit: 64,
            source: v6(flow.src),
            destination: v6(flow.dst),
        };
        etherparse::IpHeaders::Ipv6(h, Default::default())
    }
}

/// Ethernet header (with optional tag) bytes.
pub fn eth(dst: [u8; 6], src: [u8; 6], vlan: Option<u16>, ethertype: u16) -> Vec<u8> {
    let mut out = Vec::new();
    match vlan {
        Some(vid) => {
            out.extend_from_slice(
                &Ethernet2Header {
                    source: src,
                    destination: dst,
                    ether_type: EtherType::VLAN_TAGGED_FRAME,
                }
                .to_bytes(),
            );
            out.extend_from_slice(
                &SingleVlanHeader {
                    pcp: etherparse::VlanPcp::ZERO,
                    drop_eligible_indicator: false,
                    vlan_id: VlanId::try_new(vid).expect("vlan id"),
                    ether_type: EtherType(ethertype),
                }
                .to_bytes(),
            );
        }
        None => out.extend_from_slice(
            &Ethernet2Header {
                source: src,
                destination: dst,
                ether_type: EtherType(ethertype),
            }
            .to_bytes(),
        ),
    }
    out
}

/// The outer header the forwarder must write, built independently of the data plane.
pub struct Outer {
    /// Outer source.
    pub src: std::net::IpAddr,
    /// Outer destination (the backend).
    pub dst: std::net::IpAddr,
    /// Inner TOS / traffic class to copy.
    pub tos: u8,
    /// Flow label for an IPv6 outer header.
    pub flow_label: u32,
    /// Outer TTL / hop limit as written.
    pub ttl: u8,
}

/// The frame `sluice_lb` must emit: new L2, `outer`, and the inner IP packet of `input`
/// unchanged (trailing L2 padding included, as it stays in the frame).
pub fn encapsulated(
    input: &[u8],
    l2_len: usize,
    vlan: Option<u16>,
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    outer: &Outer,
) -> Vec<u8> {
    let inner = &input[l2_len..];
    let inner_len = inner_ip_len(inner);
    let proto = if inner[0] >> 4 == 4 {
        IpNumber::IPV4
    } else {
        IpNumber::IPV6
    };
    let mut out;
    if outer.dst.is_ipv4() {
        out = eth(dst_mac, src_mac, vlan, 0x0800);
        let mut h = Ipv4Header::new(
            inner_len as u16,
            outer.ttl,
            proto,
            v4(outer.src),
            v4(outer.dst),
        )
        .expect("header");
        h.dscp = Ipv4Dscp::try_new(outer.tos >> 2).expect("dscp");
        h.ecn = Ipv4Ecn::try_new(outer.tos & 3).expect("ecn");
        h.identification = 0;
        h.dont_fragment = true;
        h.header_checksum = h.calc_header_checksum();
        out.extend_from_slice(&h.to_bytes());
    } else {
        out = eth(dst_mac, src_mac, vlan, 0x86dd);
        let h = Ipv6Header {
            traffic_class: outer.tos,
            flow_label: Ipv6FlowLabel::try_new(outer.flow_label).expect("label"),
            payload_length: inner_len as u16,
            next_header: proto,
            hop_limit: outer.ttl,
            source: v6(outer.src),
            destination: v6(outer.dst),
        };
        out.extend_from_slice(&h.to_bytes());
    }
    out.extend_from_slice(inner);
    out
}

/// Length of the IP packet at the start of `ip` from its own header.
pub fn inner_ip_len(ip: &[u8]) -> usize {
    if ip[0] >> 4 == 4 {
        u16::from_be_bytes([ip[2], ip[3]]) as usize
    } else {
        40 + u16::from_be_bytes([ip[4], ip[5]]) as usize
    }
}
