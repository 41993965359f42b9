//! Per-CPU counters: traffic per frontend and per backend, and datapath events.
//! Per-CPU slots need no atomics; userspace sums the CPUs when it reads.

use portmap_common::abi::DatapathEvent;

use crate::maps::{BACKEND_STATS, EVENTS, FRONTEND_STATS};

#[inline(always)]
pub fn count_event(event: DatapathEvent) {
    if let Some(count) = EVENTS.get_ptr_mut(event as u32) {
        // SAFETY: the pointer is this CPU's slot of an array element; the
        // program runs with preemption disabled, so nothing else writes it now.
        unsafe { *count += 1 };
    }
}

/// Counts one packet of `ip_len` bytes in direction `dir` (`DIR_REQUEST` or
/// `DIR_REPLY`) for a frontend and the backend it was translated to.
#[inline(always)]
pub fn count_traffic(frontend_id: u32, backend_id: u32, dir: usize, ip_len: u32) {
    if let Some(c) = FRONTEND_STATS.get_ptr_mut(frontend_id) {
        // SAFETY: this CPU's slot of an array element, see `count_event`;
        // `dir` is a constant 0 or 1 after inlining.
        unsafe {
            (*c).packets[dir & 1] += 1;
            (*c).bytes[dir & 1] += u64::from(ip_len);
        }
    }
    if let Some(c) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: as above.
        unsafe {
            (*c).packets[dir & 1] += 1;
            (*c).bytes[dir & 1] += u64::from(ip_len);
        }
    }
}
