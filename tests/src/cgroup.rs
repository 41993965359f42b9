//! cgroup v2 directories for socket-level load balancing: a test gives one to
//! `portmap run --cgroup` and runs its client processes in it, so portmap's
//! socket programs apply to those processes only, never to the machine's
//! other processes. Removed on drop, with whatever still runs in it.

use std::{
    collections::BTreeMap,
    fs::File,
    net::SocketAddr,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{bin_path, netns::Netns, unique_name};

/// Names of the cgroups tests create (under the cgroup2 mount point).
pub const PREFIX: &str = "portmap-test-";

/// Where tests mount cgroup2 if the machine has it mounted nowhere.
const FALLBACK_MOUNT: &str = "/run/portmap-tests/cgroup2";

/// The cgroup2 mount point, mounting one if there is none.
pub fn mount_point() -> Result<PathBuf> {
    static MOUNTING: Mutex<()> = Mutex::new(());
    let _guard = MOUNTING.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(path) = portmap_userspace::dataplane::cgroup2_mount() {
        return Ok(path);
    }
    std::fs::create_dir_all(FALLBACK_MOUNT)?;
    let status = Command::new("mount")
        .args(["-t", "cgroup2", "none", FALLBACK_MOUNT])
        .status()
        .context("running mount")?;
    if !status.success() {
        bail!("mounting cgroup2 on {FALLBACK_MOUNT} failed");
    }
    Ok(PathBuf::from(FALLBACK_MOUNT))
}

/// A cgroup of its own for one test.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Creates `<cgroup2 mount>/portmap-test-pm-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> Result<Self> {
        crate::require_root();
        let path = mount_point()?.join(format!("{PREFIX}{}", unique_name(tag)));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path as a `portmap run --cgroup` argument.
    pub fn arg(&self) -> &str {
        self.path.to_str().expect("a UTF-8 path")
    }

    /// Makes the process `cmd` starts join this cgroup before it runs its
    /// program (so its first socket is already in it).
    pub fn enter(&self, cmd: &mut Command) -> Result<()> {
        use std::os::unix::process::CommandExt as _;
        let procs = self.path.join("cgroup.procs");
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&procs)
            .with_context(|| format!("opening {}", procs.display()))?;
        // SAFETY: the closure runs between fork and exec and only calls
        // write(2), which is async-signal-safe; `file` keeps the fd open
        // until then (the closure owns it). Writing "0" moves the writer.
        unsafe {
            cmd.pre_exec(move || {
                let file: &File = &file;
                if libc::write(file.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(())
    }

    /// Processes in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Runs `portmap-testclient ARGS` in `ns` (network namespace only) and in
    /// this cgroup; returns what it printed, or fails with it.
    pub fn client(&self, ns: &Netns, args: &[&str]) -> Result<Reply> {
        let mut cmd = ns.command_net_only(bin_path("portmap-testclient"))?;
        cmd.args(args);
        self.enter(&mut cmd)?;
        let out = cmd.output().context("running portmap-testclient")?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let reply = Reply::parse(&stdout);
        match out.status.code() {
            Some(0) | Some(1) => Ok(reply),
            _ => bail!(
                "portmap-testclient {} in {}: {}{stdout}",
                args.join(" "),
                ns.name(),
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    /// As [`Cgroup::client`], failing unless the client succeeded.
    pub fn ask(&self, ns: &Netns, args: &[&str]) -> Result<Reply> {
        let reply = self.client(ns, args)?;
        if let Some(e) = reply.get("error") {
            bail!(
                "portmap-testclient {} in {}: {e}",
                args.join(" "),
                ns.name()
            );
        }
        Ok(reply)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            for pid in self.pids() {
                // SAFETY: sending SIGKILL to a pid has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(e) if Instant::now() > deadline => {
                    eprintln!("warning: cannot remove {}: {e}", self.path.display());
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

/// What `portmap-testclient` printed: `key: value` lines.
#[derive(Clone, Debug, Default)]
pub struct Reply(pub BTreeMap<String, String>);

impl Reply {
    fn parse(text: &str) -> Self {
        Reply(
            text.lines()
                .filter_map(|l| l.split_once(": "))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// The HTTP body or datagram answered.
    pub fn answer(&self) -> &str {
        self.get("answer").unwrap_or("")
    }

    /// What `getpeername` said.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.get("peer")?.parse().ok()
    }

    /// The source `recvfrom` gave for the UDP answer.
    pub fn from(&self) -> Option<SocketAddr> {
        self.get("from")?.parse().ok()
    }

    /// The error number the client failed with, if it failed on one.
    pub fn errno(&self) -> Option<i32> {
        self.get("errno")?.parse().ok()
    }
}
