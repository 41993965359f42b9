//! Checksum offload, as XDP meets it (the README's "What the dataplane
//! does", "Offloaded checksums").
//!
//! A sender that leaves its TCP or UDP checksum to the NIC puts only the sum
//! of the pseudo-header in the checksum field; on a veth, XDP gets the packet
//! that way. A request whose field equals that sum (offloaded, or a complete
//! checksum that happens to be the same value) is not rewritten in XDP: XDP
//! passes it unchanged with a mark in front of it, in the metadata area, for
//! the tc ingress program to write the translation its conntrack entry says
//! with the kernel's checksum helpers. Its flow is tracked and counted as any other.

use std::net::IpAddr;

use super::{
    checksum::{fold, sum_words},
    nat::{self, Side},
    parse::{self, Flow, PROTO_UDP},
};

/// Bytes of the metadata XDP puts before a deferred packet.
pub const HANDOFF_LEN: usize = 8;

/// The sum (folded, not complemented) of the pseudo-header of `flow`'s
/// segment as it is in `frame`: what an offloading sender leaves in the
/// checksum field.
pub fn pseudo_header_sum(frame: &[u8], flow: &Flow) -> u16 {
    let l4_len = if flow.proto == PROTO_UDP {
        // UDP counts its own length field; TCP the rest of the IP packet.
        usize::from(u16::from_be_bytes([frame[flow.l4 + 4], frame[flow.l4 + 5]]))
    } else {
        flow.ip_end - flow.l4
    };
    let mut pseudo = Vec::with_capacity(40);
    for a in [flow.src, flow.dst] {
        match a {
            IpAddr::V4(a) => pseudo.extend_from_slice(&a.octets()),
            IpAddr::V6(a) => pseudo.extend_from_slice(&a.octets()),
        }
    }
    if flow.v6 {
        pseudo.extend_from_slice(&(l4_len as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, flow.proto]);
    } else {
        pseudo.extend_from_slice(&[0, flow.proto]);
        pseudo.extend_from_slice(&(l4_len as u16).to_be_bytes());
    }
    fold(sum_words(&pseudo))
}

/// Whether XDP leaves this request's rewrite to tc ingress.
pub fn deferred(frame: &[u8], flow: &Flow) -> bool {
    let at = flow.l4 + if flow.proto == PROTO_UDP { 6 } else { 16 };
    let field = u16::from_be_bytes([frame[at], frame[at + 1]]);
    field == pseudo_header_sum(frame, flow)
}

/// The metadata before a deferred packet: "pmap" (as a little-endian
/// 32-bit word), the kind (0: a request, written as its conntrack entry
/// says) and three pad bytes. tc ingress looks the translation up itself.
pub fn handoff() -> Vec<u8> {
    let mut meta = u32::from_be_bytes(*b"pmap").to_le_bytes().to_vec();
    meta.extend_from_slice(&[0, 0, 0, 0]);
    assert_eq!(meta.len(), HANDOFF_LEN);
    meta
}

/// The frame as tc ingress writes it, from XDP's output for a deferred
/// packet (metadata, then the frame): the destination rewritten to `to`, as
/// the flow's conntrack entry says, checksums updated as the kernel's
/// helpers do for an skb whose checksum is complete. `None` if `bytes` do
/// not hold a handoff.
pub fn written_by_tc(bytes: &[u8], (addr, port): (IpAddr, u16)) -> Option<Vec<u8>> {
    let (meta, frame) = bytes.split_at_checked(HANDOFF_LEN)?;
    if meta[..4] != u32::from_be_bytes(*b"pmap").to_le_bytes() || meta[4] != 0 {
        return None;
    }
    let flow = parse::parse(frame).ok()?;
    Some(nat::rewrite(frame, &flow, Side::Dst, addr, port))
}
