//! ICMP errors about translated flows, translated too (what conntrack's
//! RELATED does for iptables NAT), so path MTU discovery and "port
//! unreachable" work through portmap:
//!
//! - egress (tc, towards clients): an error the node or a router sends a
//!   client about a request quotes the request as translated (to the
//!   backend); the quote is put back to the frontend the client used, so the
//!   client's stack finds its socket.
//! - ingress (XDP, from clients): an error a client sends about a reply
//!   (addressed to the frontend, quoting the reply from it) goes on to the
//!   backend, quoting the reply as the backend sent it.
//! - ingress (tc, from the network towards other nodes): an error about a
//!   request SNATed towards a backend on another node (addressed to this
//!   node's SNAT address, quoting the request as it left) goes on to the
//!   client, quoting the request as the client sent it (see `snat`).
//!
//! Only the quote (and, on ingress, the outer destination) changes; every
//! checksum over the changed bytes is updated incrementally.

use portmap_common::{
    abi::{
        CT_F_DSR_REPLY, CtKey, CtValue, DatapathEvent, FAMILY_V4, PROTO_TCP, PROTO_UDP, RawAddr,
    },
    csum::CsumDelta,
};

use crate::{
    counters::count_event,
    maps::CONNTRACK,
    nat::Side,
    packet::{PacketBuf, ptr_at},
    parse::IcmpAt,
};

const ICMP_HDR: usize = 8;

/// A TCP or UDP packet quoted in an ICMP error.
pub struct Quote {
    pub proto: u8,
    pub l3: usize,
    pub l4: usize,
    /// The L4 checksum's offset, if the quote holds it.
    pub l4_check: Option<usize>,
    pub src: RawAddr,
    pub dst: RawAddr,
    pub sport: u16,
    pub dport: u16,
}

#[inline(always)]
fn is_error(family: u8, kind: u8) -> bool {
    if family == FAMILY_V4 {
        // Destination unreachable, time exceeded, parameter problem.
        matches!(kind, 3 | 11 | 12)
    } else {
        // Destination unreachable, packet too big, time exceeded, parameter problem.
        matches!(kind, 1..=4)
    }
}

/// The TCP or UDP packet an ICMP error quotes, if it is one.
#[inline(always)]
pub fn quote(buf: &impl PacketBuf, at: &IcmpAt) -> Option<Quote> {
    // Type and code together: a 1-byte check becomes `start >= end` in
    // LLVM's hands, which the verifier cannot use for the byte at `start`.
    let kind: *const [u8; 2] = ptr_at(buf, at.l4_off)?;
    // SAFETY: bounds checked by `ptr_at` just above.
    if !is_error(at.family, unsafe { (*kind)[0] }) {
        return None;
    }
    let l3 = at.l4_off + ICMP_HDR;
    let (proto, l4, src, dst) = if at.family == FAMILY_V4 {
        let h: *const [u8; 20] = ptr_at(buf, l3)?;
        // SAFETY: bounds checked by `ptr_at` just above.
        let h = unsafe { &*h };
        let ihl = usize::from(h[0] & 0x0f) * 4;
        if h[0] >> 4 != 4 || ihl < 20 {
            return None;
        }
        let word = |i: usize| u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        (
            h[9],
            l3 + ihl,
            RawAddr([word(12), 0, 0, 0]),
            RawAddr([word(16), 0, 0, 0]),
        )
    } else {
        let h: *const [u8; 40] = ptr_at(buf, l3)?;
        // SAFETY: bounds checked by `ptr_at` just above.
        let h = unsafe { &*h };
        if h[0] >> 4 != 6 {
            return None;
        }
        let word = |i: usize| u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        // Extension headers in the quote are not walked.
        (
            h[6],
            l3 + 40,
            RawAddr([word(8), word(12), word(16), word(20)]),
            RawAddr([word(24), word(28), word(32), word(36)]),
        )
    };
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return None;
    }
    let ports: *const [u8; 4] = ptr_at(buf, l4)?;
    if l4 + 4 > at.ip_end {
        return None;
    }
    // SAFETY: bounds checked by `ptr_at` just above.
    let ports = unsafe { *ports };
    let check = l4 + if proto == PROTO_TCP { 16 } else { 6 };
    Some(Quote {
        proto,
        l3,
        l4,
        l4_check: (check + 2 <= at.ip_end).then_some(check),
        src,
        dst,
        sport: u16::from_ne_bytes([ports[0], ports[1]]),
        dport: u16::from_ne_bytes([ports[2], ports[3]]),
    })
}

/// The conntrack key of the flow a quote belongs to, in the direction of
/// the entry that holds the translation to undo: a quoted translated
/// request (egress) is found through its reply entry, a quoted translated
/// reply (ingress) through its request entry.
#[inline(always)]
pub fn flow_key(q: &Quote, family: u8, direction: u8) -> CtKey {
    CtKey {
        src: q.dst,
        dst: q.src,
        sport: q.dport,
        dport: q.sport,
        proto: q.proto,
        family,
        direction,
        _pad: 0,
    }
}

/// The quote of an ICMP error and the conntrack entry of the flow it is
/// about, if that entry is current (`conntrack::current`): on egress (`CT_REPLY`) a quoted
/// translated request sent back to its client, on ingress (`CT_REQUEST`) a
/// quoted translated reply sent back to its frontend.
#[inline(always)]
fn find_flow(buf: &impl PacketBuf, at: &IcmpAt, direction: u8) -> Option<(Quote, CtValue)> {
    let q = quote(buf, at)?;
    // The error goes back to where the quoted packet came from.
    if q.src != at.dst {
        return None;
    }
    let entry = CONNTRACK.get_ptr(flow_key(&q, at.family, direction))?;
    // SAFETY: a live map value, read once into a copy.
    let e = unsafe { *entry };
    let cfg = crate::conntrack::config()?;
    let now = crate::conntrack::now_ns();
    // A reply entry learned from a DSR option has no backend on this node.
    let usable = if e.flags & CT_F_DSR_REPLY != 0 {
        crate::conntrack::reply_allowed(&e, q.proto, now, cfg)
    } else {
        crate::conntrack::current(&e, q.proto, now, cfg)
    };
    if !usable {
        return None;
    }
    Some((q, e))
}

/// Translates an ICMP error about one of portmap's flows (found through
/// the conntrack entry in `direction`, see [`find_flow`]) with `rewrite`, and
/// counts it: translated, or a failed rewrite. An error about no flow of
/// portmap's is left alone and not counted: it is not portmap's failure.
#[inline(always)]
pub fn translate(
    buf: &impl PacketBuf,
    at: &IcmpAt,
    direction: u8,
    rewrite: impl FnOnce(&Quote, &CtValue) -> Option<()>,
) -> bool {
    let Some((q, e)) = find_flow(buf, at, direction) else {
        return false;
    };
    count_translated(rewrite(&q, &e));
    true
}

/// Counts a translation: done, or a failed rewrite.
#[inline(always)]
pub fn count_translated(done: Option<()>) {
    count_event(if done.is_some() {
        DatapathEvent::IcmpTranslated
    } else {
        DatapathEvent::RewriteFailed
    });
}

#[inline(always)]
fn read16(buf: &impl PacketBuf, off: usize) -> Option<u16> {
    let p: *const [u8; 2] = ptr_at(buf, off)?;
    // SAFETY: bounds checked by `ptr_at` just above.
    Some(u16::from_ne_bytes(unsafe { *p }))
}

#[inline(always)]
fn write16(buf: &impl PacketBuf, off: usize, value: u16) -> Option<()> {
    let p: *mut [u8; 2] = ptr_at(buf, off)?;
    // SAFETY: bounds checked by `ptr_at` just above.
    unsafe { *p = value.to_ne_bytes() };
    Some(())
}

#[inline(always)]
fn write_addr(buf: &impl PacketBuf, off: usize, family: u8, addr: &RawAddr) -> Option<()> {
    if family == FAMILY_V4 {
        let p: *mut [u8; 4] = ptr_at(buf, off)?;
        // SAFETY: bounds checked by `ptr_at` just above.
        unsafe { *p = addr.0[0].to_ne_bytes() };
    } else {
        let p: *mut [u32; 4] = ptr_at(buf, off)?;
        // SAFETY: bounds checked by `ptr_at` just above; unaligned in the frame.
        unsafe { p.write_unaligned(addr.0) };
    }
    Some(())
}

/// Rewrites `side` of the quoted packet to `addr`:`port` in place (egress:
/// the destination of a quoted request, its backend → its frontend;
/// ingress: the source of a quoted reply, its frontend → its backend), with the
/// quote's IPv4 header checksum and L4 checksum, and the ICMP checksum over
/// all of it (plus `extra`, changes outside the message that its checksum
/// covers: the ICMPv6 pseudo-header). Pointers are checked before writing.
#[inline(always)]
pub fn rewrite_quote(
    buf: &impl PacketBuf,
    at: &IcmpAt,
    q: &Quote,
    side: Side,
    addr: &RawAddr,
    port: u16,
    extra: CsumDelta,
) -> Option<()> {
    let v4 = at.family == FAMILY_V4;
    let (old_addr, old_port) = match side {
        Side::Dst => (q.dst, q.dport),
        Side::Src => (q.src, q.sport),
    };
    let (addr_off, port_off) = (q.l3 + side.addr_in_ip(v4), q.l4 + side.port_in_l4());
    let icmp_check_off = at.l4_off + 2;
    let icmp_check = read16(buf, icmp_check_off)?;
    // Every 16-bit word of the message that changes adds to the ICMP delta.
    let mut icmp = extra;
    let mut fields = CsumDelta::new();
    fields.replace_addr(&old_addr.0, &addr.0);
    fields.replace16(old_port, port);
    icmp.replace_addr(&old_addr.0, &addr.0);
    icmp.replace16(old_port, port);
    let ip_check = if v4 {
        let old = read16(buf, q.l3 + 10)?;
        let mut d = CsumDelta::new();
        d.replace_addr(&old_addr.0, &addr.0);
        let new = d.apply(old);
        icmp.replace16(old, new);
        Some(new)
    } else {
        None
    };
    // Nothing is written unless everything can be: the L4 checksum's bytes
    // are checked here, read and written below.
    if let Some(off) = q.l4_check {
        read16(buf, off)?;
    }
    write_addr(buf, addr_off, at.family, addr)?;
    write16(buf, port_off, port)?;
    if let Some(check) = ip_check {
        write16(buf, q.l3 + 10, check)?;
    }
    // Read, updated and written in one branch: LLVM would otherwise test the
    // `Option` twice, and the verifier, which cannot tell that both tests
    // agree, would follow a path that writes garbage.
    if let Some(off) = q.l4_check {
        let old = read16(buf, off)?;
        let new = if q.proto == PROTO_UDP && old == 0 && v4 {
            0
        } else if q.proto == PROTO_UDP {
            fields.apply_udp(old)
        } else {
            fields.apply(old)
        };
        icmp.replace16(old, new);
        write16(buf, off, new)?;
    }
    write16(buf, icmp_check_off, icmp.apply(icmp_check))
}

/// On ingress, the error itself goes on to the backend: its destination
/// changes from the frontend to `backend` (with the IPv4 header checksum).
/// Returns the change an ICMPv6 checksum must also take (its pseudo-header
/// holds the destination).
#[inline(always)]
pub fn redirect_to(buf: &impl PacketBuf, at: &IcmpAt, backend: &RawAddr) -> Option<CsumDelta> {
    let mut d = CsumDelta::new();
    d.replace_addr(&at.dst.0, &backend.0);
    if at.family == FAMILY_V4 {
        let check = read16(buf, at.l3_off + 10)?;
        write_addr(buf, at.l3_off + 16, at.family, backend)?;
        write16(buf, at.l3_off + 10, d.apply(check))?;
        Some(CsumDelta::new())
    } else {
        write_addr(buf, at.l3_off + 24, at.family, backend)?;
        Some(d)
    }
}
