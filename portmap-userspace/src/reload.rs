//! Live reload: when a watched manifest changes (or on SIGHUP), or the API
//! server's objects do (`--kubernetes`, batched by the daemon), the new
//! desired state is built and checked whole, then applied as a diff. If it
//! fails anywhere before the apply, the last good state stays in force and
//! the error (file, object, field, value) goes to the log and the metrics.
//! An API Service that cannot be published is reported alone (log and
//! Event), and keeps what it had. Docker's containers reach the same
//! publish: whenever they change, they are composed with the last good
//! state of `-p`, the manifests and the API server, and what each container
//! now publishes or withdraws is logged.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use anyhow::Result;
use log::{error, info, warn};

use crate::{
    config::{Loaded, Sources},
    dataplane::Dataplane,
    docker::{Composed, Container, Published, compose},
    kubeapi::{
        NodeView, Reporter, SyncStatus, Watch,
        health::{Health, ServiceHealthServers, service_health},
    },
    model::DesiredState,
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
    /// The state of `-p`, the manifests and the API server, as last
    /// published (Docker's containers are composed with its `desired`).
    last: Loaded,
    fingerprint: u64,
    pub status: Arc<ReloadStatus>,
    api: Option<ApiSource>,
    /// Docker's containers as last seen (none without `--docker`).
    containers: Vec<Container>,
    /// What the containers publish, as last applied.
    published: Published,
    /// Containers refused, as last said.
    refused: BTreeMap<String, String>,
}

impl Reloader {
    /// Starts from the state loaded at startup.
    pub fn new(sources: Sources, loaded: Loaded) -> Self {
        let status = ReloadStatus::default();
        status.last_ok.store(true, Ordering::Relaxed);
        Self {
            fingerprint: sources.fingerprint(),
            sources,
            last: loaded,
            status: Arc::new(status),
            api: None,
            containers: Vec::new(),
            published: Published::default(),
            refused: BTreeMap::new(),
        }
    }

    /// The desired state to start with: the loaded one and `containers`'
    /// ports (refused containers said in the log).
    pub fn start_with(&mut self, containers: Vec<Container>) -> DesiredState {
        self.containers = containers;
        let composed = compose(&self.last.desired, &self.containers);
        self.published = published(&composed, &[]);
        self.say_refused(&composed);
        composed.desired
    }

    /// Applies what Docker's containers now ask for.
    pub fn containers_changed(&mut self, containers: Vec<Container>, dataplane: &Mutex<Dataplane>) {
        if containers == self.containers {
            return;
        }
        self.containers = containers;
        let base = self.last.desired.clone();
        if let Err(e) = self.publish(&base, dataplane) {
            warn!("applying the containers' ports: {e:#}");
        }
    }

    /// Once the state loaded at startup is programmed: takes the API
    /// server as a source (`--kubernetes`), says so to the health checks,
    /// serves the `healthCheckNodePort`s, reports rejected Services. In the
    /// async runtime.
    pub fn started(&mut self, api: Option<ApiSource>) {
        self.api = api;
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
        // What does not fit the maps is reported per object and retried
        // (`Dataplane::publish`), each keeping what it had: the reload
        // itself succeeded.
        let services = self.publish(&loaded.desired, dataplane)?;
        let before = self.last.assignments.describe();
        for line in loaded.assignments.describe() {
            if !before.contains(&line) {
                info!("{line}");
            }
        }
        self.last = loaded;
        if let (Some(api), Some(checks)) = (&mut self.api, health_checks) {
            // Runs on a blocking thread of the runtime, which can spawn.
            api.service_health.update(checks);
        }
        self.after_api_sync();
        Ok(services)
    }

    /// Publishes `base` with the containers' ports; says what the
    /// containers now publish, and which are refused. Returns how many
    /// services are published.
    fn publish(&mut self, base: &DesiredState, dataplane: &Mutex<Dataplane>) -> Result<usize> {
        // Without containers, `base` as it is: no copy of every unit.
        let composed = if self.containers.is_empty() {
            Composed::default()
        } else {
            compose(base, &self.containers)
        };
        let desired = if self.containers.is_empty() {
            base
        } else {
            &composed.desired
        };
        let mut dp = portmap_testkit::lock(dataplane);
        let outcome = dp.publish(desired)?;
        let failed: Vec<String> = dp.unpublished().keys().cloned().collect();
        drop(dp);
        let failed: Vec<&str> = failed.iter().map(String::as_str).collect();
        let published = published(&composed, &failed);
        for line in self.published.changes(&published) {
            info!("{line}");
        }
        self.published = published;
        self.say_refused(&composed);
        Ok(outcome.services - outcome.not_published)
    }

    /// Says, once, each container newly refused (or refused for another
    /// reason).
    fn say_refused(&mut self, composed: &Composed) {
        for (label, why) in &composed.refused {
            if self.refused.get(label) != Some(why) {
                error!("container {label}: {why}");
            }
        }
        self.refused.clone_from(&composed.refused);
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

/// What each container publishes in `composed`, but for the services that
/// `failed` to apply.
fn published(composed: &Composed, failed: &[&str]) -> Published {
    let mut published = Published::default();
    for svc in &composed.desired.services {
        if let Some(label) = composed.container_of.get(&svc.key)
            && !failed.contains(&svc.key.as_str())
        {
            published.insert(label, std::slice::from_ref(svc));
        }
    }
    published
}
