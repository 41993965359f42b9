//! The eBPF programs on packets as the kernel's offloads make them
//! (BPF_PROG_TEST_RUN): checksums left to the NIC, multi-buffer jumbo
//! frames, GSO super-packets and BIG TCP lengths. Real traffic with the
//! default offloads is in the transfer tests; these pin down each case.

use std::net::{IpAddr, SocketAddr};

use portmap_tests::{
    packet::{Packet, TCP_ACK, TCP_PSH, TCP_SYN, inspect, offload_checksum, verify_checksums},
    testrun::{Lab, TC_NEXT, XDP_PASS},
};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn lab() -> Lab {
    Lab::new(
        &[
            "8080:198.19.0.2:3000",
            "8080:198.19.0.2:3000/udp",
            "8080:[2001:db8:1::2]:3000",
            "8080:[2001:db8:1::2]:3000/udp",
        ],
        &["198.18.0.1", "2001:db8::1"],
    )
    .expect("lab")
}

/// Bytes XDP puts before a packet whose rewrite it leaves to tc ingress.
const HANDOFF_LEN: usize = 8;

/// Checks the mark XDP leaves for tc ingress: a request, to be written as
/// its conntrack entry says.
fn assert_handoff(meta: &[u8]) {
    assert_eq!(
        &meta[..4],
        b"pamp",
        "the handoff's magic (\"pmap\", little-endian)"
    );
    assert_eq!(meta[4], 0, "kind: a request");
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn offloaded_checksums_are_left_to_tc_ingress() {
    let lab = lab();
    let cases = [
        (
            "198.18.0.2:40000",
            "198.18.0.1:8080",
            "198.19.0.2:3000",
            false,
        ),
        (
            "198.18.0.2:40001",
            "198.18.0.1:8080",
            "198.19.0.2:3000",
            true,
        ),
        (
            "[2001:db8::2]:40000",
            "[2001:db8::1]:8080",
            "[2001:db8:1::2]:3000",
            false,
        ),
        (
            "[2001:db8::2]:40001",
            "[2001:db8::1]:8080",
            "[2001:db8:1::2]:3000",
            true,
        ),
    ];
    for (client, frontend, backend, udp) in cases {
        let (client, frontend, backend) = (sa(client), sa(frontend), sa(backend));
        let mut p = if udp {
            Packet::udp(client, frontend, &payload(100))
        } else {
            Packet::tcp(client, frontend, TCP_SYN)
        }
        .build();
        offload_checksum(&mut p);
        let (action, out) = lab.xdp(&p).unwrap();
        assert_eq!(action, XDP_PASS);
        assert_eq!(out.len(), HANDOFF_LEN + p.len(), "{client} → {frontend}");
        assert_eq!(
            &out[HANDOFF_LEN..],
            &p[..],
            "the packet itself is untouched"
        );
        assert_handoff(&out[..HANDOFF_LEN]);

        // The flow is tracked as any other: its reply goes back from the
        // frontend.
        let reply = Packet::udp(backend, client, b"pong");
        let reply = if udp {
            reply
        } else {
            Packet::tcp(backend, client, TCP_SYN | TCP_ACK)
        }
        .build();
        let (verdict, back) = lab.tc(&reply).unwrap();
        assert_eq!(verdict, TC_NEXT);
        let i = inspect(&back);
        assert_eq!((i.src, i.dst), (frontend, client));
        verify_checksums(&back).unwrap();
    }
    let events = lab.events().unwrap();
    assert_eq!(events["checksum_deferred_to_tc"], 4);
    assert_eq!(events["flow_created"], 4);
    assert_eq!(events["reply_translated"], 4);
    assert_eq!(events["malformed"], 0);
}

#[test]
fn multi_buffer_frames_are_translated_whole() {
    let lab = lab();
    for (client, frontend, backend) in [
        ("198.18.0.2:41000", "198.18.0.1:8080", "198.19.0.2:3000"),
        (
            "[2001:db8::2]:41000",
            "[2001:db8::1]:8080",
            "[2001:db8:1::2]:3000",
        ),
    ] {
        let (client, frontend, backend) = (sa(client), sa(frontend), sa(backend));
        // 8,900 bytes of payload: past the first page, so the kernel builds a
        // frame of several buffers, as a veth with a 9000-byte MTU does.
        for udp in [false, true] {
            let mut p = if udp {
                Packet::udp(client, frontend, &payload(8900))
            } else {
                let mut p = Packet::tcp(client, frontend, TCP_ACK | TCP_PSH);
                p.payload = payload(8900);
                p
            };
            p.src.set_port(client.port() + u16::from(udp));
            let p = p.build();
            let (action, out) = lab.xdp(&p).unwrap();
            assert_eq!(action, XDP_PASS);
            assert_eq!(out.len(), p.len());
            let i = inspect(&out);
            assert_eq!(i.dst, backend, "udp: {udp}");
            assert_eq!(out[i.l4 + 20..], p[i.l4 + 20..], "payload unchanged");
            verify_checksums(&out).unwrap_or_else(|e| panic!("{client} udp {udp}: {e}"));
        }
    }
    let events = lab.events().unwrap();
    assert_eq!(events["malformed"], 0);
    assert_eq!(events["headers_not_linear"], 0);
    assert_eq!(events["flow_created"], 4);
    let snap = lab.snapshot().unwrap();
    let requests: u64 = snap
        .services
        .iter()
        .flat_map(|s| &s.frontends)
        .map(|f| f.counters.request_bytes)
        .sum();
    // IP bytes: 20 + 20 + 8900 and 20 + 8 + 8900, then 40 + ... for IPv6.
    assert_eq!(requests, 8940 + 8928 + 8960 + 8948);
}

#[test]
fn gso_replies_are_translated_and_counted_as_their_segments() {
    let lab = lab();
    let client = sa("198.18.0.2:42000");
    let (frontend, backend) = (sa("198.18.0.1:8080"), sa("198.19.0.2:3000"));
    let (action, _) = lab
        .xdp(&Packet::tcp(client, frontend, TCP_SYN).build())
        .unwrap();
    assert_eq!(action, XDP_PASS);
    // A reply as TCP hands it to the device: 2 segments of 1448 bytes in
    // one packet (its length in the IP header covers both). The test run
    // takes one page at most, so 2 rather than the 44 of a 64 KiB one.
    let mut reply = Packet::tcp(backend, client, TCP_ACK | TCP_PSH);
    reply.payload = payload(2 * 1448);
    let reply = reply.build();
    let (verdict, back) = lab.tc_gso(&reply, 2, 1448).unwrap();
    assert_eq!(verdict, TC_NEXT);
    let i = inspect(&back);
    assert_eq!((i.src, i.dst), (frontend, client));
    verify_checksums(&back).unwrap();
    let snap = lab.snapshot().unwrap();
    let fe = snap
        .services
        .iter()
        .flat_map(|s| &s.frontends)
        .find(|f| f.frontend == "*:8080/tcp")
        .unwrap();
    assert_eq!(
        fe.counters.reply_packets, 2,
        "one GSO packet, two on the wire"
    );
    // The second segment repeats the IP and TCP headers (20 + 20 bytes).
    assert_eq!(fe.counters.reply_bytes, (40 + 2 * 1448) + 40);
}

#[test]
fn big_tcp_lengths_are_taken_from_the_skb() {
    let lab = lab();
    for (client, frontend, backend) in [
        ("198.18.0.2:43000", "198.18.0.1:8080", "198.19.0.2:3000"),
        (
            "[2001:db8::2]:43000",
            "[2001:db8::1]:8080",
            "[2001:db8:1::2]:3000",
        ),
    ] {
        let (client, frontend, backend) = (sa(client), sa(frontend), sa(backend));
        let (action, _) = lab
            .xdp(&Packet::tcp(client, frontend, TCP_SYN).build())
            .unwrap();
        assert_eq!(action, XDP_PASS);
        let mut reply = Packet::tcp(backend, client, TCP_ACK);
        reply.payload = payload(2000);
        let mut reply = reply.build();
        // Over 64 KiB, a GSO packet's IP length is 0 (BIG TCP): keep the
        // packet small for the test run, but say so the same way.
        let l3 = 14;
        if client.is_ipv4() {
            reply[l3 + 2..l3 + 4].copy_from_slice(&[0, 0]);
            let check = portmap_common::csum::checksum(&{
                let mut h = reply[l3..l3 + 20].to_vec();
                h[10..12].copy_from_slice(&[0, 0]);
                h
            });
            reply[l3 + 10..l3 + 12].copy_from_slice(&check.to_ne_bytes());
        } else {
            reply[l3 + 4..l3 + 6].copy_from_slice(&[0, 0]);
        }
        // Not a GSO packet: a zero length is malformed, passed untouched.
        let (_, untouched) = lab.tc(&reply).unwrap();
        assert_eq!(untouched, reply);
        // A GSO packet: the skb's length counts.
        let (verdict, back) = lab.tc_gso(&reply, 2, 1000).unwrap();
        assert_eq!(verdict, TC_NEXT);
        let src = if client.is_ipv4() {
            <[u8; 4]>::try_from(&back[l3 + 12..l3 + 16]).unwrap().into()
        } else {
            IpAddr::from(<[u8; 16]>::try_from(&back[l3 + 8..l3 + 24]).unwrap())
        };
        assert_eq!(src, frontend.ip(), "translated back to the frontend");
    }
    let events = lab.events().unwrap();
    assert_eq!(events["malformed"], 2, "the two non-GSO packets");
    assert_eq!(events["reply_translated"], 2);
}
