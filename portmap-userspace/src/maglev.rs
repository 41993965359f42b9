//! Maglev consistent hashing (Eisenbud et al., NSDI '16), as the dataplane
//! uses it: a lookup table of backend ids indexed by `flow_hash % size`.
//!
//! A backend's place in the table follows from its address and port alone, so
//! the same backends always give the same table (a restarted daemon rebuilds
//! exactly what was there), and removing one backend moves only the flows that
//! were on it, plus a small fraction (~1 %) of the others.

use std::net::{IpAddr, SocketAddr};

/// Table slots per backend at least: the table is a prime at least this many
/// times the number of backends, which keeps each backend within ~1 % of its share.
pub const MIN_SLOTS_PER_BACKEND: usize = 100;
/// A table is rebuilt smaller once it has more slots per backend than this.
pub const MAX_SLOTS_PER_BACKEND: usize = 300;

/// The table size for `backends` backends, given the size in use (if any).
///
/// 0 for no backends. The size in use is kept while it has between
/// [`MIN_SLOTS_PER_BACKEND`] and [`MAX_SLOTS_PER_BACKEND`] slots per backend:
/// Maglev moves few flows only between tables of the same size. Otherwise the
/// size is the smallest prime ≥ 100 × the next power of two ≥ `backends`, so it
/// changes only when the backend count crosses a power of two.
pub fn table_size(backends: usize, in_use: Option<u32>) -> u32 {
    if backends == 0 {
        return 0;
    }
    if let Some(m) = in_use {
        let m = m as usize;
        if m >= MIN_SLOTS_PER_BACKEND * backends && m <= MAX_SLOTS_PER_BACKEND * backends {
            return m as u32;
        }
    }
    let mut n = (MIN_SLOTS_PER_BACKEND * backends.next_power_of_two()) as u64;
    while !is_prime(n) {
        n += 1;
    }
    u32::try_from(n).expect("table size fits in u32 for any backend count the maps allow")
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// A backend as Maglev sees it: a stable identity and the id to put in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevBackend {
    pub addr: SocketAddr,
    pub id: u32,
}

/// FNV-1a then a SplitMix64 finalizer: stable across runs and builds (unlike
/// std's randomly keyed hasher), which the table must be.
fn stable_hash(addr: &SocketAddr, seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    match addr.ip() {
        IpAddr::V4(ip) => eat(&ip.octets()),
        IpAddr::V6(ip) => eat(&ip.octets()),
    }
    eat(&addr.port().to_be_bytes());
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Builds the lookup table of `size` slots (see [`table_size`]). Backends are
/// taken in address order, so the caller's order does not matter.
pub fn build_table(backends: &[MaglevBackend], size: u32) -> Vec<u32> {
    if backends.is_empty() || size == 0 {
        return Vec::new();
    }
    let mut sorted = backends.to_vec();
    sorted.sort_by_key(|b| b.addr);
    let m = u64::from(size);
    let perms: Vec<(u64, u64)> = sorted
        .iter()
        .map(|b| {
            let offset = stable_hash(&b.addr, 0x6f66_6673) % m;
            let skip = stable_hash(&b.addr, 0x736b_6970) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; sorted.len()];
    let mut table = vec![u32::MAX; size as usize];
    let mut filled = 0usize;
    'fill: loop {
        for (i, b) in sorted.iter().enumerate() {
            let (offset, skip) = perms[i];
            let mut slot = (offset + next[i] * skip) % m;
            while table[slot as usize] != u32::MAX {
                next[i] += 1;
                slot = (offset + next[i] * skip) % m;
            }
            table[slot as usize] = b.id;
            next[i] += 1;
            filled += 1;
            if filled == table.len() {
                break 'fill;
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn backends(n: u32) -> Vec<MaglevBackend> {
        (0..n)
            .map(|i| MaglevBackend {
                addr: SocketAddr::new(
                    IpAddr::from([198, 19, (i / 200) as u8, (i % 200) as u8 + 2]),
                    8080,
                ),
                id: i,
            })
            .collect()
    }

    #[test]
    fn sizes_are_primes_of_at_least_100_slots_per_backend() {
        assert_eq!(table_size(0, None), 0);
        assert_eq!(table_size(1, None), 101);
        assert_eq!(table_size(2, None), 211);
        assert_eq!(table_size(3, None), 401);
        assert_eq!(table_size(4, None), 401);
        assert_eq!(table_size(10, None), 1601);
        assert_eq!(table_size(100, None), 12809);
        for n in 1..300 {
            let m = table_size(n, None) as usize;
            assert!(
                is_prime(m as u64) && m >= 100 * n && m < 200 * n.max(2),
                "n={n} m={m}"
            );
        }
    }

    #[test]
    fn size_in_use_is_kept_while_it_fits() {
        // Removing a backend keeps the size, so Maglev moves few flows.
        assert_eq!(table_size(4, Some(809)), 809);
        assert_eq!(table_size(3, Some(809)), 809);
        // Too small for 9 backends, or too large for 2: rebuilt.
        assert_eq!(table_size(9, Some(809)), 1601);
        assert_eq!(table_size(2, Some(809)), 211);
        assert_eq!(table_size(0, Some(809)), 0);
    }

    #[test]
    fn each_backend_gets_its_share_within_5_percent() {
        for n in [1u32, 2, 3, 4, 7, 10, 33, 100] {
            let size = table_size(n as usize, None);
            let table = build_table(&backends(n), size);
            let mut counts: HashMap<u32, usize> = HashMap::new();
            for id in &table {
                *counts.entry(*id).or_default() += 1;
            }
            assert_eq!(counts.len(), n as usize);
            let share = f64::from(size) / f64::from(n);
            for (id, c) in counts {
                let dev = (c as f64 - share).abs() / share;
                assert!(
                    dev <= 0.05,
                    "n={n}: backend {id} has {c} slots, share {share:.1}"
                );
            }
        }
    }

    #[test]
    fn removing_one_backend_moves_little_else() {
        for n in [2u32, 4, 10, 50] {
            let all = backends(n);
            let size = table_size(n as usize, None);
            let before = build_table(&all, size);
            for removed in [0, n / 2, n - 1] {
                let rest: Vec<_> = all.iter().copied().filter(|b| b.id != removed).collect();
                let after_size = table_size(rest.len(), Some(size));
                assert_eq!(
                    after_size, size,
                    "n={n}: removing one backend keeps the size"
                );
                let after = build_table(&rest, after_size);
                let others = before.iter().filter(|id| **id != removed).count();
                let moved = before
                    .iter()
                    .zip(&after)
                    .filter(|(b, a)| **b != removed && b != a)
                    .count();
                let frac = moved as f64 / others as f64;
                assert!(
                    frac <= 0.01 + 1.0 / f64::from(n),
                    "n={n} removed={removed}: {frac:.3} of other slots moved"
                );
            }
        }
    }

    #[test]
    fn order_of_backends_does_not_matter() {
        let mut all = backends(10);
        let a = build_table(&all, table_size(10, None));
        all.reverse();
        assert_eq!(a, build_table(&all, table_size(10, None)));
    }
}
