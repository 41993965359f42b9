//! `--kubernetes` in the daemon, as kube-proxy runs: nothing is published
//! before every watched resource has been listed once (a full resync), with
//! `/healthz` answering 503 meanwhile; then the API server's changes are
//! applied in batches, at most once per `--min-sync-period` (the first
//! change after a quiet period at once), as kube-proxy's bounded-frequency
//! runner does. The watchers relist with backoff on errors, an expired
//! resourceVersion or a lost connection, and their stores keep the last
//! complete list meanwhile: an API server that goes away withdraws nothing.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use log::{debug, info, warn};
use portmap_testkit::lock;
use tokio::task::JoinSet;

use super::{Armed, Config, Listeners, log_loaded};
use crate::{
    config::Loaded,
    dataplane::Dataplane,
    kubeapi::{
        self, Reporter, SyncStatus, Watch,
        health::{self, HEALTH_TIMEOUT, Health},
    },
    reload::{ApiSource, Reloader},
};

/// The longest wait before a failed sync is tried again.
const MAX_RETRY: Duration = Duration::from_secs(30);
/// How often the wait for the first lists says what it waits for.
const WAITING_LOG: Duration = Duration::from_secs(10);

/// The API source once its first lists are in.
pub(super) struct Api {
    watch: Arc<Watch>,
    health: Arc<Health>,
    reporter: Reporter,
    sync: Arc<SyncStatus>,
    min_sync_period: Duration,
    /// `/healthz` and `/livez`, served from before the first sync.
    servers: JoinSet<()>,
}

/// Starts the watchers and the health server, and waits for the first
/// complete lists (`None` if told to stop meanwhile). Returns what they
/// translate to, checked, and the listeners left to serve.
pub(super) async fn start(
    config: &Config,
    client: ::kube::Client,
    stopped: &mut Armed,
    mut listeners: Listeners,
) -> Result<Option<(Loaded, Api, Listeners)>> {
    let k = config
        .kubernetes
        .as_ref()
        .context("--kubernetes without its options")?;
    let health = Arc::new(Health::new(HEALTH_TIMEOUT));
    let mut servers = JoinSet::new();
    if let Some(listener) = listeners.healthz.take() {
        let h = health.clone();
        servers.spawn(async move {
            if let Err(e) = health::serve(listener, h).await {
                warn!("kubernetes: /healthz server stopped: {e:#}");
            }
        });
        info!(
            "kubernetes: /healthz and /livez on http://{}",
            k.healthz_addr
        );
    }
    let node = &k.api.node_name;
    let watch = Arc::new(Watch::start(client.clone(), node));
    info!(
        "kubernetes: listing Services, EndpointSlices and Node {node}; nothing is published \
         before all three are listed"
    );
    let waiting_since = Instant::now();
    while !watch.listed() {
        tokio::select! {
            why = stopped.wait() => {
                info!("{why} while waiting for the API server: nothing was published");
                return Ok(None);
            }
            () = watch.changed() => {}
            () = tokio::time::sleep(WAITING_LOG) => {
                info!(
                    "kubernetes: still waiting for the first lists after {:.0} s ({})",
                    waiting_since.elapsed().as_secs_f64(),
                    watch.describe_pending()
                );
            }
        }
    }
    let sources = config.sources.clone();
    let snapshot = watch.snapshot();
    let loaded = tokio::task::spawn_blocking(move || sources.load_with_api(None, &snapshot))
        .await?
        .context("the first sync")?;
    log_loaded(&loaded);
    info!(
        "kubernetes: first sync after {:.2} s: {} units of {} Services from the API server",
        waiting_since.elapsed().as_secs_f64(),
        loaded.desired.services.len(),
        watch.snapshot().services.len()
    );
    let api = Api {
        reporter: Reporter::new(client, node),
        watch,
        health,
        sync: Arc::new(SyncStatus::default()),
        min_sync_period: k.api.min_sync_period,
        servers,
    };
    Ok(Some((loaded, api, listeners)))
}

impl Api {
    /// What the metrics say about the API source.
    pub(super) fn status(&self) -> kubeapi::Status {
        kubeapi::Status {
            sync: self.sync.clone(),
            watch: self.watch.state.clone(),
            health: self.health.clone(),
        }
    }

    /// The reloader's part, and the loop that drives it.
    pub(super) fn source(self, dataplane: Arc<Mutex<Dataplane>>) -> (ApiSource, Follower) {
        let source = ApiSource::new(
            self.watch.clone(),
            Some(self.reporter),
            self.health.clone(),
            self.sync.clone(),
        );
        let follower = Follower {
            watch: self.watch,
            health: self.health,
            min_sync_period: self.min_sync_period,
            dataplane,
            _servers: self.servers,
        };
        (source, follower)
    }
}

/// Applies the API server's changes as they come, in batches.
pub(super) struct Follower {
    watch: Arc<Watch>,
    health: Arc<Health>,
    min_sync_period: Duration,
    dataplane: Arc<Mutex<Dataplane>>,
    _servers: JoinSet<()>,
}

impl Follower {
    /// Runs until dropped (or the runtime fails a sync's thread).
    pub(super) async fn run(self, reloader: Arc<Mutex<Reloader>>) -> Result<()> {
        // The start's sync has just been applied.
        let mut last = Instant::now();
        let mut failures = 0u32;
        loop {
            self.watch.changed().await;
            self.health.queued();
            // Changes that come during the wait join this batch.
            let wait = self.min_sync_period.saturating_sub(last.elapsed());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            last = Instant::now();
            let (r, dp) = (reloader.clone(), self.dataplane.clone());
            let result = tokio::task::spawn_blocking(move || lock(&r).sync(&dp)).await?;
            match result {
                Ok(services) => {
                    failures = 0;
                    debug!(
                        "kubernetes: synced {services} units in {:.1} ms",
                        last.elapsed().as_secs_f64() * 1e3
                    );
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let retry = self
                        .min_sync_period
                        .max(Duration::from_millis(100))
                        .saturating_mul(1 << failures.min(8))
                        .min(MAX_RETRY);
                    warn!(
                        "kubernetes: sync failed, the last good state stays in force: {e:#}; \
                         trying again in {:.1} s",
                        retry.as_secs_f64()
                    );
                    tokio::time::sleep(retry).await;
                    self.watch.poke();
                }
            }
        }
    }
}
