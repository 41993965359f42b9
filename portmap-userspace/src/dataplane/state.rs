//! The record of what the maps publish: per service its frontends, backends,
//! Maglev table and source-range prefixes, with the ids and pool regions they
//! hold. Plain data: planning reads it, and it changes only as the writer
//! reports each map operation done ([`Applied::commit`]), so it matches the
//! maps also after a write that failed halfway through a plan.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    time::Instant,
};

use portmap_common::abi::FrontendValue;

use super::{
    Limits,
    alloc::{IdAllocator, Region, RegionAllocator},
    plan::Step,
};
use crate::model::{Cidr, EndpointState, Frontend, Reach, Service};

/// Everything the maps publish, and the allocators of their slots.
#[derive(Debug)]
pub(crate) struct Applied {
    pub limits: Limits,
    pub service_ids: IdAllocator,
    pub frontend_ids: IdAllocator,
    pub backend_ids: IdAllocator,
    pub regions: RegionAllocator,
    /// By service key.
    pub services: BTreeMap<String, AppliedService>,
    /// What `NODE_ADDRS` holds.
    pub node_addrs: BTreeSet<IpAddr>,
}

impl Applied {
    /// Nothing published, with `pool_slots` slots in the Maglev pool.
    pub fn new(limits: Limits, pool_slots: u32) -> Self {
        Self {
            limits,
            service_ids: IdAllocator::new(limits.frontends),
            frontend_ids: IdAllocator::new(limits.frontends),
            backend_ids: IdAllocator::new(limits.backends),
            regions: RegionAllocator::new(pool_slots),
            services: BTreeMap::new(),
            node_addrs: BTreeSet::new(),
        }
    }

    /// Records what a step's map operation did to service `key` (done, or
    /// needing none).
    pub fn commit(&mut self, key: &str, commit: Commit, now: Instant) {
        let Some(svc) = self.services.get_mut(key) else {
            return;
        };
        match commit {
            Commit::Nothing => {}
            Commit::BackendState { addr, state, reach } => {
                if let Some(slot) = svc.backends.get_mut(&addr) {
                    slot.state = state;
                    slot.reach = reach;
                }
            }
            Commit::BackendAdded { addr, slot } => {
                svc.backends.insert(addr, slot);
            }
            Commit::Table(table) => {
                if let Some(old) = std::mem::replace(&mut svc.table, table) {
                    svc.stale_tables.push(old.region);
                }
            }
            Commit::SourceAllowed(cidr) => {
                svc.source_ranges.insert(cidr);
            }
            Commit::Frontend {
                frontend, value, ..
            } => {
                svc.frontends.insert(frontend, FrontendSlot { value });
            }
            Commit::FrontendRetired(frontend) => {
                if let Some(slot) = svc.frontends.remove(&frontend) {
                    self.frontend_ids.free(slot.value.frontend_id, now);
                }
            }
            Commit::SourceForgotten(cidr) => {
                svc.source_ranges.remove(&cidr);
            }
            Commit::BackendRetired(addr) => {
                if let Some(slot) = svc.backends.remove(&addr) {
                    self.backend_ids.free(slot.id, now);
                }
            }
            Commit::TablesReleased => {
                for region in svc.stale_tables.drain(..) {
                    self.regions.free(region, now);
                }
            }
            Commit::ServiceRemoved => {
                let service_id = svc.service_id;
                self.services.remove(key);
                self.service_ids.free(service_id, now);
            }
        }
    }

    /// Gives back what the steps of a plan that will not be carried out
    /// allocated: nothing in the maps leads to those ids and regions yet.
    pub fn abandon(&mut self, steps: impl IntoIterator<Item = Step>, now: Instant) {
        for step in steps {
            match step.commit {
                Commit::BackendAdded { slot, .. } => self.backend_ids.free(slot.id, now),
                Commit::Frontend {
                    value, fresh: true, ..
                } => self.frontend_ids.free(value.frontend_id, now),
                Commit::Table(Some(table)) => self.regions.free(table.region, now),
                _ => {}
            }
        }
    }
}

/// What the dataplane holds for one service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AppliedService {
    pub service_id: u32,
    pub name: String,
    pub port_name: String,
    pub container: String,
    /// The frontends holding an id: published with this value, or, when a
    /// retirement was cut short by a failed write, unpublished already (the
    /// next apply finishes it).
    pub frontends: BTreeMap<Frontend, FrontendSlot>,
    pub backends: BTreeMap<SocketAddr, BackendSlot>,
    pub table: Option<AppliedTable>,
    /// Regions of tables replaced while frontends may still point at them
    /// (until the plan that rewrote every frontend is done).
    pub stale_tables: Vec<Region>,
    /// Prefixes in `SOURCE_RANGES` for this service.
    pub source_ranges: BTreeSet<Cidr>,
    /// The desired service the maps were last made to publish in full; an
    /// apply skips a service equal to it, so changing one service among
    /// thousands costs one service's work.
    pub in_sync_with: Option<Service>,
}

impl AppliedService {
    /// A service that publishes nothing yet.
    pub fn new(service_id: u32, name: &str, port_name: &str) -> Self {
        Self {
            service_id,
            name: name.to_string(),
            port_name: port_name.to_string(),
            container: String::new(),
            frontends: BTreeMap::new(),
            backends: BTreeMap::new(),
            table: None,
            stale_tables: Vec::new(),
            source_ranges: BTreeSet::new(),
            in_sync_with: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FrontendSlot {
    pub value: FrontendValue,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BackendSlot {
    pub id: u32,
    pub generation: u32,
    pub state: EndpointState,
    /// How flows reach it (`BACKEND_NAT`).
    pub reach: Reach,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AppliedTable {
    pub region: Region,
    /// The backends the table was built from.
    pub members: BTreeSet<SocketAddr>,
}

/// What the record learns once a step's map operation is done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Commit {
    /// Nothing: the step prepares one that follows.
    Nothing,
    /// A backend's new state (readiness, SNAT) is written.
    BackendState {
        addr: SocketAddr,
        state: EndpointState,
        reach: Reach,
    },
    /// A backend is written under an id this plan allocated.
    BackendAdded {
        addr: SocketAddr,
        slot: BackendSlot,
    },
    /// The service's table is now this one (in a region this plan
    /// allocated), or none; the one it replaces is stale until
    /// [`Commit::TablesReleased`].
    Table(Option<AppliedTable>),
    SourceAllowed(Cidr),
    /// The frontend is published with `value`; `fresh` when this plan
    /// allocated its id.
    Frontend {
        frontend: Frontend,
        value: FrontendValue,
        fresh: bool,
    },
    /// The frontend is unpublished and its generation marked free: its id
    /// goes back to the allocator.
    FrontendRetired(Frontend),
    SourceForgotten(Cidr),
    /// The backend is marked unused: its id goes back to the allocator.
    BackendRetired(SocketAddr),
    /// No frontend points at the service's stale tables any more.
    TablesReleased,
    /// Nothing of the service is left in the maps.
    ServiceRemoved,
}
