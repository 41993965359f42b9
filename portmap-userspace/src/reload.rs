//! Live reload: when a watched manifest changes (or on SIGHUP), or the API
//! server's objects do (`--kubernetes`, batched by the daemon), the new
//! desired state is built and checked whole, then applied as a diff. If it
//! fails anywhere before the apply, the last good state stays in force and
//! the error (file, object, field, value) goes to the log and the metrics.
//! An API Service that cannot be published is reported alone (log and
//! Event), and keeps what it had.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use anyhow::Result;
use log::{info, warn};

use crate::{
    config::{Loaded, Sources},
    dataplane::Dataplane,
    kubeapi::{
        NodeView, Reporter, SyncStatus, Watch,
        health::{Health, ServiceHealthServers, service_health},
    },
};

/// Outcome counters of reloads, for the metrics.
#[derive(Debug, Default)]
pub struct ReloadStatus {
    pub successes: AtomicU64,
    pub failures: AtomicU64,
    /// Whether the last reload (or the start) applied.
    pub last_ok: AtomicBool,
}

/// The API server as a source, and what answers for it.
pub struct ApiSource {
    pub watch: Arc<Watch>,
    /// Events about rejected Services (none in tests that do not ask).
    pub reporter: Option<Reporter>,
    pub health: Arc<Health>,
    pub service_health: ServiceHealthServers,
    pub status: Arc<SyncStatus>,
    /// Per rejected Service, what was last said about it (said again only
    /// when it changes).
    reported: BTreeMap<String, String>,
}

impl ApiSource {
    pub fn new(
        watch: Arc<Watch>,
        reporter: Option<Reporter>,
        health: Arc<Health>,
        status: Arc<SyncStatus>,
    ) -> Self {
        ApiSource {
            watch,
            reporter,
            service_health: ServiceHealthServers::new(health.clone()),
            health,
            status,
            reported: BTreeMap::new(),
        }
    }
}

/// What the reloader remembers between reloads.
pub struct Reloader {
    sources: Sources,
    last: Loaded,
    fingerprint: u64,
    pub status: Arc<ReloadStatus>,
    api: Option<ApiSource>,
}

impl Reloader {
    /// Starts from the state loaded at startup.
    pub fn new(sources: Sources, loaded: Loaded, api: Option<ApiSource>) -> Self {
        let status = ReloadStatus::default();
        status.last_ok.store(true, Ordering::Relaxed);
        Self {
            fingerprint: sources.fingerprint(),
            sources,
            last: loaded,
            status: Arc::new(status),
            api,
        }
    }

    /// Once the state loaded at startup is programmed: says so to the
    /// health checks, serves the `healthCheckNodePort`s, reports rejected
    /// Services. In the async runtime.
    pub fn started(&mut self) {
        if let Some(api) = &mut self.api {
            let snapshot = api.watch.snapshot();
            if let Some(node) = &snapshot.node {
                api.health.set_node_leaving(NodeView::of(node).leaving);
            }
            api.service_health
                .update(service_health(&snapshot, &self.last.node));
        }
        self.after_api_sync();
    }

    pub fn watches_files(&self) -> bool {
        !self.sources.manifests.is_empty()
    }

    /// Reloads if a manifest changed (or always, with `force`). Returns
    /// whether anything was reloaded.
    pub fn poll(&mut self, dataplane: &Mutex<Dataplane>, force: bool) -> bool {
        let fingerprint = self.sources.fingerprint();
        if !force && fingerprint == self.fingerprint {
            return false;
        }
        self.fingerprint = fingerprint;
        match self.reload(dataplane) {
            Ok(services) => {
                self.status.successes.fetch_add(1, Ordering::Relaxed);
                self.status.last_ok.store(true, Ordering::Relaxed);
                info!("reloaded: {services} services applied");
            }
            Err(e) => {
                self.status.failures.fetch_add(1, Ordering::Relaxed);
                self.status.last_ok.store(false, Ordering::Relaxed);
                warn!("reload failed, the last good state stays in force: {e:#}");
            }
        }
        true
    }

    /// Applies what the API server holds now (with the files and specs).
    /// A failure leaves the last good state in force and is returned, for
    /// the caller to try again.
    pub fn sync(&mut self, dataplane: &Mutex<Dataplane>) -> Result<usize> {
        let result = self.reload(dataplane);
        if let Some(api) = &self.api {
            let counter = match &result {
                Ok(_) => &api.status.successes,
                Err(_) => &api.status.failures,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn reload(&mut self, dataplane: &Mutex<Dataplane>) -> Result<usize> {
        let (loaded, health_checks) = match &self.api {
            Some(api) => {
                let snapshot = api.watch.snapshot();
                let loaded = self.sources.load_with_api(Some(&self.last), &snapshot)?;
                if let Some(node) = &snapshot.node {
                    api.health.set_node_leaving(NodeView::of(node).leaving);
                }
                let checks = service_health(&snapshot, &loaded.node);
                (loaded, Some(checks))
            }
            None => (self.sources.load(Some(&self.last.assignments))?, None),
        };
        // With the API, syncs are frequent: only what is new is worth saying.
        let said: BTreeSet<&String> = match self.api {
            Some(_) => self.last.warnings.iter().collect(),
            None => BTreeSet::new(),
        };
        for w in loaded.warnings.iter().filter(|w| !said.contains(w)) {
            warn!("{w}");
        }
        let mut dp = portmap_testkit::lock(dataplane);
        let report = dp.apply(&loaded.desired)?;
        drop(dp);
        let before = self.last.assignments.describe();
        for line in loaded.assignments.describe() {
            if !before.contains(&line) {
                info!("{line}");
            }
        }
        let services = loaded.desired.services.len();
        self.last = loaded;
        if let (Some(api), Some(checks)) = (&mut self.api, health_checks) {
            // Runs on a blocking thread of the runtime, which can spawn.
            api.service_health.update(checks);
        }
        self.after_api_sync();
        if !report.is_complete() {
            // The rest is applied; each of these keeps what it had.
            for (key, why) in &report.failed {
                warn!("{key}: not applied: {why}");
            }
            anyhow::bail!(
                "{} of {} services could not be applied",
                report.failed.len(),
                services
            );
        }
        Ok(services)
    }

    /// After the state from the API is programmed: reports rejected
    /// Services that are new or changed (log and Event), and tells the
    /// health checks.
    fn after_api_sync(&mut self) {
        let Some(api) = &mut self.api else { return };
        let mut now = BTreeMap::new();
        for r in &self.last.rejected {
            let message = r.error.to_string();
            if api.reported.get(&r.service) != Some(&message) {
                warn!("kubernetes: not published (the others are): {message}");
                if let (Some(reporter), Some(svc)) = (&api.reporter, api.watch.service(&r.service))
                {
                    reporter.service_rejected(&svc, message.clone());
                }
            }
            now.insert(r.service.clone(), message);
        }
        for gone in api.reported.keys().filter(|s| !now.contains_key(*s)) {
            info!("kubernetes: Service {gone} is published again, or gone");
        }
        api.reported = now;
        api.status
            .rejected
            .store(self.last.rejected.len() as u64, Ordering::Relaxed);
        api.health.updated();
    }
}
