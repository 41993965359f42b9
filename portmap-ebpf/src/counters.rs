//! Per-CPU counters: traffic per frontend and per backend, and datapath events.
//! Per-CPU slots need no atomics; userspace sums the CPUs when it reads.

use portmap_common::abi::DatapathEvent;

use crate::{
    maps::{BACKEND_STATS, EVENTS, FRONTEND_STATS},
    parse::Flow,
};

#[inline(always)]
pub fn count_event(event: DatapathEvent) {
    if let Some(count) = EVENTS.get_ptr_mut(event as u32) {
        // SAFETY: the pointer is this CPU's slot of an array element; the
        // program runs with preemption disabled, so nothing else writes it now.
        unsafe { *count += 1 };
    }
}

/// Counts `flow`'s packet in direction `dir` (`DIR_REQUEST` or `DIR_REPLY`)
/// for a frontend and the backend it was translated to: as the packets and
/// IP bytes it is on the wire (a GSO packet as its segments).
#[inline(always)]
pub fn count_traffic(frontend_id: u32, backend_id: u32, dir: usize, flow: &Flow) {
    count(
        frontend_id,
        backend_id,
        dir,
        u64::from(flow.packets),
        u64::from(flow.wire_len),
    );
}

/// Counts `packets` and `bytes` in direction `dir` for a frontend and backend.
#[inline(always)]
pub fn count(frontend_id: u32, backend_id: u32, dir: usize, packets: u64, bytes: u64) {
    if let Some(c) = FRONTEND_STATS.get_ptr_mut(frontend_id) {
        // SAFETY: this CPU's slot of an array element, see `count_event`;
        // `dir` is a constant 0 or 1 after inlining.
        unsafe {
            (*c).packets[dir & 1] += packets;
            (*c).bytes[dir & 1] += bytes;
        }
    }
    if let Some(c) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: as above.
        unsafe {
            (*c).packets[dir & 1] += packets;
            (*c).bytes[dir & 1] += bytes;
        }
    }
}
