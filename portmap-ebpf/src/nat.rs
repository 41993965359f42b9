//! Address and port rewriting with checksum updates.
//!
//! XDP rewrites in place and updates checksums incrementally (RFC 1624) with
//! `portmap_common::csum`, or completes a partial checksum from the segment's
//! sum (see `checksum`). tc goes through the kernel's store and checksum
//! helpers instead, because an skb may carry a partial checksum (offload) or a
//! checksum of the whole packet (`CHECKSUM_COMPLETE`) that only the kernel
//! knows how to amend; they also make the bytes they write linear and private.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::{TcContext, XdpContext},
};
use network_types::ip::Ipv4Hdr;
use portmap_common::{
    abi::{FAMILY_V4, PROTO_TCP, RawAddr},
    csum::{CsumDelta, fold},
};

use crate::{checksum::pseudo_sum, packet::ptr_at, parse::Flow};

/// Which end of a packet a rewrite changes: of the packet itself here, of
/// the packet an ICMP error quotes in `icmp`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Source address and port (reverse NAT of replies).
    Src,
    /// Destination address and port (DNAT of requests).
    Dst,
}

impl Side {
    /// Offset of this side's address in an IPv4 (`v4`) or IPv6 header.
    #[inline(always)]
    pub fn addr_in_ip(self, v4: bool) -> usize {
        match (v4, self) {
            (true, Side::Src) => 12,
            (true, Side::Dst) => 16,
            (false, Side::Src) => 8,
            (false, Side::Dst) => 24,
        }
    }

    /// Offset of this side's port in a TCP or UDP header.
    #[inline(always)]
    pub fn port_in_l4(self) -> usize {
        match self {
            Side::Src => 0,
            Side::Dst => 2,
        }
    }
}

/// Byte offsets of a rewrite's fields, from the parsed flow.
struct Fields {
    addr: usize,
    port: usize,
    l4_check: usize,
}

#[inline(always)]
fn fields(flow: &Flow, side: Side) -> Fields {
    Fields {
        addr: flow.l3_off + side.addr_in_ip(flow.family == FAMILY_V4),
        port: flow.l4_off + side.port_in_l4(),
        l4_check: flow.l4_off + if flow.proto == PROTO_TCP { 16 } else { 6 },
    }
}

#[inline(always)]
fn old_of(flow: &Flow, side: Side) -> (RawAddr, u16) {
    match side {
        Side::Src => (flow.src, flow.sport),
        Side::Dst => (flow.dst, flow.dport),
    }
}

/// The flow's L4 checksum field as it is in the packet.
#[inline(always)]
pub fn l4_check_field(ctx: &XdpContext, flow: &Flow) -> Option<u16> {
    let off = flow.l4_off + if flow.proto == PROTO_TCP { 16 } else { 6 };
    let check: *const [u8; 2] = ptr_at(ctx, off)?;
    // SAFETY: bounds checked by `ptr_at` just above.
    Some(u16::from_ne_bytes(unsafe { *check }))
}

/// How an XDP rewrite brings the L4 checksum up to date.
#[derive(Clone, Copy)]
pub enum L4Check {
    /// The field holds a complete checksum: updated for the words that change.
    Incremental,
    /// The field may hold only a partial one (see `checksum`): it is
    /// replaced by the complete checksum of the rewritten segment. `segment`
    /// is the sum of the segment before the rewrite, field included.
    Complete { segment: u64 },
}

/// Rewrites `side` of `flow`'s packet to `addr`:`port` in an XDP buffer.
/// Every pointer is checked before the first write, so a failure leaves the
/// packet as it was.
#[inline(always)]
pub fn rewrite_xdp(
    ctx: &XdpContext,
    flow: &Flow,
    side: Side,
    addr: &RawAddr,
    port: u16,
    check: L4Check,
) -> Option<()> {
    let f = fields(flow, side);
    let (old_addr, old_port) = old_of(flow, side);
    let port_ptr: *mut [u8; 2] = ptr_at(ctx, f.port)?;
    let check_ptr: *mut [u8; 2] = ptr_at(ctx, f.l4_check)?;
    // SAFETY: bounds checked by `ptr_at` just above; byte arrays need no alignment.
    let old_check = u16::from_ne_bytes(unsafe { *check_ptr });

    let mut l4 = CsumDelta::new();
    if flow.family == FAMILY_V4 {
        let ip: *mut Ipv4Hdr = ptr_at(ctx, flow.l3_off)?;
        let addr_ptr: *mut [u8; 4] = ptr_at(ctx, f.addr)?;
        let mut l3 = CsumDelta::new();
        l3.replace32(old_addr.0[0], addr.0[0]);
        l4.replace32(old_addr.0[0], addr.0[0]);
        // SAFETY: both pointers bounds-checked by `ptr_at` above.
        unsafe {
            *addr_ptr = addr.0[0].to_ne_bytes();
            (*ip).check = l3.apply(u16::from_ne_bytes((*ip).check)).to_ne_bytes();
        }
    } else {
        let addr_ptr: *mut [u32; 4] = ptr_at(ctx, f.addr)?;
        l4.replace_addr(&old_addr.0, &addr.0);
        // SAFETY: bounds checked by `ptr_at` above. The address sits at an odd
        // multiple of 2 bytes, so it is written unaligned.
        unsafe { addr_ptr.write_unaligned(addr.0) };
    }
    l4.replace16(old_port, port);
    let new_check = if let L4Check::Complete { segment } = check {
        // The segment's words without the field, ports as rewritten, under
        // the pseudo-header of the new addresses.
        let (src, dst) = match side {
            Side::Src => (addr, &flow.dst),
            Side::Dst => (&flow.src, addr),
        };
        let data = segment + u64::from(!old_check);
        let complete = !fold(pseudo_sum(flow.family, flow.proto, src, dst, flow.l4_len) + data);
        let mut ports = CsumDelta::new();
        ports.replace16(old_port, port);
        Some(if flow.proto == PROTO_TCP {
            ports.apply(complete)
        } else {
            ports.apply_udp(complete)
        })
    } else if flow.proto == PROTO_TCP {
        Some(l4.apply(old_check))
    } else if old_check == 0 && flow.family == FAMILY_V4 {
        // IPv4 UDP without a checksum stays without one.
        None
    } else {
        // IPv6 UDP checksums are mandatory and always updated.
        Some(l4.apply_udp(old_check))
    };
    // SAFETY: bounds checked by `ptr_at` above.
    unsafe {
        *port_ptr = port.to_ne_bytes();
        if let Some(check) = new_check {
            *check_ptr = check.to_ne_bytes();
        }
    }
    Some(())
}

/// Rewrites `side` of `flow`'s packet to `addr`:`port` in an skb, through the
/// kernel helpers that keep partial and complete checksums right.
#[inline(always)]
pub fn rewrite_tc(
    ctx: &TcContext,
    flow: &Flow,
    side: Side,
    addr: &RawAddr,
    port: u16,
) -> Option<()> {
    let f = fields(flow, side);
    let (old_addr, old_port) = old_of(flow, side);
    let check_ptr: *const [u8; 2] = ptr_at(ctx, f.l4_check)?;
    // SAFETY: bounds checked by `ptr_at` just above.
    let old_check = u16::from_ne_bytes(unsafe { *check_ptr });
    // For UDP, MARK_MANGLED_0 leaves a zero checksum alone (IPv4: "none") and
    // sends a result of zero as 0xffff. An IPv6 UDP checksum is always updated,
    // so a zero one (invalid anyway) is updated without the flag.
    let udp_flags = if flow.proto != PROTO_TCP && (old_check != 0 || flow.family == FAMILY_V4) {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    let pseudo = u64::from(BPF_F_PSEUDO_HDR) | udp_flags;

    if flow.family == FAMILY_V4 {
        let (old, new) = (u64::from(old_addr.0[0]), u64::from(addr.0[0]));
        ctx.store(f.addr, &addr.0[0], 0).ok()?;
        ctx.l3_csum_replace(flow.l3_off + 10, old, new, 4).ok()?;
        ctx.l4_csum_replace(f.l4_check, old, new, pseudo | 4).ok()?;
    } else {
        ctx.store(f.addr, &addr.0, 0).ok()?;
        for i in 0..4 {
            let (old, new) = (u64::from(old_addr.0[i]), u64::from(addr.0[i]));
            ctx.l4_csum_replace(f.l4_check, old, new, pseudo | 4).ok()?;
        }
    }
    ctx.store(f.port, &port, 0).ok()?;
    ctx.l4_csum_replace(
        f.l4_check,
        u64::from(old_port),
        u64::from(port),
        udp_flags | 2,
    )
    .ok()?;
    if flow.proto != PROTO_TCP && udp_flags == 0 {
        // Updated without MARK_MANGLED_0 (an IPv6 checksum that was 0), a
        // result of 0 would stay 0, which means "none" and IPv6 forbids:
        // send it as 0xffff, as every other UDP update does.
        let check: *const [u8; 2] = ptr_at(ctx, f.l4_check)?;
        // SAFETY: bounds checked by `ptr_at` just above (helpers invalidate
        // earlier packet pointers, so it is taken afresh).
        if unsafe { *check } == [0, 0] {
            ctx.store(f.l4_check, &0xffffu16, 0).ok()?;
        }
    }
    Some(())
}
