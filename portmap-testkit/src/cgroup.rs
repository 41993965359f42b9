//! cgroup v2: where the unified hierarchy is mounted (mounting it where
//! `portmap run` would if it is mounted nowhere), and throwaway cgroups whose
//! processes are killed and which are removed on drop.

use std::{
    ffi::{CString, OsStr},
    fs::File,
    io,
    os::{fd::AsRawFd as _, unix::ffi::OsStrExt as _},
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::lock;

/// Where cgroup2 is mounted when nothing mounts it yet.
pub const DEFAULT_MOUNT: &str = "/sys/fs/cgroup/unified";

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&field[i + 1..i + 4], 8)
        {
            out.push(b);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    PathBuf::from(OsStr::from_bytes(&out))
}

/// The first cgroup2 mount point in `mountinfo` (`/proc/self/mountinfo`'s
/// format).
fn find_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        if fs.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        mount.split_whitespace().nth(4).map(unescape)
    })
}

/// Where cgroup2 is mounted, if it is.
pub fn mount_point() -> Option<PathBuf> {
    find_mount(&std::fs::read_to_string("/proc/self/mountinfo").ok()?)
}

/// The cgroup2 mount point, and whether this call mounted it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub path: PathBuf,
    pub mounted_now: bool,
}

/// Where cgroup2 is mounted, else mounts it on [`DEFAULT_MOUNT`]. Calls of
/// one process take turns, so two threads never mount it twice.
pub fn ensure_mounted() -> Result<Mount> {
    static MOUNTING: Mutex<()> = Mutex::new(());
    let _turn = lock(&MOUNTING);
    if let Some(path) = mount_point() {
        return Ok(Mount {
            path,
            mounted_now: false,
        });
    }
    let target = Path::new(DEFAULT_MOUNT);
    std::fs::create_dir_all(target).with_context(|| format!("creating {}", target.display()))?;
    let fs = c"cgroup2";
    let c_target = CString::new(target.as_os_str().as_bytes())?;
    // SAFETY: valid C strings; mounting cgroup2 has no memory-safety concerns.
    if unsafe {
        libc::mount(
            fs.as_ptr(),
            c_target.as_ptr(),
            fs.as_ptr(),
            0,
            std::ptr::null(),
        )
    } != 0
    {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("mounting cgroup2 on {}", target.display()));
    }
    Ok(Mount {
        path: target.to_path_buf(),
        mounted_now: true,
    })
}

/// Makes the process `cmd` starts join the cgroup `cgroup` before it runs
/// its program (so its first socket is already in it).
pub fn enter(cmd: &mut Command, cgroup: &Path) -> Result<()> {
    use std::os::unix::process::CommandExt as _;
    let procs = cgroup.join("cgroup.procs");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&procs)
        .with_context(|| format!("opening {}", procs.display()))?;
    // SAFETY: the closure runs between fork and exec and only calls write(2),
    // which is async-signal-safe; it owns `file`, so the fd stays open.
    // Writing "0" moves the writer.
    unsafe {
        cmd.pre_exec(move || {
            let file: &File = &file;
            if libc::write(file.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// Processes in the cgroup `cgroup`.
pub fn pids(cgroup: &Path) -> Vec<i32> {
    std::fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Kills what runs in `cgroup`, then removes it (trying for up to 5 s: the
/// killed take a moment to leave).
pub fn remove(cgroup: &Path) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        for pid in pids(cgroup) {
            // SAFETY: sending SIGKILL to a pid has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        match std::fs::remove_dir(cgroup) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            other => return other,
        }
    }
}

/// A cgroup of its own (a directory at the root of the unified hierarchy),
/// removed on drop with whatever still runs in it.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    /// Whether dropping this value removes the cgroup.
    owned: bool,
}

impl Cgroup {
    /// Creates `<cgroup2 mount>/NAME` (mounting cgroup2 if needed).
    pub fn create(name: &str) -> Result<Self> {
        let path = ensure_mounted()?.path.join(name);
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path, owned: true })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// See [`enter`].
    pub fn enter(&self, cmd: &mut Command) -> Result<()> {
        enter(cmd, &self.path)
    }

    /// See [`pids`].
    pub fn pids(&self) -> Vec<i32> {
        pids(&self.path)
    }

    /// Removes the cgroup now; says why if it cannot.
    pub fn remove(mut self) -> io::Result<()> {
        self.owned = false;
        remove(&self.path)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if self.owned
            && let Err(e) = remove(&self.path)
        {
            eprintln!("warning: cannot remove {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(
            unescape(r"/sys/fs/cgroup/a\040b"),
            PathBuf::from("/sys/fs/cgroup/a b")
        );
        assert_eq!(unescape("/plain"), PathBuf::from("/plain"));
    }

    #[test]
    fn finds_the_unified_hierarchy() {
        let mountinfo = "\
25 30 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw
31 25 0:26 / /sys/fs/cgroup/my\\040cgroups rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate
";
        assert_eq!(
            find_mount(mountinfo),
            Some(PathBuf::from("/sys/fs/cgroup/my cgroups"))
        );
        assert_eq!(find_mount("25 30 0:23 / /sys rw - sysfs sysfs rw\n"), None);
    }
}
