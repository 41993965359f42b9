//! The next hop of requests, kept per backend so that most requests need no
//! `bpf_fib_lookup` (see `HopSlot` for when a slot may be used).
//!
//! The lookup was a sixth of an established request's cost. A slot is
//! stamped (backend, epoch, interface, time) before the lookup and made
//! usable after it, so the epoch it holds is one read before the answer
//! was: a netlink event in between leaves a slot that the next packet
//! already finds stale. Cilium dropped an XDP neighbour cache of its own
//! after it kept stale MACs (cilium#17693); this one keeps nothing past a
//! netlink event, nor past `HOP_MAX_AGE_NS`.

use portmap_common::abi::{HOP_MAX_AGE_NS, HOP_SLOTS, HopSlot};

use crate::{
    fastpath::NextHop,
    maps::{HOP_CACHE, HOP_EPOCH},
    parse::Flow,
};

/// Which backend a request goes to, and when: what its next hop is cached
/// under.
#[derive(Clone, Copy)]
pub struct HopTag {
    pub backend_id: u32,
    pub backend_generation: u32,
    pub now: u64,
}

/// What the cache has for a request.
pub enum Cached {
    /// Its backend's next hop, current.
    Hit(NextHop),
    /// The slot to complete with the lookup's answer ([`fill`]), stamped for
    /// this request but unusable until then.
    Fill(*mut HopSlot),
    /// Caching is off (`HOP_EPOCH` is 0).
    Off,
}

#[inline(always)]
pub fn get(tag: &HopTag, flow: &Flow, in_ifindex: u32) -> Cached {
    // 0 until userspace sets it, and while caching would be wrong.
    let epoch = HOP_EPOCH.get(0).copied().unwrap_or(0);
    if epoch == 0 {
        return Cached::Off;
    }
    let Some(slot) = HOP_CACHE.get_ptr_mut(tag.backend_id & (HOP_SLOTS - 1)) else {
        return Cached::Off;
    };
    // SAFETY: this CPU's slot of a per-CPU array, valid for the program's
    // run. Only this program writes the map, and a run holds its CPU
    // (softirq), so nothing writes the slot while it is read or written here.
    let s = unsafe { &mut *slot };
    if s.epoch == epoch
        && s.backend_id == tag.backend_id
        && s.backend_generation == tag.backend_generation
        && s.in_ifindex == in_ifindex
        && flow.ip_len <= u32::from(s.checked_len)
        && tag.now.saturating_sub(s.at_ns) < HOP_MAX_AGE_NS
    {
        let mut dmac = [0u8; 6];
        let mut smac = [0u8; 6];
        dmac.copy_from_slice(&s.macs[..6]);
        smac.copy_from_slice(&s.macs[6..]);
        return Cached::Hit(NextHop {
            ifindex: s.out_ifindex,
            macs: Some((smac, dmac)),
        });
    }
    // Written field by field: a whole value built first would take stack
    // the XDP program lacks.
    s.checked_len = 0;
    s.at_ns = tag.now;
    s.backend_id = tag.backend_id;
    s.backend_generation = tag.backend_generation;
    s.epoch = epoch;
    s.in_ifindex = in_ifindex;
    Cached::Fill(slot)
}

/// Completes a slot [`get`] stamped with the lookup's answer for a packet of
/// `ip_len` bytes. A next hop whose MAC is not known is not kept.
#[inline(always)]
pub fn fill(slot: *mut HopSlot, hop: &NextHop, ip_len: u32) {
    let Some((smac, dmac)) = hop.macs else {
        return;
    };
    // SAFETY: as in `get`: this CPU's slot, written by this run alone.
    let s = unsafe { &mut *slot };
    s.out_ifindex = hop.ifindex;
    s.macs[..6].copy_from_slice(&dmac);
    s.macs[6..].copy_from_slice(&smac);
    // Last: this makes the slot usable. A linear frame (the only kind the
    // fast path takes) is below 64 KiB.
    s.checked_len = ip_len as u16;
}
