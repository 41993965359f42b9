//! `portmap run`: validate, load, program, attach, serve, and on SIGINT or
//! SIGTERM detach everything.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result};
use clap::error::ErrorKind;
use log::{info, warn};
use portmap_common::abi::{DP_FAST_PATH, DatapathConfig};
use portmap_testkit::lock;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::{ResetArgs, RunArgs, usage_error},
    config::{ConfigError, Loaded, Sources},
    control,
    dataplane::{
        Attached, Dataplane, InterfaceChange, Limits, MapUsage, PinDir, SockAttached,
        default_cgroup, is_cgroup2,
    },
    k8s::NodeConfig,
    metrics,
    model::DesiredState,
    netlink::LinkWatch,
    node_addrs::{interface_exists, interface_names, node_addresses},
    reload::Reloader,
    spec::HostAddr,
};

/// How often node addresses are re-read and conntrack collected.
const NODE_ADDR_INTERVAL: Duration = Duration::from_secs(2);
const GC_INTERVAL: Duration = Duration::from_secs(10);
/// How often watched manifest files are checked for changes.
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

fn config_of(args: &RunArgs) -> DatapathConfig {
    let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    DatapathConfig {
        tcp_new_timeout_ns: ns(args.tcp_syn_timeout),
        tcp_established_timeout_ns: ns(args.tcp_timeout),
        tcp_closing_timeout_ns: ns(args.tcp_closing_timeout),
        udp_timeout_ns: ns(args.udp_timeout),
        flags: if args.backend_ifaces.is_empty() {
            0
        } else {
            DP_FAST_PATH
        },
        ..DatapathConfig::default()
    }
}

/// Checks everything about the input before anything is touched; bad input
/// exits with status 2 and a message naming the flag and the value.
fn validate(args: &RunArgs) -> (Sources, Loaded) {
    let mut seen = BTreeSet::new();
    for (flag, iface) in args.ifaces.iter().map(|i| ("--iface <IF>", i)).chain(
        args.backend_ifaces
            .iter()
            .map(|i| ("--backend-iface <IF>", i)),
    ) {
        if !interface_exists(iface) {
            usage_error(
                ErrorKind::InvalidValue,
                format!(
                    "invalid value '{iface}' for '{flag}': no such network interface (have: {})",
                    interface_names().join(", ")
                ),
            );
        }
        if !seen.insert(iface) {
            usage_error(
                ErrorKind::InvalidValue,
                format!(
                    "invalid value '{iface}' for '{flag}': given twice (an interface is either published or towards backends)"
                ),
            );
        }
    }
    if let Some(cgroup) = &args.cgroup {
        let why = if !cgroup.is_dir() {
            Some("no such directory")
        } else if !is_cgroup2(cgroup) {
            Some("not a directory of a cgroup v2 (unified) hierarchy")
        } else {
            None
        };
        if let Some(why) = why {
            usage_error(
                ErrorKind::InvalidValue,
                format!(
                    "invalid value '{}' for '--cgroup <PATH>': {why}",
                    cgroup.display()
                ),
            );
        }
    }
    for spec in &args.publish {
        let v4 = spec.1.backend.is_ipv4();
        if !args.allow_from.is_empty() && !args.allow_from.iter().any(|c| c.addr.is_ipv4() == v4) {
            warn!(
                "-p {}: no --allow-from prefix of its family, so no source may reach it",
                spec.0
            );
        }
    }
    let sources = Sources {
        specs: args.publish.clone(),
        allow_from: args.allow_from.clone(),
        manifests: args.manifests.clone(),
        node: NodeConfig {
            node_name: args.node_name.clone(),
            node_ips: args.node_ip.clone(),
            node_port_range: args.node_port_range.clone(),
            service_cidrs: args.service_cidr.clone(),
        },
    };
    match sources.load(None) {
        Ok(loaded) => (sources, loaded),
        Err(ConfigError::Manifest(e)) => usage_error(
            ErrorKind::InvalidValue,
            format!("invalid value for '--manifests <PATH>': {e}"),
        ),
        Err(ConfigError::Model(e)) => usage_error(
            ErrorKind::InvalidValue,
            format!("invalid value for '--publish <SPEC>': {e}"),
        ),
    }
}

/// Turns on IP forwarding for the families whose backends are not on this
/// node, as Docker does: translated packets must be routed to them.
fn enable_forwarding(desired: &DesiredState, node: &BTreeSet<IpAddr>) -> Result<()> {
    let remote = |v4: bool| {
        desired
            .services
            .iter()
            .flat_map(|s| &s.endpoints)
            .any(|ep| ep.addr.is_ipv4() == v4 && !node.contains(&ep.addr))
    };
    for (v4, path) in [
        (true, "/proc/sys/net/ipv4/ip_forward"),
        (false, "/proc/sys/net/ipv6/conf/all/forwarding"),
    ] {
        if !remote(v4) {
            continue;
        }
        let current = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        if current.trim() != "1" {
            std::fs::write(path, "1").with_context(|| format!("enabling forwarding in {path}"))?;
            info!("enabled forwarding ({path} = 1) to reach backends off this node");
        }
    }
    Ok(())
}

/// A `-p` spec's host address is meant to be the node's (as with Docker);
/// ClusterIPs and load balancer IPs never are, so they are not warned about.
fn warn_about_foreign_frontends(desired: &DesiredState, node: &BTreeSet<IpAddr>) {
    let published = desired.services.iter().filter(|s| s.name.is_empty());
    for fe in published.flat_map(|s| &s.frontends) {
        if let HostAddr::Ip(ip) = fe.addr
            && !node.contains(&ip)
            && !ip.is_loopback()
        {
            warn!(
                "frontend {fe}: {ip} is not an address of this node; it is translated only if routed here"
            );
        }
    }
}

pub fn run(args: RunArgs) -> Result<()> {
    let (sources, loaded) = validate(&args);
    for w in &loaded.warnings {
        warn!("{w}");
    }
    for line in loaded.assignments.describe() {
        info!("{line}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let reloader = Reloader::new(sources, &loaded);
    runtime.block_on(serve(args, loaded.desired, reloader))
}

async fn serve(args: RunArgs, desired: DesiredState, reloader: Reloader) -> Result<()> {
    // Sockets first: if one cannot be bound, nothing has been attached yet.
    let metrics_listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("--metrics-addr {}: cannot listen", args.metrics_addr))?;
    let control_listener = control::bind(&args.control_socket)
        .with_context(|| format!("--control-socket {}", args.control_socket.display()))?;
    let socket_path = args.control_socket.clone();
    let result =
        publish_and_wait(args, desired, reloader, metrics_listener, control_listener).await;
    let _ = std::fs::remove_file(&socket_path);
    result
}

async fn publish_and_wait(
    args: RunArgs,
    desired: DesiredState,
    reloader: Reloader,
    metrics_listener: tokio::net::TcpListener,
    control_listener: tokio::net::UnixListener,
) -> Result<()> {
    let limits = Limits {
        frontends: args.max_frontends,
        backends: args.max_backends,
        conntrack: args.conntrack_entries,
    };
    // Subscribed before attaching: an interface that goes while the daemon
    // starts is seen.
    let links = LinkWatch::open().context("subscribing to network interface events")?;
    let pins = PinDir::open(&args.bpffs_dir)
        .with_context(|| format!("--bpffs-dir {}", args.bpffs_dir.display()))?;
    let mut dataplane =
        Dataplane::load_pinned(limits, config_of(&args), pins, args.datapath_variant)?;
    if dataplane.adopted() > 0 {
        info!(
            "adopted the dataplane pinned in {} ({} services); its flows carry on",
            args.bpffs_dir.display(),
            dataplane.adopted()
        );
    }
    let dataplane = match start(&mut dataplane, &args, &desired) {
        Ok(()) => dataplane,
        Err(e) => {
            // A dataplane this process created goes; an adopted one stays as
            // it was found, forwarding.
            let keep = dataplane.adopted() > 0;
            if let Err(cleanup) = dataplane.shutdown(keep) {
                warn!("cleaning up after a failed start: {cleanup:#}");
            }
            return Err(e);
        }
    };
    for svc in &desired.services {
        for fe in &svc.frontends {
            let backends: Vec<String> = svc.endpoints.iter().map(|e| e.label()).collect();
            info!("published {fe} -> {}", backends.join(", "));
        }
    }
    info!(
        "metrics on http://{}/metrics, control socket {}",
        args.metrics_addr,
        args.control_socket.display()
    );

    let dataplane = Arc::new(Mutex::new(dataplane));
    let registry = metrics::registry(dataplane.clone(), reloader.status.clone());
    let keep = args.keep_datapath;
    // Before anything answers: once metrics are served, a SIGTERM must detach,
    // not kill the process with the signal's default action.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(metrics::serve(metrics_listener, registry));
    tasks.spawn(control::serve(control_listener, dataplane.clone()));
    tasks.spawn(maintain(dataplane.clone(), reloader));
    tasks.spawn(follow_interfaces(dataplane.clone(), links));

    let outcome = tokio::select! {
        _ = sigterm.recv() => { info!("SIGTERM: detaching"); Ok(()) }
        _ = sigint.recv() => { info!("SIGINT: detaching"); Ok(()) }
        Some(done) = tasks.join_next() => match done {
            Ok(Ok(())) => Err(anyhow::anyhow!("a server stopped unexpectedly")),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(e.into()),
        },
    };
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    lock(&dataplane).shutdown(keep)?;
    if keep {
        info!(
            "left the dataplane pinned in {} and forwarding",
            args.bpffs_dir.display()
        );
    } else {
        info!("detached");
    }
    outcome
}

/// Programs and attaches a loaded dataplane.
fn start(dataplane: &mut Dataplane, args: &RunArgs, desired: &DesiredState) -> Result<()> {
    let node = node_addresses().context("reading the node's addresses")?;
    dataplane.set_node_addrs(&node)?;
    let report = dataplane.apply(desired)?;
    if !report.is_complete() {
        let failed: Vec<String> = report
            .failed
            .iter()
            .map(|(key, why)| format!("{key}: {why}"))
            .collect();
        anyhow::bail!("could not publish everything:\n  {}", failed.join("\n  "));
    }
    warn_about_foreign_frontends(desired, &node);
    enable_forwarding(desired, &node)?;
    for (iface, role, how) in dataplane.attach(&args.ifaces, &args.backend_ifaces, args.xdp_mode)? {
        match how {
            Attached::Fresh(_) => info!("attached to {iface} ({})", how.describe(role)),
            Attached::Replaced => {
                info!("{iface}: replaced the programs in the pinned links (no detach)")
            }
        }
    }
    attach_sockets(dataplane, args)
}

/// Socket-level load balancing on `--cgroup` (or off, `--no-socket-lb`).
fn attach_sockets(dataplane: &mut Dataplane, args: &RunArgs) -> Result<()> {
    let cgroup = match (&args.cgroup, args.no_socket_lb) {
        (_, true) => None,
        (Some(path), false) => Some(path.clone()),
        (None, false) => match default_cgroup() {
            Ok(path) => Some(path),
            // An addition to the packet path, not a reason to publish
            // nothing (e.g. under `ip netns exec`, whose private /sys has
            // no cgroup2 and takes no mount).
            Err(e) => {
                let why = format!("no cgroup v2 hierarchy to attach to ({e:#})");
                warn!(
                    "socket-level load balancing is off: {why}. Traffic arriving on --iface is \
                     translated; localhost:PORT and this node's own connections are not. Give \
                     --cgroup PATH (a cgroup v2 directory) to turn it on, or --no-socket-lb to \
                     run without it and without this warning"
                );
                dataplane.attach_sockets(None)?;
                dataplane.socket_lb_unavailable(&why);
                return Ok(());
            }
        },
    };
    let how = dataplane.attach_sockets(cgroup.as_deref())?;
    let cgroup = cgroup.unwrap_or_default();
    match how {
        SockAttached::Off => info!("socket-level load balancing off (--no-socket-lb)"),
        SockAttached::Fresh => info!(
            "socket-level load balancing on cgroup {} (connect, sendmsg, recvmsg, getpeername)",
            cgroup.display()
        ),
        SockAttached::Replaced => info!(
            "cgroup {}: replaced the socket programs in the pinned links (no detach)",
            cgroup.display()
        ),
    }
    Ok(())
}

/// Follows the interfaces on rtnetlink link events: one that goes is
/// detached, one that comes back (by name) is attached again; each logged.
async fn follow_interfaces(dataplane: Arc<Mutex<Dataplane>>, links: LinkWatch) -> Result<()> {
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

/// `portmap reset`: removes a pinned dataplane.
pub fn reset(args: &ResetArgs) -> Result<()> {
    if !args.bpffs_dir.exists() {
        println!("nothing pinned in {}", args.bpffs_dir.display());
        return Ok(());
    }
    let pins = PinDir::open(&args.bpffs_dir)
        .with_context(|| format!("--bpffs-dir {}", args.bpffs_dir.display()))?;
    pins.remove_all()?;
    println!(
        "removed the dataplane pinned in {}",
        args.bpffs_dir.display()
    );
    Ok(())
}

/// Keeps node addresses current, reloads changed manifests (and on SIGHUP),
/// and collects conntrack garbage, warning when a map runs full.
async fn maintain(dataplane: Arc<Mutex<Dataplane>>, reloader: Reloader) -> Result<()> {
    let reloader = Arc::new(Mutex::new(reloader));
    let mut sighup = signal(SignalKind::hangup())?;
    let mut reload_tick = tokio::time::interval(RELOAD_INTERVAL);
    let mut addr_tick = tokio::time::interval(NODE_ADDR_INTERVAL);
    // The first walk after one interval: the conntrack gauge appears once it
    // has been measured, not as a 0 taken before any traffic.
    let mut gc_tick =
        tokio::time::interval_at(tokio::time::Instant::now() + GC_INTERVAL, GC_INTERVAL);
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
                    Ok::<_, anyhow::Error>((report, dp.map_usage()))
                })
                .await?;
                match r {
                    Ok((report, usage)) => {
                        if report.removed > 0 {
                            log::debug!("conntrack: removed {} of {} entries", report.removed, report.scanned);
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
