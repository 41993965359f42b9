//! How big the maps are: from the flags when they are given, else from the
//! first desired state with headroom (or, when a pinned dataplane is adopted,
//! the sizes it already has).
//!
//! Sizing from the desired state rather than from a larger constant keeps a
//! small node small (kernel memory for arrays and per-CPU counters grows with
//! their size) while a large cluster starts on default flags. What outgrows
//! the maps later is not refused whole: each object that does not fit is
//! reported and retried (see `publish`).

use std::{collections::BTreeSet, fmt, net::SocketAddr};

use anyhow::{Context as _, Result};
use aya::maps::MapInfo;
use portmap_common::abi::MAGLEV_BLOCK_SLOTS;

use super::{Limits, PinDir, maps::names, plan::table_members};
use crate::{maglev, model::DesiredState};

/// The least the maps hold when sized from the desired state: the former
/// fixed defaults for frontends and backends, so a small node keeps the room
/// it always had to grow by reloads.
const FLOOR_FRONTENDS: u32 = 16_384;
const FLOOR_BACKENDS: u32 = 16_384;
/// The least Maglev pool: [`FLOOR_BACKENDS`] backends in tables of the
/// largest size per backend (200 slots, a service of 2^k + 1 backends).
const FLOOR_MAGLEV_SLOTS: u32 = FLOOR_BACKENDS * 200;
/// Room to grow, over what the first desired state needs: half as much
/// again. It also leaves room for changed tables, which are built beside the
/// ones they replace.
const HEADROOM_NUM: u64 = 3;
const HEADROOM_DEN: u64 = 2;

/// What a desired state needs of the maps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    pub services: u32,
    pub frontends: u32,
    pub backends: u32,
    /// Maglev table slots, every table at the size it gets when built.
    pub maglev_slots: u32,
}

impl Needs {
    pub fn of(desired: &DesiredState) -> Self {
        let mut needs = Needs::default();
        for svc in &desired.services {
            let backends: BTreeSet<SocketAddr> = svc
                .endpoints
                .iter()
                .map(|ep| SocketAddr::new(ep.addr, ep.port))
                .collect();
            let table = maglev::table_size(table_members(svc).len(), None);
            needs.services = needs.services.saturating_add(1);
            needs.frontends = needs.frontends.saturating_add(svc.frontends.len() as u32);
            needs.backends = needs.backends.saturating_add(backends.len() as u32);
            needs.maglev_slots = needs.maglev_slots.saturating_add(table);
        }
        needs
    }
}

/// Map sizes, and where they came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    pub limits: Limits,
    pub maglev_slots: u32,
    pub origin: Origin,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// `--max-frontends` and `--max-backends` (the pool: 400 slots per backend).
    Flags,
    /// From the first desired state, with headroom (`needs`); a size given
    /// by its flag is kept.
    Desired(Needs),
    /// The pinned dataplane's sizes, adopted as they are.
    Pinned,
}

fn with_headroom(needed: u32, floor: u32, max: u32) -> u32 {
    let grown = u64::from(needed) * HEADROOM_NUM / HEADROOM_DEN;
    // Whole pages of 1,024 entries: sizes that read well in the metrics.
    let rounded = grown.div_ceil(1024) * 1024;
    u32::try_from(rounded).unwrap_or(u32::MAX).clamp(floor, max)
}

impl Sizes {
    /// The sizes `portmap run` loads with: those of the maps pinned in
    /// `pins` if there are any (see [`Sizes::pinned`]), else from `flags`
    /// and what `desired` needs.
    pub fn at_start(flags: Limits, desired: &DesiredState, pins: &PinDir) -> Result<Self> {
        if pins.has_maps() {
            Self::pinned(flags, pins)
        } else {
            Ok(Self::resolve(flags, Needs::of(desired)))
        }
    }

    /// The sizes `flags` give, a size left at [`Limits::AUTO`] from `needs`.
    pub fn resolve(flags: Limits, needs: Needs) -> Self {
        let auto = |flag: u32, needed: u32, floor: u32, max: u32| {
            if flag == Limits::AUTO {
                with_headroom(needed, floor, max)
            } else {
                flag
            }
        };
        let limits = Limits {
            frontends: auto(
                flags.frontends,
                needs.frontends.max(needs.services),
                FLOOR_FRONTENDS,
                1 << 24,
            ),
            backends: auto(flags.backends, needs.backends, FLOOR_BACKENDS, 1 << 22),
            conntrack: flags.conntrack,
        };
        if flags.frontends != Limits::AUTO && flags.backends != Limits::AUTO {
            return Sizes {
                limits,
                maglev_slots: limits.maglev_slots(),
                origin: Origin::Flags,
            };
        }
        // Given backends size the pool as they always did.
        let maglev_slots = if flags.backends == Limits::AUTO {
            with_headroom(needs.maglev_slots, FLOOR_MAGLEV_SLOTS, u32::MAX / 2)
        } else {
            limits.maglev_slots()
        };
        Sizes {
            limits,
            maglev_slots,
            origin: Origin::Desired(needs),
        }
    }

    /// The sizes of the maps pinned in `pins`, for the sizes left at
    /// [`Limits::AUTO`]: a restarted daemon adopts its predecessor's maps as
    /// they are (a size given by its flag is checked against them).
    pub fn pinned(flags: Limits, pins: &PinDir) -> Result<Self> {
        let entries = |name: &str| -> Result<u32> {
            let path = pins.map_path(name);
            let info =
                MapInfo::from_pin(&path).with_context(|| format!("reading {}", path.display()))?;
            Ok(info.max_entries())
        };
        let keep = |flag: u32, name: &str| -> Result<u32> {
            if flag == Limits::AUTO {
                entries(name)
            } else {
                Ok(flag)
            }
        };
        let limits = Limits {
            frontends: keep(flags.frontends, names::FRONTENDS)?,
            backends: keep(flags.backends, names::BACKENDS)?,
            conntrack: flags.conntrack,
        };
        let maglev_slots = if flags.backends == Limits::AUTO {
            entries(names::MAGLEV)?.saturating_mul(MAGLEV_BLOCK_SLOTS)
        } else {
            limits.maglev_slots()
        };
        Ok(Sizes {
            limits,
            maglev_slots,
            origin: Origin::Pinned,
        })
    }
}

impl fmt::Display for Sizes {
    /// `maps sized for ...: 24,576 frontends, ...`, for the start-up log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.limits;
        let sizes = format!(
            "{} frontends, {} backends, {} Maglev table slots ({} MiB), {} conntrack entries",
            l.frontends,
            l.backends,
            self.maglev_slots,
            (u64::from(self.maglev_slots) * 4) >> 20,
            l.conntrack
        );
        match self.origin {
            Origin::Flags => write!(f, "maps sized by the flags: {sizes}"),
            Origin::Pinned => write!(f, "maps as pinned by the previous daemon: {sizes}"),
            Origin::Desired(n) => write!(
                f,
                "maps sized for {} services, {} frontends, {} backends and {} table slots with \
                 half again to grow (--max-frontends, --max-backends to choose): {sizes}",
                n.services, n.frontends, n.backends, n.maglev_slots
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        Endpoint, EndpointState, Frontend, HostAddr, Placement, Protocol, Service, WhenEmpty,
    };

    fn cluster(services: u32, endpoints: u32) -> DesiredState {
        let services = (0..services)
            .map(|i| Service {
                key: format!("svc-{i}"),
                name: format!("ns/svc-{i}"),
                port_name: String::new(),
                container: String::new(),
                frontends: vec![Frontend {
                    addr: HostAddr::Ip(std::net::Ipv4Addr::from(0x0a60_0000 + i).into()),
                    port: 80,
                    proto: Protocol::Tcp,
                }],
                endpoints: (0..endpoints)
                    .map(|e| Endpoint {
                        addr: std::net::Ipv4Addr::from(0x0a00_0000 + i * 64 + e).into(),
                        port: 8080,
                        state: EndpointState::Ready,
                        placement: Placement::Unknown,
                        reach: crate::model::Reach::Direct,
                    })
                    .collect(),
                affinity_timeout_s: None,
                when_empty: WhenEmpty::Pass,
                source_ranges: Vec::new(),
            })
            .collect();
        DesiredState { services }
    }

    const AUTO: Limits = Limits {
        frontends: Limits::AUTO,
        backends: Limits::AUTO,
        conntrack: 1024,
    };

    #[test]
    fn a_large_cluster_gets_room_and_half_again() {
        let needs = Needs::of(&cluster(10_000, 10));
        assert_eq!(
            needs,
            Needs {
                services: 10_000,
                frontends: 10_000,
                backends: 100_000,
                maglev_slots: 10_000 * 1601,
            }
        );
        let sizes = Sizes::resolve(AUTO, needs);
        assert_eq!(sizes.limits.frontends, 16_384, "the floor");
        assert_eq!(sizes.limits.backends, 150_528);
        assert_eq!(sizes.maglev_slots, 24_015_872);
        assert_eq!(sizes.limits.conntrack, 1024);
        assert!(sizes.to_string().contains("10000 services"), "{sizes}");
    }

    #[test]
    fn a_small_node_keeps_the_floors_and_flags_win() {
        let sizes = Sizes::resolve(AUTO, Needs::of(&cluster(1, 2)));
        assert_eq!(
            (sizes.limits.frontends, sizes.limits.backends),
            (16_384, 16_384)
        );
        assert_eq!(sizes.maglev_slots, FLOOR_MAGLEV_SLOTS);
        let flags = Limits {
            frontends: 10,
            backends: 20,
            conntrack: 64,
        };
        let sizes = Sizes::resolve(flags, Needs::of(&cluster(10_000, 10)));
        assert_eq!(sizes.limits, flags);
        assert_eq!(sizes.maglev_slots, flags.maglev_slots());
        assert_eq!(sizes.origin, Origin::Flags);
        // Only backends given: the pool follows them, frontends the state.
        let one = Limits {
            frontends: Limits::AUTO,
            ..flags
        };
        let sizes = Sizes::resolve(one, Needs::of(&cluster(20_000, 1)));
        assert_eq!(sizes.limits.frontends, 30_720);
        assert_eq!(sizes.maglev_slots, flags.maglev_slots());
    }
}
