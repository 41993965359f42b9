//! Typed handles on the dataplane's maps, and conversions between the maps'
//! raw layout and std types.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd as _, AsRawFd as _},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::{Array, DevMapHash, HashMap, LpmTrie, Map, MapData, PerCpuArray, PerCpuValues},
    util::nr_cpus,
};
use portmap_common::abi::{
    AffinityKey, AffinityValue, Backend, BackendNat, CtKey, CtValue, DatapathConfig, FAMILY_V4,
    FAMILY_V6, FrontendKey, FrontendValue, MAGLEV_BLOCK_SLOTS, NodeAddrKey, RawAddr, SnatValue,
    SourceRangeKey, TrafficCounters,
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
    /// Not pinned: each load starts its own, empty, and only the daemon that
    /// follows netlink for it sets it.
    pub const HOP_EPOCH: &str = "HOP_EPOCH";

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
    pub hop_epoch: super::hops::HopEpoch,
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
            hop_epoch: super::hops::HopEpoch::new(typed!(ebpf, names::HOP_EPOCH)),
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

/// The `MAGLEV` array seen as one flat run of `u32` slots, written through
/// shared memory mappings of the pages a table lies on, made for the write
/// and undone after it: a mapping of the whole pool would count every page
/// ever written in this process's resident memory (tens of MiB at 10,000
/// services), though the kernel holds the pool either way.
pub struct MaglevPool {
    map: MapData,
    slots: usize,
}

impl MaglevPool {
    fn new(map: MapData) -> Result<Self> {
        let info = map.info().context("reading MAGLEV map info")?;
        let blocks = info.max_entries() as usize;
        let pool = Self {
            map,
            slots: blocks * MAGLEV_BLOCK_SLOTS as usize,
        };
        // Fails now rather than at the first table if it cannot be mapped.
        pool.with_slots(0, 1, |_| ())?;
        Ok(pool)
    }

    pub fn slots(&self) -> u32 {
        u32::try_from(self.slots).unwrap_or(u32::MAX)
    }

    /// Maps the pages that hold slots `start..start + len` (checked to lie in
    /// the pool), and calls `f` with a pointer to slot `start`.
    fn with_slots<R>(&self, start: usize, len: usize, f: impl FnOnce(*mut u32) -> R) -> Result<R> {
        if start + len > self.slots {
            bail!(
                "{len} Maglev slots at {start} overrun the pool of {}",
                self.slots
            );
        }
        // SAFETY: sysconf has no memory-safety preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let first_byte = start * size_of::<u32>();
        let map_start = first_byte / page * page;
        let map_len =
            (first_byte + len.max(1) * size_of::<u32>() - map_start).div_ceil(page) * page;
        let offset = libc::off_t::try_from(map_start).context("Maglev pool offset")?;
        // SAFETY: maps `map_len` bytes of the array's values from page
        // `map_start` (the kernel refuses a range past the array's pages);
        // the fd is valid for the call, and the mapping is undone below,
        // after `f`, which gets a pointer inside it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.map.fd().as_fd().as_raw_fd(),
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error())
                .context("mmap of the MAGLEV map (needs BPF_F_MMAPABLE)");
        }
        // SAFETY: `first_byte - map_start` is less than `map_len`: the slots
        // start inside the mapping.
        let slot = unsafe { ptr.cast::<u8>().add(first_byte - map_start) }.cast::<u32>();
        let result = f(slot);
        // SAFETY: unmaps exactly the mapping made above; `f` has returned
        // and kept no pointer into it (the closures below copy in or out).
        unsafe { libc::munmap(ptr, map_len) };
        Ok(result)
    }

    /// Writes `table` at slot `offset`. The region must not be referenced by
    /// any frontend yet (it is built aside, then swapped in).
    pub fn write(&mut self, offset: u32, table: &[u32]) -> Result<()> {
        self.with_slots(offset as usize, table.len(), |dst| {
            // SAFETY: `with_slots` mapped `table.len()` slots at `dst`.
            unsafe { std::ptr::copy_nonoverlapping(table.as_ptr(), dst, table.len()) }
        })
    }

    /// Reads `len` slots at `offset` (for checks and state adoption).
    pub fn read(&self, offset: u32, len: u32) -> Result<Vec<u32>> {
        let len = len as usize;
        self.with_slots(offset as usize, len, |src| {
            // SAFETY: `with_slots` mapped `len` slots at `src`.
            unsafe { std::slice::from_raw_parts(src, len) }.to_vec()
        })
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
