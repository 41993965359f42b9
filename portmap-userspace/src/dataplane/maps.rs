//! Typed handles on the dataplane's maps, and conversions between the maps'
//! raw layout and std types.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::{Array, DevMapHash, HashMap, LpmTrie, Map, MapData, PerCpuArray, PerCpuValues},
    util::nr_cpus,
};
use portmap_common::abi::{
    AffinityKey, AffinityValue, Backend, BackendNat, CtKey, CtValue, DatapathConfig, FAMILY_V4,
    FAMILY_V6, FrontendKey, FrontendValue, MAGLEV_BLOCK_SLOTS, MaglevBlock, NodeAddrKey, RawAddr,
    SnatValue, SourceRangeKey, TrafficCounters,
};

use crate::model::{Frontend, HostAddr};

/// Map names, as declared in `portmap-ebpf/src/maps.rs`.
pub mod names {
    pub const FRONTENDS: &str = "FRONTENDS";
    pub const FRONTEND_GEN: &str = "FRONTEND_GEN";
    pub const BACKENDS: &str = "BACKENDS";
    pub const BACKEND_NAT: &str = "BACKEND_NAT";
    pub const SNAT: &str = "SNAT";
    pub const MAGLEV: &str = "MAGLEV";
    pub const CONNTRACK: &str = "CONNTRACK";
    pub const NODE_ADDRS: &str = "NODE_ADDRS";
    pub const FRONTEND_STATS: &str = "FRONTEND_STATS";
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    pub const EVENTS: &str = "EVENTS";
    pub const CONFIG: &str = "CONFIG";
    pub const AFFINITY: &str = "AFFINITY";
    pub const SOURCE_RANGES: &str = "SOURCE_RANGES";
    pub const DEVMAP: &str = "DEVMAP";
    pub const SOCK_REVNAT: &str = "SOCK_REVNAT";

    /// Every map, pinned by these names.
    pub const ALL: &[&str] = &[
        FRONTENDS,
        FRONTEND_GEN,
        BACKENDS,
        BACKEND_NAT,
        SNAT,
        MAGLEV,
        CONNTRACK,
        NODE_ADDRS,
        FRONTEND_STATS,
        BACKEND_STATS,
        EVENTS,
        CONFIG,
        AFFINITY,
        SOURCE_RANGES,
        DEVMAP,
        SOCK_REVNAT,
    ];
}

pub struct Maps {
    pub frontends: HashMap<MapData, FrontendKey, FrontendValue>,
    pub frontend_gen: Array<MapData, u32>,
    pub backends: Array<MapData, Backend>,
    pub backend_nat: Array<MapData, BackendNat>,
    pub snat: HashMap<MapData, CtKey, SnatValue>,
    pub maglev: MaglevPool,
    pub conntrack: HashMap<MapData, CtKey, CtValue>,
    pub node_addrs: HashMap<MapData, NodeAddrKey, u32>,
    pub frontend_stats: PerCpuArray<MapData, TrafficCounters>,
    pub backend_stats: PerCpuArray<MapData, TrafficCounters>,
    pub events: PerCpuArray<MapData, u64>,
    pub config: Array<MapData, DatapathConfig>,
    pub source_ranges: LpmTrie<MapData, SourceRangeKey, u8>,
    pub affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    pub devmap: DevMapHash<MapData>,
}

fn take(ebpf: &mut Ebpf, name: &str) -> Result<Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("the eBPF object has no map {name}"))
}

macro_rules! typed {
    ($ebpf:expr, $name:expr) => {
        take($ebpf, $name)?
            .try_into()
            .with_context(|| format!("map {} has an unexpected type", $name))?
    };
}

impl Maps {
    /// Takes the maps out of a loaded object.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let maglev = match take(ebpf, names::MAGLEV)? {
            Map::Array(data) => MaglevPool::new(data)?,
            other => bail!("map MAGLEV is {other:?}, expected an array"),
        };
        Ok(Self {
            frontends: typed!(ebpf, names::FRONTENDS),
            frontend_gen: typed!(ebpf, names::FRONTEND_GEN),
            backends: typed!(ebpf, names::BACKENDS),
            backend_nat: typed!(ebpf, names::BACKEND_NAT),
            snat: typed!(ebpf, names::SNAT),
            maglev,
            conntrack: typed!(ebpf, names::CONNTRACK),
            node_addrs: typed!(ebpf, names::NODE_ADDRS),
            frontend_stats: typed!(ebpf, names::FRONTEND_STATS),
            backend_stats: typed!(ebpf, names::BACKEND_STATS),
            events: typed!(ebpf, names::EVENTS),
            config: typed!(ebpf, names::CONFIG),
            source_ranges: typed!(ebpf, names::SOURCE_RANGES),
            affinity: typed!(ebpf, names::AFFINITY),
            devmap: typed!(ebpf, names::DEVMAP),
        })
    }
}

/// Sum over CPUs of a per-CPU counter slot.
pub fn sum_counters(values: &PerCpuValues<TrafficCounters>) -> TrafficCounters {
    values
        .iter()
        .fold(TrafficCounters::default(), |mut acc, c| {
            for dir in 0..2 {
                acc.packets[dir] += c.packets[dir];
                acc.bytes[dir] += c.bytes[dir];
            }
            acc
        })
}

/// Zeroes a per-CPU counter slot, so a reused id starts from zero.
pub fn zero_counters(map: &mut PerCpuArray<MapData, TrafficCounters>, id: u32) -> Result<()> {
    let cpus = nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))?;
    let zeros = PerCpuValues::try_from(vec![TrafficCounters::default(); cpus])
        .context("building per-CPU zeros")?;
    map.set(id, zeros, 0)
        .with_context(|| format!("zeroing counters of id {id}"))
}

/// The `MAGLEV` array seen as one flat run of `u32` slots, written through a
/// shared memory mapping.
pub struct MaglevPool {
    _map: MapData,
    base: NonNull<u32>,
    slots: usize,
    mapped_len: usize,
}

// SAFETY: the mapping is owned by this value and only written through `&mut self`.
unsafe impl Send for MaglevPool {}

impl MaglevPool {
    fn new(map: MapData) -> Result<Self> {
        let info = map.info().context("reading MAGLEV map info")?;
        let blocks = info.max_entries() as usize;
        let bytes = blocks * size_of::<MaglevBlock>();
        // SAFETY: maps `bytes` of the array's values (a multiple of the page
        // size rounded up by the kernel) shared with the kernel; the fd is valid
        // for the call, and the mapping outlives it until `Drop` unmaps it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error())
                .context("mmap of the MAGLEV map (needs BPF_F_MMAPABLE)");
        }
        Ok(Self {
            _map: map,
            base: NonNull::new(ptr.cast()).context("mmap returned null")?,
            slots: blocks * MAGLEV_BLOCK_SLOTS as usize,
            mapped_len: bytes,
        })
    }

    pub fn slots(&self) -> u32 {
        u32::try_from(self.slots).unwrap_or(u32::MAX)
    }

    /// Writes `table` at slot `offset`. The region must not be referenced by
    /// any frontend yet (it is built aside, then swapped in).
    pub fn write(&mut self, offset: u32, table: &[u32]) -> Result<()> {
        let start = offset as usize;
        if start + table.len() > self.slots {
            bail!(
                "Maglev table of {} slots at {start} overruns the pool of {}",
                table.len(),
                self.slots
            );
        }
        // SAFETY: the range was checked to lie inside the mapping just above.
        unsafe {
            std::ptr::copy_nonoverlapping(
                table.as_ptr(),
                self.base.as_ptr().add(start),
                table.len(),
            )
        };
        Ok(())
    }

    /// Reads `len` slots at `offset` (for checks and state adoption).
    pub fn read(&self, offset: u32, len: u32) -> Result<Vec<u32>> {
        let start = offset as usize;
        let len = len as usize;
        if start + len > self.slots {
            bail!(
                "read of {len} slots at {start} overruns the pool of {}",
                self.slots
            );
        }
        // SAFETY: the range was checked to lie inside the mapping just above.
        Ok(unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(start), len) }.to_vec())
    }
}

impl Drop for MaglevPool {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`, which nothing
        // references after this value is gone.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.mapped_len) };
    }
}

pub fn raw_addr(ip: IpAddr) -> RawAddr {
    match ip {
        IpAddr::V4(v4) => RawAddr([u32::from_ne_bytes(v4.octets()), 0, 0, 0]),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            RawAddr(std::array::from_fn(|i| {
                u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
            }))
        }
    }
}

pub fn ip_of(addr: &RawAddr, family: u8) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::from(addr.0[0].to_ne_bytes()))
    } else {
        let mut o = [0u8; 16];
        for (i, w) in addr.0.iter().enumerate() {
            o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(o))
    }
}

pub fn family_of(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { FAMILY_V4 } else { FAMILY_V6 }
}

pub fn frontend_key(fe: &Frontend) -> FrontendKey {
    let (addr, family) = match fe.addr {
        HostAddr::AllV4 => (RawAddr::UNSPECIFIED, FAMILY_V4),
        HostAddr::AllV6 => (RawAddr::UNSPECIFIED, FAMILY_V6),
        HostAddr::Ip(ip) => (raw_addr(ip), family_of(ip)),
    };
    FrontendKey {
        addr,
        port: fe.port.to_be(),
        proto: fe.proto.number(),
        family,
    }
}

pub fn node_addr_key(ip: IpAddr) -> NodeAddrKey {
    NodeAddrKey {
        addr: raw_addr(ip),
        family: family_of(ip),
        _pad: [0; 3],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_addresses_are_the_packet_bytes() {
        let v4: IpAddr = "198.18.0.1".parse().unwrap();
        let raw = raw_addr(v4);
        assert_eq!(raw.0[0].to_ne_bytes(), [198, 18, 0, 1]);
        assert_eq!(ip_of(&raw, FAMILY_V4), v4);
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let raw = raw_addr(v6);
        assert_eq!(raw.0[0].to_ne_bytes(), [0x20, 0x01, 0x0d, 0xb8]);
        assert_eq!(ip_of(&raw, FAMILY_V6), v6);
    }

    #[test]
    fn frontend_ports_are_in_network_order() {
        let key = frontend_key(&Frontend {
            addr: HostAddr::AllV4,
            port: 8080,
            proto: crate::model::Protocol::Udp,
        });
        assert_eq!(key.port.to_ne_bytes(), 8080u16.to_be_bytes());
        assert!(key.addr.is_unspecified());
        assert_eq!(key.proto, 17);
    }
}
