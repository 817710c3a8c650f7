//! A plain-Rust reference model of `sluice_lb` for any frame: what it must do with it, written
//! from the behaviour the data plane promises (ARCHITECTURE.md, the counter docs), not from
//! its code. The lab it models: the VIPs of [`super::VIPS`] (and the VIP filter the agent
//! fills from their addresses), backends reachable on int0 by static neighbours, no shield
//! entries, no flood guard, frames too small to be too big.

use std::{collections::HashSet, net::IpAddr};

use sluice_common::{
    flow_hash, maglev_slot, stats::Lb, vip_filter_bit, FlowKey, FAMILY_V4, FAMILY_V6,
};

use crate::{
    golden::outer_for,
    lab::{backend_addr, backend_mac, INT_MAC},
    pkt::{encapsulated, Flow},
};

/// A VIP of the lab.
pub struct Vip {
    /// VIP id.
    pub id: u32,
    /// Address.
    pub ip: IpAddr,
    /// Port.
    pub port: u16,
    /// IP protocol.
    pub proto: u8,
    /// Its Maglev table.
    pub table: Vec<u32>,
}

/// What `sluice_lb` must do with a frame.
#[derive(Debug, PartialEq, Eq)]
pub struct Expected {
    /// The one outcome counter that moves.
    pub outcome: Lb,
    /// For a forwarded frame: VIP id, backend id and the exact output.
    pub forwarded: Option<(u32, u32, Vec<u8>)>,
    /// Flow-table events: a SYN's pick, another packet's miss, an ICMP error routed.
    pub miss_syn: bool,
    /// A non-SYN packet that found no entry.
    pub miss_other: bool,
    /// An ICMP error routed by the flow it quotes.
    pub icmp_error: bool,
}

enum Kind {
    Transport { syn: bool },
    IcmpError,
    Fragment,
    Other,
}

struct Parsed {
    l2: usize,
    flow: FlowKey,
    kind: Kind,
    tos: u8,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn word(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn words6(b: &[u8], at: usize) -> [u32; 4] {
    [
        word(b, at),
        word(b, at + 4),
        word(b, at + 8),
        word(b, at + 12),
    ]
}

/// Parses like the data plane: `Err` is the outcome of a frame that ends in parsing.
fn parse(f: &[u8]) -> Result<Parsed, Lb> {
    if f.len() < 14 {
        return Err(Lb::MalformedL2);
    }
    let (l2, ethertype) = match be16(f, 12) {
        0x8100 | 0x88a8 if f.len() < 18 => return Err(Lb::MalformedL2),
        0x8100 | 0x88a8 => (18, be16(f, 16)),
        t => (14, t),
    };
    match ethertype {
        0x0800 => ipv4(f, l2),
        0x86dd => ipv6(f, l2),
        _ => Err(Lb::Pass),
    }
}

fn ipv4(f: &[u8], l2: usize) -> Result<Parsed, Lb> {
    if f.len() < l2 + 20 {
        return Err(Lb::MalformedIpv4);
    }
    let ip = &f[l2..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(be16(ip, 2));
    if ip[0] >> 4 != 4 || ihl < 20 || total < ihl || l2 + total > f.len() {
        return Err(Lb::MalformedIpv4);
    }
    let mut p = Parsed {
        l2,
        flow: FlowKey {
            family: FAMILY_V4,
            proto: ip[9],
            ..FlowKey::default()
        },
        kind: Kind::Other,
        tos: ip[1],
    };
    p.flow.src[0] = word(ip, 12);
    p.flow.dst[0] = word(ip, 16);
    if be16(ip, 6) & 0x3fff != 0 {
        p.kind = Kind::Fragment;
        return Ok(p);
    }
    let l4 = l2 + ihl;
    match p.flow.proto {
        6 | 17 => transport(f, &mut p, l4, total - ihl)?,
        1 => icmp_error(f, &mut p, l4, total - ihl, false)?,
        _ => {}
    }
    Ok(p)
}

fn ipv6(f: &[u8], l2: usize) -> Result<Parsed, Lb> {
    if f.len() < l2 + 40 {
        return Err(Lb::MalformedIpv6);
    }
    let ip = &f[l2..];
    let payload = usize::from(be16(ip, 4));
    if ip[0] >> 4 != 6 || l2 + 40 + payload > f.len() {
        return Err(Lb::MalformedIpv6);
    }
    let mut p = Parsed {
        l2,
        flow: FlowKey {
            family: FAMILY_V6,
            src: words6(ip, 8),
            dst: words6(ip, 24),
            ..FlowKey::default()
        },
        kind: Kind::Other,
        tos: ((be16(ip, 0) >> 4) & 0xff) as u8,
    };
    let end = l2 + 40 + payload;
    let (mut next, mut l4) = (ip[6], l2 + 40);
    // Hop-by-hop, routing and destination options are walked, at most four.
    for _ in 0..4 {
        match next {
            0 | 43 | 60 => {
                if f.len() < l4 + 2 {
                    return Err(Lb::MalformedIpv6);
                }
                next = f[l4];
                l4 += (usize::from(f[l4 + 1]) + 1) * 8;
                if l4 > end {
                    return Err(Lb::MalformedIpv6);
                }
            }
            44 => {
                if f.len() < l4 + 8 {
                    return Err(Lb::MalformedIpv6);
                }
                p.flow.proto = f[l4];
                p.kind = Kind::Fragment;
                return Ok(p);
            }
            _ => break,
        }
    }
    p.flow.proto = next;
    match next {
        6 | 17 => transport(f, &mut p, l4, end - l4)?,
        58 => icmp_error(f, &mut p, l4, end - l4, true)?,
        _ => {}
    }
    Ok(p)
}

fn transport(f: &[u8], p: &mut Parsed, l4: usize, l4_len: usize) -> Result<(), Lb> {
    let need = if p.flow.proto == 6 { 20 } else { 8 };
    if f.len() < l4 + need || l4_len < need {
        return Err(Lb::MalformedL4);
    }
    p.flow.src_port = u16::from_ne_bytes([f[l4], f[l4 + 1]]);
    p.flow.dst_port = u16::from_ne_bytes([f[l4 + 2], f[l4 + 3]]);
    p.kind = Kind::Transport {
        syn: p.flow.proto == 6 && f[l4 + 13] & 0x12 == 0x02,
    };
    Ok(())
}

/// An ICMP error quoting a TCP or UDP packet the VIP sent: the client → VIP flow it is about.
fn icmp_error(f: &[u8], p: &mut Parsed, l4: usize, l4_len: usize, v6: bool) -> Result<(), Lb> {
    if f.len() < l4 + 8 {
        return Err(Lb::MalformedIcmp);
    }
    let error = if v6 {
        (1..=4).contains(&f[l4])
    } else {
        matches!(f[l4], 3 | 4 | 11 | 12)
    };
    if !error {
        return Ok(());
    }
    let q = l4 + 8;
    let (ihl, proto) = if v6 {
        if f.len() < q + 40 || f[q] >> 4 != 6 || l4_len < 8 + 40 + 4 {
            return Err(Lb::MalformedIcmp);
        }
        (40, f[q + 6])
    } else {
        if f.len() < q + 20 {
            return Err(Lb::MalformedIcmp);
        }
        let ihl = usize::from(f[q] & 0x0f) * 4;
        if f[q] >> 4 != 4 || ihl < 20 || l4_len < 8 + ihl + 4 {
            return Err(Lb::MalformedIcmp);
        }
        (ihl, f[q + 9])
    };
    if proto != 6 && proto != 17 {
        return Ok(());
    }
    // An error quoting a packet from another address than the one it is sent to is no
    // error about a VIP's packet: it stays a packet to its own destination.
    let quoted_src = if v6 {
        words6(f, q + 8)
    } else {
        [word(f, q + 12), 0, 0, 0]
    };
    if quoted_src != p.flow.dst {
        return Ok(());
    }
    if f.len() < q + ihl + 4 {
        return Err(Lb::MalformedIcmp);
    }
    p.flow.proto = proto;
    if v6 {
        p.flow.src = words6(f, q + 24);
        p.flow.dst = words6(f, q + 8);
    } else {
        p.flow.src[0] = word(f, q + 16);
        p.flow.dst[0] = word(f, q + 12);
    }
    p.flow.src_port = u16::from_ne_bytes([f[q + ihl + 2], f[q + ihl + 3]]);
    p.flow.dst_port = u16::from_ne_bytes([f[q + ihl], f[q + ihl + 1]]);
    p.kind = Kind::IcmpError;
    Ok(())
}

fn ip_of(words: &[u32; 4], family: u8) -> IpAddr {
    sluice_lb::addr::ip(words, family)
}

/// The model: VIPs, and the flows it knows the data plane holds.
pub struct Model {
    /// The VIPs.
    pub vips: Vec<Vip>,
    /// Flows with a flow-table entry.
    pub flows: HashSet<FlowKey>,
}

impl Model {
    /// Whether the VIP filter, as the agent fills it from the VIPs' addresses, lets `dst`
    /// through.
    fn filter_allows(&self, dst: &[u32; 4]) -> bool {
        let want = vip_filter_bit(dst);
        self.vips
            .iter()
            .any(|v| vip_filter_bit(&sluice_lb::addr::words(v.ip).0) == want)
    }

    /// What `sluice_lb` must do with `frame`, updating the modelled flow table.
    pub fn expect(&mut self, frame: &[u8]) -> Expected {
        let none = |outcome| Expected {
            outcome,
            forwarded: None,
            miss_syn: false,
            miss_other: false,
            icmp_error: false,
        };
        // An untagged IP frame whose destination has no VIP by the VIP filter (a bitmap of
        // address hashes, so another address may share a VIP's bit) is passed unparsed.
        let dst = match frame.get(12..14) {
            Some([0x08, 0x00]) if frame.len() >= 34 => Some([word(frame, 30), 0, 0, 0]),
            Some([0x86, 0xdd]) if frame.len() >= 54 => Some(words6(frame, 38)),
            _ => None,
        };
        if dst.is_some_and(|d| !self.filter_allows(&d)) {
            return none(Lb::Pass);
        }
        let p = match parse(frame) {
            Ok(p) => p,
            Err(outcome) => return none(outcome),
        };
        let dst = ip_of(&p.flow.dst, p.flow.family);
        let syn = match p.kind {
            Kind::Fragment if self.vips.iter().any(|v| v.ip == dst) => return none(Lb::Fragment),
            Kind::Other if self.vips.iter().any(|v| v.ip == dst) => return none(Lb::NoService),
            Kind::Fragment | Kind::Other => return none(Lb::Pass),
            Kind::Transport { syn } => syn,
            Kind::IcmpError => false,
        };
        let icmp = matches!(p.kind, Kind::IcmpError);
        let port = u16::from_be(p.flow.dst_port);
        let Some(vip) = self
            .vips
            .iter()
            .find(|v| v.ip == dst && v.port == port && v.proto == p.flow.proto)
        else {
            // A VIP's address on a port or protocol no VIP serves is no other host's.
            let vip_address = self.vips.iter().any(|v| v.ip == dst);
            return none(if vip_address { Lb::NoService } else { Lb::Pass });
        };
        let known = self.flows.contains(&p.flow);
        let backend = vip.table[maglev_slot(flow_hash(&p.flow), vip.table.len() as u32) as usize];
        if !icmp {
            self.flows.insert(p.flow);
        }
        let flow = Flow {
            src: ip_of(&p.flow.src, p.flow.family),
            sport: u16::from_be(p.flow.src_port),
            dst,
            dport: port,
            tcp: p.flow.proto == 6,
        };
        let outer = outer_for(&flow, backend, p.tos);
        let out = encapsulated(frame, p.l2, None, backend_mac(backend), INT_MAC, &outer);
        debug_assert_eq!(outer.dst, backend_addr(backend));
        Expected {
            outcome: Lb::Redirect,
            forwarded: Some((vip.id, backend, out)),
            miss_syn: syn,
            miss_other: !syn && !icmp && !known,
            icmp_error: icmp,
        }
    }
}
