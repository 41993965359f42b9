//! ICMP errors about translated flows are translated too, so path MTU
//! discovery and unreachables work through portmap (conntrack's RELATED).

use std::net::SocketAddr;

use portmap_common::csum::{checksum, l4_checksum};
use portmap_tests::{
    packet::{L4, Packet, TCP_ACK, TCP_SYN, inspect},
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
    .unwrap()
}

/// An ICMP (or ICMPv6) error from `src` to `dst` quoting `quoted` (an IP
/// packet, cut to `keep` bytes), with a valid checksum.
fn icmp_error(
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
fn message(p: &[u8]) -> &[u8] {
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

#[test]
fn errors_to_clients_quote_the_frontend_they_used() {
    let lab = lab();
    for (client, frontend, node, header) in [
        ("198.18.0.2:40000", "198.18.0.1:8080", "198.18.0.1", 20),
        (
            "[2001:db8::2]:40000",
            "[2001:db8::1]:8080",
            "2001:db8::1",
            40,
        ),
    ] {
        for tcp in [true, false] {
            let original = if tcp {
                Packet::tcp(sa(client), sa(frontend), TCP_SYN | TCP_ACK).build()
            } else {
                Packet::udp(sa(client), sa(frontend), &[5; 1200]).build()
            };
            let (action, translated) = lab.xdp(&original).unwrap();
            assert_eq!(action, XDP_PASS);
            assert_ne!(translated, original);
            // "Fragmentation needed" / "packet too big" about the translated
            // request, as the node's kernel would send it to the client.
            let keep = (header + 28).min(original.len() - 14);
            let client_ip = &client[..client.rfind(':').unwrap()].trim_matches(['[', ']']);
            let (kind, code, rest) = if header == 20 {
                (3, 4, [0, 0, 5, 0])
            } else {
                (2, 0, [0, 0, 5, 0])
            };
            let error = icmp_error(node, client_ip, kind, code, rest, &translated[14..], keep);
            let (verdict, out) = lab.tc(&error).unwrap();
            assert_eq!(verdict, TC_NEXT);
            let m = message(&out);
            assert_eq!(
                &m[8..],
                &original[14..14 + keep],
                "the quote is the packet the client sent ({client}, tcp={tcp})"
            );
            assert_eq!(
                &out[..out.len() - m.len()],
                &error[..error.len() - m.len()],
                "outer headers unchanged"
            );
        }
    }
    let events = lab.events().unwrap();
    assert_eq!(events["icmp_translated"], 4);
    assert_eq!(events["rewrite_failed"], 0);
}

#[test]
fn errors_from_clients_about_replies_go_to_the_backend() {
    let lab = lab();
    for (client, frontend, backend) in [
        ("198.18.0.2:40001", "198.18.0.1:8080", "198.19.0.2:3000"),
        (
            "[2001:db8::2]:40001",
            "[2001:db8::1]:8080",
            "[2001:db8:1::2]:3000",
        ),
    ] {
        lab.xdp(&Packet::udp(sa(client), sa(frontend), b"request").build())
            .unwrap();
        let reply = Packet::udp(sa(backend), sa(client), b"answer").build();
        let (_, seen) = lab.tc(&reply).unwrap();
        assert_eq!(inspect(&seen).src, sa(frontend));
        // The client's port unreachable about the reply it saw.
        let (c, f) = (sa(client), sa(frontend));
        let v4 = c.is_ipv4();
        let (kind, code) = if v4 { (3, 3) } else { (1, 4) };
        let error = icmp_error(
            &c.ip().to_string(),
            &f.ip().to_string(),
            kind,
            code,
            [0; 4],
            &seen[14..],
            200,
        );
        let (action, out) = lab.xdp(&error).unwrap();
        assert_eq!(action, XDP_PASS);
        let i = inspect(&out);
        assert_eq!(i.dst.ip(), sa(backend).ip(), "on to the backend");
        assert_eq!(i.src.ip(), c.ip());
        let m = message(&out);
        assert_eq!(
            &m[8..],
            &reply[14..],
            "the quote is the reply the backend sent"
        );
    }
    let events = lab.events().unwrap();
    assert_eq!(events["icmp_translated"], 2);
    assert_eq!(events["rewrite_failed"], 0);
}

#[test]
fn unrelated_and_malformed_icmp_passes_untouched() {
    let lab = lab();
    lab.xdp(&Packet::udp(sa("198.18.0.2:40002"), sa("198.18.0.1:8080"), b"x").build())
        .unwrap();
    let unknown_flow = Packet::udp(sa("198.18.0.2:40003"), sa("198.19.0.2:3000"), b"x").build();
    let cases = [
        // About a flow portmap does not know.
        icmp_error(
            "198.18.0.1",
            "198.18.0.2",
            3,
            4,
            [0; 4],
            &unknown_flow[14..],
            28,
        ),
        // Not an error (echo request) even though it quotes a flow.
        icmp_error(
            "198.18.0.1",
            "198.18.0.2",
            8,
            0,
            [0; 4],
            &unknown_flow[14..],
            28,
        ),
        // A quote cut inside its ports.
        icmp_error(
            "198.18.0.1",
            "198.18.0.2",
            3,
            4,
            [0; 4],
            &unknown_flow[14..],
            21,
        ),
        // A quote whose IHL is nonsense.
        icmp_error("198.18.0.1", "198.18.0.2", 3, 4, [0; 4], &[0x41; 40], 40),
    ];
    for p in cases {
        assert_eq!(lab.tc(&p).unwrap(), (TC_NEXT, p.clone()));
        assert_eq!(lab.xdp(&p).unwrap(), (XDP_PASS, p.clone()));
    }
    let events = lab.events().unwrap();
    assert_eq!(events["icmp_translated"], 0);
    // Errors about no flow of portmap's are not its failures.
    assert_eq!(events["rewrite_failed"], 0);
}
