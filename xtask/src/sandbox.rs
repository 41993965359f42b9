//! Throwaway network namespaces and background processes that clean up after
//! themselves, also when the demo fails or is interrupted.

use std::{
    io::{BufRead as _, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::util::{check_interrupted, cmd, describe, output, stop_child};

/// How long a process gets between SIGTERM and SIGKILL.
pub const GRACE: Duration = Duration::from_secs(5);

/// Network namespaces and files to remove when dropped.
#[derive(Default)]
pub struct Sandbox {
    namespaces: Vec<String>,
    files: Vec<PathBuf>,
    /// Directories to remove if they end up empty (ones that did not exist).
    dirs: Vec<PathBuf>,
    /// Pin directories to remove with `portmap reset` (the portmap binary, the directory).
    pins: Vec<(PathBuf, PathBuf)>,
    /// cgroup v2 directories to remove (after killing what runs in them).
    cgroups: Vec<PathBuf>,
}

impl Sandbox {
    /// Creates a namespace with `lo` up; it is deleted on teardown.
    pub fn add_netns(&mut self, name: &str) -> Result<()> {
        if Path::new("/run/netns").join(name).exists() {
            bail!("network namespace {name} already exists");
        }
        self.namespaces.push(name.to_string());
        output(cmd("ip").args(["netns", "add", name]))?;
        ip(name, "link set lo up")
    }

    /// Removes `path` on teardown (and its parent directory if this created
    /// it, i.e. it does not exist now, and it is empty then).
    pub fn remove_on_teardown(&mut self, path: &Path) {
        self.files.push(path.to_path_buf());
        if let Some(dir) = path.parent().filter(|d| !d.exists()) {
            self.dirs.push(dir.to_path_buf());
        }
    }

    /// Removes the pin directory `dir` on teardown (if `portmap` left it).
    pub fn reset_pins_on_teardown(&mut self, portmap: &Path, dir: &Path) {
        self.pins.push((portmap.to_path_buf(), dir.to_path_buf()));
    }

    /// Creates the cgroup `NAME` at the root of the unified hierarchy; it is
    /// removed on teardown.
    pub fn add_cgroup(&mut self, name: &str) -> Result<PathBuf> {
        let path = cgroup2_mount()?.join(name);
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        self.cgroups.push(path.clone());
        Ok(path)
    }

    /// Deletes everything; returns what was removed and what could not be.
    pub fn teardown(&mut self) -> (Vec<String>, Vec<String>) {
        let (mut removed, mut failed) = (Vec::new(), Vec::new());
        for (portmap, dir) in self.pins.drain(..) {
            if dir.exists() {
                match output(cmd(&portmap).arg("reset").arg("--bpffs-dir").arg(&dir)) {
                    Ok(_) => removed.push(dir.display().to_string()),
                    Err(e) => failed.push(format!("{}: {e:#}", dir.display())),
                }
            }
        }
        for ns in self.namespaces.drain(..).rev() {
            if !Path::new("/run/netns").join(&ns).exists() {
                continue;
            }
            match output(cmd("ip").args(["netns", "del", &ns])) {
                Ok(_) => removed.push(format!("netns {ns}")),
                Err(e) => failed.push(format!("netns {ns}: {e:#}")),
            }
        }
        for cgroup in self.cgroups.drain(..) {
            match remove_cgroup(&cgroup) {
                Ok(()) => removed.push(format!("cgroup {}", cgroup.display())),
                Err(e) => failed.push(format!("cgroup {}: {e}", cgroup.display())),
            }
        }
        for file in self.files.drain(..) {
            if file.symlink_metadata().is_ok() {
                match std::fs::remove_file(&file) {
                    Ok(()) => removed.push(file.display().to_string()),
                    Err(e) => failed.push(format!("{}: {e}", file.display())),
                }
            }
        }
        for dir in self.dirs.drain(..) {
            // Only succeeds if empty, which is the point.
            if std::fs::remove_dir(&dir).is_ok() {
                removed.push(dir.display().to_string());
            }
        }
        (removed, failed)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let (removed, failed) = self.teardown();
        if !removed.is_empty() {
            eprintln!("cleanup: removed {}", removed.join(", "));
        }
        for f in failed {
            eprintln!("warning: cleanup failed: {f}");
        }
    }
}

/// Kills what still runs in `cgroup`, then removes it.
fn remove_cgroup(cgroup: &Path) -> std::io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
        for pid in procs
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: sending SIGKILL to a pid has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        match std::fs::remove_dir(cgroup) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            other => return other,
        }
    }
}

/// Where cgroup2 (the unified hierarchy) is mounted, mounting it on
/// `/sys/fs/cgroup/unified` if it is mounted nowhere (as `portmap run` does).
pub fn cgroup2_mount() -> Result<PathBuf> {
    if let Some(path) = find_cgroup2_mount() {
        return Ok(path);
    }
    let target = "/sys/fs/cgroup/unified";
    std::fs::create_dir_all(target)?;
    output(cmd("mount").args(["-t", "cgroup2", "none", target]))
        .with_context(|| format!("mounting cgroup2 on {target}"))?;
    Ok(PathBuf::from(target))
}

/// Where cgroup2 is mounted, if it is.
pub fn find_cgroup2_mount() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        if fs.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        mount.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// Makes the process `c` starts join `cgroup` before it runs its program.
pub fn in_cgroup(c: &mut Command, cgroup: &Path) -> Result<()> {
    use std::os::{fd::AsRawFd as _, unix::process::CommandExt as _};
    let procs = cgroup.join("cgroup.procs");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&procs)
        .with_context(|| format!("opening {}", procs.display()))?;
    // SAFETY: the closure runs between fork and exec and only calls write(2),
    // which is async-signal-safe; it owns `file`, so the fd stays open.
    unsafe {
        c.pre_exec(move || {
            if libc::write(file.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// `ip -n NS ARGS...` (ARGS split on whitespace), quiet unless it fails.
pub fn ip(ns: &str, args: &str) -> Result<()> {
    output(cmd("ip").args(["-n", ns]).args(args.split_whitespace()))
        .with_context(|| format!("in namespace {ns}"))?;
    Ok(())
}

/// `ip netns exec NS PROGRAM` (add the arguments to the returned command).
pub fn netns_exec(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = cmd("ip");
    c.args(["netns", "exec", ns]).arg(program);
    c
}

/// Runs `program` in network namespace `ns` only, in the host's mount
/// namespace (`ip netns exec` would give it a private /sys, and a daemon's
/// pins on /sys/fs/bpf would end with it), as a node's daemon runs.
pub fn netns_enter(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = cmd("nsenter");
    c.arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .arg(program);
    c
}

/// A background process whose stdout lines can be awaited and whose stderr
/// is kept; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    name: String,
    child: Child,
    stdout: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    pub fn spawn(name: &str, mut c: Command) -> Result<Self> {
        let what = describe(&c);
        let mut child = c
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start `{what}`"))?;
        let (tx, stdout) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(mut err) = child.stderr.take() {
            let stderr = stderr.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = err.read(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]);
                    stderr
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push_str(&text);
                }
            });
        }
        Ok(Self {
            name: name.to_string(),
            child,
            stdout,
            stderr,
        })
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Fails if the process has exited, with its stderr.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            // Let the reader thread catch up with the last words.
            thread::sleep(Duration::from_millis(100));
            bail!(
                "{} exited ({status}); its stderr:\n{}",
                self.name,
                indent(&self.stderr())
            );
        }
        Ok(())
    }

    /// Waits for a stdout line equal to `line`.
    pub fn wait_line(&mut self, line: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            check_interrupted()?;
            match self.stdout.recv_timeout(Duration::from_millis(100)) {
                Ok(l) if l.trim() == line => return Ok(()),
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.check_running()?;
                    thread::sleep(Duration::from_millis(100));
                }
            }
            self.check_running()?;
            if Instant::now() >= deadline {
                bail!(
                    "{} did not print `{line}` within {timeout:?}; its stderr:\n{}",
                    self.name,
                    indent(&self.stderr())
                );
            }
        }
    }

    /// SIGTERM, up to [`GRACE`] to exit, then SIGKILL. Returns the exit
    /// status and whether it had to be killed.
    pub fn stop(&mut self) -> Result<(ExitStatus, bool)> {
        stop_child(&mut self.child, GRACE).with_context(|| format!("stopping {}", self.name))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        match stop_child(&mut self.child, GRACE) {
            Ok((_, true)) => eprintln!("cleanup: killed {} (SIGKILL)", self.name),
            Ok(_) => {}
            Err(e) => eprintln!("warning: cleanup: stopping {}: {e:#}", self.name),
        }
    }
}

/// Indents every line by four spaces (for quoting output).
pub fn indent(text: &str) -> String {
    let mut s = String::new();
    for line in text.lines() {
        s.push_str("    ");
        s.push_str(line);
        s.push('\n');
    }
    s
}
