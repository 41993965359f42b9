//! Programming the node for each mode: portmap's daemon, kube-proxy's
//! iptables and nftables layouts, or nothing (plain forwarding).

use std::{
    ffi::OsString,
    fs::File,
    io::{Read as _, Write as _},
    net::{SocketAddrV4, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use portmap_testkit::{
    netns::Netns,
    process::{self, Timed, run_timed},
    signals,
};

use super::{
    nftrules,
    rules::{self, Services},
    topo::{self, BACKEND_PORT, NODE_CLIENT_IF, Topology},
};

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Portmap,
    Iptables,
    Nftables,
    Forward,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Portmap => "portmap",
            Mode::Iptables => "iptables",
            Mode::Nftables => "nftables",
            Mode::Forward => "forward",
        }
    }
}

/// The modes in the order repetition `rep` measures them: each repetition
/// starts one mode later. The first cell of a repetition follows the
/// footprint measurements (a daemon with 10,000 Services just torn down,
/// its namespace still being freed in the background); a mode always in
/// that place would carry whatever it costs in every repetition.
pub fn rotated(modes: &[Mode], rep: u32) -> Vec<Mode> {
    let mut order = modes.to_vec();
    if !order.is_empty() {
        let by = rep as usize % order.len();
        order.rotate_left(by);
    }
    order
}

const METRICS_ADDR: &str = "127.0.0.1:9640";
const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(120);
/// Loading a whole ruleset: long, but it must finish.
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(900);
/// A one-Service change that takes longer than this is reported as such.
pub const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);

/// What `portmap run` of this build supports.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Features {
    pub manifests: bool,
    pub backend_iface: bool,
    pub bpffs_dir: bool,
    /// `--no-socket-lb`: the benchmark's client is another host, whose
    /// connections must cross the node's XDP, not be balanced at the socket.
    #[serde(default)]
    pub no_socket_lb: bool,
}

impl Features {
    pub fn detect(exe: &Path) -> Result<Self> {
        let out = Command::new(exe)
            .args(["run", "--help"])
            .output()
            .with_context(|| format!("running {} run --help", exe.display()))?;
        let help = String::from_utf8_lossy(&out.stdout);
        Ok(Self {
            manifests: help.contains("--manifests"),
            backend_iface: help.contains("--backend-iface"),
            bpffs_dir: help.contains("--bpffs-dir"),
            no_socket_lb: help.contains("--no-socket-lb"),
        })
    }
}

/// Where a cell's backends are: on the node (behind its own veths), or on
/// another node, reached through a router, so that every mode must
/// masquerade (see `remote`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backends {
    Here,
    Remote,
}

/// What every cell needs to know.
pub struct Env {
    pub exe: PathBuf,
    pub scratch: PathBuf,
    pub features: Features,
    /// Pass `--backend-iface` (the XDP fast path) to portmap.
    pub fast_path: bool,
    pub iptables_restore: PathBuf,
    pub nft: PathBuf,
}

/// A running `portmap run`, stopped on drop.
pub struct Daemon {
    child: Option<Child>,
    log: PathBuf,
    pins: Option<PathBuf>,
}

impl Daemon {
    /// Asks the daemon to re-read its manifests now (SIGHUP).
    pub fn reload(&self) -> Result<()> {
        let Some(child) = &self.child else {
            bail!("portmap run is not running");
        };
        // SAFETY: our own child, not yet waited for, so the pid is still ours.
        if unsafe { libc::kill(child.id() as i32, libc::SIGHUP) } != 0 {
            return Err(std::io::Error::last_os_error()).context("SIGHUP to portmap run");
        }
        Ok(())
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// SIGTERM, then SIGKILL after 10 s.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let (status, killed) = process::stop(&mut child, Duration::from_secs(10))?;
        if killed {
            bail!("portmap run did not stop within 10 s of SIGTERM");
        }
        if let Some(dir) = self.pins.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
        if !status.success() {
            bail!("portmap run exited with {status}:\n{}", self.log_tail());
        }
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.stop();
        if let Some(dir) = self.pins.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A mode programmed into a topology.
pub struct Programmed {
    pub mode: Mode,
    /// Where the client sends (UDP load and TCP connections).
    pub target: SocketAddrV4,
    /// Where iperf3 connects: the bulk Service (one endpoint, backend 0).
    pub bulk_target: Option<SocketAddrV4>,
    /// Where the HTTP requests go, in turn: the target Service, or in
    /// `forward` mode every backend (the Service would spread them too).
    pub http_targets: Vec<SocketAddrV4>,
    /// iptables and nftables: how long loading the whole ruleset took.
    pub load_time: Option<Duration>,
    pub daemon: Option<Daemon>,
    /// `forward` towards remote backends: the static masquerade's table.
    static_masq: bool,
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    File::create(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}

/// `iptables-restore` as kube-proxy runs it.
fn iptables_restore(env: &Env, noflush: bool) -> Command {
    let mut c = Command::new(&env.iptables_restore);
    c.args(["-w", "5"]);
    if noflush {
        c.args(["--noflush", "--counters"]);
    }
    c
}

fn nft_file(env: &Env) -> Command {
    let mut c = Command::new(&env.nft);
    c.arg("-f").arg("-");
    c
}

/// Runs a rules tool in the node namespace with `text` as its input.
fn load(
    env: &Env,
    topo: &Topology,
    cmd: &mut Command,
    text: &str,
    name: &str,
    timeout: Duration,
) -> Result<Timed> {
    let path = env.scratch.join(format!("{name}.rules"));
    write_file(&path, text)?;
    let timed = run_timed(&topo.node, cmd, Some(&path), timeout, &env.scratch);
    let _ = std::fs::remove_file(&path);
    timed
}

pub fn program(
    mode: Mode,
    topo: &Topology,
    services: &Services,
    env: &Env,
    cell: &str,
    backends: Backends,
) -> Result<Programmed> {
    let mut programmed = Programmed {
        mode,
        target: services.target_addr(),
        bulk_target: services.bulk_addr(),
        http_targets: vec![services.target_addr()],
        load_time: None,
        daemon: None,
        static_masq: false,
    };
    match (mode, backends) {
        (Mode::Portmap, Backends::Here) => {
            programmed.daemon = Some(start_daemon(topo, services, env, cell)?);
        }
        (Mode::Portmap, Backends::Remote) => {
            programmed.daemon = Some(super::remote::start_daemon(topo, services, env, cell)?);
        }
        (Mode::Iptables, _) => {
            // The whole nat table in one plain restore: the fastest way to
            // install it. (kube-proxy's `--noflush` grows much worse than
            // linearly on the nf_tables backend; the resync below shows it.)
            let text = match backends {
                Backends::Here => rules::iptables(services, &[]),
                Backends::Remote => rules::iptables_masq(services),
            };
            let timed = load(
                env,
                topo,
                &mut iptables_restore(env, false),
                &text,
                cell,
                LOAD_TIMEOUT,
            )?;
            programmed.load_time = Some(timed.check("iptables-restore of the whole ruleset")?);
        }
        (Mode::Nftables, _) => {
            let text = match backends {
                Backends::Here => nftrules::nftables(services),
                Backends::Remote => nftrules::nftables_masq(services),
            };
            let timed = load(env, topo, &mut nft_file(env), &text, cell, LOAD_TIMEOUT)?;
            programmed.load_time = Some(timed.check("nft -f of the whole ruleset")?);
        }
        (Mode::Forward, _) => {
            let backend = |i| SocketAddrV4::new(topo::backend_ip(i), BACKEND_PORT);
            programmed.target = backend(0);
            programmed.bulk_target = programmed.bulk_target.map(|_| backend(0));
            programmed.http_targets = (0..topo::BACKENDS).map(backend).collect();
            if backends == Backends::Remote {
                let text = nftrules::static_masquerade(super::remote::NODE_ROUTER_IF);
                load(env, topo, &mut nft_file(env), &text, cell, LOAD_TIMEOUT)?
                    .check("nft -f of the static masquerade")?;
                programmed.static_masq = true;
            }
        }
    }
    Ok(programmed)
}

/// Times of one Service changed; `None` where it did not finish in time.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct ChangeTimes {
    pub full_s: Option<f64>,
    pub partial_s: Option<f64>,
}

fn seconds(timed: &Timed, what: &str) -> Result<Option<f64>> {
    if timed.timed_out() {
        return Ok(None);
    }
    Ok(Some(timed.check(what)?.as_secs_f64()))
}

/// Changes one endpoint of one Service the way the mode's kube-proxy does,
/// and times it. `skip_full`: a full iptables resync already timed out at a
/// smaller size.
pub fn change(
    p: &Programmed,
    topo: &Topology,
    services: &Services,
    env: &Env,
    cell: &str,
    skip_full: bool,
) -> Result<ChangeTimes> {
    let mut times = ChangeTimes::default();
    match p.mode {
        Mode::Iptables => {
            let change = rules::iptables_change(services);
            let mut ipt = iptables_restore(env, true);
            let partial = load(env, topo, &mut ipt, &change.partial, cell, CHANGE_TIMEOUT)?;
            times.partial_s = seconds(&partial, "iptables-restore of one Service")?;
            if !skip_full {
                let mut ipt = iptables_restore(env, true);
                let full = load(env, topo, &mut ipt, &change.full, cell, CHANGE_TIMEOUT)?;
                times.full_s = seconds(&full, "iptables-restore resync")?;
            }
        }
        Mode::Nftables => {
            let text = nftrules::nftables_change(services);
            let timed = load(env, topo, &mut nft_file(env), &text, cell, CHANGE_TIMEOUT)?;
            times.partial_s = seconds(&timed, "nft -f of one Service")?;
        }
        Mode::Portmap | Mode::Forward => {}
    }
    Ok(times)
}

/// Removes what `program` made, synchronously, so the kernel's cleanup does
/// not spill into the next measurement.
pub fn teardown(p: Programmed, topo: &Topology, env: &Env, cell: &str) -> Result<()> {
    match p.mode {
        Mode::Portmap => {
            if let Some(mut d) = p.daemon {
                d.stop()?;
            }
        }
        Mode::Iptables => {
            let mut ipt = iptables_restore(env, false);
            load(env, topo, &mut ipt, "*nat\nCOMMIT\n", cell, LOAD_TIMEOUT)?
                .check("flushing the nat table")?;
        }
        Mode::Nftables => {
            load(
                env,
                topo,
                &mut nft_file(env),
                &nftrules::nftables_teardown(),
                cell,
                LOAD_TIMEOUT,
            )?
            .check("deleting the kube-proxy table")?;
        }
        Mode::Forward => {
            if p.static_masq {
                let text = nftrules::static_masquerade_teardown();
                load(env, topo, &mut nft_file(env), &text, cell, LOAD_TIMEOUT)?
                    .check("deleting the static masquerade")?;
            }
        }
    }
    Ok(())
}

fn start_daemon(topo: &Topology, services: &Services, env: &Env, cell: &str) -> Result<Daemon> {
    let mut publish: Vec<OsString> = Vec::new();
    if env.features.manifests {
        let path = env.scratch.join(format!("{cell}.yaml"));
        write_file(&path, &services.manifests())?;
        publish.extend(["--manifests".into(), path.into()]);
    } else {
        // Until `--manifests` exists: the target Service only, one backend.
        let t = services.target_addr();
        let backend = topo::backend_ip(0);
        for suffix in ["", "/udp"] {
            publish.extend([
                "-p".into(),
                format!("{t}:{backend}:{BACKEND_PORT}{suffix}").into(),
            ]);
        }
        if let Some(b) = services.bulk_addr() {
            publish.extend(["-p".into(), format!("{b}:{backend}:{BACKEND_PORT}").into()]);
        }
    }
    start_portmap(topo, env, cell, services.all().count() as u32, &publish)
}

/// Starts `portmap run` in the node namespace with `publish` (`-p` specs or
/// `--manifests`), map sizes for `service_count` Services, and waits until
/// it serves metrics.
pub fn start_portmap(
    topo: &Topology,
    env: &Env,
    cell: &str,
    service_count: u32,
    publish: &[OsString],
) -> Result<Daemon> {
    let mut args: Vec<OsString> = vec!["--iface".into(), NODE_CLIENT_IF.into()];
    if env.fast_path && env.features.backend_iface {
        for i in 0..topo::BACKENDS {
            args.extend(["--backend-iface".into(), topo::node_backend_if(i).into()]);
        }
    }
    args.extend_from_slice(publish);
    start_portmap_with(&topo.node, env, cell, service_count, &args)
}

/// Starts `portmap run ARGS` (interfaces, what to publish, and any other
/// flag) in `node` as [`start_portmap`] does.
pub fn start_portmap_with(
    node: &Netns,
    env: &Env,
    cell: &str,
    service_count: u32,
    args: &[OsString],
) -> Result<Daemon> {
    let limits = super::control::limits(service_count);
    let mut cmd = Command::new(&env.exe);
    cmd.arg("run");
    cmd.args(args);
    let pins = env.features.bpffs_dir.then(|| {
        PathBuf::from(format!(
            "/sys/fs/bpf/portmap-bench-{}-{cell}",
            std::process::id()
        ))
    });
    if env.features.no_socket_lb {
        cmd.arg("--no-socket-lb");
    }
    if let Some(dir) = &pins {
        cmd.arg("--bpffs-dir").arg(dir);
    }
    cmd.args(["--metrics-addr", METRICS_ADDR])
        .arg("--control-socket")
        .arg(env.scratch.join(format!("{cell}.sock")))
        .arg("--max-frontends")
        .arg(limits.frontends.to_string())
        .arg("--max-backends")
        .arg(limits.backends.to_string());
    let log = env.scratch.join(format!("{cell}.log"));
    let log_file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .env("RUST_LOG", "info");
    let child = node
        .enter(|| cmd.spawn())?
        .context("starting portmap run")?;
    let mut daemon = Daemon {
        child: Some(child),
        log,
        pins,
    };
    let start = Instant::now();
    loop {
        signals::check()?;
        if let Some(child) = daemon.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            daemon.child = None;
            bail!("portmap run exited with {status}:\n{}", daemon.log_tail());
        }
        if metrics_ready(node) {
            return Ok(daemon);
        }
        if start.elapsed() > DAEMON_START_TIMEOUT {
            bail!(
                "portmap run did not serve metrics within {DAEMON_START_TIMEOUT:?}:\n{}",
                daemon.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether the daemon answers `GET /metrics` (it serves only once attached).
fn metrics_ready(node: &Netns) -> bool {
    scrape(node).is_ok()
}

/// The daemon's `/metrics` text, fetched from inside the node namespace.
pub fn scrape(node: &Netns) -> Result<String> {
    let get = || -> std::io::Result<String> {
        let addr = METRICS_ADDR.parse().map_err(std::io::Error::other)?;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut response = String::new();
        s.read_to_string(&mut response)?;
        Ok(response)
    };
    let response = node.enter(get)?.context("GET /metrics")?;
    match response.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.get(9..12) == Some("200") => {
            Ok(body.to_string())
        }
        _ => bail!(
            "GET /metrics: {}",
            response.lines().next().unwrap_or("no answer")
        ),
    }
}

/// The samples of metric `name` in Prometheus text: each one's label set
/// (`k="v",...`, without braces) and value.
pub fn series<'a>(text: &'a str, name: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
    text.lines().filter_map(move |line| {
        let (series, value) = line.rsplit_once(' ')?;
        let set = match series.strip_prefix(name)? {
            "" => "",
            rest => rest.strip_prefix('{')?.strip_suffix('}')?,
        };
        Some((set, value.parse().ok()?))
    })
}

/// The value of label `key` in a label set from [`series`].
pub fn label<'a>(set: &'a str, key: &str) -> Option<&'a str> {
    set.split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.trim_matches('"'))
    })
}

/// The value of the sample `name{labels}` in Prometheus text (labels given
/// must all match; others may be present).
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    series(text, name).find_map(|(set, value)| {
        labels
            .iter()
            .all(|(k, v)| label(set, k) == Some(*v))
            .then_some(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn each_repetition_starts_one_mode_later() {
        let modes = [Mode::Portmap, Mode::Iptables, Mode::Nftables, Mode::Forward];
        let firsts: Vec<Mode> = (0..5).map(|rep| rotated(&modes, rep)[0]).collect();
        assert_eq!(
            firsts,
            [
                Mode::Portmap,
                Mode::Iptables,
                Mode::Nftables,
                Mode::Forward,
                Mode::Portmap
            ]
        );
        for rep in 0..4 {
            let order = rotated(&modes, rep);
            assert_eq!(order.len(), modes.len());
            assert!(modes.iter().all(|m| order.contains(m)), "{rep}");
        }
        assert!(rotated(&[], 3).is_empty());
    }
}
