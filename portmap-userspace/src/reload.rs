//! Live reload: when a watched manifest changes (or on SIGHUP), the new
//! desired state is built and checked whole, then applied as a diff. If it
//! fails anywhere before the apply, the last good state stays in force and the
//! error (file, object, field, value) goes to the log and the metrics.
//! Docker's containers reach the same apply: whenever they change, they are
//! composed with the last good state of `-p` and the manifests, and what
//! each container now publishes or withdraws is logged.

use std::{
    collections::BTreeMap,
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
    k8s::Assignments,
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

/// What the reloader remembers between reloads.
pub struct Reloader {
    sources: Sources,
    assignments: Assignments,
    fingerprint: u64,
    pub status: Arc<ReloadStatus>,
    /// The desired state of `-p` and the manifests, as last loaded.
    base: DesiredState,
    /// Docker's containers as last seen (none without `--docker`).
    containers: Vec<Container>,
    /// What the containers publish, as last applied.
    published: Published,
    /// Containers refused, as last said.
    refused: BTreeMap<String, String>,
}

impl Reloader {
    /// Starts from the state loaded at startup.
    pub fn new(sources: Sources, loaded: &Loaded) -> Self {
        let status = ReloadStatus::default();
        status.last_ok.store(true, Ordering::Relaxed);
        Self {
            fingerprint: sources.fingerprint(),
            sources,
            assignments: loaded.assignments.clone(),
            status: Arc::new(status),
            base: loaded.desired.clone(),
            containers: Vec::new(),
            published: Published::default(),
            refused: BTreeMap::new(),
        }
    }

    /// The desired state to start with: the loaded one and `containers`'
    /// ports (refused containers said in the log).
    pub fn start_with(&mut self, containers: Vec<Container>) -> DesiredState {
        self.containers = containers;
        let composed = compose(&self.base, &self.containers);
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
        if let Err(e) = self.apply(dataplane) {
            warn!("applying the containers' ports: {e:#}");
        }
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

    fn reload(&mut self, dataplane: &Mutex<Dataplane>) -> Result<usize> {
        let loaded = self.sources.load(Some(&self.assignments))?;
        for w in &loaded.warnings {
            warn!("{w}");
        }
        self.base = loaded.desired;
        let result = self.apply(dataplane);
        for line in loaded.assignments.describe() {
            if !self.assignments.describe().contains(&line) {
                info!("{line}");
            }
        }
        self.assignments = loaded.assignments;
        result
    }

    /// Publishes the last loaded state with the containers' ports; says
    /// what the containers now publish, and which are refused. What does not
    /// fit the maps is reported per object and retried (see
    /// `Dataplane::publish`); the reload itself succeeded. Returns how many
    /// services are published.
    fn apply(&mut self, dataplane: &Mutex<Dataplane>) -> Result<usize> {
        let composed = compose(&self.base, &self.containers);
        let mut dp = portmap_testkit::lock(dataplane);
        let outcome = dp.publish(&composed.desired)?;
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
