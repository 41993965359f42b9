//! The maps a [`DesiredState`] must produce.
//!
//! Which ids, generations and table offsets userspace hands out is its own
//! business (they depend on history and on grace periods), so they are read
//! back from the real maps ([`Allocation`]); everything else is derived here
//! from the desired state and checked against what userspace wrote: the
//! frontend keys and flags, the backends' addresses and states, and each
//! Maglev table, which must be `portmap_userspace::maglev`'s table (a
//! contract) of the service's ready endpoints, or of all its endpoints when
//! none is ready.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
};

use portmap_common::abi::{
    BACKEND_ACTIVE, BACKEND_TERMINATING, Backend, DatapathConfig, FE_AFFINITY_CLIENT_IP,
    FE_DROP_NO_BACKENDS, FE_HOST_ONLY, FE_REJECT_NO_BACKENDS, FE_SOURCE_RANGES, FrontendKey,
    FrontendValue, RawAddr,
};
use portmap_userspace::{
    maglev::{self, MaglevBackend},
    model::{DesiredState, EndpointState, Frontend, HostAddr, WhenEmpty},
};

use super::state::{Maps, family, ip, port, raw, raw_port};

/// What the real dataplane allocated, as read from its maps.
#[derive(Clone, Debug, Default)]
pub struct Allocation {
    /// `FRONTENDS` entries of the desired frontends and of the previously
    /// published ones.
    pub frontends: HashMap<FrontendKey, FrontendValue>,
    /// `FRONTEND_GEN` of the ids the model needs.
    pub frontend_gen: HashMap<u32, u32>,
    /// `BACKENDS` of the ids the model needs.
    pub backends: HashMap<u32, Backend>,
    /// The Maglev regions the frontends point at, by offset, with the
    /// distinct ids in each.
    pub tables: HashMap<u32, (Vec<u32>, Vec<u32>)>,
}

/// Maglev tables already built, by members and size, with each member's
/// index for its id (a table places backends by address alone, so the ids
/// are only labels): random states reuse the same few backends.
#[derive(Default)]
pub struct TableCache(HashMap<(Vec<SocketAddr>, u32), Vec<u32>>);

impl TableCache {
    /// `maglev::build_table` of `members` (sorted) with ids `ids`.
    pub fn table(&mut self, members: &[SocketAddr], ids: &[u32], size: u32) -> Vec<u32> {
        if self.0.len() > 4096 {
            self.0.clear();
        }
        let by_index = self.0.entry((members.to_vec(), size)).or_insert_with(|| {
            let backends: Vec<MaglevBackend> = members
                .iter()
                .enumerate()
                .map(|(i, addr)| MaglevBackend {
                    addr: *addr,
                    id: i as u32,
                })
                .collect();
            maglev::build_table(&backends, size)
        });
        by_index.iter().map(|i| ids[*i as usize]).collect()
    }
}

/// The `FRONTENDS` key of a frontend.
pub fn frontend_key(fe: &Frontend) -> FrontendKey {
    let (addr, family) = match fe.addr {
        HostAddr::AllV4 => (RawAddr::UNSPECIFIED, 4),
        HostAddr::AllV6 => (RawAddr::UNSPECIFIED, 6),
        HostAddr::Ip(a) => (raw(a), super::state::family(a)),
    };
    FrontendKey {
        addr,
        port: raw_port(fe.port),
        proto: fe.proto.number(),
        family,
    }
}

fn is_loopback(a: &HostAddr) -> bool {
    match a {
        HostAddr::Ip(IpAddr::V4(a)) => a.octets()[0] == 127,
        HostAddr::Ip(IpAddr::V6(a)) => *a == std::net::Ipv6Addr::LOCALHOST,
        _ => false,
    }
}

fn socket(b: &Backend) -> SocketAddr {
    SocketAddr::new(ip(&b.addr, b.family), port(b.port))
}

/// The maps `desired` must give on a node with `node_addrs`, or what
/// userspace got wrong.
pub fn expected_maps(
    desired: &DesiredState,
    node_addrs: &BTreeSet<IpAddr>,
    config: DatapathConfig,
    alloc: &Allocation,
    cache: &mut TableCache,
) -> Result<Maps, String> {
    let mut maps = Maps {
        config,
        frontends: HashMap::new(),
        frontend_gen: alloc.frontend_gen.clone(),
        backends: alloc.backends.clone(),
        tables: HashMap::new(),
        node_addrs: node_addrs.clone(),
        source_ranges: HashMap::new(),
    };
    let mut service_ids: BTreeMap<u32, &str> = BTreeMap::new();
    for svc in &desired.services {
        let ready: BTreeSet<SocketAddr> = svc
            .endpoints
            .iter()
            .filter(|ep| ep.state == EndpointState::Ready)
            .map(|ep| SocketAddr::new(ep.addr, ep.port))
            .collect();
        let members: BTreeSet<SocketAddr> = if ready.is_empty() {
            svc.endpoints
                .iter()
                .map(|ep| SocketAddr::new(ep.addr, ep.port))
                .collect()
        } else {
            ready
        };
        let mut flags = 0;
        if svc.affinity_timeout_s.is_some() {
            flags |= FE_AFFINITY_CLIENT_IP;
        }
        flags |= match svc.when_empty {
            WhenEmpty::Pass => 0,
            WhenEmpty::Reject => FE_REJECT_NO_BACKENDS,
            WhenEmpty::Drop => FE_DROP_NO_BACKENDS,
        };
        if !svc.source_ranges.is_empty() {
            flags |= FE_SOURCE_RANGES;
        }
        let mut service_id = None;
        for fe in &svc.frontends {
            let key = frontend_key(fe);
            let real = alloc
                .frontends
                .get(&key)
                .ok_or_else(|| format!("{}: frontend {fe} is not in FRONTENDS", svc.key))?;
            match service_id {
                None => {
                    if let Some(other) = service_ids.insert(real.service_id, &svc.key) {
                        return Err(format!(
                            "{} and {other} share service id {}",
                            svc.key, real.service_id
                        ));
                    }
                    service_id = Some(real.service_id);
                }
                Some(id) if id != real.service_id => {
                    return Err(format!(
                        "{}: frontends with service ids {id} and {}",
                        svc.key, real.service_id
                    ));
                }
                Some(_) => {}
            }
            let size = real.table_size;
            if members.is_empty() != (size == 0) {
                return Err(format!(
                    "{}: frontend {fe} has a table of {size} for {} backends",
                    svc.key,
                    members.len()
                ));
            }
            if size > 0 && maglev::table_size(members.len(), Some(size)) != size {
                return Err(format!(
                    "{}: a table of {size} slots does not fit {} backends",
                    svc.key,
                    members.len()
                ));
            }
            let value = FrontendValue {
                frontend_id: real.frontend_id,
                generation: real.generation,
                service_id: real.service_id,
                table_offset: if size == 0 { 0 } else { real.table_offset },
                table_size: size,
                flags: if is_loopback(&fe.addr) {
                    flags | FE_HOST_ONLY
                } else {
                    flags
                },
                affinity_timeout_s: svc.affinity_timeout_s.unwrap_or(0),
                _reserved: 0,
            };
            if value != *real {
                return Err(format!(
                    "{}: frontend {fe} is {real:?} in FRONTENDS, expected {value:?}",
                    svc.key
                ));
            }
            if alloc.frontend_gen.get(&real.frontend_id) != Some(&real.generation) {
                return Err(format!(
                    "{}: FRONTEND_GEN[{}] is {:?}, the frontend's generation {}",
                    svc.key,
                    real.frontend_id,
                    alloc.frontend_gen.get(&real.frontend_id),
                    real.generation
                ));
            }
            maps.frontends.insert(key, value);
            if size > 0 && !maps.tables.contains_key(&real.table_offset) {
                let table = expected_table(svc, &members, size, real, alloc, cache)?;
                maps.tables.insert(real.table_offset, table);
            }
        }
        if let Some(id) = service_id
            && !svc.source_ranges.is_empty()
        {
            maps.source_ranges.insert(
                id,
                svc.source_ranges
                    .iter()
                    .map(|c| (c.addr, c.prefix))
                    .collect(),
            );
        }
    }
    if let Some(stale) = alloc
        .frontends
        .keys()
        .find(|k| !maps.frontends.contains_key(k))
    {
        return Err(format!(
            "FRONTENDS holds {stale:?}, published by no service"
        ));
    }
    Ok(maps)
}

/// The Maglev table of `members`, with the ids userspace gave them (found in
/// the real table), after checking each backend's slot.
fn expected_table(
    svc: &portmap_userspace::model::Service,
    members: &BTreeSet<SocketAddr>,
    size: u32,
    fe: &FrontendValue,
    alloc: &Allocation,
    cache: &mut TableCache,
) -> Result<Vec<u32>, String> {
    let (real, real_ids) = alloc
        .tables
        .get(&fe.table_offset)
        .ok_or_else(|| format!("{}: table at {} was not read", svc.key, fe.table_offset))?;
    let mut ids: BTreeMap<SocketAddr, u32> = BTreeMap::new();
    for &id in real_ids {
        let b = alloc
            .backends
            .get(&id)
            .ok_or_else(|| format!("{}: backend {id} was not read", svc.key))?;
        let addr = socket(b);
        if let Some(other) = ids.insert(addr, id) {
            return Err(format!(
                "{}: the table names {addr} as both {other} and {id}",
                svc.key
            ));
        }
        let Some(ep) = svc
            .endpoints
            .iter()
            .find(|ep| SocketAddr::new(ep.addr, ep.port) == addr)
        else {
            return Err(format!(
                "{}: the table names {addr}, not an endpoint",
                svc.key
            ));
        };
        let expected = Backend {
            addr: raw(ep.addr),
            port: raw_port(ep.port),
            family: family(ep.addr),
            state: match ep.state {
                EndpointState::Ready => BACKEND_ACTIVE,
                EndpointState::Terminating => BACKEND_TERMINATING,
            },
            generation: b.generation,
            service_id: fe.service_id,
        };
        if *b != expected {
            return Err(format!(
                "{}: BACKENDS[{id}] is {b:?}, expected {expected:?}",
                svc.key
            ));
        }
    }
    let members: Vec<SocketAddr> = members.iter().copied().collect();
    let member_ids: Vec<u32> = members
        .iter()
        .map(|addr| {
            ids.get(addr)
                .copied()
                .ok_or_else(|| format!("{}: {addr} is in no slot of its table", svc.key))
        })
        .collect::<Result<_, _>>()?;
    let table = cache.table(&members, &member_ids, size);
    if table != *real {
        let differ = table.iter().zip(real).filter(|(a, b)| a != b).count();
        return Err(format!(
            "{}: the Maglev table at {} differs from maglev::build_table in {differ} of {size} slots",
            svc.key, fe.table_offset
        ));
    }
    Ok(table)
}
