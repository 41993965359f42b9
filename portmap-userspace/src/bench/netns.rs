//! Network namespaces of the benchmark's own (deleted on drop), entering them
//! from the current thread, and running commands inside them.
//!
//! A thread that has entered a namespace opens its sockets there, sees its
//! interfaces, and passes it on to the processes it starts.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::signals;

/// A named network namespace (`ip netns add`), deleted on drop together with
/// every process still in it.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn new(name: &str) -> Result<Self> {
        run_ok(Command::new("ip").args(["netns", "add", name]))
            .with_context(|| format!("creating network namespace {name}"))?;
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS...`
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        run_ok(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Runs `f` on the current thread inside this namespace, then returns the
    /// thread to the namespace it was in.
    pub fn enter<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        let here = File::open("/proc/thread-self/ns/net")
            .context("opening this thread's network namespace")?;
        let there = self.file()?;
        setns(&there, &self.name)?;
        let out = f();
        setns(&here, "the benchmark's own namespace")
            .context("cannot return to the original network namespace")?;
        Ok(out)
    }

    /// Starts a thread that enters this namespace and runs `f`.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<thread::JoinHandle<Result<T>>> {
        let there = self.file()?;
        let name = self.name.clone();
        thread::Builder::new()
            .name(format!("in-{name}"))
            .spawn(move || {
                setns(&there, &name)?;
                f()
            })
            .context("starting a thread")
    }

    /// Writes a sysctl of this namespace, e.g. `net/ipv4/ip_forward`.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{key}");
        self.enter(|| std::fs::write(&path, value))?
            .with_context(|| format!("writing {path} = {value} in {}", self.name))
    }

    /// The index of an interface of this namespace.
    pub fn ifindex(&self, ifname: &str) -> Result<u32> {
        let c = std::ffi::CString::new(ifname).context("interface name")?;
        // SAFETY: a valid NUL-terminated string; the call only reads it.
        let index = self.enter(|| unsafe { libc::if_nametoindex(c.as_ptr()) })?;
        if index == 0 {
            bail!("no interface {ifname} in {}", self.name);
        }
        Ok(index)
    }

    fn file(&self) -> Result<File> {
        let path = format!("/run/netns/{}", self.name);
        File::open(&path).with_context(|| format!("opening {path}"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Kill what still runs inside, or the namespace lingers as long as it does.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: kill has no memory-safety preconditions; these
                    // are processes this benchmark started in its namespace.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

fn setns(file: &File, what: &str) -> Result<()> {
    // SAFETY: setns on a valid namespace fd; it changes only this thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("entering network namespace {what}"));
    }
    Ok(())
}

/// Runs a command; fails with its stderr unless it exits 0.
pub fn run_ok(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
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
/// exit. Stops it (SIGKILL) after `timeout` or when the benchmark is
/// interrupted.
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
    /// when the benchmark is interrupted.
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
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        // SAFETY: our own child, not reaped yet (try_wait saw it running).
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether a TCP socket of `ns` listens on `port` (IPv4, or IPv6 and so
/// both, as iperf3's does).
pub fn listening(ns: &Netns, port: u16) -> Result<bool> {
    // /proc/thread-self: /proc/self/net would show the main thread's namespace.
    let read = |v: &str| std::fs::read_to_string(format!("/proc/thread-self/net/{v}"));
    let table = ns
        .enter(|| Ok::<_, std::io::Error>(read("tcp")? + &read("tcp6").unwrap_or_default()))?
        .with_context(|| format!("reading the TCP sockets of {}", ns.name()))?;
    let port = format!(":{port:04X}");
    Ok(table.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1).is_some_and(|local| local.ends_with(&port)) && fields.get(3) == Some(&"0A")
    }))
}

/// Waits up to `max` until `process` listens on `port` in `ns`; fails if it
/// exits first, with `log` (its output) in the error.
pub fn wait_listening(
    ns: &Netns,
    port: u16,
    process: &mut Process,
    log: &Path,
    max: Duration,
) -> Result<()> {
    let start = Instant::now();
    loop {
        signals::check()?;
        if listening(ns, port)? {
            return Ok(());
        }
        let tail = || std::fs::read_to_string(log).unwrap_or_default();
        if let Some(status) = process.exited()? {
            bail!(
                "{} exited ({status}) in {}:\n{}",
                process.what,
                ns.name(),
                tail()
            );
        }
        if start.elapsed() > max {
            bail!(
                "{} did not listen on port {port} in {} within {max:?}:\n{}",
                process.what,
                ns.name(),
                tail()
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}
