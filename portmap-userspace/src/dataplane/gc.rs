//! Conntrack garbage collection. Stale entries are already ignored by the
//! dataplane (it checks timeouts and generations on every use); collecting
//! them frees room in the LRU map before it has to evict live flows.

use std::collections::HashMap;

use anyhow::{Context as _, Result};
use portmap_common::abi::{
    CT_F_DSR_REPLY, CT_REQUEST, CT_STATE_CLOSING, CT_STATE_ESTABLISHED, CtKey, CtValue,
    DatapathConfig, PROTO_TCP, SnatValue,
};

use std::os::fd::AsFd as _;

use aya::maps::IterableMap as _;
use log::warn;

use super::{Dataplane, bpf_sys, state::Applied};

/// Conntrack entries read per bpf(2) call of a collection's walk.
const GC_BATCH: usize = 1024;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub scanned: u64,
    pub removed: u64,
    /// SNAT port allocations seen, and freed (their flow gone).
    pub snat_scanned: u64,
    pub snat_removed: u64,
}

/// Monotonic nanoseconds, the clock of `bpf_ktime_get_coarse_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The coarse clock the dataplane reads may lag this much behind.
const CLOCK_SLACK_NS: u64 = 1_000_000_000;

/// When a conntrack entry is stale: idle past its state's timeout (with the
/// coarse clock's slack), or of a frontend or backend slot that was retired
/// (its id free, or given out again under another generation).
struct Staleness {
    config: DatapathConfig,
    now_ns: u64,
    /// Live frontend ids → generation.
    frontends: HashMap<u32, u32>,
    /// Live backend ids → generation.
    backends: HashMap<u32, u32>,
}

impl Staleness {
    fn new(config: DatapathConfig, applied: &Applied, now_ns: u64) -> Self {
        let services = applied.services.values();
        let frontends = services
            .clone()
            .flat_map(|s| s.frontends.values())
            .map(|slot| (slot.value.frontend_id, slot.value.generation))
            .collect();
        let backends = services
            .flat_map(|s| s.backends.values())
            .map(|slot| (slot.id, slot.generation))
            .collect();
        Self {
            config,
            now_ns,
            frontends,
            backends,
        }
    }

    fn is_stale(&self, k: &CtKey, v: &CtValue) -> bool {
        let cfg = &self.config;
        let timeout = if k.proto == PROTO_TCP {
            match v.state {
                CT_STATE_ESTABLISHED => cfg.tcp_established_timeout_ns,
                CT_STATE_CLOSING => cfg.tcp_closing_timeout_ns,
                _ => cfg.tcp_new_timeout_ns,
            }
        } else {
            cfg.udp_timeout_ns
        };
        self.now_ns.saturating_sub(v.last_seen_ns) > timeout + CLOCK_SLACK_NS
            || self.frontends.get(&v.frontend_id) != Some(&v.frontend_generation)
            // A reply entry learned from a DSR option has no backend here.
            || (v.flags & CT_F_DSR_REPLY == 0
                && self.backends.get(&v.backend_id) != Some(&v.backend_generation))
    }
}

impl Dataplane {
    /// Forgets every flow: conntrack and session-affinity entries (for tests
    /// that run independent cases on one loaded dataplane).
    pub fn clear_flows(&mut self) -> Result<()> {
        let keys: Vec<CtKey> = self
            .maps
            .conntrack
            .keys()
            .collect::<Result<_, _>>()
            .context("walking CONNTRACK")?;
        for key in keys {
            let _ = self.maps.conntrack.remove(&key);
        }
        let affinity: Vec<_> = self
            .maps
            .affinity
            .keys()
            .collect::<Result<_, _>>()
            .context("walking AFFINITY")?;
        for key in affinity {
            let _ = self.maps.affinity.remove(&key);
        }
        Ok(())
    }

    /// The conntrack entries (for tests comparing them with a model).
    pub fn conntrack_entries(&self) -> Result<Vec<(CtKey, CtValue)>> {
        self.maps
            .conntrack
            .iter()
            .collect::<Result<_, _>>()
            .context("walking CONNTRACK")
    }

    pub fn collect_garbage(&mut self) -> Result<GcReport> {
        let rule = Staleness::new(self.config, &self.applied, monotonic_ns());
        let stale = |k: &CtKey, v: &CtValue| rule.is_stale(k, v);
        let mut report = GcReport::default();
        let mut doomed: Vec<CtKey> = Vec::new();
        let walked = bpf_sys::for_each_batch(
            self.maps.conntrack.map().fd().as_fd(),
            GC_BATCH,
            |keys: &[CtKey], values: &[CtValue]| {
                report.scanned += keys.len() as u64;
                doomed.extend(
                    keys.iter()
                        .zip(values)
                        .filter(|(k, v)| stale(k, v))
                        .map(|(k, _)| *k),
                );
            },
        );
        match walked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
                // Said once: slower collections, and a malformed request
                // would look the same.
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| {
                    warn!(
                        "conntrack garbage collection walks the table key by key: the kernel refused a batch lookup ({e})"
                    );
                });
                self.walk_conntrack_by_key(&stale, &mut report, &mut doomed)?;
            }
            Err(e) => return Err(e).context("walking CONNTRACK in batches"),
        }
        for key in doomed {
            // The walk took a while: a client may have reused the flow's
            // ports since, and the dataplane replaced the entry with a live
            // one. Only what is still stale goes.
            match self.maps.conntrack.get(&key, 0) {
                Ok(value) if stale(&key, &value) => {}
                Ok(_) | Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(e) => return Err(e).context("reading CONNTRACK"),
            }
            match self.maps.conntrack.remove(&key) {
                Ok(()) => report.removed += 1,
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(e).context("removing from CONNTRACK"),
            }
        }
        self.conntrack_entries = Some(report.scanned - report.removed);
        self.collect_snat_ports(&rule, &mut report)?;
        Ok(report)
    }

    /// The walk of [`Dataplane::collect_garbage`] key by key, for kernels
    /// without batch lookups.
    fn walk_conntrack_by_key(
        &self,
        stale: &impl Fn(&CtKey, &CtValue) -> bool,
        report: &mut GcReport,
        doomed: &mut Vec<CtKey>,
    ) -> Result<()> {
        for item in self.maps.conntrack.iter() {
            let (key, value) = match item {
                Ok(kv) => kv,
                // An entry deleted by the LRU between the key walk and the
                // lookup; nothing to collect.
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(e) => return Err(e).context("walking CONNTRACK"),
            };
            report.scanned += 1;
            if stale(&key, &value) {
                doomed.push(key);
            }
        }
        Ok(())
    }

    /// Frees the SNAT ports of flows that are gone: neither half of the flow
    /// is in conntrack, or what is there is stale. The request half is found
    /// through the client the allocation records, so a flow whose reply
    /// entry alone was evicted keeps its port (the dataplane rebuilds that
    /// entry from the request's).
    fn collect_snat_ports(&mut self, rule: &Staleness, report: &mut GcReport) -> Result<()> {
        let alive = |maps: &super::maps::Maps, key: &CtKey, v: &SnatValue| -> Result<bool> {
            let request = CtKey {
                src: v.client,
                dst: v.frontend,
                sport: v.client_port,
                dport: v.frontend_port,
                direction: CT_REQUEST,
                ..*key
            };
            for k in [*key, request] {
                match maps.conntrack.get(&k, 0) {
                    Ok(value) if !rule.is_stale(&k, &value) => return Ok(true),
                    Ok(_) | Err(aya::maps::MapError::KeyNotFound) => {}
                    Err(e) => return Err(e).context("reading CONNTRACK"),
                }
            }
            Ok(false)
        };
        let mut doomed = Vec::new();
        for item in self.maps.snat.iter() {
            let (key, value) = match item {
                Ok(kv) => kv,
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(e) => return Err(e).context("walking SNAT"),
            };
            report.snat_scanned += 1;
            if !alive(&self.maps, &key, &value)? {
                doomed.push(key);
            }
        }
        for key in doomed {
            // As above: the port may have been taken again since the walk.
            match self.maps.snat.get(&key, 0) {
                Ok(value) if !alive(&self.maps, &key, &value)? => {}
                Ok(_) | Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(e) => return Err(e).context("reading SNAT"),
            }
            match self.maps.snat.remove(&key) {
                Ok(()) => report.snat_removed += 1,
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(e).context("removing from SNAT"),
            }
        }
        self.snat_entries = Some(report.snat_scanned - report.snat_removed);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
