//! XDP ingress: DNAT of packets from clients to published frontends.

use aya_ebpf::{bindings::xdp_action::XDP_PASS, programs::XdpContext};
use portmap_common::abi::{CT_FORWARD, DIR_REQUEST, DatapathEvent};

use crate::{
    conntrack::{self, Decision},
    counters::{count_event, count_traffic},
    lb,
    maps::CONNTRACK,
    nat::{Side, rewrite_xdp},
    parse::{NotAFlow, parse},
};

/// Every packet is passed on: translated if it belongs to a frontend,
/// untouched otherwise (including anything malformed).
#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    match parse(ctx) {
        Ok(flow) => {
            let _ = translate(ctx, &flow);
        }
        Err(NotAFlow::Malformed) => count_event(DatapathEvent::Malformed),
        Err(NotAFlow::Fragment) => count_event(DatapathEvent::Fragment),
        Err(NotAFlow::Other) => {}
    }
    XDP_PASS
}

#[inline(always)]
fn translate(ctx: &XdpContext, flow: &crate::parse::Flow) -> Option<()> {
    let cfg = conntrack::config()?;
    let now = conntrack::now_ns();
    let key = conntrack::key_of(flow, CT_FORWARD);

    if let Some(entry) = CONNTRACK.get_ptr_mut(key) {
        // SAFETY: a live map value, read once into a copy.
        let e = unsafe { *entry };
        match conntrack::decide(&e, flow, now, cfg) {
            Decision::Use => {
                conntrack::touch(&key, entry, flow, now);
                rewrite_xdp(ctx, flow, Side::Dst, &e.nat_addr, e.nat_port)?;
                count_traffic(e.frontend_id, e.backend_id, DIR_REQUEST, flow.ip_len);
                return Some(());
            }
            Decision::Reselect => count_event(DatapathEvent::FlowReselected),
            Decision::New => {}
        }
    }

    let fe = lb::find_frontend(flow)?;
    let Some((backend_id, backend)) = lb::pick_backend(&fe, flow) else {
        count_event(DatapathEvent::NoBackend);
        return None;
    };
    let Some(e) = conntrack::create(flow, &fe, backend_id, &backend, now) else {
        count_event(DatapathEvent::ConntrackInsertFailed);
        return None;
    };
    rewrite_xdp(ctx, flow, Side::Dst, &e.nat_addr, e.nat_port)?;
    count_traffic(e.frontend_id, e.backend_id, DIR_REQUEST, flow.ip_len);
    count_event(DatapathEvent::FlowCreated);
    Some(())
}
