//! `portmap run`: validate, load, program, attach, serve, and when told to
//! stop (SIGINT or SIGTERM for the binary, a [`Stop`] for a test) detach
//! everything.
//!
//! The daemon takes a [`Config`], its own description of what to do; the
//! command line (`crate::cli`) builds one from the flags and turns the
//! [`RunError`]s into exit statuses.

mod kube;
mod tasks;
mod validate;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result};
use log::{info, warn};
use portmap_common::abi::{DP_FAST_PATH, DatapathConfig};
use tokio::signal::unix::{Signal, SignalKind, signal};

use portmap_testkit::lock;

use self::tasks::{follow_docker, follow_interfaces, maintain, retry_unpublished};
pub use self::validate::{Input, InvalidInput};
use crate::{
    config::{Loaded, Sources},
    control,
    dataplane::{
        Attached, Dataplane, Limits, NotPublished, PinDir, Sizes, SockAttached, XdpMode,
        default_cgroup,
    },
    docker::Follower,
    kubeapi,
    locality::{self, KernelRoutes},
    metrics,
    model::{DesiredState, HostAddr},
    netlink::LinkWatch,
    node_addrs::node_addresses,
    reload::Reloader,
};

/// What `portmap run` is to do, checked by [`run`] before anything is touched.
#[derive(Clone, Debug)]
pub struct Config {
    /// Interfaces whose incoming traffic is translated.
    pub ifaces: Vec<String>,
    /// Interfaces towards backends: the fast path is on if there are any.
    pub backend_ifaces: Vec<String>,
    /// What to publish: `-p` specs, their allowed sources, manifests.
    pub sources: Sources,
    /// Where Prometheus metrics are served.
    pub metrics_addr: SocketAddr,
    /// The Unix socket `portmap list` asks.
    pub control_socket: PathBuf,
    pub xdp_mode: XdpMode,
    pub socket_lb: SocketLb,
    /// Where maps and links are pinned; a dataplane found there is adopted.
    pub bpffs_dir: PathBuf,
    /// On exit, leave the dataplane pinned and forwarding.
    pub keep_datapath: bool,
    /// Programs whose code differs from this build's, same maps (upgrade
    /// tests); 0 for this build's.
    pub datapath_variant: u32,
    pub limits: Limits,
    pub timeouts: Timeouts,
    /// The API server as a source (`--kubernetes`), and where its health
    /// checks are answered.
    pub kubernetes: Option<Kubernetes>,
}

/// `--kubernetes` and what goes with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kubernetes {
    pub api: kubeapi::Options,
    /// `/healthz` and `/livez`, as kube-proxy's `--healthz-bind-address`.
    pub healthz_addr: SocketAddr,
}

/// Where socket-level load balancing attaches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SocketLb {
    Off,
    /// The root of the unified hierarchy (mounted if it is nowhere); off
    /// with a warning if there is none.
    DefaultCgroup,
    /// This cgroup v2 directory.
    Cgroup(PathBuf),
}

/// Idle timeouts of the flows conntrack keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// A TCP flow before its first reply.
    pub tcp_syn: Duration,
    pub tcp_established: Duration,
    /// A TCP flow after a FIN or RST.
    pub tcp_closing: Duration,
    pub udp: Duration,
}

impl Config {
    fn datapath_config(&self) -> DatapathConfig {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        DatapathConfig {
            tcp_new_timeout_ns: ns(self.timeouts.tcp_syn),
            tcp_established_timeout_ns: ns(self.timeouts.tcp_established),
            tcp_closing_timeout_ns: ns(self.timeouts.tcp_closing),
            udp_timeout_ns: ns(self.timeouts.udp),
            flags: if self.backend_ifaces.is_empty() {
                0
            } else {
                DP_FAST_PATH
            },
            snat_port_min: *self.sources.masquerade.ports.start(),
            snat_port_max: *self.sources.masquerade.ports.end(),
            ..DatapathConfig::default()
        }
    }
}

/// Why [`run`] failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad input, found before anything was touched.
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// Loading, programming, attaching or serving failed.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// What ends a running daemon.
#[derive(Debug)]
pub enum Until {
    /// SIGINT or SIGTERM (the `portmap` binary).
    Signal,
    /// [`Stop::stop`] (a test, a program that embeds the daemon).
    Stopped(Stop),
}

/// Tells a daemon started with [`Until::Stopped`] to stop, as SIGTERM does.
#[derive(Clone, Debug, Default)]
pub struct Stop(Arc<tokio::sync::Notify>);

impl Stop {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stops the daemon; if it is still starting, it stops once started.
    pub fn stop(&self) {
        self.0.notify_one();
    }
}

/// An [`Until`] whose signal handlers are installed.
enum Armed {
    Signals { term: Signal, int: Signal },
    Stop(Stop),
}

impl Until {
    /// Installs what the daemon waits for. For signals, before anything
    /// answers: once metrics are served, a SIGTERM must detach, not kill the
    /// process with the signal's default action.
    fn arm(self) -> Result<Armed> {
        Ok(match self {
            Until::Signal => Armed::Signals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            },
            Until::Stopped(stop) => Armed::Stop(stop),
        })
    }
}

impl Armed {
    /// Waits to be told to stop; says by what.
    async fn wait(&mut self) -> &'static str {
        match self {
            Armed::Signals { term, int } => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            },
            Armed::Stop(stop) => {
                stop.0.notified().await;
                "asked to stop"
            }
        }
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

/// SNATed flows' replies come back on the interface towards their backends,
/// and only programs on an `--iface` turn them around: say so when that
/// interface is not one.
fn warn_about_snat_reply_interfaces(desired: &DesiredState, ifaces: &[String]) {
    for (oif, backend) in locality::snat_reply_interfaces(desired, &mut KernelRoutes) {
        let name = crate::dataplane::interface_name(oif).unwrap_or_else(|| format!("index {oif}"));
        if !ifaces.contains(&name) {
            warn!(
                "backend {backend} is on another node and reached through {name}, which is not an --iface: its SNATed flows' replies come back there untranslated; add --iface {name}"
            );
        }
    }
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

/// Runs the daemon until `until` says to stop, then detaches (or, with
/// `keep_datapath`, leaves the dataplane forwarding).
pub fn run(config: Config, until: Until) -> Result<(), RunError> {
    let loaded = validate::validate(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let client = match &config.kubernetes {
        Some(k) => Some(
            runtime
                .block_on(kubeapi::connect(k.api.kubeconfig.as_deref()))
                .map_err(|e| validate::kubeconfig_error(k, &e))?,
        ),
        None => {
            log_loaded(&loaded);
            None
        }
    };
    // The engine is asked before anything is touched: one that cannot be
    // reached is an error naming its address.
    let docker = match &config.sources.docker {
        Some(host) => Some(runtime.block_on(Follower::connect(host.clone()))?),
        None => None,
    };
    Ok(runtime.block_on(serve(config, until, loaded, client, docker))?)
}

fn log_loaded(loaded: &Loaded) {
    for w in &loaded.warnings {
        warn!("{w}");
    }
    for line in loaded.assignments.describe() {
        info!("{line}");
    }
}

/// The listeners, bound before anything is attached.
struct Listeners {
    metrics: tokio::net::TcpListener,
    control: tokio::net::UnixListener,
    healthz: Option<tokio::net::TcpListener>,
}

async fn serve(
    config: Config,
    until: Until,
    loaded: Loaded,
    client: Option<::kube::Client>,
    docker: Option<Follower>,
) -> Result<()> {
    // Sockets first: if one cannot be bound, nothing has been attached yet.
    let metrics = tokio::net::TcpListener::bind(config.metrics_addr)
        .await
        .with_context(|| format!("--metrics-addr {}: cannot listen", config.metrics_addr))?;
    let control = control::bind(&config.control_socket)
        .with_context(|| format!("--control-socket {}", config.control_socket.display()))?;
    let socket_path = config.control_socket.clone();
    let healthz = match &config.kubernetes {
        Some(k) => Some(
            tokio::net::TcpListener::bind(k.healthz_addr)
                .await
                .with_context(|| format!("--healthz-addr {}: cannot listen", k.healthz_addr))?,
        ),
        None => None,
    };
    let listeners = Listeners {
        metrics,
        control,
        healthz,
    };
    let result = async {
        // Armed before anything answers: a SIGTERM must detach, or end the
        // wait for the API server.
        let mut stopped = until.arm()?;
        let Some(client) = client else {
            return publish_and_wait(config, stopped, (loaded, None, docker), listeners).await;
        };
        match kube::start(&config, client, &mut stopped, listeners).await? {
            Some((loaded, api, listeners)) => {
                publish_and_wait(config, stopped, (loaded, Some(api), docker), listeners).await
            }
            None => Ok(()),
        }
    }
    .await;
    let _ = std::fs::remove_file(&socket_path);
    result
}

async fn publish_and_wait(
    config: Config,
    mut stopped: Armed,
    (loaded, api, docker): (Loaded, Option<kube::Api>, Option<Follower>),
    listeners: Listeners,
) -> Result<()> {
    // Subscribed before attaching: an interface that goes while the daemon
    // starts is seen.
    let links = LinkWatch::open().context("subscribing to network interface events")?;
    let pins = PinDir::open(&config.bpffs_dir)
        .with_context(|| format!("--bpffs-dir {}", config.bpffs_dir.display()))?;
    // The state of the sources (with the API server's first sync) and
    // Docker's containers as they are now.
    let mut reloader = Reloader::new(config.sources.clone(), loaded);
    let desired = reloader.start_with(
        docker
            .as_ref()
            .map(Follower::containers)
            .unwrap_or_default(),
    );
    let sizes = Sizes::at_start(config.limits, &desired, &pins)?;
    info!("{sizes}");
    let mut dataplane = Dataplane::load_sized(
        sizes,
        config.datapath_config(),
        pins,
        config.datapath_variant,
    )?;
    if dataplane.adopted() > 0 {
        info!(
            "adopted the dataplane pinned in {} ({} services); its flows carry on",
            config.bpffs_dir.display(),
            dataplane.adopted()
        );
    }
    let dataplane = match start(&mut dataplane, &config, &desired) {
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
    log_published(&desired, dataplane.unpublished());
    drop(desired);
    info!(
        "metrics on http://{}/metrics, control socket {}",
        config.metrics_addr,
        config.control_socket.display()
    );

    let dataplane = Arc::new(Mutex::new(dataplane));
    let mut tasks = tokio::task::JoinSet::new();
    let (source, follower, kube_status) = match api {
        Some(api) => {
            let status = api.status();
            let (source, follower) = api.source(dataplane.clone());
            (Some(source), Some(follower), Some(status))
        }
        None => (None, None, None),
    };
    reloader.started(source);
    let mut registry = metrics::registry(dataplane.clone(), reloader.status.clone());
    if let Some(status) = kube_status {
        registry.register_collector(Box::new(kubeapi::metrics::Collector(status)));
    }
    let reloader = Arc::new(Mutex::new(reloader));
    let keep = config.keep_datapath;
    tasks.spawn(metrics::serve(listeners.metrics, registry));
    tasks.spawn(control::serve(listeners.control, dataplane.clone()));
    tasks.spawn(maintain(dataplane.clone(), reloader.clone()));
    tasks.spawn(follow_interfaces(dataplane.clone(), links));
    if let Some(follower) = follower {
        tasks.spawn(follower.run(reloader.clone()));
    }
    if let Some(docker) = docker {
        let (tx, rx) = tokio::sync::watch::channel(docker.containers());
        tasks.spawn(docker.run(tx));
        tasks.spawn(follow_docker(dataplane.clone(), reloader, rx));
    }
    tasks.spawn(retry_unpublished(dataplane.clone()));

    let outcome = tokio::select! {
        why = stopped.wait() => { info!("{why}: detaching"); Ok(()) }
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
            config.bpffs_dir.display()
        );
    } else {
        info!("detached");
    }
    outcome
}

/// Programs and attaches a loaded dataplane.
fn start(dataplane: &mut Dataplane, config: &Config, desired: &DesiredState) -> Result<()> {
    let node = node_addresses().context("reading the node's addresses")?;
    dataplane.set_node_addrs(&node)?;
    // What fits is published, the rest reported and retried; only what the
    // user typed (-p) is worth refusing to start for.
    let published = dataplane.publish(desired)?;
    if !published.typed.is_empty() {
        let failed: Vec<String> = published
            .typed
            .iter()
            .map(|(key, why)| format!("{key}: {why}"))
            .collect();
        anyhow::bail!("could not publish:\n  {}", failed.join("\n  "));
    }
    warn_about_foreign_frontends(desired, &node);
    enable_forwarding(desired, &node)?;
    warn_about_snat_reply_interfaces(desired, &config.ifaces);
    let attached = dataplane.attach(&config.ifaces, &config.backend_ifaces, config.xdp_mode)?;
    for (iface, role, how) in attached {
        match how {
            Attached::Fresh(_) => info!("attached to {iface} ({})", how.describe(role)),
            Attached::Replaced => {
                info!("{iface}: replaced the programs in the pinned links (no detach)")
            }
        }
    }
    attach_sockets(dataplane, &config.socket_lb)
}

/// Says what is published, one line per frontend for the first few.
fn log_published(desired: &DesiredState, unpublished: &BTreeMap<String, NotPublished>) {
    const EACH: usize = 20;
    let published = desired
        .services
        .iter()
        .filter(|s| !unpublished.contains_key(&s.key));
    let frontends = published.flat_map(|s| s.frontends.iter().map(move |fe| (s, fe)));
    let mut count = 0usize;
    for (svc, fe) in frontends {
        if count < EACH {
            let backends: Vec<String> = svc.endpoints.iter().map(|e| e.label()).collect();
            let container = match svc.container.as_str() {
                "" => String::new(),
                name => format!(" (container {name})"),
            };
            match backends.as_slice() {
                [] => info!("published {fe}, refusing new flows{container}"),
                _ => info!("published {fe} -> {}{container}", backends.join(", ")),
            }
        }
        count += 1;
    }
    if count > EACH {
        info!(
            "... and {} more frontends published (`portmap list` shows all)",
            count - EACH
        );
    }
}

/// Socket-level load balancing on `--cgroup` (or off, `--no-socket-lb`).
fn attach_sockets(dataplane: &mut Dataplane, socket_lb: &SocketLb) -> Result<()> {
    let cgroup = match socket_lb {
        SocketLb::Off => None,
        SocketLb::Cgroup(path) => Some(path.clone()),
        SocketLb::DefaultCgroup => match default_cgroup() {
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

/// `portmap reset`: removes the dataplane pinned in `bpffs_dir`.
pub fn reset(bpffs_dir: &Path) -> Result<()> {
    if !bpffs_dir.exists() {
        println!("nothing pinned in {}", bpffs_dir.display());
        return Ok(());
    }
    let pins =
        PinDir::open(bpffs_dir).with_context(|| format!("--bpffs-dir {}", bpffs_dir.display()))?;
    pins.remove_all()?;
    println!("removed the dataplane pinned in {}", bpffs_dir.display());
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::k8s::NodeConfig;

    /// What `portmap run --iface lo` configures, nothing published.
    pub(crate) fn config() -> Config {
        Config {
            ifaces: vec!["lo".into()],
            backend_ifaces: Vec::new(),
            sources: Sources {
                specs: Vec::new(),
                allow_from: Vec::new(),
                manifests: Vec::new(),
                node: NodeConfig::default(),
                docker: None,
                masquerade: Default::default(),
            },
            metrics_addr: "127.0.0.1:9640".parse().unwrap(),
            control_socket: "/run/portmap.sock".into(),
            xdp_mode: XdpMode::default(),
            socket_lb: SocketLb::Off,
            bpffs_dir: "/sys/fs/bpf/portmap".into(),
            keep_datapath: false,
            datapath_variant: 0,
            limits: Limits {
                frontends: 16,
                backends: 16,
                conntrack: 64,
            },
            timeouts: Timeouts {
                tcp_syn: Duration::from_secs(60),
                tcp_established: Duration::from_secs(3600),
                tcp_closing: Duration::from_secs(10),
                udp: Duration::from_secs(60),
            },
            kubernetes: None,
        }
    }

    /// Bad input is refused before the runtime starts and anything is
    /// loaded, as a usage error (not a failure) naming the input.
    #[test]
    fn run_refuses_bad_input_before_touching_anything() {
        let mut c = config();
        c.ifaces = vec!["pm-no-such-if1".into()];
        let bpffs_dir = std::env::temp_dir().join(format!("pm-unused-pins-{}", std::process::id()));
        c.bpffs_dir = bpffs_dir.clone();
        match run(c, Until::Stopped(Stop::new())) {
            Err(RunError::Invalid(e)) => assert_eq!(e.input, Input::Iface),
            other => panic!("not a usage error: {other:?}"),
        }
        assert!(!bpffs_dir.exists(), "nothing is pinned");
    }

    #[test]
    fn timeouts_and_the_fast_path_reach_the_dataplane() {
        let mut c = config();
        let dp = c.datapath_config();
        assert_eq!(dp.tcp_new_timeout_ns, 60_000_000_000);
        assert_eq!(dp.tcp_established_timeout_ns, 3_600_000_000_000);
        assert_eq!(dp.tcp_closing_timeout_ns, 10_000_000_000);
        assert_eq!(dp.udp_timeout_ns, 60_000_000_000);
        assert_eq!(dp.flags & DP_FAST_PATH, 0);
        c.backend_ifaces = vec!["eth1".into()];
        assert_eq!(c.datapath_config().flags & DP_FAST_PATH, DP_FAST_PATH);
    }
}
