//! Frontend lookup and backend selection.

use portmap_common::{
    abi::{
        BACKEND_UNUSED, Backend, FrontendKey, FrontendValue, MAGLEV_BLOCK_SLOTS, NodeAddrKey,
        RawAddr,
    },
    hash::flow_hash,
};

use crate::{
    maps::{BACKENDS, FRONTENDS, MAGLEV, NODE_ADDRS},
    parse::Flow,
};

/// The frontend `flow` is addressed to: one published on its exact destination
/// address first, else one published on all addresses, if the destination is
/// an address of this node (a packet routed through the node to another host's
/// port is not ours, as Docker's `--dst-type LOCAL` rule has it).
#[inline(always)]
pub fn find_frontend(flow: &Flow) -> Option<FrontendValue> {
    let mut key = FrontendKey {
        addr: flow.dst,
        port: flow.dport,
        proto: flow.proto,
        family: flow.family,
    };
    if let Some(fe) = FRONTENDS.get_ptr(key) {
        // SAFETY: a live map value; copied at once so a concurrent update by
        // userspace (which replaces whole values) cannot change it under us.
        return Some(unsafe { *fe });
    }
    let node_key = NodeAddrKey {
        addr: flow.dst,
        family: flow.family,
        _pad: [0; 3],
    };
    NODE_ADDRS.get_ptr(node_key)?;
    key.addr = RawAddr::UNSPECIFIED;
    // SAFETY: as above.
    FRONTENDS.get_ptr(key).map(|fe| unsafe { *fe })
}

/// Picks the backend for a new flow from the frontend's Maglev table.
#[inline(always)]
pub fn pick_backend(fe: &FrontendValue, flow: &Flow) -> Option<(u32, Backend)> {
    if fe.table_size == 0 {
        return None;
    }
    let hash = flow_hash(&flow.src, &flow.dst, flow.sport, flow.dport, flow.proto);
    let slot = fe.table_offset.wrapping_add(hash % fe.table_size);
    let block = MAGLEV.get(slot / MAGLEV_BLOCK_SLOTS)?;
    let backend_id = block[(slot % MAGLEV_BLOCK_SLOTS) as usize];
    let backend = *BACKENDS.get(backend_id)?;
    if backend.state == BACKEND_UNUSED || backend.family != flow.family {
        return None;
    }
    Some((backend_id, backend))
}
