//! tc egress: reverse NAT of backend replies leaving towards clients.

use aya_ebpf::{bindings::TC_ACT_UNSPEC, programs::TcContext};
use portmap_common::{
    abi::{CT_REPLY, DIR_REPLY, DatapathEvent},
    csum::CsumDelta,
};

use crate::{
    conntrack,
    counters::{count_event, count_traffic},
    icmp::{self, QuoteSide},
    maps::CONNTRACK,
    nat::{Side, rewrite_tc},
    parse::{Flow, IcmpAt, NotAFlow, parse},
};

/// Headers are read directly from the skb's linear part; this much of it is
/// made linear first if the skb is longer but its headers are not all there.
const HEADER_BYTES: u32 = 256;

/// Always continues to the next program or the stack (`TC_ACT_UNSPEC` is
/// tcx's "next"), translated or not.
#[inline(always)]
pub fn run(ctx: &TcContext) -> i32 {
    let linear = ctx.data_end().saturating_sub(ctx.data()) as u32;
    let want = if ctx.len() < HEADER_BYTES {
        ctx.len()
    } else {
        HEADER_BYTES
    };
    if linear < want {
        let _ = ctx.pull_data(want);
    }
    match parse(ctx) {
        Ok(flow) => {
            let _ = translate(ctx, &flow);
        }
        Err(NotAFlow::Icmp(at)) => {
            let _ = translate_icmp(ctx, &at);
        }
        Err(_) => {}
    }
    TC_ACT_UNSPEC
}

/// An ICMP error to a client about a request it sent quotes the request as
/// translated (to the backend); the quote is put back to the frontend, so the
/// client's stack finds the socket (path MTU discovery, unreachables).
#[inline(always)]
fn translate_icmp(ctx: &TcContext, at: &IcmpAt) -> Option<()> {
    let (q, e) = icmp::find_flow(ctx, at, CT_REPLY)?;
    // Direct writes need the skb linear and private up to the end of the quote.
    ctx.pull_data(at.ip_end as u32).ok()?;
    icmp::rewrite_quote(
        ctx,
        at,
        &q,
        QuoteSide::Dst,
        &e.nat_addr,
        e.nat_port,
        CsumDelta::new(),
    )?;
    count_event(DatapathEvent::IcmpTranslated);
    Some(())
}

#[inline(always)]
fn translate(ctx: &TcContext, flow: &Flow) -> Option<()> {
    let cfg = conntrack::config()?;
    let now = conntrack::now_ns();
    let key = conntrack::key_of(flow, CT_REPLY);
    let entry = CONNTRACK.get_ptr_mut(key)?;
    // SAFETY: a live map value, read once into a copy.
    let e = unsafe { *entry };
    if !conntrack::reply_allowed(&e, flow.proto, now, cfg) {
        return None;
    }
    conntrack::touch(&key, entry, flow, now);
    rewrite_tc(ctx, flow, Side::Src, &e.nat_addr, e.nat_port)?;
    count_traffic(e.frontend_id, e.backend_id, DIR_REPLY, flow.ip_len);
    count_event(DatapathEvent::ReplyTranslated);
    Some(())
}
