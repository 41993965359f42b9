//! The plan of an apply: for one service, the map operations that take the
//! maps from what they publish (the record, [`Applied`]) to the desired
//! service, in an order that keeps the dataplane consistent while packets
//! flow (make before break). Pure: planning reads the record and allocates
//! ids and regions, and touches no map; a writer carries the plan out.
//!
//! The order, step by step ([`Applied::plan_update`]):
//! 1. backends: new ones written (counters zeroed first), changed states
//!    rewritten, before any table can name them;
//! 2. the Maglev table, when its members or size change: built into a free
//!    region no frontend points at;
//! 3. source-range prefixes the service gains, before a frontend's flag
//!    enforces them;
//! 4. frontends: a new one's counters and generation first, then each
//!    frontend swapped to its new value (table, flags) in one hash-map
//!    update;
//! 5. then what the service no longer has is let go: frontends unpublished
//!    (and their generation marked free), prefixes no frontend enforces any
//!    more (so a service whose ranges shrink to none is not left
//!    "restricted" with nothing allowed), backends marked unused, and last
//!    the regions of replaced tables (ids and regions come back to use only
//!    after a grace period, see `alloc`).
//!
//! A removed service ([`Applied::plan_removal`]) goes the other way:
//! frontends first, then backends, its table, its prefixes and its id.

use crate::model::Reach;
use std::{
    collections::{BTreeSet, HashMap},
    fmt,
    net::{IpAddr, SocketAddr},
    time::Instant,
};

use anyhow::{Context as _, Result};
use portmap_common::abi::{
    BACKEND_ACTIVE, BACKEND_TERMINATING, BACKEND_UNUSED, FE_AFFINITY_CLIENT_IP,
    FE_DROP_NO_BACKENDS, FE_HOST_ONLY, FE_REJECT_NO_BACKENDS, FE_SOURCE_RANGES, FRONTEND_GEN_FREE,
    FrontendValue,
};

use super::{
    alloc::Region,
    maps::names,
    state::{Applied, AppliedService, AppliedTable, BackendSlot, Commit},
};
use crate::{
    maglev::{self, MaglevBackend},
    model::{Cidr, EndpointState, Frontend, FrontendOwners, HostAddr, Service, WhenEmpty},
};

/// A `BACKENDS` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BackendEntry {
    pub addr: SocketAddr,
    /// `BACKEND_ACTIVE`, `BACKEND_TERMINATING` or `BACKEND_UNUSED`.
    pub state: u8,
    pub generation: u32,
    pub service_id: u32,
    /// `BACKEND_NAT`: new flows SNATed from this address, or not.
    pub reach: Reach,
}

/// One operation on one map entry, carried out as is by a writer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MapOp {
    /// `BACKEND_STATS[id]` = 0 on every CPU: a reused id starts from zero.
    ZeroBackendStats { id: u32 },
    /// `BACKEND_NAT[id]`, then `BACKENDS[id]` = `backend`.
    WriteBackend { id: u32, backend: BackendEntry },
    /// `MAGLEV[region]` = `slots` (backend ids).
    WriteTable { region: Region, slots: Vec<u32> },
    /// `SOURCE_RANGES` gains `cidr` for the service.
    AllowSource { service_id: u32, cidr: Cidr },
    /// `FRONTEND_STATS[id]` = 0 on every CPU.
    ZeroFrontendStats { id: u32 },
    /// `FRONTEND_GEN[id]` = `generation` (with `FRONTEND_GEN_FREE` once retired).
    WriteFrontendGen { id: u32, generation: u32 },
    /// `FRONTENDS[frontend]` = `value`, one atomic update.
    PublishFrontend {
        frontend: Frontend,
        value: FrontendValue,
    },
    /// `FRONTENDS` loses `frontend` (absent already is fine).
    UnpublishFrontend { frontend: Frontend },
    /// `SOURCE_RANGES` loses `cidr` for the service (absent already is fine).
    ForgetSource { service_id: u32, cidr: Cidr },
    /// `NODE_ADDRS` gains `ip`.
    AddNodeAddr(IpAddr),
    /// `NODE_ADDRS` loses `ip` (absent already is fine).
    RemoveNodeAddr(IpAddr),
}

impl MapOp {
    /// The map the operation changes.
    pub fn map(&self) -> &'static str {
        match self {
            MapOp::ZeroBackendStats { .. } => names::BACKEND_STATS,
            MapOp::WriteBackend { .. } => names::BACKENDS,
            MapOp::WriteTable { .. } => names::MAGLEV,
            MapOp::AllowSource { .. } | MapOp::ForgetSource { .. } => names::SOURCE_RANGES,
            MapOp::ZeroFrontendStats { .. } => names::FRONTEND_STATS,
            MapOp::WriteFrontendGen { .. } => names::FRONTEND_GEN,
            MapOp::PublishFrontend { .. } | MapOp::UnpublishFrontend { .. } => names::FRONTENDS,
            MapOp::AddNodeAddr(_) | MapOp::RemoveNodeAddr(_) => names::NODE_ADDRS,
        }
    }
}

impl fmt::Display for MapOp {
    /// `write BACKENDS[3] 198.19.0.2:3000 state 1 gen 1 service 0`, ...
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let map = self.map();
        match self {
            MapOp::ZeroBackendStats { id } | MapOp::ZeroFrontendStats { id } => {
                write!(f, "zero {map}[{id}]")
            }
            MapOp::WriteBackend { id, backend: b } => write!(
                f,
                "write {map}[{id}] {} state {} gen {} service {}",
                b.addr, b.state, b.generation, b.service_id
            ),
            MapOp::WriteTable { region, .. } => {
                write!(f, "write {map}[{}+{}]", region.offset, region.len)
            }
            MapOp::AllowSource { service_id, cidr } => {
                write!(f, "insert {map}[service {service_id} {cidr}]")
            }
            MapOp::ForgetSource { service_id, cidr } => {
                write!(f, "delete {map}[service {service_id} {cidr}]")
            }
            MapOp::WriteFrontendGen { id, generation } => {
                let free = if generation & FRONTEND_GEN_FREE != 0 {
                    " (free)"
                } else {
                    ""
                };
                write!(
                    f,
                    "write {map}[{id}] gen {}{free}",
                    generation & !FRONTEND_GEN_FREE
                )
            }
            MapOp::PublishFrontend { frontend, value: v } => write!(
                f,
                "insert {map}[{frontend}] id {} gen {} service {} table {}+{} flags {:#x} affinity {}s",
                v.frontend_id,
                v.generation,
                v.service_id,
                v.table_offset,
                v.table_size,
                v.flags,
                v.affinity_timeout_s
            ),
            MapOp::UnpublishFrontend { frontend } => write!(f, "delete {map}[{frontend}]"),
            MapOp::AddNodeAddr(ip) => write!(f, "insert {map}[{ip}]"),
            MapOp::RemoveNodeAddr(ip) => write!(f, "delete {map}[{ip}]"),
        }
    }
}

/// A map operation (or none), and what the record learns once it is done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Step {
    pub op: Option<MapOp>,
    pub commit: Commit,
}

/// The steps that bring one service's entries to what is desired, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The service's key.
    pub key: String,
    pub steps: Vec<Step>,
}

impl Plan {
    fn new(key: &str, capacity: usize) -> Self {
        Self {
            key: key.to_string(),
            steps: Vec::with_capacity(capacity),
        }
    }

    fn push(&mut self, op: MapOp, commit: Commit) {
        self.steps.push(Step {
            op: Some(op),
            commit,
        });
    }

    /// A change of the record that needs no map operation.
    fn note(&mut self, commit: Commit) {
        self.steps.push(Step { op: None, commit });
    }
}

/// The endpoints that take new flows: the ready ones, or, when none is ready,
/// the terminating ones that still serve (KEP-1669).
pub(crate) fn table_members(svc: &Service) -> BTreeSet<SocketAddr> {
    let ready: BTreeSet<SocketAddr> = svc
        .endpoints
        .iter()
        .filter(|ep| ep.state == EndpointState::Ready)
        .map(|ep| SocketAddr::new(ep.addr, ep.port))
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    svc.endpoints
        .iter()
        .map(|ep| SocketAddr::new(ep.addr, ep.port))
        .collect()
}

fn backend_state(state: EndpointState) -> u8 {
    match state {
        EndpointState::Ready => BACKEND_ACTIVE,
        EndpointState::Terminating => BACKEND_TERMINATING,
    }
}

/// The flags every frontend of `svc` carries (a loopback one adds
/// `FE_HOST_ONLY`).
fn service_flags(svc: &Service) -> u32 {
    let mut flags = 0;
    if svc.affinity_timeout_s.is_some() {
        flags |= FE_AFFINITY_CLIENT_IP;
    }
    match svc.when_empty {
        WhenEmpty::Pass => {}
        WhenEmpty::Reject => flags |= FE_REJECT_NO_BACKENDS,
        WhenEmpty::Drop => flags |= FE_DROP_NO_BACKENDS,
    }
    if !svc.source_ranges.is_empty() {
        flags |= FE_SOURCE_RANGES;
    }
    flags
}

impl Applied {
    /// The plan that makes the maps publish `svc`. A new service gets its id
    /// and an empty record here; ids and regions the plan needs are
    /// allocated, and given back by [`Applied::abandon`] if it is not carried
    /// out in full. `owners` says which service publishes each desired
    /// frontend: one that moved to another service is left to it.
    pub fn plan_update(
        &mut self,
        svc: &Service,
        owners: &FrontendOwners<'_>,
        now: Instant,
    ) -> Result<Plan> {
        if !self.services.contains_key(&svc.key) {
            let (service_id, _) = self.service_ids.alloc(now).context("no free service id")?;
            self.services.insert(
                svc.key.clone(),
                AppliedService::new(service_id, &svc.name, &svc.port_name),
            );
        }
        // Room for a new service's steps: two per backend, three per
        // frontend, one per prefix, the table and the release.
        let steps = 2 * svc.endpoints.len() + 3 * svc.frontends.len() + svc.source_ranges.len();
        let mut plan = Plan::new(&svc.key, steps + 2);
        if let Err(e) = self.plan_into(&mut plan, svc, owners, now) {
            self.abandon(plan.steps, now);
            return Err(e);
        }
        Ok(plan)
    }

    fn plan_into(
        &mut self,
        plan: &mut Plan,
        svc: &Service,
        owners: &FrontendOwners<'_>,
        now: Instant,
    ) -> Result<()> {
        let Applied {
            services,
            frontend_ids,
            backend_ids,
            regions,
            ..
        } = self;
        let applied = services.get_mut(&svc.key).expect("inserted by plan_update");
        // Labels only: no map holds them.
        applied.name.clone_from(&svc.name);
        applied.port_name.clone_from(&svc.port_name);
        applied.container.clone_from(&svc.container);
        let service_id = applied.service_id;

        // 1. Backends, as this plan leaves them (an endpoint listed twice is
        // one backend).
        let mut planned: HashMap<SocketAddr, BackendSlot> =
            HashMap::with_capacity(svc.endpoints.len());
        for ep in &svc.endpoints {
            let addr = SocketAddr::new(ep.addr, ep.port);
            let current = planned
                .get(&addr)
                .or_else(|| applied.backends.get(&addr))
                .copied();
            let (slot, commit) = match current {
                Some(slot) if slot.state == ep.state && slot.reach == ep.reach => continue,
                Some(slot) => {
                    let slot = BackendSlot {
                        state: ep.state,
                        reach: ep.reach,
                        ..slot
                    };
                    let commit = Commit::BackendState {
                        addr,
                        state: ep.state,
                        reach: ep.reach,
                    };
                    (slot, commit)
                }
                None => {
                    let (id, generation) = backend_ids.alloc(now).context("no free backend id")?;
                    plan.push(MapOp::ZeroBackendStats { id }, Commit::Nothing);
                    let slot = BackendSlot {
                        id,
                        generation,
                        state: ep.state,
                        reach: ep.reach,
                    };
                    (slot, Commit::BackendAdded { addr, slot })
                }
            };
            let backend = BackendEntry {
                addr,
                state: backend_state(ep.state),
                generation: slot.generation,
                service_id,
                reach: ep.reach,
            };
            plan.push(
                MapOp::WriteBackend {
                    id: slot.id,
                    backend,
                },
                commit,
            );
            planned.insert(addr, slot);
        }
        let id_of = |addr: &SocketAddr| {
            planned
                .get(addr)
                .or_else(|| applied.backends.get(addr))
                .map(|slot| slot.id)
        };

        // 2. The table, built aside when its members or size change.
        let members = table_members(svc);
        let in_use = applied.table.as_ref();
        let size = maglev::table_size(members.len(), in_use.map(|t| t.region.len));
        let unchanged = in_use.is_some_and(|t| t.region.len == size && t.members == members);
        let table = if unchanged {
            in_use.map(|t| t.region)
        } else if size == 0 {
            plan.note(Commit::Table(None));
            None
        } else {
            let backends: Vec<MaglevBackend> = members
                .iter()
                .map(|addr| {
                    let id = id_of(addr).context("a table member without a backend")?;
                    Ok(MaglevBackend { addr: *addr, id })
                })
                .collect::<Result<_>>()?;
            let region = regions
                .alloc(size, now)
                .context("no room in the Maglev pool")?;
            let slots = maglev::build_table(&backends, size);
            plan.push(
                MapOp::WriteTable { region, slots },
                Commit::Table(Some(AppliedTable { region, members })),
            );
            Some(region)
        };
        let (table_offset, table_size) = table.map_or((0, 0), |r| (r.offset, r.len));

        // 3. New prefixes, before any frontend is flagged to enforce them.
        let wanted: BTreeSet<Cidr> = svc.source_ranges.iter().copied().collect();
        for cidr in wanted.difference(&applied.source_ranges) {
            plan.push(
                MapOp::AllowSource {
                    service_id,
                    cidr: *cidr,
                },
                Commit::SourceAllowed(*cidr),
            );
        }

        // 4. Frontends, each swapped to its new value in one update.
        let flags = service_flags(svc);
        for fe in &svc.frontends {
            // On a loopback address: for this host only, never for XDP.
            let host_only = matches!(fe.addr, HostAddr::Ip(ip) if ip.is_loopback());
            let flags = if host_only {
                flags | FE_HOST_ONLY
            } else {
                flags
            };
            let current = applied.frontends.get(fe).map(|slot| slot.value);
            let (frontend_id, generation) = match current {
                Some(value) => (value.frontend_id, value.generation),
                None => {
                    let (id, generation) =
                        frontend_ids.alloc(now).context("no free frontend id")?;
                    plan.push(MapOp::ZeroFrontendStats { id }, Commit::Nothing);
                    plan.push(MapOp::WriteFrontendGen { id, generation }, Commit::Nothing);
                    (id, generation)
                }
            };
            let value = FrontendValue {
                frontend_id,
                generation,
                service_id,
                table_offset,
                table_size,
                flags,
                affinity_timeout_s: svc.affinity_timeout_s.unwrap_or(0),
                _reserved: 0,
            };
            if current == Some(value) {
                continue;
            }
            plan.push(
                MapOp::PublishFrontend {
                    frontend: *fe,
                    value,
                },
                Commit::Frontend {
                    frontend: *fe,
                    value,
                    fresh: current.is_none(),
                },
            );
        }

        // 5. What the service no longer has: frontends, the prefixes no
        // frontend enforces any more, backends, replaced tables.
        for (fe, slot) in &applied.frontends {
            if !svc.frontends.contains(fe) {
                retire_frontend(plan, fe, &slot.value, owners, &svc.key);
            }
        }
        for cidr in applied.source_ranges.difference(&wanted) {
            plan.push(
                MapOp::ForgetSource {
                    service_id,
                    cidr: *cidr,
                },
                Commit::SourceForgotten(*cidr),
            );
        }
        let kept: BTreeSet<SocketAddr> = svc
            .endpoints
            .iter()
            .map(|ep| SocketAddr::new(ep.addr, ep.port))
            .collect();
        for (addr, slot) in &applied.backends {
            if !kept.contains(addr) {
                retire_backend(plan, *addr, slot);
            }
        }
        let replaced = !unchanged && applied.table.is_some();
        if replaced || !applied.stale_tables.is_empty() {
            plan.note(Commit::TablesReleased);
        }
        Ok(())
    }

    /// The plan that takes service `key` out of the maps: its frontends
    /// first, so no packet finds a frontend whose backends are gone, then its
    /// backends, tables, prefixes and id. `None` if no such service is
    /// published.
    pub fn plan_removal(&self, key: &str, owners: &FrontendOwners<'_>) -> Option<Plan> {
        let applied = self.services.get(key)?;
        let steps = 2 * applied.frontends.len() + applied.backends.len();
        let mut plan = Plan::new(key, steps + applied.source_ranges.len() + 3);
        for (fe, slot) in &applied.frontends {
            retire_frontend(&mut plan, fe, &slot.value, owners, key);
        }
        for (addr, slot) in &applied.backends {
            retire_backend(&mut plan, *addr, slot);
        }
        plan.note(Commit::Table(None));
        plan.note(Commit::TablesReleased);
        for cidr in &applied.source_ranges {
            plan.push(
                MapOp::ForgetSource {
                    service_id: applied.service_id,
                    cidr: *cidr,
                },
                Commit::SourceForgotten(*cidr),
            );
        }
        plan.note(Commit::ServiceRemoved);
        Some(plan)
    }

    /// The operations that make `NODE_ADDRS` hold exactly `addrs`: additions
    /// first (a frontend on every node address never misses one that stays).
    pub fn plan_node_addrs(&self, addrs: &BTreeSet<IpAddr>) -> Vec<MapOp> {
        let added = addrs.difference(&self.node_addrs).copied();
        let removed = self.node_addrs.difference(addrs).copied();
        added
            .map(MapOp::AddNodeAddr)
            .chain(removed.map(MapOp::RemoveNodeAddr))
            .collect()
    }
}

/// Unpublishes a frontend (unless another service now owns it, whose update
/// replaces the map entry) and then marks its generation free, which
/// invalidates its conntrack entries. The generation stays (with the free
/// bit), so the id's next one is higher.
fn retire_frontend(
    plan: &mut Plan,
    fe: &Frontend,
    value: &FrontendValue,
    owners: &FrontendOwners<'_>,
    from: &str,
) {
    if owners.get(fe).is_none_or(|owner| *owner == from) {
        plan.push(MapOp::UnpublishFrontend { frontend: *fe }, Commit::Nothing);
    }
    plan.push(
        MapOp::WriteFrontendGen {
            id: value.frontend_id,
            generation: value.generation | FRONTEND_GEN_FREE,
        },
        Commit::FrontendRetired(*fe),
    );
}

/// Marks a backend unused: flows still on it are moved at their next packet.
/// The slot keeps its generation, so the next one given out is higher.
fn retire_backend(plan: &mut Plan, addr: SocketAddr, slot: &BackendSlot) {
    plan.push(
        MapOp::WriteBackend {
            id: slot.id,
            backend: BackendEntry {
                addr,
                state: BACKEND_UNUSED,
                generation: slot.generation,
                service_id: 0,
                reach: Reach::Direct,
            },
        },
        Commit::BackendRetired(addr),
    );
}

#[cfg(test)]
mod tests;
