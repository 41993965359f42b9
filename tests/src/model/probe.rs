//! Reading the real maps of a loaded [`Dataplane`], to give the model the
//! same content, and moving their clocks back to simulate idle time.
//!
//! `Dataplane` keeps its map handles private and has accessors for
//! conntrack only, so the maps are opened again by id, from the ingress
//! program's own list of maps: exactly the maps the program under test uses.

use std::{
    collections::HashMap,
    os::fd::{AsFd as _, AsRawFd as _},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    maps::{Array, HashMap as BpfHashMap, Map, MapData},
    programs::Xdp,
};
use portmap_common::abi::{
    AffinityKey, AffinityValue, Backend, CtKey, CtValue, FrontendKey, FrontendValue,
};
use portmap_userspace::dataplane::{Dataplane, INGRESS_PROGRAM};

use super::{desired::Allocation, state::Flows};

/// The dataplane's clock (`bpf_ktime_get_coarse_ns` reads the same one).
pub fn coarse_now() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The distinct ids of a table, in order.
pub fn distinct(table: &[u32]) -> Vec<u32> {
    let max = table.iter().copied().max().unwrap_or(0) as usize;
    let mut seen = vec![false; max + 1];
    for id in table {
        seen[*id as usize] = true;
    }
    (0..=max as u32).filter(|id| seen[*id as usize]).collect()
}

/// A read-only mapping of the `MAGLEV` pool.
struct Pool {
    _map: MapData,
    base: *const u32,
    slots: usize,
    len: usize,
}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `Probe::open`.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}

/// Second handles on the maps of a loaded dataplane.
pub struct Probe {
    frontends: BpfHashMap<MapData, FrontendKey, FrontendValue>,
    frontend_gen: Array<MapData, u32>,
    backends: Array<MapData, Backend>,
    conntrack: BpfHashMap<MapData, CtKey, CtValue>,
    affinity: BpfHashMap<MapData, AffinityKey, AffinityValue>,
    pool: Pool,
}

impl Probe {
    pub fn open(dp: &Dataplane) -> Result<Self> {
        let prog: &Xdp = dp
            .ebpf()
            .program(INGRESS_PROGRAM)
            .context("no ingress program")?
            .try_into()?;
        let ids = prog
            .info()?
            .map_ids()?
            .context("the kernel does not list a program's maps")?;
        let mut found: HashMap<String, MapData> = HashMap::new();
        for id in ids {
            let data = MapData::from_id(id).with_context(|| format!("opening map {id}"))?;
            let name = data.info()?.name_as_str().unwrap_or_default().to_string();
            found.insert(name, data);
        }
        let mut take = |name: &str| {
            found
                .remove(name)
                .ok_or_else(|| anyhow!("the ingress program uses no map {name}"))
        };
        fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(data: MapData) -> Result<T> {
            Ok(T::try_from(Map::from_map_data(data)?)?)
        }
        let pool_data = take("MAGLEV")?;
        let info = pool_data.info()?;
        let blocks = info.max_entries() as usize;
        let value_size = info.value_size() as usize;
        let len = blocks * value_size;
        // SAFETY: a shared read-only mapping of the array's values (the map
        // is BPF_F_MMAPABLE); the fd is valid for the call and the mapping
        // lives until `Pool` is dropped.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                pool_data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            bail!("mmap of MAGLEV: {}", std::io::Error::last_os_error());
        }
        Ok(Probe {
            frontends: typed(take("FRONTENDS")?)?,
            frontend_gen: typed(take("FRONTEND_GEN")?)?,
            backends: typed(take("BACKENDS")?)?,
            conntrack: typed(take("CONNTRACK")?)?,
            affinity: typed(take("AFFINITY")?)?,
            pool: Pool {
                _map: pool_data,
                base: base as *const u32,
                slots: len / 4,
                len,
            },
        })
    }

    fn table(&self, offset: u32, size: u32) -> Result<Vec<u32>> {
        let (start, n) = (offset as usize, size as usize);
        if start + n > self.pool.slots {
            bail!("table {size}@{offset} overruns the pool");
        }
        // SAFETY: the range lies inside the mapping, checked just above.
        Ok(unsafe { std::slice::from_raw_parts(self.pool.base.add(start), n) }.to_vec())
    }

    /// What userspace allocated: the frontends of `keys` that are in
    /// `FRONTENDS` (looked up one by one: a walk visits every bucket of the
    /// map), the tables they point at, and the backends and frontend
    /// generations those and `flows` name.
    pub fn allocation(&self, keys: &[FrontendKey], flows: &Flows) -> Result<Allocation> {
        let mut alloc = Allocation::default();
        for k in keys {
            match self.frontends.get(k, 0) {
                Ok(v) => {
                    alloc.frontends.insert(*k, v);
                }
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(e).context("reading FRONTENDS"),
            }
        }
        let (mut fe_ids, mut be_ids) = flows.referenced_ids();
        for v in alloc.frontends.values() {
            fe_ids.insert(v.frontend_id);
            if v.table_size > 0 && !alloc.tables.contains_key(&v.table_offset) {
                let table = self.table(v.table_offset, v.table_size)?;
                let ids = distinct(&table);
                be_ids.extend(ids.iter().copied());
                alloc.tables.insert(v.table_offset, (table, ids));
            }
        }
        for id in fe_ids {
            alloc
                .frontend_gen
                .insert(id, self.frontend_gen.get(&id, 0)?);
        }
        for id in be_ids {
            alloc.backends.insert(id, self.backends.get(&id, 0)?);
        }
        Ok(alloc)
    }

    pub fn affinity(&self) -> Result<HashMap<AffinityKey, AffinityValue>> {
        let mut out = HashMap::new();
        for item in self.affinity.iter() {
            let (k, v) = item.context("walking AFFINITY")?;
            out.insert(k, v);
        }
        Ok(out)
    }

    /// One `AFFINITY` entry (walking the map costs a scan of all its
    /// buckets; looking one up does not).
    pub fn affinity_entry(&self, key: &AffinityKey) -> Result<Option<AffinityValue>> {
        match self.affinity.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub fn conntrack(&self) -> Result<HashMap<CtKey, CtValue>> {
        let mut out = HashMap::new();
        for item in self.conntrack.iter() {
            let (k, v) = item.context("walking CONNTRACK")?;
            out.insert(k, v);
        }
        Ok(out)
    }

    /// Deletes one conntrack entry, as an LRU eviction would.
    pub fn evict(&mut self, key: &CtKey) -> Result<()> {
        match self.conntrack.remove(key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Moves every conntrack and affinity time stamp `ns` into the past, as
    /// if the flows had been idle that long.
    pub fn age(&mut self, ns: u64) -> Result<()> {
        for (k, mut v) in self.conntrack()? {
            v.last_seen_ns = v.last_seen_ns.saturating_sub(ns);
            self.conntrack.insert(k, v, 0)?;
        }
        for (k, mut v) in self.affinity()? {
            v.last_used_ns = v.last_used_ns.saturating_sub(ns);
            self.affinity.insert(k, v, 0)?;
        }
        Ok(())
    }
}
