//! Reading the counters: a snapshot of every service, frontend and backend.

use anyhow::{Context as _, Result};
use aya::maps::{MapData, PerCpuArray};
use portmap_common::abi::{DIR_REPLY, DIR_REQUEST, DatapathEvent, TrafficCounters};
use serde::{Deserialize, Serialize};

use super::{
    Dataplane, InterfaceStatus, NODE_ADDRS_CAPACITY, SocketLbStatus,
    maps::{names, sum_counters},
    state::Applied,
};
use crate::model::{EndpointState, Reach};

/// Packets and bytes both ways.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub request_packets: u64,
    pub request_bytes: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
}

impl From<TrafficCounters> for Counters {
    fn from(c: TrafficCounters) -> Self {
        Self {
            request_packets: c.packets[DIR_REQUEST],
            request_bytes: c.bytes[DIR_REQUEST],
            reply_packets: c.packets[DIR_REPLY],
            reply_bytes: c.bytes[DIR_REPLY],
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FrontendStats {
    /// `ADDR:PORT/PROTO`, as in the `frontend` label.
    pub frontend: String,
    pub counters: Counters,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackendStats {
    /// `ADDR:PORT`, as in the `backend` label.
    pub backend: String,
    pub state: EndpointState,
    /// Whether the backend is in the table that picks backends for new flows.
    pub in_table: bool,
    /// How new flows reach it: with the client's address, SNATed from an
    /// address of this node (a backend on another node), or by DSR.
    #[serde(default)]
    pub reach: Reach,
    pub counters: Counters,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServiceStats {
    pub key: String,
    pub service: String,
    pub port_name: String,
    /// The Docker container publishing it (empty for others).
    #[serde(default)]
    pub container: String,
    pub frontends: Vec<FrontendStats>,
    pub backends: Vec<BackendStats>,
}

/// How full a map is. Conntrack's count is from the last garbage collection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapUsage {
    pub map: String,
    pub entries: u64,
    pub capacity: u64,
}

impl MapUsage {
    pub fn new(map: &str, entries: u64, capacity: u64) -> Self {
        Self {
            map: map.to_string(),
            entries,
            capacity,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Snapshot {
    pub services: Vec<ServiceStats>,
    /// `DatapathEvent` name → count.
    pub events: Vec<(String, u64)>,
    pub maps: Vec<MapUsage>,
    /// The interfaces asked for, attached or not.
    pub interfaces: Vec<InterfaceStatus>,
    pub socket_lb: SocketLbStatus,
}

impl Applied {
    /// Every service with its frontends and backends, counters read by id
    /// with `frontend_counters` and `backend_counters`.
    pub fn service_stats(
        &self,
        mut frontend_counters: impl FnMut(u32) -> Result<Counters>,
        mut backend_counters: impl FnMut(u32) -> Result<Counters>,
    ) -> Result<Vec<ServiceStats>> {
        let mut services = Vec::with_capacity(self.services.len());
        for (key, svc) in &self.services {
            let mut frontends = Vec::with_capacity(svc.frontends.len());
            for (fe, slot) in &svc.frontends {
                let counters = frontend_counters(slot.value.frontend_id)
                    .with_context(|| format!("reading counters of {fe}"))?;
                frontends.push(FrontendStats {
                    frontend: fe.to_string(),
                    counters,
                });
            }
            let mut backends = Vec::with_capacity(svc.backends.len());
            for (addr, slot) in &svc.backends {
                let counters = backend_counters(slot.id)
                    .with_context(|| format!("reading counters of backend {addr}"))?;
                backends.push(BackendStats {
                    backend: addr.to_string(),
                    state: slot.state,
                    in_table: svc.table.as_ref().is_some_and(|t| t.members.contains(addr)),
                    reach: slot.reach,
                    counters,
                });
            }
            services.push(ServiceStats {
                key: key.clone(),
                service: svc.name.clone(),
                port_name: svc.port_name.clone(),
                container: svc.container.clone(),
                frontends,
                backends,
            });
        }
        Ok(services)
    }

    /// How full each sized map is; conntrack's count from the last garbage
    /// collection, if any ran.
    pub fn map_usage(
        &self,
        conntrack_entries: Option<u64>,
        snat: Option<(u64, u64)>,
    ) -> Vec<MapUsage> {
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
        if let Some(entries) = conntrack_entries {
            usage.push(MapUsage::new(
                names::CONNTRACK,
                entries,
                self.limits.conntrack.into(),
            ));
        }
        if let Some((entries, capacity)) = snat {
            usage.push(MapUsage::new(names::SNAT, entries, capacity));
        }
        usage
    }
}

impl Dataplane {
    pub fn snapshot(&self) -> Result<Snapshot> {
        let read = |map: &PerCpuArray<MapData, TrafficCounters>, id: u32| -> Result<Counters> {
            Ok(sum_counters(&map.get(&id, 0)?).into())
        };
        let services = self.applied.service_stats(
            |id| read(&self.maps.frontend_stats, id),
            |id| read(&self.maps.backend_stats, id),
        )?;
        let mut events = Vec::with_capacity(DatapathEvent::ALL.len());
        for event in DatapathEvent::ALL {
            events.push((event.name().to_string(), self.event_total(event)?));
        }
        Ok(Snapshot {
            services,
            events,
            maps: self.map_usage(),
            interfaces: self.interfaces(),
            socket_lb: self.socket_lb().clone(),
        })
    }

    /// A datapath event's count, summed over CPUs.
    pub fn event_total(&self, event: DatapathEvent) -> Result<u64> {
        let values = self
            .maps
            .events
            .get(&(event as u32), 0)
            .context("reading datapath events")?;
        Ok(values.iter().sum())
    }

    /// How full each sized map is.
    pub fn map_usage(&self) -> Vec<MapUsage> {
        self.applied.map_usage(
            self.conntrack_entries,
            self.snat_entries.map(|e| (e, self.snat_capacity.into())),
        )
    }
}

#[cfg(test)]
mod tests;
