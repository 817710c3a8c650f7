//! Conversions between `std::net` addresses and the data plane's wire-order words.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use sluice_common::{AddrKey, Backend, FlowKey, VipKey, FAMILY_V4, FAMILY_V6};

/// Address words as the data plane stores them, and the family.
pub fn words(ip: IpAddr) -> ([u32; 4], u8) {
    match ip {
        IpAddr::V4(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], FAMILY_V4),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            ([w(0), w(4), w(8), w(12)], FAMILY_V6)
        }
    }
}

/// The address for data-plane words of `family`.
pub fn ip(words: &[u32; 4], family: u8) -> IpAddr {
    if family == FAMILY_V6 {
        let mut o = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(o))
    } else {
        IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()))
    }
}

/// Key of the service `ip:port/proto`.
pub fn vip_key(ip: IpAddr, port: u16, proto: u8) -> VipKey {
    let (addr, family) = words(ip);
    VipKey {
        addr,
        port: port.to_be(),
        proto,
        family,
    }
}

/// Key of the address marker for `ip` (any VIP on that address).
pub fn vip_address_key(ip: IpAddr) -> VipKey {
    vip_key(ip, 0, 0)
}

/// A backend record at `ip` with `flags`.
pub fn backend(ip: IpAddr, flags: u8) -> Backend {
    let (addr, family) = words(ip);
    Backend {
        addr,
        family,
        flags,
        agent: 0,
        pad: 0,
    }
}

/// A decapsulation address key.
pub fn addr_key(ip: IpAddr) -> AddrKey {
    let (addr, family) = words(ip);
    AddrKey {
        addr,
        family,
        pad: 0,
        pad2: 0,
    }
}

/// The flow key of a client → VIP flow. Both addresses must be of the same family.
pub fn flow_key(src: IpAddr, src_port: u16, dst: IpAddr, dst_port: u16, proto: u8) -> FlowKey {
    let (src, family) = words(src);
    let (dst, _) = words(dst);
    FlowKey {
        src,
        dst,
        src_port: src_port.to_be(),
        dst_port: dst_port.to_be(),
        proto,
        family,
        pad: [0; 2],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for s in ["10.1.2.3", "fd00::1:2", "::", "255.255.255.255"] {
            let a: IpAddr = s.parse().expect("literal");
            let (w, f) = words(a);
            assert_eq!(ip(&w, f), a);
        }
        let (w, _) = words("10.0.0.1".parse().expect("literal"));
        assert_eq!(w[0].to_ne_bytes(), [10, 0, 0, 1]);
    }
}
