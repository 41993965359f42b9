//! The frames the benchmark sends: the load generator's UDP template, and the
//! packets of the per-packet cost measurement.

use std::net::{Ipv4Addr, SocketAddrV4};

use portmap_common::csum::{checksum, l4_checksum};

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

/// Size of the load generator's frames (one of the sizes it copies).
pub const FRAME_LEN: usize = 64;

fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(FRAME_LEN);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

fn ipv4_header(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4_len: usize) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&((20 + l4_len) as u16).to_be_bytes());
    h[6] = 0x40; // DF
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_ne_bytes());
    h
}

/// A UDP frame of [`FRAME_LEN`] bytes, UDP checksum 0 ("none"), as the load
/// generator's template wants.
pub fn udp(mac_dst: [u8; 6], mac_src: [u8; 6], src: SocketAddrV4, dst: SocketAddrV4) -> Vec<u8> {
    let payload = FRAME_LEN - 14 - 20 - 8;
    let mut f = ethernet(mac_dst, mac_src, 0x0800);
    f.extend_from_slice(&ipv4_header(*src.ip(), *dst.ip(), 17, 8 + payload));
    f.extend_from_slice(&src.port().to_be_bytes());
    f.extend_from_slice(&dst.port().to_be_bytes());
    f.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.resize(FRAME_LEN, 0x5a);
    f
}

/// A TCP segment without payload, with the given flags and a valid checksum.
pub fn tcp(
    mac_dst: [u8; 6],
    mac_src: [u8; 6],
    src: SocketAddrV4,
    dst: SocketAddrV4,
    flags: u8,
) -> Vec<u8> {
    let mut seg = [0u8; 20];
    seg[0..2].copy_from_slice(&src.port().to_be_bytes());
    seg[2..4].copy_from_slice(&dst.port().to_be_bytes());
    seg[4..8].copy_from_slice(&0x1000_0000u32.to_be_bytes());
    seg[12] = 5 << 4;
    seg[13] = flags;
    seg[14..16].copy_from_slice(&65535u16.to_be_bytes());
    let c = l4_checksum(&src.ip().octets(), &dst.ip().octets(), 6, &seg, 16);
    seg[16..18].copy_from_slice(&c.to_ne_bytes());
    let mut f = ethernet(mac_dst, mac_src, 0x0800);
    f.extend_from_slice(&ipv4_header(*src.ip(), *dst.ip(), 6, seg.len()));
    f.extend_from_slice(&seg);
    f
}

/// An ARP request "who has `target`, tell `sender`", padded to 60 bytes.
pub fn arp(mac_src: [u8; 6], sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = ethernet([0xff; 6], mac_src, 0x0806);
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&mac_src);
    f.extend_from_slice(&sender.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f.resize(60, 0);
    f
}

/// A `struct xdp_md` for BPF_PROG_RUN: the frame's `data_end` and the
/// interface it is to be received on (live frames are transmitted there).
pub fn xdp_md(frame_len: usize, ingress_ifindex: u32) -> [u8; 24] {
    let fields: [u32; 6] = [0, frame_len as u32, 0, ingress_ifindex, 0, 0];
    let mut out = [0u8; 24];
    for (chunk, v) in out.chunks_exact_mut(4).zip(fields) {
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_well_formed() {
        let src: SocketAddrV4 = "198.18.0.2:1024".parse().unwrap();
        let dst: SocketAddrV4 = "198.19.64.0:80".parse().unwrap();
        let f = udp([1; 6], [2; 6], src, dst);
        assert_eq!(f.len(), FRAME_LEN);
        assert_eq!(checksum(&f[14..34]), 0, "IPv4 header checksum");
        assert_eq!(u16::from_be_bytes([f[16], f[17]]) as usize, FRAME_LEN - 14);
        assert_eq!(&f[36..38], &80u16.to_be_bytes());
        let t = tcp([1; 6], [2; 6], src, dst, TCP_SYN | TCP_FIN);
        assert_eq!(t.len(), 54);
        assert_eq!(
            l4_checksum(
                &src.ip().octets(),
                &dst.ip().octets(),
                6,
                &t[34..],
                usize::MAX / 2
            ),
            0
        );
        assert_eq!(arp([2; 6], *src.ip(), *dst.ip()).len(), 60);
        assert_eq!(xdp_md(64, 7)[4..8], 64u32.to_ne_bytes());
    }
}
