//! XDP ingress: DNAT of packets from clients to published frontends, and
//! SNAT of those whose backend is on another node. (The replies of SNATed
//! flows are turned around by tc ingress: see `snat`.)

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    programs::XdpContext,
};
use portmap_common::abi::{
    CT_F_SNAT, CT_REQUEST, CtValue, DIR_REQUEST, DatapathConfig, DatapathEvent,
    FE_DROP_NO_BACKENDS, FE_REJECT_NO_BACKENDS, FE_SOURCE_RANGES,
};

use crate::{
    conntrack::{self, Decision},
    counters::{count_event, count_traffic},
    hopcache::HopTag,
    icmp, lb,
    maps::{CONNTRACK, program_variant},
    nat::Side,
    parse::{Flow, IcmpAt, NotAFlow, parse},
    reject::reject,
    snat,
    xlate::{self, Outcome},
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
/// backend, quoting the reply as the backend sent it. (An error about a
/// request SNATed towards another node is tc ingress's: see `snat`.)
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
                // A SNATed flow's request goes on to tc ingress, which
                // touches its entries (their twins are found through SNAT
                // state, more than fits this program's stack).
                if e.flags & CT_F_SNAT == 0 {
                    conntrack::touch_unsnated(&key, entry, flow, now);
                }
                return forward(ctx, cfg, flow, &e, now, false);
            }
            Decision::Reselect => count_event(DatapathEvent::FlowReselected),
            Decision::New => {}
        }
    }
    match new_flow(ctx, cfg, flow, now) {
        Ok(e) => forward(ctx, cfg, flow, &e, now, true),
        Err(verdict) => verdict,
    }
}

/// A packet of a frontend that no current conntrack entry covers: a new
/// flow, its entries created. `Err` is the verdict for a packet that is not
/// forwarded (not a frontend's: a SNATed flow's reply among them, which tc
/// ingress turns around; refused; no backend).
#[inline(always)]
fn new_flow(ctx: &XdpContext, cfg: &DatapathConfig, flow: &Flow, now: u64) -> Result<CtValue, u32> {
    let Some(fe) = lb::find_frontend(flow) else {
        return Err(XDP_PASS);
    };
    if fe.flags & FE_SOURCE_RANGES != 0 && !lb::source_allowed(&fe, flow) {
        count_event(DatapathEvent::DroppedSourceRange);
        return Err(XDP_DROP);
    }
    let Some((backend_id, backend, sticky)) = lb::pick_backend(&fe, flow, now) else {
        return Err(if fe.flags & FE_REJECT_NO_BACKENDS != 0 {
            count_event(DatapathEvent::Rejected);
            reject(ctx, flow)
        } else if fe.flags & FE_DROP_NO_BACKENDS != 0 {
            count_event(DatapathEvent::DroppedNoBackend);
            XDP_DROP
        } else {
            count_event(DatapathEvent::NoBackend);
            XDP_PASS
        });
    };
    if sticky {
        count_event(DatapathEvent::AffinityHit);
    }
    // No port for a SNATed flow: refused (counted), as kube-proxy's
    // masquerade drops what it cannot map.
    let Ok(reach) = snat::reach(flow, backend_id, &backend, cfg) else {
        return Err(XDP_DROP);
    };
    let Some(e) = conntrack::create(flow, &fe, backend_id, &backend, reach, now) else {
        snat::release(flow, &backend, reach);
        count_event(DatapathEvent::ConntrackInsertFailed);
        return Err(XDP_PASS);
    };
    Ok(e)
}

/// Translates the packet to the backend of its conntrack entry and sends it
/// on: by the fast path if XDP can, else to the kernel. A SNATed flow's
/// request (its source becomes this node's address and the flow's port too)
/// is handed to tc ingress.
#[inline(always)]
fn forward(
    ctx: &XdpContext,
    cfg: &DatapathConfig,
    flow: &Flow,
    e: &CtValue,
    now: u64,
    created: bool,
) -> u32 {
    let tag = HopTag {
        backend_id: e.backend_id,
        backend_generation: e.backend_generation,
        now,
    };
    let outcome = xlate::write(ctx, cfg, flow, (&e.nat_addr, e.nat_port), e.flags, &tag);
    if matches!(outcome, Outcome::Written(_) | Outcome::Deferred) {
        count_traffic(e.frontend_id, e.backend_id, DIR_REQUEST, flow);
        if program_variant() != 0 {
            count_event(DatapathEvent::VariantTranslated);
        }
        if created {
            count_event(DatapathEvent::FlowCreated);
        }
    }
    outcome.verdict()
}
