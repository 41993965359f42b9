//! What runs beside the servers while the daemon is up: following the
//! interfaces and Docker's containers, and periodic upkeep (node addresses,
//! manifest reloads, conntrack garbage collection).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result};
use log::{info, warn};
use portmap_common::abi::DatapathEvent;
use portmap_testkit::lock;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};

use crate::{
    dataplane::{Dataplane, InterfaceChange, MapUsage},
    docker::Container,
    netlink::LinkWatch,
    node_addrs::node_addresses,
    reload::Reloader,
};

/// How often node addresses are re-read.
const NODE_ADDR_INTERVAL: Duration = Duration::from_secs(2);
/// How often conntrack garbage is collected (and map usage checked).
const GC_INTERVAL: Duration = Duration::from_secs(10);
/// How often watched manifest files are checked for changes.
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);
/// How often objects left unpublished for want of room are tried again
/// (room that other changes free comes back after a grace period of 2 s).
const RETRY_INTERVAL: Duration = Duration::from_secs(3);

/// Follows the interfaces on rtnetlink link events: one that goes is
/// detached, one that comes back (by name) is attached again; each logged.
pub(super) async fn follow_interfaces(
    dataplane: Arc<Mutex<Dataplane>>,
    links: LinkWatch,
) -> Result<()> {
    use tokio::io::{Interest, unix::AsyncFd};
    // SAFETY: the fd is the socket `links` owns, open until the AsyncFd (which
    // owns `links`) is dropped; `as_raw_fd` always returns it.
    let links = unsafe { AsyncFd::register_with_interest(links, Interest::READABLE) }
        .map_err(std::io::Error::from)
        .context("watching link events")?;
    loop {
        let mut ready = links.readable().await?;
        let events = ready
            .get_inner()
            .read_all()
            .context("reading link events")?;
        ready.clear_ready();
        let (names, indexes) = lock(&dataplane).followed();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        if !events.iter().any(|e| e.concerns(&names, &indexes)) {
            continue;
        }
        let dp = dataplane.clone();
        let changes = tokio::task::spawn_blocking(move || lock(&dp).follow_interfaces()).await?;
        match changes {
            Ok(changes) => changes.into_iter().for_each(log_change),
            Err(e) => warn!("following the interfaces: {e:#}"),
        }
    }
}

fn log_change(change: InterfaceChange) {
    match change {
        InterfaceChange::Detached { name, why } => warn!(
            "{name}: {why}; detached (its programs are attached again when an interface named \
             {name} appears)"
        ),
        InterfaceChange::Attached {
            name,
            role,
            ifindex,
            how,
        } => info!(
            "{name}: the interface is there (index {ifindex}); attached ({})",
            how.describe(role)
        ),
        InterfaceChange::Failed { name, error } => warn!(
            "{name}: the interface is there but attaching failed: {error:#}; retried at its next \
             change"
        ),
    }
}

/// Applies the ports of Docker's containers each time the follower sees
/// them change (a burst of changes is applied once, as it stands at the end).
pub(super) async fn follow_docker(
    dataplane: Arc<Mutex<Dataplane>>,
    reloader: Arc<Mutex<Reloader>>,
    mut containers: watch::Receiver<Vec<Container>>,
) -> Result<()> {
    loop {
        containers
            .changed()
            .await
            .context("the Docker follower stopped")?;
        let now = containers.borrow_and_update().clone();
        let (dp, reloader) = (dataplane.clone(), reloader.clone());
        tokio::task::spawn_blocking(move || lock(&reloader).containers_changed(now, &dp)).await?;
    }
}

/// Keeps node addresses current, reloads changed manifests (and on SIGHUP),
/// and collects conntrack garbage, warning when a map runs full.
pub(super) async fn maintain(
    dataplane: Arc<Mutex<Dataplane>>,
    reloader: Arc<Mutex<Reloader>>,
) -> Result<()> {
    let mut sighup = signal(SignalKind::hangup())?;
    let mut reload_tick = tokio::time::interval(RELOAD_INTERVAL);
    let mut addr_tick = tokio::time::interval(NODE_ADDR_INTERVAL);
    // The first walk after one interval: the conntrack gauge appears once it
    // has been measured, not as a 0 taken before any traffic.
    let mut gc_tick =
        tokio::time::interval_at(tokio::time::Instant::now() + GC_INTERVAL, GC_INTERVAL);
    // New flows refused for want of a SNAT port, as last seen.
    let mut snat_refused = 0u64;
    loop {
        let dp = dataplane.clone();
        tokio::select! {
            _ = sighup.recv() => {
                info!("SIGHUP: reloading");
                let reloader = reloader.clone();
                tokio::task::spawn_blocking(move || lock(&reloader).poll(&dp, true)).await?;
            }
            _ = reload_tick.tick() => {
                let reloader = reloader.clone();
                if lock(&reloader).watches_files() {
                    tokio::task::spawn_blocking(move || lock(&reloader).poll(&dp, false)).await?;
                }
            }
            _ = addr_tick.tick() => {
                let r = tokio::task::spawn_blocking(move || {
                    let addrs = node_addresses()?;
                    lock(&dp).set_node_addrs(&addrs)
                })
                .await?;
                match r {
                    Ok((added, removed)) => {
                        for ip in added {
                            info!("node address {ip} added");
                        }
                        for ip in removed {
                            info!("node address {ip} removed");
                        }
                    }
                    Err(e) => warn!("refreshing node addresses: {e:#}"),
                }
            }
            _ = gc_tick.tick() => {
                let r = tokio::task::spawn_blocking(move || {
                    let mut dp = lock(&dp);
                    let report = dp.collect_garbage()?;
                    let refused = dp.event_total(DatapathEvent::SnatExhausted)?;
                    Ok::<_, anyhow::Error>((report, dp.map_usage(), refused))
                })
                .await?;
                match r {
                    Ok((report, usage, refused)) => {
                        if refused > snat_refused {
                            warn!(
                                "{} new flows to backends on other nodes refused since the last check: no free SNAT port (--snat-port-range; {} ports in use); counted as event=\"snat_exhausted\" in portmap_datapath_events_total",
                                refused - snat_refused,
                                report.snat_scanned - report.snat_removed
                            );
                        }
                        snat_refused = refused;
                        if report.removed > 0 {
                            log::debug!("conntrack: removed {} of {} entries", report.removed, report.scanned);
                        }
                        if report.snat_removed > 0 {
                            log::debug!("SNAT: freed {} of {} ports", report.snat_removed, report.snat_scanned);
                        }
                        warn_if_full(&usage);
                    }
                    Err(e) => warn!("conntrack garbage collection: {e:#}"),
                }
            }
        }
    }
}

/// Says so when a map is at 90 % or more: conntrack then evicts the least
/// recently used flows, and other maps refuse new services or backends.
fn warn_if_full(usage: &[MapUsage]) {
    for m in usage {
        if m.capacity > 0 && m.entries * 10 >= m.capacity * 9 {
            warn!(
                "map {} is {}% full ({} of {}); raise its size flag (see --help) before it refuses or evicts",
                m.map,
                m.entries * 100 / m.capacity,
                m.entries,
                m.capacity
            );
        }
    }
}

/// Tries again, while there are any, the objects the last publish left out
/// (see `Dataplane::publish`): room appears when others go or shrink.
pub(super) async fn retry_unpublished(dataplane: Arc<Mutex<Dataplane>>) -> Result<()> {
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + RETRY_INTERVAL, RETRY_INTERVAL);
    loop {
        tick.tick().await;
        let dp = dataplane.clone();
        let retried = tokio::task::spawn_blocking(move || lock(&dp).retry_unpublished()).await?;
        if let Err(e) = retried {
            warn!("publishing what was left out: {e:#}");
        }
    }
}
