//! The benchmark's ABI: what its eBPF programs (`portmap-bench-ebpf`) and
//! `portmap-bench` share. `#[repr(C)]`, the exact layout of the map values;
//! none of it is part of portmap's own dataplane.
#![no_std]

use portmap_common::abi::{CT_REQUEST, CtKey, FAMILY_V4, RawAddr};

/// Longest frame template of the load generator.
pub const LOADGEN_MAX_FRAME: usize = 128;

/// The single value of the load generator's `LOADGEN` array.
///
/// Each frame is `template[..len]` with its IPv4 source address's low 16 bits
/// and its UDP/TCP source port set from a per-CPU sequence number, so frame `n`
/// belongs to flow `n % flows` (or a new flow each time when `flows` is 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadgenConfig {
    /// Frame length: 60, 64 or 128 bytes (the generator copies constant sizes).
    pub len: u32,
    /// Number of distinct flows to cycle through; 0: every frame a new flow.
    pub flows: u32,
    pub template: [u8; LOADGEN_MAX_FRAME],
}

// The programs and userspace must agree on the size; implicit padding would
// also make `aya::Pod` unsound.
const _: () = assert!(size_of::<LoadgenConfig>() == 8 + LOADGEN_MAX_FRAME);

// SAFETY: `#[repr(C)]`, `Copy`, made only of integers and an array of
// integers, without padding (checked above): any byte pattern is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for LoadgenConfig {}

/// The key an IPv4-only conntrack table could use: 16 bytes, where
/// portmap's `CtKey` (room for IPv6 addresses) is 40. The benchmark prices
/// one lookup with each (`bench_lookup_wide`, `bench_lookup_narrow`) to show
/// what the key's size costs a conntrack hit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NarrowCtKey {
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub direction: u8,
    pub _pad: u16,
}

const _: () = assert!(size_of::<NarrowCtKey>() == 16);

// SAFETY: `#[repr(C)]`, `Copy`, integers only, no padding (size checked
// above): any byte pattern is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for NarrowCtKey {}

/// The flow both lookup programs look up (198.18.0.1:40000 → 198.18.0.2:8080
/// UDP), which userspace inserts before measuring.
pub const PRICED_FLOW: ([u8; 4], [u8; 4], u16, u16, u8) =
    ([198, 18, 0, 1], [198, 18, 0, 2], 40_000, 8080, 17);

/// [`PRICED_FLOW`] as portmap's 40-byte conntrack key.
pub fn priced_wide_key() -> CtKey {
    let (src, dst, sport, dport, proto) = PRICED_FLOW;
    CtKey {
        src: RawAddr([u32::from_ne_bytes(src), 0, 0, 0]),
        dst: RawAddr([u32::from_ne_bytes(dst), 0, 0, 0]),
        sport: sport.to_be(),
        dport: dport.to_be(),
        proto,
        family: FAMILY_V4,
        direction: CT_REQUEST,
        _pad: 0,
    }
}

/// [`PRICED_FLOW`] as a 16-byte IPv4 key.
pub fn priced_narrow_key() -> NarrowCtKey {
    let (src, dst, sport, dport, proto) = PRICED_FLOW;
    NarrowCtKey {
        src: u32::from_ne_bytes(src),
        dst: u32::from_ne_bytes(dst),
        sport: sport.to_be(),
        dport: dport.to_be(),
        proto,
        direction: CT_REQUEST,
        _pad: 0,
    }
}
