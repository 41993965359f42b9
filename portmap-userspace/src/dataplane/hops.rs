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
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow};
use aya::maps::{Array, MapData};

use crate::netlink::{RoutingEvents, RoutingWatch, routing_is_per_destination};

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
        epoch.set_caching(per_destination())?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("next-hops".into())
            .spawn({
                let (epoch, stop) = (epoch.clone(), stop.clone());
                move || follow(&watch, &epoch, &stop)
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

fn follow(watch: &RoutingWatch, epoch: &HopEpoch, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let result = match watch.wait(POLL_INTERVAL) {
            RoutingEvents::None => continue,
            RoutingEvents::Neighbours => epoch.bump(),
            // A route or rule may have made answers depend on the client.
            RoutingEvents::Routing => epoch.set_caching(per_destination()),
        };
        if let Err(e) = result {
            log::warn!("{e:#}; next hops are looked up per packet until the next event");
        }
    }
}

/// Whether the node's routing answers the same for every client of a
/// backend; `false` when it cannot be told.
fn per_destination() -> bool {
    routing_is_per_destination().unwrap_or_else(|e| {
        log::warn!("reading the routing rules and routes: {e}; next hops are not cached");
        false
    })
}
