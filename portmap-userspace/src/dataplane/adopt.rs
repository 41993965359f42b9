//! Adopting a pinned dataplane left by a previous daemon: the record of
//! services, ids and tables is rebuilt from what the maps hold, so the next
//! apply changes only what the configuration changes, and flows keep their
//! ids, generations and backends. Reading the maps ([`Pinned::read`]) is the
//! only part that needs a kernel; rebuilding the record from what was read
//! ([`Applied::adopt`]) is pure.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::{IpAddr, SocketAddr},
};

use anyhow::{Context as _, Result};
use portmap_common::abi::{
    BACKEND_ACTIVE, BACKEND_UNUSED, Backend, BackendNat, FAMILY_V4, FRONTEND_GEN_FREE, FrontendKey,
    FrontendValue, NAT_DSR, NAT_SNAT, PROTO_TCP, SOURCE_RANGE_KEY_BITS,
};

use super::{
    Dataplane, Limits,
    alloc::{IdAllocator, Region, RegionAllocator},
    maps::{Maps, ip_of},
    plan::{BackendEntry, MapOp},
    state::{Applied, AppliedService, AppliedTable, BackendSlot, FrontendSlot},
    writer::MapWriter,
};
use crate::model::{Cidr, DesiredState, EndpointState, Frontend, HostAddr, Protocol, Reach};

/// Prefix of the keys adopted services carry until a desired service claims them.
const ADOPTED: &str = "adopted service ";

pub(crate) fn frontend_of(key: &FrontendKey) -> Frontend {
    let addr = if key.addr.is_unspecified() {
        if key.family == FAMILY_V4 {
            HostAddr::AllV4
        } else {
            HostAddr::AllV6
        }
    } else {
        HostAddr::Ip(ip_of(&key.addr, key.family))
    };
    Frontend {
        addr,
        port: u16::from_be(key.port),
        proto: if key.proto == PROTO_TCP {
            Protocol::Tcp
        } else {
            Protocol::Udp
        },
    }
}

/// What the pinned maps hold, as adoption reads it (Maglev tables are read
/// by region, on demand).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Pinned {
    pub frontends: Vec<(FrontendKey, FrontendValue)>,
    /// `BACKENDS`, by id.
    pub backends: Vec<Backend>,
    /// `BACKEND_NAT`, by id.
    pub backend_nat: Vec<BackendNat>,
    /// `FRONTEND_GEN`, by id.
    pub frontend_gen: Vec<u32>,
    /// `SOURCE_RANGES`: (service id, prefix).
    pub source_ranges: Vec<(u32, Cidr)>,
    pub node_addrs: Vec<IpAddr>,
}

impl Pinned {
    pub fn read(maps: &Maps) -> Result<Self> {
        let frontends = maps
            .frontends
            .iter()
            .collect::<Result<_, _>>()
            .context("reading FRONTENDS")?;
        let backends = maps
            .backends
            .iter()
            .collect::<Result<_, _>>()
            .context("reading BACKENDS")?;
        let backend_nat = maps
            .backend_nat
            .iter()
            .collect::<Result<_, _>>()
            .context("reading BACKEND_NAT")?;
        let frontend_gen = maps
            .frontend_gen
            .iter()
            .collect::<Result<_, _>>()
            .context("reading FRONTEND_GEN")?;
        let mut source_ranges = Vec::new();
        for key in maps.source_ranges.keys() {
            let key = key.context("reading SOURCE_RANGES")?;
            let data = key.data();
            let addr = ip_of(&data.addr, data.family);
            let prefix = (key.prefix_len() - SOURCE_RANGE_KEY_BITS) as u8;
            source_ranges.push((u32::from_be(data.service_id_be), Cidr { addr, prefix }));
        }
        let mut node_addrs = Vec::new();
        for key in maps.node_addrs.keys() {
            let key = key.context("reading NODE_ADDRS")?;
            node_addrs.push(ip_of(&key.addr, key.family));
        }
        Ok(Self {
            frontends,
            backends,
            backend_nat,
            frontend_gen,
            source_ranges,
            node_addrs,
        })
    }
}

impl Applied {
    /// Rebuilds the record of what `pinned` publishes, reading tables with
    /// `read_table`. Adopted services are keyed `adopted service ID` until
    /// [`Applied::claim_adopted`]. Also returns the writes that free
    /// backends whose service has no frontend left (the last daemon died
    /// while removing it), so no flow uses them.
    pub fn adopt(
        limits: Limits,
        pool_slots: u32,
        pinned: &Pinned,
        mut read_table: impl FnMut(Region) -> Result<Vec<u32>>,
    ) -> Result<(Self, Vec<MapOp>)> {
        let mut services: BTreeMap<u32, AppliedService> = BTreeMap::new();
        let mut regions: Vec<Region> = Vec::new();
        for (key, value) in &pinned.frontends {
            let svc = services
                .entry(value.service_id)
                .or_insert_with(|| AppliedService::new(value.service_id, "", ""));
            svc.frontends
                .insert(frontend_of(key), FrontendSlot { value: *value });
            if value.table_size > 0 {
                let region = Region {
                    offset: value.table_offset,
                    len: value.table_size,
                };
                if !regions.contains(&region) {
                    regions.push(region);
                }
                svc.table.get_or_insert(AppliedTable {
                    region,
                    members: BTreeSet::new(),
                });
            }
        }

        let mut backend_generations = Vec::with_capacity(pinned.backends.len());
        let mut backends_in_use = BTreeSet::new();
        let mut backend_addr: BTreeMap<u32, SocketAddr> = BTreeMap::new();
        let mut orphans = Vec::new();
        for (id, b) in pinned.backends.iter().enumerate() {
            let id = id as u32;
            backend_generations.push(b.generation);
            if b.state == BACKEND_UNUSED {
                continue;
            }
            let addr = SocketAddr::new(ip_of(&b.addr, b.family), u16::from_be(b.port));
            let Some(svc) = services.get_mut(&b.service_id) else {
                let backend = BackendEntry {
                    addr,
                    state: BACKEND_UNUSED,
                    generation: b.generation,
                    service_id: b.service_id,
                    reach: Reach::Direct,
                };
                orphans.push(MapOp::WriteBackend { id, backend });
                continue;
            };
            let state = if b.state == BACKEND_ACTIVE {
                EndpointState::Ready
            } else {
                EndpointState::Terminating
            };
            let reach = match pinned.backend_nat.get(id as usize) {
                Some(nat) if nat.mode == NAT_SNAT => Reach::Snat(ip_of(&nat.snat_addr, b.family)),
                Some(nat) if nat.mode == NAT_DSR => Reach::Dsr,
                _ => Reach::Direct,
            };
            let slot = BackendSlot {
                id,
                generation: b.generation,
                state,
                reach,
            };
            svc.backends.insert(addr, slot);
            backends_in_use.insert(id);
            backend_addr.insert(id, addr);
        }

        for svc in services.values_mut() {
            if let Some(table) = svc.table.as_mut() {
                let ids: BTreeSet<u32> = read_table(table.region)?.into_iter().collect();
                table.members = ids
                    .iter()
                    .filter_map(|id| backend_addr.get(id).copied())
                    .collect();
            }
        }
        for (service_id, cidr) in &pinned.source_ranges {
            if let Some(svc) = services.get_mut(service_id) {
                svc.source_ranges.insert(*cidr);
            }
        }

        let frontend_generations = pinned
            .frontend_gen
            .iter()
            .map(|g| g & !FRONTEND_GEN_FREE)
            .collect();
        let frontends_in_use: BTreeSet<u32> = services
            .values()
            .flat_map(|s| s.frontends.values().map(|f| f.value.frontend_id))
            .collect();
        let service_ids: BTreeSet<u32> = services.keys().copied().collect();
        let service_generations = (0..=service_ids.last().copied().unwrap_or(0))
            .map(|id| u32::from(service_ids.contains(&id)))
            .collect();

        // A frontend caught mid-swap may point at another table than its
        // siblings: that region stays in use, stale, until the first apply
        // has rewritten the frontend.
        let tables: HashSet<Region> = services
            .values()
            .filter_map(|s| s.table.as_ref().map(|t| t.region))
            .collect();
        for svc in services.values_mut() {
            let pointed = svc.frontends.values().map(|slot| Region {
                offset: slot.value.table_offset,
                len: slot.value.table_size,
            });
            let stale: BTreeSet<Region> = pointed
                .filter(|r| r.len > 0 && !tables.contains(r))
                .collect();
            svc.stale_tables.extend(stale);
        }

        let applied = Applied {
            limits,
            service_ids: IdAllocator::resume(limits.frontends, service_generations, &service_ids),
            frontend_ids: IdAllocator::resume(
                limits.frontends,
                frontend_generations,
                &frontends_in_use,
            ),
            backend_ids: IdAllocator::resume(
                limits.backends,
                backend_generations,
                &backends_in_use,
            ),
            regions: RegionAllocator::resume(pool_slots, &regions),
            services: services
                .into_iter()
                .map(|(id, svc)| (format!("{ADOPTED}{id}"), svc))
                .collect(),
            node_addrs: pinned.node_addrs.iter().copied().collect(),
        };
        Ok((applied, orphans))
    }

    /// Gives each adopted service to the desired service that publishes one of
    /// its frontends, so the apply that follows keeps what did not change.
    pub fn claim_adopted(&mut self, desired: &DesiredState) {
        let adopted_by_frontend: HashMap<Frontend, String> = self
            .services
            .iter()
            .filter(|(key, _)| key.starts_with(ADOPTED))
            .flat_map(|(key, applied)| applied.frontends.keys().map(|f| (*f, key.clone())))
            .collect();
        if adopted_by_frontend.is_empty() {
            return;
        }
        for svc in &desired.services {
            if self.services.contains_key(&svc.key) {
                continue;
            }
            let claimed = svc
                .frontends
                .iter()
                .filter_map(|f| adopted_by_frontend.get(f))
                .find(|key| self.services.contains_key(*key));
            if let Some(key) = claimed
                && let Some(applied) = self.services.remove(key)
            {
                self.services.insert(svc.key.clone(), applied);
            }
        }
    }
}

impl Dataplane {
    /// Rebuilds the record of what the pinned maps publish. Returns the number
    /// of services adopted.
    pub(super) fn adopt(&mut self) -> Result<usize> {
        let pinned = Pinned::read(&self.maps)?;
        let maps = &self.maps;
        let (applied, orphans) = Applied::adopt(
            self.applied.limits,
            self.applied.regions.capacity(),
            &pinned,
            |r| maps.maglev.read(r.offset, r.len),
        )?;
        for op in &orphans {
            self.maps
                .execute(op)
                .context("freeing an orphaned backend")?;
        }
        self.applied = applied;
        Ok(self.applied.services.len())
    }
}

#[cfg(test)]
mod tests;
