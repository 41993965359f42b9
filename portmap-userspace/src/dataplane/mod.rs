//! The userspace side of the dataplane: loads the eBPF object, owns its maps,
//! and keeps them equal to a desired state.

mod alloc;
mod apply;
mod attach;
mod gc;
pub mod maps;
mod stats;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf, EbpfLoader,
    programs::{SchedClassifier, Xdp},
};
use portmap_common::abi::{DatapathConfig, MAGLEV_BLOCK_SLOTS};

use self::{
    alloc::{IdAllocator, RegionAllocator},
    apply::AppliedService,
    maps::{Maps, names, node_addr_key},
};
pub use self::{
    apply::CapacityError,
    attach::XdpMode,
    gc::GcReport,
    stats::{BackendStats, Counters, FrontendStats, MapUsage, ServiceStats, Snapshot},
};

/// Capacity of `NODE_ADDRS`, as declared in the eBPF object.
const NODE_ADDRS_CAPACITY: u64 = 1024;

/// Names of the programs in the eBPF object.
pub const INGRESS_PROGRAM: &str = "portmap_ingress";
pub const EGRESS_PROGRAM: &str = "portmap_egress";

/// Map sizes, from the daemon's flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub frontends: u32,
    pub backends: u32,
    pub conntrack: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            frontends: 16_384,
            backends: 16_384,
            conntrack: 262_144,
        }
    }
}

impl Limits {
    /// Maglev pool slots: tables hold 100 to 300 slots per backend, and a
    /// changed table is built beside the one it replaces.
    pub fn maglev_slots(&self) -> u32 {
        self.backends.saturating_mul(400).max(4 * 1024)
    }
}

/// The compiled eBPF object, built by this crate's build script.
pub fn ebpf_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portmap"))
}

/// The benchmark's eBPF object: `bench_pass`, `bench_loadgen`, `bench_sink`.
pub fn bench_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portmap-bench"))
}

pub struct Dataplane {
    ebpf: Ebpf,
    maps: Maps,
    config: DatapathConfig,
    service_ids: IdAllocator,
    frontend_ids: IdAllocator,
    backend_ids: IdAllocator,
    regions: RegionAllocator,
    services: BTreeMap<String, AppliedService>,
    node_addrs: BTreeSet<IpAddr>,
    limits: Limits,
    /// Entries seen by the last conntrack walk (the map has no cheap count).
    conntrack_entries: Option<u64>,
}

impl Dataplane {
    /// Loads and verifies the programs and creates the maps, attaching nothing.
    pub fn load(limits: Limits, config: DatapathConfig) -> Result<Self> {
        let maglev_blocks = limits.maglev_slots().div_ceil(MAGLEV_BLOCK_SLOTS);
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(names::FRONTENDS, limits.frontends)
            .map_max_entries(names::FRONTEND_GEN, limits.frontends)
            .map_max_entries(names::FRONTEND_STATS, limits.frontends)
            .map_max_entries(names::BACKENDS, limits.backends)
            .map_max_entries(names::BACKEND_STATS, limits.backends)
            .map_max_entries(names::MAGLEV, maglev_blocks)
            .map_max_entries(names::CONNTRACK, limits.conntrack)
            .load(ebpf_object())
            .context("loading the eBPF object")?;
        for (name, program) in ebpf.programs_mut() {
            match program {
                aya::programs::Program::Xdp(p) => Xdp::load(p),
                aya::programs::Program::SchedClassifier(p) => SchedClassifier::load(p),
                other => anyhow::bail!("unexpected program {name}: {other:?}"),
            }
            .with_context(|| format!("loading program {name} (the verifier's log follows)"))?;
        }
        let mut maps = Maps::take(&mut ebpf)?;
        maps.config
            .set(0, config, 0)
            .context("writing the datapath config")?;
        let regions = RegionAllocator::new(maps.maglev.slots());
        Ok(Self {
            ebpf,
            maps,
            config,
            service_ids: IdAllocator::new(limits.frontends),
            frontend_ids: IdAllocator::new(limits.frontends),
            backend_ids: IdAllocator::new(limits.backends),
            regions,
            services: BTreeMap::new(),
            node_addrs: BTreeSet::new(),
            limits,
            conntrack_entries: None,
        })
    }

    /// The loaded object, for attaching its programs or running them in tests.
    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    pub fn config(&self) -> &DatapathConfig {
        &self.config
    }

    /// Makes `NODE_ADDRS` hold exactly `addrs` (for frontends published on
    /// every node address). Returns the addresses added and removed.
    pub fn set_node_addrs(
        &mut self,
        addrs: &BTreeSet<IpAddr>,
    ) -> Result<(Vec<IpAddr>, Vec<IpAddr>)> {
        let added: Vec<IpAddr> = addrs.difference(&self.node_addrs).copied().collect();
        let removed: Vec<IpAddr> = self.node_addrs.difference(addrs).copied().collect();
        for ip in &added {
            self.maps
                .node_addrs
                .insert(node_addr_key(*ip), 1, 0)
                .with_context(|| format!("adding node address {ip}"))?;
        }
        for ip in &removed {
            match self.maps.node_addrs.remove(&node_addr_key(*ip)) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(e).with_context(|| format!("removing node address {ip}")),
            }
        }
        self.node_addrs.clone_from(addrs);
        Ok((added, removed))
    }

    pub fn node_addrs(&self) -> &BTreeSet<IpAddr> {
        &self.node_addrs
    }

    /// How full each sized map is.
    pub fn map_usage(&self) -> Vec<MapUsage> {
        let frontends: usize = self.services.values().map(|s| s.frontends.len()).sum();
        let mut usage = vec![
            MapUsage::new(
                names::FRONTENDS,
                frontends as u64,
                self.limits.frontends.into(),
            ),
            MapUsage::new(
                names::BACKENDS,
                self.backend_ids.in_use().into(),
                self.limits.backends.into(),
            ),
            MapUsage::new(
                names::MAGLEV,
                self.regions.in_use().into(),
                self.regions.capacity().into(),
            ),
            MapUsage::new(
                names::NODE_ADDRS,
                self.node_addrs.len() as u64,
                NODE_ADDRS_CAPACITY,
            ),
        ];
        if let Some(entries) = self.conntrack_entries {
            usage.push(MapUsage::new(
                names::CONNTRACK,
                entries,
                self.limits.conntrack.into(),
            ));
        }
        usage
    }
}
