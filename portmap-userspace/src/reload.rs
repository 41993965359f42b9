//! Live reload: when a watched manifest changes (or on SIGHUP), the new
//! desired state is built and checked whole, then applied as a diff. If it
//! fails anywhere before the apply, the last good state stays in force and the
//! error (file, object, field, value) goes to the log and the metrics.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use anyhow::Result;
use log::{info, warn};

use crate::{
    config::{Loaded, Sources},
    dataplane::Dataplane,
    k8s::Assignments,
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
        let mut dp = portmap_testkit::lock(dataplane);
        // What does not fit is reported per object and retried; the reload
        // itself (a desired state that reads and checks) succeeded.
        let published = dp.publish(&loaded.desired)?;
        drop(dp);
        for line in loaded.assignments.describe() {
            if !self.assignments.describe().contains(&line) {
                info!("{line}");
            }
        }
        self.assignments = loaded.assignments;
        Ok(published.services - published.not_published)
    }
}
