//! One's complement arithmetic (RFC 1071, RFC 1624), the model's own: not
//! `portmap_common::csum`, which is part of what the model checks.

/// Folds a one's complement sum to 16 bits (end-around carry).
pub fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// One's complement sum of `data` as big-endian 16-bit words, the last odd
/// byte padded with zero; not folded.
pub fn sum_words(data: &[u8]) -> u64 {
    data.chunks(2)
        .map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

/// The checksum field covering `data` (with the field itself zeroed).
pub fn internet_checksum(data: &[u8]) -> u16 {
    !fold(sum_words(data))
}

/// RFC 1624, eqn. 3: the checksum `check` after the 16-bit words `old` (an
/// even number of bytes) became `new`: `HC' = ~(~HC + ~m + m')`.
pub fn incremental(check: u16, old: &[u8], new: &[u8]) -> u16 {
    assert!(old.len() == new.len() && old.len().is_multiple_of(2));
    let mut sum = u64::from(!check);
    for (o, n) in old.chunks(2).zip(new.chunks(2)) {
        sum += u64::from(!u16::from_be_bytes([o[0], o[1]]));
        sum += u64::from(u16::from_be_bytes([n[0], n[1]]));
    }
    !fold(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_matches_recomputation() {
        let mut data: Vec<u8> = (0..40u8).map(|i| i.wrapping_mul(37)).collect();
        data[10] = 0;
        data[11] = 0;
        let check = internet_checksum(&data);
        data[10..12].copy_from_slice(&check.to_be_bytes());
        let new = [0xde, 0xad, 0xbe, 0xef];
        let updated = incremental(check, &data[16..20], &new);
        data[16..20].copy_from_slice(&new);
        data[10..12].copy_from_slice(&updated.to_be_bytes());
        assert_eq!(fold(sum_words(&data)), 0xffff);
    }
}
