//! kube-proxy's health checks, answered as kube-proxy answers them:
//!
//! - `/healthz` and `/livez` (`--healthz-addr`, port 10256): 200 once the
//!   first sync is programmed and while no change has waited longer than
//!   the health timeout to be programmed; `/healthz` also fails while the
//!   node is being deleted (or tainted for deletion by the cluster
//!   autoscaler), so load balancers drain it. The body is kube-proxy's.
//! - each `externalTrafficPolicy: Local` LoadBalancer Service's
//!   `healthCheckNodePort`: 200 with the count of this node's ready
//!   endpoints (distinct `IP:port`s over the Service's ports, as kube-proxy
//!   counts), 503
//!   without any (or while the proxy is unhealthy), so cloud load balancers
//!   send only to nodes that have endpoints.

use std::{
    collections::{BTreeMap, HashMap},
    net::{Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use axum::{
    Router,
    extract::State,
    http::{HeaderName, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use k8s_openapi::{api::discovery::v1::EndpointSlice, jiff::Timestamp};
use log::{info, warn};
use portmap_testkit::lock;
use tokio::task::AbortHandle;

use super::Snapshot;
use crate::k8s::{self, NodeConfig};

/// kube-proxy's health timeout: twice its default `--sync-period` (30 s).
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(60);

/// kube-proxy's `--healthz-bind-address` default.
pub const DEFAULT_HEALTHZ_ADDR: &str = "0.0.0.0:10256";

/// Whether syncs are programmed in time (kube-proxy's proxier health).
#[derive(Debug)]
pub struct Health {
    state: Mutex<SyncState>,
    timeout: Duration,
}

#[derive(Debug, Default)]
struct SyncState {
    /// When a sync was last programmed (None before the first).
    last_updated: Option<Timestamp>,
    /// The oldest change not yet programmed.
    oldest_pending: Option<Instant>,
    node_leaving: bool,
}

impl Health {
    pub fn new(timeout: Duration) -> Self {
        Health {
            state: Mutex::default(),
            timeout,
        }
    }

    /// A change is waiting to be programmed.
    pub fn queued(&self) {
        lock(&self.state)
            .oldest_pending
            .get_or_insert_with(Instant::now);
    }

    /// Everything queued so far is programmed.
    pub fn updated(&self) {
        let mut s = lock(&self.state);
        s.last_updated = Some(Timestamp::now());
        s.oldest_pending = None;
    }

    pub fn set_node_leaving(&self, leaving: bool) {
        lock(&self.state).node_leaving = leaving;
    }

    /// Programmed once, and nothing waiting for longer than the timeout.
    pub fn healthy(&self) -> bool {
        let s = lock(&self.state);
        s.last_updated.is_some()
            && s.oldest_pending
                .is_none_or(|since| since.elapsed() < self.timeout)
    }

    /// `/healthz` (`eligibility`: the node's counts) or `/livez`.
    fn answer(&self, eligibility: bool) -> Response {
        let healthy = self.healthy();
        let s = lock(&self.state);
        let eligible = !s.node_leaving;
        let ok = healthy && (eligible || !eligibility);
        let body = format!(
            r#"{{"lastUpdated": "{}","currentTime": "{}", "nodeEligible": {eligible}}}"#,
            go_time(s.last_updated),
            go_time(Some(Timestamp::now())),
        );
        drop(s);
        let status = if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json(status, body, None)
    }
}

/// A time as Go's `time.Time.String()` prints it (kube-proxy's `%q`), the
/// zero time for none.
fn go_time(t: Option<Timestamp>) -> String {
    match t {
        Some(t) => t.strftime("%Y-%m-%d %H:%M:%S.%f +0000 UTC").to_string(),
        None => "0001-01-01 00:00:00 +0000 UTC".to_string(),
    }
}

fn json(status: StatusCode, body: String, weight: Option<u32>) -> Response {
    let mut r = (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response();
    if let Some(w) = weight {
        r.headers_mut().insert(
            HeaderName::from_static("x-load-balancing-endpoint-weight"),
            w.into(),
        );
    }
    r
}

/// Serves `/healthz` and `/livez` until the future is dropped.
pub async fn serve(listener: tokio::net::TcpListener, health: Arc<Health>) -> Result<()> {
    let app = Router::new()
        .route(
            "/healthz",
            get(|State(h): State<Arc<Health>>| async move { h.answer(true) }),
        )
        .route(
            "/livez",
            get(|State(h): State<Arc<Health>>| async move { h.answer(false) }),
        )
        .with_state(health);
    axum::serve(listener, app).await?;
    Ok(())
}

/// The health check of one `externalTrafficPolicy: Local` Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceHealth {
    pub namespace: String,
    pub name: String,
    /// This node's ready endpoints (distinct `IP:port`s).
    pub local_endpoints: u32,
}

/// The `healthCheckNodePort`s the Services of `api` want, with their local
/// endpoint counts.
pub fn service_health(api: &Snapshot, node: &NodeConfig) -> BTreeMap<u16, ServiceHealth> {
    let mut wanted = BTreeMap::new();
    let mut by_service = None;
    for svc in &api.services {
        let Some(spec) = &svc.spec else { continue };
        let port = spec.health_check_node_port.unwrap_or(0);
        let local = spec.external_traffic_policy.as_deref() == Some("Local");
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        if port == 0 || !local || spec.type_.as_deref() != Some("LoadBalancer") {
            continue;
        }
        let namespace = svc.metadata.namespace.clone().unwrap_or_default();
        let name = svc.metadata.name.clone().unwrap_or_default();
        // Indexed once, when a Service wants a check: not per Service.
        let by_service = by_service.get_or_insert_with(|| {
            let mut index: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
            for s in &api.slices {
                let service = s
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("kubernetes.io/service-name"));
                if let (Some(ns), Some(service)) = (s.metadata.namespace.as_deref(), service) {
                    index.entry((ns, service.as_str())).or_default().push(s);
                }
            }
            index
        });
        let slices = by_service
            .get(&(namespace.as_str(), name.as_str()))
            .into_iter()
            .flatten();
        // As kube-proxy counts: distinct local ready `IP:port`s over the
        // Service's ports (two ports to one target port count once).
        let mut local = std::collections::BTreeSet::new();
        for slice in slices {
            for sp in spec.ports.iter().flatten() {
                let proto = |p: Option<&str>| p.unwrap_or("TCP").to_string();
                let served = slice.ports.iter().flatten().find(|p| {
                    p.name.as_deref().unwrap_or_default() == sp.name.as_deref().unwrap_or_default()
                        && proto(p.protocol.as_deref()) == proto(sp.protocol.as_deref())
                });
                let Some(served) = served else {
                    continue;
                };
                for ep in &slice.endpoints {
                    let ready = ep.conditions.as_ref().and_then(|c| c.ready) != Some(false);
                    let Some(addr) = ep.addresses.first().and_then(|a| a.parse().ok()) else {
                        continue;
                    };
                    let here = k8s::locality(ep.node_name.as_deref(), addr, node);
                    if ready && here == k8s::Locality::Local {
                        local.insert((addr, served.port));
                    }
                }
            }
        }
        wanted.insert(
            port,
            ServiceHealth {
                namespace,
                name,
                local_endpoints: u32::try_from(local.len()).unwrap_or(u32::MAX),
            },
        );
    }
    wanted
}

/// The servers of the `healthCheckNodePort`s, kept in step with the
/// Services.
pub struct ServiceHealthServers {
    health: Arc<Health>,
    served: Arc<Mutex<BTreeMap<u16, ServiceHealth>>>,
    tasks: BTreeMap<u16, AbortHandle>,
}

impl ServiceHealthServers {
    pub fn new(health: Arc<Health>) -> Self {
        ServiceHealthServers {
            health,
            served: Arc::default(),
            tasks: BTreeMap::new(),
        }
    }

    /// Serves exactly the ports of `wanted`, with their counts. A port that
    /// cannot be bound is warned about and tried again at the next update.
    /// Runs in the async runtime.
    pub fn update(&mut self, wanted: BTreeMap<u16, ServiceHealth>) {
        let gone: Vec<u16> = self
            .tasks
            .keys()
            .filter(|p| !wanted.contains_key(p))
            .copied()
            .collect();
        for port in gone {
            if let Some(task) = self.tasks.remove(&port) {
                task.abort();
                info!("kubernetes: healthCheckNodePort {port} no longer served");
            }
        }
        for (port, svc) in &wanted {
            if self.tasks.contains_key(port) {
                continue;
            }
            match self.spawn(*port) {
                Ok(task) => {
                    info!(
                        "kubernetes: serving healthCheckNodePort {port} of Service {}/{}",
                        svc.namespace, svc.name
                    );
                    self.tasks.insert(*port, task);
                }
                Err(e) => warn!(
                    "kubernetes: healthCheckNodePort {port} of Service {}/{}: {e:#}",
                    svc.namespace, svc.name
                ),
            }
        }
        *lock(&self.served) = wanted;
    }

    fn spawn(&self, port: u16) -> Result<AbortHandle> {
        // [::] takes IPv4 too (v6only is off by default), as Go's ":port".
        let std = std::net::TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
            .or_else(|_| std::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))))
            .with_context(|| format!("cannot listen on port {port}"))?;
        std.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(std)?;
        let served = self.served.clone();
        let health = self.health.clone();
        let answer = move || {
            let svc = lock(&served).get(&port).cloned();
            let healthy = health.healthy();
            let Some(svc) = svc else {
                return json(StatusCode::SERVICE_UNAVAILABLE, String::new(), Some(0));
            };
            let n = svc.local_endpoints;
            let status = if n != 0 && healthy {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let body = format!(
                "{{\n\t\"service\": {{\n\t\t\"namespace\": \"{}\",\n\t\t\"name\": \"{}\"\n\t}},\n\t\"localEndpoints\": {n},\n\t\"serviceProxyHealthy\": {healthy}\n}}",
                svc.namespace, svc.name
            );
            json(status, body, Some(n))
        };
        let app = Router::new().fallback(move || {
            let answer = answer.clone();
            async move { answer() }
        });
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                warn!("kubernetes: healthCheckNodePort {port}: {e}");
            }
        });
        Ok(task.abort_handle())
    }
}

impl Drop for ServiceHealthServers {
    fn drop(&mut self) {
        for task in self.tasks.values() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_after_the_first_sync_while_changes_keep_up() {
        let h = Health::new(Duration::from_millis(50));
        assert!(!h.healthy(), "not before the first sync");
        h.queued();
        assert!(!h.healthy());
        h.updated();
        assert!(h.healthy());
        h.queued();
        assert!(h.healthy(), "a change within the timeout");
        std::thread::sleep(Duration::from_millis(60));
        assert!(!h.healthy(), "a change waiting past the timeout");
        h.updated();
        assert!(h.healthy());
    }

    #[test]
    fn a_leaving_node_fails_healthz_but_not_livez() {
        let h = Health::new(Duration::from_secs(60));
        h.updated();
        assert_eq!(h.answer(true).status(), StatusCode::OK);
        h.set_node_leaving(true);
        assert_eq!(h.answer(true).status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(h.answer(false).status(), StatusCode::OK, "/livez");
    }

    #[test]
    fn times_print_as_go_prints_them() {
        assert_eq!(go_time(None), "0001-01-01 00:00:00 +0000 UTC");
        let t: Timestamp = "2026-11-08T09:48:18.365338447Z".parse().unwrap();
        assert_eq!(go_time(Some(t)), "2026-11-08 09:48:18.365338447 +0000 UTC");
    }
}
