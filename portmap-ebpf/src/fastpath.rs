//! The fast path: a translated packet leaves by a redirect instead of
//! crossing the kernel's forwarding path.
//!
//! - Requests, in XDP on the published interfaces: `XDP_REDIRECT` into the
//!   backend's interface.
//! - Replies, in tc ingress on the backend interfaces: `bpf_redirect` (or
//!   `bpf_redirect_neigh` while the client's neighbour entry is not known
//!   yet) out of the client's interface. tc, not XDP: an XDP program on a
//!   veth makes the kernel turn GSO off on its peer, and a backend (a
//!   container) would then send every TCP segment on its own. In tc a reply
//!   stays the GSO super-packet the backend sent, its checksum partial.
//!
//! `bpf_fib_lookup` finds the egress interface and the next hop's MAC for the
//! packet as it will be after translation; for requests, its answer is kept
//! per backend while the routing state is unchanged (see `hopcache`). If the
//! redirect can finish the job
//! (route found, fits the MTU, TTL left, egress interface in `DEVMAP`) the
//! MACs are rewritten, the TTL decremented and the packet redirected.
//! Otherwise it goes to the kernel, which resolves the neighbour, sends
//! "fragmentation needed", or drops it as it would anyway; each such fallback
//! is counted by reason.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        TC_ACT_UNSPEC, bpf_fib_lookup as FibParams, xdp_action::XDP_PASS,
    },
    helpers::{bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh},
    programs::{TcContext, XdpContext},
};
use portmap_common::{
    abi::{DP_FAST_PATH, DatapathConfig, DatapathEvent, FAMILY_V4, RawAddr},
    csum::CsumDelta,
};

use crate::{
    counters::count_event,
    hopcache::{self, Cached, HopTag},
    maps::{DEVMAP, FIB_SCRATCH},
    packet::{PacketBuf, ptr_at},
    parse::Flow,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Where a packet goes next, found before it is rewritten.
pub struct NextHop {
    pub ifindex: u32,
    /// The MACs (source, destination), if the neighbour is known (always,
    /// for XDP).
    pub macs: Option<([u8; 6], [u8; 6])>,
}

/// The next hop of `flow` once its addresses and ports are `src`:`sport` →
/// `dst`:`dport`, if XDP can forward it there; `None` (counted) if the
/// kernel must. `tag`: the backend the request goes to, whose cached next
/// hop is used if current.
#[inline(always)]
pub fn route(
    ctx: &XdpContext,
    cfg: &DatapathConfig,
    flow: &Flow,
    src: (&RawAddr, u16),
    dst: (&RawAddr, u16),
    tag: &HopTag,
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
    let ifindex = ctx.ingress_ifindex() as u32;
    let slot = match hopcache::get(tag, flow, ifindex) {
        Cached::Hit(hop) => {
            if ttl_left(ctx, flow)? {
                return Some(hop);
            }
            count_event(DatapathEvent::FastPathOther);
            return None;
        }
        Cached::Fill(slot) => Some(slot),
        Cached::Off => None,
    };
    count_event(DatapathEvent::FastPathHopLookedUp);
    // XDP cannot queue a packet for neighbour resolution: the kernel does.
    let hop = lookup(
        ctx,
        ctx.ctx.cast(),
        ifindex,
        flow,
        src,
        dst,
        flow.ip_len,
        false,
    )?;
    if let Some(slot) = slot {
        hopcache::fill(slot, &hop, flow.ip_len);
    }
    Some(hop)
}

/// [`route`] for tc: the MTU is checked against the skb (a GSO packet against
/// its segments), and a next hop whose MAC is not known yet is still taken:
/// `bpf_redirect_neigh` resolves it.
#[inline(always)]
pub fn route_skb(
    ctx: &TcContext,
    cfg: &DatapathConfig,
    flow: &Flow,
    src: (&RawAddr, u16),
    dst: (&RawAddr, u16),
) -> Option<NextHop> {
    if cfg.flags & DP_FAST_PATH == 0 {
        return None;
    }
    // SAFETY: `skb` is the kernel's valid `__sk_buff` for this run.
    let ifindex = unsafe { (*ctx.skb.skb).ingress_ifindex };
    lookup(ctx, ctx.skb.skb.cast(), ifindex, flow, src, dst, 0, true)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn lookup(
    buf: &impl PacketBuf,
    raw_ctx: *mut c_void,
    ifindex: u32,
    flow: &Flow,
    (src, sport): (&RawAddr, u16),
    (dst, dport): (&RawAddr, u16),
    tot_len: u32,
    resolve_neighbour: bool,
) -> Option<NextHop> {
    // A VLAN-tagged packet would need its tag re-made for the egress device.
    if flow.l3_off != 14 {
        count_event(DatapathEvent::FastPathOther);
        return None;
    }
    // The 64-byte parameters live in a per-CPU scratch slot, not on the
    // 512-byte stack. A program run holds its CPU (softirq or BH-disabled
    // context) and nothing here yields, so no other run reuses the slot
    // meanwhile.
    let p = FIB_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: a valid, exclusively used map value (see above); an all-zero
    // `bpf_fib_lookup` is a valid value (integers, arrays and unions of
    // integers), and the fields that matter are set below.
    let p = unsafe {
        core::ptr::write_bytes(p, 0, 1);
        &mut *p
    };
    p.l4_protocol = flow.proto;
    p.sport = sport;
    p.dport = dport;
    // 0: the kernel checks the packet itself against the egress MTU.
    p.__bindgen_anon_1.tot_len = tot_len as u16;
    p.ifindex = ifindex;
    if flow.family == FAMILY_V4 {
        p.family = AF_INET;
        p.__bindgen_anon_3.ipv4_src = src.0[0];
        p.__bindgen_anon_4.ipv4_dst = dst.0[0];
    } else {
        p.family = AF_INET6;
        p.__bindgen_anon_3.ipv6_src = src.0;
        p.__bindgen_anon_4.ipv6_dst = dst.0;
    }
    // SAFETY: the helper reads and writes `p`, a valid struct of the size
    // given; `raw_ctx` is this program's own context.
    let rc = unsafe { bpf_fib_lookup(raw_ctx, p, size_of::<FibParams>() as i32, 0) } as u32;
    let known = match rc {
        BPF_FIB_LKUP_RET_SUCCESS => true,
        BPF_FIB_LKUP_RET_NO_NEIGH if resolve_neighbour => false,
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
    };
    // Only into interfaces portmap was given (a redirect into one that cannot
    // take the packet would lose it), and never with the TTL spent.
    if DEVMAP.get(p.ifindex).is_none() || !ttl_left(buf, flow)? {
        count_event(DatapathEvent::FastPathOther);
        return None;
    }
    Some(NextHop {
        ifindex: p.ifindex,
        macs: known.then_some((p.smac, p.dmac)),
    })
}

/// Whether the packet's TTL (IPv4) or hop limit (IPv6) allows one more hop;
/// `None` if the header cannot be read.
#[inline(always)]
fn ttl_left(buf: &impl PacketBuf, flow: &Flow) -> Option<bool> {
    // TTL with the protocol (IPv4), hop limit with the next header (IPv6):
    // two bytes, as a 1-byte bounds check confuses the verifier.
    let word: *const [u8; 2] = ptr_at(buf, ttl_word(flow))?;
    // SAFETY: bounds checked by `ptr_at` just above.
    let ttl = unsafe { (*word)[usize::from(flow.family != FAMILY_V4)] };
    Some(ttl > 1)
}

/// Offset of the 16-bit word that holds the TTL (IPv4: TTL, protocol) or
/// the hop limit (IPv6: next header, hop limit).
#[inline(always)]
fn ttl_word(flow: &Flow) -> usize {
    flow.l3_off + if flow.family == FAMILY_V4 { 8 } else { 6 }
}

/// Sends the (already translated) packet to `hop` from XDP: new MACs, TTL or
/// hop limit minus one, then `XDP_REDIRECT`.
#[inline(always)]
pub fn send(ctx: &XdpContext, flow: &Flow, hop: &NextHop) -> u32 {
    let Some((smac, dmac)) = hop.macs else {
        return XDP_PASS;
    };
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
        m[..6].copy_from_slice(&dmac);
        m[6..].copy_from_slice(&smac);
    }
    count_event(DatapathEvent::FastPathRedirected);
    DEVMAP.redirect(hop.ifindex, 0).unwrap_or(XDP_PASS)
}

/// Sends the (already translated) skb to `hop` from tc: TTL or hop limit
/// minus one, then out of the egress interface with the MACs of the next
/// hop, or with the neighbour subsystem's once it has resolved it.
#[inline(always)]
pub fn send_skb(ctx: &TcContext, flow: &Flow, hop: &NextHop) -> i32 {
    let at = ttl_word(flow);
    let Some(word) = ptr_at::<[u8; 2]>(ctx, at) else {
        return TC_ACT_UNSPEC;
    };
    // SAFETY: bounds checked by `ptr_at` just above.
    let old = unsafe { *word };
    let new = if flow.family == FAMILY_V4 {
        [old[0].wrapping_sub(1), old[1]]
    } else {
        [old[0], old[1].wrapping_sub(1)]
    };
    if ctx.store(at, &new, 0).is_err() {
        return TC_ACT_UNSPEC;
    }
    if flow.family == FAMILY_V4 {
        let (old, new) = (
            u64::from(u16::from_ne_bytes(old)),
            u64::from(u16::from_ne_bytes(new)),
        );
        if ctx.l3_csum_replace(flow.l3_off + 10, old, new, 2).is_err() {
            return TC_ACT_UNSPEC;
        }
    }
    count_event(DatapathEvent::FastPathRedirected);
    // SAFETY: helper calls with plain integers (and no neighbour parameters):
    // they only record where the skb goes, and return the verdict that sends
    // it there.
    unsafe {
        match hop.macs {
            Some((smac, dmac)) => {
                let mut macs = [0u8; 12];
                macs[..6].copy_from_slice(&dmac);
                macs[6..].copy_from_slice(&smac);
                if ctx.store(0, &macs, 0).is_err() {
                    return TC_ACT_UNSPEC;
                }
                bpf_redirect(hop.ifindex, 0) as i32
            }
            None => bpf_redirect_neigh(hop.ifindex, core::ptr::null_mut(), 0, 0) as i32,
        }
    }
}
