//! The few bpf(2) commands aya does not offer: opening a pinned link as a
//! plain fd, reading what a link is attached to, swapping a link's program,
//! reading a hash map's entries in batches.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// The kernel's own "not supported", which bpf(2) passes through as is.
const ENOTSUPP: i32 = 524;

pub const BPF_LINK_TYPE_CGROUP: u32 = 3;
pub const BPF_LINK_TYPE_XDP: u32 = 6;
pub const BPF_LINK_TYPE_TCX: u32 = 11;

/// `bpf_link_info` up to the first 16 bytes of its per-type union, which
/// is all portmap reads: `xdp.ifindex`, `tcx.{ifindex, attach_type}`,
/// `cgroup.{cgroup_id, attach_type}`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkInfo {
    pub link_type: u32,
    pub id: u32,
    pub prog_id: u32,
    _pad: u32,
    union: [u64; 2],
}

impl LinkInfo {
    /// The interface an XDP or tcx link is attached to; 0 once the
    /// interface is gone (the link is severed).
    pub fn ifindex(&self) -> u32 {
        (self.union[0] & 0xffff_ffff) as u32
    }

    /// The cgroup a cgroup link is attached to (0 once it is gone).
    pub fn cgroup_id(&self) -> u64 {
        self.union[0]
    }

    /// A cgroup link's `bpf_attach_type`.
    pub fn cgroup_attach_type(&self) -> u32 {
        (self.union[1] & 0xffff_ffff) as u32
    }
}

fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, initialized bpf_attr prefix of its size; the
    // kernel zero-extends it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// Opens the object pinned at `path`.
pub fn open_pinned(path: &Path) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = ObjGet {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    let fd = sys_bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: BPF_OBJ_GET returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Opens the link with this id.
pub fn link_by_id(id: u32) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct GetFdById {
        id: u32,
        next_id: u32,
        open_flags: u32,
    }
    let mut attr = GetFdById {
        id,
        next_id: 0,
        open_flags: 0,
    };
    let fd = sys_bpf(BPF_LINK_GET_FD_BY_ID, &mut attr)?;
    // SAFETY: BPF_LINK_GET_FD_BY_ID returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// What the kernel says about the link `link`.
pub fn link_info(link: &OwnedFd) -> io::Result<LinkInfo> {
    #[repr(C)]
    struct GetInfo {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut info = LinkInfo::default();
    let mut attr = GetInfo {
        bpf_fd: link.as_raw_fd() as u32,
        info_len: size_of::<LinkInfo>() as u32,
        info: (&raw mut info) as u64,
    };
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info)
}

/// Atomically replaces the program of `link` with `program`.
pub fn link_update(link: &OwnedFd, program: i32) -> io::Result<()> {
    #[repr(C)]
    struct LinkUpdate {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    let mut attr = LinkUpdate {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: program as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    sys_bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}

/// Reads every entry of the hash map `map` (keys `K`, values `V`, exactly
/// the map's key and value sizes), `chunk` entries a call
/// (BPF_MAP_LOOKUP_BATCH), and hands each chunk to `each` as it comes.
/// Entries changed during the walk may be seen or not, as with a walk key by
/// key; the kernel keeps each bucket whole within one call.
///
/// One call per `chunk` entries instead of two per entry: a walk of a full
/// conntrack table (262,144 entries) took the daemon about a core-second
/// key by key. `Err` with `Unsupported` from kernels without batch
/// operations for the map's type (before 5.6), before any entry was handed
/// over: the caller walks key by key instead.
pub fn for_each_batch<K: aya::Pod, V: aya::Pod>(
    map: BorrowedFd<'_>,
    chunk: usize,
    mut each: impl FnMut(&[K], &[V]),
) -> io::Result<()> {
    #[repr(C)]
    struct Batch {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    let mut chunk = chunk.max(1);
    let mut keys: Vec<std::mem::MaybeUninit<K>> = Vec::with_capacity(chunk);
    let mut values: Vec<std::mem::MaybeUninit<V>> = Vec::with_capacity(chunk);
    // The position the next call starts from (a bucket index for hash
    // maps, 4 bytes; room for 8).
    let mut position = 0u64;
    let mut next = 0u64;
    let mut first = true;
    loop {
        keys.reserve(chunk);
        values.reserve(chunk);
        let mut attr = Batch {
            in_batch: if first {
                0
            } else {
                (&raw const position) as u64
            },
            out_batch: (&raw mut next) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: map.as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        let done = match sys_bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) {
            Ok(_) => false,
            // The walk is over; this call may still have returned entries.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            // A bucket holds more entries than a chunk: the same call again
            // with room for them.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && chunk < 1 << 20 => {
                chunk *= 2;
                continue;
            }
            Err(e)
                if first
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
                    ) =>
            {
                return Err(io::Error::new(io::ErrorKind::Unsupported, e));
            }
            Err(e) => return Err(e),
        };
        let n = (attr.count as usize).min(chunk);
        // SAFETY: the kernel wrote `n` whole keys and values, at the map's key
        // and value sizes, which are the sizes of `K` and `V`; `Pod` types
        // are valid for any bytes.
        let (k, v) = unsafe {
            (
                std::slice::from_raw_parts(keys.as_ptr().cast::<K>(), n),
                std::slice::from_raw_parts(values.as_ptr().cast::<V>(), n),
            )
        };
        each(k, v);
        if done {
            return Ok(());
        }
        position = next;
        first = false;
    }
}
