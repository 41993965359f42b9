//! The userspace side of the dataplane: loads the eBPF object, owns its maps,
//! and keeps them equal to a desired state.

mod adopt;
mod alloc;
mod apply;
mod attach;
mod bpf_sys;
mod gc;
mod ifaces;
mod journal;
pub mod maps;
mod pin;
mod sock;
mod stats;
mod variant;

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
    attach::HeldLink,
    ifaces::Followed,
    journal::Journal,
    maps::{Maps, names, node_addr_key},
};
pub use self::{
    apply::{ApplyReport, CapacityError},
    attach::{Attached, XdpMode},
    gc::GcReport,
    ifaces::{InterfaceChange, InterfaceStatus, Role},
    pin::{DEFAULT_DIR as DEFAULT_PIN_DIR, PinDir},
    sock::{SockAttached, SocketLbStatus, default_cgroup, is_cgroup2},
    stats::{BackendStats, Counters, FrontendStats, MapUsage, ServiceStats, Snapshot},
};

/// Capacity of `NODE_ADDRS`, as declared in the eBPF object.
const NODE_ADDRS_CAPACITY: u64 = 1024;

/// Names of the programs in the eBPF object.
pub const INGRESS_PROGRAM: &str = "portmap_ingress";
pub const INGRESS_TC_PROGRAM: &str = "portmap_ingress_tc";
pub const EGRESS_PROGRAM: &str = "portmap_egress";
pub const REPLY_PROGRAM: &str = "portmap_reply";

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
    /// Where maps and links are pinned, if they are.
    pins: Option<PinDir>,
    /// Links this process holds, by pin name (pinned ones keep their
    /// programs attached when it exits).
    links: BTreeMap<String, HeldLink>,
    /// The interfaces asked for, followed while the daemon runs.
    followed: Vec<Followed>,
    xdp_mode: XdpMode,
    /// Socket-level load balancing: on which cgroup, or why it is off.
    socket_lb: SocketLbStatus,
    /// Services found pinned at load, from a previous daemon.
    adopted: usize,
    /// The map writes of applies, in order (recorded in unit tests only).
    journal: Journal,
}

impl Dataplane {
    /// Loads and verifies the programs and creates the maps, attaching
    /// nothing and pinning nothing (for tests and tools).
    pub fn load(limits: Limits, config: DatapathConfig) -> Result<Self> {
        Self::load_with(limits, config, None, 0)
    }

    /// Loads the programs with their maps pinned in `pins`. Maps a previous
    /// daemon pinned there are checked, reused, and adopted: the flows they
    /// carry keep their backends. `variant` is 0 except in upgrade tests,
    /// which load other code (see `variant`).
    pub fn load_pinned(
        limits: Limits,
        config: DatapathConfig,
        pins: PinDir,
        variant: u32,
    ) -> Result<Self> {
        Self::load_with(limits, config, Some(pins), variant)
    }

    fn load_with(
        limits: Limits,
        config: DatapathConfig,
        pins: Option<PinDir>,
        variant: u32,
    ) -> Result<Self> {
        anyhow::ensure!(
            !ebpf_object().is_empty(),
            "this portmap was built without its eBPF programs (AYA_BUILD_SKIP); build it again without"
        );
        let config = sock::with_host_netns(config);
        let maglev_blocks = limits.maglev_slots().div_ceil(MAGLEV_BLOCK_SLOTS);
        let sizes = [
            (names::FRONTENDS, limits.frontends),
            (names::FRONTEND_GEN, limits.frontends),
            (names::FRONTEND_STATS, limits.frontends),
            (names::BACKENDS, limits.backends),
            (names::BACKEND_STATS, limits.backends),
            (names::MAGLEV, maglev_blocks),
            (names::CONNTRACK, limits.conntrack),
        ];
        let adopting = pins.as_ref().is_some_and(PinDir::has_maps);
        if let Some(pins) = pins.as_ref().filter(|_| adopting) {
            pins.check_compatible(ebpf_object(), &sizes)?;
        }
        // An upgrade test's variant is another program: other code, same maps.
        let variant_object = if variant != 0 {
            Some(variant::code_variant(ebpf_object())?)
        } else {
            None
        };
        let object = variant_object.as_deref().unwrap_or(ebpf_object());
        let mut loader = EbpfLoader::new();
        for (name, entries) in sizes {
            loader.map_max_entries(name, entries);
        }
        if let Some(pins) = &pins {
            for name in names::ALL {
                loader.map_pin_path(name, pins.map_path(name));
            }
        }
        let mut ebpf = loader.load(object).context("loading the eBPF object")?;
        for (name, program) in ebpf.programs_mut() {
            match program {
                aya::programs::Program::Xdp(p) => Xdp::load(p),
                aya::programs::Program::SchedClassifier(p) => SchedClassifier::load(p),
                aya::programs::Program::CgroupSockAddr(p) => p.load(),
                other => anyhow::bail!("unexpected program {name}: {other:?}"),
            }
            .with_context(|| format!("loading program {name} (the verifier's log follows)"))?;
        }
        let mut maps = Maps::take(&mut ebpf)?;
        maps.config
            .set(0, config, 0)
            .context("writing the datapath config")?;
        let regions = RegionAllocator::new(maps.maglev.slots());
        let mut dataplane = Self {
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
            pins,
            links: BTreeMap::new(),
            followed: Vec::new(),
            xdp_mode: XdpMode::default(),
            socket_lb: SocketLbStatus::off("not attached"),
            adopted: 0,
            journal: Journal::default(),
        };
        if adopting {
            dataplane.adopted = dataplane.adopt().context("adopting the pinned dataplane")?;
        }
        Ok(dataplane)
    }

    /// Services adopted from a previous daemon's pinned maps at load.
    pub fn adopted(&self) -> usize {
        self.adopted
    }

    /// Stops this process's hold on the dataplane. With `keep`, pinned maps
    /// and links stay, and the programs keep forwarding for the next daemon
    /// to adopt; without, everything is unpinned, and so detached. (The
    /// object itself may still be referenced by in-flight requests; it holds
    /// no link once this returns.)
    pub fn shutdown(&mut self, keep: bool) -> Result<()> {
        let links = std::mem::take(&mut self.links);
        let mut result = Ok(());
        for link in links.into_values() {
            if let Err(e) = link.release(!keep) {
                result = Err(e);
            }
        }
        if !keep && let Some(pins) = &self.pins {
            pins.remove_all()?;
        }
        result
    }

    /// The loaded object, for attaching its programs or running them in tests.
    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
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
