//! Frames for the fuzzer: a seed corpus of valid frames of every kind the data plane parses
//! (TCP and UDP to the VIPs over IPv4 and IPv6, VLAN tags, IPv4 options, IPv6 extension
//! headers, ICMP errors quoting a VIP's packet, fragments, other destinations, other
//! EtherTypes), each mutated a few times: bit flips, bytes overwritten, truncation, bytes
//! appended, and the fields parsers trip on (lengths, IHL, extension-header lengths, the
//! TCP flags, the ports). Frames stay small, so none is too big for the tunnel.

use etherparse::{icmpv4, Icmpv4Type, Icmpv6Type, PacketBuilder};
use rand::{rngs::StdRng, seq::SliceRandom, Rng};

use crate::{
    lab::{EXT_MAC, ROUTER_MAC},
    pkt::{build, Extra, Flow, Tcp},
};

/// Frames on demand.
pub struct Generator {
    seeds: Vec<Vec<u8>>,
}

fn client(rng: &mut StdRng, v6: bool) -> String {
    // A small pool, so flows repeat and the flow table is exercised both ways.
    let n = rng.gen_range(1..=200u16);
    if v6 {
        format!("2001:db8:c::{n:x}")
    } else {
        format!("203.0.113.{}", n % 250 + 1)
    }
}

fn seed(rng: &mut StdRng) -> Vec<u8> {
    let v6 = rng.gen_bool(0.4);
    let vip = if v6 { "2001:db8::1" } else { "198.51.100.1" };
    let src = client(rng, v6);
    let sport = rng.gen_range(1024..1100);
    let payload = vec![0x5a; rng.gen_range(0..48)];
    let extra = Extra {
        vlan: rng.gen_bool(0.15).then(|| rng.gen_range(1..4095)),
        tos: rng.gen(),
        ipv4_options: if !v6 && rng.gen_bool(0.1) {
            vec![1, 1, 1, 1]
        } else {
            Vec::new()
        },
    };
    match rng.gen_range(0..10) {
        0..=3 => {
            let tcp = if rng.gen_bool(0.5) {
                Tcp::Syn
            } else {
                Tcp::Ack
            };
            let port = if v6 { 443 } else { 80 };
            build(&Flow::tcp(&src, sport, vip, port), tcp, &payload, &extra)
        }
        4 | 5 => build(&Flow::udp(&src, sport, vip, 53), Tcp::Ack, &payload, &extra),
        6 => icmp_error(&src, sport, v6),
        7 => {
            // Not a VIP: another address, or a VIP address on another port.
            let (dst, port) = if rng.gen_bool(0.5) {
                (if v6 { "2001:db8::99" } else { "198.51.100.99" }, 80)
            } else {
                (vip, 8080)
            };
            build(
                &Flow::tcp(&src, sport, dst, port),
                Tcp::Ack,
                &payload,
                &extra,
            )
        }
        8 => {
            let mut f = build(&Flow::udp(&src, sport, vip, 53), Tcp::Ack, &payload, &extra);
            fragment(&mut f, v6, extra.vlan.is_some());
            f
        }
        _ => {
            let mut f = build(&Flow::udp(&src, sport, vip, 53), Tcp::Ack, &payload, &extra);
            let l2 = if extra.vlan.is_some() { 16 } else { 12 };
            f[l2..l2 + 2].copy_from_slice(&[0x08, 0x06]);
            f
        }
    }
}

/// An ICMP error from a router about a packet the VIP sent to `client`.
fn icmp_error(client: &str, port: u16, v6: bool) -> Vec<u8> {
    let mut quoted = Vec::new();
    let mut out = Vec::new();
    if v6 {
        let vip: [u8; 16] = "2001:db8::1"
            .parse::<std::net::Ipv6Addr>()
            .expect("literal")
            .octets();
        let c: [u8; 16] = client
            .parse::<std::net::Ipv6Addr>()
            .expect("literal")
            .octets();
        PacketBuilder::ipv6(vip, c, 64)
            .tcp(443, port, 7, 1000)
            .ack(1)
            .write(&mut quoted, &[0u8; 16])
            .expect("write");
        quoted.truncate(48);
        let router: [u8; 16] = "fd00::fe"
            .parse::<std::net::Ipv6Addr>()
            .expect("literal")
            .octets();
        PacketBuilder::ethernet2(ROUTER_MAC, EXT_MAC)
            .ipv6(router, vip, 64)
            .icmpv6(Icmpv6Type::PacketTooBig { mtu: 1280 })
            .write(&mut out, &quoted)
            .expect("write");
    } else {
        let vip = [198, 51, 100, 1];
        let c: [u8; 4] = client
            .parse::<std::net::Ipv4Addr>()
            .expect("literal")
            .octets();
        PacketBuilder::ipv4(vip, c, 64)
            .tcp(80, port, 7, 1000)
            .ack(1)
            .write(&mut quoted, &[0u8; 16])
            .expect("write");
        quoted.truncate(28);
        PacketBuilder::ethernet2(ROUTER_MAC, EXT_MAC)
            .ipv4([10, 0, 0, 254], vip, 64)
            .icmpv4(Icmpv4Type::DestinationUnreachable(
                icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
            ))
            .write(&mut out, &quoted)
            .expect("write");
    }
    out
}

/// Makes the frame a fragment: IPv4 more-fragments, or an IPv6 fragment header.
fn fragment(f: &mut Vec<u8>, v6: bool, vlan: bool) {
    let l2 = if vlan { 18 } else { 14 };
    if !v6 {
        f[l2 + 6] |= 0x20;
        return;
    }
    let next = f[l2 + 6];
    f[l2 + 6] = 44;
    let header = [next, 0, 0, 1, 0, 0, 0, 7];
    f.splice(l2 + 40..l2 + 40, header);
    let plen = u16::from_be_bytes([f[l2 + 4], f[l2 + 5]]) + 8;
    f[l2 + 4..l2 + 6].copy_from_slice(&plen.to_be_bytes());
}

/// One mutation.
fn mutate(f: &mut Vec<u8>, rng: &mut StdRng) {
    if f.is_empty() {
        f.push(rng.gen());
        return;
    }
    let l2 = if f.len() >= 14 && f[12] == 0x81 {
        18
    } else {
        14
    };
    let at = |rng: &mut StdRng, len: usize| rng.gen_range(0..len);
    match rng.gen_range(0..11) {
        0 => {
            for _ in 0..rng.gen_range(1..=4) {
                let i = at(rng, f.len());
                f[i] ^= 1 << rng.gen_range(0..8);
            }
        }
        1 => {
            let i = at(rng, f.len());
            f[i] = rng.gen();
        }
        // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header.
        2 if f.len() > 14 => {
            let n = rng.gen_range(14..f.len());
            f.truncate(n);
        }
        3 => {
            let extra: Vec<u8> = (0..rng.gen_range(1..64)).map(|_| rng.gen()).collect();
            f.extend_from_slice(&extra);
        }
        // IPv4 total length / IPv6 payload length.
        4 if f.len() > l2 + 6 => {
            let off = if f[l2] >> 4 == 6 { 4 } else { 2 };
            let v: u16 = if rng.gen_bool(0.5) {
                rng.gen()
            } else {
                rng.gen_range(0..128)
            };
            f[l2 + off..l2 + off + 2].copy_from_slice(&v.to_be_bytes());
        }
        // The version/IHL byte.
        5 if f.len() > l2 => f[l2] = (f[l2] & 0xf0) | rng.gen_range(0..16),
        // An IPv6 extension header's or the next-header field.
        6 if f.len() > l2 + 41 => {
            let i = *[l2 + 6, l2 + 40, l2 + 41].choose(rng).expect("non-empty");
            f[i] = *[0u8, 6, 17, 43, 44, 58, 60, 59, rng.gen()]
                .choose(rng)
                .expect("non-empty");
        }
        // TCP flags or ports, wherever the transport header is.
        7 if f.len() > l2 + 20 => {
            let ihl = if f[l2] >> 4 == 4 {
                usize::from(f[l2] & 0x0f) * 4
            } else {
                40
            };
            let i = l2 + ihl + rng.gen_range(0..14);
            if i < f.len() {
                f[i] = rng.gen();
            }
        }
        // The type of an ICMP message (errors and informational ones alike).
        9 if f.len() > l2 + 41 => {
            let v6 = f[l2] >> 4 == 6;
            let at = if v6 {
                l2 + 40
            } else {
                l2 + usize::from(f[l2] & 0x0f) * 4
            };
            if at < f.len() {
                let types: &[u8] = if v6 {
                    &[1, 2, 3, 4, 5, 128, 135]
                } else {
                    &[0, 3, 4, 5, 8, 11, 12, 13]
                };
                f[at] = *types.choose(rng).expect("non-empty");
            }
        }
        // A VLAN tag inserted or removed.
        8 if f.len() >= 14 => {
            if l2 == 18 && f.len() >= 22 {
                f.drain(12..16);
            } else {
                f.splice(12..12, [0x81, 0x00, 0x00, rng.gen()]);
            }
        }
        _ => {
            let i = at(rng, f.len());
            f[i] = f[i].wrapping_add(1);
        }
    }
}

impl Generator {
    /// A generator with a fresh seed corpus.
    pub fn new(rng: &mut StdRng) -> Self {
        Generator {
            seeds: (0..500).map(|_| seed(rng)).collect(),
        }
    }

    /// The next frame: a seed as it is (a quarter of the time), or mutated up to 3 times.
    pub fn next(&mut self, rng: &mut StdRng) -> Vec<u8> {
        let mut f = self.seeds[rng.gen_range(0..self.seeds.len())].clone();
        if rng.gen_bool(0.25) {
            return f;
        }
        for _ in 0..rng.gen_range(1..=3) {
            mutate(&mut f, rng);
        }
        f
    }
}
