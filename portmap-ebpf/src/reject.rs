//! Answering a new flow to a frontend without backends with an ICMP (or
//! ICMPv6) port unreachable, as kube-proxy's `REJECT` does, so clients fail
//! fast instead of timing out.
//!
//! The message is built in place: the frame is cut after the quoted part of
//! the original packet (its IP header and 8 bytes of transport header; 48
//! bytes for IPv6), the head grows by the new IP and ICMP headers, and the
//! quote ends up exactly where it belongs behind them. Then it is sent back
//! out of the interface it came in on, by `XDP_REDIRECT` to that interface
//! rather than `XDP_TX`: a veth (a container's, a test's) takes an `XDP_TX`
//! frame into its peer's queue but only wakes the peer up if the peer runs
//! an XDP program, so the answer would wait for the next packet; a redirect
//! flushes the queue as it goes.

use aya_ebpf::{
    bindings::xdp_action::XDP_DROP,
    helpers::{bpf_redirect, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use portmap_common::{
    abi::{FAMILY_V4, RawAddr},
    csum::fold,
};

use crate::{
    packet::{PacketBuf, ptr_at},
    parse::Flow,
};

const IPV4_HDR: usize = 20;
const IPV6_HDR: usize = 40;
const ICMP_HDR: usize = 8;
/// Bytes of an IPv6 packet quoted: the fixed header and 8 more.
const QUOTE_V6: usize = 48;
/// Longest ICMP message built: header, IPv4 header with options, 8 bytes.
const MAX_ICMP_MESSAGE: usize = ICMP_HDR + 60 + 8;

/// Sources an ICMP error must never be sent to (RFC 1812 4.3.2.7, RFC 4443 2.4).
#[inline(always)]
fn answerable(flow: &Flow) -> bool {
    let first = flow.src.0[0].to_ne_bytes();
    if flow.family == FAMILY_V4 {
        let a = flow.src.0[0];
        !(a == 0 || a == u32::MAX || first[0] >= 224 || first[0] == 127)
    } else {
        !(flow.src.is_unspecified() || first[0] == 0xff)
    }
}

/// Replaces the packet with an ICMP port unreachable to its sender and
/// sends it back where it came from (`XDP_REDIRECT`); drops it when no answer
/// may or can be sent.
#[inline(always)]
pub fn reject(ctx: &XdpContext, flow: &Flow) -> u32 {
    if !answerable(flow) || build(ctx, flow).is_none() {
        return XDP_DROP;
    }
    // SAFETY: a helper call with plain integers; it only records where the
    // frame goes, and returns the action that sends it there.
    unsafe { bpf_redirect(ctx.ingress_ifindex() as u32, 0) as u32 }
}

#[inline(always)]
fn build(ctx: &XdpContext, flow: &Flow) -> Option<()> {
    let l2 = flow.l3_off;
    // The L2 header is overwritten below; keep its bytes (with a VLAN tag, 18).
    let mut mac = [0u8; 12];
    let mut tag = [0u8; 4];
    let mac_ptr: *const [u8; 12] = ptr_at(ctx, 0)?;
    // SAFETY: bounds checked by `ptr_at` just above.
    mac.copy_from_slice(unsafe { &*mac_ptr });
    if l2 == 18 {
        let tag_ptr: *const [u8; 4] = ptr_at(ctx, 12)?;
        // SAFETY: bounds checked by `ptr_at` just above.
        tag = unsafe { *tag_ptr };
    } else if l2 != 14 {
        return None;
    }
    let v4 = flow.family == FAMILY_V4;
    let (outer, quote) = if v4 {
        (IPV4_HDR + ICMP_HDR, flow.l4_off - flow.l3_off + 8)
    } else {
        (IPV6_HDR + ICMP_HDR, QUOTE_V6)
    };
    if quote > MAX_ICMP_MESSAGE - ICMP_HDR {
        return None;
    }
    let keep = l2 + quote;
    // The whole frame, fragments included: the tail is cut from its end.
    let len = ctx.len();
    if keep > len || !ctx.linear_to(keep) {
        return None;
    }
    // SAFETY: helpers on the program's own context; they check their bounds
    // and invalidate earlier packet pointers, none of which are used again.
    unsafe {
        if len > keep && bpf_xdp_adjust_tail(ctx.ctx, -((len - keep) as i32)) != 0 {
            return None;
        }
        if bpf_xdp_adjust_head(ctx.ctx, -(outer as i32)) != 0 {
            return None;
        }
    }

    // New L2 header: back to where the packet came from.
    let eth: *mut [u8; 12] = ptr_at(ctx, 0)?;
    let ether_type: *mut [u8; 2] = ptr_at(ctx, l2 - 2)?;
    // SAFETY: bounds checked by `ptr_at` just above.
    unsafe {
        let swapped = [
            mac[6], mac[7], mac[8], mac[9], mac[10], mac[11], mac[0], mac[1], mac[2], mac[3],
            mac[4], mac[5],
        ];
        *eth = swapped;
        if l2 == 18 {
            let tag_ptr: *mut [u8; 4] = ptr_at(ctx, 12)?;
            *tag_ptr = tag;
        }
        *ether_type = if v4 { [0x08, 0x00] } else { [0x86, 0xdd] };
    }

    let icmp_off = l2 + outer - ICMP_HDR;
    let message_len = ICMP_HDR + quote;
    // From the frontend the client addressed, back to the client.
    let (src, dst) = (flow.dst, flow.src);
    let mut sum: u64;
    if v4 {
        let ip: *mut [u8; IPV4_HDR] = ptr_at(ctx, l2)?;
        let total = (IPV4_HDR + message_len) as u16;
        let mut h = [0u8; IPV4_HDR];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&total.to_be_bytes());
        h[6] = 0x40; // DF
        h[8] = 64; // TTL
        h[9] = 1; // ICMP
        h[12..16].copy_from_slice(&src.0[0].to_ne_bytes());
        h[16..20].copy_from_slice(&dst.0[0].to_ne_bytes());
        let check = !fold(header_sum(&h));
        h[10..12].copy_from_slice(&check.to_ne_bytes());
        // SAFETY: bounds checked by `ptr_at` just above.
        unsafe { *ip = h };
        sum = 0;
    } else {
        let ip: *mut [u8; IPV6_HDR] = ptr_at(ctx, l2)?;
        let mut h = [0u8; IPV6_HDR];
        h[0] = 0x60;
        h[4..6].copy_from_slice(&(message_len as u16).to_be_bytes());
        h[6] = 58; // ICMPv6
        h[7] = 64; // hop limit
        h[8..24].copy_from_slice(&src.octets());
        h[24..40].copy_from_slice(&dst.octets());
        // SAFETY: bounds checked by `ptr_at` just above.
        unsafe { *ip = h };
        // Pseudo-header: addresses, upper-layer length, next header.
        sum = addr_sum(&src) + addr_sum(&dst);
        sum += u64::from(u16::from_ne_bytes((message_len as u16).to_be_bytes()));
        sum += u64::from(u16::from_ne_bytes([0, 58]));
    }

    let icmp: *mut [u8; ICMP_HDR] = ptr_at(ctx, icmp_off)?;
    let (kind, code) = if v4 { (3, 3) } else { (1, 4) };
    // SAFETY: bounds checked by `ptr_at` just above; the checksum is 0 while summed.
    unsafe { *icmp = [kind, code, 0, 0, 0, 0, 0, 0] };
    // The message is at most MAX_ICMP_MESSAGE bytes; sum it a word at a time,
    // each word's bounds checked where it is read.
    for i in 0..MAX_ICMP_MESSAGE / 2 {
        let off = 2 * i;
        if off >= message_len {
            break;
        }
        let word: *const [u8; 2] = ptr_at(ctx, icmp_off + off)?;
        // SAFETY: bounds checked by `ptr_at` just above.
        sum += u64::from(u16::from_ne_bytes(unsafe { *word }));
    }
    let check: *mut [u8; 2] = ptr_at(ctx, icmp_off + 2)?;
    // SAFETY: bounds checked by `ptr_at` just above.
    unsafe { *check = (!fold(sum)).to_ne_bytes() };
    Some(())
}

#[inline(always)]
fn header_sum(h: &[u8; IPV4_HDR]) -> u64 {
    let mut sum = 0u64;
    for i in 0..IPV4_HDR / 2 {
        sum += u64::from(u16::from_ne_bytes([h[2 * i], h[2 * i + 1]]));
    }
    sum
}

#[inline(always)]
fn addr_sum(a: &RawAddr) -> u64 {
    a.0.iter()
        .map(|w| u64::from(*w as u16) + u64::from((*w >> 16) as u16))
        .sum()
}
