//! Frontend lookup, source checks, and backend selection (session affinity,
//! else Maglev).
//!
//! The core functions take a destination and a hash, so the XDP path (a
//! parsed packet) and the socket programs (a `connect` or `sendmsg` address)
//! select backends the same way; the `Flow` wrappers are the XDP path's.

use aya_ebpf::maps::lpm_trie::Key;
use portmap_common::{
    abi::{
        AffinityKey, AffinityValue, BACKEND_ACTIVE, BACKEND_UNUSED, Backend, FAMILY_V4,
        FE_AFFINITY_CLIENT_IP, FE_HOST_ONLY, FrontendKey, FrontendValue, MAGLEV_BLOCK_SLOTS,
        NodeAddrKey, RawAddr, SOURCE_RANGE_KEY_BITS, SourceRangeKey,
    },
    hash::flow_hash,
};

use crate::{
    maps::{AFFINITY, BACKENDS, FRONTENDS, MAGLEV, NODE_ADDRS, SOURCE_RANGES},
    parse::Flow,
};

/// Where a new flow or socket is addressed to.
pub struct Dest {
    pub addr: RawAddr,
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

/// Who a new flow comes from, for session affinity: an address with its
/// family, or a network namespace (`AFFINITY_BY_NETNS | family`).
pub struct Client {
    pub id: RawAddr,
    pub kind: u8,
}

/// Whether `addr` is a loopback address (127.0.0.0/8, ::1). Packets from the
/// network to one are never translated: a port published on 127.0.0.1 must
/// not be reachable from another host (moby#45610).
#[inline(always)]
pub fn is_loopback(addr: &RawAddr, family: u8) -> bool {
    if family == FAMILY_V4 {
        addr.0[0].to_ne_bytes()[0] == 127
    } else {
        addr.0[0] == 0 && addr.0[1] == 0 && addr.0[2] == 0 && addr.0[3] == 1u32.to_be()
    }
}

/// The frontend `flow` is addressed to: one published on its exact destination
/// address first, else one published on all addresses, if the destination is
/// an address of this node (a packet routed through the node to another host's
/// port is not ours, as Docker's `--dst-type LOCAL` rule has it). Host-only
/// frontends are never found here.
#[inline(always)]
pub fn find_frontend(flow: &Flow) -> Option<FrontendValue> {
    if is_loopback(&flow.dst, flow.family) {
        return None;
    }
    let dst = Dest {
        addr: flow.dst,
        port: flow.dport,
        proto: flow.proto,
        family: flow.family,
    };
    let fe = lookup_frontend(&dst, false)?;
    if fe.flags & FE_HOST_ONLY != 0 {
        return None;
    }
    Some(fe)
}

/// The frontend published on exactly `dst`, else the one published on all
/// addresses if `dst` is an address of this node (`NODE_ADDRS`, or any
/// loopback address when `loopback_is_local`). Host-only frontends included.
#[inline(always)]
pub fn lookup_frontend(dst: &Dest, loopback_is_local: bool) -> Option<FrontendValue> {
    let mut key = FrontendKey {
        addr: dst.addr,
        port: dst.port,
        proto: dst.proto,
        family: dst.family,
    };
    // SAFETY (both reads): a live map value, copied at once so a concurrent
    // update by userspace (which replaces whole values) cannot change it under us.
    match FRONTENDS.get_ptr(key) {
        Some(fe) => Some(unsafe { *fe }),
        None => {
            if !(loopback_is_local && is_loopback(&dst.addr, dst.family)) {
                let node_key = NodeAddrKey {
                    addr: dst.addr,
                    family: dst.family,
                    _pad: [0; 3],
                };
                NODE_ADDRS.get_ptr(node_key)?;
            }
            key.addr = RawAddr::UNSPECIFIED;
            Some(unsafe { *FRONTENDS.get_ptr(key)? })
        }
    }
}

/// Whether the flow's source is in one of the service's allowed prefixes.
#[inline(always)]
pub fn source_allowed(fe: &FrontendValue, flow: &Flow) -> bool {
    source_in_ranges(fe, &flow.src, flow.family)
}

/// Whether `src` is in one of the service's allowed prefixes.
#[inline(always)]
pub fn source_in_ranges(fe: &FrontendValue, src: &RawAddr, family: u8) -> bool {
    let key = Key::new(
        SOURCE_RANGE_KEY_BITS + 128,
        SourceRangeKey {
            service_id_be: fe.service_id.to_be(),
            family,
            _pad: [0; 3],
            addr: *src,
        },
    );
    SOURCE_RANGES.get(key).is_some()
}

/// Picks the backend for a new flow: the client's previous one under session
/// affinity while it is still active, else from the frontend's Maglev table.
#[inline(always)]
pub fn pick_backend(fe: &FrontendValue, flow: &Flow, now: u64) -> Option<(u32, Backend, bool)> {
    let hash = flow_hash(&flow.src, &flow.dst, flow.sport, flow.dport, flow.proto);
    let client = Client {
        id: flow.src,
        kind: flow.family,
    };
    choose_backend(fe, flow.family, &client, hash, now)
}

/// Picks the backend of `family` for a new flow or socket of `client` whose
/// Maglev hash is `hash`: the client's previous backend under session
/// affinity while it is still active, else the Maglev table's. The flag says
/// whether affinity chose.
#[inline(always)]
pub fn choose_backend(
    fe: &FrontendValue,
    family: u8,
    client: &Client,
    hash: u32,
    now: u64,
) -> Option<(u32, Backend, bool)> {
    if fe.table_size == 0 {
        return None;
    }
    if fe.flags & FE_AFFINITY_CLIENT_IP == 0 {
        return maglev(fe, family, hash).map(|(id, b)| (id, b, false));
    }
    let key = AffinityKey {
        client: client.id,
        service_id: fe.service_id,
        family: client.kind,
        _pad: [0; 3],
    };
    let timeout_ns = u64::from(fe.affinity_timeout_s) * 1_000_000_000;
    if let Some(entry) = AFFINITY.get_ptr_mut(key) {
        // SAFETY: a live map value, read once into a copy.
        let a = unsafe { *entry };
        if now.saturating_sub(a.last_used_ns) <= timeout_ns
            && let Some(b) = BACKENDS.get(a.backend_id)
            && b.generation == a.backend_generation
            && b.state == BACKEND_ACTIVE
            && b.family == family
        {
            // SAFETY: as above; a racing update of the time is harmless.
            unsafe { (*entry).last_used_ns = now };
            return Some((a.backend_id, *b, true));
        }
    }
    let (id, backend) = maglev(fe, family, hash)?;
    let value = AffinityValue {
        backend_id: id,
        backend_generation: backend.generation,
        last_used_ns: now,
    };
    // Best effort: without the entry the next flow is hashed afresh.
    let _ = AFFINITY.insert(key, value, 0);
    Some((id, backend, false))
}

/// The backend the frontend's Maglev table gives `hash`.
#[inline(always)]
fn maglev(fe: &FrontendValue, family: u8, hash: u32) -> Option<(u32, Backend)> {
    let slot = fe.table_offset.wrapping_add(hash % fe.table_size);
    let block = MAGLEV.get(slot / MAGLEV_BLOCK_SLOTS)?;
    let backend_id = block[(slot % MAGLEV_BLOCK_SLOTS) as usize];
    let backend = *BACKENDS.get(backend_id)?;
    if backend.state == BACKEND_UNUSED || backend.family != family {
        return None;
    }
    Some((backend_id, backend))
}
