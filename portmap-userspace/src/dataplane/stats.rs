//! Reading the counters: a snapshot of every service, frontend and backend.

use anyhow::{Context as _, Result};
use portmap_common::abi::{DIR_REPLY, DIR_REQUEST, DatapathEvent, TrafficCounters};
use serde::{Deserialize, Serialize};

use super::{Dataplane, InterfaceStatus, SocketLbStatus, maps::sum_counters};
use crate::model::EndpointState;

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
    pub counters: Counters,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServiceStats {
    pub key: String,
    pub service: String,
    pub port_name: String,
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

impl Dataplane {
    pub fn snapshot(&self) -> Result<Snapshot> {
        let mut services = Vec::with_capacity(self.services.len());
        for (key, svc) in &self.services {
            let mut frontends = Vec::with_capacity(svc.frontends.len());
            for (fe, slot) in &svc.frontends {
                let values = self
                    .maps
                    .frontend_stats
                    .get(&slot.value.frontend_id, 0)
                    .with_context(|| format!("reading counters of {fe}"))?;
                frontends.push(FrontendStats {
                    frontend: fe.to_string(),
                    counters: sum_counters(&values).into(),
                });
            }
            let mut backends = Vec::with_capacity(svc.backends.len());
            for (addr, slot) in &svc.backends {
                let values = self
                    .maps
                    .backend_stats
                    .get(&slot.id, 0)
                    .with_context(|| format!("reading counters of backend {addr}"))?;
                backends.push(BackendStats {
                    backend: addr.to_string(),
                    state: slot.state,
                    in_table: svc.table.as_ref().is_some_and(|t| t.members.contains(addr)),
                    counters: sum_counters(&values).into(),
                });
            }
            services.push(ServiceStats {
                key: key.clone(),
                service: svc.name.clone(),
                port_name: svc.port_name.clone(),
                frontends,
                backends,
            });
        }
        let mut events = Vec::with_capacity(DatapathEvent::ALL.len());
        for event in DatapathEvent::ALL {
            let values = self
                .maps
                .events
                .get(&(event as u32), 0)
                .context("reading datapath events")?;
            events.push((event.name().to_string(), values.iter().sum()));
        }
        Ok(Snapshot {
            services,
            events,
            maps: self.map_usage(),
            interfaces: self.interfaces(),
            socket_lb: self.socket_lb().clone(),
        })
    }
}
