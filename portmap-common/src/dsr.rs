//! The DSR option: how a request sent to a backend on another node by direct
//! server return carries the frontend its client used.
//!
//! The node the client talked to translates the destination to the backend,
//! keeps the client's address as the source, and puts the frontend
//! (address and port) into the packet's IP header: an IPv4 option, or an
//! IPv6 destination options header right after the fixed header. portmap on
//! the backend's node reads it and records where the replies must come from
//! (see `CT_F_DSR_REPLY`); the backend's own stack skips it (an IPv4 option
//! of unknown type on a received packet is ignored, and the IPv6 option's
//! type says "skip if unknown").
//!
//! An option, not IP-in-IP: only the packets that open a flow carry it (a
//! TCP SYN; UDP datagrams, which have no opening packet), so bulk TCP data
//! pays no bytes and keeps its full MSS, the packet stays routable by any
//! underlay without tunnel endpoints, and the kernel's GRO and offloads see
//! ordinary packets. Cilium's DSR dispatches the same way by default.
//!
//! The types are RFC 4727's experimental values: IPv4 option 158 (copied,
//! class 0, number 30), IPv6 option 0x1e (skip if unknown, not changed en
//! route).

/// IPv4 option type.
pub const OPT4_TYPE: u8 = 0x9e;
/// IPv4 option length: type, length, port (2), address (4).
pub const OPT4_LEN: usize = 8;
/// IPv6 option type, inside a destination options header.
pub const OPT6_TYPE: u8 = 0x1e;
/// IPv6 option data length: port (2), address (16).
pub const OPT6_DATA_LEN: u8 = 18;
/// IPv6 destination options header length: next header, header length,
/// the option (2 + 18), and a 2-byte PadN to reach a multiple of 8.
pub const EXT6_LEN: usize = 24;
/// IPv6 next-header value of a destination options header.
pub const IPV6_DSTOPTS: u8 = 60;

/// The IPv4 option bytes for a frontend (`addr`: the address's wire bytes,
/// `port`: network byte order).
pub const fn opt4(addr: [u8; 4], port: u16) -> [u8; OPT4_LEN] {
    let p = port.to_ne_bytes();
    [
        OPT4_TYPE,
        OPT4_LEN as u8,
        p[0],
        p[1],
        addr[0],
        addr[1],
        addr[2],
        addr[3],
    ]
}

/// The IPv6 destination options header for a frontend, followed by the
/// upper-layer header `next`.
pub fn ext6(next: u8, addr: [u8; 16], port: u16) -> [u8; EXT6_LEN] {
    let mut h = [0u8; EXT6_LEN];
    h[0] = next;
    // In 8-octet units, not counting the first 8.
    h[1] = (EXT6_LEN / 8 - 1) as u8;
    h[2] = OPT6_TYPE;
    h[3] = OPT6_DATA_LEN;
    let p = port.to_ne_bytes();
    h[4] = p[0];
    h[5] = p[1];
    let mut i = 0;
    while i < 16 {
        h[6 + i] = addr[i];
        i += 1;
    }
    // PadN with no data bytes.
    h[22] = 1;
    h[23] = 0;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ipv6_header_is_whole_eight_octet_units() {
        let h = ext6(6, [0x20; 16], 80u16.to_be());
        assert_eq!(EXT6_LEN % 8, 0);
        assert_eq!((usize::from(h[1]) + 1) * 8, EXT6_LEN);
        // Option type, length and data, then the PadN, fill it exactly.
        assert_eq!(2 + 2 + usize::from(h[3]) + 2, EXT6_LEN);
        assert_eq!(&h[4..6], &80u16.to_be_bytes());
        // "Skip if unknown": the top two bits of the type are 00.
        assert_eq!(OPT6_TYPE >> 6, 0);
    }

    #[test]
    fn the_ipv4_option_is_whole_words() {
        let o = opt4([198, 18, 100, 1], 30080u16.to_be());
        assert_eq!(OPT4_LEN % 4, 0);
        assert_eq!(usize::from(o[1]), OPT4_LEN);
        assert_eq!(&o[2..4], &30080u16.to_be_bytes());
        assert_eq!(&o[4..], &[198, 18, 100, 1]);
    }
}
