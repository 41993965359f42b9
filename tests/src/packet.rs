//! Crafting and checking packets for BPF_PROG_TEST_RUN.
//!
//! [`Packet::build`] writes Ethernet (optionally VLAN-tagged), IPv4 (with
//! options, fragment fields) or IPv6 (with extension headers), and TCP, UDP or
//! raw payloads, with correct checksums. [`inspect`] reads a packet back and
//! [`verify_checksums`] recomputes every checksum in full, independently of
//! the incremental updates the dataplane makes.

use std::net::{IpAddr, SocketAddr};

use portmap_common::csum::{checksum, fold, l4_checksum, sum_bytes};

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// An IPv6 extension header.
#[derive(Clone, Debug)]
pub enum Ext {
    HopByHop(usize),
    DestOpts(usize),
    /// Routing header with this many segments left.
    Routing {
        segments_left: u8,
    },
    /// Fragment header: offset in 8-byte units, more-fragments flag.
    Fragment {
        offset: u16,
        more: bool,
    },
    /// Authentication header with this many 4-byte words of ICV.
    Auth(usize),
    /// portmap's DSR option for this frontend (a destination options
    /// header, `portmap_common::dsr`).
    Dsr(SocketAddr),
}

impl Ext {
    fn number(&self) -> u8 {
        match self {
            Ext::HopByHop(_) => 0,
            Ext::DestOpts(_) | Ext::Dsr(_) => 60,
            Ext::Routing { .. } => 43,
            Ext::Fragment { .. } => 44,
            Ext::Auth(_) => 51,
        }
    }

    fn bytes(&self, next: u8) -> Vec<u8> {
        match self {
            // Length in 8-byte units beyond the first 8; padded with PadN.
            Ext::HopByHop(units) | Ext::DestOpts(units) => {
                let mut h = vec![next, *units as u8];
                let total = (units + 1) * 8;
                h.push(1); // PadN
                h.push((total - 4) as u8);
                h.resize(total, 0);
                h
            }
            Ext::Routing { segments_left } => {
                // Type 0 layout with one address (deprecated but parseable).
                let mut h = vec![next, 2, 0, *segments_left];
                h.resize(24, 0);
                h
            }
            Ext::Fragment { offset, more } => {
                let field = (offset << 3) | u16::from(*more);
                let mut h = vec![next, 0];
                h.extend_from_slice(&field.to_be_bytes());
                h.extend_from_slice(&0x1234_5678u32.to_be_bytes());
                h
            }
            Ext::Dsr(frontend) => {
                let IpAddr::V6(addr) = frontend.ip() else {
                    panic!("an IPv6 frontend: {frontend}");
                };
                portmap_common::dsr::ext6(next, addr.octets(), frontend.port().to_be()).to_vec()
            }
            Ext::Auth(words) => {
                // Payload length is total/4 - 2; 12 fixed bytes plus ICV.
                let total = 12 + 4 * words;
                let mut h = vec![next, (total / 4 - 2) as u8];
                h.resize(total, 0xaa);
                h
            }
        }
    }
}

#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        flags: u8,
        options: Vec<u8>,
    },
    /// UDP; `zero_checksum` sends checksum 0 ("none", legal on IPv4 only).
    Udp {
        zero_checksum: bool,
    },
    /// Another protocol: raw bytes after the IP headers.
    Other {
        proto: u8,
    },
}

/// A packet to build.
#[derive(Clone, Debug)]
pub struct Packet {
    pub vlan: Option<u16>,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub l4: L4,
    pub payload: Vec<u8>,
    /// IPv4 options (padded to 4 bytes).
    pub ip_options: Vec<u8>,
    /// IPv4 flags and fragment offset field (the 16 bits).
    pub ipv4_frag: u16,
    pub ipv6_ext: Vec<Ext>,
}

impl Packet {
    pub fn tcp(src: SocketAddr, dst: SocketAddr, flags: u8) -> Self {
        Packet {
            vlan: None,
            src,
            dst,
            l4: L4::Tcp {
                flags,
                options: Vec::new(),
            },
            payload: Vec::new(),
            ip_options: Vec::new(),
            ipv4_frag: 0x4000, // DF
            ipv6_ext: Vec::new(),
        }
    }

    pub fn udp(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Self {
        Packet {
            l4: L4::Udp {
                zero_checksum: false,
            },
            payload: payload.to_vec(),
            ..Packet::tcp(src, dst, 0)
        }
    }

    fn proto(&self) -> u8 {
        match &self.l4 {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::Other { proto } => *proto,
        }
    }

    fn l4_bytes(&self, src: &[u8], dst: &[u8]) -> Vec<u8> {
        let (sp, dp) = (self.src.port().to_be_bytes(), self.dst.port().to_be_bytes());
        match &self.l4 {
            L4::Tcp { flags, options } => {
                let mut opts = options.clone();
                while !opts.len().is_multiple_of(4) {
                    opts.push(1); // NOP
                }
                let doff = ((20 + opts.len()) / 4) as u8;
                let mut h = Vec::new();
                h.extend_from_slice(&sp);
                h.extend_from_slice(&dp);
                h.extend_from_slice(&1000u32.to_be_bytes());
                h.extend_from_slice(
                    &(if flags & TCP_ACK != 0 { 2000u32 } else { 0 }).to_be_bytes(),
                );
                h.push(doff << 4);
                h.push(*flags);
                h.extend_from_slice(&64240u16.to_be_bytes());
                h.extend_from_slice(&[0, 0, 0, 0]);
                h.extend_from_slice(&opts);
                h.extend_from_slice(&self.payload);
                let c = l4_checksum(src, dst, 6, &h, 16);
                h[16..18].copy_from_slice(&c.to_ne_bytes());
                h
            }
            L4::Udp { zero_checksum } => {
                let mut h = Vec::new();
                h.extend_from_slice(&sp);
                h.extend_from_slice(&dp);
                h.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                h.extend_from_slice(&[0, 0]);
                h.extend_from_slice(&self.payload);
                if !zero_checksum {
                    let mut c = l4_checksum(src, dst, 17, &h, 6);
                    if c == 0 {
                        c = 0xffff;
                    }
                    h[6..8].copy_from_slice(&c.to_ne_bytes());
                }
                h
            }
            L4::Other { .. } => self.payload.clone(),
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let mut out = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
        if let Some(vid) = self.vlan {
            out.extend_from_slice(&[0x81, 0x00]);
            out.extend_from_slice(&vid.to_be_bytes());
        }
        match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                out.extend_from_slice(&[0x08, 0x00]);
                let l4 = self.l4_bytes(&s.octets(), &d.octets());
                let mut opts = self.ip_options.clone();
                while !opts.len().is_multiple_of(4) {
                    opts.push(0); // End of options list padding
                }
                let hlen = 20 + opts.len();
                let mut ip = vec![0x40 | (hlen / 4) as u8, 0];
                ip.extend_from_slice(&((hlen + l4.len()) as u16).to_be_bytes());
                ip.extend_from_slice(&0x4242u16.to_be_bytes());
                ip.extend_from_slice(&self.ipv4_frag.to_be_bytes());
                ip.push(64);
                ip.push(self.proto());
                ip.extend_from_slice(&[0, 0]);
                ip.extend_from_slice(&s.octets());
                ip.extend_from_slice(&d.octets());
                ip.extend_from_slice(&opts);
                let c = checksum(&ip);
                ip[10..12].copy_from_slice(&c.to_ne_bytes());
                out.extend_from_slice(&ip);
                out.extend_from_slice(&l4);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                out.extend_from_slice(&[0x86, 0xdd]);
                let l4 = self.l4_bytes(&s.octets(), &d.octets());
                let mut ext = Vec::new();
                for (i, e) in self.ipv6_ext.iter().enumerate() {
                    let next = self.ipv6_ext.get(i + 1).map_or(self.proto(), Ext::number);
                    ext.extend_from_slice(&e.bytes(next));
                }
                let first = self.ipv6_ext.first().map_or(self.proto(), Ext::number);
                out.extend_from_slice(&[0x60, 0, 0, 0]);
                out.extend_from_slice(&((ext.len() + l4.len()) as u16).to_be_bytes());
                out.push(first);
                out.push(64);
                out.extend_from_slice(&s.octets());
                out.extend_from_slice(&d.octets());
                out.extend_from_slice(&ext);
                out.extend_from_slice(&l4);
            }
            _ => panic!("mixed address families"),
        }
        out
    }
}

/// Where the headers of a built or translated packet are, and its endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspected {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub proto: u8,
    pub l3: usize,
    pub l4: usize,
    pub ip_end: usize,
}

/// Reads back a well-formed packet as [`Packet::build`] writes them.
pub fn inspect(p: &[u8]) -> Inspected {
    let mut l3 = 14;
    if p[12..14] == [0x81, 0x00] {
        l3 = 18;
    }
    let (src, dst, proto, l4, ip_end) = if p[l3] >> 4 == 4 {
        let hlen = usize::from(p[l3] & 0xf) * 4;
        let total = usize::from(u16::from_be_bytes([p[l3 + 2], p[l3 + 3]]));
        let s: [u8; 4] = p[l3 + 12..l3 + 16].try_into().unwrap();
        let d: [u8; 4] = p[l3 + 16..l3 + 20].try_into().unwrap();
        (
            IpAddr::from(s),
            IpAddr::from(d),
            p[l3 + 9],
            l3 + hlen,
            l3 + total,
        )
    } else {
        let s: [u8; 16] = p[l3 + 8..l3 + 24].try_into().unwrap();
        let d: [u8; 16] = p[l3 + 24..l3 + 40].try_into().unwrap();
        let payload = usize::from(u16::from_be_bytes([p[l3 + 4], p[l3 + 5]]));
        let mut next = p[l3 + 6];
        let mut off = l3 + 40;
        loop {
            let len = match next {
                0 | 43 | 60 => (usize::from(p[off + 1]) + 1) * 8,
                44 => 8,
                51 => (usize::from(p[off + 1]) + 2) * 4,
                _ => break,
            };
            next = p[off];
            off += len;
        }
        (
            IpAddr::from(s),
            IpAddr::from(d),
            next,
            off,
            l3 + 40 + payload,
        )
    };
    let port = |at: usize| u16::from_be_bytes([p[at], p[at + 1]]);
    let (sport, dport) = if proto == 6 || proto == 17 {
        (port(l4), port(l4 + 2))
    } else {
        (0, 0)
    };
    Inspected {
        src: SocketAddr::new(src, sport),
        dst: SocketAddr::new(dst, dport),
        proto,
        l3,
        l4,
        ip_end,
    }
}

/// Recomputes the IPv4 header checksum and the TCP/UDP checksum from scratch.
pub fn verify_checksums(p: &[u8]) -> Result<(), String> {
    let i = inspect(p);
    let (src, dst) = match (i.src.ip(), i.dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            if checksum(&p[i.l3..i.l4]) != 0 {
                return Err("IPv4 header checksum is wrong".into());
            }
            (s.octets().to_vec(), d.octets().to_vec())
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => (s.octets().to_vec(), d.octets().to_vec()),
        _ => unreachable!(),
    };
    let segment = &p[i.l4..i.ip_end];
    match i.proto {
        6 if l4_checksum(&src, &dst, 6, segment, usize::MAX / 2) != 0 => {
            return Err("TCP checksum is wrong".into());
        }
        17 => {
            let field = u16::from_ne_bytes([segment[6], segment[7]]);
            if field == 0 {
                if src.len() == 16 {
                    return Err("IPv6 UDP checksum is zero".into());
                }
            } else if l4_checksum(&src, &dst, 17, segment, usize::MAX / 2) != 0 {
                return Err("UDP checksum is wrong".into());
            }
        }
        _ => {}
    }
    Ok(())
}

/// Makes `p`'s TCP or UDP checksum look as a sender that offloads it leaves
/// it (`CHECKSUM_PARTIAL`, what a veth hands XDP): the field holds only the
/// pseudo-header's sum, folded and not complemented.
pub fn offload_checksum(p: &mut [u8]) {
    let i = inspect(p);
    let (src, dst) = match (i.src.ip(), i.dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (s.octets().to_vec(), d.octets().to_vec()),
        (IpAddr::V6(s), IpAddr::V6(d)) => (s.octets().to_vec(), d.octets().to_vec()),
        _ => unreachable!(),
    };
    let at = i.l4 + if i.proto == 6 { 16 } else { 6 };
    let len = (i.ip_end - i.l4) as u32;
    let mut pseudo = [src, dst].concat();
    if pseudo.len() == 8 {
        pseudo.extend_from_slice(&[0, i.proto]);
        pseudo.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        pseudo.extend_from_slice(&len.to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, i.proto]);
    }
    p[at..at + 2].copy_from_slice(&fold(sum_bytes(&pseudo)).to_ne_bytes());
}

/// The UDP checksum field of a packet (raw).
pub fn udp_checksum_field(p: &[u8]) -> u16 {
    let i = inspect(p);
    u16::from_ne_bytes([p[i.l4 + 6], p[i.l4 + 7]])
}

/// An ICMP (or ICMPv6) error from `src` to `dst` quoting `quoted` (an IP
/// packet, cut to `keep` bytes), with a valid checksum.
pub fn icmp_error(
    src: &str,
    dst: &str,
    kind: u8,
    code: u8,
    rest: [u8; 4],
    quoted: &[u8],
    keep: usize,
) -> Vec<u8> {
    let v4 = !src.contains(':');
    let mut message = vec![kind, code, 0, 0];
    message.extend_from_slice(&rest);
    message.extend_from_slice(&quoted[..keep.min(quoted.len())]);
    let check = if v4 {
        checksum(&message)
    } else {
        let (s, d) = (
            src.parse::<std::net::Ipv6Addr>().unwrap(),
            dst.parse::<std::net::Ipv6Addr>().unwrap(),
        );
        l4_checksum(&s.octets(), &d.octets(), 58, &message, 2)
    };
    message[2..4].copy_from_slice(&check.to_ne_bytes());
    Packet {
        l4: L4::Other {
            proto: if v4 { 1 } else { 58 },
        },
        payload: message,
        ..Packet::tcp(
            SocketAddr::new(src.parse().unwrap(), 0),
            SocketAddr::new(dst.parse().unwrap(), 0),
            0,
        )
    }
    .build()
}

/// The ICMP message of a packet, after checking its checksum in full.
pub fn icmp_message(p: &[u8]) -> &[u8] {
    let i = inspect(p);
    let m = &p[i.l4..i.ip_end];
    if i.src.is_ipv4() {
        assert_eq!(checksum(&p[i.l3..i.l4]), 0, "outer IPv4 header checksum");
        assert_eq!(checksum(m), 0, "ICMP checksum");
    } else {
        let (s, d) = (&p[i.l3 + 8..i.l3 + 24], &p[i.l3 + 24..i.l3 + 40]);
        assert_eq!(
            l4_checksum(s, d, 58, m, usize::MAX / 2),
            0,
            "ICMPv6 checksum"
        );
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn built_packets_have_valid_checksums() {
        let mut cases = vec![
            Packet::tcp(sa("198.18.0.2:40000"), sa("198.18.0.1:8080"), TCP_SYN),
            Packet::udp(sa("198.18.0.2:40000"), sa("198.18.0.1:53"), b"hello"),
            Packet::udp(sa("[2001:db8::2]:40000"), sa("[2001:db8::1]:53"), b"odd"),
            Packet::tcp(sa("[2001:db8::2]:40000"), sa("[2001:db8::1]:8080"), TCP_ACK),
        ];
        let mut with_opts = Packet::tcp(sa("198.18.0.2:1"), sa("198.18.0.1:2"), TCP_SYN);
        with_opts.ip_options = vec![0x94, 0x04, 0, 0]; // Router Alert
        with_opts.vlan = Some(7);
        cases.push(with_opts);
        let mut with_ext = Packet::udp(sa("[2001:db8::2]:1"), sa("[2001:db8::1]:2"), b"x");
        with_ext.ipv6_ext = vec![Ext::HopByHop(0), Ext::DestOpts(1), Ext::Auth(3)];
        cases.push(with_ext);
        for p in cases {
            let bytes = p.build();
            verify_checksums(&bytes).unwrap_or_else(|e| panic!("{p:?}: {e}"));
            let i = inspect(&bytes);
            assert_eq!((i.src, i.dst), (p.src, p.dst));
            assert_eq!(i.ip_end, bytes.len());
        }
    }
}
