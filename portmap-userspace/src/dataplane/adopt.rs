//! Adopting a pinned dataplane left by a previous daemon: the in-memory record
//! of services, ids and tables is rebuilt from the maps, so the next apply
//! changes only what the configuration changes, and flows keep their ids,
//! generations and backends.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::{IpAddr, SocketAddr},
};

use anyhow::{Context as _, Result};
use portmap_common::abi::{
    BACKEND_ACTIVE, BACKEND_UNUSED, FAMILY_V4, FRONTEND_GEN_FREE, FrontendKey, PROTO_TCP,
    SOURCE_RANGE_KEY_BITS,
};

use super::{
    Dataplane,
    alloc::{IdAllocator, Region, RegionAllocator},
    apply::{AppliedService, AppliedTable, BackendSlot, FrontendSlot},
    maps::ip_of,
};
use crate::model::{Cidr, DesiredState, EndpointState, Frontend, HostAddr, Protocol};

/// Prefix of the keys adopted services carry until a desired service claims them.
const ADOPTED: &str = "adopted service ";

fn frontend_of(key: &FrontendKey) -> Frontend {
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

impl Dataplane {
    /// Rebuilds the record of what the pinned maps publish. Returns the number
    /// of services adopted.
    pub(super) fn adopt(&mut self) -> Result<usize> {
        let mut services: BTreeMap<u32, AppliedService> = BTreeMap::new();
        let mut regions: Vec<Region> = Vec::new();
        let blank = |service_id| AppliedService {
            service_id,
            name: String::new(),
            port_name: String::new(),
            frontends: BTreeMap::new(),
            backends: BTreeMap::new(),
            table: None,
            source_ranges: BTreeSet::new(),
            in_sync_with: None,
        };

        for item in self.maps.frontends.iter() {
            let (key, value) = item.context("reading FRONTENDS")?;
            let svc = services
                .entry(value.service_id)
                .or_insert_with(|| blank(value.service_id));
            svc.frontends
                .insert(frontend_of(&key), FrontendSlot { value });
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

        let mut backend_generations = Vec::new();
        let mut backends_in_use = BTreeSet::new();
        let mut backend_addr: BTreeMap<u32, SocketAddr> = BTreeMap::new();
        let mut orphans = Vec::new();
        for (id, item) in self.maps.backends.iter().enumerate() {
            let b = item.context("reading BACKENDS")?;
            backend_generations.push(b.generation);
            if b.state == BACKEND_UNUSED {
                continue;
            }
            let Some(svc) = services.get_mut(&b.service_id) else {
                // Its service has no frontend left (the last daemon died while
                // removing it): free the slot so no flow uses it.
                orphans.push((
                    id as u32,
                    portmap_common::abi::Backend {
                        state: BACKEND_UNUSED,
                        ..b
                    },
                ));
                continue;
            };
            let addr = SocketAddr::new(ip_of(&b.addr, b.family), u16::from_be(b.port));
            let state = if b.state == BACKEND_ACTIVE {
                EndpointState::Ready
            } else {
                EndpointState::Terminating
            };
            let id = id as u32;
            svc.backends.insert(
                addr,
                BackendSlot {
                    id,
                    generation: b.generation,
                    state,
                },
            );
            backends_in_use.insert(id);
            backend_addr.insert(id, addr);
        }

        for (id, unused) in orphans {
            self.maps
                .backends
                .set(id, unused, 0)
                .context("freeing an orphaned backend")?;
        }
        for svc in services.values_mut() {
            if let Some(table) = svc.table.as_mut() {
                let ids: BTreeSet<u32> = self
                    .maps
                    .maglev
                    .read(table.region.offset, table.region.len)?
                    .into_iter()
                    .collect();
                table.members = ids
                    .iter()
                    .filter_map(|id| backend_addr.get(id).copied())
                    .collect();
            }
        }

        for key in self.maps.source_ranges.keys() {
            let key = key.context("reading SOURCE_RANGES")?;
            let data = key.data();
            let service_id = u32::from_be(data.service_id_be);
            let ip: IpAddr = ip_of(&data.addr, data.family);
            let prefix = (key.prefix_len() - SOURCE_RANGE_KEY_BITS) as u8;
            if let Some(svc) = services.get_mut(&service_id) {
                svc.source_ranges.insert(Cidr { addr: ip, prefix });
            }
        }

        let mut frontend_generations = Vec::new();
        for item in self.maps.frontend_gen.iter() {
            frontend_generations.push(item.context("reading FRONTEND_GEN")? & !FRONTEND_GEN_FREE);
        }
        let frontends_in_use: BTreeSet<u32> = services
            .values()
            .flat_map(|s| s.frontends.values().map(|f| f.value.frontend_id))
            .collect();
        let service_ids: BTreeSet<u32> = services.keys().copied().collect();

        for key in self.maps.node_addrs.keys() {
            let key = key.context("reading NODE_ADDRS")?;
            self.node_addrs.insert(ip_of(&key.addr, key.family));
        }

        self.frontend_ids = IdAllocator::resume(
            self.limits.frontends,
            frontend_generations,
            &frontends_in_use,
        );
        self.backend_ids =
            IdAllocator::resume(self.limits.backends, backend_generations, &backends_in_use);
        let service_generations = (0..=service_ids.last().copied().unwrap_or(0))
            .map(|id| u32::from(service_ids.contains(&id)))
            .collect();
        self.service_ids =
            IdAllocator::resume(self.limits.frontends, service_generations, &service_ids);
        self.regions = RegionAllocator::resume(self.regions.capacity(), &regions);
        // A frontend caught mid-swap may point at another table than its
        // siblings; the first apply rewrites it, so that region can go.
        let now = std::time::Instant::now();
        let in_use: HashSet<Region> = services
            .values()
            .filter_map(|s| s.table.as_ref().map(|t| t.region))
            .collect();
        for region in &regions {
            if !in_use.contains(region) {
                self.regions.free(*region, now);
            }
        }
        let adopted = services.len();
        self.services = services
            .into_iter()
            .map(|(id, svc)| (format!("{ADOPTED}{id}"), svc))
            .collect();
        Ok(adopted)
    }

    /// Gives each adopted service to the desired service that publishes one of
    /// its frontends, so the apply that follows keeps what did not change.
    pub(super) fn claim_adopted(&mut self, desired: &DesiredState) {
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
