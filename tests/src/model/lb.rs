//! Load balancing of a new flow (the README's "What the dataplane does",
//! Ingress): the frontend by exact address, port and protocol, then by "all
//! node addresses" (only for a destination that is a node address; never a
//! loopback destination nor a host-only frontend); the source against the
//! frontend's allowed ranges; the backend by session affinity (while the
//! client's backend is ready, current and recent), else by the frontend's
//! Maglev table.

use std::net::{IpAddr, Ipv6Addr};

use portmap_common::{
    abi::{
        AffinityKey, AffinityValue, BACKEND_ACTIVE, BACKEND_UNUSED, Backend, FE_AFFINITY_CLIENT_IP,
        FE_HOST_ONLY, FrontendKey, FrontendValue, RawAddr,
    },
    hash::flow_hash,
};

use super::{
    parse::Flow,
    state::{Flows, Maps, family, raw, raw_port},
};

fn is_loopback(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(a) => a.octets()[0] == 127,
        IpAddr::V6(a) => a == Ipv6Addr::LOCALHOST,
    }
}

/// The frontend a new flow is for, if any.
pub fn find_frontend(maps: &Maps, flow: &Flow) -> Option<FrontendValue> {
    if is_loopback(flow.dst) {
        return None;
    }
    let mut key = FrontendKey {
        addr: raw(flow.dst),
        port: raw_port(flow.dport),
        proto: flow.proto,
        family: family(flow.dst),
    };
    let fe = match maps.frontends.get(&key) {
        Some(fe) => *fe,
        None if maps.node_addrs.contains(&flow.dst) => {
            key.addr = RawAddr::UNSPECIFIED;
            *maps.frontends.get(&key)?
        }
        None => return None,
    };
    (fe.flags & FE_HOST_ONLY == 0).then_some(fe)
}

fn prefix_contains(net: IpAddr, len: u8, a: IpAddr) -> bool {
    match (net, a) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

/// Whether `src` is in one of the frontend's allowed source ranges.
pub fn source_allowed(maps: &Maps, fe: &FrontendValue, src: IpAddr) -> bool {
    maps.source_ranges
        .get(&fe.service_id)
        .is_some_and(|r| r.iter().any(|(n, l)| prefix_contains(*n, *l, src)))
}

fn maglev(maps: &Maps, fe: &FrontendValue, flow: &Flow) -> Option<(u32, Backend)> {
    let hash = flow_hash(
        &raw(flow.src),
        &raw(flow.dst),
        raw_port(flow.sport),
        raw_port(flow.dport),
        flow.proto,
    );
    let table = maps
        .tables
        .get(&fe.table_offset)
        .expect("the model has every table a frontend points at");
    let id = table[(hash % fe.table_size) as usize];
    let b = maps.backend(id);
    (b.state != BACKEND_UNUSED && b.family == family(flow.src)).then_some((id, b))
}

/// The backend of a new flow: the client's previous one under session
/// affinity (while it is ready, current and recent), else Maglev's (which
/// session affinity then remembers), with how it was chosen.
pub fn pick_backend(
    maps: &Maps,
    flows: &mut Flows,
    fe: &FrontendValue,
    flow: &Flow,
    now: u64,
) -> Option<(u32, Backend, &'static str)> {
    if fe.table_size == 0 {
        return None;
    }
    if fe.flags & FE_AFFINITY_CLIENT_IP == 0 {
        return maglev(maps, fe, flow).map(|(id, b)| (id, b, "Maglev"));
    }
    let key = AffinityKey {
        client: raw(flow.src),
        service_id: fe.service_id,
        family: family(flow.src),
        _pad: [0; 3],
    };
    let limit = u64::from(fe.affinity_timeout_s) * 1_000_000_000;
    if let Some(a) = flows.affinity.get_mut(&key) {
        let b = maps.backend(a.backend_id);
        if now.saturating_sub(a.last_used_ns) <= limit
            && b.generation == a.backend_generation
            && b.state == BACKEND_ACTIVE
            && b.family == family(flow.src)
        {
            a.last_used_ns = now;
            return Some((a.backend_id, b, "session affinity"));
        }
    }
    let (id, b) = maglev(maps, fe, flow)?;
    flows.affinity.insert(
        key,
        AffinityValue {
            backend_id: id,
            backend_generation: b.generation,
            last_used_ns: now,
        },
    );
    Some((id, b, "Maglev, remembered for affinity"))
}
