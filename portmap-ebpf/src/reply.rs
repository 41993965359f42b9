//! XDP on backend-facing interfaces (`--backend-iface`): the fast path for
//! replies. A backend's reply is translated back to its frontend and
//! redirected out towards the client in XDP. When XDP cannot forward it, the
//! packet is left untouched for the kernel, and the tc program on the client
//! interface translates it as on the slow path.

use aya_ebpf::{bindings::xdp_action::XDP_PASS, programs::XdpContext};
use portmap_common::abi::{CT_REPLY, DIR_REPLY, DatapathEvent};

use crate::{
    checksum, conntrack,
    counters::{count_event, count_traffic},
    fastpath,
    maps::CONNTRACK,
    nat::{L4Check, Side, l4_check_field, rewrite_xdp},
    parse::{Flow, parse},
};

#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    match parse(ctx) {
        Ok(flow) => translate(ctx, &flow),
        Err(_) => XDP_PASS,
    }
}

#[inline(always)]
fn translate(ctx: &XdpContext, flow: &Flow) -> u32 {
    let Some(cfg) = conntrack::config() else {
        return XDP_PASS;
    };
    let now = conntrack::now_ns();
    let key = conntrack::key_of(flow, CT_REPLY);
    let Some(entry) = CONNTRACK.get_ptr_mut(key) else {
        return XDP_PASS;
    };
    // SAFETY: a live map value, read once into a copy.
    let e = unsafe { *entry };
    if !conntrack::reply_allowed(&e, flow.proto, now, cfg) {
        return XDP_PASS;
    }
    let Some(hop) = fastpath::route(
        ctx,
        cfg,
        flow,
        (&e.nat_addr, e.nat_port),
        (&flow.dst, flow.dport),
    ) else {
        return XDP_PASS;
    };
    let Some(old_check) = l4_check_field(ctx, flow) else {
        return XDP_PASS;
    };
    // A backend's stack leaves its checksums to the NIC: a redirected frame
    // must leave complete, so a partial one is completed here.
    let check = if !checksum::looks_partial(flow, old_check) {
        L4Check::Incremental
    } else if let Some(segment) = checksum::segment_sum(ctx, flow) {
        count_event(DatapathEvent::ChecksumCompleted);
        L4Check::Complete { segment }
    } else {
        // Too long to sum here: the kernel path translates it (tc egress).
        count_event(DatapathEvent::FastPathOther);
        return XDP_PASS;
    };
    conntrack::touch(&key, entry, flow, now);
    if rewrite_xdp(ctx, flow, Side::Src, &e.nat_addr, e.nat_port, check).is_none() {
        count_event(DatapathEvent::RewriteFailed);
        return XDP_PASS;
    }
    count_traffic(e.frontend_id, e.backend_id, DIR_REPLY, flow);
    count_event(DatapathEvent::ReplyTranslated);
    fastpath::send(ctx, flow, &hop)
}
