//! ICMP, as the README's "What the dataplane does" says: the port
//! unreachable that refuses a new flow (sent back by a redirect to the
//! interface it came in on), and ICMP errors about translated flows (what
//! conntrack's RELATED does for iptables): one to a client quoting a
//! translated request (egress) gets the frontend back in its quote; one from
//! a client quoting a reply (ingress) goes on to the backend, quoting the
//! reply as the backend sent it. An error about a flow is translated only
//! while the flow's entry may be used ([`conntrack::CHECKS`]).

use std::net::IpAddr;

use super::{
    checksum::{fold, incremental, internet_checksum, sum_words},
    conntrack::{self, Dir, Use},
    nat::{Side, addr_at, l4_checksum, port_at},
    parse::{self, Flow, IcmpAt, NotAFlow, PROTO_ICMPV6, Quote, octets},
    state::{Flows, Maps, family, ip, port},
};

/// Whether the checksums an ICMP error carries are right: the outer IPv4
/// header's, the ICMP checksum (ICMPv6: with its pseudo-header), and the
/// quoted IPv4 header's. `None` if `frame` is no ICMP error with a quote.
pub fn checksums_ok(frame: &[u8]) -> Option<bool> {
    let Err(NotAFlow::Icmp(at)) = parse::parse(frame) else {
        return None;
    };
    let q = parse::quote(frame, &at)?;
    let message = &frame[at.l4..at.ip_end];
    let icmp_ok = if at.v6 {
        let mut pseudo = octets(at.src);
        pseudo.extend_from_slice(&octets(at.dst));
        pseudo.extend_from_slice(&(message.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, PROTO_ICMPV6]);
        fold(sum_words(&pseudo) + sum_words(message)) == 0xffff
    } else {
        fold(sum_words(message)) == 0xffff
    };
    let outer_ok = at.v6 || fold(sum_words(&frame[at.l3..at.l4])) == 0xffff;
    let inner_ok = at.v6 || fold(sum_words(&frame[q.l3..q.l4])) == 0xffff;
    Some(icmp_ok && outer_ok && inner_ok)
}

/// Whether an ICMP error may be sent to `src`: not to a source that does
/// not name one host (RFC 1812 4.3.2.7: zero, loopback, broadcast,
/// multicast, class E; RFC 4443 2.4 (e): unspecified, multicast).
pub fn may_get_errors(src: IpAddr) -> bool {
    match src {
        IpAddr::V4(a) => {
            let first = a.octets()[0];
            !(a.is_unspecified() || a.is_broadcast() || first >= 224 || first == 127)
        }
        IpAddr::V6(a) => !(a.is_unspecified() || a.octets()[0] == 0xff),
    }
}

/// The ICMP (type 3 code 3) or ICMPv6 (type 1 code 4) port unreachable that
/// answers `flow`'s frame: back to where it came from (MAC addresses
/// swapped, VLAN tag kept), from the address the client sent to, quoting
/// the IPv4 header and 8 bytes (IPv6: the first 48 bytes of the packet).
pub fn port_unreachable(frame: &[u8], flow: &Flow) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&frame[6..12]);
    out.extend_from_slice(&frame[0..6]);
    out.extend_from_slice(&frame[12..flow.l3 - 2]);
    let (src, dst) = (octets(flow.dst), octets(flow.src));
    if !flow.v6 {
        out.extend_from_slice(&[0x08, 0x00]);
        let quote = &frame[flow.l3..flow.l4 + 8];
        let total = (20 + 8 + quote.len()) as u16;
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 1, 0, 0]);
        ip.extend_from_slice(&src);
        ip.extend_from_slice(&dst);
        let check = internet_checksum(&ip);
        ip[10..12].copy_from_slice(&check.to_be_bytes());
        let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(quote);
        let check = internet_checksum(&icmp);
        icmp[2..4].copy_from_slice(&check.to_be_bytes());
        out.extend_from_slice(&ip);
        out.extend_from_slice(&icmp);
    } else {
        out.extend_from_slice(&[0x86, 0xdd]);
        let quote = &frame[flow.l3..flow.l3 + 48];
        let len = (8 + quote.len()) as u16;
        let mut ip = vec![0x60, 0, 0, 0];
        ip.extend_from_slice(&len.to_be_bytes());
        ip.extend_from_slice(&[58, 64]);
        ip.extend_from_slice(&src);
        ip.extend_from_slice(&dst);
        let mut icmp = vec![1, 4, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(quote);
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&src);
        pseudo.extend_from_slice(&dst);
        pseudo.extend_from_slice(&u32::from(len).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 58]);
        let check = !fold(sum_words(&pseudo) + sum_words(&icmp));
        icmp[2..4].copy_from_slice(&check.to_be_bytes());
        out.extend_from_slice(&ip);
        out.extend_from_slice(&icmp);
    }
    out
}

/// The entry an ICMP error's quote belongs to: a quoted translated request
/// (client → backend, egress) is found through its flow's reply entry
/// (backend → client), a quoted reply (frontend → client, ingress) through
/// its forward entry (client → frontend).
fn quote_key(q: &Quote, dir: Dir) -> portmap_common::abi::CtKey {
    conntrack::key(q.dst, q.src, q.dport, q.sport, q.proto, dir)
}

/// The ICMP error with the `side` end of its quote rewritten to
/// `addr`:`new_port`, and on ingress its own destination to `outer_dst`.
/// Every checksum over changed bytes is updated incrementally: the quoted
/// IPv4 header's and TCP/UDP checksum (if quoted; as for packets), the outer
/// IPv4 header's, and the ICMP checksum over all changed words (ICMPv6: its
/// pseudo-header too).
fn rewrite(
    frame: &[u8],
    at: &IcmpAt,
    q: &Quote,
    side: Side,
    (addr, new_port): (IpAddr, u16),
    outer_dst: Option<IpAddr>,
) -> Vec<u8> {
    let mut out = frame.to_vec();
    let (mut icmp_old, mut icmp_new) = (Vec::new(), Vec::new());
    let word = |b: &[u8], at: usize| u16::from_be_bytes([b[at], b[at + 1]]);
    if let Some(to) = outer_dst {
        let (at_dst, n) = addr_at(at.l3, at.v6, Side::Dst);
        let old = out[at_dst..at_dst + n].to_vec();
        let new = octets(to);
        if at.v6 {
            icmp_old.extend_from_slice(&old);
            icmp_new.extend_from_slice(&new);
        } else {
            let c = incremental(word(&out, at.l3 + 10), &old, &new);
            out[at.l3 + 10..at.l3 + 12].copy_from_slice(&c.to_be_bytes());
        }
        out[at_dst..at_dst + n].copy_from_slice(&new);
    }
    let (a_at, n) = addr_at(q.l3, at.v6, side);
    let p_at = port_at(q.l4, side);
    let mut old = out[a_at..a_at + n].to_vec();
    let mut new = octets(addr);
    if !at.v6 {
        let before = word(&out, q.l3 + 10);
        let after = incremental(before, &old, &new);
        out[q.l3 + 10..q.l3 + 12].copy_from_slice(&after.to_be_bytes());
        icmp_old.extend_from_slice(&before.to_be_bytes());
        icmp_new.extend_from_slice(&after.to_be_bytes());
    }
    old.extend_from_slice(&out[p_at..p_at + 2]);
    new.extend_from_slice(&new_port.to_be_bytes());
    icmp_old.extend_from_slice(&old);
    icmp_new.extend_from_slice(&new);
    if let Some(c) = q.check {
        let before = word(&out, c);
        let after = l4_checksum(q.proto, at.v6, before, &old, &new);
        out[c..c + 2].copy_from_slice(&after.to_be_bytes());
        icmp_old.extend_from_slice(&before.to_be_bytes());
        icmp_new.extend_from_slice(&after.to_be_bytes());
    }
    out[a_at..a_at + n].copy_from_slice(&new[..n]);
    out[p_at..p_at + 2].copy_from_slice(&new_port.to_be_bytes());
    let c = incremental(word(&out, at.l4 + 2), &icmp_old, &icmp_new);
    out[at.l4 + 2..at.l4 + 4].copy_from_slice(&c.to_be_bytes());
    out
}

/// An ICMP error through ingress (`Dir::Request`: a client's error about a
/// reply it got, which goes on to the backend) or egress (`Dir::Reply`: an
/// error to a client about a request it sent, whose quote gets the frontend
/// back): the translated frame and why, or why it stays untouched.
pub fn translate(
    maps: &Maps,
    flows: &Flows,
    frame: &[u8],
    at: &IcmpAt,
    dir: Dir,
    now: u64,
) -> Result<(Vec<u8>, String), String> {
    let q = parse::quote(frame, at).ok_or("ICMP, not an error quoting TCP or UDP")?;
    if q.src != at.dst {
        return Err("ICMP error not sent to the quoted source".into());
    }
    let e = flows
        .conntrack
        .get(&quote_key(&q, dir))
        .ok_or("ICMP error about no known flow")?;
    conntrack::check(maps, e, Use::IcmpError, q.proto, &[], now)
        .map_err(|c| format!("ICMP error about a flow: {}", c.failure()))?;
    let to = (ip(&e.nat_addr, family(q.src)), port(e.nat_port));
    Ok(match dir {
        Dir::Request => (
            rewrite(frame, at, &q, Side::Src, to, Some(to.0)),
            format!("ICMP error about a reply, to backend {}", e.backend_id),
        ),
        Dir::Reply => (
            rewrite(frame, at, &q, Side::Dst, to, None),
            format!("ICMP error about a request, to frontend {}", e.frontend_id),
        ),
    })
}
