//! ICMP errors about translated flows are translated too, so path MTU
//! discovery and unreachables work through portmap (conntrack's RELATED).

use std::net::SocketAddr;

use portmap_tests::{
    packet::{Packet, TCP_ACK, TCP_SYN, icmp_error, icmp_message as message, inspect},
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
