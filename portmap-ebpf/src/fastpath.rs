//! The XDP fast path: a translated packet leaves by `XDP_REDIRECT` instead
//! of crossing the kernel's forwarding path.
//!
//! `bpf_fib_lookup` finds the egress interface and the next hop's MAC for the
//! packet as it will be after translation. If XDP can finish the job (route
//! found, neighbour known, fits the MTU, TTL left, egress interface in
//! `DEVMAP`) the MACs are rewritten, the TTL decremented and the packet
//! redirected. Otherwise it goes to the kernel, which resolves the neighbour,
//! sends "fragmentation needed", or drops it as it would anyway; each such
//! fallback is counted by reason.

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_fib_lookup as FibParams, xdp_action::XDP_PASS,
    },
    helpers::bpf_fib_lookup,
    programs::XdpContext,
};
use portmap_common::{
    abi::{DP_FAST_PATH, DatapathConfig, DatapathEvent, FAMILY_V4, RawAddr},
    csum::CsumDelta,
};

use crate::{
    counters::count_event,
    maps::DEVMAP,
    packet::{PacketBuf, ptr_at},
    parse::Flow,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Where a packet goes next, found before it is rewritten.
pub struct NextHop {
    ifindex: u32,
    smac: [u8; 6],
    dmac: [u8; 6],
}

/// The next hop of `flow` once its addresses and ports are `src`:`sport` →
/// `dst`:`dport`, if XDP can forward it there; `None` (counted) if the
/// kernel must.
#[inline(always)]
pub fn route(
    ctx: &XdpContext,
    cfg: &DatapathConfig,
    flow: &Flow,
    (src, sport): (&RawAddr, u16),
    (dst, dport): (&RawAddr, u16),
) -> Option<NextHop> {
    if cfg.flags & DP_FAST_PATH == 0 {
        return None;
    }
    // A multi-buffer frame (jumbo MTU) may not be redirectable into every
    // device; the kernel forwards it.
    if !ctx.linear_to(flow.l3_off + flow.ip_len as usize) {
        count_event(DatapathEvent::FastPathMultiBuffer);
        return None;
    }
    // A VLAN-tagged packet would need its tag re-made for the egress device.
    if flow.l3_off != 14 {
        count_event(DatapathEvent::FastPathOther);
        return None;
    }
    // SAFETY: an all-zero `bpf_fib_lookup` is a valid value (integers, arrays
    // and unions of integers); the fields that matter are set below.
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    p.l4_protocol = flow.proto;
    p.sport = sport;
    p.dport = dport;
    p.__bindgen_anon_1.tot_len = flow.ip_len as u16;
    p.ifindex = ctx.ingress_ifindex() as u32;
    if flow.family == FAMILY_V4 {
        p.family = AF_INET;
        p.__bindgen_anon_3.ipv4_src = src.0[0];
        p.__bindgen_anon_4.ipv4_dst = dst.0[0];
    } else {
        p.family = AF_INET6;
        p.__bindgen_anon_3.ipv6_src = src.0;
        p.__bindgen_anon_4.ipv6_dst = dst.0;
    }
    // SAFETY: the helper reads and writes `p`, a valid struct of the size given.
    let rc =
        unsafe { bpf_fib_lookup(ctx.ctx.cast(), &mut p, size_of::<FibParams>() as i32, 0) } as u32;
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS => {}
        BPF_FIB_LKUP_RET_NO_NEIGH => {
            count_event(DatapathEvent::FastPathNoNeighbour);
            return None;
        }
        BPF_FIB_LKUP_RET_FRAG_NEEDED => {
            count_event(DatapathEvent::FastPathFragNeeded);
            return None;
        }
        _ => {
            count_event(DatapathEvent::FastPathOther);
            return None;
        }
    }
    // Only into interfaces portmap was given (a redirect into one that cannot
    // take XDP frames would lose the packet), and never with the TTL spent.
    // TTL with the protocol (IPv4), hop limit with the next header (IPv6):
    // two bytes, as a 1-byte bounds check confuses the verifier.
    let (word_off, ttl_at) = if flow.family == FAMILY_V4 {
        (flow.l3_off + 8, 0)
    } else {
        (flow.l3_off + 6, 1)
    };
    let word: *const [u8; 2] = ptr_at(ctx, word_off)?;
    // SAFETY: bounds checked by `ptr_at` just above.
    if DEVMAP.get(p.ifindex).is_none() || unsafe { (*word)[ttl_at] } <= 1 {
        count_event(DatapathEvent::FastPathOther);
        return None;
    }
    Some(NextHop {
        ifindex: p.ifindex,
        smac: p.smac,
        dmac: p.dmac,
    })
}

/// Sends the (already translated) packet to `hop`: new MACs, TTL or hop
/// limit minus one, then `XDP_REDIRECT`.
#[inline(always)]
pub fn send(ctx: &XdpContext, flow: &Flow, hop: &NextHop) -> u32 {
    let Some(macs) = ptr_at::<[u8; 12]>(ctx, 0) else {
        return XDP_PASS;
    };
    if flow.family == FAMILY_V4 {
        // TTL shares a 16-bit word with the protocol; the header checksum
        // changes with it.
        let (Some(word), Some(check)) = (
            ptr_at::<[u8; 2]>(ctx, flow.l3_off + 8),
            ptr_at::<[u8; 2]>(ctx, flow.l3_off + 10),
        ) else {
            return XDP_PASS;
        };
        // SAFETY: both pointers bounds-checked by `ptr_at` just above.
        unsafe {
            let old = *word;
            let new = [old[0].wrapping_sub(1), old[1]];
            let mut d = CsumDelta::new();
            d.replace16(u16::from_ne_bytes(old), u16::from_ne_bytes(new));
            *word = new;
            *check = d.apply(u16::from_ne_bytes(*check)).to_ne_bytes();
        }
    } else {
        let Some(word) = ptr_at::<[u8; 2]>(ctx, flow.l3_off + 6) else {
            return XDP_PASS;
        };
        // SAFETY: bounds checked by `ptr_at` just above (next header, hop limit).
        unsafe { (*word)[1] -= 1 };
    }
    // SAFETY: bounds checked by `ptr_at` above.
    unsafe {
        let m = &mut *macs;
        m[..6].copy_from_slice(&hop.dmac);
        m[6..].copy_from_slice(&hop.smac);
    }
    count_event(DatapathEvent::FastPathRedirected);
    DEVMAP.redirect(hop.ifindex, 0).unwrap_or(XDP_PASS)
}
