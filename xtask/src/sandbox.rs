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
