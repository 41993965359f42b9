//! Bounds-checked access to packet memory, common to XDP and tc contexts.

use core::mem::size_of;

use aya_ebpf::programs::{TcContext, XdpContext};

/// No header portmap reads lies further into a packet than this.
pub const MAX_OFFSET: usize = 2048;

/// A context whose packet bytes lie between `data` and `data_end`.
///
/// Both are read from the context with volatile loads. Otherwise LLVM, seeing
/// that an earlier length check already implies a later bounds check, deletes
/// the later one, and the verifier (which tracks only the checks it sees
/// against `data_end`) rejects the access it guarded.
pub trait PacketBuf {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
}

impl PacketBuf for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        // SAFETY: `ctx` is the kernel's valid `xdp_md` for this run.
        unsafe { core::ptr::read_volatile(&(*self.ctx).data) as usize }
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        // SAFETY: as above.
        unsafe { core::ptr::read_volatile(&(*self.ctx).data_end) as usize }
    }
}

impl PacketBuf for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        // SAFETY: `skb` is the kernel's valid `__sk_buff` for this run.
        unsafe { core::ptr::read_volatile(&(*self.skb.skb).data) as usize }
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        // SAFETY: as above.
        unsafe { core::ptr::read_volatile(&(*self.skb.skb).data_end) as usize }
    }
}

/// A pointer to a `T` at byte `off` of the packet, if all of the `T` lies
/// inside the packet. This comparison against `data_end` is what lets the
/// verifier accept the access that follows; callers keep it next to that access.
#[inline(always)]
pub fn ptr_at<T>(buf: &impl PacketBuf, off: usize) -> Option<*mut T> {
    // A constant bound on the offset lets the verifier reason about the
    // variable part of `start` even after the offset was spilled to the stack.
    if off > MAX_OFFSET {
        return None;
    }
    let start = buf.data() + off;
    if start + size_of::<T>() > buf.data_end() {
        return None;
    }
    Some(start as *mut T)
}
