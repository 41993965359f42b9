//! Reconciling the maps with a [`DesiredState`].
//!
//! The order of writes is what keeps the dataplane consistent while packets
//! flow: new backends are written before any table names them, a new table is
//! written into a free region before a frontend points at it, frontends are
//! swapped to it with one atomic hash-map update each, and only then are removed
//! frontends, backends and old tables released (tables and ids after a grace
//! period). Source ranges follow the same rule: new prefixes go in before a
//! frontend's flag enforces them, and prefixes leave only after the frontends
//! stopped needing them (a service whose ranges shrink to none is not left
//! "restricted" with nothing allowed). Capacity is checked before the first
//! write, so an apply that cannot fit changes nothing. The unit tests in
//! `tests::apply_order` check this order against a journal of the writes.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
    time::Instant,
};

use anyhow::{Context as _, Result};
use portmap_common::abi::{
    BACKEND_ACTIVE, BACKEND_TERMINATING, BACKEND_UNUSED, Backend, FE_AFFINITY_CLIENT_IP,
    FE_DROP_NO_BACKENDS, FE_HOST_ONLY, FE_REJECT_NO_BACKENDS, FE_SOURCE_RANGES, FRONTEND_GEN_FREE,
    FrontendValue, SOURCE_RANGE_KEY_BITS, SourceRangeKey,
};

use super::{
    Dataplane,
    alloc::Region,
    journal::Op,
    maps::{family_of, frontend_key, names, raw_addr, zero_counters},
};
use crate::{
    maglev::{self, MaglevBackend},
    model::{Cidr, DesiredState, EndpointState, Frontend, HostAddr, Service, WhenEmpty},
};

/// What the dataplane holds for one service.
#[derive(Debug)]
pub(crate) struct AppliedService {
    pub service_id: u32,
    pub name: String,
    pub port_name: String,
    pub frontends: BTreeMap<Frontend, FrontendSlot>,
    pub backends: BTreeMap<SocketAddr, BackendSlot>,
    pub table: Option<AppliedTable>,
    /// Prefixes in `SOURCE_RANGES` for this service.
    pub source_ranges: BTreeSet<Cidr>,
    /// The desired service the maps were last made to publish in full; an
    /// apply skips a service equal to it, so changing one service among
    /// thousands costs one service's work.
    pub in_sync_with: Option<Service>,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct FrontendSlot {
    pub value: FrontendValue,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct BackendSlot {
    pub id: u32,
    pub generation: u32,
    pub state: EndpointState,
}

#[derive(Clone, Debug)]
pub(crate) struct AppliedTable {
    pub region: Region,
    /// The backends the table was built from.
    pub members: BTreeSet<SocketAddr>,
}

/// Why an apply was refused before it changed anything.
#[derive(Debug, thiserror::Error)]
pub enum CapacityError {
    #[error("{what}: {needed} more needed but {available} free of {capacity}; raise {flag}")]
    Full {
        what: &'static str,
        needed: u32,
        available: u32,
        capacity: u32,
        flag: &'static str,
    },
}

/// The `SOURCE_RANGES` key of a service's allowed prefix.
fn source_range_key(service_id: u32, cidr: &Cidr) -> aya::maps::lpm_trie::Key<SourceRangeKey> {
    aya::maps::lpm_trie::Key::new(
        SOURCE_RANGE_KEY_BITS + u32::from(cidr.prefix),
        SourceRangeKey {
            service_id_be: service_id.to_be(),
            family: family_of(cidr.addr),
            _pad: [0; 3],
            addr: raw_addr(cidr.addr),
        },
    )
}

/// The endpoints that take new flows: the ready ones, or, when none is ready,
/// the terminating ones that still serve (KEP-1669).
fn table_members(svc: &Service) -> BTreeSet<SocketAddr> {
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

/// What an apply could not do. Each failed service keeps what it had before
/// (or stays unpublished); the others are applied.
#[derive(Debug, Default)]
pub struct ApplyReport {
    /// (service key, why), e.g. a map that is full.
    pub failed: Vec<(String, String)>,
}

impl ApplyReport {
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty()
    }
}

impl Dataplane {
    /// Makes the maps publish `desired`. An inconsistent desired state (the
    /// same frontend twice, mixed families) is refused whole; a service that
    /// does not fit (full map, failed write) is an error for that service only.
    pub fn apply(&mut self, desired: &DesiredState) -> Result<ApplyReport> {
        let owners = desired.frontend_owners()?;
        self.claim_adopted(desired);
        let now = Instant::now();
        let (changed, gone) = self.differences(desired);
        let mut report = ApplyReport::default();
        for (svc, _) in desired.services.iter().zip(changed).filter(|(_, c)| *c) {
            let result = self
                .check_capacity(svc, now)
                .and_then(|()| self.apply_service(svc, &owners, now));
            if let Err(e) = result {
                report.failed.push((svc.key.clone(), format!("{e:#}")));
            }
        }
        for key in gone {
            if let Err(e) = self.remove_service(&key, &owners, now) {
                report.failed.push((key, format!("removing: {e:#}")));
            }
        }
        Ok(report)
    }

    /// Which desired services differ from what the maps publish (by position
    /// in `desired`), and which applied services are no longer desired. One
    /// walk of both in key order, with no lookup per service: changing one
    /// Service among 10,000 must cost about one Service's work.
    fn differences(&self, desired: &DesiredState) -> (Vec<bool>, Vec<String>) {
        let mut by_key: Vec<usize> = (0..desired.services.len()).collect();
        // Stable and linear on the usual already-sorted input.
        by_key.sort_by(|&a, &b| desired.services[a].key.cmp(&desired.services[b].key));
        let mut changed = vec![false; desired.services.len()];
        let mut gone = Vec::new();
        let mut applied = self.services.iter().peekable();
        for i in by_key {
            let svc = &desired.services[i];
            while let Some((key, _)) = applied.next_if(|(key, _)| **key < svc.key) {
                gone.push(key.clone());
            }
            changed[i] = match applied.next_if(|(key, _)| **key == svc.key) {
                Some((_, current)) => current.in_sync_with.as_ref() != Some(svc),
                None => true,
            };
        }
        gone.extend(applied.map(|(key, _)| key.clone()));
        (changed, gone)
    }

    /// Checks that the maps have room for what `svc` adds to what it has.
    fn check_capacity(&mut self, svc: &Service, now: Instant) -> Result<()> {
        let cur = self.services.get(&svc.key);
        let services = u32::from(cur.is_none());
        let frontends = svc
            .frontends
            .iter()
            .filter(|f| cur.is_none_or(|c| !c.frontends.contains_key(f)))
            .count() as u32;
        let backends = svc
            .endpoints
            .iter()
            .filter(|ep| {
                cur.is_none_or(|c| !c.backends.contains_key(&SocketAddr::new(ep.addr, ep.port)))
            })
            .count() as u32;
        let members = table_members(svc);
        let in_use = cur.and_then(|c| c.table.as_ref());
        let size = maglev::table_size(members.len(), in_use.map(|t| t.region.len));
        let unchanged = in_use.is_some_and(|t| t.region.len == size && t.members == members);
        let checks = [
            (
                "services",
                services,
                &mut self.service_ids,
                "--max-frontends",
            ),
            (
                "frontends",
                frontends,
                &mut self.frontend_ids,
                "--max-frontends",
            ),
            (
                "backends",
                backends,
                &mut self.backend_ids,
                "--max-backends",
            ),
        ];
        for (what, needed, ids, flag) in checks {
            let available = ids.available(now);
            if needed > available {
                return Err(CapacityError::Full {
                    what,
                    needed,
                    available,
                    capacity: ids.capacity(),
                    flag,
                }
                .into());
            }
        }
        if size > 0 && !unchanged && !self.regions.can_fit(&[size], now) {
            return Err(CapacityError::Full {
                what: "Maglev table slots",
                needed: size,
                available: self.regions.capacity() - self.regions.in_use(),
                capacity: self.regions.capacity(),
                flag: "--max-backends",
            }
            .into());
        }
        Ok(())
    }

    fn apply_service(
        &mut self,
        svc: &Service,
        owners: &HashMap<Frontend, &str>,
        now: Instant,
    ) -> Result<()> {
        if !self.services.contains_key(&svc.key) {
            let (service_id, _) = self.service_ids.alloc(now).context("no free service id")?;
            self.services.insert(
                svc.key.clone(),
                AppliedService {
                    service_id,
                    name: svc.name.clone(),
                    port_name: svc.port_name.clone(),
                    frontends: BTreeMap::new(),
                    backends: BTreeMap::new(),
                    table: None,
                    source_ranges: BTreeSet::new(),
                    in_sync_with: None,
                },
            );
        }
        let mut applied = self.services.remove(&svc.key).expect("inserted above");
        let result = self.update_service(&mut applied, svc, owners, now);
        applied.in_sync_with = result.is_ok().then(|| svc.clone());
        // Whatever happened, the record matches what was written.
        self.services.insert(svc.key.clone(), applied);
        result
    }

    fn update_service(
        &mut self,
        applied: &mut AppliedService,
        svc: &Service,
        owners: &HashMap<Frontend, &str>,
        now: Instant,
    ) -> Result<()> {
        applied.name.clone_from(&svc.name);
        applied.port_name.clone_from(&svc.port_name);

        // 1. Backends: new ones written before any table can name them.
        for ep in &svc.endpoints {
            let addr = SocketAddr::new(ep.addr, ep.port);
            match applied.backends.get_mut(&addr) {
                Some(slot) if slot.state == ep.state => {}
                Some(slot) => {
                    slot.state = ep.state;
                    let state = backend_state(ep.state);
                    let (id, generation) = (slot.id, slot.generation);
                    self.write_backend(id, addr, state, generation, applied.service_id)?;
                }
                None => {
                    let (id, generation) =
                        self.backend_ids.alloc(now).context("no free backend id")?;
                    zero_counters(&mut self.maps.backend_stats, id)?;
                    self.journal
                        .note(names::BACKEND_STATS, Op::Write, || id.to_string());
                    let state = backend_state(ep.state);
                    self.write_backend(id, addr, state, generation, applied.service_id)?;
                    applied.backends.insert(
                        addr,
                        BackendSlot {
                            id,
                            generation,
                            state: ep.state,
                        },
                    );
                }
            }
        }

        // 2. The table, built aside when its members or size change.
        let members = table_members(svc);
        let size = maglev::table_size(members.len(), applied.table.as_ref().map(|t| t.region.len));
        let unchanged = applied
            .table
            .as_ref()
            .is_some_and(|t| t.region.len == size && t.members == members);
        let mut retired_table = None;
        if !unchanged {
            let new_table = if size == 0 {
                None
            } else {
                let backends: Vec<MaglevBackend> = members
                    .iter()
                    .map(|addr| MaglevBackend {
                        addr: *addr,
                        id: applied.backends[addr].id,
                    })
                    .collect();
                let table = maglev::build_table(&backends, size);
                let region = self
                    .regions
                    .alloc(size, now)
                    .context("no room in the Maglev pool")?;
                self.maps.maglev.write(region.offset, &table)?;
                self.journal.note(names::MAGLEV, Op::Write, || {
                    format!("{}+{}", region.offset, region.len)
                });
                Some(AppliedTable { region, members })
            };
            retired_table = std::mem::replace(&mut applied.table, new_table);
        }

        // 3. Frontends, each swapped to the new table in one update.
        let (table_offset, table_size) = applied
            .table
            .as_ref()
            .map_or((0, 0), |t| (t.region.offset, t.region.len));
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
        // New prefixes before any frontend is flagged to enforce them.
        self.allow_source_ranges(applied, &svc.source_ranges)?;
        for fe in &svc.frontends {
            // On a loopback address: for this host only, never for XDP.
            let host_only = matches!(fe.addr, HostAddr::Ip(ip) if ip.is_loopback());
            let flags = if host_only {
                flags | FE_HOST_ONLY
            } else {
                flags
            };
            let (frontend_id, generation) = match applied.frontends.get(fe) {
                Some(slot) => (slot.value.frontend_id, slot.value.generation),
                None => {
                    let (id, generation) = self
                        .frontend_ids
                        .alloc(now)
                        .context("no free frontend id")?;
                    zero_counters(&mut self.maps.frontend_stats, id)?;
                    self.journal
                        .note(names::FRONTEND_STATS, Op::Write, || id.to_string());
                    self.maps
                        .frontend_gen
                        .set(id, generation, 0)
                        .context("writing FRONTEND_GEN")?;
                    self.journal
                        .note(names::FRONTEND_GEN, Op::Write, || id.to_string());
                    (id, generation)
                }
            };
            let value = FrontendValue {
                frontend_id,
                generation,
                service_id: applied.service_id,
                table_offset,
                table_size,
                flags,
                affinity_timeout_s: svc.affinity_timeout_s.unwrap_or(0),
                _reserved: 0,
            };
            if applied
                .frontends
                .get(fe)
                .is_some_and(|slot| slot.value == value)
            {
                continue;
            }
            // Recorded before the write, so a failed write is retried by the next apply.
            applied.frontends.insert(*fe, FrontendSlot { value });
            self.maps
                .frontends
                .insert(frontend_key(fe), value, 0)
                .with_context(|| format!("publishing frontend {fe}"))?;
            self.journal
                .note(names::FRONTENDS, Op::Write, || fe.to_string());
        }

        // 4. Release what the service no longer has: frontends, the
        // prefixes no frontend enforces any more, backends, the old table.
        let dropped: Vec<Frontend> = applied
            .frontends
            .keys()
            .filter(|f| !svc.frontends.contains(f))
            .copied()
            .collect();
        for fe in dropped {
            let slot = applied.frontends.remove(&fe).expect("listed above");
            self.retire_frontend(&fe, slot, owners, &svc.key, now)?;
        }
        self.forget_source_ranges(applied, &svc.source_ranges)?;
        let kept: BTreeSet<SocketAddr> = svc
            .endpoints
            .iter()
            .map(|ep| SocketAddr::new(ep.addr, ep.port))
            .collect();
        let gone: Vec<SocketAddr> = applied
            .backends
            .keys()
            .filter(|a| !kept.contains(a))
            .copied()
            .collect();
        for addr in gone {
            let slot = applied.backends.remove(&addr).expect("listed above");
            self.retire_backend(addr, slot, now)?;
        }
        if let Some(old) = retired_table {
            self.regions.free(old.region, now);
        }
        Ok(())
    }

    fn remove_service(
        &mut self,
        key: &str,
        owners: &HashMap<Frontend, &str>,
        now: Instant,
    ) -> Result<()> {
        let Some(mut applied) = self.services.remove(key) else {
            return Ok(());
        };
        while let Some((fe, slot)) = applied.frontends.pop_first() {
            if let Err(e) = self.retire_frontend(&fe, slot, owners, key, now) {
                self.services.insert(key.to_string(), applied);
                return Err(e);
            }
        }
        while let Some((addr, slot)) = applied.backends.pop_first() {
            if let Err(e) = self.retire_backend(addr, slot, now) {
                self.services.insert(key.to_string(), applied);
                return Err(e);
            }
        }
        if let Some(table) = applied.table.take() {
            self.regions.free(table.region, now);
        }
        if let Err(e) = self.forget_source_ranges(&mut applied, &[]) {
            self.services.insert(key.to_string(), applied);
            return Err(e);
        }
        self.service_ids.free(applied.service_id, now);
        Ok(())
    }

    /// Unpublishes a frontend (unless another service now owns it, whose
    /// update replaced the map entry) and invalidates its conntrack entries.
    fn retire_frontend(
        &mut self,
        fe: &Frontend,
        slot: FrontendSlot,
        owners: &HashMap<Frontend, &str>,
        from: &str,
        now: Instant,
    ) -> Result<()> {
        if owners.get(fe).is_none_or(|owner| *owner == from) {
            match self.maps.frontends.remove(&frontend_key(fe)) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(e).with_context(|| format!("unpublishing frontend {fe}")),
            }
            self.journal
                .note(names::FRONTENDS, Op::Remove, || fe.to_string());
        }
        // The generation stays (with the free bit), so the id's next one is higher.
        let retired = slot.value.generation | FRONTEND_GEN_FREE;
        self.maps
            .frontend_gen
            .set(slot.value.frontend_id, retired, 0)
            .context("clearing FRONTEND_GEN")?;
        self.journal.note(names::FRONTEND_GEN, Op::Write, || {
            format!("{} (free)", slot.value.frontend_id)
        });
        self.frontend_ids.free(slot.value.frontend_id, now);
        Ok(())
    }

    /// Marks a backend unused: flows still on it are moved at their next packet.
    /// The slot keeps its generation, so the next one given out is higher.
    fn retire_backend(&mut self, addr: SocketAddr, slot: BackendSlot, now: Instant) -> Result<()> {
        self.write_backend(slot.id, addr, BACKEND_UNUSED, slot.generation, 0)?;
        self.backend_ids.free(slot.id, now);
        Ok(())
    }

    fn write_backend(
        &mut self,
        id: u32,
        addr: SocketAddr,
        state: u8,
        generation: u32,
        service_id: u32,
    ) -> Result<()> {
        let backend = Backend {
            addr: raw_addr(addr.ip()),
            port: addr.port().to_be(),
            family: family_of(addr.ip()),
            state,
            generation,
            service_id,
        };
        self.maps
            .backends
            .set(id, backend, 0)
            .with_context(|| format!("writing backend {id} ({addr})"))?;
        self.journal.note(names::BACKENDS, Op::Write, || {
            format!("{id} {addr} state {state}")
        });
        Ok(())
    }

    /// Adds the prefixes of `ranges` that `SOURCE_RANGES` lacks for the
    /// service. Runs before the frontends are written: a flag that starts to
    /// restrict finds its prefixes already there.
    fn allow_source_ranges(&mut self, applied: &mut AppliedService, ranges: &[Cidr]) -> Result<()> {
        let wanted: BTreeSet<Cidr> = ranges.iter().copied().collect();
        for cidr in wanted.difference(&applied.source_ranges) {
            self.maps
                .source_ranges
                .insert(&source_range_key(applied.service_id, cidr), 1, 0)
                .with_context(|| format!("allowing source {cidr}"))?;
            self.journal
                .note(names::SOURCE_RANGES, Op::Write, || cidr.to_string());
        }
        applied.source_ranges.extend(wanted);
        Ok(())
    }

    /// Removes the service's prefixes that are not in `ranges`. Runs after the
    /// frontends are written: until a frontend stops restricting, every
    /// prefix it allowed still allows, so a source that stays allowed (or
    /// becomes unrestricted) is never dropped.
    fn forget_source_ranges(
        &mut self,
        applied: &mut AppliedService,
        ranges: &[Cidr],
    ) -> Result<()> {
        let wanted: BTreeSet<Cidr> = ranges.iter().copied().collect();
        let stale: Vec<Cidr> = applied.source_ranges.difference(&wanted).copied().collect();
        for cidr in stale {
            match self
                .maps
                .source_ranges
                .remove(&source_range_key(applied.service_id, &cidr))
            {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(e).with_context(|| format!("removing source {cidr}")),
            }
            self.journal
                .note(names::SOURCE_RANGES, Op::Remove, || cidr.to_string());
            applied.source_ranges.remove(&cidr);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
