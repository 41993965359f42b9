//! The eBPF programs on crafted packets (BPF_PROG_TEST_RUN): what comes out
//! for hits, misses and every kind of malformed or unusual input. Every
//! translated packet has its checksums recomputed in full.

use std::net::SocketAddr;

use portmap_common::abi::DatapathConfig;
use portmap_tests::{
    packet::{
        Ext, L4, Packet, TCP_ACK, TCP_FIN, TCP_PSH, TCP_SYN, inspect, udp_checksum_field,
        verify_checksums,
    },
    testrun::{Lab, TC_NEXT, XDP_PASS, desired},
};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const NODE: [&str; 3] = ["198.18.0.1", "198.18.0.3", "2001:db8::1"];

fn lab() -> Lab {
    Lab::new(
        &[
            "8080:198.19.0.2:3000",
            "8080:198.19.0.2:3000/udp",
            "8080:[2001:db8:1::2]:3000",
            "8080:[2001:db8:1::2]:3000/udp",
            "198.18.0.3:9090:198.19.0.5:5000",
        ],
        &NODE,
    )
    .expect("lab")
}

/// Runs XDP, asserts PASS, and returns the output.
fn xdp(lab: &Lab, p: &[u8]) -> Vec<u8> {
    let (action, out) = lab.xdp(p).expect("xdp test run");
    assert_eq!(action, XDP_PASS, "XDP must pass every packet");
    out
}

fn assert_translated(out: &[u8], src: SocketAddr, dst: SocketAddr) {
    let i = inspect(out);
    assert_eq!((i.src, i.dst), (src, dst), "translated endpoints");
    verify_checksums(out).unwrap_or_else(|e| panic!("after translation: {e}"));
}

#[test]
fn tcp_ipv4_hit_then_reply_is_reverse_translated() {
    let lab = lab();
    let client = sa("198.18.0.2:40000");
    let syn = Packet::tcp(client, sa("198.18.0.1:8080"), TCP_SYN).build();
    let out = xdp(&lab, &syn);
    assert_translated(&out, client, sa("198.19.0.2:3000"));
    assert_eq!(out.len(), syn.len());

    let syn_ack = Packet::tcp(sa("198.19.0.2:3000"), client, TCP_SYN | TCP_ACK).build();
    let (verdict, back) = lab.tc(&syn_ack).unwrap();
    assert_eq!(verdict, TC_NEXT);
    assert_translated(&back, sa("198.18.0.1:8080"), client);

    // Later packets of the flow hit conntrack and keep their backend.
    let mut data = Packet::tcp(client, sa("198.18.0.1:8080"), TCP_ACK | TCP_PSH);
    data.payload = b"GET / HTTP/1.1\r\n\r\n".to_vec();
    assert_translated(&xdp(&lab, &data.build()), client, sa("198.19.0.2:3000"));

    let events = lab.events().unwrap();
    assert_eq!(events["flow_created"], 1);
    assert_eq!(events["reply_translated"], 1);
    let snap = lab.snapshot().unwrap();
    let fe = snap
        .services
        .iter()
        .flat_map(|s| &s.frontends)
        .find(|f| f.frontend == "*:8080/tcp")
        .unwrap();
    assert_eq!(
        (fe.counters.request_packets, fe.counters.reply_packets),
        (2, 1)
    );
    let expected_bytes = (syn.len() - 14 + data.build().len() - 14) as u64;
    assert_eq!(
        fe.counters.request_bytes, expected_bytes,
        "IP bytes are counted"
    );
}

#[test]
fn the_client_sees_the_exact_frontend_it_used() {
    let lab = lab();
    // One backend, two node addresses on the wildcard frontend: each client
    // gets replies from the address it sent to.
    for (i, node) in ["198.18.0.1", "198.18.0.3"].iter().enumerate() {
        let client = SocketAddr::new("198.18.0.2".parse().unwrap(), 41000 + i as u16);
        let fe = SocketAddr::new(node.parse().unwrap(), 8080);
        assert_translated(
            &xdp(&lab, &Packet::tcp(client, fe, TCP_SYN).build()),
            client,
            sa("198.19.0.2:3000"),
        );
        let reply = Packet::tcp(sa("198.19.0.2:3000"), client, TCP_SYN | TCP_ACK).build();
        let (_, back) = lab.tc(&reply).unwrap();
        assert_translated(&back, fe, client);
    }
}

#[test]
fn udp_ipv4_and_ipv6_hits() {
    let lab = lab();
    let c4 = sa("198.18.0.2:5353");
    let out = xdp(
        &lab,
        &Packet::udp(c4, sa("198.18.0.1:8080"), b"ping").build(),
    );
    assert_translated(&out, c4, sa("198.19.0.2:3000"));
    let c6 = sa("[2001:db8::2]:5353");
    let out = xdp(
        &lab,
        &Packet::udp(c6, sa("[2001:db8::1]:8080"), b"ping6").build(),
    );
    assert_translated(&out, c6, sa("[2001:db8:1::2]:3000"));
    let (_, back) = lab
        .tc(&Packet::udp(sa("[2001:db8:1::2]:3000"), c6, b"pong6").build())
        .unwrap();
    assert_translated(&back, sa("[2001:db8::1]:8080"), c6);
}

#[test]
fn ipv4_udp_without_checksum_stays_without_and_ipv6_is_always_updated() {
    let lab = lab();
    let mut p = Packet::udp(sa("198.18.0.2:5000"), sa("198.18.0.1:8080"), b"no checksum");
    p.l4 = L4::Udp {
        zero_checksum: true,
    };
    let out = xdp(&lab, &p.build());
    assert_eq!(
        udp_checksum_field(&out),
        0,
        "IPv4 UDP checksum 0 must stay 0"
    );
    assert_translated(&out, p.src, sa("198.19.0.2:3000"));
    let reply = Packet {
        l4: L4::Udp {
            zero_checksum: true,
        },
        ..Packet::udp(sa("198.19.0.2:3000"), p.src, b"r")
    };
    let (_, back) = lab.tc(&reply.build()).unwrap();
    assert_eq!(udp_checksum_field(&back), 0);
    assert_translated(&back, sa("198.18.0.1:8080"), p.src);

    // Many payloads: no translated IPv6 UDP checksum may come out as 0.
    for n in 0..400u32 {
        let c = SocketAddr::new("2001:db8::2".parse().unwrap(), 20000 + n as u16);
        let out = xdp(
            &lab,
            &Packet::udp(c, sa("[2001:db8::1]:8080"), &n.to_be_bytes()).build(),
        );
        assert_ne!(udp_checksum_field(&out), 0);
        assert_translated(&out, c, sa("[2001:db8:1::2]:3000"));
    }
}

#[test]
fn misses_pass_untouched() {
    let lab = lab();
    let cases = [
        // Unpublished port, wrong protocol's port, other destination.
        Packet::tcp(sa("198.18.0.2:40000"), sa("198.18.0.1:8081"), TCP_SYN),
        Packet::udp(sa("198.18.0.2:40000"), sa("198.18.0.1:9090"), b"x"),
        // 9090 is published on 198.18.0.3 only.
        Packet::tcp(sa("198.18.0.2:40000"), sa("198.18.0.1:9090"), TCP_SYN),
        // Not a node address: a routed packet is not ours even on port 8080.
        Packet::tcp(sa("198.18.0.2:40000"), sa("203.0.113.9:8080"), TCP_SYN),
        Packet::tcp(
            sa("[2001:db8::2]:40000"),
            sa("[2001:db8::99]:8080"),
            TCP_SYN,
        ),
        // A reply-looking packet with no flow.
        Packet::tcp(sa("198.19.0.2:3000"), sa("198.18.0.2:40000"), TCP_ACK),
    ];
    for p in cases {
        let bytes = p.build();
        assert_eq!(xdp(&lab, &bytes), bytes, "{p:?} must pass untouched");
        let (verdict, out) = lab.tc(&bytes).unwrap();
        assert_eq!(
            (verdict, out),
            (TC_NEXT, bytes.clone()),
            "{p:?} egress untouched"
        );
    }
    assert_eq!(lab.events().unwrap()["flow_created"], 0);
}

#[test]
fn explicit_address_wins_over_all_addresses() {
    let lab = Lab::new(
        &["8080:198.19.0.2:3000", "198.18.0.3:8080:198.19.0.9:4000"],
        &NODE,
    )
    .unwrap();
    let c = sa("198.18.0.2:40000");
    assert_translated(
        &xdp(
            &lab,
            &Packet::tcp(c, sa("198.18.0.3:8080"), TCP_SYN).build(),
        ),
        c,
        sa("198.19.0.9:4000"),
    );
    assert_translated(
        &xdp(
            &lab,
            &Packet::tcp(c, sa("198.18.0.1:8080"), TCP_SYN).build(),
        ),
        c,
        sa("198.19.0.2:3000"),
    );
}

#[test]
fn non_ip_and_other_protocols_pass_untouched() {
    let lab = lab();
    // ARP request.
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x08, 0x06]);
    arp.extend_from_slice(&[
        0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 198, 18, 0, 2, 0, 0, 0, 0, 0, 0, 198, 18, 0, 1,
    ]);
    assert_eq!(xdp(&lab, &arp), arp);
    // ICMP echo and ICMPv6 (neighbour solicitation shaped) to a node address.
    for (src, dst, proto) in [
        ("198.18.0.2:0", "198.18.0.1:0", 1u8),
        ("[2001:db8::2]:0", "[2001:db8::1]:0", 58),
    ] {
        let p = Packet {
            l4: L4::Other { proto },
            payload: vec![8, 0, 0, 0, 0, 1, 0, 1],
            ..Packet::tcp(sa(src), sa(dst), 0)
        };
        let bytes = p.build();
        assert_eq!(xdp(&lab, &bytes), bytes);
    }
    // IPv6 neighbour solicitation to a solicited-node multicast address.
    let ns = Packet {
        l4: L4::Other { proto: 58 },
        payload: vec![
            135, 0, 0, 0, 0, 0, 0, 0, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
        ],
        ..Packet::tcp(sa("[2001:db8::2]:0"), sa("[ff02::1:ff00:1]:0"), 0)
    }
    .build();
    assert_eq!(xdp(&lab, &ns), ns);
}

#[test]
fn ipv4_options_are_skipped_via_ihl() {
    let lab = lab();
    for opt_len in [4usize, 8, 20, 40] {
        let mut p = Packet::tcp(sa("198.18.0.2:40100"), sa("198.18.0.1:8080"), TCP_SYN);
        p.src.set_port(40100 + opt_len as u16);
        // NOPs then End of list: a legal option area of any length.
        p.ip_options = vec![1; opt_len - 1];
        p.ip_options.push(0);
        let out = xdp(&lab, &p.build());
        assert_translated(&out, p.src, sa("198.19.0.2:3000"));
        assert_eq!(inspect(&out).l4, 14 + 20 + opt_len);
    }
}

#[test]
fn vlan_tagged_packets_are_translated() {
    let lab = lab();
    let mut p = Packet::udp(sa("198.18.0.2:7000"), sa("198.18.0.1:8080"), b"tagged");
    p.vlan = Some(42);
    let out = xdp(&lab, &p.build());
    assert_eq!(&out[12..16], &[0x81, 0x00, 0, 42], "tag kept");
    assert_translated(&out, p.src, sa("198.19.0.2:3000"));
}

#[test]
fn fragments_pass_untouched_and_are_counted() {
    let lab = lab();
    for frag in [
        0x2000u16, /* MF, offset 0 */
        0x0001,    /* offset 8 */
        0x2003,
    ] {
        let mut p = Packet::udp(sa("198.18.0.2:7000"), sa("198.18.0.1:8080"), b"part");
        p.ipv4_frag = frag;
        let bytes = p.build();
        assert_eq!(xdp(&lab, &bytes), bytes, "IPv4 fragment {frag:#x}");
    }
    for (offset, more) in [(0u16, true), (1, false), (5, true)] {
        let mut p = Packet::udp(sa("[2001:db8::2]:7000"), sa("[2001:db8::1]:8080"), b"part");
        p.ipv6_ext = vec![Ext::Fragment { offset, more }];
        let bytes = p.build();
        assert_eq!(xdp(&lab, &bytes), bytes, "IPv6 fragment {offset}/{more}");
    }
    assert_eq!(lab.events().unwrap()["fragment"], 6);
}

#[test]
fn ipv6_extension_headers_are_skipped() {
    let lab = lab();
    let chains = [
        vec![Ext::HopByHop(0)],
        vec![Ext::HopByHop(1), Ext::DestOpts(0)],
        vec![
            Ext::DestOpts(2),
            Ext::Routing { segments_left: 0 },
            Ext::DestOpts(0),
        ],
        // An atomic fragment (offset 0, no more fragments) is a whole datagram.
        vec![Ext::Fragment {
            offset: 0,
            more: false,
        }],
        vec![Ext::HopByHop(0), Ext::Auth(4), Ext::DestOpts(0)],
    ];
    for (n, chain) in chains.into_iter().enumerate() {
        for tcp in [true, false] {
            let c = SocketAddr::new(
                "2001:db8::2".parse().unwrap(),
                42000 + (n as u16) * 2 + u16::from(tcp),
            );
            let mut p = if tcp {
                Packet::tcp(c, sa("[2001:db8::1]:8080"), TCP_SYN)
            } else {
                Packet::udp(c, sa("[2001:db8::1]:8080"), b"ext")
            };
            p.ipv6_ext = chain.clone();
            let out = xdp(&lab, &p.build());
            assert_translated(&out, c, sa("[2001:db8:1::2]:3000"));
        }
    }
}

#[test]
fn ipv6_packets_not_at_their_final_destination_or_too_deep_pass() {
    let lab = lab();
    let mut routed = Packet::tcp(sa("[2001:db8::2]:1"), sa("[2001:db8::1]:8080"), TCP_SYN);
    routed.ipv6_ext = vec![Ext::Routing { segments_left: 1 }];
    let mut deep = Packet::tcp(sa("[2001:db8::2]:2"), sa("[2001:db8::1]:8080"), TCP_SYN);
    deep.ipv6_ext = vec![Ext::DestOpts(0); 7];
    let mut esp_like = Packet::tcp(sa("[2001:db8::2]:3"), sa("[2001:db8::1]:8080"), 0);
    esp_like.l4 = L4::Other { proto: 50 };
    esp_like.payload = vec![0; 24];
    for p in [routed, deep, esp_like] {
        let bytes = p.build();
        assert_eq!(xdp(&lab, &bytes), bytes, "{p:?}");
    }
}

#[test]
fn truncated_at_every_byte_passes_untouched() {
    let lab = lab();
    let mut tcp4 = Packet::tcp(sa("198.18.0.2:43000"), sa("198.18.0.1:8080"), TCP_SYN);
    tcp4.ip_options = vec![1, 1, 1, 0];
    tcp4.l4 = L4::Tcp {
        flags: TCP_SYN,
        options: vec![2, 4, 0x05, 0xb4],
    };
    let mut udp6 = Packet::udp(
        sa("[2001:db8::2]:43001"),
        sa("[2001:db8::1]:8080"),
        b"0123456789",
    );
    udp6.ipv6_ext = vec![Ext::HopByHop(0), Ext::DestOpts(1)];
    let mut vlan_udp4 = Packet::udp(sa("198.18.0.2:43002"), sa("198.18.0.1:8080"), b"abc");
    vlan_udp4.vlan = Some(3);
    for p in [tcp4, udp6, vlan_udp4] {
        let full = p.build();
        // Every strict prefix must come out unchanged. XDP test runs take any
        // frame from a bare Ethernet header up. The kernel's skb test run
        // refuses an untagged IPv4/IPv6 frame too short for the fixed IP
        // header (it reads the addresses), so those lengths must be refused,
        // and every other one is run.
        let untagged_ip_min = match (p.vlan, p.src.is_ipv4()) {
            (Some(_), _) => 0,
            (None, true) => 14 + 20,
            (None, false) => 14 + 40,
        };
        for len in 14..full.len() {
            let cut = &full[..len];
            let (action, out) = lab.xdp(cut).unwrap();
            assert_eq!(
                (action, out.as_slice()),
                (XDP_PASS, cut),
                "{p:?} cut at {len}"
            );
            match lab.tc(cut) {
                Ok((verdict, out)) => {
                    assert!(
                        len >= untagged_ip_min,
                        "kernel ran a {len}-byte skb it should refuse"
                    );
                    assert_eq!(
                        (verdict, out.as_slice()),
                        (TC_NEXT, cut),
                        "egress {p:?} cut at {len}"
                    );
                }
                Err(e) => assert!(len < untagged_ip_min, "egress {p:?} cut at {len}: {e:#}"),
            }
        }
    }
    assert_eq!(lab.events().unwrap()["flow_created"], 0);
}

#[test]
fn inconsistent_lengths_pass_untouched() {
    let lab = lab();
    let base = Packet::udp(sa("198.18.0.2:44000"), sa("198.18.0.1:8080"), b"payload").build();
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut p = base.clone();
    p[14] = 0x44; // IHL 4 < 5
    cases.push(("IHL below 5", p));
    let mut p = base.clone();
    p[14] = 0x4f; // IHL 15 = 60 bytes, longer than the packet's header
    cases.push(("IHL beyond the header", p));
    let mut p = base.clone();
    p[16..18].copy_from_slice(&200u16.to_be_bytes());
    cases.push(("IPv4 total length beyond the frame", p));
    let mut p = base.clone();
    p[16..18].copy_from_slice(&24u16.to_be_bytes());
    cases.push(("IPv4 total length cutting the UDP header", p));
    let mut p = base.clone();
    p[38..40].copy_from_slice(&100u16.to_be_bytes());
    cases.push(("UDP length beyond the IP packet", p));
    let mut p = base.clone();
    p[38..40].copy_from_slice(&4u16.to_be_bytes());
    cases.push(("UDP length below its header", p));
    let mut p = base.clone();
    p[14] = 0x65; // version 6 in an IPv4 EtherType
    cases.push(("wrong IP version", p));
    let tcp = Packet::tcp(sa("198.18.0.2:44001"), sa("198.18.0.1:8080"), TCP_SYN).build();
    let mut p = tcp.clone();
    p[46] = 0x40; // data offset 4 < 5
    cases.push(("TCP data offset below 5", p));
    let mut p = tcp.clone();
    p[46] = 0xf0; // data offset 15 = 60 bytes, beyond the packet
    cases.push(("TCP data offset beyond the packet", p));
    let v6 = Packet::udp(sa("[2001:db8::2]:44002"), sa("[2001:db8::1]:8080"), b"x").build();
    let mut p = v6.clone();
    p[18..20].copy_from_slice(&500u16.to_be_bytes());
    cases.push(("IPv6 payload length beyond the frame", p));
    let mut p = v6.clone();
    p[18..20].copy_from_slice(&4u16.to_be_bytes());
    cases.push(("IPv6 payload length cutting the UDP header", p));
    for (what, bytes) in cases {
        assert_eq!(xdp(&lab, &bytes), bytes, "{what}");
    }
    assert_eq!(lab.events().unwrap()["flow_created"], 0);
    assert!(lab.events().unwrap()["malformed"] >= 10);
}

#[test]
fn ethernet_padding_is_allowed() {
    // A minimum-size frame carries padding after the IP packet; it is still
    // translated and the padding left alone.
    let lab = lab();
    let mut bytes = Packet::udp(sa("198.18.0.2:45000"), sa("198.18.0.1:8080"), b"").build();
    bytes.resize(60, 0);
    let out = xdp(&lab, &bytes);
    assert_eq!(out.len(), 60);
    assert_translated(&out, sa("198.18.0.2:45000"), sa("198.19.0.2:3000"));
}

#[test]
fn tcp_flow_closes_and_port_reuse_starts_a_new_flow() {
    let lab = lab();
    let c = sa("198.18.0.2:46000");
    let fe = sa("198.18.0.1:8080");
    xdp(&lab, &Packet::tcp(c, fe, TCP_SYN).build());
    lab.tc(&Packet::tcp(sa("198.19.0.2:3000"), c, TCP_SYN | TCP_ACK).build())
        .unwrap();
    xdp(&lab, &Packet::tcp(c, fe, TCP_FIN | TCP_ACK).build());
    // A new SYN on the same ports after FIN is a new connection.
    assert_translated(
        &xdp(&lab, &Packet::tcp(c, fe, TCP_SYN).build()),
        c,
        sa("198.19.0.2:3000"),
    );
    assert_eq!(lab.events().unwrap()["flow_created"], 2);
}

#[test]
fn idle_flows_expire_and_closing_tcp_expires_sooner() {
    const SECOND: u64 = 1_000_000_000;
    let config = DatapathConfig {
        tcp_new_timeout_ns: 30 * SECOND,
        tcp_established_timeout_ns: 30 * SECOND,
        tcp_closing_timeout_ns: SECOND / 2,
        udp_timeout_ns: SECOND / 2,
        ..DatapathConfig::default()
    };
    let lab = Lab::with_config(
        &desired(&["8080:198.19.0.2:3000", "8080:198.19.0.2:3000/udp"]).unwrap(),
        &NODE,
        config,
    )
    .unwrap();
    let created = || lab.events().unwrap()["flow_created"];
    let pause = || std::thread::sleep(std::time::Duration::from_millis(700));
    let (c, fe, be) = (
        sa("198.18.0.2:47000"),
        sa("198.18.0.1:8080"),
        sa("198.19.0.2:3000"),
    );

    // UDP: a second datagram within the timeout is the same flow; after the
    // idle timeout the next one is a new flow.
    let udp = Packet::udp(c, fe, b"u").build();
    xdp(&lab, &udp);
    xdp(&lab, &udp);
    assert_eq!(created(), 1);
    pause();
    xdp(&lab, &udp);
    assert_eq!(created(), 2, "UDP flow expired after its idle timeout");

    // TCP established outlives the short closing timeout...
    xdp(&lab, &Packet::tcp(c, fe, TCP_SYN).build());
    lab.tc(&Packet::tcp(be, c, TCP_SYN | TCP_ACK).build())
        .unwrap();
    assert_eq!(created(), 3);
    pause();
    xdp(&lab, &Packet::tcp(c, fe, TCP_ACK).build());
    assert_eq!(created(), 3, "an established TCP flow survives 0.7 s idle");
    // ...but after a FIN the same idle time ends it.
    xdp(&lab, &Packet::tcp(c, fe, TCP_FIN | TCP_ACK).build());
    pause();
    let (_, out) = lab.tc(&Packet::tcp(be, c, TCP_ACK).build()).unwrap();
    assert_eq!(
        inspect(&out).src,
        be,
        "an expired reply entry translates nothing"
    );
    xdp(&lab, &Packet::tcp(c, fe, TCP_ACK).build());
    assert_eq!(
        created(),
        4,
        "a closing TCP flow expired after its shorter timeout"
    );
}
