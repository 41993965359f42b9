//! Reconciling the maps with a [`DesiredState`]: which services changed, a
//! check that each fits before anything of it is written, its plan (see
//! `plan`, which documents the make-before-break order), and a writer that
//! carries the plan out one map operation at a time, the record following
//! each operation done. Everything but the writer is pure, so the unit tests
//! (`plan::tests`, `apply::tests`) run it against maps held in memory.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    time::Instant,
};

use anyhow::Result;

use super::{
    Dataplane,
    plan::{MapOp, Plan, table_members},
    state::Applied,
    writer::MapWriter,
};
use crate::{
    maglev,
    model::{DesiredState, FrontendOwners, Service},
};

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

/// What an apply could not do. Each failed service keeps what it had before
/// (or stays unpublished); the others are applied.
#[derive(Debug, Default)]
pub struct ApplyReport {
    /// (service key, why), e.g. a map that is full.
    pub failed: Vec<(String, String)>,
    /// The failed services refused for lack of room, with what is full
    /// (`backends`, `Maglev table slots`, ...).
    pub full: BTreeMap<String, &'static str>,
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
        self.applied.apply(desired, &mut self.maps, Instant::now())
    }

    /// Makes `NODE_ADDRS` hold exactly `addrs` (for frontends published on
    /// every node address). Returns the addresses added and removed.
    pub fn set_node_addrs(
        &mut self,
        addrs: &BTreeSet<IpAddr>,
    ) -> Result<(Vec<IpAddr>, Vec<IpAddr>)> {
        self.applied.set_node_addrs(addrs, &mut self.maps)
    }
}

impl Applied {
    /// [`Dataplane::apply`], with the maps' writer and the time given.
    pub fn apply(
        &mut self,
        desired: &DesiredState,
        maps: &mut impl MapWriter,
        now: Instant,
    ) -> Result<ApplyReport> {
        let owners = desired.frontend_owners()?;
        self.claim_adopted(desired);
        let (changed, gone) = self.differences(desired);
        let mut report = ApplyReport::default();
        for (svc, _) in desired.services.iter().zip(changed).filter(|(_, c)| *c) {
            let result = self
                .check_capacity(svc, now)
                .and_then(|()| self.update(svc, &owners, maps, now));
            if let Err(e) = result {
                if let Some(CapacityError::Full { what, .. }) = e.downcast_ref() {
                    report.full.insert(svc.key.clone(), what);
                }
                report.failed.push((svc.key.clone(), format!("{e:#}")));
            }
        }
        for key in gone {
            let Some(plan) = self.plan_removal(&key, &owners) else {
                continue;
            };
            if let Err(e) = self.carry_out(plan, maps, now) {
                report.failed.push((key, format!("removing: {e:#}")));
            }
        }
        Ok(report)
    }

    /// Plans `svc` and carries the plan out; the record says whether the
    /// maps now publish `svc` in full.
    fn update(
        &mut self,
        svc: &Service,
        owners: &FrontendOwners<'_>,
        maps: &mut impl MapWriter,
        now: Instant,
    ) -> Result<()> {
        let result = self
            .plan_update(svc, owners, now)
            .and_then(|plan| self.carry_out(plan, maps, now));
        if let Some(applied) = self.services.get_mut(&svc.key) {
            applied.in_sync_with = result.is_ok().then(|| svc.clone());
        }
        result
    }

    /// Carries out `plan` in order, recording each step once its operation is
    /// done. At the first failure the rest is abandoned: the record keeps
    /// what was written, which the next apply completes.
    pub fn carry_out(&mut self, plan: Plan, maps: &mut impl MapWriter, now: Instant) -> Result<()> {
        let mut steps = plan.steps.into_iter();
        while let Some(step) = steps.next() {
            if let Some(op) = &step.op
                && let Err(e) = maps.execute(op)
            {
                self.abandon(std::iter::once(step).chain(steps), now);
                return Err(e);
            }
            self.commit(&plan.key, step.commit, now);
        }
        Ok(())
    }

    fn set_node_addrs(
        &mut self,
        addrs: &BTreeSet<IpAddr>,
        maps: &mut impl MapWriter,
    ) -> Result<(Vec<IpAddr>, Vec<IpAddr>)> {
        let (mut added, mut removed) = (Vec::new(), Vec::new());
        for op in self.plan_node_addrs(addrs) {
            maps.execute(&op)?;
            match op {
                MapOp::AddNodeAddr(ip) => {
                    self.node_addrs.insert(ip);
                    added.push(ip);
                }
                MapOp::RemoveNodeAddr(ip) => {
                    self.node_addrs.remove(&ip);
                    removed.push(ip);
                }
                _ => {}
            }
        }
        Ok((added, removed))
    }

    /// Which desired services differ from what the maps publish (by position
    /// in `desired`), and which applied services are no longer desired. One
    /// walk of both in key order, with no lookup per service: changing one
    /// Service among 10,000 must cost about one Service's work.
    pub fn differences(&self, desired: &DesiredState) -> (Vec<bool>, Vec<String>) {
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

    /// Checks that the maps have room for what `svc` adds to what it has, so
    /// a service that does not fit is refused before its first write.
    pub fn check_capacity(&mut self, svc: &Service, now: Instant) -> Result<()> {
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
}

#[cfg(test)]
mod tests;
