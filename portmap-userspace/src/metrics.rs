//! Prometheus metrics at `/metrics`, read from the maps at each scrape.

use crate::model::Reach;
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
/// that reach one backend address add up in its backend series. The labels
/// are borrowed from the snapshot (frontend or backend, service, port name),
/// with both directions under one key: at 100,000 backends, owned label sets
/// per series made a scrape cost hundreds of MiB.
#[derive(Default)]
struct Families<'a> {
    frontends: BTreeMap<[&'a str; 4], Counters>,
    backends: BTreeMap<[&'a str; 4], Counters>,
}

fn add(sum: &mut Counters, c: &Counters) {
    sum.request_packets += c.request_packets;
    sum.request_bytes += c.request_bytes;
    sum.reply_packets += c.reply_packets;
    sum.reply_bytes += c.reply_bytes;
}

impl<'a> Families<'a> {
    fn from_snapshot(snap: &'a Snapshot) -> Self {
        let mut f = Families::default();
        for svc in &snap.services {
            for fe in &svc.frontends {
                let key = [
                    fe.frontend.as_str(),
                    &svc.service,
                    &svc.port_name,
                    &svc.container,
                ];
                add(f.frontends.entry(key).or_default(), &fe.counters);
            }
            for be in &svc.backends {
                let key = [
                    be.backend.as_str(),
                    &svc.service,
                    &svc.port_name,
                    &svc.container,
                ];
                add(f.backends.entry(key).or_default(), &be.counters);
            }
        }
        f
    }
}

/// A counter family of one series per (key, direction); `first` names the
/// key's first label (`frontend` or `backend`).
fn encode_counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    first: &'static str,
    series: &BTreeMap<[&str; 4], Counters>,
    value: fn(&Counters) -> [u64; 2],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for ([what, service, port_name, container], c) in series {
        for (direction, v) in ["request", "reply"].into_iter().zip(value(c)) {
            let labels = [
                (first, *what),
                ("service", *service),
                ("port_name", *port_name),
                ("container", *container),
                ("direction", direction),
            ];
            ConstCounter::new(v).encode(metric.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

fn packets(c: &Counters) -> [u64; 2] {
    [c.request_packets, c.reply_packets]
}

fn bytes(c: &Counters) -> [u64; 2] {
    [c.request_bytes, c.reply_bytes]
}

/// A counter family with one label set per series.
fn encode_labelled_counters(
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
            "frontend",
            &f.frontends,
            packets,
        )?;
        encode_counters(
            &mut encoder,
            "portmap_bytes",
            "IP bytes (headers included) translated per frontend, per direction. Socket-level load balancing adds none (it translates addresses, not packets).",
            "frontend",
            &f.frontends,
            bytes,
        )?;
        encode_counters(
            &mut encoder,
            "portmap_backend_packets",
            "Packets translated per backend, per direction; socket-level load balancing counts per connect or UDP message, as for frontends.",
            "backend",
            &f.backends,
            packets,
        )?;
        encode_counters(
            &mut encoder,
            "portmap_backend_bytes",
            "IP bytes (headers included) translated per backend, per direction; none for socket-level load balancing.",
            "backend",
            &f.backends,
            bytes,
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
                let from = be
                    .reach
                    .snat_from()
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                let key = [
                    be.backend.clone(),
                    svc.service.clone(),
                    svc.port_name.clone(),
                    from,
                ];
                *snat.entry(key).or_default() |= be.reach.snat_from().is_some();
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
            "portmap_backend_dsr",
            "1 if new flows to the backend go there by direct server return (a backend on another node under --lb-mode dsr, or hybrid for TCP): the client's address kept, the replies sent straight to the client by the backend's node.",
            None,
            MetricType::Gauge,
        )?;
        let mut dsr: BTreeMap<[String; 3], bool> = BTreeMap::new();
        for svc in &snapshot.services {
            for be in &svc.backends {
                let key = [
                    be.backend.clone(),
                    svc.service.clone(),
                    svc.port_name.clone(),
                ];
                *dsr.entry(key).or_default() |= be.reach == Reach::Dsr;
            }
        }
        for ([backend, service, port_name], on) in &dsr {
            let labels = [
                ("backend", backend.as_str()),
                ("service", service.as_str()),
                ("port_name", port_name.as_str()),
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
        encode_unpublished(&mut encoder, &self.dataplane)?;
        encode_labelled_counters(
            &mut encoder,
            "portmap_datapath_events",
            "Things the dataplane did or declined to do (flows created or moved, malformed packets and fragments passed untouched, ...).",
            &events,
        )?;
        Ok(())
    }
}

/// One series per object of the desired state that is not published (its
/// key, and the map that is full or `error`); none when all are.
fn encode_unpublished(
    encoder: &mut DescriptorEncoder,
    dataplane: &Mutex<Dataplane>,
) -> Result<(), std::fmt::Error> {
    let objects: Vec<(String, &'static str)> = portmap_testkit::lock(dataplane)
        .unpublished()
        .iter()
        .map(|(key, n)| (key.clone(), n.reason))
        .collect();
    let mut metric = encoder.encode_descriptor(
        "portmap_objects_not_published",
        "1 for each object (service port) of the desired state that is not published as desired, with the map that has no room for it (reason): a new one is not published, an edited one keeps what it had; retried as room appears. Their sum is how many are left out.",
        None,
        MetricType::Gauge,
    )?;
    for (object, reason) in &objects {
        let labels = [("object", object.as_str()), ("reason", reason)];
        ConstGauge::new(1).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
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
        encode_labelled_counters(
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
        let encoded = encode(&mut body, &registry);
        // What the scrape read and sorted is free now; glibc would keep it.
        crate::dataplane::trim_heap();
        encoded.map(|()| body)
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
