//! tc egress: reverse NAT of backend replies leaving towards clients.

use aya_ebpf::{bindings::TC_ACT_UNSPEC, programs::TcContext};
use portmap_common::{
    abi::{CT_F_SNAT, CT_REPLY, DIR_REPLY, DatapathEvent},
    csum::CsumDelta,
};

use crate::{
    conntrack,
    counters::{count_event, count_traffic},
    icmp,
    maps::CONNTRACK,
    nat::{Side, rewrite_tc},
    packet::PacketBuf,
    parse::{Flow, IcmpAt, NotAFlow, parse_skb},
};

/// Always continues to the next program or the stack (`TC_ACT_UNSPEC` is
/// tcx's "next"), translated or not. Replies arrive as the stack made them:
/// GSO super-packets of up to 64 KiB and more with partial checksums,
/// GRO-merged ones, payload in pages; only their headers are made linear.
#[inline(always)]
pub fn run(ctx: &TcContext) -> i32 {
    match parse_skb(ctx) {
        Ok(flow) => translate(ctx, &flow),
        Err(NotAFlow::Icmp(at)) => translate_icmp(ctx, &at),
        Err(NotAFlow::Malformed) => count_event(DatapathEvent::Malformed),
        Err(NotAFlow::Short(_)) => count_event(DatapathEvent::HeadersNotLinear),
        Err(NotAFlow::Fragment | NotAFlow::Other) => {}
    }
    TC_ACT_UNSPEC
}

/// An ICMP error to a client about a request it sent quotes the request as
/// translated (to the backend); the quote is put back to the frontend, so the
/// client's stack finds the socket (path MTU discovery, unreachables).
#[inline(always)]
fn translate_icmp(ctx: &TcContext, at: &IcmpAt) {
    icmp::translate(ctx, at, CT_REPLY, |q, e| {
        // Direct writes need the skb linear and private up to the end of the quote.
        ctx.pull_data(at.ip_end as u32).ok()?;
        let (addr, port) = (&e.nat_addr, e.nat_port);
        icmp::rewrite_quote(ctx, at, q, Side::Dst, addr, port, CsumDelta::new())
    });
}

#[inline(always)]
fn translate(ctx: &TcContext, flow: &Flow) {
    let Some(cfg) = conntrack::config() else {
        return;
    };
    let now = conntrack::now_ns();
    let key = conntrack::key_of(flow, CT_REPLY);
    let Some(entry) = CONNTRACK.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: a live map value, read once into a copy.
    let e = unsafe { *entry };
    // A SNATed flow's replies come to this node's address, and tc ingress
    // turns them around (see `snat`); an entry of one is not for here.
    if e.flags & CT_F_SNAT != 0 || !conntrack::reply_allowed(&e, flow.proto, now, cfg) {
        return;
    }
    conntrack::touch_unsnated(&key, entry, flow, now);
    if rewrite_tc(ctx, flow, Side::Src, &e.nat_addr, e.nat_port).is_none() {
        count_event(if ctx.is_gso() {
            DatapathEvent::GsoRewriteFailed
        } else {
            DatapathEvent::RewriteFailed
        });
        return;
    }
    count_traffic(e.frontend_id, e.backend_id, DIR_REPLY, flow);
    count_event(DatapathEvent::ReplyTranslated);
}
