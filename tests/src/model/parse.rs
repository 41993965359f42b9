//! Frames as the model reads them: a parser written from the specification,
//! and the packet an ICMP error quotes.
//!
//! Nothing here comes from the eBPF crate: the point of the model is to be a
//! second, independent implementation.
//!
//! The parser accepts exactly what the README specifies:
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

/// An address's bytes, as on the wire.
pub fn octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
