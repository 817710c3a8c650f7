//! Wire constants and the Internet checksum, shared by the programs and the tests.

/// EtherType of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// EtherType of an 802.1Q VLAN tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// EtherType of an 802.1ad (QinQ outer) tag; treated like 802.1Q for the one tag we parse.
pub const ETH_P_8021AD: u16 = 0x88a8;

/// Ethernet header length.
pub const ETH_HLEN: usize = 14;
/// VLAN tag length.
pub const VLAN_HLEN: usize = 4;
/// IPv4 header length without options.
pub const IPV4_HLEN: usize = 20;
/// IPv6 fixed header length.
pub const IPV6_HLEN: usize = 40;

/// IP protocol numbers.
pub mod proto {
    /// IPv6 hop-by-hop options.
    pub const HOPOPTS: u8 = 0;
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// IPv4 in IP.
    pub const IPIP: u8 = 4;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// IPv6 in IP.
    pub const IPV6: u8 = 41;
    /// IPv6 routing header.
    pub const ROUTING: u8 = 43;
    /// IPv6 fragment header.
    pub const FRAGMENT: u8 = 44;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// IPv6 destination options.
    pub const DSTOPTS: u8 = 60;
}

/// ICMP destination unreachable.
pub const ICMP_DEST_UNREACH: u8 = 3;
/// ICMP code: fragmentation needed and DF set.
pub const ICMP_FRAG_NEEDED: u8 = 4;
/// ICMP source quench (deprecated, still an error message).
pub const ICMP_SOURCE_QUENCH: u8 = 4;
/// ICMP time exceeded.
pub const ICMP_TIME_EXCEEDED: u8 = 11;
/// ICMP parameter problem.
pub const ICMP_PARAMETER_PROBLEM: u8 = 12;
/// ICMPv6 destination unreachable.
pub const ICMPV6_DEST_UNREACH: u8 = 1;
/// ICMPv6 packet too big.
pub const ICMPV6_PKT_TOOBIG: u8 = 2;
/// ICMPv6 time exceeded.
pub const ICMPV6_TIME_EXCEEDED: u8 = 3;
/// ICMPv6 parameter problem.
pub const ICMPV6_PARAMETER_PROBLEM: u8 = 4;

/// Extension headers the forwarder walks past before it gives up on finding TCP or UDP.
pub const MAX_IPV6_EXT_HEADERS: usize = 4;

/// Folds a 32-bit one's-complement sum to 16 bits and complements it.
#[inline(always)]
pub fn csum_fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Checksum of a 20-byte IPv4 header given as ten native-order words read from wire bytes.
///
/// The words are summed as read from memory, so the result is directly storable in the header
/// in the same (native) representation.
#[inline(always)]
pub fn ipv4_header_csum(words: &[u16; 10]) -> u16 {
    let mut sum = 0u32;
    let mut i = 0;
    while i < 10 {
        sum += words[i] as u32;
        i += 1;
    }
    csum_fold(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: 0001 f203 f4f5 f6f7 sums to ddf2 (checksum 220d).
        let sum = 0x0001u32 + 0xf203 + 0xf4f5 + 0xf6f7;
        assert_eq!(csum_fold(sum), !0xddf2);
    }

    #[test]
    fn ipv4_header_checksum_verifies_to_zero() {
        // A real header (from the Wikipedia example), checksum field b861.
        let bytes: [u8; 20] = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        let mut words = [0u16; 10];
        for (i, w) in words.iter_mut().enumerate() {
            *w = u16::from_ne_bytes([bytes[2 * i], bytes[2 * i + 1]]);
        }
        let c = ipv4_header_csum(&words).to_ne_bytes();
        assert_eq!(c, [0xb8, 0x61]);
    }
}
