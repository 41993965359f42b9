//! Named network namespaces that delete themselves, and running code and
//! commands inside them.
//!
//! A thread that has entered a namespace opens its sockets there, sees its
//! interfaces, and passes it on to the processes it starts.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Command, Output},
    thread,
};

use anyhow::{Context as _, Result, bail};

use crate::process::{describe, output, tool};

/// Where `ip netns add` makes its namespaces.
const NETNS_DIR: &str = "/run/netns";

/// A named network namespace (`ip netns add`), deleted on drop together with
/// every process still in it.
#[derive(Debug)]
pub struct Netns {
    name: String,
    /// Whether dropping this value deletes the namespace.
    owned: bool,
}

impl Netns {
    /// Creates the namespace, with `lo` up. A namespace of that name that
    /// already exists is someone else's: an error, and left alone.
    pub fn new(name: &str) -> Result<Self> {
        if Path::new(NETNS_DIR).join(name).exists() {
            bail!("network namespace {name} already exists");
        }
        output(tool("ip").args(["netns", "add", name]))
            .with_context(|| format!("creating network namespace {name}"))?;
        let ns = Netns {
            name: name.to_string(),
            owned: true,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// A handle on an existing namespace that does not delete it on drop
    /// (for threads that work inside a namespace another value owns).
    pub fn view(name: &str) -> NetnsView {
        NetnsView(Netns {
            name: name.to_string(),
            owned: false,
        })
    }

    /// `ip -n NAME ARGS...`
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        output(tool("ip").arg("-n").arg(&self.name).args(args))
            .with_context(|| format!("in network namespace {}", self.name))
            .map(drop)
    }

    /// A command that runs in this network namespace only, keeping the mount
    /// namespace (unlike `ip netns exec`, which gives it a private `/sys`):
    /// what a daemon on a node sees, e.g. the host's `/sys/fs/bpf`.
    pub fn command_net_only(&self, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        use std::os::unix::process::CommandExt as _;
        let file = self.file()?;
        let mut cmd = Command::new(program);
        // SAFETY: the closure runs between fork and exec and only calls
        // setns(2), which is async-signal-safe; `file` keeps the fd open
        // until then (the closure owns it).
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(cmd)
    }

    /// A command that runs inside the namespace (`ip netns exec NAME ...`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = tool("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs a command in the namespace; fails with its stderr if it fails.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output> {
        let mut cmd = self.command(program);
        cmd.args(args);
        let what = describe(&cmd);
        let out = cmd
            .output()
            .with_context(|| format!("running {program} in {}", self.name))?;
        if !out.status.success() {
            bail!(
                "`{what}` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(out)
    }

    /// Runs `f` on the current thread inside this namespace, then returns the
    /// thread to the namespace it was in.
    pub fn enter<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        let here = File::open("/proc/thread-self/ns/net")
            .context("opening this thread's network namespace")?;
        let there = self.file()?;
        setns(&there, &self.name)?;
        let out = f();
        setns(&here, "the thread's own namespace")
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

    /// Runs `f` on a thread that has entered the namespace and waits for it:
    /// sockets it opens live in the namespace. For tests: a namespace that
    /// cannot be entered panics, as does `f`'s panic.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let handle = self
            .spawn(move || Ok(f()))
            .unwrap_or_else(|e| panic!("{e:#}"));
        handle
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            .unwrap_or_else(|e| panic!("{e:#}"))
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

    /// Whether a TCP socket of this namespace listens on `port` (IPv4, or
    /// IPv6 and so both, as iperf3's does).
    pub fn listening(&self, port: u16) -> Result<bool> {
        // /proc/thread-self: /proc/self/net would show the main thread's namespace.
        let read = |v: &str| std::fs::read_to_string(format!("/proc/thread-self/net/{v}"));
        let table = self
            .enter(|| Ok::<_, std::io::Error>(read("tcp")? + &read("tcp6").unwrap_or_default()))?
            .with_context(|| format!("reading the TCP sockets of {}", self.name))?;
        let port = format!(":{port:04X}");
        Ok(table.lines().any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(1).is_some_and(|local| local.ends_with(&port))
                && fields.get(3) == Some(&"0A")
        }))
    }

    /// Deletes the namespace now, killing what still runs in it; says why if
    /// it cannot (a drop only tries).
    pub fn delete(mut self) -> Result<()> {
        self.owned = false;
        self.remove()
    }

    fn remove(&self) -> Result<()> {
        // Kill what still runs inside, or the namespace lingers as long as it does.
        if let Ok(out) = tool("ip").args(["netns", "pids", &self.name]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: kill has no memory-safety preconditions; these
                    // are processes started in a namespace this value made.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        if !self.path().exists() {
            return Ok(());
        }
        output(tool("ip").args(["netns", "del", &self.name])).map(drop)
    }

    fn file(&self) -> Result<File> {
        let path = self.path();
        File::open(&path).with_context(|| format!("opening {}", path.display()))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.owned {
            let _ = self.remove();
        }
    }
}

/// A [`Netns`] that is not deleted when dropped; see [`Netns::view`].
pub struct NetnsView(Netns);

impl std::ops::Deref for NetnsView {
    type Target = Netns;

    fn deref(&self) -> &Netns {
        &self.0
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
