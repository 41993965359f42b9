//! Rewrites XDP decides and tc ingress carries out.
//!
//! XDP picks the backend of every new flow and keeps conntrack, but it cannot
//! always write the result: a packet whose L4 checksum may be partial (see
//! `checksum`) must be amended by the kernel's helpers, which know the skb's
//! checksum state. XDP then leaves the packet untouched and puts the
//! translation in front of it, in the XDP metadata area; the tc ingress
//! program (`portmap_ingress_tc`, on the same interfaces) finds it there and
//! rewrites the skb. Translations travel with their packet, so GRO may merge
//! packets of one flow (they carry equal metadata) but never packets of two.

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    helpers::bpf_xdp_adjust_meta,
    programs::{TcContext, XdpContext},
};
use portmap_common::abi::{DatapathEvent, RawAddr};

use crate::{
    counters::count_event,
    nat::{Side, rewrite_tc},
    packet::PacketBuf,
    parse::{NotAFlow, parse_skb},
};

/// Marks metadata as portmap's: "pmap".
const MAGIC: u32 = u32::from_be_bytes(*b"pmap");

/// What XDP asks tc ingress to write.
#[repr(C)]
#[derive(Clone, Copy)]
struct Handoff {
    magic: u32,
    addr: RawAddr,
    /// Network byte order.
    port: u16,
    /// 0: destination (a request), 1: source.
    side: u8,
    _pad: u8,
}

const HANDOFF_LEN: usize = core::mem::size_of::<Handoff>();

/// Leaves the rewrite of `side` to `addr`:`port` to tc ingress. Fails when
/// the driver keeps no metadata: then the packet came from a NIC, whose
/// frames never carry partial checksums, and XDP rewrites it itself.
#[inline(always)]
pub fn defer(ctx: &XdpContext, side: Side, addr: &RawAddr, port: u16) -> Option<()> {
    // SAFETY: the helper moves the metadata start of this program's own
    // buffer, checking its bounds; no packet pointer is used after it.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -(HANDOFF_LEN as i32)) } != 0 {
        return None;
    }
    let meta = ctx.metadata();
    if meta + HANDOFF_LEN > ctx.data() {
        return None;
    }
    let handoff = Handoff {
        magic: MAGIC,
        addr: *addr,
        port,
        side: u8::from(side == Side::Src),
        _pad: 0,
    };
    // SAFETY: `meta..meta + HANDOFF_LEN` lies before `data`, as checked just
    // above; metadata is 4-byte aligned, and the write is unaligned anyway.
    unsafe { (meta as *mut Handoff).write_unaligned(handoff) };
    count_event(DatapathEvent::ChecksumDeferred);
    Some(())
}

/// tc ingress: carries out a rewrite XDP left in the packet's metadata.
/// Packets without one pass at the cost of two loads and a compare.
#[inline(always)]
pub fn run(ctx: &TcContext) -> i32 {
    if let Some(handoff) = take(ctx) {
        apply(ctx, &handoff);
    }
    TC_ACT_UNSPEC
}

#[inline(always)]
fn take(ctx: &TcContext) -> Option<Handoff> {
    // SAFETY: `skb` is the kernel's valid `__sk_buff` for this run.
    let meta = unsafe { core::ptr::read_volatile(&(*ctx.skb.skb).data_meta) } as usize;
    if meta + HANDOFF_LEN > ctx.data() {
        return None;
    }
    // SAFETY: the metadata reaches up to `data`, so all HANDOFF_LEN bytes at
    // `meta` are inside it (checked just above).
    let handoff = unsafe { (meta as *const Handoff).read_unaligned() };
    (handoff.magic == MAGIC).then_some(handoff)
}

#[inline(always)]
fn apply(ctx: &TcContext, handoff: &Handoff) {
    // XDP parsed the same bytes; GRO may have merged packets of the flow
    // since, which changes lengths, not the headers' layout.
    let flow = match parse_skb(ctx) {
        Ok(flow) => flow,
        Err(NotAFlow::Short(_)) => {
            count_event(DatapathEvent::HeadersNotLinear);
            return;
        }
        Err(_) => {
            count_event(DatapathEvent::RewriteFailed);
            return;
        }
    };
    let side = if handoff.side == 0 {
        Side::Dst
    } else {
        Side::Src
    };
    if rewrite_tc(ctx, &flow, side, &handoff.addr, handoff.port).is_none() {
        count_event(if ctx.is_gso() {
            DatapathEvent::GsoRewriteFailed
        } else {
            DatapathEvent::RewriteFailed
        });
    }
}
