//! SNAT towards backends on other nodes, on crafted packets
//! (BPF_PROG_TEST_RUN). XDP picks the backend and a port of the SNAT range
//! for a new flow and hands the request to tc ingress (both ends are
//! rewritten there, with the kernel's helpers); the backend's reply arrives
//! at this node's address and that port, and tc ingress
//! (`portmap_snat_reply`) sends it back from the frontend to the client.
//! When no port is free, new flows are refused and counted while the flows
//! that hold ports carry on. The same through real traffic, both ways, is in
//! `cluster.rs` (BPF_PROG_TEST_RUN cannot hand XDP's metadata to tc).

use std::net::{IpAddr, SocketAddr};

use portmap_common::abi::{CT_F_SNAT, CT_REQUEST, DatapathConfig};
use portmap_tests::{
    packet::{Packet, TCP_ACK, TCP_SYN, icmp_error, icmp_message, inspect, verify_checksums},
    testrun::{Lab, TC_NEXT, XDP_DROP, XDP_PASS, desired},
};
use portmap_userspace::model::DesiredState;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// This node's address towards the other nodes, where SNATed flows come
/// from.
const SNAT4: &str = "198.18.9.1";
const SNAT6: &str = "2001:db8:9::1";
/// The length of the mark XDP leaves for tc ingress.
const HANDOFF_LEN: usize = 8;

fn remote_state() -> DesiredState {
    let mut d = desired(&[
        "8080:198.19.0.2:3000",
        "8080:198.19.0.2:3000/udp",
        "8080:[2001:db8:1::2]:3000",
        "8080:[2001:db8:1::2]:3000/udp",
    ])
    .unwrap();
    for ep in d.services.iter_mut().flat_map(|s| &mut s.endpoints) {
        let from = if ep.addr.is_ipv4() { SNAT4 } else { SNAT6 };
        ep.reach = portmap_userspace::model::Reach::Snat(from.parse().unwrap());
    }
    d
}

fn lab(ports: std::ops::RangeInclusive<u16>) -> Lab {
    let config = DatapathConfig {
        snat_port_min: *ports.start(),
        snat_port_max: *ports.end(),
        ..DatapathConfig::default()
    };
    Lab::with_config(&remote_state(), &["198.18.0.1", "2001:db8::1"], config).expect("lab")
}

fn packet(src: SocketAddr, dst: SocketAddr, udp: bool, flags: u8) -> Vec<u8> {
    if udp {
        Packet::udp(src, dst, b"ping-pong").build()
    } else {
        Packet::tcp(src, dst, flags).build()
    }
}

/// The source the flow of `client` was given: this node's address and the
/// port in its conntrack request entry.
fn snat_source(lab: &Lab, client: SocketAddr) -> Option<SocketAddr> {
    let entries = lab.dp.conntrack_entries().unwrap();
    entries.iter().find_map(|(k, v)| {
        let port = u16::from_be(k.sport);
        let is_client = k.direction == CT_REQUEST && port == client.port();
        (is_client && v.flags & CT_F_SNAT != 0).then(|| {
            let ip: IpAddr = if client.is_ipv4() { SNAT4 } else { SNAT6 }
                .parse()
                .unwrap();
            SocketAddr::new(ip, u16::from_be(v.snat_port))
        })
    })
}

#[test]
fn a_remote_backends_flow_is_handed_to_tc_and_its_reply_turned_around() {
    let lab = lab(61000..=65535);
    let cases = [
        ("198.18.0.2:40000", "198.18.0.1:8080", "198.19.0.2:3000"),
        (
            "[2001:db8::2]:40000",
            "[2001:db8::1]:8080",
            "[2001:db8:1::2]:3000",
        ),
    ];
    let mut n = 0;
    for (client, frontend, backend) in cases {
        let (client, frontend, backend) = (sa(client), sa(frontend), sa(backend));
        for udp in [false, true] {
            let mut client = client;
            client.set_port(client.port() + n);
            n += 1;
            let p = packet(client, frontend, udp, TCP_SYN);
            let (action, out) = lab.xdp(&p).unwrap();
            assert_eq!(action, XDP_PASS, "{client} udp {udp}");
            assert_eq!(out.len(), HANDOFF_LEN + p.len(), "{client} udp {udp}");
            assert_eq!(&out[..4], b"pamp", "the handoff's mark");
            assert_eq!(&out[HANDOFF_LEN..], &p[..], "left whole for tc ingress");
            let from = snat_source(&lab, client).expect("a SNATed entry");
            assert!((61000..=65535).contains(&from.port()), "{from}");

            // The backend answers this node; tc ingress turns it around.
            let reply = packet(backend, from, udp, TCP_SYN | TCP_ACK);
            let (verdict, back) = lab.tc_snat_reply(&reply).unwrap();
            assert_eq!(verdict, TC_NEXT);
            let i = inspect(&back);
            assert_eq!(i.src, frontend, "{client} udp {udp}: from the frontend");
            assert_eq!(i.dst, client, "{client} udp {udp}: to the client");
            verify_checksums(&back).unwrap_or_else(|e| panic!("{client} reply: {e}"));

            // The flow's next request keeps its port.
            let (_, again) = lab.xdp(&packet(client, frontend, udp, TCP_ACK)).unwrap();
            assert_eq!(&again[..4], b"pamp");
            assert_eq!(snat_source(&lab, client), Some(from), "same port");
        }
    }
    let events = lab.events().unwrap();
    assert_eq!(events["flow_created"], 4);
    assert_eq!(events["reply_translated"], 4);
    assert_eq!(events["snat_exhausted"], 0);
    assert_eq!(events["malformed"], 0);
    let snap = lab.snapshot().unwrap();
    let backends: Vec<_> = snap.services.iter().flat_map(|s| &s.backends).collect();
    let replies: u64 = backends.iter().map(|b| b.counters.reply_packets).sum();
    assert_eq!(replies, 4, "replies counted per backend");
    assert!(backends.iter().all(|b| b.reach.snat_from().is_some()));
}

#[test]
fn the_clients_port_is_kept_when_it_is_in_the_range_and_free() {
    let lab = lab(40000..=40009);
    let frontend = sa("198.18.0.1:8080");
    let first = sa("198.18.0.2:40005");
    lab.xdp(&packet(first, frontend, false, TCP_SYN)).unwrap();
    assert_eq!(snat_source(&lab, first), Some(sa("198.18.9.1:40005")));
    // Another client with the same port gets another one of the range.
    let second = sa("198.18.0.3:40005");
    lab.xdp(&packet(second, frontend, false, TCP_SYN)).unwrap();
    let ports: Vec<u16> = lab
        .dp
        .conntrack_entries()
        .unwrap()
        .iter()
        .filter(|(k, v)| k.direction == CT_REQUEST && v.flags & CT_F_SNAT != 0)
        .map(|(_, v)| u16::from_be(v.snat_port))
        .collect();
    assert_eq!(ports.len(), 2);
    assert!(ports.contains(&40005));
    assert!(ports.iter().all(|p| (40000..=40009).contains(p)));
    assert_ne!(ports[0], ports[1]);
}

#[test]
fn exhausted_ports_refuse_new_flows_and_spare_the_others() {
    // Four ports towards one backend: four flows fit, the fifth is refused.
    let lab = lab(62000..=62003);
    let frontend = sa("198.18.0.1:8080");
    let client = |i: u16| SocketAddr::new("198.18.0.2".parse().unwrap(), 50000 + i);
    let mut taken = Vec::new();
    for i in 0..4 {
        let (action, _) = lab
            .xdp(&packet(client(i), frontend, false, TCP_SYN))
            .unwrap();
        assert_eq!(action, XDP_PASS);
        let from = snat_source(&lab, client(i)).expect("a port");
        assert!(!taken.contains(&from), "{from} given twice");
        taken.push(from);
    }
    let (action, _) = lab
        .xdp(&packet(client(100), frontend, false, TCP_SYN))
        .unwrap();
    assert_eq!(action, XDP_DROP, "no port left: refused");
    assert_eq!(lab.events().unwrap()["snat_exhausted"], 1);
    assert_eq!(snat_source(&lab, client(100)), None);

    // The flows holding ports carry on, both ways.
    for (i, from) in taken.iter().enumerate() {
        let (action, out) = lab
            .xdp(&packet(client(i as u16), frontend, false, TCP_ACK))
            .unwrap();
        assert_eq!((action, &out[..4]), (XDP_PASS, &b"pamp"[..]));
        let reply = packet(sa("198.19.0.2:3000"), *from, false, TCP_ACK);
        let (_, back) = lab.tc_snat_reply(&reply).unwrap();
        assert_eq!(inspect(&back).dst, client(i as u16));
    }
    // UDP to the same backend port is another protocol: ports of its own.
    let (action, _) = lab.xdp(&packet(client(100), frontend, true, 0)).unwrap();
    assert_eq!(action, XDP_PASS);
    assert!(snat_source(&lab, client(100)).is_some());
}

#[test]
fn a_reply_to_a_port_nobody_holds_is_left_alone() {
    let lab = lab(61000..=65535);
    for stray in [
        packet(
            sa("198.19.0.2:3000"),
            sa("198.18.9.1:61234"),
            false,
            TCP_ACK,
        ),
        packet(sa("198.19.0.2:3000"), sa("198.18.9.1:22"), false, TCP_ACK),
        packet(
            sa("[2001:db8:1::2]:3000"),
            sa("[2001:db8:9::1]:61234"),
            true,
            0,
        ),
    ] {
        let (verdict, out) = lab.tc_snat_reply(&stray).unwrap();
        assert_eq!(verdict, TC_NEXT);
        assert_eq!(out, stray, "untouched");
    }
    assert_eq!(lab.events().unwrap()["reply_translated"], 0);
}

/// An ICMP error about a SNATed request ("fragmentation needed" or "packet
/// too big" from a router towards the backend's node, a port unreachable
/// from the backend) reaches this node's SNAT address; tc ingress sends it on to
/// the client, quoting the request as the client sent it, so path MTU
/// discovery works through SNAT. An error about no flow is left alone.
#[test]
fn icmp_errors_about_snated_requests_go_on_to_their_client() {
    let mut lab = lab(61000..=65535);
    let cases = [
        (
            "198.18.0.2:40100",
            "198.18.0.1:8080",
            "198.19.0.2:3000",
            "198.19.0.254",
            SNAT4,
        ),
        (
            "[2001:db8::2]:40100",
            "[2001:db8::1]:8080",
            "[2001:db8:1::2]:3000",
            "2001:db8:1::fe",
            SNAT6,
        ),
    ];
    let mut translated = 0;
    for (client, frontend, backend, router, snat) in cases {
        let (client, frontend, backend) = (sa(client), sa(frontend), sa(backend));
        let v4 = client.is_ipv4();
        for udp in [false, true] {
            let what = format!("{client} udp {udp}");
            let sent = packet(client, frontend, udp, TCP_SYN);
            lab.xdp(&sent).unwrap();
            let from = snat_source(&lab, client).expect("a SNATed flow");
            // The request as it left this node (tc ingress wrote it).
            let left = packet(from, backend, udp, TCP_SYN);
            let (kind, code, header) = if v4 { (3, 4, 20) } else { (2, 0, 40) };
            let keep = header + 8;
            let error = icmp_error(router, snat, kind, code, [0, 0, 5, 0], &left[14..], keep);
            let (verdict, out) = lab.tc_snat_reply(&error).unwrap();
            assert_eq!(verdict, TC_NEXT, "{what}");
            let i = inspect(&out);
            assert_eq!(i.dst.ip(), client.ip(), "{what}: on to the client");
            assert_eq!(i.src.ip(), router.parse::<IpAddr>().unwrap(), "{what}");
            let m = icmp_message(&out);
            assert_eq!(
                &m[8..],
                &sent[14..14 + keep],
                "{what}: the quote is the request the client sent"
            );
            translated += 1;
            // Next flow: another client port.
            lab.dp.clear_flows().unwrap();
        }
    }
    // About no flow: left alone.
    let stray = packet(
        sa("198.18.9.1:61999"),
        sa("198.19.0.2:3000"),
        false,
        TCP_SYN,
    );
    let error = icmp_error("198.19.0.254", SNAT4, 3, 4, [0, 0, 5, 0], &stray[14..], 28);
    let (verdict, out) = lab.tc_snat_reply(&error).unwrap();
    assert_eq!((verdict, &out), (TC_NEXT, &error));
    assert_eq!(lab.events().unwrap()["icmp_translated"], translated);
}
