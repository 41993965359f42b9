//! What `portmap run` costs to start and to keep, on default flags: the time
//! from its start until it serves (manifests read, maps sized and
//! programmed, programs attached), its resident memory then and at its peak,
//! the kernel memory its maps take, and what one `/metrics` scrape costs.
//!
//! It runs in a namespace of its own with only `lo` (attached in generic
//! mode): no traffic, the daemon alone.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use portmap_testkit::{netns::Netns, process, signals};
use serde::{Deserialize, Serialize};

use super::{
    modes::{Env, scrape},
    rules::Services,
};

const START_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Footprint {
    pub rep: u32,
    pub services: u32,
    /// Backends (endpoints of every Service).
    pub backends: u32,
    /// From `portmap run` until it serves (the log line that says so).
    pub start_s: f64,
    /// Resident memory once serving (VmRSS).
    pub rss_mib: f64,
    /// The most it was resident at any time (VmHWM): parsing included.
    pub peak_rss_mib: f64,
    /// Kernel memory of its maps (the `memlock` of each map it holds).
    pub maps_mib: f64,
    /// One `GET /metrics` (every frontend and backend series).
    pub scrape_s: f64,
    /// Resident memory after that scrape.
    pub rss_after_scrape_mib: f64,
}

/// Starts `portmap run` with `count` Services of 10 endpoints on default
/// flags, measures, and stops it.
pub fn measure(env: &Env, rep: u32, count: u32, tag: &str) -> Result<Footprint> {
    let services = Services::new(count)?;
    let backends: usize = services.list.iter().map(|s| s.endpoints.len()).sum();
    let manifests = env.scratch.join(format!("{tag}.yaml"));
    std::fs::write(&manifests, services.manifests())
        .with_context(|| format!("writing {}", manifests.display()))?;
    let ns = Netns::new(tag)?;
    let log = env.scratch.join(format!("{tag}.log"));
    let mut daemon = Running::start(env, &ns, &manifests, &log, tag)?;
    let start_s = daemon.wait_serving(&log)?.as_secs_f64();
    let started = status(daemon.pid())?;
    let maps_mib = map_memory(daemon.pid())? / MIB;
    let scrape_start = Instant::now();
    scrape(&ns).context("scraping /metrics")?;
    let scrape_s = scrape_start.elapsed().as_secs_f64();
    let after = status(daemon.pid())?;
    daemon.stop()?;
    let _ = std::fs::remove_file(&manifests);
    Ok(Footprint {
        rep,
        services: count,
        backends: backends as u32,
        start_s,
        rss_mib: started.rss_kib / 1024.0,
        peak_rss_mib: after.hwm_kib.max(started.hwm_kib) / 1024.0,
        maps_mib,
        scrape_s,
        rss_after_scrape_mib: after.rss_kib / 1024.0,
    })
}

const MIB: f64 = 1024.0 * 1024.0;

/// The daemon, stopped (and its pins removed) on drop.
struct Running {
    child: Option<Child>,
    pins: PathBuf,
    started: Instant,
}

impl Running {
    fn start(env: &Env, ns: &Netns, manifests: &Path, log: &Path, tag: &str) -> Result<Self> {
        let pins = PathBuf::from(format!("/sys/fs/bpf/portmap-bench-{tag}"));
        let mut cmd = Command::new(&env.exe);
        cmd.args([
            "run",
            "--iface",
            "lo",
            "--xdp-mode",
            "generic",
            "--manifests",
        ])
        .arg(manifests)
        .args(["--no-socket-lb", "--metrics-addr", "127.0.0.1:9640"])
        .arg("--bpffs-dir")
        .arg(&pins)
        .arg("--control-socket")
        .arg(env.scratch.join(format!("{tag}.sock")));
        let log_file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .env("RUST_LOG", "info");
        let started = Instant::now();
        let child = ns.enter(|| cmd.spawn())?.context("starting portmap run")?;
        Ok(Self {
            child: Some(child),
            pins,
            started,
        })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Waits for the line the daemon logs once it serves; the time since start.
    fn wait_serving(&mut self, log: &Path) -> Result<Duration> {
        loop {
            signals::check()?;
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                let text = std::fs::read_to_string(log).unwrap_or_default();
                bail!("portmap run exited with {status}:\n{text}");
            }
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.contains("metrics on http://") {
                return Ok(self.started.elapsed());
            }
            if self.started.elapsed() > START_TIMEOUT {
                bail!("portmap run did not start within {START_TIMEOUT:?}:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            let (status, killed) = process::stop(&mut child, Duration::from_secs(10))?;
            if killed || !status.success() {
                bail!("portmap run did not stop cleanly ({status})");
            }
        }
        Ok(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop();
        if self.pins.exists() {
            let _ = std::fs::remove_dir_all(&self.pins);
        }
    }
}

struct Status {
    rss_kib: f64,
    hwm_kib: f64,
}

/// VmRSS and VmHWM of `pid`.
fn status(pid: u32) -> Result<Status> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> Result<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok(Status {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// Bytes of kernel memory of the BPF maps `pid` holds open (their `memlock`
/// in /proc/PID/fdinfo), each map counted once.
fn map_memory(pid: u32) -> Result<f64> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut seen = std::collections::BTreeSet::new();
    let mut total = 0.0;
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let Ok(text) = std::fs::read_to_string(entry?.path()) else {
            continue;
        };
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        if let (Some(id), Some(memlock)) = (value("map_id:"), value("memlock:"))
            && seen.insert(id)
        {
            total += memlock.parse::<f64>().unwrap_or(0.0);
        }
    }
    Ok(total)
}
