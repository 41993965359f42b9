//! Packets to generate from: their specification, well-formed or damaged,
//! and the bytes built from it; ICMP errors quoting them.

#![allow(clippy::wildcard_imports)]

use super::*;

// ---------------------------------------------------------------------------
// Packets.

#[derive(Clone, Debug)]
pub(crate) enum Tag {
    None,
    Dot1Q(u16),
    Dot1Ad(u16),
    /// Two tags: more than the dataplane parses.
    QinQ,
}

#[derive(Clone, Debug)]
pub(crate) enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        /// 4-byte words of TCP options.
        options: u8,
        payload: Vec<u8>,
    },
    Udp {
        sport: u16,
        dport: u16,
        payload: Vec<u8>,
        zero_checksum: bool,
    },
    /// ICMP, ICMPv6, GRE, SCTP, "no next header" or anything: raw bytes.
    Other { proto: u8, payload: Vec<u8> },
}

impl L4 {
    pub(crate) fn proto(&self) -> u8 {
        match self {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::Other { proto, .. } => *proto,
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) enum Ext {
    /// Length in 8-byte units beyond the first 8.
    HopByHop(u8),
    DestOpts(u8),
    Routing {
        len: u8,
        segments_left: u8,
    },
    Fragment {
        offset: u16,
        more: bool,
        reserved: u8,
    },
    /// Payload length field: the header is (len + 2) * 4 bytes.
    Auth(u8),
}

impl Ext {
    pub(crate) fn number(&self) -> u8 {
        match self {
            Ext::HopByHop(_) => 0,
            Ext::DestOpts(_) => 60,
            Ext::Routing { .. } => 43,
            Ext::Fragment { .. } => 44,
            Ext::Auth(_) => 51,
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Ext::HopByHop(n) | Ext::DestOpts(n) => (usize::from(*n) + 1) * 8,
            Ext::Routing { len, .. } => (usize::from(*len) + 1) * 8,
            Ext::Fragment { .. } => 8,
            Ext::Auth(n) => (usize::from(*n) + 2) * 4,
        }
    }

    /// The same header at its smallest.
    pub(crate) fn shrunk(&self) -> Ext {
        match self {
            Ext::HopByHop(_) => Ext::HopByHop(0),
            Ext::DestOpts(_) => Ext::DestOpts(0),
            Ext::Routing { segments_left, .. } => Ext::Routing {
                len: 0,
                segments_left: *segments_left,
            },
            Ext::Auth(_) => Ext::Auth(0),
            other => other.clone(),
        }
    }

    pub(crate) fn bytes(&self, next: u8) -> Vec<u8> {
        let total = self.len();
        let mut h = match self {
            Ext::HopByHop(n) | Ext::DestOpts(n) => {
                // One PadN option fills the header.
                vec![next, *n, 1, (total - 4) as u8]
            }
            Ext::Routing { len, segments_left } => vec![next, *len, 4, *segments_left],
            Ext::Fragment {
                offset,
                more,
                reserved,
            } => {
                let field = (offset << 3) | (u16::from(reserved & 3) << 1) | u16::from(*more);
                let mut h = vec![next, 0];
                h.extend_from_slice(&field.to_be_bytes());
                h.extend_from_slice(&[0x12, 0x34, 0x56, 0x78]);
                h
            }
            Ext::Auth(n) => vec![next, *n, 0, 0, 0, 0, 0x10, 0x01],
        };
        h.resize(total, 0);
        h
    }
}

#[derive(Clone, Debug)]
pub(crate) enum Net {
    V4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        /// 4-byte words of IPv4 options.
        options: u8,
        /// Flags and fragment offset.
        frag: u16,
        l4: L4,
    },
    V6 {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        ext: Vec<Ext>,
        l4: L4,
    },
    Arp,
    Raw {
        ether_type: u16,
        bytes: Vec<u8>,
    },
}

/// A change of a length field: relative to its right value, or absolute.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Len {
    Delta(i8),
    Abs(u16),
}

impl Len {
    pub(crate) fn apply(self, cur: u16) -> u16 {
        match self {
            Len::Delta(d) => (i32::from(cur) + i32::from(d)).clamp(0, 0xffff) as u16,
            Len::Abs(v) => v,
        }
    }
}

/// Damage done to a built packet (IPv4 header fields keep a right header
/// checksum unless `IpChecksum`).
#[derive(Clone, Debug)]
pub(crate) enum Damage {
    Version(u8),
    Ihl(u8),
    TotalLength(Len),
    PayloadLength(Len),
    UdpLength(Len),
    DataOffset(u8),
    Byte {
        at: u16,
        value: u8,
    },
    IpChecksum,
    L4Checksum,
    /// The TCP or UDP checksum left to the NIC: the field holds only the sum
    /// of the pseudo-header, as a veth hands XDP an offloaded packet.
    Offloaded,
}

#[derive(Clone, Debug)]
pub(crate) struct PacketSpec {
    pub(crate) tag: Tag,
    pub(crate) net: Net,
    /// Ethernet padding after the IP packet.
    pub(crate) padding: u8,
    pub(crate) damage: Vec<Damage>,
    /// Cut the frame to this many bytes (modulo its length + 1).
    pub(crate) truncate: Option<u16>,
    /// Send a TCP or UDP packet to this entry of [`aims`] of its family
    /// (modulo their number) instead of its own destination and protocol.
    pub(crate) aim: Option<u8>,
    /// The ICMP errors about the packet's flow, if it is translated.
    pub(crate) icmp: IcmpSpec,
}

/// Destinations (address, port, UDP?) of the fixed services' frontends (an
/// all-addresses frontend at each node address), and a few near misses.
pub(crate) fn aims() -> &'static [(IpAddr, u16, bool)] {
    static AIMS: std::sync::LazyLock<Vec<(IpAddr, u16, bool)>> = std::sync::LazyLock::new(|| {
        let (desired, nodes) = fixed_world();
        let mut v = Vec::new();
        for fe in desired.services.iter().flat_map(|s| &s.frontends) {
            let udp = fe.proto == Protocol::Udp;
            match fe.addr {
                HostAddr::Ip(a) => v.push((a, fe.port, udp)),
                HostAddr::AllV4 | HostAddr::AllV6 => v.extend(
                    nodes
                        .iter()
                        .filter(|n| n.is_ipv4() == (fe.addr == HostAddr::AllV4))
                        .map(|n| (*n, fe.port, udp)),
                ),
            }
        }
        v.extend([
            (v4(OTHER4), 8080, false),
            (v4(NODE4[0]), 9999, true),
            (v4(vip4(0)), 53, false),
            (v6(OTHER6), 8080, false),
            (v6(vip6(4)), 80, false),
            (v6(NODE6[1]), 53, true),
        ]);
        v
    });
    &AIMS
}

/// Makes `l4` TCP or UDP to `dport`.
pub(crate) fn aim_at(l4: &mut L4, to_port: u16, to_udp: bool) {
    let (sport, payload) = match l4 {
        L4::Tcp { sport, payload, .. } | L4::Udp { sport, payload, .. } => {
            (*sport, payload.clone())
        }
        L4::Other { .. } => return,
    };
    match l4 {
        L4::Tcp { dport, .. } if !to_udp => *dport = to_port,
        L4::Udp { dport, .. } if to_udp => *dport = to_port,
        L4::Tcp { .. } => {
            *l4 = L4::Udp {
                sport,
                dport: to_port,
                payload,
                zero_checksum: false,
            }
        }
        _ => {
            *l4 = L4::Tcp {
                sport,
                dport: to_port,
                flags: TCP_SYN,
                options: 0,
                payload,
            }
        }
    }
}

/// Where the layers of a built frame are.
pub(crate) struct Layout {
    pub(crate) l3: usize,
    pub(crate) l4: Option<usize>,
    pub(crate) v6: bool,
    pub(crate) proto: u8,
    pub(crate) ip_header_len: usize,
}

/// Frames stay below this many bytes: BPF_PROG_TEST_RUN gives XDP longer
/// ones as fragments, which is another program input than a linear frame.
pub(crate) const MAX_EXT_BYTES: usize = 2400;

pub(crate) fn l4_bytes(l4: &L4, src: &[u8], dst: &[u8]) -> Vec<u8> {
    let pseudo = |len: usize, proto: u8| -> u64 {
        let mut p = Vec::new();
        p.extend_from_slice(src);
        p.extend_from_slice(dst);
        if src.len() == 4 {
            p.extend_from_slice(&[0, proto]);
            p.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            p.extend_from_slice(&(len as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, proto]);
        }
        sum_words(&p)
    };
    match l4 {
        L4::Tcp {
            sport,
            dport,
            flags,
            options,
            payload,
        } => {
            let words = usize::from(*options);
            let mut h = Vec::new();
            h.extend_from_slice(&sport.to_be_bytes());
            h.extend_from_slice(&dport.to_be_bytes());
            h.extend_from_slice(&1000u32.to_be_bytes());
            h.extend_from_slice(&(if flags & TCP_ACK != 0 { 2000u32 } else { 0 }).to_be_bytes());
            h.push(((5 + words) as u8) << 4);
            h.push(*flags);
            h.extend_from_slice(&[0xfa, 0xf0, 0, 0, 0, 0]);
            h.extend(std::iter::repeat_n(1u8, words * 4)); // NOPs
            h.extend_from_slice(payload);
            let c = !checksum::fold(pseudo(h.len(), 6) + sum_words(&h));
            h[16..18].copy_from_slice(&c.to_be_bytes());
            h
        }
        L4::Udp {
            sport,
            dport,
            payload,
            zero_checksum,
        } => {
            let mut h = Vec::new();
            h.extend_from_slice(&sport.to_be_bytes());
            h.extend_from_slice(&dport.to_be_bytes());
            h.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            h.extend_from_slice(&[0, 0]);
            h.extend_from_slice(payload);
            if !zero_checksum {
                let c = match !checksum::fold(pseudo(h.len(), 17) + sum_words(&h)) {
                    0 => 0xffff,
                    c => c,
                };
                h[6..8].copy_from_slice(&c.to_be_bytes());
            }
            h
        }
        L4::Other { payload, .. } => payload.clone(),
    }
}

pub(crate) fn fix_ipv4_checksum(f: &mut [u8], lay: &Layout) {
    if lay.v6 || f.len() < lay.l3 + lay.ip_header_len {
        return;
    }
    let h = &mut f[lay.l3..lay.l3 + lay.ip_header_len];
    h[10] = 0;
    h[11] = 0;
    let c = checksum::internet_checksum(h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
}

pub(crate) fn build(spec: &PacketSpec) -> Vec<u8> {
    if let Some(i) = spec.aim {
        let mut spec = spec.clone();
        spec.aim = None;
        let family: Vec<&(IpAddr, u16, bool)> = aims()
            .iter()
            .filter(|(a, ..)| a.is_ipv4() == matches!(spec.net, Net::V4 { .. }))
            .collect();
        let (a, p, udp) = *family[usize::from(i) % family.len()];
        match (&mut spec.net, a) {
            (Net::V4 { dst, l4, .. }, IpAddr::V4(a)) => {
                *dst = a;
                aim_at(l4, p, udp);
            }
            (Net::V6 { dst, l4, .. }, IpAddr::V6(a)) => {
                *dst = a;
                aim_at(l4, p, udp);
            }
            _ => {}
        }
        return build(&spec);
    }
    let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
    match spec.tag {
        Tag::None => {}
        Tag::Dot1Q(vid) => {
            f.extend_from_slice(&[0x81, 0x00]);
            f.extend_from_slice(&(vid & 0xfff).to_be_bytes());
        }
        Tag::Dot1Ad(vid) => {
            f.extend_from_slice(&[0x88, 0xa8]);
            f.extend_from_slice(&(vid & 0xfff).to_be_bytes());
        }
        Tag::QinQ => f.extend_from_slice(&[0x88, 0xa8, 0, 5, 0x81, 0x00, 0, 7]),
    }
    let mut lay = Layout {
        l3: f.len() + 2,
        l4: None,
        v6: false,
        proto: 0,
        ip_header_len: 0,
    };
    match &spec.net {
        Net::V4 {
            src,
            dst,
            options,
            frag,
            l4,
        } => {
            f.extend_from_slice(&[0x08, 0x00]);
            let body = l4_bytes(l4, &src.octets(), &dst.octets());
            let hlen = 20 + 4 * usize::from(*options);
            let mut ip = vec![0x40 | (hlen / 4) as u8, 0];
            ip.extend_from_slice(&((hlen + body.len()) as u16).to_be_bytes());
            ip.extend_from_slice(&0x4242u16.to_be_bytes());
            ip.extend_from_slice(&frag.to_be_bytes());
            ip.extend_from_slice(&[64, l4.proto(), 0, 0]);
            ip.extend_from_slice(&src.octets());
            ip.extend_from_slice(&dst.octets());
            if hlen > 20 {
                ip.resize(hlen - 1, 1); // NOP options
                ip.push(0); // end of options
            }
            let c = checksum::internet_checksum(&ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&ip);
            lay.l4 = Some(f.len());
            lay.proto = l4.proto();
            lay.ip_header_len = hlen;
            f.extend_from_slice(&body);
        }
        Net::V6 { src, dst, ext, l4 } => {
            f.extend_from_slice(&[0x86, 0xdd]);
            lay.v6 = true;
            let body = l4_bytes(l4, &src.octets(), &dst.octets());
            let mut total = 0;
            let ext: Vec<Ext> = ext
                .iter()
                .map(|e| {
                    let e = if total + e.len() > MAX_EXT_BYTES {
                        e.shrunk()
                    } else {
                        e.clone()
                    };
                    total += e.len();
                    e
                })
                .collect();
            let mut chain = Vec::new();
            for (i, e) in ext.iter().enumerate() {
                let next = ext.get(i + 1).map_or(l4.proto(), Ext::number);
                chain.extend_from_slice(&e.bytes(next));
            }
            let first = ext.first().map_or(l4.proto(), Ext::number);
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&((chain.len() + body.len()) as u16).to_be_bytes());
            f.extend_from_slice(&[first, 64]);
            f.extend_from_slice(&src.octets());
            f.extend_from_slice(&dst.octets());
            f.extend_from_slice(&chain);
            lay.l4 = Some(f.len());
            lay.proto = l4.proto();
            lay.ip_header_len = 40;
            f.extend_from_slice(&body);
        }
        Net::Arp => {
            f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
            f.extend_from_slice(&[2, 0, 0, 0, 0, 2, 198, 18, 0, 2, 0, 0, 0, 0, 0, 0]);
            f.extend_from_slice(&[198, 18, 0, 1]);
        }
        Net::Raw { ether_type, bytes } => {
            f.extend_from_slice(&ether_type.to_be_bytes());
            f.extend_from_slice(bytes);
        }
    }
    f.extend((0..spec.padding).map(|i| 0xe0 ^ i));
    let is_ip = matches!(spec.net, Net::V4 { .. } | Net::V6 { .. });
    for d in &spec.damage {
        let at16 =
            |f: &[u8], at: usize| f.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
        match *d {
            Damage::Version(v) if is_ip => {
                f[lay.l3] = (v << 4) | (f[lay.l3] & 0x0f);
                fix_ipv4_checksum(&mut f, &lay);
            }
            Damage::Ihl(v) if is_ip && !lay.v6 => {
                f[lay.l3] = (f[lay.l3] & 0xf0) | (v & 0x0f);
                fix_ipv4_checksum(&mut f, &lay);
            }
            Damage::TotalLength(len) if is_ip && !lay.v6 => {
                let at = lay.l3 + 2;
                let v = len.apply(at16(&f, at).unwrap());
                f[at..at + 2].copy_from_slice(&v.to_be_bytes());
                fix_ipv4_checksum(&mut f, &lay);
            }
            Damage::PayloadLength(len) if lay.v6 => {
                let at = lay.l3 + 4;
                let v = len.apply(at16(&f, at).unwrap());
                f[at..at + 2].copy_from_slice(&v.to_be_bytes());
            }
            Damage::UdpLength(len) if lay.proto == 17 => {
                let at = lay.l4.unwrap() + 4;
                if let Some(cur) = at16(&f, at) {
                    f[at..at + 2].copy_from_slice(&len.apply(cur).to_be_bytes());
                }
            }
            Damage::DataOffset(v) if lay.proto == 6 => {
                let at = lay.l4.unwrap() + 12;
                if at < f.len() {
                    f[at] = (v << 4) | (f[at] & 0x0f);
                }
            }
            Damage::Byte { at, value } => {
                let at = usize::from(at) % f.len();
                f[at] = value;
            }
            Damage::IpChecksum if is_ip && !lay.v6 => f[lay.l3 + 10] ^= 0x5a,
            Damage::Offloaded if matches!(lay.proto, 6 | 17) => {
                if let Ok(flow) = parse::parse(&f)
                    && matches!(flow.proto, 6 | 17)
                {
                    let at = flow.l4 + if flow.proto == 6 { 16 } else { 6 };
                    let seed = offload::pseudo_header_sum(&f, &flow);
                    f[at..at + 2].copy_from_slice(&seed.to_be_bytes());
                }
            }
            Damage::L4Checksum if matches!(lay.proto, 6 | 17) => {
                let at = lay.l4.unwrap() + if lay.proto == 6 { 16 } else { 6 };
                if at < f.len() {
                    f[at] ^= 0xa5;
                }
            }
            _ => {}
        }
    }
    if let Some(n) = spec.truncate {
        f.truncate(usize::from(n) % (f.len() + 1));
    }
    f
}

/// The frame its receiver would answer with: Ethernet addresses, IP
/// addresses and ports swapped (every checksum stays right).
pub(crate) fn mirror(frame: &[u8]) -> Option<Vec<u8>> {
    let flow = parse::parse(frame).ok()?;
    let mut m = frame.to_vec();
    m[0..6].copy_from_slice(&frame[6..12]);
    m[6..12].copy_from_slice(&frame[0..6]);
    let (s, d, n) = if flow.v6 {
        (flow.l3 + 8, flow.l3 + 24, 16)
    } else {
        (flow.l3 + 12, flow.l3 + 16, 4)
    };
    m[s..s + n].copy_from_slice(&frame[d..d + n]);
    m[d..d + n].copy_from_slice(&frame[s..s + n]);
    m[flow.l4..flow.l4 + 2].copy_from_slice(&frame[flow.l4 + 2..flow.l4 + 4]);
    m[flow.l4 + 2..flow.l4 + 4].copy_from_slice(&frame[flow.l4..flow.l4 + 2]);
    Some(m)
}

/// How much of the offending packet an ICMP error quotes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum QuoteLen {
    /// IP header and ports.
    Ports,
    /// IP header and 8 bytes (a UDP header, or TCP up to its sequence number).
    EightBytes,
    /// IP header and 18 bytes (a TCP checksum too).
    Eighteen,
    Whole,
}

/// The IP packet of `frame` as an ICMP error quotes it.
pub(crate) fn quoted(frame: &[u8], len: QuoteLen) -> Vec<u8> {
    let Ok(f) = parse::parse(frame) else {
        return frame.get(14..).unwrap_or_default().to_vec();
    };
    let header = f.l4 - f.l3;
    let n = match len {
        QuoteLen::Ports => header + 4,
        QuoteLen::EightBytes => header + 8,
        QuoteLen::Eighteen => header + 18,
        QuoteLen::Whole => f.ip_end - f.l3,
    };
    frame[f.l3..f.l3 + n.min(f.ip_end - f.l3)].to_vec()
}

/// An ICMP error from `src` to `dst` quoting `quote`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct IcmpSpec {
    /// Index into the family's (type, code) list.
    pub(crate) kind: u8,
    pub(crate) quote: QuoteLen,
}

pub(crate) const ICMP4_KINDS: [(u8, u8); 6] = [(3, 3), (3, 4), (11, 0), (12, 0), (0, 0), (5, 1)];
pub(crate) const ICMP6_KINDS: [(u8, u8); 6] = [(1, 4), (2, 0), (3, 0), (4, 0), (128, 0), (137, 0)];

pub(crate) fn icmp_error(
    tag: &Tag,
    src: IpAddr,
    dst: IpAddr,
    spec: IcmpSpec,
    quote: &[u8],
) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
    match tag {
        Tag::Dot1Q(vid) => {
            f.extend_from_slice(&[0x81, 0x00]);
            f.extend_from_slice(&(vid & 0xfff).to_be_bytes());
        }
        Tag::Dot1Ad(vid) => {
            f.extend_from_slice(&[0x88, 0xa8]);
            f.extend_from_slice(&(vid & 0xfff).to_be_bytes());
        }
        _ => {}
    }
    let v6 = src.is_ipv6();
    let (kind, code) = if v6 {
        ICMP6_KINDS[usize::from(spec.kind) % ICMP6_KINDS.len()]
    } else {
        ICMP4_KINDS[usize::from(spec.kind) % ICMP4_KINDS.len()]
    };
    let mut icmp = vec![kind, code, 0, 0, 0, 0, 0x05, 0xdc];
    icmp.extend_from_slice(quote);
    let (s, d) = (addr_bytes(src), addr_bytes(dst));
    if v6 {
        let mut pseudo = s.clone();
        pseudo.extend_from_slice(&d);
        pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 58]);
        let c = !checksum::fold(sum_words(&pseudo) + sum_words(&icmp));
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
        f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
        f.extend_from_slice(&[58, 64]);
        f.extend_from_slice(&s);
        f.extend_from_slice(&d);
    } else {
        let c = checksum::internet_checksum(&icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let mut ip = vec![0x45, 0xc0];
        ip.extend_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&[0, 0, 0, 0, 64, 1, 0, 0]);
        ip.extend_from_slice(&s);
        ip.extend_from_slice(&d);
        let c = checksum::internet_checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&ip);
    }
    f.extend_from_slice(&icmp);
    f
}

pub(crate) fn addr_bytes(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// A router between the node and its clients, which sends ICMP errors.
pub(crate) fn router(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xfe))
    } else {
        IpAddr::V4(Ipv4Addr::new(198, 18, 0, 254))
    }
}

pub(crate) fn icmp_spec() -> impl Strategy<Value = IcmpSpec> {
    (
        prop_oneof![4 => 0u8..4, 1 => 4u8..6],
        prop_oneof![
            Just(QuoteLen::Ports),
            Just(QuoteLen::EightBytes),
            Just(QuoteLen::Eighteen),
            Just(QuoteLen::Whole)
        ],
    )
        .prop_map(|(kind, quote)| IcmpSpec { kind, quote })
}
