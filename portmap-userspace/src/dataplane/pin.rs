//! Pinned state on a bpf filesystem: maps under `DIR/maps/`, program links
//! under `DIR/links/`. Pins outlive the daemon, so the dataplane keeps
//! forwarding while it is stopped with `--keep-datapath`, killed, or upgraded,
//! and the next daemon adopts it.

use std::{
    fs::File,
    io,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::maps::MapInfo;
use portmap_common::abi::{DatapathConfig, MAP_LAYOUT_VERSION};

/// Map flags the kernel sets by itself (devmaps are made read-only for
/// programs), so a pinned map shows them although no definition asks.
const KERNEL_MAP_FLAGS: u32 = 1 << 7; // BPF_F_RDONLY_PROG

/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

pub const DEFAULT_DIR: &str = "/sys/fs/bpf/portmap";

/// A pin directory, locked for this process while the value lives.
#[derive(Debug)]
pub struct PinDir {
    root: PathBuf,
    /// Holds an exclusive `flock` on the directory: one daemon per directory.
    _lock: File,
}

fn on_bpffs(path: &Path) -> io::Result<bool> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `statfs` writes into `buf`, a valid zeroed struct; `c` is a valid C string.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut buf) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(buf.f_type as i64 == BPF_FS_MAGIC)
}

/// Mounts bpffs on `/sys/fs/bpf` if nothing is mounted there yet.
fn ensure_bpffs(root: &Path) -> Result<()> {
    let mount_point = Path::new("/sys/fs/bpf");
    if root.starts_with(mount_point) && !on_bpffs(mount_point).unwrap_or(false) {
        std::fs::create_dir_all(mount_point).ok();
        let source = c"bpf";
        let target = c"/sys/fs/bpf";
        // SAFETY: valid C strings; mounting bpffs has no memory-safety concerns.
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                source.as_ptr(),
                0,
                c"mode=0700".as_ptr().cast(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error()).context("mounting bpffs on /sys/fs/bpf");
        }
        log::info!("mounted bpffs on /sys/fs/bpf");
        if private_mount_namespace() {
            log::warn!(
                "this process has its own mount namespace (e.g. `ip netns exec`): the bpffs it \
                 mounted, and the pins on it, end with it, so the dataplane cannot outlive it; \
                 run in the host's mount namespace (e.g. `nsenter --net=...`) to keep it"
            );
        }
    }
    let parent = root.parent().unwrap_or(root);
    if !on_bpffs(parent).with_context(|| format!("checking {}", parent.display()))? {
        bail!(
            "{} is not on a bpf filesystem (mount one: mount -t bpf bpf {})",
            root.display(),
            parent.display()
        );
    }
    Ok(())
}

/// Whether this process's mount namespace differs from init's.
fn private_mount_namespace() -> bool {
    match (
        std::fs::read_link("/proc/self/ns/mnt"),
        std::fs::read_link("/proc/1/ns/mnt"),
    ) {
        (Ok(mine), Ok(init)) => mine != init,
        _ => false,
    }
}

impl PinDir {
    /// Opens (creating it if needed) and locks `root`.
    pub fn open(root: &Path) -> Result<Self> {
        ensure_bpffs(root)?;
        for dir in [root.to_path_buf(), root.join("maps"), root.join("links")] {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let lock = File::open(root).with_context(|| format!("opening {}", root.display()))?;
        // SAFETY: flock on a valid fd owned by `lock`.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock {
                bail!("another portmap is using {}", root.display());
            }
            return Err(err).with_context(|| format!("locking {}", root.display()));
        }
        Ok(Self {
            root: root.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn map_path(&self, name: &str) -> PathBuf {
        self.root.join("maps").join(name)
    }

    pub fn link_path(&self, kind: &str, iface: &str) -> PathBuf {
        self.root.join("links").join(format!("{kind}-{iface}"))
    }

    /// Interfaces with a pinned link of `kind`.
    pub fn linked_ifaces(&self, kind: &str) -> Result<Vec<String>> {
        let prefix = format!("{kind}-");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.root.join("links"))? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(iface) = name.strip_prefix(&prefix) {
                out.push(iface.to_string());
            }
        }
        Ok(out)
    }

    /// Whether a previous daemon left maps here.
    pub fn has_maps(&self) -> bool {
        std::fs::read_dir(self.root.join("maps")).is_ok_and(|mut d| d.next().is_some())
    }

    /// Refuses pinned maps this build would misread: a different layout
    /// version, or a map whose sizes differ from the object's (with `sizes`,
    /// the max entries the flags ask for).
    pub fn check_compatible(&self, object: &[u8], sizes: &[(&str, u32)]) -> Result<()> {
        let obj = aya_obj::Object::parse(object).context("parsing the eBPF object")?;
        let mut problems = Vec::new();
        for (name, def) in &obj.maps {
            let path = self.map_path(name);
            if name.starts_with('.') || !path.exists() {
                continue;
            }
            let info =
                MapInfo::from_pin(&path).with_context(|| format!("reading {}", path.display()))?;
            let max = sizes
                .iter()
                .find(|(n, _)| n == name)
                .map_or(def.max_entries(), |(_, m)| *m);
            let (want, have) = (
                (def.key_size(), def.value_size(), def.map_flags()),
                (
                    info.key_size(),
                    info.value_size(),
                    info.map_flags() & !KERNEL_MAP_FLAGS,
                ),
            );
            if want != have {
                problems.push(format!(
                    "map {name} has key/value sizes and flags {have:?}, this portmap uses {want:?}"
                ));
            } else if info.max_entries() != max {
                problems.push(format!(
                    "map {name} has {} entries, the flags ask for {max} (start with the same sizes to keep its state)",
                    info.max_entries()
                ));
            }
        }
        if problems.is_empty() {
            let config = aya::maps::MapData::from_pin(self.map_path("CONFIG"))?;
            let config: aya::maps::Array<_, DatapathConfig> =
                aya::maps::Array::try_from(aya::maps::Map::Array(config))?;
            let version = config.get(&0, 0)?.layout_version;
            if version != MAP_LAYOUT_VERSION {
                problems.push(format!(
                    "the maps have layout version {version}, this portmap uses {MAP_LAYOUT_VERSION}"
                ));
            }
        }
        if !problems.is_empty() {
            bail!(
                "the dataplane pinned in {} cannot be adopted: {}. Adopting it would misread its \
                 state; remove it with `portmap reset --bpffs-dir {}` (this ends the flows it carries) \
                 and start again",
                self.root.display(),
                problems.join("; "),
                self.root.display()
            );
        }
        Ok(())
    }

    /// Unpins everything: links (which detaches their programs once no
    /// process holds them) and maps, then the directories.
    pub fn remove_all(&self) -> Result<()> {
        for sub in ["links", "maps"] {
            let dir = self.root.join(sub);
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for entry in entries {
                    let path = entry?.path();
                    std::fs::remove_file(&path)
                        .with_context(|| format!("unpinning {}", path.display()))?;
                }
            }
            let _ = std::fs::remove_dir(&dir);
        }
        let _ = std::fs::remove_dir(&self.root);
        Ok(())
    }
}
