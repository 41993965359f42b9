//! Bounds-checked access to packet memory, common to XDP and tc contexts.
//!
//! Headers are read and written in place, so they must lie in the directly
//! accessible part of the packet: an skb's linear area, an XDP buffer's first
//! fragment. The payload need not: lengths come from the whole packet
//! (`skb->len`, or an XDP buffer with its fragments), so a GSO super-packet, a
//! GRO-merged one or a multi-buffer jumbo frame is as valid as a small one.

use core::mem::size_of;

use aya_ebpf::{
    helpers::bpf_xdp_get_buff_len,
    programs::{TcContext, XdpContext},
};

/// No header portmap reads lies further into a packet than this.
pub const MAX_OFFSET: usize = 2048;

/// A context whose directly accessible bytes lie between `data` and
/// `data_end`, and which may be longer than that.
///
/// `data` and `data_end` are read from the context with volatile loads.
/// Otherwise LLVM, seeing that an earlier length check already implies a later
/// bounds check, deletes the later one, and the verifier (which tracks only
/// the checks it sees against `data_end`) rejects the access it guarded.
pub trait PacketBuf {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// Length of the whole packet, the part beyond `data_end` included.
    fn len(&self) -> usize;
    /// Segments a GSO packet stands for (1 for any other packet).
    fn segments(&self) -> u32;
    /// Whether this is a GSO super-packet (its IP length may be 0 when it
    /// exceeds 64 KiB, as with BIG TCP).
    fn is_gso(&self) -> bool;

    /// Whether the packet is at least `end` bytes long. Cheap when the bytes
    /// are directly accessible; only then asks for the whole length.
    #[inline(always)]
    fn reaches(&self, end: usize) -> bool {
        self.data() + end <= self.data_end() || end <= self.len()
    }

    /// Whether the bytes up to `end` are all directly accessible.
    #[inline(always)]
    fn linear_to(&self, end: usize) -> bool {
        self.data() + end <= self.data_end()
    }
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
    #[inline(always)]
    fn len(&self) -> usize {
        // SAFETY: the helper only reads the buffer this program runs on.
        unsafe { bpf_xdp_get_buff_len(self.ctx) as usize }
    }
    #[inline(always)]
    fn segments(&self) -> u32 {
        1
    }
    #[inline(always)]
    fn is_gso(&self) -> bool {
        // XDP sees frames as they arrive; GSO packets exist only as skbs.
        false
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
    #[inline(always)]
    fn len(&self) -> usize {
        // SAFETY: as above.
        unsafe { (*self.skb.skb).len as usize }
    }
    #[inline(always)]
    fn segments(&self) -> u32 {
        // SAFETY: as above.
        let segs = unsafe { (*self.skb.skb).gso_segs };
        if segs == 0 { 1 } else { segs }
    }
    #[inline(always)]
    fn is_gso(&self) -> bool {
        // SAFETY: as above.
        unsafe { (*self.skb.skb).gso_size != 0 }
    }
}

/// A pointer to a `T` at byte `off` of the packet, if all of the `T` lies
/// inside the directly accessible bytes. This comparison against `data_end`
/// is what lets the verifier accept the access that follows; callers keep it
/// next to that access.
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
