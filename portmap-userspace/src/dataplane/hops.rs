//! Keeping the next hops the dataplane caches per backend (`HOP_CACHE`, see
//! `HopSlot`) true to the node's routing state: `HOP_EPOCH` moves on at
//! every netlink route, neighbour, address, rule or link event, and is 0
//! (nothing cached) while the routing could answer differently for two
//! clients of one backend, or while no daemon follows netlink for it.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use aya::maps::{Array, MapData};

use crate::netlink::{RoutingEvents, RoutingWatch, routes_are_plain, rules_are_plain};

/// The `HOP_EPOCH` map, shared by the daemon's threads.
#[derive(Clone)]
pub struct HopEpoch {
    inner: Arc<Mutex<EpochState>>,
}

struct EpochState {
    map: Array<MapData, u32>,
    /// The last epoch written while caching was on.
    last: u32,
    caching: bool,
}

impl HopEpoch {
    pub fn new(map: Array<MapData, u32>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(EpochState {
                map,
                last: 0,
                caching: false,
            })),
        }
    }

    /// Makes every cached next hop stale.
    pub fn bump(&self) -> Result<()> {
        let mut state = self.lock()?;
        let caching = state.caching;
        state.write(caching)
    }

    /// Turns caching on or off; either way, what is cached is stale.
    pub fn set_caching(&self, on: bool) -> Result<()> {
        self.lock()?.write(on)
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, EpochState>> {
        self.inner
            .lock()
            .map_err(|_| anyhow!("the next-hop epoch's lock is poisoned"))
    }
}

impl EpochState {
    fn write(&mut self, caching: bool) -> Result<()> {
        self.caching = caching;
        let value = if caching {
            // Never 0, which means "cache nothing".
            self.last = self.last.wrapping_add(1).max(1);
            self.last
        } else {
            0
        };
        self.map
            .set(0, value, 0)
            .context("writing the next-hop epoch (HOP_EPOCH)")
    }
}

/// The thread that follows netlink for [`HopEpoch`]. Dropping it stops the
/// thread and turns caching off: programs left running without a daemon
/// (a restart, `--keep-dataplane`) look every next hop up.
pub struct HopFollower {
    epoch: HopEpoch,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// How long the thread waits for an event before it checks whether to stop.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

impl HopFollower {
    /// Subscribes to netlink, then turns caching on if the routing allows
    /// it: an event between the two is not missed.
    pub fn start(epoch: HopEpoch) -> Result<Self> {
        let watch = RoutingWatch::open().context("subscribing to netlink routing events")?;
        let routing = Routing::read();
        epoch.set_caching(routing.per_destination())?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("next-hops".into())
            .spawn({
                let (epoch, stop) = (epoch.clone(), stop.clone());
                move || follow(&watch, routing, &epoch, &stop)
            })
            .context("starting the next-hop thread")?;
        Ok(Self {
            epoch,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for HopFollower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if let Err(e) = self.epoch.set_caching(false) {
            log::warn!("{e:#}");
        }
    }
}

/// What the node's routing was last seen to be: whether answers may depend
/// on the client (see `netlink::routing`).
#[derive(Clone, Copy)]
struct Routing {
    rules_plain: bool,
    routes_plain: bool,
    /// When the routes were last dumped.
    routes_read: Instant,
    /// A route event came while the routes were not plain, and has not been
    /// followed by a dump yet.
    routes_pending: bool,
}

/// Routes are dumped again at most this often: a dump is as large as the
/// routing (a node of a BGP fabric may hold a full table), and only needed
/// to find out that a route that turned caching off is gone.
const ROUTE_DUMP_INTERVAL: Duration = Duration::from_secs(1);

impl Routing {
    fn read() -> Self {
        Self {
            rules_plain: checked("rules", rules_are_plain()),
            routes_plain: checked("routes", routes_are_plain()),
            routes_read: Instant::now(),
            routes_pending: false,
        }
    }

    fn per_destination(&self) -> bool {
        self.rules_plain && self.routes_plain
    }

    /// Follows `events`. A plain route added or removed cannot make answers
    /// depend on the client: only the epoch moves. Routes are dumped again
    /// only while some were not plain (to see whether they are gone), or
    /// after lost events.
    fn follow(&mut self, events: &RoutingEvents) {
        if events.lost {
            *self = Self::read();
            return;
        }
        if events.rules {
            self.rules_plain = checked("rules", rules_are_plain());
        }
        if events.not_plain_route_added {
            self.routes_plain = false;
        }
        if events.routes && !self.routes_plain {
            self.routes_pending = true;
        }
        if self.routes_pending && self.routes_read.elapsed() >= ROUTE_DUMP_INTERVAL {
            self.routes_plain = checked("routes", routes_are_plain());
            self.routes_read = Instant::now();
            self.routes_pending = false;
        }
    }
}

fn follow(watch: &RoutingWatch, mut routing: Routing, epoch: &HopEpoch, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let events = watch.wait(POLL_INTERVAL);
        let was = routing.per_destination();
        routing.follow(&events);
        let now = routing.per_destination();
        let result = if now != was {
            epoch.set_caching(now)
        } else if events.any {
            epoch.bump()
        } else {
            continue;
        };
        if let Err(e) = result {
            log::warn!("{e:#}; cached next hops are at most a second old until the next event");
        }
    }
}

/// `read`'s answer; `false` (no caching) when the routing cannot be read.
fn checked(what: &str, read: std::io::Result<bool>) -> bool {
    read.unwrap_or_else(|e| {
        log::warn!("reading the routing {what}: {e}; next hops are not cached meanwhile");
        false
    })
}
