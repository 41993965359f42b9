//! The model's view of the wire: a parser written from the specification,
//! one's complement arithmetic, and the ICMP port unreachable message.
//!
//! Nothing here comes from the eBPF crate or from `portmap_common::csum`: the
//! point of the model is to be a second, independent implementation.
//!
//! The parser accepts exactly what the README and the issue specify:
//!
//! - Ethernet with at most one 802.1Q (0x8100) or 802.1ad (0x88a8) tag;
//! - IPv4: version 4, IHL ≥ 5, total length ≥ the header and within the
//!   frame (the frame may be longer: Ethernet padding); a fragment (MF set or
//!   offset ≠ 0) is not a flow;
//! - IPv6: version 6, payload length within the frame; extension headers
//!   hop-by-hop, destination options, routing (segments left must be 0),
//!   fragment (offset or M set: not a flow; an atomic fragment is fine) and
//!   AH, at most 6 of them, with the transport header at most
//!   [`MAX_L4_OFFSET`] bytes into the frame;
//! - TCP: data offset ≥ 5 and the header within the IP packet; UDP: length
//!   ≥ 8 and within the IP packet.
//!
//! Everything else is "not a flow", which both programs pass untouched,
//! except ICMP errors (ICMP in IPv4, ICMPv6 after the same extension headers)
//! that quote a TCP or UDP packet: they may be about a translated flow.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Most IPv6 extension headers a flow may have.
pub const MAX_EXT_HEADERS: usize = 6;
/// Furthest offset of the transport header from the start of the frame.
pub const MAX_L4_OFFSET: usize = 1024;

/// A TCP or UDP packet the dataplane may translate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    pub v6: bool,
    pub proto: u8,
    /// Byte 13 of the TCP header; 0 for UDP.
    pub tcp_flags: u8,
    /// Offsets in the frame: IP header, transport header, end of the IP packet.
    pub l3: usize,
    pub l4: usize,
    pub ip_end: usize,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
}

/// Where an ICMP (IPv4) or ICMPv6 message sits in a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IcmpAt {
    pub v6: bool,
    pub l3: usize,
    /// The ICMP header.
    pub l4: usize,
    pub ip_end: usize,
    pub src: IpAddr,
    pub dst: IpAddr,
}

/// Why a frame is not a flow. Only ICMP may still be translated (an error
/// about a translated flow); every other case is passed untouched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotAFlow {
    /// ICMP in IPv4, ICMPv6 in IPv6.
    Icmp(IcmpAt),
    /// Not IP, IP carrying something else, or a packet the dataplane leaves
    /// alone on purpose (routed through, too many or too long headers).
    Other(&'static str),
    /// Cut short or inconsistent.
    Malformed(&'static str),
    /// An IPv4 or IPv6 fragment.
    Fragment,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2).map(|s| u16::from_be_bytes([s[0], s[1]]))
}

/// Parses a frame as the dataplane must.
pub fn parse(frame: &[u8]) -> Result<Flow, NotAFlow> {
    use NotAFlow::*;
    let mut ether_type = be16(frame, 12).ok_or(Malformed("Ethernet header cut short"))?;
    let mut l3 = 14;
    if ether_type == 0x8100 || ether_type == 0x88a8 {
        ether_type = be16(frame, 16).ok_or(Malformed("VLAN tag cut short"))?;
        l3 = 18;
    }
    match ether_type {
        0x0800 => ipv4(frame, l3),
        0x86dd => ipv6(frame, l3),
        _ => Err(Other("not IPv4 or IPv6 (or more than one VLAN tag)")),
    }
}

fn ipv4(f: &[u8], l3: usize) -> Result<Flow, NotAFlow> {
    use NotAFlow::*;
    let h = f
        .get(l3..l3 + 20)
        .ok_or(Malformed("IPv4 header cut short"))?;
    if h[0] >> 4 != 4 {
        return Err(Malformed("IPv4 EtherType but IP version is not 4"));
    }
    let header_len = usize::from(h[0] & 0x0f) * 4;
    if header_len < 20 {
        return Err(Malformed("IHL below 5"));
    }
    let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
    if total < header_len {
        return Err(Malformed("IPv4 total length shorter than its header"));
    }
    if l3 + total > f.len() {
        return Err(Malformed("IPv4 total length beyond the frame"));
    }
    let frag = u16::from_be_bytes([h[6], h[7]]);
    let more_fragments = frag & 0x2000 != 0;
    let offset = frag & 0x1fff;
    if more_fragments || offset != 0 {
        return Err(Fragment);
    }
    let src = IpAddr::V4(Ipv4Addr::new(h[12], h[13], h[14], h[15]));
    let dst = IpAddr::V4(Ipv4Addr::new(h[16], h[17], h[18], h[19]));
    transport(f, false, h[9], l3, l3 + header_len, l3 + total, src, dst)
}

fn ipv6(f: &[u8], l3: usize) -> Result<Flow, NotAFlow> {
    use NotAFlow::*;
    let h = f
        .get(l3..l3 + 40)
        .ok_or(Malformed("IPv6 header cut short"))?;
    if h[0] >> 4 != 6 {
        return Err(Malformed("IPv6 EtherType but IP version is not 6"));
    }
    let payload = usize::from(u16::from_be_bytes([h[4], h[5]]));
    let ip_end = l3 + 40 + payload;
    if ip_end > f.len() {
        return Err(Malformed("IPv6 payload length beyond the frame"));
    }
    let src = IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&h[8..24]).unwrap()));
    let dst = IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&h[24..40]).unwrap()));
    let ip = &f[..ip_end];
    let mut next = h[6];
    let mut off = l3 + 40;
    let mut seen = 0;
    while next != PROTO_TCP && next != PROTO_UDP && next != PROTO_ICMPV6 {
        if !matches!(next, 0 | 43 | 44 | 51 | 60) {
            return Err(Other("IPv6 carries neither TCP nor UDP"));
        }
        if seen == MAX_EXT_HEADERS {
            return Err(Other("more than 6 IPv6 extension headers"));
        }
        seen += 1;
        let first = |n: usize| {
            ip.get(off..off + n)
                .ok_or(Malformed("IPv6 extension header cut short"))
        };
        let len = match next {
            // Hop-by-hop and destination options: length in 8-byte units
            // beyond the first 8.
            0 | 60 => {
                let e = first(2)?;
                next = e[0];
                (usize::from(e[1]) + 1) * 8
            }
            // Routing: a packet with segments left is on its way elsewhere.
            43 => {
                let e = first(4)?;
                if e[3] != 0 {
                    return Err(Other("routing header with segments left"));
                }
                next = e[0];
                (usize::from(e[1]) + 1) * 8
            }
            // Fragment: offset (13 bits) and M flag; both zero is an atomic
            // fragment, a whole datagram (RFC 6946).
            44 => {
                let e = first(4)?;
                let field = u16::from_be_bytes([e[2], e[3]]);
                if field >> 3 != 0 || field & 1 != 0 {
                    return Err(Fragment);
                }
                next = e[0];
                8
            }
            // Authentication header: length in 4-byte units, minus 2.
            51 => {
                let e = first(2)?;
                next = e[0];
                (usize::from(e[1]) + 2) * 4
            }
            _ => unreachable!(),
        };
        off += len;
        if off > MAX_L4_OFFSET {
            return Err(Other("transport header too far into the frame"));
        }
    }
    transport(f, true, next, l3, off, ip_end, src, dst)
}

#[allow(clippy::too_many_arguments)]
fn transport(
    f: &[u8],
    v6: bool,
    proto: u8,
    l3: usize,
    l4: usize,
    ip_end: usize,
    src: IpAddr,
    dst: IpAddr,
) -> Result<Flow, NotAFlow> {
    use NotAFlow::*;
    if l4 > MAX_L4_OFFSET {
        return Err(Other("transport header too far into the frame"));
    }
    let ip = &f[..ip_end];
    let mut flow = Flow {
        v6,
        proto,
        tcp_flags: 0,
        l3,
        l4,
        ip_end,
        src,
        dst,
        sport: 0,
        dport: 0,
    };
    match proto {
        PROTO_TCP => {
            let h = ip
                .get(l4..l4 + 20)
                .ok_or(Malformed("TCP header beyond the IP packet"))?;
            let data_offset = usize::from(h[12] >> 4) * 4;
            if data_offset < 20 {
                return Err(Malformed("TCP data offset below 5"));
            }
            if l4 + data_offset > ip_end {
                return Err(Malformed("TCP data offset beyond the IP packet"));
            }
            flow.sport = u16::from_be_bytes([h[0], h[1]]);
            flow.dport = u16::from_be_bytes([h[2], h[3]]);
            flow.tcp_flags = h[13];
        }
        PROTO_UDP => {
            let h = ip
                .get(l4..l4 + 8)
                .ok_or(Malformed("UDP header beyond the IP packet"))?;
            let len = usize::from(u16::from_be_bytes([h[4], h[5]]));
            if len < 8 {
                return Err(Malformed("UDP length below 8"));
            }
            if l4 + len > ip_end {
                return Err(Malformed("UDP length beyond the IP packet"));
            }
            flow.sport = u16::from_be_bytes([h[0], h[1]]);
            flow.dport = u16::from_be_bytes([h[2], h[3]]);
        }
        PROTO_ICMP | PROTO_ICMPV6 if (proto == PROTO_ICMPV6) == v6 => {
            return Err(Icmp(IcmpAt {
                v6,
                l3,
                l4,
                ip_end,
                src,
                dst,
            }));
        }
        _ => return Err(Other("IP carries neither TCP nor UDP")),
    }
    Ok(flow)
}

/// A TCP or UDP packet quoted by an ICMP error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quote {
    pub proto: u8,
    /// Offsets in the frame of the quoted IP and transport headers.
    pub l3: usize,
    pub l4: usize,
    /// The quoted TCP or UDP checksum's offset, if the quote holds it.
    pub check: Option<usize>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
}

/// Whether an ICMP type is an error that quotes a packet: destination
/// unreachable, time exceeded, parameter problem (ICMPv6: and packet too big).
pub fn is_icmp_error(v6: bool, kind: u8) -> bool {
    if v6 {
        matches!(kind, 1..=4)
    } else {
        matches!(kind, 3 | 11 | 12)
    }
}

/// The TCP or UDP packet an ICMP error quotes: an IP header of the error's
/// family (IPv6 extension headers are not walked), then at least the ports,
/// all within the error's IP packet.
pub fn quote(frame: &[u8], at: &IcmpAt) -> Option<Quote> {
    let ip = &frame[..at.ip_end];
    if !is_icmp_error(at.v6, *ip.get(at.l4)?) {
        return None;
    }
    let l3 = at.l4 + 8;
    let (proto, l4, src, dst) = if at.v6 {
        let h = ip.get(l3..l3 + 40)?;
        if h[0] >> 4 != 6 {
            return None;
        }
        let a = |i: usize| IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&h[i..i + 16]).unwrap()));
        (h[6], l3 + 40, a(8), a(24))
    } else {
        let h = ip.get(l3..l3 + 20)?;
        let ihl = usize::from(h[0] & 0x0f) * 4;
        if h[0] >> 4 != 4 || ihl < 20 {
            return None;
        }
        let a = |i: usize| IpAddr::V4(Ipv4Addr::new(h[i], h[i + 1], h[i + 2], h[i + 3]));
        (h[9], l3 + ihl, a(12), a(16))
    };
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return None;
    }
    let ports = ip.get(l4..l4 + 4)?;
    let check = l4 + if proto == PROTO_TCP { 16 } else { 6 };
    Some(Quote {
        proto,
        l3,
        l4,
        check: (check + 2 <= at.ip_end).then_some(check),
        src,
        dst,
        sport: u16::from_be_bytes([ports[0], ports[1]]),
        dport: u16::from_be_bytes([ports[2], ports[3]]),
    })
}

/// Folds a one's complement sum to 16 bits (end-around carry).
pub fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// One's complement sum of `data` as big-endian 16-bit words, the last odd
/// byte padded with zero; not folded.
pub fn sum_words(data: &[u8]) -> u64 {
    data.chunks(2)
        .map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

/// The checksum field covering `data` (with the field itself zeroed).
pub fn internet_checksum(data: &[u8]) -> u16 {
    !fold(sum_words(data))
}

/// RFC 1624, eqn. 3: the checksum `check` after the 16-bit words `old` (an
/// even number of bytes) became `new`: `HC' = ~(~HC + ~m + m')`.
pub fn incremental(check: u16, old: &[u8], new: &[u8]) -> u16 {
    assert!(old.len() == new.len() && old.len().is_multiple_of(2));
    let mut sum = u64::from(!check);
    for (o, n) in old.chunks(2).zip(new.chunks(2)) {
        sum += u64::from(!u16::from_be_bytes([o[0], o[1]]));
        sum += u64::from(u16::from_be_bytes([n[0], n[1]]));
    }
    !fold(sum)
}

/// Whether the checksums an ICMP error carries are right: the outer IPv4
/// header's, the ICMP checksum (ICMPv6: with its pseudo-header), and the
/// quoted IPv4 header's. `None` if `frame` is no ICMP error with a quote.
pub fn icmp_checksums_ok(frame: &[u8]) -> Option<bool> {
    let Err(NotAFlow::Icmp(at)) = parse(frame) else {
        return None;
    };
    let q = quote(frame, &at)?;
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
pub fn may_get_icmp_errors(src: IpAddr) -> bool {
    match src {
        IpAddr::V4(a) => {
            let first = a.octets()[0];
            !(a.is_unspecified() || a.is_broadcast() || first >= 224 || first == 127)
        }
        IpAddr::V6(a) => !(a.is_unspecified() || a.octets()[0] == 0xff),
    }
}

fn octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_matches_recomputation() {
        let mut data: Vec<u8> = (0..40u8).map(|i| i.wrapping_mul(37)).collect();
        data[10] = 0;
        data[11] = 0;
        let check = internet_checksum(&data);
        data[10..12].copy_from_slice(&check.to_be_bytes());
        let new = [0xde, 0xad, 0xbe, 0xef];
        let updated = incremental(check, &data[16..20], &new);
        data[16..20].copy_from_slice(&new);
        data[10..12].copy_from_slice(&updated.to_be_bytes());
        assert_eq!(fold(sum_words(&data)), 0xffff);
    }

    #[test]
    fn parses_a_minimal_udp_packet() {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0]);
        f.extend_from_slice(&[198, 18, 0, 2, 198, 18, 0, 1]);
        f.extend_from_slice(&[0x9c, 0x40, 0x1f, 0x90, 0, 8, 0, 0]);
        let flow = parse(&f).unwrap();
        assert_eq!(
            (flow.sport, flow.dport, flow.l4, flow.ip_end),
            (40000, 8080, 34, 42)
        );
        assert_eq!(
            parse(&f[..41]),
            Err(NotAFlow::Malformed("IPv4 total length beyond the frame"))
        );
    }
}
