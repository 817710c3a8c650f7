//! The flow hash and the Maglev slot it selects.
//!
//! Every LB node must map a flow to the same slot, so the hash is fixed (no per-node seed) and
//! defined over the [`FlowKey`] words, not over raw packet bytes. It is MurmurHash3's 32-bit
//! block function and finaliser over a fixed number of words: a handful of multiplies and
//! rotates per word, no tables and no loops the verifier has to bound, and good avalanche for
//! the slot modulus.

use crate::maps::{FlowKey, FlowKey4};

/// Seed shared by every Sluice node. Changing it reshuffles every flow, so it never changes.
pub const HASH_SEED: u32 = 0x5c1c_e000;

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

#[inline(always)]
fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn finish(mut h: u32, len_words: u32) -> u32 {
    h ^= len_words * 4;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Hash of the whole 5-tuple: both addresses, both ports and the protocol.
///
/// An IPv4 flow is hashed over its four meaningful words (source, destination, ports,
/// protocol) rather than over the six zero words of the unused address space as well: every
/// new flow, and every SYN of a flood, costs six multiply chains less.
#[inline(always)]
pub fn flow_hash(key: &FlowKey) -> u32 {
    if key.family == crate::FAMILY_V4 {
        return flow_hash4(&key.v4());
    }
    let mut h = HASH_SEED;
    h = mix(h, key.src[0]);
    h = mix(h, key.src[1]);
    h = mix(h, key.src[2]);
    h = mix(h, key.src[3]);
    h = mix(h, key.dst[0]);
    h = mix(h, key.dst[1]);
    h = mix(h, key.dst[2]);
    h = mix(h, key.dst[3]);
    h = mix(h, (key.src_port as u32) << 16 | key.dst_port as u32);
    h = mix(h, key.proto as u32);
    finish(h, 10)
}

/// [`flow_hash`] of an IPv4 flow, from its IPv4 flow-table key.
#[inline(always)]
pub fn flow_hash4(key: &FlowKey4) -> u32 {
    let (src_port, dst_port) = key.port_pair();
    let mut h = HASH_SEED;
    h = mix(h, key.src);
    h = mix(h, key.dst);
    h = mix(h, (src_port as u32) << 16 | dst_port as u32);
    h = mix(h, key.proto);
    finish(h, 4)
}

/// MurmurHash3 of any number of words, for control-plane uses such as Maglev permutations.
/// [`flow_hash`] is this function over the ten words of a [`FlowKey`] (four for IPv4),
/// unrolled.
pub fn hash_words(words: &[u32], seed: u32) -> u32 {
    let mut h = seed;
    for w in words {
        h = mix(h, *w);
    }
    finish(h, words.len() as u32)
}

/// Hash of the client (source) address alone, for VIPs with client-IP persistence (one word
/// for IPv4, four for IPv6).
#[inline(always)]
pub fn source_hash(key: &FlowKey) -> u32 {
    if key.family == crate::FAMILY_V4 {
        return source_hash4(key.src[0]);
    }
    let mut h = HASH_SEED;
    h = mix(h, key.src[0]);
    h = mix(h, key.src[1]);
    h = mix(h, key.src[2]);
    h = mix(h, key.src[3]);
    finish(h, 4)
}

/// [`source_hash`] of an IPv4 client address (as stored).
#[inline(always)]
pub fn source_hash4(src: u32) -> u32 {
    finish(mix(HASH_SEED, src), 1)
}

/// The Maglev table slot for `hash` in a table of `table_size` entries.
///
/// `table_size` is never zero for a configured VIP; zero is mapped to slot 0 rather than
/// trapping, so a half-written VIP can never fault the program.
#[inline(always)]
pub fn maglev_slot(hash: u32, table_size: u32) -> u32 {
    if table_size == 0 {
        0
    } else {
        hash % table_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_depends_on_every_field() {
        let base = FlowKey {
            src: [0x0100_000a, 0, 0, 0],
            dst: [0x0a00_a8c0, 0, 0, 0],
            src_port: 1234,
            dst_port: 80,
            proto: 6,
            family: 4,
            pad: [0; 2],
        };
        let h = flow_hash(&base);
        let mut k = base;
        k.src[0] ^= 1;
        assert_ne!(flow_hash(&k), h);
        let mut k = base;
        k.dst[0] ^= 1;
        assert_ne!(flow_hash(&k), h);
        // Every address word counts for IPv6.
        let v6 = FlowKey { family: 6, ..base };
        for i in 0..4 {
            let (mut s, mut d) = (v6, v6);
            s.src[i] ^= 1;
            d.dst[i] ^= 1;
            assert_ne!(flow_hash(&s), flow_hash(&v6), "src[{i}]");
            assert_ne!(flow_hash(&d), flow_hash(&v6), "dst[{i}]");
        }
        let mut k = base;
        k.src_port ^= 1;
        assert_ne!(flow_hash(&k), h);
        let mut k = base;
        k.dst_port ^= 1;
        assert_ne!(flow_hash(&k), h);
        let mut k = base;
        k.proto = 17;
        assert_ne!(flow_hash(&k), h);
        // Source hashing ignores everything but the source address.
        let mut k = base;
        k.src_port = 9;
        k.dst[0] = 7;
        assert_eq!(source_hash(&k), source_hash(&base));
    }

    /// MurmurHash3 x86_32 over bytes, written from the published algorithm, independent of
    /// the word-wise version above.
    fn murmur3_bytes(data: &[u8], seed: u32) -> u32 {
        let mut h = seed;
        let blocks = data.len() / 4;
        for i in 0..blocks {
            let k = u32::from_le_bytes([
                data[4 * i],
                data[4 * i + 1],
                data[4 * i + 2],
                data[4 * i + 3],
            ]);
            h = mix(h, k);
        }
        let tail = &data[blocks * 4..];
        let mut k = 0u32;
        for (i, b) in tail.iter().enumerate() {
            k |= (*b as u32) << (8 * i);
        }
        if !tail.is_empty() {
            h ^= k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        }
        h ^= data.len() as u32;
        h ^= h >> 16;
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        h = h.wrapping_mul(0xc2b2_ae35);
        h ^ (h >> 16)
    }

    #[test]
    fn is_murmur3_over_the_key_words() {
        // Published MurmurHash3_x86_32 test vectors.
        assert_eq!(murmur3_bytes(b"", 0), 0);
        assert_eq!(murmur3_bytes(b"", 1), 0x514e_28b7);
        assert_eq!(murmur3_bytes(&[0x21, 0x43, 0x65, 0x87], 0), 0xf55b_516b);
        assert_eq!(
            murmur3_bytes(&[0x21, 0x43, 0x65, 0x87], 0x5082_edee),
            0x2362_f9de
        );
        assert_eq!(murmur3_bytes(&[0x21, 0x43, 0x65], 0), 0x7e4a_8634);

        let key = FlowKey {
            src: [1, 2, 3, 4],
            dst: [5, 6, 7, 8],
            src_port: 9,
            dst_port: 10,
            proto: 6,
            family: 6,
            pad: [0; 2],
        };
        let mut bytes = [0u8; 40];
        let words = [1u32, 2, 3, 4, 5, 6, 7, 8, 9 << 16 | 10, 6];
        for (i, w) in words.iter().enumerate() {
            bytes[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
        assert_eq!(flow_hash(&key), murmur3_bytes(&bytes, HASH_SEED));
        assert_eq!(source_hash(&key), murmur3_bytes(&bytes[..16], HASH_SEED));
        assert_eq!(hash_words(&words, HASH_SEED), flow_hash(&key));
        // IPv4: the four meaningful words only.
        let v4 = FlowKey {
            src: [1, 0, 0, 0],
            dst: [5, 0, 0, 0],
            family: 4,
            ..key
        };
        let words = [1u32, 5, 9 << 16 | 10, 6];
        let mut bytes = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            bytes[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
        assert_eq!(flow_hash(&v4), murmur3_bytes(&bytes, HASH_SEED));
        assert_eq!(source_hash(&v4), murmur3_bytes(&bytes[..4], HASH_SEED));
    }

    #[test]
    fn slot_is_in_range() {
        assert_eq!(maglev_slot(123, 0), 0);
        assert_eq!(maglev_slot(65537, 65537), 0);
        assert_eq!(maglev_slot(u32::MAX, 65537), u32::MAX % 65537);
    }
}
