//! The writer: carries out a plan's map operations on the BPF maps, one
//! operation one map update, in the order given. It decides nothing; the
//! order that keeps packets safe is the plan's.

use anyhow::{Context as _, Result};
use aya::maps::{MapError, lpm_trie::Key};
use portmap_common::abi::{
    Backend, BackendNat, NAT_DSR, NAT_LOCAL, NAT_SNAT, SOURCE_RANGE_KEY_BITS, SourceRangeKey,
};

use super::{
    maps::{Maps, family_of, frontend_key, node_addr_key, raw_addr, zero_counters},
    plan::{BackendEntry, MapOp},
};
use crate::model::{Cidr, Reach};

/// Something that carries out map operations: the BPF maps, or in unit tests
/// maps held in memory.
pub(crate) trait MapWriter {
    fn execute(&mut self, op: &MapOp) -> Result<()>;
}

impl BackendEntry {
    /// The entry as the dataplane reads it.
    pub fn raw(&self) -> Backend {
        Backend {
            addr: raw_addr(self.addr.ip()),
            port: self.addr.port().to_be(),
            family: family_of(self.addr.ip()),
            state: self.state,
            generation: self.generation,
            service_id: self.service_id,
        }
    }

    /// Its `BACKEND_NAT` entry.
    pub fn raw_nat(&self) -> BackendNat {
        match self.reach {
            Reach::Snat(addr) => BackendNat {
                snat_addr: raw_addr(addr),
                mode: NAT_SNAT,
                _pad: [0; 3],
            },
            Reach::Dsr => BackendNat {
                mode: NAT_DSR,
                ..BackendNat::default()
            },
            Reach::Direct => BackendNat {
                mode: NAT_LOCAL,
                ..BackendNat::default()
            },
        }
    }
}

/// The `SOURCE_RANGES` key of a service's allowed prefix.
pub(crate) fn source_range_key(service_id: u32, cidr: &Cidr) -> Key<SourceRangeKey> {
    Key::new(
        SOURCE_RANGE_KEY_BITS + u32::from(cidr.prefix),
        SourceRangeKey {
            service_id_be: service_id.to_be(),
            family: family_of(cidr.addr),
            _pad: [0; 3],
            addr: raw_addr(cidr.addr),
        },
    )
}

/// A removal that found nothing to remove did what it was asked.
fn absent_is_fine(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}

impl MapWriter for Maps {
    fn execute(&mut self, op: &MapOp) -> Result<()> {
        match op {
            MapOp::ZeroBackendStats { id } => zero_counters(&mut self.backend_stats, *id),
            MapOp::WriteBackend { id, backend } => {
                // How flows reach the backend is in place before the entry
                // that makes it usable.
                self.backend_nat
                    .set(*id, backend.raw_nat(), 0)
                    .with_context(|| format!("writing backend {id}'s NAT ({})", backend.addr))?;
                self.backends
                    .set(*id, backend.raw(), 0)
                    .with_context(|| format!("writing backend {id} ({})", backend.addr))
            }
            MapOp::WriteTable { region, slots } => self.maglev.write(region.offset, slots),
            MapOp::AllowSource { service_id, cidr } => self
                .source_ranges
                .insert(&source_range_key(*service_id, cidr), 1, 0)
                .with_context(|| format!("allowing source {cidr}")),
            MapOp::ZeroFrontendStats { id } => zero_counters(&mut self.frontend_stats, *id),
            MapOp::WriteFrontendGen { id, generation } => self
                .frontend_gen
                .set(*id, generation, 0)
                .context("writing FRONTEND_GEN"),
            MapOp::PublishFrontend { frontend, value } => self
                .frontends
                .insert(frontend_key(frontend), value, 0)
                .with_context(|| format!("publishing frontend {frontend}")),
            MapOp::UnpublishFrontend { frontend } => {
                absent_is_fine(self.frontends.remove(&frontend_key(frontend)))
                    .with_context(|| format!("unpublishing frontend {frontend}"))
            }
            MapOp::ForgetSource { service_id, cidr } => absent_is_fine(
                self.source_ranges
                    .remove(&source_range_key(*service_id, cidr)),
            )
            .with_context(|| format!("removing source {cidr}")),
            MapOp::AddNodeAddr(ip) => self
                .node_addrs
                .insert(node_addr_key(*ip), 1, 0)
                .with_context(|| format!("adding node address {ip}")),
            MapOp::RemoveNodeAddr(ip) => {
                absent_is_fine(self.node_addrs.remove(&node_addr_key(*ip)))
                    .with_context(|| format!("removing node address {ip}"))
            }
        }
    }
}

#[cfg(test)]
mod tests;
