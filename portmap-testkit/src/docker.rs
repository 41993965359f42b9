//! A Docker Engine of one's own, for the tests and the demo: Debian's
//! `dockerd`, started in a node's network namespace (network only, so it
//! sees the host's cgroup hierarchy, as `nsenter --net=/run/netns/NAME`
//! would start it) with a private data root, exec root, pidfile, socket and
//! config, all under one directory, and its containers' cgroups under a
//! parent of the caller's; its containers' addresses in 198.18.77.0/24 and
//! 2001:db8:77::/64. Images are made without any registry: `docker import`
//! of a root filesystem holding busybox (static) and the programs asked
//! for, with the libraries they are linked with.
//!
//! Dropping a [`Dockerd`] removes its containers, stops the engine and
//! whatever it started, unmounts and deletes its directory and its
//! containers' cgroups, and the empty directories the engine and its shims
//! leave under `/run/docker` and `/run/containerd`.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    netns::Netns,
    process::{Captured, describe, stop, wait_timeout},
};

/// Debian's client: another `docker` may come first on PATH.
pub const DOCKER: &str = "/usr/bin/docker";
pub const DOCKERD: &str = "/usr/sbin/dockerd";
/// Debian's Compose (1.29 on bookworm).
pub const COMPOSE: &str = "/usr/bin/docker-compose";
/// The static busybox of Debian's `busybox-static`.
pub const BUSYBOX: &str = "/bin/busybox";
/// docker0's address and the containers' IPv4 network.
pub const BRIDGE_V4: &str = "198.18.77.1/24";
/// The containers' IPv6 network (`--ipv6`).
pub const BRIDGE_V6: &str = "2001:db8:77::/64";
/// Where user-defined networks (Compose's) take their subnets from.
pub const ADDRESS_POOL: &str = "base=198.18.80.0/20,size=24";
/// Directories engines and shims make and leave behind (empty).
const RUN_DIRS: [&str; 2] = ["/run/docker", "/run/containerd"];

/// How the engine runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// `--iptables`: Docker's own DNAT rules.
    pub iptables: bool,
    /// `--userland-proxy`: docker-proxy processes listening on the host ports.
    pub userland_proxy: bool,
    /// `--ipv6 --fixed-cidr-v6 2001:db8:77::/64`.
    pub ipv6: bool,
    /// `--live-restore`: containers keep running while the engine is down.
    pub live_restore: bool,
    /// `--cgroup-parent`, relative to the cgroup2 mount point (the
    /// containers' cgroups are made below it, and removed with them).
    pub cgroup_parent: Option<String>,
}

impl Options {
    /// Docker as installed: iptables rules and docker-proxy.
    pub fn defaults() -> Self {
        Options {
            iptables: true,
            userland_proxy: true,
            ipv6: false,
            live_restore: false,
            cgroup_parent: None,
        }
    }

    /// `--iptables=false --userland-proxy=false`: portmap is the only port
    /// mapping.
    pub fn portmap_only() -> Self {
        Options {
            iptables: false,
            userland_proxy: false,
            ..Self::defaults()
        }
    }
}

/// Whether Debian's Docker Engine and client are installed.
pub fn available() -> bool {
    Path::new(DOCKER).is_file() && Path::new(DOCKERD).is_file()
}

/// A running engine, removed with everything it made on drop.
pub struct Dockerd {
    ns: String,
    options: Options,
    /// Holds data, exec root, socket, pidfile, config, images.
    dir: PathBuf,
    child: Option<Child>,
    logs: Captured,
    run_dirs_before: BTreeSet<PathBuf>,
}

impl Dockerd {
    /// Starts an engine in `ns`, its files under `/tmp/NAME`.
    pub fn start(ns: &Netns, name: &str, options: Options) -> Result<Self> {
        if !available() {
            bail!("{DOCKER} or {DOCKERD} is missing: `cargo xtask setup` installs docker.io");
        }
        // Short: containerd's sockets live under the exec root (108 bytes).
        let dir = PathBuf::from("/tmp").join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut d = Dockerd {
            ns: ns.name().to_string(),
            options,
            dir,
            child: None,
            logs: Captured::default(),
            run_dirs_before: run_dirs(),
        };
        // An empty configuration: /etc/docker/daemon.json is the machine's.
        std::fs::write(d.dir.join("daemon.json"), "{}\n")?;
        d.launch(ns)?;
        Ok(d)
    }

    /// `unix:///…/sock`: for `--docker-host` and `DOCKER_HOST`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.dir.join("sock").display())
    }

    /// Its own directory (removed with it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn logs(&self) -> String {
        self.logs.text()
    }

    fn launch(&mut self, ns: &Netns) -> Result<()> {
        let on = |b: bool| if b { "true" } else { "false" };
        let d = &self.dir;
        let mut cmd = ns.command_net_only(DOCKERD)?;
        cmd.arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("pid"))
            .arg("--config-file")
            .arg(d.join("daemon.json"))
            .args(["-H", &self.host()])
            .args(["--bip", BRIDGE_V4])
            .args(["--default-address-pool", ADDRESS_POOL])
            .args(["--storage-driver", "overlay2"])
            .args(["--exec-opt", "native.cgroupdriver=cgroupfs"])
            .arg(format!("--iptables={}", on(self.options.iptables)))
            .arg(format!(
                "--userland-proxy={}",
                on(self.options.userland_proxy)
            ))
            .arg(format!("--live-restore={}", on(self.options.live_restore)))
            .args(["--log-level", "warn"]);
        if let Some(parent) = &self.options.cgroup_parent {
            cmd.arg("--cgroup-parent").arg(format!("/{parent}"));
        }
        if self.options.ipv6 {
            cmd.args(["--ipv6", "--fixed-cidr-v6", BRIDGE_V6]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", describe(&cmd)))?;
        self.logs = Captured::collect(child.stderr.take().context("no stderr")?);
        self.child = Some(child);
        self.ns = ns.name().to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                bail!("dockerd exited with {status}:\n{}", self.logs());
            }
            if self
                .docker(&["version", "--format", "{{.Server.Version}}"])
                .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("dockerd did not answer within 30 s:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the engine (SIGTERM; with `--live-restore` its containers keep
    /// running).
    pub fn stop_engine(&mut self) -> Result<()> {
        let mut child = self.child.take().context("dockerd is not running")?;
        let (status, killed) = stop(&mut child, Duration::from_secs(20))?;
        if killed {
            bail!("dockerd did not exit within 20 s of SIGTERM ({status})");
        }
        Ok(())
    }

    /// Starts the engine again, on the same directories.
    pub fn start_engine(&mut self, ns: &Netns) -> Result<()> {
        if self.child.is_some() {
            bail!("dockerd is already running");
        }
        self.launch(ns)
    }

    /// `docker -H … ARGS`: its stdout, trimmed; fails with its stderr.
    pub fn docker(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new(DOCKER);
        cmd.args(["-H", &self.host()]).args(args);
        run(&mut cmd, Duration::from_secs(60))
    }

    /// `docker inspect -f TEMPLATE NAME`.
    pub fn inspect(&self, name: &str, template: &str) -> Result<String> {
        self.docker(&["inspect", "-f", template, name])
    }

    /// A container's IPv4 address on the default bridge.
    pub fn ipv4(&self, name: &str) -> Result<String> {
        self.inspect(name, "{{.NetworkSettings.Networks.bridge.IPAddress}}")
    }

    /// The host port Docker picked for `port` (`-P`): `docker port`.
    pub fn host_port(&self, name: &str, port: &str) -> Result<u16> {
        let out = self.docker(&["port", name, port])?;
        let first = out.lines().next().unwrap_or_default();
        let (_, number) = first
            .rsplit_once(':')
            .with_context(|| format!("`docker port {name} {port}` said {out:?}"))?;
        number
            .parse()
            .with_context(|| format!("`docker port {name} {port}` said {out:?}"))
    }

    /// Runs `ARGS` in container `name` (`docker exec`).
    pub fn exec(&self, name: &str, args: &[&str]) -> Result<String> {
        let mut all = vec!["exec", name];
        all.extend_from_slice(args);
        self.docker(&all)
    }

    /// Makes image `image` (`docker import`): busybox as `/bin/busybox` and
    /// `/bin/sh`, each of `programs` as `/bin/NAME` with the libraries `ldd`
    /// lists, and empty `/www` and `/tmp`.
    pub fn import_image(&self, image: &str, programs: &[&Path]) -> Result<()> {
        let rootfs = self
            .dir
            .join(format!("rootfs-{}", image.replace([':', '/'], "-")));
        let bin = rootfs.join("bin");
        std::fs::create_dir_all(&bin)?;
        for dir in ["tmp", "www", "etc", "proc", "sys", "dev"] {
            std::fs::create_dir_all(rootfs.join(dir))?;
        }
        std::fs::copy(BUSYBOX, bin.join("busybox")).with_context(|| {
            format!("copying {BUSYBOX} (`cargo xtask setup` installs busybox-static)")
        })?;
        std::os::unix::fs::symlink("busybox", bin.join("sh"))?;
        for program in programs {
            let name = program.file_name().context("a program's name")?;
            std::fs::copy(program, bin.join(name))
                .with_context(|| format!("copying {}", program.display()))?;
            let ldd = run(Command::new("ldd").arg(program), Duration::from_secs(10))?;
            for lib in ldd.lines().filter_map(library_path) {
                let to = rootfs.join(lib.strip_prefix("/").unwrap_or(&lib));
                std::fs::create_dir_all(to.parent().context("a library's directory")?)?;
                std::fs::copy(&lib, &to).with_context(|| format!("copying {}", lib.display()))?;
            }
        }
        let tarball = rootfs.with_extension("tar");
        run(
            Command::new("tar")
                .arg("-C")
                .arg(&rootfs)
                .arg("-cf")
                .arg(&tarball)
                .arg("."),
            Duration::from_secs(30),
        )?;
        self.docker(&[
            "import",
            "--change",
            r#"CMD ["/bin/sh"]"#,
            tarball.to_str().context("a UTF-8 path")?,
            image,
        ])?;
        Ok(())
    }

    /// Everything the engine made goes: containers, engine, containerd and
    /// shims, mounts, directories, the containers' cgroups.
    fn remove_everything(&mut self) {
        if self.child.is_some() {
            if let Ok(ids) = self.docker(&["ps", "-aq"]) {
                let ids: Vec<&str> = ids.split_whitespace().collect();
                if !ids.is_empty() {
                    let mut args = vec!["rm", "-f", "-v"];
                    args.extend(ids);
                    let _ = self.docker(&args);
                }
            }
            if let Some(mut child) = self.child.take() {
                let _ = stop(&mut child, Duration::from_secs(15));
            }
        }
        // containerd, shims and proxies name the directory on their command
        // lines; with --live-restore, containerd outlives dockerd.
        kill_mentioning(&self.dir);
        unmount_under(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
        if let (Some(parent), Some(mount)) =
            (&self.options.cgroup_parent, crate::cgroup::mount_point())
        {
            remove_cgroup_tree(&mount.join(parent));
        }
        remove_new_empty_dirs(&self.run_dirs_before);
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- dockerd logs ({}) ---\n{}", self.ns, self.logs());
        }
        self.remove_everything();
    }
}

/// Runs `cmd` (killed after `max`); its stdout trimmed, or an error with
/// its stderr.
pub fn run(cmd: &mut Command, max: Duration) -> Result<String> {
    let what = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{what}`"))?;
    let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = read(child.stdout.take().map(|p| Box::new(p) as _));
    let err = read(child.stderr.take().map(|p| Box::new(p) as _));
    let status = wait_timeout(&mut child, max)?;
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    // The pipes close with the child: the readers end.
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    match status {
        None => bail!("`{what}` did not finish within {max:?}: {}", err.trim()),
        Some(s) if !s.success() => bail!("`{what}` failed ({s}): {}", err.trim()),
        Some(_) => Ok(out.trim().to_string()),
    }
}

/// The file of one `ldd` line (`libc.so.6 => /lib/…/libc.so.6 (0x…)` or
/// `/lib64/ld-linux-x86-64.so.2 (0x…)`).
fn library_path(line: &str) -> Option<PathBuf> {
    let path = match line.split_once("=>") {
        Some((_, rest)) => rest.split_whitespace().next()?,
        None => line.split_whitespace().next()?,
    };
    path.starts_with('/').then(|| PathBuf::from(path))
}

/// SIGKILLs every process whose command line names `dir`.
fn kill_mentioning(dir: &Path) {
    let needle = dir.as_os_str().as_encoded_bytes().to_vec();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline.windows(needle.len()).any(|w| w == needle) {
            // SAFETY: kill has no memory-safety preconditions; the process
            // names this engine's own directory.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    std::thread::sleep(Duration::from_millis(100));
}

/// Detaches every mount at or below `dir`, deepest first.
fn unmount_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for point in points {
        if let Ok(c) = std::ffi::CString::new(point.as_os_str().as_encoded_bytes()) {
            // SAFETY: a valid NUL-terminated path; umount2 only reads it.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Kills what runs in a cgroup tree and removes it, deepest first.
fn remove_cgroup_tree(root: &Path) {
    let mut dirs = subdirs(root);
    dirs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for dir in dirs {
        let _ = crate::cgroup::remove(&dir);
    }
}

/// `root` and every directory below it, if `root` is one.
fn subdirs(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        if !dir.is_dir() {
            continue;
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            todo.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        found.push(dir);
    }
    found
}

/// Every directory at or below [`RUN_DIRS`].
fn run_dirs() -> BTreeSet<PathBuf> {
    RUN_DIRS
        .iter()
        .flat_map(|d| subdirs(Path::new(d)))
        .collect()
}

/// Removes the empty directories under [`RUN_DIRS`] that were not there
/// before, deepest first.
fn remove_new_empty_dirs(before: &BTreeSet<PathBuf>) {
    let mut new: Vec<PathBuf> = run_dirs().difference(before).cloned().collect();
    new.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for dir in new {
        // Fails, harmlessly, unless empty.
        let _ = std::fs::remove_dir(dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_lines() {
        assert_eq!(
            library_path("\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)"),
            Some(PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"))
        );
        assert_eq!(
            library_path("\t/lib64/ld-linux-x86-64.so.2 (0x00007fdd849ed000)"),
            Some(PathBuf::from("/lib64/ld-linux-x86-64.so.2"))
        );
        assert_eq!(library_path("\tlinux-vdso.so.1 (0x00007fdd849eb000)"), None);
    }
}
