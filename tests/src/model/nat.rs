//! Rewriting one end of a packet, as the README's "What the dataplane does"
//! says: address and port replaced, checksums updated incrementally (RFC
//! 1624); an IPv4 UDP checksum of 0 ("none") stays 0, IPv6 UDP checksums are
//! always updated, and a UDP result of 0 is sent as 0xffff (RFC 768: 0 would
//! mean "none").

use std::net::IpAddr;

use super::{
    checksum::incremental,
    parse::{Flow, PROTO_TCP, PROTO_UDP, octets},
};

/// Which end of a packet (or of a quoted packet) is rewritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Src,
    Dst,
}

/// Where the `side` address of an IP header at `l3` is, and its length.
pub fn addr_at(l3: usize, v6: bool, side: Side) -> (usize, usize) {
    match (v6, side) {
        (false, Side::Src) => (l3 + 12, 4),
        (false, Side::Dst) => (l3 + 16, 4),
        (true, Side::Src) => (l3 + 8, 16),
        (true, Side::Dst) => (l3 + 24, 16),
    }
}

/// Where the `side` port of a TCP or UDP header at `l4` is.
pub fn port_at(l4: usize, side: Side) -> usize {
    l4 + if side == Side::Dst { 2 } else { 0 }
}

/// Where the checksum of a TCP or UDP header at `l4` is.
pub fn l4_check_at(l4: usize, proto: u8) -> usize {
    l4 + if proto == PROTO_TCP { 16 } else { 6 }
}

/// A TCP or UDP checksum `check` after the 16-bit words `old` (pseudo-header
/// address and port) became `new`.
pub fn l4_checksum(proto: u8, v6: bool, check: u16, old: &[u8], new: &[u8]) -> u16 {
    if proto == PROTO_UDP && !v6 && check == 0 {
        return 0;
    }
    match incremental(check, old, new) {
        0 if proto == PROTO_UDP => 0xffff,
        c => c,
    }
}

/// The frame with the `side` end of `flow` rewritten to `addr`:`new_port`,
/// checksums updated: the IPv4 header checksum, and the TCP or UDP checksum
/// (pseudo-header address and port).
pub fn rewrite(frame: &[u8], flow: &Flow, side: Side, addr: IpAddr, new_port: u16) -> Vec<u8> {
    let mut out = frame.to_vec();
    let (a_at, alen) = addr_at(flow.l3, flow.v6, side);
    let p_at = port_at(flow.l4, side);
    let new_addr = octets(addr);
    assert_eq!(new_addr.len(), alen, "address family of the translation");
    let mut old = out[a_at..a_at + alen].to_vec();
    let mut new = new_addr.clone();
    if !flow.v6 {
        let at = flow.l3 + 10;
        let check = u16::from_be_bytes([out[at], out[at + 1]]);
        let check = incremental(check, &old, &new);
        out[at..at + 2].copy_from_slice(&check.to_be_bytes());
    }
    old.extend_from_slice(&out[p_at..p_at + 2]);
    new.extend_from_slice(&new_port.to_be_bytes());
    let c_at = l4_check_at(flow.l4, flow.proto);
    let check = u16::from_be_bytes([out[c_at], out[c_at + 1]]);
    let updated = l4_checksum(flow.proto, flow.v6, check, &old, &new);
    out[c_at..c_at + 2].copy_from_slice(&updated.to_be_bytes());
    out[a_at..a_at + alen].copy_from_slice(&new_addr);
    out[p_at..p_at + 2].copy_from_slice(&new_port.to_be_bytes());
    out
}
