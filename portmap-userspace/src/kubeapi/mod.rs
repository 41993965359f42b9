//! The Kubernetes API server as a source (`portmap run --kubernetes`), as
//! kube-proxy follows it: Services and EndpointSlices in every namespace
//! (without those kube-proxy leaves to another proxy or that are headless),
//! and this node's Node object, each kept by a kube-rs reflector fed by
//! `runtime::watcher`, which lists, watches, and relists after errors, an
//! expired resourceVersion (410 Gone) or a lost connection, with backoff.
//! A store keeps its last complete list while it relists, so what is
//! published never depends on whether the API server answers.
//!
//! This module follows the API server and says what it holds
//! ([`Watch::snapshot`]); `config` translates it with the manifests' code,
//! `reload` applies it, `health` answers kube-proxy's health checks.

mod client;
mod events;
pub mod health;
pub mod metrics;
mod node;
mod watch;

use std::{path::PathBuf, sync::Arc, time::Duration};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};

pub use self::{
    client::connect,
    events::Reporter,
    node::NodeView,
    watch::{Resource, Watch, WatchState},
};

/// kube-proxy's `--min-sync-period` default.
pub const DEFAULT_MIN_SYNC_PERIOD: Duration = Duration::from_secs(1);

/// How to follow the API server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// `--kubeconfig`; without it `KUBECONFIG`, else `~/.kube/config`, else
    /// the service account of the pod portmap runs in.
    pub kubeconfig: Option<PathBuf>,
    /// This node's name: its Node object, and which endpoints are local.
    pub node_name: String,
    /// Changes are applied at most once per period (the first after a
    /// quiet period at once), in batches.
    pub min_sync_period: Duration,
}

/// What the API server held at one moment: the reflectors' objects, shared.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub services: Vec<Arc<Service>>,
    pub slices: Vec<Arc<EndpointSlice>>,
    /// This node's Node object, if it exists.
    pub node: Option<Arc<Node>>,
}

/// The label selector kube-proxy lists Services and EndpointSlices with:
/// none that another proxy serves, no EndpointSlices of headless Services.
pub const PROXY_SELECTOR: &str =
    "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name";

/// How the syncs went, for the metrics.
#[derive(Debug, Default)]
pub struct SyncStatus {
    pub successes: std::sync::atomic::AtomicU64,
    pub failures: std::sync::atomic::AtomicU64,
    /// Services not published as they are now, at the last sync.
    pub rejected: std::sync::atomic::AtomicU64,
}

/// Everything the metrics say about the API source.
#[derive(Clone, Debug)]
pub struct Status {
    pub sync: Arc<SyncStatus>,
    pub watch: Arc<WatchState>,
    pub health: Arc<health::Health>,
}
