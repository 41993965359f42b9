//! Telling a complete L4 checksum from a partial one in XDP, and completing
//! a partial one.
//!
//! An skb whose checksum the sending stack left to the NIC (`CHECKSUM_PARTIAL`,
//! the default on veth and in every container) carries in its TCP or UDP
//! checksum field only the sum of the pseudo-header, not yet complemented; the
//! NIC (or the kernel, for a device that cannot) adds the segment's sum later.
//! A veth running XDP hands such an skb to the program as it is, and XDP is
//! not told which kind of field it sees. The two need opposite updates, so:
//!
//! - a field that does not equal the pseudo-header sum is complete, and is
//!   updated incrementally in XDP (always the case for frames from a NIC,
//!   which never carry partial checksums);
//! - a field that equals it is partial, or, once in 65,536 packets, a complete
//!   checksum that happens to be that value. A frame XDP redirects is
//!   completed here from the segment's sum, which is right for both; one XDP
//!   passes to the stack is left to the tc ingress program
//!   (`ingress_tc`), which rewrites it through the kernel's helpers: the
//!   skb knows which kind it carries.

use aya_ebpf::{
    bindings::xdp_md,
    helpers::{bpf_csum_diff, bpf_xdp_load_bytes},
    macros::map,
    maps::PerCpuArray,
    programs::XdpContext,
};
use portmap_common::{
    abi::{FAMILY_V4, RawAddr},
    csum::fold,
};

use crate::parse::Flow;

/// Longest segment XDP sums (a jumbo frame's); a longer one is never
/// redirected.
pub const MAX_SUMMED: usize = CHUNK * MAX_CHUNKS;
/// Bytes summed per helper call: the most `bpf_csum_diff` takes.
const CHUNK: usize = 512;
const MAX_CHUNKS: usize = 18;

/// Where a chunk of the segment is copied to be summed, with room for the
/// zeros that pad its last word.
#[map]
static SUM_SCRATCH: PerCpuArray<[u8; CHUNK + 4]> = PerCpuArray::with_max_entries(1, 0);

/// One's complement sum (unfolded) of the pseudo-header of a segment of
/// `l4_len` bytes from `src` to `dst`, as raw 16-bit words.
#[inline(always)]
pub fn pseudo_sum(family: u8, proto: u8, src: &RawAddr, dst: &RawAddr, l4_len: u32) -> u64 {
    let words = |a: &RawAddr, n: usize| -> u64 {
        let mut s = 0u64;
        for w in &a.0[..n] {
            s += u64::from(*w as u16) + u64::from((*w >> 16) as u16);
        }
        s
    };
    let n = if family == FAMILY_V4 { 1 } else { 4 };
    // Protocol and length in network order: as raw words, [0, proto] and the
    // length's two bytes (an IPv6 length's upper 16 bits are zero here).
    words(src, n)
        + words(dst, n)
        + u64::from(u16::from_ne_bytes([0, proto]))
        + u64::from(u16::from_ne_bytes((l4_len as u16).to_be_bytes()))
}

/// Whether `check`, the flow's L4 checksum field, equals the sum of its
/// pseudo-header: a partial checksum, or a complete one that cannot be told
/// from one without summing the segment.
#[inline(always)]
pub fn looks_partial(flow: &Flow, check: u16) -> bool {
    check
        == fold(pseudo_sum(
            flow.family,
            flow.proto,
            &flow.src,
            &flow.dst,
            flow.l4_len,
        ))
}

/// The sum of the flow's whole segment (`l4_len` bytes from `l4_off`, the
/// checksum field included; fragments of a multi-buffer frame too), if it is
/// at most `MAX_SUMMED` bytes long.
#[inline(always)]
pub fn segment_sum(ctx: &XdpContext, flow: &Flow) -> Option<u64> {
    match portmap_segment_sum(ctx.ctx, flow.l4_off as u32, flow.l4_len) {
        SUM_FAILED => None,
        sum => Some(sum),
    }
}

/// What [`portmap_segment_sum`] returns when it cannot sum the segment.
const SUM_FAILED: u64 = u64::MAX;

/// Sums `len` bytes of the frame from `off`, copying them out a chunk at a
/// time (`bpf_xdp_load_bytes` reads across fragments).
///
/// A global function: the verifier checks it once, on its own, for any
/// arguments, instead of once for every path of its callers that reaches it
/// (which, with a loop inside, is more than the verifier's budget).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn portmap_segment_sum(ctx: *mut xdp_md, off: u32, len: u32) -> u64 {
    let mut left = len as usize;
    if left > MAX_SUMMED {
        return SUM_FAILED;
    }
    let Some(buf) = SUM_SCRATCH.get_ptr_mut(0) else {
        return SUM_FAILED;
    };
    let mut off = off;
    let mut sum = 0u64;
    for _ in 0..MAX_CHUNKS {
        if left == 0 {
            break;
        }
        let n = if left > CHUNK { CHUNK } else { left };
        // SAFETY: the helper copies `n` bytes of this program's own frame
        // (checking the frame's bounds) into the scratch value, which holds
        // CHUNK + 4 bytes; `n` is at most CHUNK.
        if unsafe { bpf_xdp_load_bytes(ctx, off, buf.cast(), n as u32) } != 0 {
            return SUM_FAILED;
        }
        // The helper sums whole 32-bit words: zeros after an uneven end
        // (an odd last byte counts as if followed by a zero byte, RFC 1071).
        // SAFETY: `n <= CHUNK`, so the 4 bytes at `n` are inside the value.
        unsafe {
            buf.cast::<u8>()
                .add(n)
                .cast::<[u8; 4]>()
                .write_unaligned([0; 4])
        };
        let words = (n + 3) & !3;
        // SAFETY: reads `words <= CHUNK` bytes of the scratch value.
        let chunk = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, buf.cast(), words as u32, 0) };
        // A 32-bit sum, or a negative error.
        let Ok(chunk) = u32::try_from(chunk) else {
            return SUM_FAILED;
        };
        sum += u64::from(chunk);
        off += n as u32;
        left -= n;
    }
    sum
}
