//! The benchmark's ABI: what its eBPF programs (`portmap-bench-ebpf`) and
//! `portmap-bench` share. `#[repr(C)]`, the exact layout of the map values;
//! none of it is part of portmap's own dataplane.
#![no_std]

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
