//! tc ingress on backend-facing interfaces (`--backend-iface`): the fast
//! path for replies. A backend's reply is translated back to its frontend and
//! redirected out of the client's interface, skipping the kernel's forwarding
//! path. It stays whatever the backend's stack made it (a GSO super-packet,
//! a partial checksum), since no XDP program on the interface made the kernel
//! turn the backend's offloads off (see `fastpath`). When it cannot be
//! redirected the packet is left untouched for the kernel, and the tc egress
//! program on the client interface translates it as on the slow path.

use aya_ebpf::{bindings::TC_ACT_UNSPEC, programs::TcContext};
use portmap_common::abi::{CT_F_SNAT, CT_REPLY, DIR_REPLY, DatapathEvent};

use crate::{
    conntrack,
    counters::{count_event, count_traffic},
    fastpath,
    maps::CONNTRACK,
    nat::{Side, rewrite_tc},
    packet::PacketBuf,
    parse::{Flow, parse_skb},
};

#[inline(always)]
pub fn run(ctx: &TcContext) -> i32 {
    match parse_skb(ctx) {
        Ok(flow) => translate(ctx, &flow),
        Err(_) => TC_ACT_UNSPEC,
    }
}

#[inline(always)]
fn translate(ctx: &TcContext, flow: &Flow) -> i32 {
    let Some(cfg) = conntrack::config() else {
        return TC_ACT_UNSPEC;
    };
    let now = conntrack::now_ns();
    let key = conntrack::key_of(flow, CT_REPLY);
    let Some(entry) = CONNTRACK.get_ptr_mut(key) else {
        return TC_ACT_UNSPEC;
    };
    // SAFETY: a live map value, read once into a copy.
    let e = unsafe { *entry };
    // A SNATed flow's replies come to this node's address, and tc ingress
    // turns them around (see `snat`); an entry of one is not for here.
    if e.flags & CT_F_SNAT != 0 || !conntrack::reply_allowed(&e, flow.proto, now, cfg) {
        return TC_ACT_UNSPEC;
    }
    // Routed before anything is rewritten, so a fallback leaves the packet
    // as it was for the slow path.
    let Some(hop) = fastpath::route_skb(
        ctx,
        cfg,
        flow,
        (&e.nat_addr, e.nat_port),
        (&flow.dst, flow.dport),
    ) else {
        return TC_ACT_UNSPEC;
    };
    conntrack::touch_unsnated(&key, entry, flow, now);
    if rewrite_tc(ctx, flow, Side::Src, &e.nat_addr, e.nat_port).is_none() {
        count_event(if ctx.is_gso() {
            DatapathEvent::GsoRewriteFailed
        } else {
            DatapathEvent::RewriteFailed
        });
        return TC_ACT_UNSPEC;
    }
    count_traffic(e.frontend_id, e.backend_id, DIR_REPLY, flow);
    count_event(DatapathEvent::ReplyTranslated);
    fastpath::send_skb(ctx, flow, &hop)
}
