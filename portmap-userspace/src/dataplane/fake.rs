//! Maps held in memory, for the unit tests of plans and applies (no kernel).
//! They carry out map operations as the BPF maps would and, after each one,
//! check what the datapath relies on while packets flow:
//! - a published frontend's generation is live in `FRONTEND_GEN` (written
//!   before it is published, marked free only after it is unpublished);
//! - every slot of a published frontend's table names a backend in use by
//!   the frontend's service (backends before tables, tables before
//!   frontends, backends released after);
//! - a table is never written under a frontend that reads it;
//! - and, across one change, what holds before and after holds throughout
//!   ([`Expectation`]): a frontend in both stays published, its table names
//!   only backends of either and every backend of both, and a source allowed
//!   (or refused) by both is allowed (or refused) at every step.
//!
//! A violation panics with the operations so far.

use crate::model::Reach;
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    time::Instant,
};

use anyhow::{Result, anyhow};
use portmap_common::abi::{BACKEND_UNUSED, Backend, BackendNat, FE_SOURCE_RANGES, FrontendValue};

use super::{
    Limits,
    adopt::Pinned,
    alloc::Region,
    apply::ApplyReport,
    maps::{frontend_key, ip_of},
    plan::{MapOp, table_members},
    state::Applied,
    writer::MapWriter,
};
use crate::model::{
    DesiredState, Endpoint, EndpointState, Frontend, HostAddr, Placement, Protocol, Service,
    WhenEmpty,
};

/// A pool slot never written.
const UNWRITTEN: u32 = u32::MAX;

/// What must hold at every step of one change, besides the invariants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Expectation {
    /// `frontend` stays published; its table names no backend outside `any`
    /// and every backend of `all`.
    Serves {
        frontend: Frontend,
        any: BTreeSet<SocketAddr>,
        all: BTreeSet<SocketAddr>,
    },
    /// `frontend` lets `source` in (or keeps it out) throughout.
    Source {
        frontend: Frontend,
        source: IpAddr,
        allowed: bool,
    },
}

pub(crate) struct FakeMaps {
    pub frontends: BTreeMap<Frontend, FrontendValue>,
    pub frontend_gen: Vec<u32>,
    pub backends: Vec<Backend>,
    pub backend_nat: Vec<BackendNat>,
    pub pool: Vec<u32>,
    /// (service id, prefix).
    pub source_ranges: BTreeSet<(u32, crate::model::Cidr)>,
    pub node_addrs: BTreeSet<IpAddr>,
    /// Counter slots zeroed: (map, id).
    pub zeroed: Vec<(&'static str, u32)>,
    /// Every operation carried out, in order.
    pub ops: Vec<MapOp>,
    /// The operation (counted over the maps' life, failed ones included)
    /// that fails, changing nothing.
    pub fail_at: Option<usize>,
    attempts: usize,
    pub expect: Vec<Expectation>,
    /// Frontends moving from one service to another in the change under
    /// way: the losing service may retire its generation first.
    pub moving: BTreeSet<Frontend>,
    /// Whether the invariants are checked (off only to time applies).
    pub checked: bool,
}

impl FakeMaps {
    pub fn new(limits: Limits) -> Self {
        Self {
            frontends: BTreeMap::new(),
            frontend_gen: vec![0; limits.frontends as usize],
            backends: vec![Backend::default(); limits.backends as usize],
            backend_nat: vec![BackendNat::default(); limits.backends as usize],
            pool: vec![UNWRITTEN; limits.maglev_slots() as usize],
            source_ranges: BTreeSet::new(),
            node_addrs: BTreeSet::new(),
            zeroed: Vec::new(),
            ops: Vec::new(),
            fail_at: None,
            attempts: 0,
            expect: Vec::new(),
            moving: BTreeSet::new(),
            checked: true,
        }
    }

    /// Operations attempted so far, failed ones included.
    pub fn attempts(&self) -> usize {
        self.attempts
    }

    fn table_of(&self, v: &FrontendValue) -> &[u32] {
        let start = v.table_offset as usize;
        &self.pool[start..start + v.table_size as usize]
    }

    fn backend_addr(&self, id: u32) -> Option<SocketAddr> {
        let b = self.backends.get(id as usize)?;
        Some(SocketAddr::new(
            ip_of(&b.addr, b.family),
            u16::from_be(b.port),
        ))
    }

    /// Whether `frontend` would let `source` in now.
    pub fn allows(&self, frontend: &Frontend, source: IpAddr) -> bool {
        self.frontends.get(frontend).is_some_and(|v| {
            v.flags & FE_SOURCE_RANGES == 0
                || self
                    .source_ranges
                    .iter()
                    .any(|(id, cidr)| *id == v.service_id && cidr.contains(source))
        })
    }

    /// What adoption would read from these maps.
    pub fn pinned(&self) -> Pinned {
        Pinned {
            frontends: self
                .frontends
                .iter()
                .map(|(fe, v)| (frontend_key(fe), *v))
                .collect(),
            backends: self.backends.clone(),
            backend_nat: self.backend_nat.clone(),
            frontend_gen: self.frontend_gen.clone(),
            source_ranges: self.source_ranges.iter().copied().collect(),
            node_addrs: self.node_addrs.iter().copied().collect(),
        }
    }

    pub fn read_table(&self, region: Region) -> Result<Vec<u32>> {
        let start = region.offset as usize;
        Ok(self.pool[start..start + region.len as usize].to_vec())
    }

    fn broken(&self, op: &MapOp, why: String) -> ! {
        panic!(
            "{why}\n  after: {op}\n  operations so far:\n{}",
            listing(&self.ops)
        )
    }

    /// Why the maps now break what the datapath relies on, if they do.
    fn violation(&self) -> Option<String> {
        for (fe, v) in &self.frontends {
            if self.moving.contains(fe) {
                continue;
            }
            let live = self.frontend_gen.get(v.frontend_id as usize);
            if live != Some(&v.generation) {
                return Some(format!(
                    "{fe} is published with generation {} but FRONTEND_GEN[{}] is {live:?}",
                    v.generation, v.frontend_id
                ));
            }
            if v.table_offset as usize + v.table_size as usize > self.pool.len() {
                return Some(format!("{fe} points past the pool"));
            }
            for &id in self.table_of(v) {
                let b = self.backends.get(id as usize);
                if id == UNWRITTEN || b.is_none_or(|b| b.state == BACKEND_UNUSED) {
                    return Some(format!("{fe}'s table names backend {id}, not in use"));
                }
                if b.is_some_and(|b| b.service_id != v.service_id) {
                    return Some(format!(
                        "{fe}'s table names backend {id} of another service"
                    ));
                }
            }
        }
        self.expect.iter().find_map(|e| self.unmet(e))
    }

    fn unmet(&self, expectation: &Expectation) -> Option<String> {
        match expectation {
            Expectation::Serves { frontend, any, all } => {
                let Some(v) = self.frontends.get(frontend) else {
                    return Some(format!("{frontend} is unpublished during the change"));
                };
                let named: BTreeSet<SocketAddr> = self
                    .table_of(v)
                    .iter()
                    .filter_map(|id| self.backend_addr(*id))
                    .collect();
                if !named.is_subset(any) {
                    return Some(format!(
                        "{frontend}'s table names {named:?}, not in {any:?}"
                    ));
                }
                if !all.is_subset(&named) {
                    return Some(format!(
                        "{frontend}'s table lacks some of {all:?}: {named:?}"
                    ));
                }
                None
            }
            Expectation::Source {
                frontend,
                source,
                allowed,
            } => (self.allows(frontend, *source) != *allowed).then(|| {
                let verb = if *allowed { "refuses" } else { "lets in" };
                format!("{frontend} {verb} {source} during the change")
            }),
        }
    }
}

impl MapWriter for FakeMaps {
    fn execute(&mut self, op: &MapOp) -> Result<()> {
        self.attempts += 1;
        if self.fail_at == Some(self.attempts - 1) {
            return Err(anyhow!("injected failure of {op}"));
        }
        match op {
            MapOp::ZeroBackendStats { id } | MapOp::ZeroFrontendStats { id } => {
                self.zeroed.push((op.map(), *id));
            }
            MapOp::WriteBackend { id, backend } => {
                self.backend_nat[*id as usize] = backend.raw_nat();
                self.backends[*id as usize] = backend.raw();
            }
            MapOp::WriteTable { region, slots } => {
                let end = region.offset + region.len;
                let mut read = self.frontends.iter().filter(|_| self.checked);
                let read = read.find(|(_, v)| {
                    v.table_size > 0
                        && v.table_offset < end
                        && region.offset < v.table_offset + v.table_size
                });
                if let Some((fe, _)) = read {
                    self.broken(op, format!("a table is written under {fe}, which reads it"));
                }
                assert_eq!(slots.len(), region.len as usize, "{op}");
                let start = region.offset as usize;
                self.pool[start..start + slots.len()].copy_from_slice(slots);
            }
            MapOp::AllowSource { service_id, cidr } => {
                self.source_ranges.insert((*service_id, *cidr));
            }
            MapOp::ForgetSource { service_id, cidr } => {
                self.source_ranges.remove(&(*service_id, *cidr));
            }
            MapOp::WriteFrontendGen { id, generation } => {
                self.frontend_gen[*id as usize] = *generation;
            }
            MapOp::PublishFrontend { frontend, value } => {
                self.frontends.insert(*frontend, *value);
            }
            MapOp::UnpublishFrontend { frontend } => {
                self.frontends.remove(frontend);
            }
            MapOp::AddNodeAddr(ip) => {
                self.node_addrs.insert(*ip);
            }
            MapOp::RemoveNodeAddr(ip) => {
                self.node_addrs.remove(ip);
            }
        }
        self.ops.push(op.clone());
        if self.checked
            && let Some(why) = self.violation()
        {
            self.broken(op, why);
        }
        Ok(())
    }
}

pub(crate) fn listing(ops: &[MapOp]) -> String {
    ops.iter()
        .map(|o| format!("    {o}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What holds both before and after `before` → `after`, frontend by
/// frontend of the services in both.
pub(crate) fn expectations(before: &DesiredState, after: &DesiredState) -> Vec<Expectation> {
    let mut expect = Vec::new();
    for old in &before.services {
        let Some(new) = after.services.iter().find(|s| s.key == old.key) else {
            continue;
        };
        let (was, will) = (table_members(old), table_members(new));
        for fe in old.frontends.iter().filter(|f| new.frontends.contains(f)) {
            expect.push(Expectation::Serves {
                frontend: *fe,
                any: was.union(&will).copied().collect(),
                all: was.intersection(&will).copied().collect(),
            });
            for source in probes(old, new) {
                let allowed = allows(old, source);
                if allowed == allows(new, source) {
                    expect.push(Expectation::Source {
                        frontend: *fe,
                        source,
                        allowed,
                    });
                }
            }
        }
    }
    expect
}

fn allows(svc: &Service, source: IpAddr) -> bool {
    svc.source_ranges.is_empty() || svc.source_ranges.iter().any(|c| c.contains(source))
}

/// Sources to try: one in each prefix of either, and some in none.
fn probes(old: &Service, new: &Service) -> Vec<IpAddr> {
    let inside = old.source_ranges.iter().chain(&new.source_ranges);
    let outside = ["192.0.2.77", "203.0.113.200", "2001:db8:ffff::7"];
    inside
        .map(|c| c.addr)
        .chain(outside.iter().map(|a| a.parse().expect("an address")))
        .collect()
}

/// A record and in-memory maps, applied together, at a time the test moves.
pub(crate) struct Lab {
    pub applied: Applied,
    pub maps: FakeMaps,
    pub now: Instant,
}

pub(crate) const LIMITS: Limits = Limits {
    frontends: 64,
    backends: 64,
    conntrack: 1024,
};

impl Lab {
    pub fn new() -> Self {
        Self::with_limits(LIMITS)
    }

    pub fn with_limits(limits: Limits) -> Self {
        Self {
            applied: Applied::new(limits, limits.maglev_slots()),
            maps: FakeMaps::new(limits),
            now: Instant::now(),
        }
    }

    /// Applies `desired` (which must be consistent), checking the invariants
    /// after every operation.
    pub fn apply(&mut self, desired: &DesiredState) -> ApplyReport {
        self.applied
            .apply(desired, &mut self.maps, self.now)
            .expect("a consistent desired state")
    }

    /// Applies `after` on the state `before` left, checking also what holds
    /// across the change, and returns the operations it took. Both applies
    /// must be complete.
    pub fn change(&mut self, before: &DesiredState, after: &DesiredState) -> Vec<MapOp> {
        let report = self.apply(before);
        assert!(report.is_complete(), "before: {:?}", report.failed);
        self.maps.expect = expectations(before, after);
        let from = self.maps.ops.len();
        let report = self.apply(after);
        assert!(report.is_complete(), "after: {:?}", report.failed);
        self.maps.expect.clear();
        self.maps.ops[from..].to_vec()
    }
}

/// The operations of `before` → `after` on a fresh lab: the plans of the
/// services that changed, in the order the writer carried them out.
pub(crate) fn ops_between(before: &DesiredState, after: &DesiredState) -> Vec<MapOp> {
    Lab::new().change(before, after)
}

// Builders of desired states, for the tests.

pub(crate) fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

pub(crate) fn frontend(addr: &str, port: u16) -> Frontend {
    Frontend {
        addr: HostAddr::Ip(ip(addr)),
        port,
        proto: Protocol::Tcp,
    }
}

pub(crate) fn endpoint(addr: &str, state: EndpointState) -> Endpoint {
    Endpoint {
        addr: ip(addr),
        port: 3000,
        state,
        placement: Placement::Unknown,
        reach: Reach::Direct,
    }
}

pub(crate) fn ready(addr: &str) -> Endpoint {
    endpoint(addr, EndpointState::Ready)
}

/// A LoadBalancer-like service `key` on `frontends`.
pub(crate) fn service(key: &str, frontends: &[Frontend], endpoints: &[Endpoint]) -> Service {
    Service {
        key: key.into(),
        name: "default/web".into(),
        port_name: "http".into(),
        container: String::new(),
        frontends: frontends.to_vec(),
        endpoints: endpoints.to_vec(),
        affinity_timeout_s: None,
        when_empty: WhenEmpty::Reject,
        source_ranges: Vec::new(),
    }
}

pub(crate) fn state(services: Vec<Service>) -> DesiredState {
    DesiredState { services }
}

/// One service, `web`, on 198.18.0.1:80 with one backend.
pub(crate) fn one_service() -> DesiredState {
    state(vec![service(
        "web",
        &[frontend("198.18.0.1", 80)],
        &[ready("198.19.0.2")],
    )])
}
