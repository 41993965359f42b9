//! Frontend policies on crafted packets: reject (ICMP port unreachable), drop,
//! source ranges, host-only frontends, and session affinity.

use std::{collections::BTreeSet, net::SocketAddr};

use portmap_common::csum::{checksum, l4_checksum};
use portmap_tests::{
    packet::{Packet, TCP_SYN, inspect},
    testrun::{Lab, XDP_PASS, desired},
};
use portmap_userspace::model::{
    Cidr, DesiredState, Endpoint, EndpointState, Frontend, HostAddr, Placement, Protocol, Reach,
    Service, WhenEmpty,
};

const XDP_DROP: u32 = 1;
/// Rejections go back out of the interface they came in on by redirect.
const XDP_REDIRECT: u32 = 4;
const NODE: [&str; 2] = ["198.18.0.1", "2001:db8::1"];

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn service(key: &str, frontends: &[(&str, u16, Protocol)], endpoints: &[&str]) -> Service {
    Service {
        key: key.into(),
        name: format!("default/{key}"),
        port_name: String::new(),
        container: String::new(),
        frontends: frontends
            .iter()
            .map(|(addr, port, proto)| Frontend {
                addr: match *addr {
                    "*" => HostAddr::AllV4,
                    "[*]" => HostAddr::AllV6,
                    ip => HostAddr::Ip(ip.parse().unwrap()),
                },
                port: *port,
                proto: *proto,
            })
            .collect(),
        endpoints: endpoints
            .iter()
            .map(|e| {
                let a = sa(e);
                Endpoint {
                    addr: a.ip(),
                    port: a.port(),
                    state: EndpointState::Ready,
                    placement: Placement::Unknown,
                    reach: Reach::Direct,
                }
            })
            .collect(),
        affinity_timeout_s: None,
        when_empty: WhenEmpty::Pass,
        source_ranges: Vec::new(),
    }
}

fn lab(services: Vec<Service>) -> Lab {
    Lab::with_state(&DesiredState { services }, &NODE).unwrap()
}

/// Checks an ICMP(v6) port unreachable answering `original`.
fn assert_port_unreachable(out: &[u8], original: &[u8]) {
    let orig = inspect(original);
    let l2 = orig.l3;
    assert_eq!(&out[0..6], &original[6..12], "to the sender's MAC");
    assert_eq!(&out[6..12], &original[0..6], "from the MAC it was sent to");
    assert_eq!(
        &out[12..l2],
        &original[12..l2],
        "VLAN tag and EtherType kept"
    );
    if orig.src.is_ipv4() {
        let ip = &out[l2..l2 + 20];
        assert_eq!(checksum(ip), 0, "IPv4 header checksum");
        assert_eq!(ip[9], 1, "ICMP");
        assert_eq!(
            &ip[12..16],
            &original[l2 + 16..l2 + 20],
            "from the frontend address"
        );
        assert_eq!(&ip[16..20], &original[l2 + 12..l2 + 16], "to the client");
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        assert_eq!(out.len(), l2 + total);
        let icmp = &out[l2 + 20..];
        assert_eq!((icmp[0], icmp[1]), (3, 3), "destination/port unreachable");
        assert_eq!(checksum(icmp), 0, "ICMP checksum");
        let quote = orig.l4 - orig.l3 + 8;
        assert_eq!(
            &icmp[8..],
            &original[l2..l2 + quote],
            "quotes the IP header and 8 bytes"
        );
    } else {
        let ip = &out[l2..l2 + 40];
        assert_eq!(ip[6], 58, "ICMPv6");
        assert_eq!(
            &ip[8..24],
            &original[l2 + 24..l2 + 40],
            "from the frontend address"
        );
        assert_eq!(&ip[24..40], &original[l2 + 8..l2 + 24], "to the client");
        let payload = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
        assert_eq!(out.len(), l2 + 40 + payload);
        let icmp = &out[l2 + 40..];
        assert_eq!((icmp[0], icmp[1]), (1, 4), "destination/port unreachable");
        assert_eq!(
            l4_checksum(&ip[8..24], &ip[24..40], 58, icmp, usize::MAX / 2),
            0,
            "ICMPv6 checksum with pseudo-header"
        );
        assert_eq!(&icmp[8..], &original[l2..l2 + 48], "quotes 48 bytes");
    }
}

#[test]
fn services_without_endpoints_reject_with_port_unreachable() {
    let mut v4 = service(
        "empty4",
        &[
            ("10.96.0.10", 80, Protocol::Tcp),
            ("10.96.0.10", 53, Protocol::Udp),
        ],
        &[],
    );
    v4.when_empty = WhenEmpty::Reject;
    let mut v6 = service("empty6", &[("fd00::10", 80, Protocol::Tcp)], &[]);
    v6.when_empty = WhenEmpty::Reject;
    let lab = lab(vec![v4, v6]);
    let mut cases = vec![
        Packet::tcp(sa("198.18.0.2:40000"), sa("10.96.0.10:80"), TCP_SYN),
        Packet::udp(sa("198.18.0.2:40001"), sa("10.96.0.10:53"), b"query"),
        Packet::tcp(sa("[2001:db8::2]:40002"), sa("[fd00::10]:80"), TCP_SYN),
    ];
    let mut tagged = Packet::udp(sa("198.18.0.2:40003"), sa("10.96.0.10:53"), &[9; 200]);
    tagged.vlan = Some(5);
    tagged.ip_options = vec![1, 1, 1, 0];
    cases.push(tagged);
    for p in cases {
        let bytes = p.build();
        let (action, out) = lab.xdp(&bytes).unwrap();
        assert_eq!(action, XDP_REDIRECT, "{p:?} is answered");
        assert_port_unreachable(&out, &bytes);
    }
    assert_eq!(lab.events().unwrap()["rejected"], 4);
    // Never to a source that must not get ICMP errors.
    let bad_src = Packet::udp(sa("0.0.0.0:68"), sa("10.96.0.10:53"), b"x").build();
    assert_eq!(lab.xdp(&bad_src).unwrap().0, XDP_DROP);
}

#[test]
fn local_policy_with_no_local_endpoint_drops() {
    let mut svc = service("etp-local", &[("*", 30001, Protocol::Tcp)], &[]);
    svc.when_empty = WhenEmpty::Drop;
    let lab = lab(vec![svc]);
    let p = Packet::tcp(sa("198.18.0.2:40000"), sa("198.18.0.1:30001"), TCP_SYN).build();
    assert_eq!(lab.xdp(&p).unwrap().0, XDP_DROP);
    assert_eq!(lab.events().unwrap()["dropped_no_backend"], 1);
}

#[test]
fn source_ranges_allow_only_their_prefixes() {
    let mut lb = service(
        "lb",
        &[
            ("203.0.113.7", 443, Protocol::Tcp),
            ("2001:db8:2::7", 443, Protocol::Tcp),
        ],
        &[],
    );
    lb.endpoints = vec![];
    lb.source_ranges = vec![
        "198.18.0.0/24".parse::<Cidr>().unwrap(),
        "2001:db8::/64".parse().unwrap(),
    ];
    let mut lb4 = lb.clone();
    lb4.key = "lb4".into();
    lb4.frontends.truncate(1);
    lb4.endpoints = vec![Endpoint {
        addr: "198.19.0.2".parse().unwrap(),
        port: 8443,
        state: EndpointState::Ready,
        placement: Placement::Unknown,
        reach: Reach::Direct,
    }];
    let mut lb6 = lb;
    lb6.key = "lb6".into();
    lb6.frontends.remove(0);
    lb6.endpoints = vec![Endpoint {
        addr: "2001:db8:1::2".parse().unwrap(),
        port: 8443,
        state: EndpointState::Ready,
        placement: Placement::Unknown,
        reach: Reach::Direct,
    }];
    let lab = lab(vec![lb4, lb6]);

    let allowed = Packet::tcp(sa("198.18.0.2:40000"), sa("203.0.113.7:443"), TCP_SYN).build();
    let (action, out) = lab.xdp(&allowed).unwrap();
    assert_eq!(
        (action, inspect(&out).dst),
        (XDP_PASS, sa("198.19.0.2:8443"))
    );
    let allowed6 = Packet::tcp(
        sa("[2001:db8::2]:40000"),
        sa("[2001:db8:2::7]:443"),
        TCP_SYN,
    )
    .build();
    assert_eq!(
        inspect(&lab.xdp(&allowed6).unwrap().1).dst,
        sa("[2001:db8:1::2]:8443")
    );

    for denied in [
        Packet::tcp(sa("198.18.1.2:40000"), sa("203.0.113.7:443"), TCP_SYN),
        Packet::tcp(
            sa("[2001:db8:0:1::2]:40000"),
            sa("[2001:db8:2::7]:443"),
            TCP_SYN,
        ),
        // An IPv4-mapped look-alike must not match the IPv4 prefix.
        Packet::tcp(
            sa("[::ffff:198.18.0.2]:40000"),
            sa("[2001:db8:2::7]:443"),
            TCP_SYN,
        ),
    ] {
        assert_eq!(lab.xdp(&denied.build()).unwrap().0, XDP_DROP, "{denied:?}");
    }
    assert_eq!(lab.events().unwrap()["dropped_source_range"], 3);
}

#[test]
fn loopback_frontends_are_never_reached_from_the_wire() {
    // moby#45610: a port published on 127.0.0.1 is for this host only. A
    // packet to 127.0.0.1 arriving on an interface passes untouched, and so
    // does anything to a loopback address, even with all addresses published.
    let lab = Lab::new(
        &[
            "127.0.0.1:8080:198.19.0.2:3000",
            "9090:198.19.0.2:3000",
            "[::1]:8080:[2001:db8:1::2]:3000",
        ],
        &NODE,
    )
    .unwrap();
    for p in [
        Packet::tcp(sa("198.18.0.2:40000"), sa("127.0.0.1:8080"), TCP_SYN),
        Packet::tcp(sa("198.18.0.2:40000"), sa("127.0.0.1:9090"), TCP_SYN),
        Packet::tcp(sa("198.18.0.2:40000"), sa("127.1.2.3:9090"), TCP_SYN),
        Packet::tcp(sa("[2001:db8::2]:40000"), sa("[::1]:8080"), TCP_SYN),
    ] {
        let bytes = p.build();
        assert_eq!(lab.xdp(&bytes).unwrap(), (XDP_PASS, bytes.clone()), "{p:?}");
    }
    assert_eq!(lab.events().unwrap()["flow_created"], 0);
}

#[test]
fn client_ip_affinity_keeps_a_client_on_one_backend() {
    let backends: Vec<String> = (2..6).map(|i| format!("198.19.{i}.2:3000")).collect();
    let refs: Vec<&str> = backends.iter().map(String::as_str).collect();
    let mut sticky = service("sticky", &[("10.96.0.20", 80, Protocol::Tcp)], &refs);
    sticky.affinity_timeout_s = Some(10800);
    let plain = {
        let mut s = service("plain", &[("10.96.0.21", 80, Protocol::Tcp)], &refs);
        s.key = "plain".into();
        s
    };
    let lab = lab(vec![sticky, plain]);
    let spread = |vip: &str, client: &str| -> BTreeSet<SocketAddr> {
        (0..64u16)
            .map(|i| {
                let src = SocketAddr::new(client.parse().unwrap(), 41000 + i);
                let p =
                    Packet::tcp(src, SocketAddr::new(vip.parse().unwrap(), 80), TCP_SYN).build();
                inspect(&lab.xdp(&p).unwrap().1).dst
            })
            .collect()
    };
    assert_eq!(
        spread("10.96.0.20", "198.18.0.2").len(),
        1,
        "one backend for one client"
    );
    assert_eq!(
        spread("10.96.0.21", "198.18.0.2").len(),
        4,
        "without affinity, flows spread"
    );
    // Other clients are spread over the backends.
    let firsts: BTreeSet<SocketAddr> = (2..40)
        .map(|i| {
            spread("10.96.0.20", &format!("198.18.0.{i}"))
                .into_iter()
                .next()
                .unwrap()
        })
        .collect();
    assert!(firsts.len() >= 3, "clients spread: {firsts:?}");
    assert!(lab.events().unwrap()["affinity_hit"] >= 63);
    let _ = desired(&[]);
}
