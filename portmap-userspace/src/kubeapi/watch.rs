//! Reflectors for Services, EndpointSlices and this node's Node object,
//! each fed by `kube::runtime::watcher` with kube's default backoff
//! (0.8 s doubling to 30 s, with jitter, as client-go's reflector; a prompt
//! relist after 410 Gone), and what
//! they have seen: whether each has listed once, its errors and relists.

use std::{
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client,
    runtime::{
        WatchStreamExt as _,
        reflector::{self, Store},
        utils::Backoff as _,
        watcher,
    },
};
use log::{info, warn};
use portmap_testkit::lock;
use tokio::{sync::Notify, task::JoinSet};

use super::{PROXY_SELECTOR, Snapshot};

/// What is watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Services,
    EndpointSlices,
    Node,
}

impl Resource {
    pub const ALL: [Resource; 3] = [Resource::Services, Resource::EndpointSlices, Resource::Node];

    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Services => "services",
            Resource::EndpointSlices => "endpointslices",
            Resource::Node => "node",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one watcher has seen.
#[derive(Debug, Default)]
struct Seen {
    /// A complete list has been stored (at least once).
    listed: AtomicBool,
    /// Lists started after the first (410 Gone, errors).
    relists: AtomicU64,
    errors: AtomicU64,
    /// The last error and when, while it is the latest thing that happened.
    last_error: Mutex<Option<(Instant, String)>>,
}

/// What the watchers have seen, for the log, the metrics and the health
/// checks.
#[derive(Debug, Default)]
pub struct WatchState {
    seen: [Seen; 3],
}

impl WatchState {
    /// Whether every resource has been listed once.
    pub fn listed(&self) -> bool {
        self.seen.iter().all(|s| s.listed.load(Ordering::Acquire))
    }

    pub fn relists(&self, r: Resource) -> u64 {
        self.seen[r.index()].relists.load(Ordering::Relaxed)
    }

    pub fn errors(&self, r: Resource) -> u64 {
        self.seen[r.index()].errors.load(Ordering::Relaxed)
    }

    /// The latest error of a resource whose watch has not recovered since.
    pub fn last_error(&self, r: Resource) -> Option<String> {
        lock(&self.seen[r.index()].last_error)
            .as_ref()
            .map(|(_, e)| e.clone())
    }
}

/// The reflectors and the tasks that feed them; dropping it stops them.
pub struct Watch {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    node: Store<Node>,
    changed: Arc<Notify>,
    pub state: Arc<WatchState>,
    _tasks: JoinSet<()>,
}

impl Watch {
    /// Starts watching (nothing is awaited: the first lists arrive in the
    /// background; see [`Watch::listed`]).
    pub fn start(client: Client, node_name: &str) -> Self {
        let changed = Arc::new(Notify::new());
        let state = Arc::new(WatchState::default());
        let mut tasks = JoinSet::new();
        let selector = watcher::Config::default().labels(PROXY_SELECTOR);
        let services = follow(
            &mut tasks,
            Api::<Service>::all(client.clone()),
            selector.clone(),
            Resource::Services,
            &changed,
            &state,
        );
        let slices = follow(
            &mut tasks,
            Api::<EndpointSlice>::all(client.clone()),
            selector,
            Resource::EndpointSlices,
            &changed,
            &state,
        );
        let node = follow(
            &mut tasks,
            Api::<Node>::all(client),
            watcher::Config::default().fields(&format!("metadata.name={node_name}")),
            Resource::Node,
            &changed,
            &state,
        );
        Watch {
            services,
            slices,
            node,
            changed,
            state,
            _tasks: tasks,
        }
    }

    /// Waits until something changed since the last call (changes that
    /// come meanwhile are one wake-up: a batch).
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// Wakes [`Watch::changed`] as a change would (to retry a failed sync).
    pub fn poke(&self) {
        self.changed.notify_one();
    }

    pub fn listed(&self) -> bool {
        self.state.listed()
    }

    /// What has not been listed yet, with its last error: for the log.
    pub fn describe_pending(&self) -> String {
        let pending: Vec<String> = Resource::ALL
            .iter()
            .filter(|r| !self.state.seen[r.index()].listed.load(Ordering::Acquire))
            .map(|r| match self.state.last_error(*r) {
                Some(e) => format!("{r}: {e}"),
                None => format!("{r}: no answer yet"),
            })
            .collect();
        pending.join("; ")
    }

    /// The Service `NAMESPACE/NAME`, as the reflector holds it.
    pub fn service(&self, id: &str) -> Option<Arc<Service>> {
        let (namespace, name) = id.split_once('/')?;
        self.services
            .get(&reflector::ObjectRef::new(name).within(namespace))
    }

    /// What the reflectors hold now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            services: self.services.state(),
            slices: self.slices.state(),
            node: self.node.state().into_iter().next(),
        }
    }
}

/// Spawns a watcher feeding a reflector; returns the reflector's store.
fn follow<K>(
    tasks: &mut JoinSet<()>,
    api: Api<K>,
    config: watcher::Config,
    what: Resource,
    changed: &Arc<Notify>,
    state: &Arc<WatchState>,
) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let expired = Arc::new(AtomicBool::new(false));
    let seen_expired = expired.clone();
    let stream = watcher(api, config)
        .map(move |event| {
            // Seen before the backoff is: the next delay is short.
            if matches!(&event, Err(watcher::Error::WatchError(s)) if s.code == 410) {
                seen_expired.store(true, Ordering::Relaxed);
            }
            event
        })
        .backoff(Backoff::new(expired))
        .reflect(writer);
    let changed = changed.clone();
    let state = state.clone();
    tasks.spawn(async move {
        let seen = &state.seen[what.index()];
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Init) => {
                    if seen.listed.load(Ordering::Acquire) {
                        seen.relists.fetch_add(1, Ordering::Relaxed);
                        info!(
                            "kubernetes: relisting {what}; the last list stays in force meanwhile"
                        );
                    }
                }
                Ok(watcher::Event::InitApply(_)) => {}
                Ok(watcher::Event::InitDone) => {
                    recovered(seen, what);
                    seen.listed.store(true, Ordering::Release);
                    changed.notify_one();
                }
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {
                    recovered(seen, what);
                    changed.notify_one();
                }
                Err(e) => {
                    seen.errors.fetch_add(1, Ordering::Relaxed);
                    let text = describe(&e);
                    let mut last = lock(&seen.last_error);
                    // Said once per kind of trouble, not at every retry.
                    if last.as_ref().is_none_or(|(_, t)| *t != text) {
                        warn!(
                            "kubernetes: watching {what}: {text}; retrying with backoff, \
                             what was last listed stays in force"
                        );
                    }
                    *last = Some((Instant::now(), text));
                }
            }
        }
    });
    reader
}

/// kube's default backoff (0.8 s doubling to 30 s, with jitter, reset after
/// 120 s without errors), except after 410 Gone: the API server answers,
/// the resourceVersion is merely too old, so the list comes at once and the
/// backoff starts over (an API server back from an outage would otherwise
/// be listed from only after the delay the outage grew, up to 30 s).
struct Backoff {
    inner: watcher::DefaultBackoff,
    expired: Arc<AtomicBool>,
}

impl Backoff {
    fn new(expired: Arc<AtomicBool>) -> Self {
        Backoff {
            inner: watcher::DefaultBackoff::default(),
            expired,
        }
    }
}

impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.expired.swap(false, Ordering::Relaxed) {
            self.inner.reset();
            return Some(EXPIRED_RELIST_DELAY);
        }
        self.inner.next()
    }
}

impl kube::runtime::utils::Backoff for Backoff {
    fn reset(&mut self) {
        self.inner.reset();
    }
}

/// The wait before listing again after 410 Gone.
const EXPIRED_RELIST_DELAY: Duration = Duration::from_millis(100);

/// Logs a watch's recovery once, if it had failed.
fn recovered(seen: &Seen, what: Resource) {
    if let Some((since, _)) = lock(&seen.last_error).take() {
        info!(
            "kubernetes: watching {what} again (after {:.1} s of errors)",
            since.elapsed().as_secs_f64()
        );
    }
}

/// A watcher error in a line, its causes included.
fn describe(e: &watcher::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
