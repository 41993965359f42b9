//! Writing the translation XDP decided for a request into the packet, and
//! sending it on.
//!
//! The destination is written in place with checksums updated
//! incrementally, or completed (a partial checksum on a frame the fast path
//! redirects), or left to tc ingress (a checksum that may be partial on a
//! packet for the kernel; see `checksum` and `handoff`). A SNATed request
//! changes both ends and is always left to tc ingress, which writes both
//! with the kernel's helpers: two rewrites inlined here would not fit the
//! program's one 512-byte stack frame. The route for the translated packet
//! is looked up before anything is written, so a fallback leaves nothing
//! half-done.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    programs::XdpContext,
};
use portmap_common::abi::{CT_F_DSR, CT_F_SNAT, DatapathConfig, DatapathEvent, RawAddr};

use crate::{
    checksum,
    counters::count_event,
    dsr, fastpath,
    handoff::{self, Kind},
    hopcache::HopTag,
    nat::{L4Check, Side, l4_check_field, rewrite_xdp},
    parse::Flow,
};

/// How it went.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Written; the packet leaves with this verdict.
    Written(u32),
    /// Left to tc ingress; the packet goes to the kernel.
    Deferred,
    /// Nothing could be written (counted); the packet goes on untouched.
    Failed,
    /// A DSR request that had to carry its frontend and cannot (counted):
    /// dropped, since it would open a flow whose replies never reach the
    /// client.
    Dropped,
}

impl Outcome {
    /// The XDP verdict.
    #[inline(always)]
    pub fn verdict(self) -> u32 {
        match self {
            Outcome::Written(v) => v,
            Outcome::Deferred | Outcome::Failed => XDP_PASS,
            Outcome::Dropped => XDP_DROP,
        }
    }
}

/// Writes `flow`'s new destination `(addr, port)` into its packet and sends
/// it: by the fast path if XDP can forward it, else to the kernel. A SNATed
/// request, and a DSR request that must carry its frontend (see `dsr`), are
/// marked for tc ingress instead (`flags`: the conntrack entry's). `tag`:
/// the backend, whose next hop may be cached (see `hopcache`).
#[inline(always)]
pub fn write(
    ctx: &XdpContext,
    cfg: &DatapathConfig,
    flow: &Flow,
    (addr, port): (&RawAddr, u16),
    flags: u8,
    tag: &HopTag,
) -> Outcome {
    if flags & CT_F_DSR != 0 && dsr::needs_option(flow) {
        if handoff::defer(ctx, Kind::Dsr).is_some() {
            return Outcome::Deferred;
        }
        // A driver that keeps no XDP metadata: no request of the flow can
        // carry the option.
        count_event(DatapathEvent::DsrOptionSkipped);
        return Outcome::Dropped;
    }
    if flags & CT_F_SNAT != 0 {
        if handoff::defer(ctx, Kind::Request).is_some() {
            return Outcome::Deferred;
        }
        // A driver that keeps no XDP metadata: the request cannot be handed
        // over, and is passed as it came.
        count_event(DatapathEvent::RewriteFailed);
        return Outcome::Failed;
    }
    let hop = fastpath::route(ctx, cfg, flow, (&flow.src, flow.sport), (addr, port), tag);
    let Some(old_check) = l4_check_field(ctx, flow) else {
        count_event(DatapathEvent::RewriteFailed);
        return Outcome::Failed;
    };
    let written = if !checksum::looks_partial(flow, old_check) {
        rewrite_xdp(ctx, flow, Side::Dst, addr, port, L4Check::Incremental)
    } else if let (Some(_), Some(segment)) = (&hop, checksum::segment_sum(ctx, flow)) {
        count_event(DatapathEvent::ChecksumCompleted);
        rewrite_xdp(
            ctx,
            flow,
            Side::Dst,
            addr,
            port,
            L4Check::Complete { segment },
        )
    } else if handoff::defer(ctx, Kind::Request).is_some() {
        count_event(DatapathEvent::ChecksumDeferred);
        return Outcome::Deferred;
    } else {
        // No metadata: a NIC's frame, and those are never partial.
        rewrite_xdp(ctx, flow, Side::Dst, addr, port, L4Check::Incremental)
    };
    if written.is_none() {
        count_event(DatapathEvent::RewriteFailed);
        return Outcome::Failed;
    }
    Outcome::Written(match hop {
        Some(hop) => fastpath::send(ctx, flow, &hop),
        None => XDP_PASS,
    })
}
