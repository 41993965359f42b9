//! Child processes: finding tools, running commands to completion, stopping
//! children (SIGTERM, then SIGKILL), collecting their output, and processes
//! started inside a namespace that are stopped on drop.

use std::{
    env,
    fs::File,
    io::Read,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{lock, netns::Netns, signals};

/// Where tools are looked for after `$PATH`: `ip`, `ethtool`, `nft` and
/// `iptables-restore` live in sbin, which a user's or CI's PATH may lack.
const SYSTEM_DIRS: [&str; 6] = [
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// `$PATH`, then the system directories, each once.
pub fn search_path() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(SYSTEM_DIRS.map(PathBuf::from));
    let mut unique: Vec<PathBuf> = Vec::new();
    for dir in dirs {
        if !dir.as_os_str().is_empty() && !unique.contains(&dir) {
            unique.push(dir);
        }
    }
    unique
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The executable `name` in `dirs` (a name with a `/` is taken as a path).
pub fn which_in(name: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    if name.contains('/') {
        return is_executable(Path::new(name)).then(|| PathBuf::from(name));
    }
    dirs.iter().map(|d| d.join(name)).find(|p| is_executable(p))
}

/// The executable `name` on [`search_path`].
pub fn which(name: &str) -> Option<PathBuf> {
    which_in(name, &search_path())
}

/// A command running the tool `name` found by [`which`] (or by the name
/// alone, for the error to say it is missing).
pub fn tool(name: &str) -> Command {
    Command::new(which(name).unwrap_or_else(|| PathBuf::from(name)))
}

/// `program arg arg ...`, for messages.
pub fn describe(c: &Command) -> String {
    let mut s = c.get_program().to_string_lossy().into_owned();
    for arg in c.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Runs a command (stdin empty) and returns its stdout; fails, with its
/// stderr, unless it exits 0.
pub fn output(c: &mut Command) -> Result<String> {
    let what = describe(c);
    let out = c
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{what}`"))?;
    if !out.status.success() {
        bail!(
            "`{what}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// As [`output`], for commands whose output does not matter.
pub fn run_ok(c: &mut Command) -> Result<()> {
    output(c).map(drop)
}

/// Sends `signal` to a child that has not been reaped.
pub fn send_signal(child: &Child, signal: libc::c_int) -> Result<()> {
    let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
    // SAFETY: kill has no memory-safety preconditions; the pid is our own
    // child's, which cannot be reused before we wait for it.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(std::io::Error::last_os_error()).context("kill");
    }
    Ok(())
}

/// Waits up to `timeout` for a child to exit.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Stops a child: `signal`, up to `grace` to exit, then SIGKILL. Returns its
/// exit status and whether it had to be killed.
pub fn stop_with(
    child: &mut Child,
    signal: libc::c_int,
    grace: Duration,
) -> Result<(ExitStatus, bool)> {
    if let Some(status) = child.try_wait()? {
        return Ok((status, false));
    }
    send_signal(child, signal)?;
    if let Some(status) = wait_timeout(child, grace)? {
        return Ok((status, false));
    }
    child.kill().context("SIGKILL")?;
    Ok((child.wait()?, true))
}

/// [`stop_with`] SIGTERM.
pub fn stop(child: &mut Child, grace: Duration) -> Result<(ExitStatus, bool)> {
    stop_with(child, libc::SIGTERM, grace)
}

/// What a child wrote to a pipe, read on a thread of its own so that the
/// pipe never fills.
#[derive(Clone, Debug, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// Reads `stream` until it ends.
    pub fn collect(stream: impl Read + Send + 'static) -> Self {
        let captured = Self::default();
        let into = captured.0.clone();
        let mut stream = stream;
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = stream.read(&mut buf) {
                lock(&into).extend_from_slice(&buf[..n]);
            }
        });
        captured
    }

    /// Everything read so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&lock(&self.0)).into_owned()
    }
}

/// How a timed command ended.
#[derive(Debug)]
pub struct Timed {
    pub elapsed: Duration,
    pub status: Option<ExitStatus>,
    /// Its stderr (the end of it).
    pub stderr: String,
}

impl Timed {
    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }

    /// Fails unless the command exited 0.
    pub fn check(&self, what: &str) -> Result<Duration> {
        match self.status {
            Some(s) if s.success() => Ok(self.elapsed),
            Some(s) => bail!("{what} failed ({s}): {}", self.stderr.trim()),
            None => bail!("{what} did not finish within {:.0?}", self.elapsed),
        }
    }
}

/// Runs `cmd` in `ns` with `stdin` from a file, and times it from start to
/// exit. Stops it (SIGKILL) after `timeout` or when interrupted
/// ([`signals`]); `scratch` holds its stderr meanwhile.
pub fn run_timed(
    ns: &Netns,
    cmd: &mut Command,
    stdin: Option<&Path>,
    timeout: Duration,
    scratch: &Path,
) -> Result<Timed> {
    let err_path = scratch.join(format!("stderr-{}", std::process::id()));
    let err_file =
        File::create(&err_path).with_context(|| format!("creating {}", err_path.display()))?;
    let input = match stdin {
        Some(p) => Stdio::from(File::open(p).with_context(|| format!("opening {}", p.display()))?),
        None => Stdio::null(),
    };
    cmd.stdin(input).stdout(Stdio::null()).stderr(err_file);
    let start = Instant::now();
    let child: Child = ns
        .enter(|| cmd.spawn())?
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    let waiter = thread::spawn(move || {
        let mut child = child;
        let status = child.wait();
        let _ = tx.send((status, Instant::now()));
    });
    let mut killed = false;
    let (status, end) = loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok((status, end)) => break (status.ok(), end),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if !killed && (start.elapsed() > timeout || signals::interrupted()) {
                    // SAFETY: our own child, not yet reaped (the waiter has not
                    // reported), so the pid cannot have been reused.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    killed = true;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("lost the child {pid}"),
        }
    };
    let _ = waiter.join();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = std::fs::remove_file(&err_path);
    signals::check()?;
    let tail = stderr
        .len()
        .checked_sub(2000)
        .map_or(stderr.as_str(), |cut| {
            stderr.get(cut..).unwrap_or(stderr.as_str())
        });
    Ok(Timed {
        elapsed: end - start,
        status: if killed { None } else { status },
        stderr: tail.to_string(),
    })
}

/// A process started inside a namespace, stopped on drop: SIGTERM, then
/// SIGKILL if it is still there after 2 s.
pub struct Process {
    child: Option<Child>,
    what: String,
}

impl Process {
    pub fn start(ns: &Netns, cmd: &mut Command, what: &str) -> Result<Self> {
        let child = ns
            .enter(|| cmd.spawn())?
            .with_context(|| format!("cannot start {what} in {}", ns.name()))?;
        Ok(Self {
            child: Some(child),
            what: what.to_string(),
        })
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => c
                .try_wait()
                .with_context(|| format!("waiting for {}", self.what)),
            None => bail!("{} was already stopped", self.what),
        }
    }

    /// Waits up to `max` for it to exit; stops waiting early (and kills it)
    /// when interrupted.
    pub fn wait_for(&mut self, max: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + max;
        loop {
            if let Some(status) = self.exited()? {
                return Ok(Some(status));
            }
            if signals::interrupted() {
                self.stop();
                signals::check()?;
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal (it may have exited already: then nothing happens).
    pub fn signal(&mut self, signal: libc::c_int) {
        if let Some(child) = self.child.as_mut()
            && matches!(child.try_wait(), Ok(None))
        {
            // SAFETY: our own child, and not reaped (try_wait just saw it
            // running), so the pid is still its.
            unsafe { libc::kill(child.id() as i32, signal) };
        }
    }

    /// SIGTERM, then SIGKILL after 2 s; returns how it ended.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        stop(&mut child, Duration::from_secs(2))
            .ok()
            .map(|(status, _)| status)
    }

    /// Waits up to `max` until it listens on TCP `port` in `ns`; fails if it
    /// exits first, with `log` (its output) in the error.
    pub fn wait_listening(
        &mut self,
        ns: &Netns,
        port: u16,
        log: &Path,
        max: Duration,
    ) -> Result<()> {
        let start = Instant::now();
        loop {
            signals::check()?;
            if ns.listening(port)? {
                return Ok(());
            }
            let tail = || std::fs::read_to_string(log).unwrap_or_default();
            if let Some(status) = self.exited()? {
                bail!(
                    "{} exited ({status}) in {}:\n{}",
                    self.what,
                    ns.name(),
                    tail()
                );
            }
            if start.elapsed() > max {
                bail!(
                    "{} did not listen on port {port} in {} within {max:?}:\n{}",
                    self.what,
                    ns.name(),
                    tail()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}
