//! The real `portmap run`, started in a namespace and stopped on drop.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use portmap_testkit::process::{Captured, stop_with};

use crate::{bin_path, metrics, netns::Netns};

pub const METRICS_ADDR: &str = "127.0.0.1:9640";

pub struct Portmap {
    child: Option<Child>,
    ns_name: String,
    pub socket: PathBuf,
    /// The pin directory (`--bpffs-dir`), unique to the namespace.
    pub pins: PathBuf,
    pub metrics_addr: SocketAddr,
    /// Its stderr, collected so the pipe never fills and failures can show it.
    logs: Captured,
}

impl Portmap {
    /// Starts `portmap run ARGS --control-socket <unique> --bpffs-dir
    /// <unique>` in `ns` (with `--metrics-addr 127.0.0.1:9640` unless ARGS set
    /// it, and `--no-socket-lb` unless ARGS give `--cgroup`) and waits until
    /// it serves metrics. Started again in the same namespace, it finds the
    /// same pin directory (a restart).
    pub fn start(ns: &Netns, args: &[&str]) -> Result<Self> {
        Self::start_within(ns, args, Duration::from_secs(15))
    }

    /// [`Portmap::start`], waiting up to `within` for it to serve (a start
    /// that reads a large cluster's manifests, in a debug build).
    pub fn start_within(ns: &Netns, args: &[&str], within: Duration) -> Result<Self> {
        let cmd = ns.command_net_only(bin_path("portmap"))?;
        Self::launch(ns, args, cmd, true, within)
    }

    /// As [`Portmap::start`], but waits only until something listens on
    /// TCP `port` in `ns` (`--kubernetes` serves `/healthz` before it
    /// publishes anything, and metrics after).
    pub fn start_listening(ns: &Netns, args: &[&str], port: u16) -> Result<Self> {
        let cmd = ns.command_net_only(bin_path("portmap"))?;
        Self::launch_until(ns, args, cmd, true, Some(port), Duration::from_secs(15))
    }

    /// Starts `portmap run ARGS` as a user would with `ip netns exec NS`:
    /// in a private mount namespace whose `/sys` has no cgroup2 and no bpffs
    /// (so pins end with the process), and without `--no-socket-lb`, so
    /// portmap finds out by itself that there is no cgroup to attach to.
    pub fn start_under_ip_netns_exec(ns: &Netns, args: &[&str]) -> Result<Self> {
        let within = Duration::from_secs(15);
        Self::launch(ns, args, ns.command(bin_path("portmap")), false, within)
    }

    fn launch(
        ns: &Netns,
        args: &[&str],
        cmd: std::process::Command,
        no_socket_lb: bool,
        within: Duration,
    ) -> Result<Self> {
        Self::launch_until(ns, args, cmd, no_socket_lb, None, within)
    }

    fn launch_until(
        ns: &Netns,
        args: &[&str],
        mut cmd: std::process::Command,
        no_socket_lb: bool,
        listening: Option<u16>,
        within: Duration,
    ) -> Result<Self> {
        let socket = PathBuf::from(format!("/run/portmap-tests/{}.sock", ns.name()));
        let pins = pin_dir(ns);
        cmd.arg("run")
            .args(args)
            .arg("--control-socket")
            .arg(&socket)
            .arg("--bpffs-dir")
            .arg(&pins);
        // Socket-level load balancing attaches to the root cgroup by default,
        // i.e. to every process of the machine: tests give it a cgroup of
        // their own (`crate::cgroup`) or turn it off.
        if no_socket_lb
            && !args
                .iter()
                .any(|a| *a == "--cgroup" || *a == "--no-socket-lb")
        {
            cmd.arg("--no-socket-lb");
        }
        let metrics_addr: SocketAddr = match args.iter().position(|a| *a == "--metrics-addr") {
            Some(i) => args[i + 1].parse()?,
            None => {
                cmd.args(["--metrics-addr", METRICS_ADDR]);
                METRICS_ADDR.parse()?
            }
        };
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting portmap run")?;
        let logs = Captured::collect(child.stderr.take().context("no stderr")?);
        let mut pm = Portmap {
            child: Some(child),
            ns_name: ns.name().to_string(),
            socket,
            pins,
            metrics_addr,
            logs,
        };
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = pm.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                // Pins it did not make (a dataplane it refused to adopt) are not ours to remove.
                pm.pins = PathBuf::new();
                bail!("portmap run exited with {status}:\n{}", pm.logs());
            }
            if let Some(port) = listening {
                if ns.listening(port)? {
                    return Ok(pm);
                }
            } else if metrics::scrape(ns, metrics_addr).is_ok() {
                pm.wait_for_startup_log();
                return Ok(pm);
            }
            if Instant::now() > deadline {
                let what = match listening {
                    Some(port) => format!("listen on TCP port {port}"),
                    None => "serve metrics".to_string(),
                };
                bail!(
                    "portmap run did not {what} within {within:?}:\n{}",
                    pm.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The daemon logs where it serves metrics last before serving them, but
    /// the thread reading its stderr may still be behind: waits (up to 2 s)
    /// until that line is read, so that a test reading the log right after
    /// `start` sees the whole start-up.
    fn wait_for_startup_log(&self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while !self.logs().contains("metrics on ") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn logs(&self) -> String {
        self.logs.text()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn metrics(&self, ns: &Netns) -> Result<metrics::Samples> {
        assert_eq!(
            ns.name(),
            self.ns_name,
            "scrape from the daemon's namespace"
        );
        metrics::scrape(ns, self.metrics_addr)
    }

    /// `portmap list ARGS --control-socket ...` output.
    pub fn list(&self, args: &[&str]) -> Result<String> {
        let out = std::process::Command::new(bin_path("portmap"))
            .arg("list")
            .args(args)
            .arg("--control-socket")
            .arg(&self.socket)
            .output()?;
        if !out.status.success() {
            bail!("portmap list: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// Sends a signal and waits for exit (SIGKILL after 5 s).
    pub fn stop_with(&mut self, signal: i32) -> Result<ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        match stop_with(&mut child, signal, Duration::from_secs(5))? {
            (status, false) => Ok(status),
            (status, true) => {
                bail!("portmap did not exit within 5 s of signal {signal} ({status})")
            }
        }
    }

    pub fn stop(&mut self) -> Result<ExitStatus> {
        self.stop_with(libc::SIGTERM)
    }

    /// Forgets the process without stopping it or removing its pins: for
    /// tests that kill it and start another on the same pins.
    pub fn abandon(mut self) -> Option<Child> {
        self.pins = PathBuf::new();
        self.child.take()
    }
}

/// The pin directory the harness gives portmap in `ns`.
pub fn pin_dir(ns: &Netns) -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/portmap-test-{}", ns.name()))
}

/// Removes what a test left pinned on purpose (`portmap reset`).
pub fn reset_pins(pins: &std::path::Path) {
    if !pins.as_os_str().is_empty() && pins.exists() {
        let _ = std::process::Command::new(bin_path("portmap"))
            .args(["reset", "--bpffs-dir"])
            .arg(pins)
            .output();
    }
}

impl Drop for Portmap {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
        let _ = std::fs::remove_file(&self.socket);
        reset_pins(&self.pins);
        if std::thread::panicking() {
            eprintln!("--- portmap logs ({}) ---\n{}", self.ns_name, self.logs());
        }
    }
}
