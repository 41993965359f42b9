//! Prometheus metrics at `/metrics`, read from the maps at each scrape.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, atomic::Ordering},
};

use anyhow::Result;
use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _, text::encode},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use crate::{
    dataplane::{Counters, Dataplane, Snapshot},
    reload::ReloadStatus,
};

type Labels = Vec<(&'static str, String)>;

/// Reads the dataplane's counters when scraped.
pub struct DataplaneCollector {
    dataplane: Arc<Mutex<Dataplane>>,
}

impl std::fmt::Debug for DataplaneCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataplaneCollector")
    }
}

/// Counter families of one scrape, each a sum per label set: two frontends
/// that reach one backend address add up in its backend series.
#[derive(Default)]
struct Families {
    packets: BTreeMap<Labels, u64>,
    bytes: BTreeMap<Labels, u64>,
    backend_packets: BTreeMap<Labels, u64>,
    backend_bytes: BTreeMap<Labels, u64>,
}

fn add_both_ways(
    packets: &mut BTreeMap<Labels, u64>,
    bytes: &mut BTreeMap<Labels, u64>,
    base: &Labels,
    c: &Counters,
) {
    for (direction, p, b) in [
        ("request", c.request_packets, c.request_bytes),
        ("reply", c.reply_packets, c.reply_bytes),
    ] {
        let mut labels = base.clone();
        labels.push(("direction", direction.to_string()));
        *packets.entry(labels.clone()).or_default() += p;
        *bytes.entry(labels).or_default() += b;
    }
}

impl Families {
    fn from_snapshot(snap: &Snapshot) -> Self {
        let mut f = Families::default();
        for svc in &snap.services {
            for fe in &svc.frontends {
                let base = vec![
                    ("frontend", fe.frontend.clone()),
                    ("service", svc.service.clone()),
                    ("port_name", svc.port_name.clone()),
                    ("container", svc.container.clone()),
                ];
                add_both_ways(&mut f.packets, &mut f.bytes, &base, &fe.counters);
            }
            for be in &svc.backends {
                let base = vec![
                    ("backend", be.backend.clone()),
                    ("service", svc.service.clone()),
                    ("port_name", svc.port_name.clone()),
                    ("container", svc.container.clone()),
                ];
                add_both_ways(
                    &mut f.backend_packets,
                    &mut f.backend_bytes,
                    &base,
                    &be.counters,
                );
            }
        }
        f
    }
}

fn encode_counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &BTreeMap<Labels, u64>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn encode_gauges<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl Iterator<Item = (&'a str, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (map, value) in series {
        let labels = [("map", map)];
        ConstGauge::new(value as i64).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for DataplaneCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Bound first: a guard in the `match` would be held to its end.
        let snapshot = portmap_testkit::lock(&self.dataplane).snapshot();
        let snapshot = match snapshot {
            Ok(s) => s,
            Err(e) => {
                log::warn!("metrics: reading counters failed: {e:#}");
                return Ok(());
            }
        };
        let f = Families::from_snapshot(&snapshot);
        encode_counters(
            &mut encoder,
            "portmap_packets",
            "Packets translated per frontend, per direction (request: client to backend; reply: backend to client). Socket-level load balancing (local processes and pods in --cgroup) counts one request per TCP connect or UDP connect and one per UDP message sent to an address, and no replies.",
            &f.packets,
        )?;
        encode_counters(
            &mut encoder,
            "portmap_bytes",
            "IP bytes (headers included) translated per frontend, per direction. Socket-level load balancing adds none (it translates addresses, not packets).",
            &f.bytes,
        )?;
        encode_counters(
            &mut encoder,
            "portmap_backend_packets",
            "Packets translated per backend, per direction; socket-level load balancing counts per connect or UDP message, as for frontends.",
            &f.backend_packets,
        )?;
        encode_counters(
            &mut encoder,
            "portmap_backend_bytes",
            "IP bytes (headers included) translated per backend, per direction; none for socket-level load balancing.",
            &f.backend_bytes,
        )?;
        let events: BTreeMap<Labels, u64> = snapshot
            .events
            .iter()
            .map(|(name, n)| (vec![("event", name.clone())], *n))
            .collect();
        encode_gauges(
            &mut encoder,
            "portmap_map_entries",
            "Entries in use per map (MAGLEV: table slots; CONNTRACK: as of the last garbage collection, every 10 s).",
            snapshot.maps.iter().map(|m| (m.map.as_str(), m.entries)),
        )?;
        encode_gauges(
            &mut encoder,
            "portmap_map_capacity",
            "Capacity per map, as sized by the flags.",
            snapshot.maps.iter().map(|m| (m.map.as_str(), m.capacity)),
        )?;
        let mut metric = encoder.encode_descriptor(
            "portmap_backend_snat",
            "1 if new flows to the backend are SNATed (a backend on another node, or --masquerade-all), from the address in snat_from; 0 if they keep the client's address.",
            None,
            MetricType::Gauge,
        )?;
        // A backend listed by several units of one Service (its ClusterIP and
        // its nodePorts) is one series.
        let mut snat: BTreeMap<[String; 4], bool> = BTreeMap::new();
        for svc in &snapshot.services {
            for be in &svc.backends {
                let from = be.snat_from.map(|a| a.to_string()).unwrap_or_default();
                let key = [
                    be.backend.clone(),
                    svc.service.clone(),
                    svc.port_name.clone(),
                    from,
                ];
                *snat.entry(key).or_default() |= be.snat_from.is_some();
            }
        }
        for ([backend, service, port_name, from], on) in &snat {
            let labels = [
                ("backend", backend.as_str()),
                ("service", service.as_str()),
                ("port_name", port_name.as_str()),
                ("snat_from", from.as_str()),
            ];
            ConstGauge::new(i64::from(*on)).encode(metric.encode_family(&labels)?)?;
        }
        let mut metric = encoder.encode_descriptor(
            "portmap_interface_attached",
            "1 while the programs are attached to the interface (--iface, --backend-iface), 0 while it is gone; it is attached again when an interface of that name comes back.",
            None,
            MetricType::Gauge,
        )?;
        for iface in &snapshot.interfaces {
            let labels = [("interface", iface.name.as_str())];
            ConstGauge::new(i64::from(iface.attached)).encode(metric.encode_family(&labels)?)?;
        }
        let mut metric = encoder.encode_descriptor(
            "portmap_socket_lb_enabled",
            "1 if socket-level load balancing runs (cgroup programs on --cgroup), 0 if it is off (--no-socket-lb, or no cgroup v2 hierarchy to attach to).",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(snapshot.socket_lb.enabled))
            .encode(metric.encode_family(&NoLabels)?)?;
        encode_counters(
            &mut encoder,
            "portmap_datapath_events",
            "Things the dataplane did or declined to do (flows created or moved, malformed packets and fragments passed untouched, ...).",
            &events,
        )?;
        Ok(())
    }
}

/// Reload outcomes (see [`ReloadStatus`]).
#[derive(Debug)]
struct ReloadCollector(Arc<ReloadStatus>);

impl Collector for ReloadCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let outcomes: BTreeMap<Labels, u64> = [
            ("success", self.0.successes.load(Ordering::Relaxed)),
            ("failure", self.0.failures.load(Ordering::Relaxed)),
        ]
        .into_iter()
        .map(|(result, n)| (vec![("result", result.to_string())], n))
        .collect();
        encode_counters(
            &mut encoder,
            "portmap_config_reloads",
            "Reloads of changed manifests (or on SIGHUP), by result; a failed one leaves the last good state in force.",
            &outcomes,
        )?;
        let mut metric = encoder.encode_descriptor(
            "portmap_config_last_reload_successful",
            "1 if the last reload (or the start) applied, 0 if it failed.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(self.0.last_ok.load(Ordering::Relaxed)))
            .encode(metric.encode_family(&NoLabels)?)?;
        Ok(())
    }
}

/// An empty label set.
struct NoLabels;

impl prometheus_client::encoding::EncodeLabelSet for NoLabels {
    fn encode(
        &self,
        _encoder: &mut prometheus_client::encoding::LabelSetEncoder,
    ) -> Result<(), std::fmt::Error> {
        Ok(())
    }
}

pub fn registry(dataplane: Arc<Mutex<Dataplane>>, reloads: Arc<ReloadStatus>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(DataplaneCollector { dataplane }));
    registry.register_collector(Box::new(ReloadCollector(reloads)));
    registry
}

async fn metrics(State(registry): State<Arc<Registry>>) -> impl IntoResponse {
    // Reading the maps is a burst of syscalls: keep it off the async workers.
    let body = tokio::task::spawn_blocking(move || {
        let mut body = String::new();
        encode(&mut body, &registry).map(|()| body)
    })
    .await;
    match body {
        Ok(Ok(body)) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        _ => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "encoding metrics failed\n",
        )
            .into_response(),
    }
}

/// Serves `/metrics` on `listener` until the future is dropped.
pub async fn serve(listener: tokio::net::TcpListener, registry: Registry) -> Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(Arc::new(registry));
    axum::serve(listener, app).await?;
    Ok(())
}
