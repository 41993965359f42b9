//! Header parsing: Ethernet (with at most one 802.1Q/802.1ad tag), IPv4 (options
//! via IHL) or IPv6 (extension headers skipped), then TCP or UDP.
//!
//! The parser only reads. It returns the flow's addresses, ports and header
//! offsets; writers re-check bounds at the offsets they touch.
//!
//! Lengths are checked against the whole packet, headers against the bytes
//! directly accessible: a packet whose payload lies in fragments (a GSO or
//! GRO super-packet, a multi-buffer frame) parses like any other, and one
//! whose headers do not all lie in the accessible part says how many bytes
//! must be (`NotAFlow::Short`), so tc can make exactly those linear.

use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};
use portmap_common::abi::{FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP, RawAddr};

use aya_ebpf::programs::TcContext;

use crate::packet::{MAX_OFFSET, PacketBuf, ptr_at};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AH: u8 = 51;
const IPV6_DSTOPTS: u8 = 60;
/// Longest extension header chain walked; longer chains are passed untouched.
const IPV6_MAX_EXT_HEADERS: usize = 6;
/// Transport headers further in than this are passed untouched. Keeping the
/// offset bounded is also what lets the verifier check the accesses past it.
const MAX_L4_OFFSET: usize = 1024;

/// TCP flag bits in [`Flow::tcp_flags`].
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Where an ICMP or ICMPv6 message sits in a packet.
pub struct IcmpAt {
    pub family: u8,
    pub l3_off: usize,
    /// The ICMP header.
    pub l4_off: usize,
    /// End of the IP packet.
    pub ip_end: usize,
    pub dst: RawAddr,
}

const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;

/// A TCP or UDP packet's identity and layout.
pub struct Flow {
    pub family: u8,
    pub proto: u8,
    /// TCP flags (0 for UDP).
    pub tcp_flags: u8,
    pub l3_off: usize,
    pub l4_off: usize,
    /// Length of the IP packet (header included).
    pub ip_len: u32,
    /// Length of the TCP segment or UDP datagram, as its checksum's
    /// pseudo-header counts it.
    pub l4_len: u32,
    /// Packets on the wire this one stands for (a GSO packet's segments).
    pub packets: u32,
    /// IP bytes on the wire, as the counters count them: a GSO packet's
    /// length plus the headers each further segment repeats.
    pub wire_len: u32,
    pub src: RawAddr,
    pub dst: RawAddr,
    /// Network byte order.
    pub sport: u16,
    /// Network byte order.
    pub dport: u16,
}

/// Why a packet is not a flow portmap translates. Every case is passed to the
/// kernel untouched; the distinction only decides what is counted.
pub enum NotAFlow {
    /// Not IP, or IP carrying something other than TCP, UDP or ICMP.
    Other,
    /// ICMP (IPv4) or ICMPv6: perhaps an error about a translated flow.
    Icmp(IcmpAt),
    /// Headers cut short or inconsistent with each other.
    Malformed,
    /// The packet is long enough, but its headers reach past the directly
    /// accessible bytes: the first this many bytes must be made accessible.
    Short(usize),
    /// An IP fragment.
    Fragment,
}

/// Most times an skb's headers are made linear bit by bit before giving up
/// (each time, exactly as many bytes as the header that did not fit needs).
const MAX_PULLS: usize = 4;

/// [`parse`] for an skb: headers that lie in its paged part are made linear
/// first, as far as they go and no further. `Short` comes back only when the
/// kernel could not make them linear.
#[inline(always)]
pub fn parse_skb(ctx: &TcContext) -> Result<Flow, NotAFlow> {
    let mut pulls = 0;
    loop {
        match parse(ctx) {
            Err(NotAFlow::Short(need))
                if pulls < MAX_PULLS && ctx.pull_data(need as u32).is_ok() =>
            {
                pulls += 1;
            }
            parsed => return parsed,
        }
    }
}

/// A pointer to the header `T` at `off`: `Short` if the packet holds it but
/// not in its directly accessible bytes, `Malformed` if the packet ends first.
#[inline(always)]
fn header<T>(buf: &impl PacketBuf, off: usize) -> Result<*const T, NotAFlow> {
    if let Some(p) = ptr_at::<T>(buf, off) {
        return Ok(p);
    }
    let end = off + core::mem::size_of::<T>();
    if off <= MAX_OFFSET && buf.reaches(end) {
        Err(NotAFlow::Short(end))
    } else {
        Err(NotAFlow::Malformed)
    }
}

#[inline(always)]
pub fn parse(buf: &impl PacketBuf) -> Result<Flow, NotAFlow> {
    let eth: *const EthHdr = header(buf, 0)?;
    // SAFETY: `header` checked that the whole header is inside the packet.
    let mut ether_type = u16::from_be(unsafe { (*eth).ether_type });
    let mut l3_off = EthHdr::LEN;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        // The tag's TCI is 2 bytes; the encapsulated EtherType follows it.
        let inner: *const [u8; 2] = header(buf, l3_off + 2)?;
        // SAFETY: bounds checked by `header` just above.
        ether_type = u16::from_be_bytes(unsafe { *inner });
        l3_off += 4;
    }
    match ether_type {
        ETH_P_IP => parse_ipv4(buf, l3_off),
        ETH_P_IPV6 => parse_ipv6(buf, l3_off),
        _ => Err(NotAFlow::Other),
    }
}

#[inline(always)]
fn parse_ipv4(buf: &impl PacketBuf, l3_off: usize) -> Result<Flow, NotAFlow> {
    let ip: *const Ipv4Hdr = header(buf, l3_off)?;
    // SAFETY: `header` checked that the fixed header is inside the packet;
    // `Ipv4Hdr` is made of byte arrays, so any alignment is fine.
    let ip = unsafe { &*ip };
    if ip.vihl >> 4 != 4 {
        return Err(NotAFlow::Malformed);
    }
    let header_len = usize::from(ip.vihl & 0x0f) * 4;
    let mut total_len = usize::from(u16::from_be_bytes(ip.tot_len));
    // A GSO packet over 64 KiB (BIG TCP) has no room for its length: the
    // stack leaves 0 there and the skb knows it.
    if total_len == 0 && buf.is_gso() {
        total_len = buf.len().saturating_sub(l3_off);
    }
    if header_len < Ipv4Hdr::LEN || total_len < header_len {
        return Err(NotAFlow::Malformed);
    }
    // The frame may be longer than the IP packet (Ethernet padding), never shorter.
    if !buf.reaches(l3_off + total_len) {
        return Err(NotAFlow::Malformed);
    }
    // More-fragments flag or a fragment offset: the datagram is in pieces.
    if u16::from_be_bytes(ip.frags) & 0x3fff != 0 {
        return Err(NotAFlow::Fragment);
    }
    let flow = Flow {
        family: FAMILY_V4,
        proto: ip.proto,
        tcp_flags: 0,
        l3_off,
        l4_off: l3_off + header_len,
        ip_len: total_len as u32,
        l4_len: (total_len - header_len) as u32,
        packets: 1,
        wire_len: total_len as u32,
        src: RawAddr([u32::from_ne_bytes(ip.src_addr), 0, 0, 0]),
        dst: RawAddr([u32::from_ne_bytes(ip.dst_addr), 0, 0, 0]),
        sport: 0,
        dport: 0,
    };
    parse_l4(buf, flow, l3_off + total_len)
}

#[inline(always)]
fn parse_ipv6(buf: &impl PacketBuf, l3_off: usize) -> Result<Flow, NotAFlow> {
    let ip: *const Ipv6Hdr = header(buf, l3_off)?;
    // SAFETY: `header` checked that the fixed header is inside the packet.
    let ip = unsafe { &*ip };
    if ip.vcf[0] >> 4 != 6 {
        return Err(NotAFlow::Malformed);
    }
    let mut payload_len = usize::from(u16::from_be_bytes(ip.payload_len));
    // As for IPv4: a GSO packet over 64 KiB carries 0 here.
    if payload_len == 0 && buf.is_gso() {
        payload_len = buf.len().saturating_sub(l3_off + Ipv6Hdr::LEN);
    }
    let end = l3_off + Ipv6Hdr::LEN + payload_len;
    // A payload length of 0 (jumbogram) also fails later unless nothing follows.
    if !buf.reaches(end) {
        return Err(NotAFlow::Malformed);
    }
    let mut next = ip.next_hdr;
    let mut off = l3_off + Ipv6Hdr::LEN;
    for _ in 0..IPV6_MAX_EXT_HEADERS {
        if next == PROTO_TCP || next == PROTO_UDP || next == PROTO_ICMPV6 {
            break;
        }
        let len = match next {
            IPV6_HOPOPTS | IPV6_DSTOPTS => {
                let h: *const [u8; 2] = header(buf, off)?;
                // SAFETY: bounds checked by `header` just above.
                let h = unsafe { *h };
                next = h[0];
                (usize::from(h[1]) + 1) * 8
            }
            IPV6_ROUTING => {
                let h: *const [u8; 4] = header(buf, off)?;
                // SAFETY: bounds checked by `header` just above.
                let h = unsafe { *h };
                // Segments left: this node is not the final destination, so the
                // destination address is not the one the client means.
                if h[3] != 0 {
                    return Err(NotAFlow::Other);
                }
                next = h[0];
                (usize::from(h[1]) + 1) * 8
            }
            IPV6_FRAGMENT => {
                let h: *const [u8; 4] = header(buf, off)?;
                // SAFETY: bounds checked by `header` just above.
                let h = unsafe { *h };
                // Offset (13 bits) and M flag: a real fragment. Both zero is an
                // atomic fragment (RFC 6946), a whole datagram: parse on.
                if u16::from_be_bytes([h[2], h[3]]) & 0xfff9 != 0 {
                    return Err(NotAFlow::Fragment);
                }
                next = h[0];
                8
            }
            IPV6_AH => {
                let h: *const [u8; 2] = header(buf, off)?;
                // SAFETY: bounds checked by `header` just above.
                let h = unsafe { *h };
                next = h[0];
                (usize::from(h[1]) + 2) * 4
            }
            _ => return Err(NotAFlow::Other),
        };
        off += len;
        if off > MAX_L4_OFFSET {
            return Err(NotAFlow::Other);
        }
    }
    let flow = Flow {
        family: FAMILY_V6,
        proto: next,
        tcp_flags: 0,
        l3_off,
        l4_off: off,
        ip_len: (Ipv6Hdr::LEN + payload_len) as u32,
        // Extension headers are not part of the upper-layer length.
        l4_len: end.saturating_sub(off) as u32,
        packets: 1,
        wire_len: (Ipv6Hdr::LEN + payload_len) as u32,
        src: RawAddr(addr_words(&ip.src_addr)),
        dst: RawAddr(addr_words(&ip.dst_addr)),
        sport: 0,
        dport: 0,
    };
    parse_l4(buf, flow, end)
}

#[inline(always)]
fn addr_words(bytes: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        u32::from_ne_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        u32::from_ne_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]),
        u32::from_ne_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]),
    ]
}

/// Reads the ports (and TCP flags) of `flow`, whose IP packet ends at `ip_end`.
#[inline(always)]
fn parse_l4(buf: &impl PacketBuf, mut flow: Flow, ip_end: usize) -> Result<Flow, NotAFlow> {
    let l4_off = flow.l4_off;
    if l4_off > MAX_L4_OFFSET {
        return Err(NotAFlow::Other);
    }
    match flow.proto {
        PROTO_TCP => {
            if l4_off + TcpHdr::LEN > ip_end {
                return Err(NotAFlow::Malformed);
            }
            let tcp: *const TcpHdr = header(buf, l4_off)?;
            // SAFETY: `header` checked that the fixed TCP header is inside the packet.
            let tcp = unsafe { &*tcp };
            let data_off = usize::from(tcp.doff()) * 4;
            if data_off < TcpHdr::LEN || l4_off + data_off > ip_end {
                return Err(NotAFlow::Malformed);
            }
            flow.sport = u16::from_ne_bytes(tcp.source);
            flow.dport = u16::from_ne_bytes(tcp.dest);
            // Byte 13 of the TCP header holds CWR ECE URG ACK PSH RST SYN FIN.
            let flags: *const u8 = header(buf, l4_off + 13)?;
            // SAFETY: bounds checked by `header` just above.
            flow.tcp_flags = unsafe { *flags };
            count_segments(buf, &mut flow, data_off);
        }
        PROTO_UDP => {
            if l4_off + UdpHdr::LEN > ip_end {
                return Err(NotAFlow::Malformed);
            }
            let udp: *const UdpHdr = header(buf, l4_off)?;
            // SAFETY: `header` checked that the UDP header is inside the packet.
            let udp = unsafe { &*udp };
            let udp_len = usize::from(u16::from_be_bytes(udp.len));
            if udp_len < UdpHdr::LEN || l4_off + udp_len > ip_end {
                return Err(NotAFlow::Malformed);
            }
            flow.sport = u16::from_ne_bytes(udp.src);
            flow.dport = u16::from_ne_bytes(udp.dst);
            flow.l4_len = udp_len as u32;
            count_segments(buf, &mut flow, UdpHdr::LEN);
        }
        PROTO_ICMP | PROTO_ICMPV6 if (flow.proto == PROTO_ICMP) == (flow.family == FAMILY_V4) => {
            return Err(NotAFlow::Icmp(IcmpAt {
                family: flow.family,
                l3_off: flow.l3_off,
                l4_off,
                ip_end,
                dst: flow.dst,
            }));
        }
        _ => return Err(NotAFlow::Other),
    }
    Ok(flow)
}

/// A GSO packet goes out as several: each further segment repeats the IP
/// and transport headers (`l4_header` bytes of the latter).
#[inline(always)]
fn count_segments(buf: &impl PacketBuf, flow: &mut Flow, l4_header: usize) {
    let packets = buf.segments();
    if packets > 1 {
        let headers = (flow.l4_off - flow.l3_off + l4_header) as u32;
        flow.packets = packets;
        flow.wire_len = flow.ip_len + (packets - 1) * headers;
    }
}
