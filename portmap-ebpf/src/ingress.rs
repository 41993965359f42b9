//! XDP ingress: DNAT of packets from clients to published frontends.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    programs::XdpContext,
};
use portmap_common::abi::{
    CT_REQUEST, CtValue, DIR_REQUEST, DatapathConfig, DatapathEvent, FE_DROP_NO_BACKENDS,
    FE_REJECT_NO_BACKENDS, FE_SOURCE_RANGES,
};

use crate::{
    checksum,
    conntrack::{self, Decision},
    counters::{count_event, count_traffic},
    fastpath, handoff, icmp, lb,
    maps::{CONNTRACK, program_variant},
    nat::{L4Check, Side, l4_check_field, rewrite_xdp},
    parse::{Flow, IcmpAt, NotAFlow, parse},
    reject::reject,
};

/// Packets are translated if they belong to a frontend and passed on either
/// way (malformed ones included). The exceptions are new flows that a
/// frontend refuses: no backend with a reject or drop policy, or a source
/// outside its allowed ranges.
#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    match parse(ctx) {
        Ok(flow) => translate(ctx, &flow),
        Err(NotAFlow::Malformed) => {
            count_event(DatapathEvent::Malformed);
            XDP_PASS
        }
        Err(NotAFlow::Short(_)) => {
            count_event(DatapathEvent::HeadersNotLinear);
            XDP_PASS
        }
        Err(NotAFlow::Fragment) => {
            count_event(DatapathEvent::Fragment);
            XDP_PASS
        }
        Err(NotAFlow::Icmp(at)) => {
            translate_icmp(ctx, &at);
            XDP_PASS
        }
        Err(NotAFlow::Other) => XDP_PASS,
    }
}

/// A client's ICMP error about a reply it got from a frontend goes on to the
/// backend, quoting the reply as the backend sent it.
#[inline(always)]
fn translate_icmp(ctx: &XdpContext, at: &IcmpAt) {
    icmp::translate(ctx, at, CT_REQUEST, |q, e| {
        let extra = icmp::redirect_to(ctx, at, &e.nat_addr)?;
        icmp::rewrite_quote(ctx, at, q, Side::Src, &e.nat_addr, e.nat_port, extra)
    });
}

#[inline(always)]
fn translate(ctx: &XdpContext, flow: &Flow) -> u32 {
    let Some(cfg) = conntrack::config() else {
        return XDP_PASS;
    };
    let now = conntrack::now_ns();
    let key = conntrack::key_of(flow, CT_REQUEST);

    if let Some(entry) = CONNTRACK.get_ptr_mut(key) {
        // SAFETY: a live map value, read once into a copy.
        let e = unsafe { *entry };
        match conntrack::decide(&e, flow, now, cfg) {
            Decision::Use => {
                conntrack::touch(&key, entry, flow, now);
                return forward(ctx, cfg, flow, &e, false);
            }
            Decision::Reselect => count_event(DatapathEvent::FlowReselected),
            Decision::New => {}
        }
    }

    let Some(fe) = lb::find_frontend(flow) else {
        return XDP_PASS;
    };
    if fe.flags & FE_SOURCE_RANGES != 0 && !lb::source_allowed(&fe, flow) {
        count_event(DatapathEvent::DroppedSourceRange);
        return XDP_DROP;
    }
    let Some((backend_id, backend, sticky)) = lb::pick_backend(&fe, flow, now) else {
        return if fe.flags & FE_REJECT_NO_BACKENDS != 0 {
            count_event(DatapathEvent::Rejected);
            reject(ctx, flow)
        } else if fe.flags & FE_DROP_NO_BACKENDS != 0 {
            count_event(DatapathEvent::DroppedNoBackend);
            XDP_DROP
        } else {
            count_event(DatapathEvent::NoBackend);
            XDP_PASS
        };
    };
    if sticky {
        count_event(DatapathEvent::AffinityHit);
    }
    let Some(e) = conntrack::create(flow, &fe, backend_id, &backend, now) else {
        count_event(DatapathEvent::ConntrackInsertFailed);
        return XDP_PASS;
    };
    forward(ctx, cfg, flow, &e, true)
}

/// Translates the packet to the backend of its conntrack entry and sends it
/// on: by the fast path if XDP can, else to the kernel.
#[inline(always)]
fn forward(ctx: &XdpContext, cfg: &DatapathConfig, flow: &Flow, e: &CtValue, created: bool) -> u32 {
    // The route is looked up for the translated packet before anything is
    // rewritten, so a fallback leaves nothing half-done.
    let hop = fastpath::route(
        ctx,
        cfg,
        flow,
        (&flow.src, flow.sport),
        (&e.nat_addr, e.nat_port),
    );
    let Some(old_check) = l4_check_field(ctx, flow) else {
        return XDP_PASS;
    };
    let (addr, port) = (&e.nat_addr, e.nat_port);
    let mut deferred = false;
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
    } else if handoff::defer(ctx, Side::Dst, addr, port).is_some() {
        deferred = true;
        Some(())
    } else {
        // No metadata: a NIC's frame, and those are never partial.
        rewrite_xdp(ctx, flow, Side::Dst, addr, port, L4Check::Incremental)
    };
    if written.is_none() {
        count_event(DatapathEvent::RewriteFailed);
        return XDP_PASS;
    }
    translated(e.frontend_id, e.backend_id, flow);
    if created {
        count_event(DatapathEvent::FlowCreated);
    }
    match hop {
        Some(hop) if !deferred => fastpath::send(ctx, flow, &hop),
        _ => XDP_PASS,
    }
}

#[inline(always)]
fn translated(frontend_id: u32, backend_id: u32, flow: &Flow) {
    count_traffic(frontend_id, backend_id, DIR_REQUEST, flow);
    if program_variant() != 0 {
        count_event(DatapathEvent::VariantTranslated);
    }
}
