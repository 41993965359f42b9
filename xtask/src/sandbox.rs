//! Throwaway network namespaces and background processes that clean up after
//! themselves, also when the demo fails or is interrupted.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use portmap_testkit::{
    cgroup::Cgroup,
    netns::Netns,
    process::{Captured, stop},
    signals,
};

use crate::util::{child_path, cmd, describe, output};

/// How long a process gets between SIGTERM and SIGKILL.
pub const GRACE: Duration = Duration::from_secs(5);

/// Network namespaces and files to remove when dropped.
#[derive(Default)]
pub struct Sandbox {
    namespaces: Vec<Netns>,
    files: Vec<PathBuf>,
    /// Directories to remove if they end up empty (ones that did not exist).
    dirs: Vec<PathBuf>,
    /// Pin directories to remove with `portmap reset` (the portmap binary, the directory).
    pins: Vec<(PathBuf, PathBuf)>,
    /// cgroup v2 directories to remove (after killing what runs in them).
    cgroups: Vec<Cgroup>,
}

impl Sandbox {
    /// Creates a namespace with `lo` up; it is deleted on teardown.
    pub fn add_netns(&mut self, name: &str) -> Result<()> {
        self.namespaces.push(Netns::new(name)?);
        Ok(())
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
        let cgroup = Cgroup::create(name)?;
        let path = cgroup.path().to_path_buf();
        self.cgroups.push(cgroup);
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
            let name = ns.name().to_string();
            if !ns.path().exists() {
                continue;
            }
            match ns.delete() {
                Ok(()) => removed.push(format!("netns {name}")),
                Err(e) => failed.push(format!("netns {name}: {e:#}")),
            }
        }
        for cgroup in self.cgroups.drain(..) {
            let path = cgroup.path().display().to_string();
            match cgroup.remove() {
                Ok(()) => removed.push(format!("cgroup {path}")),
                Err(e) => failed.push(format!("cgroup {path}: {e}")),
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

/// `ip -n NS ARGS...` (ARGS split on whitespace), quiet unless it fails.
pub fn ip(ns: &str, args: &str) -> Result<()> {
    Netns::view(ns).ip(&args.split_whitespace().collect::<Vec<_>>())
}

/// `ip netns exec NS PROGRAM` (add the arguments to the returned command),
/// with the PATH of [`cmd`].
pub fn netns_exec(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Netns::view(ns).command(program);
    c.env("PATH", child_path());
    c
}

/// Runs `program` in network namespace `ns` only, in the host's mount
/// namespace (`ip netns exec` would give it a private /sys, and a daemon's
/// pins on /sys/fs/bpf would end with it), as a node's daemon runs.
pub fn netns_enter(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
    let mut c = Netns::view(ns).command_net_only(program)?;
    c.env("PATH", child_path());
    Ok(c)
}

/// A background process whose stdout lines can be awaited and whose stderr
/// is kept; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    name: String,
    child: Child,
    stdout: Receiver<String>,
    stderr: Captured,
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
        let stderr = child
            .stderr
            .take()
            .map(Captured::collect)
            .unwrap_or_default();
        Ok(Self {
            name: name.to_string(),
            child,
            stdout,
            stderr,
        })
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.text()
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
            signals::check()?;
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
        stop(&mut self.child, GRACE).with_context(|| format!("stopping {}", self.name))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        match stop(&mut self.child, GRACE) {
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
