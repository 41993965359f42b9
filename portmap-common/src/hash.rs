//! The flow hash that picks a backend from a Maglev table.
//!
//! It is part of the dataplane contract: the eBPF programs compute it per new
//! flow, and userspace computes the same value to predict or check a choice.

use crate::abi::RawAddr;

const SEED: u32 = 0x7061_6d70; // "pamp": any fixed value; changing it moves flows.

#[inline(always)]
fn mix(h: u32, k: u32) -> u32 {
    // MurmurHash3's 32-bit block step.
    let k = k
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn finish(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Hash of a flow's 5-tuple (addresses and ports raw, as in the packet).
#[inline(always)]
pub fn flow_hash(src: &RawAddr, dst: &RawAddr, sport: u16, dport: u16, proto: u8) -> u32 {
    let mut h = SEED;
    h = mix(h, src.0[0]);
    h = mix(h, src.0[1]);
    h = mix(h, src.0[2]);
    h = mix(h, src.0[3]);
    h = mix(h, dst.0[0]);
    h = mix(h, dst.0[1]);
    h = mix(h, dst.0[2]);
    h = mix(h, dst.0[3]);
    h = mix(h, (u32::from(sport) << 16) | u32::from(dport));
    h = mix(h, u32::from(proto));
    finish(h ^ 40)
}

/// Hash of a client address alone, for session affinity.
#[inline(always)]
pub fn client_hash(src: &RawAddr) -> u32 {
    let mut h = SEED;
    h = mix(h, src.0[0]);
    h = mix(h, src.0[1]);
    h = mix(h, src.0[2]);
    h = mix(h, src.0[3]);
    finish(h ^ 16)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn spreads_source_ports_evenly() {
        let src = RawAddr([0x0100_12c6, 0, 0, 0]);
        let dst = RawAddr([0x0200_12c6, 0, 0, 0]);
        let mut buckets = [0u32; 7];
        for sport in 0..14_000u16 {
            buckets[(flow_hash(&src, &dst, sport, 80, 6) % 7) as usize] += 1;
        }
        for b in buckets {
            assert!((1800..2200).contains(&b), "uneven buckets {buckets:?}");
        }
    }

    #[test]
    fn depends_on_every_field() {
        let a = RawAddr([1, 2, 3, 4]);
        let base = flow_hash(&a, &a, 1, 2, 6);
        assert_ne!(base, flow_hash(&RawAddr([1, 2, 3, 5]), &a, 1, 2, 6));
        assert_ne!(base, flow_hash(&a, &RawAddr([0, 2, 3, 4]), 1, 2, 6));
        assert_ne!(base, flow_hash(&a, &a, 2, 2, 6));
        assert_ne!(base, flow_hash(&a, &a, 1, 3, 6));
        assert_ne!(base, flow_hash(&a, &a, 1, 2, 17));
    }
}
