//! Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! All functions work on 16-bit words exactly as they sit in memory ("raw"
//! words, read with `from_ne_bytes`). The one's complement sum commutes with
//! byte swapping, so updating a raw checksum with raw words gives the same bytes
//! as doing it in network order, without a swap per word.

/// Folds a wide one's complement sum into 16 bits.
#[inline(always)]
pub fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The change to some words covered by a checksum, accumulated so that one
/// [`CsumDelta::apply`] updates the checksum for all of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CsumDelta(u64);

impl CsumDelta {
    pub const fn new() -> Self {
        Self(0)
    }

    /// One 16-bit word changes from `old` to `new` (RFC 1624: add `~m + m'`).
    #[inline(always)]
    pub fn replace16(&mut self, old: u16, new: u16) {
        self.0 += u64::from(!old) + u64::from(new);
    }

    /// A 32-bit field changes, as two 16-bit words.
    #[inline(always)]
    pub fn replace32(&mut self, old: u32, new: u32) {
        self.replace16(old as u16, new as u16);
        self.replace16((old >> 16) as u16, (new >> 16) as u16);
    }

    /// A 128-bit address changes (an IPv4 address changes only word 0).
    #[inline(always)]
    pub fn replace_addr(&mut self, old: &[u32; 4], new: &[u32; 4]) {
        self.replace32(old[0], new[0]);
        self.replace32(old[1], new[1]);
        self.replace32(old[2], new[2]);
        self.replace32(old[3], new[3]);
    }

    /// The checksum after the change: RFC 1624 eqn. 3, `HC' = ~(~HC + ~m + m')`,
    /// which never produces the `-0` that eqn. 2 can.
    #[inline(always)]
    pub fn apply(&self, check: u16) -> u16 {
        !fold(u64::from(!check) + self.0)
    }

    /// As [`CsumDelta::apply`], for a UDP checksum: a result of 0 is sent as
    /// 0xffff, because 0 on the wire means "no checksum" (RFC 768).
    #[inline(always)]
    pub fn apply_udp(&self, check: u16) -> u16 {
        match self.apply(check) {
            0 => 0xffff,
            sum => sum,
        }
    }
}

/// One's complement sum of `data` as raw 16-bit words (an odd last byte is
/// padded with zero), not yet folded or inverted.
pub fn sum_bytes(data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(2);
    let mut sum: u64 = chunks
        .by_ref()
        .map(|c| u64::from(u16::from_ne_bytes([c[0], c[1]])))
        .sum();
    if let [last] = chunks.remainder() {
        sum += u64::from(u16::from_ne_bytes([*last, 0]));
    }
    sum
}

/// The Internet checksum of `data`, raw (store it with `to_ne_bytes`).
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum_bytes(data))
}

/// The TCP/UDP checksum of `segment` (its checksum field zeroed or not: pass
/// `skip` as the field's offset to leave it out), over the pseudo-header
/// built from `src`, `dst` and `proto`. Addresses are 4 or 16 bytes.
pub fn l4_checksum(src: &[u8], dst: &[u8], proto: u8, segment: &[u8], skip: usize) -> u16 {
    let len = segment.len() as u32;
    let mut sum = sum_bytes(src) + sum_bytes(dst);
    sum += if src.len() == 4 {
        sum_bytes(&[0, proto]) + sum_bytes(&(len as u16).to_be_bytes())
    } else {
        sum_bytes(&len.to_be_bytes()) + sum_bytes(&[0, 0, 0, proto])
    };
    sum += sum_bytes(&segment[..skip.min(segment.len())]);
    if skip + 2 <= segment.len() {
        sum += sum_bytes(&segment[skip + 2..]);
    }
    !fold(sum)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    /// A deterministic byte stream, so the tests need no RNG crate.
    fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn word(data: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes([data[at], data[at + 1]])
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(u16::from_be(!checksum(&data)), 0xddf2);
    }

    #[test]
    fn incremental_update_matches_full_recomputation() {
        for seed in 0..2000u64 {
            let mut data = bytes(seed, 64);
            // Bytes 10..12 hold the checksum of the whole buffer.
            data[10] = 0;
            data[11] = 0;
            let check = checksum(&data);
            data[10..12].copy_from_slice(&check.to_ne_bytes());
            assert_eq!(checksum(&data), 0, "a valid checksum sums to zero");

            // Change a 32-bit field, a 16-bit field and a 128-bit field.
            let new = bytes(seed + 7, 22);
            let mut delta = CsumDelta::new();
            let old32 = u32::from_ne_bytes(data[0..4].try_into().unwrap());
            let new32 = u32::from_ne_bytes(new[0..4].try_into().unwrap());
            delta.replace32(old32, new32);
            data[0..4].copy_from_slice(&new[0..4]);
            delta.replace16(word(&data, 4), word(&new, 4));
            data[4..6].copy_from_slice(&new[4..6]);
            let old128: [u32; 4] = core::array::from_fn(|i| {
                u32::from_ne_bytes(data[16 + 4 * i..20 + 4 * i].try_into().unwrap())
            });
            let new128: [u32; 4] = core::array::from_fn(|i| {
                u32::from_ne_bytes(new[6 + 4 * i..10 + 4 * i].try_into().unwrap())
            });
            delta.replace_addr(&old128, &new128);
            data[16..32].copy_from_slice(&new[6..22]);

            let updated = delta.apply(word(&data, 10));
            data[10..12].copy_from_slice(&updated.to_ne_bytes());
            assert_eq!(
                checksum(&data),
                0,
                "seed {seed}: incremental update is wrong"
            );
        }
    }

    #[test]
    fn no_change_keeps_checksum() {
        let mut delta = CsumDelta::new();
        delta.replace32(0x0102_0304, 0x0102_0304);
        assert_eq!(delta.apply(0x1234), 0x1234);
    }

    #[test]
    fn udp_zero_result_is_sent_as_all_ones() {
        // A checksum of 0xffff whose update adds nothing stays; one that would
        // become 0 is sent as 0xffff.
        let mut delta = CsumDelta::new();
        delta.replace16(0x0000, 0x0000);
        assert_ne!(delta.apply_udp(0xffff), 0);
        for check in 0..=u16::MAX {
            for new in [0u16, 1, 0x8000, 0xfffe] {
                let mut delta = CsumDelta::new();
                delta.replace16(0x1234, new);
                assert_ne!(delta.apply_udp(check), 0);
            }
        }
    }

    #[test]
    fn l4_checksum_validates_itself() {
        for (seed, addr_len) in (0..200u64).zip([4usize, 16].into_iter().cycle()) {
            let src = bytes(seed, addr_len);
            let dst = bytes(seed + 1, addr_len);
            let mut segment = bytes(seed + 2, 20 + (seed as usize % 37));
            let check = l4_checksum(&src, &dst, 6, &segment, 16);
            segment[16..18].copy_from_slice(&check.to_ne_bytes());
            // Summing everything including the checksum field gives zero.
            assert_eq!(l4_checksum(&src, &dst, 6, &segment, usize::MAX / 2), 0);
        }
    }
}
