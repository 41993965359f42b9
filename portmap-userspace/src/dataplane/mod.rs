//! The userspace side of the dataplane: loads the eBPF object, owns its maps,
//! and keeps them equal to a desired state.
//!
//! Its parts: the record of what the maps publish (`state`: services, ids,
//! regions) and the plan that changes it (`plan`, `apply`, `adopt`), both
//! pure and tested without a kernel; the writer that carries plans out on
//! the maps (`writer`, `maps`); the attachments (`attachments`, `attach`,
//! `ifaces`, `sock`, `pin`); and the readers (`stats`, `gc`).

mod adopt;
mod alloc;
mod apply;
mod attach;
mod attachments;
mod bpf_sys;
#[cfg(test)]
mod fake;
mod gc;
mod hops;
mod ifaces;
pub mod maps;
mod pin;
mod plan;
mod publish;
mod sizing;
mod sock;
mod state;
mod stats;
mod variant;
mod writer;

use std::{collections::BTreeSet, net::IpAddr};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf, EbpfLoader,
    programs::{SchedClassifier, Xdp},
};
use portmap_common::abi::{DP_FAST_PATH, DatapathConfig, MAGLEV_BLOCK_SLOTS};

pub use self::{
    apply::{ApplyReport, CapacityError},
    attach::{Attached, XdpMode},
    gc::GcReport,
    ifaces::{InterfaceChange, InterfaceStatus, Role, if_name as interface_name},
    pin::{DEFAULT_DIR as DEFAULT_PIN_DIR, PinDir},
    publish::{NotPublished, Published, trim_heap},
    sizing::{Needs, Origin as SizeOrigin, Sizes},
    sock::{SockAttached, SocketLbStatus, default_cgroup, is_cgroup2},
    stats::{BackendStats, Counters, FrontendStats, MapUsage, ServiceStats, Snapshot},
};
use self::{
    attachments::Attachments,
    maps::{Maps, names},
    state::Applied,
};

/// Capacity of `NODE_ADDRS`, as declared in the eBPF object.
const NODE_ADDRS_CAPACITY: u64 = 1024;
/// Fewest entries of the `SNAT` map (its size in `portmap-ebpf/src/maps.rs`).
const MIN_SNAT_ENTRIES: u32 = 65_536;

/// Entries of the `SNAT` map for a conntrack table of `conntrack` entries:
/// one per flow it can hold (two entries each), so SNAT ports run out only
/// when the flows towards one backend do, not when the table does.
pub fn snat_entries(conntrack: u32) -> u32 {
    (conntrack / 2).max(MIN_SNAT_ENTRIES)
}

/// Names of the programs in the eBPF object.
pub const INGRESS_PROGRAM: &str = "portmap_ingress";
pub const INGRESS_TC_PROGRAM: &str = "portmap_ingress_tc";
pub const SNAT_REPLY_PROGRAM: &str = "portmap_snat_reply";
pub const DSR_PROGRAM: &str = "portmap_dsr";
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
    /// A size not chosen by a flag: `portmap run` sizes the map from the
    /// first desired state (see [`Sizes::resolve`]).
    pub const AUTO: u32 = 0;

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
    /// What the maps publish: services, ids, regions, node addresses.
    applied: Applied,
    /// Links, followed interfaces, socket-level load balancing, pins.
    attachments: Attachments,
    /// Entries seen by the last conntrack walk (the map has no cheap count).
    conntrack_entries: Option<u64>,
    /// SNAT ports taken, as of the last garbage collection.
    snat_entries: Option<u64>,
    /// Entries of the `SNAT` map.
    snat_capacity: u32,
    /// Services found pinned at load, from a previous daemon.
    adopted: usize,
    /// What the last publish left out, to report and retry.
    publishing: publish::Publishing,
    /// With the fast path on: the thread that keeps cached next hops current.
    hop_follower: Option<hops::HopFollower>,
}

impl Dataplane {
    /// Loads and verifies the programs and creates the maps, attaching
    /// nothing and pinning nothing (for tests and tools).
    pub fn load(limits: Limits, config: DatapathConfig) -> Result<Self> {
        Self::load_with(limits, limits.maglev_slots(), config, None, 0)
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
        Self::load_with(limits, limits.maglev_slots(), config, Some(pins), variant)
    }

    /// [`Dataplane::load_pinned`] with the maps sized by `sizes` (the Maglev
    /// pool too, which [`Limits`] alone sizes by its backends).
    pub fn load_sized(
        sizes: Sizes,
        config: DatapathConfig,
        pins: PinDir,
        variant: u32,
    ) -> Result<Self> {
        let limits = sizes.limits;
        Self::load_with(limits, sizes.maglev_slots, config, Some(pins), variant)
    }

    fn load_with(
        limits: Limits,
        maglev_slots: u32,
        config: DatapathConfig,
        pins: Option<PinDir>,
        variant: u32,
    ) -> Result<Self> {
        anyhow::ensure!(
            !ebpf_object().is_empty(),
            "this portmap was built without its eBPF programs (AYA_BUILD_SKIP); build it again without"
        );
        let config = sock::with_host_netns(config);
        let maglev_blocks = maglev_slots.div_ceil(MAGLEV_BLOCK_SLOTS);
        let sizes = [
            (names::FRONTENDS, limits.frontends),
            (names::FRONTEND_GEN, limits.frontends),
            (names::FRONTEND_STATS, limits.frontends),
            (names::BACKENDS, limits.backends),
            (names::BACKEND_NAT, limits.backends),
            (names::BACKEND_STATS, limits.backends),
            (names::MAGLEV, maglev_blocks),
            (names::CONNTRACK, limits.conntrack),
        ];
        let adopting = pins.as_ref().is_some_and(PinDir::has_maps);
        // A predecessor's SNAT map is adopted at its size: the ports it holds
        // are flows that carry on.
        let snat_capacity = match pins.as_ref().filter(|_| adopting) {
            Some(p) => aya::maps::MapInfo::from_pin(p.map_path(names::SNAT))
                .map(|i| i.max_entries())
                .unwrap_or_else(|_| snat_entries(limits.conntrack)),
            None => snat_entries(limits.conntrack),
        };
        let mut sizes = sizes.to_vec();
        sizes.push((names::SNAT, snat_capacity));
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
        let hop_follower = if config.flags & DP_FAST_PATH != 0 {
            Some(hops::HopFollower::start(maps.hop_epoch.clone())?)
        } else {
            None
        };
        let applied = Applied::new(limits, maps.maglev.slots());
        let mut dataplane = Self {
            ebpf,
            maps,
            config,
            applied,
            attachments: Attachments::new(pins),
            conntrack_entries: None,
            snat_entries: None,
            snat_capacity,
            adopted: 0,
            publishing: publish::Publishing::default(),
            hop_follower,
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
        // Programs kept running are left nothing cached: no one follows
        // netlink for them any more.
        self.hop_follower = None;
        let result = self.attachments.release_all(!keep);
        if !keep && let Some(pins) = &self.attachments.pins {
            pins.remove_all()?;
        }
        result
    }

    /// The loaded object, for attaching its programs or running them in tests.
    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    pub fn node_addrs(&self) -> &BTreeSet<IpAddr> {
        &self.applied.node_addrs
    }
}
