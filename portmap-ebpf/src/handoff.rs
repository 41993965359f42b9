//! Rewrites XDP decides and tc ingress carries out.
//!
//! XDP picks the backend of every new flow and keeps conntrack, but it cannot
//! always write the result: a packet whose L4 checksum may be partial (see
//! `checksum`) must be amended by the kernel's helpers, which know the skb's
//! checksum state. XDP then leaves the packet untouched with a mark in front
//! of it, in the XDP metadata area; the tc ingress program
//! (`portmap_ingress_tc`, on the same interfaces) finds the mark, looks the
//! flow's translation up where XDP just decided it (conntrack) and rewrites
//! the skb. The same program turns SNATed flows' replies around (`snat`).
//! Marks travel with their packet, so GRO may merge packets of one flow
//! (they carry equal marks) but never packets of two.

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    helpers::bpf_xdp_adjust_meta,
    programs::{TcContext, XdpContext},
};
use portmap_common::abi::{CT_F_SNAT, CT_REPLY, CT_REQUEST, CtKey, DatapathEvent};

use crate::{
    conntrack,
    counters::count_event,
    maps::CONNTRACK,
    parse::{Flow, NotAFlow, parse_skb},
    snat,
};

/// Marks metadata as portmap's: "pmap".
const MAGIC: u32 = u32::from_be_bytes(*b"pmap");

/// The mark XDP leaves.
#[repr(C)]
#[derive(Clone, Copy)]
struct Handoff {
    magic: u32,
    /// A [`Kind`].
    kind: u8,
    _pad: [u8; 3],
}

/// What tc ingress is to do with a marked packet, and which of its programs
/// does it.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A request, written as its conntrack request entry says (the backend,
    /// and with SNAT this node's address and port as the source): this
    /// module's program.
    Request = 0,
    /// A DSR request that carries the frontend to the backend's node: the
    /// `dsr` program.
    Dsr = 1,
}

const HANDOFF_LEN: usize = core::mem::size_of::<Handoff>();

/// Leaves the rewrite of this packet to tc ingress. Fails when the driver
/// keeps no metadata: then the packet came from a NIC, whose frames never
/// carry partial checksums, and XDP rewrites it itself.
#[inline(always)]
pub fn defer(ctx: &XdpContext, kind: Kind) -> Option<()> {
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
        kind: kind as u8,
        _pad: [0; 3],
    };
    // SAFETY: `meta..meta + HANDOFF_LEN` lies before `data`, as checked just
    // above; metadata is 4-byte aligned, and the write is unaligned anyway.
    unsafe { (meta as *mut Handoff).write_unaligned(handoff) };
    Some(())
}

/// tc ingress: carries out a rewrite XDP left marked in the packet's
/// metadata. Packets without a mark pass at the cost of two loads and a
/// compare.
#[inline(always)]
pub fn run(ctx: &TcContext) -> i32 {
    if marked(ctx) != Some(Kind::Request) {
        return TC_ACT_UNSPEC;
    }
    consume(ctx);
    // XDP parsed the same bytes; GRO may have merged packets of the flow
    // since, which changes lengths, not the headers' layout.
    let flow = match parse_skb(ctx) {
        Ok(flow) => flow,
        Err(NotAFlow::Short(_)) => {
            count_event(DatapathEvent::HeadersNotLinear);
            return TC_ACT_UNSPEC;
        }
        Err(_) => {
            count_event(DatapathEvent::RewriteFailed);
            return TC_ACT_UNSPEC;
        }
    };
    let Some(found) = request_ends(&flow) else {
        count_event(DatapathEvent::RewriteFailed);
        return TC_ACT_UNSPEC;
    };
    snat::write_found(ctx, &flow, &found);
    TC_ACT_UNSPEC
}

/// The mark XDP left in the packet's metadata, if any.
#[inline(always)]
pub fn marked(ctx: &TcContext) -> Option<Kind> {
    // SAFETY: `skb` is the kernel's valid `__sk_buff` for this run.
    let meta = unsafe { core::ptr::read_volatile(&(*ctx.skb.skb).data_meta) } as usize;
    if meta + HANDOFF_LEN > ctx.data() {
        return None;
    }
    // SAFETY: the metadata reaches up to `data`, so all HANDOFF_LEN bytes at
    // `meta` are inside it (checked just above).
    let handoff = unsafe { (meta as *const Handoff).read_unaligned() };
    if handoff.magic != MAGIC {
        return None;
    }
    match handoff.kind {
        0 => Some(Kind::Request),
        1 => Some(Kind::Dsr),
        _ => None,
    }
}

/// Rubs the mark out, once the program it is for has read it: the metadata
/// travels with the skb, through the kernel's forwarding and across veth
/// pairs, and another node's portmap must not take it for its own.
#[inline(always)]
pub fn consume(ctx: &TcContext) {
    // SAFETY: as in `marked`.
    let meta = unsafe { core::ptr::read_volatile(&(*ctx.skb.skb).data_meta) } as usize;
    if meta + HANDOFF_LEN > ctx.data() {
        return;
    }
    // SAFETY: `meta..meta + 4` lies before `data` (checked just above); tc
    // programs may write the metadata area.
    unsafe { (meta as *mut u32).write_unaligned(0) };
}

/// The ends of a request XDP left: as its conntrack request entry says. A
/// SNATed one's entries are touched here (XDP leaves them to this program).
#[inline(always)]
fn request_ends(flow: &Flow) -> Option<snat::Found> {
    let key = conntrack::key_of(flow, CT_REQUEST);
    let entry = CONNTRACK.get_ptr_mut(&key)?;
    // SAFETY: a live map value, copied at once.
    let e = unsafe { *entry };
    let (src, twin) = if e.flags & CT_F_SNAT != 0 {
        let addr = snat::source_addr(e.backend_id)?;
        let twin = CtKey {
            src: e.nat_addr,
            dst: addr,
            sport: e.nat_port,
            dport: e.snat_port,
            direction: CT_REPLY,
            ..key
        };
        (Some((addr, e.snat_port)), Some(twin))
    } else {
        (None, None)
    };
    Some(snat::Found {
        ends: (src, (e.nat_addr, e.nat_port)),
        key,
        entry,
        twin,
        frontend_id: e.frontend_id,
        backend_id: e.backend_id,
    })
}
