//! Socket-level load balancing: the cgroup `sock_addr` programs (`connect`,
//! `sendmsg`, `recvmsg`, `getpeername`, IPv4 and IPv6) attached to a cgroup v2
//! directory, through links pinned as `DIR/links/cgroup-connect4` etc.
//!
//! As with the XDP and tc links, a link pinned by a previous daemon on the
//! same cgroup is not detached: this daemon's program replaces the old one in
//! it (`BPF_LINK_UPDATE`), so no connect escapes translation during a restart.

use std::{
    ffi::CString,
    fs::File,
    io,
    os::{
        fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    },
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::programs::{
    CgroupAttachMode, CgroupSockAddr,
    links::{FdLink, PinnedLink},
};
use log::{info, warn};
use portmap_common::abi::DatapathConfig;
use serde::{Deserialize, Serialize};

use super::{Dataplane, bpf_sys};

/// The socket programs: (program, link pin suffix, `bpf_attach_type`).
/// Reverse translation first, so a socket translated at connect has its
/// replies translated back from the start.
pub const SOCK_PROGRAMS: [(&str, &str, u32); 8] = [
    ("portmap_recvmsg4", "recvmsg4", 19),
    ("portmap_recvmsg6", "recvmsg6", 20),
    ("portmap_getpeername4", "getpeername4", 29),
    ("portmap_getpeername6", "getpeername6", 30),
    ("portmap_connect4", "connect4", 10),
    ("portmap_connect6", "connect6", 11),
    ("portmap_sendmsg4", "sendmsg4", 14),
    ("portmap_sendmsg6", "sendmsg6", 15),
];

/// Link pin names: `cgroup-connect4`, ...
const CGROUP_LINK: &str = "cgroup";

/// `statfs` magic of cgroup2.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Whether socket-level load balancing runs, for `portmap list` and the
/// metrics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketLbStatus {
    pub enabled: bool,
    /// The cgroup the programs are attached to, when enabled.
    pub cgroup: Option<PathBuf>,
    /// Why it is off, when it is.
    pub off_because: Option<String>,
}

impl SocketLbStatus {
    pub fn off(why: &str) -> Self {
        Self {
            enabled: false,
            cgroup: None,
            off_because: Some(why.to_string()),
        }
    }

    fn on(cgroup: &Path) -> Self {
        Self {
            enabled: true,
            cgroup: Some(cgroup.to_path_buf()),
            off_because: None,
        }
    }
}

/// How the socket programs were attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SockAttached {
    /// New links on the cgroup (some may have replaced a program in place).
    Fresh,
    /// The previous daemon's links on the same cgroup, now running this
    /// daemon's programs.
    Replaced,
    /// Socket-level load balancing is off; links a previous daemon pinned
    /// were removed.
    Off,
}

/// The cookie of this process's network namespace (`SO_NETNS_COOKIE`).
pub fn netns_cookie() -> io::Result<u64> {
    // SAFETY: plain syscalls on an fd this function owns; `cookie` and `len`
    // are valid for writes of their sizes.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let mut cookie: u64 = 0;
        let mut len = size_of::<u64>() as libc::socklen_t;
        if libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(cookie)
    }
}

/// `config` with the cookie of this process's network namespace, which the
/// socket programs take as the node's.
pub(super) fn with_host_netns(mut config: DatapathConfig) -> DatapathConfig {
    if config.host_netns_cookie == 0 {
        match netns_cookie() {
            Ok(cookie) => config.host_netns_cookie = cookie,
            Err(e) => warn!(
                "cannot read this network namespace's cookie ({e}): socket-level load balancing \
                 will not translate loopback destinations"
            ),
        }
    }
    config
}

/// Whether `path` is on a cgroup v2 (unified) filesystem.
pub fn is_cgroup2(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `statfs` writes into `buf`, a valid zeroed struct; `c` is a valid C string.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut buf) }) == 0 && buf.f_type as i64 == CGROUP2_SUPER_MAGIC
}

/// The root of the unified hierarchy (`--cgroup`'s default): where cgroup2 is
/// mounted, else mounted by this function on `/sys/fs/cgroup/unified`.
pub fn default_cgroup() -> Result<PathBuf> {
    let mount = portmap_testkit::cgroup::ensure_mounted()?;
    if mount.mounted_now {
        info!("mounted cgroup2 on {}", mount.path.display());
    }
    Ok(mount.path)
}

impl Dataplane {
    /// Attaches the socket programs to the cgroup v2 directory `cgroup`
    /// (its processes and their descendants' sockets), replacing the programs
    /// in links a previous daemon pinned on the same cgroup. `None`
    /// (`--no-socket-lb`) detaches links a previous daemon pinned.
    pub fn attach_sockets(&mut self, cgroup: Option<&Path>) -> Result<SockAttached> {
        let Some(cgroup) = cgroup else {
            self.detach_pinned_sockets()?;
            self.attachments.socket_lb = SocketLbStatus::off("turned off (--no-socket-lb)");
            return Ok(SockAttached::Off);
        };
        let dir = File::open(cgroup).with_context(|| format!("opening {}", cgroup.display()))?;
        if !is_cgroup2(cgroup) {
            bail!(
                "{} is not a cgroup v2 (unified) directory",
                cgroup.display()
            );
        }
        let cgroup_id = dir.metadata()?.ino();
        let mut fresh = false;
        for (program, name, attach_type) in SOCK_PROGRAMS {
            let path = self
                .attachments
                .pins
                .as_ref()
                .map(|p| p.link_path(CGROUP_LINK, name))
                .filter(|p| p.exists());
            let prog: &mut CgroupSockAddr = self
                .ebpf
                .program_mut(program)
                .with_context(|| format!("no program {program} in the object"))?
                .try_into()?;
            if let Some(path) = path {
                let link = bpf_sys::open_pinned(&path)
                    .with_context(|| format!("opening {}", path.display()))?;
                let info = bpf_sys::link_info(&link)
                    .with_context(|| format!("reading {}", path.display()))?;
                if info.link_type == bpf_sys::BPF_LINK_TYPE_CGROUP
                    && info.cgroup_id() == cgroup_id
                    && info.cgroup_attach_type() == attach_type
                {
                    bpf_sys::link_update(&link, prog.fd()?.as_fd().as_raw_fd())
                        .with_context(|| format!("replacing the program in {}", path.display()))?;
                    let held = PinnedLink::from_pin(&path)
                        .with_context(|| format!("opening {}", path.display()))?;
                    self.attachments.hold_adopted(
                        CGROUP_LINK,
                        name,
                        Some(path),
                        FdLink::from(held),
                    );
                    continue;
                }
                // On another cgroup (--cgroup changed): detached once `link` closes.
                std::fs::remove_file(&path)
                    .with_context(|| format!("unpinning {}", path.display()))?;
                info!("{name}: detached from the cgroup it was on before (--cgroup changed)");
            }
            // Links take no attach flags (the kernel refuses any); they
            // always coexist with other programs on the cgroup, as
            // BPF_F_ALLOW_MULTI attachments do. `Single` means no flags.
            let id = prog
                .attach(&dir, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {program} to {}", cgroup.display()))?;
            let link = FdLink::try_from(prog.take_link(id)?)
                .context("the kernel gave no link for a cgroup program")?;
            self.attachments.hold(CGROUP_LINK, name, link)?;
            fresh = true;
        }
        self.attachments.socket_lb = SocketLbStatus::on(cgroup);
        Ok(if fresh {
            SockAttached::Fresh
        } else {
            SockAttached::Replaced
        })
    }

    /// Socket-level load balancing is off for `why` (it stays off: the
    /// packet path runs without it).
    pub fn socket_lb_unavailable(&mut self, why: &str) {
        self.attachments.socket_lb = SocketLbStatus::off(why);
    }

    pub fn socket_lb(&self) -> &SocketLbStatus {
        &self.attachments.socket_lb
    }

    /// Unpins (so detaches) socket program links a previous daemon left.
    fn detach_pinned_sockets(&mut self) -> Result<()> {
        let Some(pins) = &self.attachments.pins else {
            return Ok(());
        };
        let mut detached = 0;
        for (_, name, _) in SOCK_PROGRAMS {
            let path = pins.link_path(CGROUP_LINK, name);
            if path.exists() {
                std::fs::remove_file(&path)
                    .with_context(|| format!("unpinning {}", path.display()))?;
                detached += 1;
            }
        }
        if detached > 0 {
            info!(
                "detached the socket programs a previous portmap left (socket-level load balancing is off)"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_namespace_has_a_cookie() {
        // SO_NETNS_COOKIE needs Linux 5.14; every namespace has a non-zero one.
        assert_ne!(netns_cookie().unwrap(), 0);
    }
}
