//! Direct server return, on crafted packets (BPF_PROG_TEST_RUN).
//!
//! On the node the client talked to, a DSR flow's opening packets (a TCP
//! SYN, every UDP datagram) are marked for tc ingress (`portmap_dsr`, which
//! writes the backend and adds the frontend as an option; BPF_PROG_TEST_RUN
//! cannot hand XDP's metadata to tc, so that half is proven by real traffic
//! in `cluster_dsr.rs`); the flow's other packets are rewritten by XDP, keeping
//! the client's address. On the backend's node, `portmap_dsr` learns a
//! request carrying the option, and the backend's reply then leaves from the
//! frontend, straight to the client. Options that are not portmap's, and
//! frontends the node does not publish, are left alone.

use std::net::SocketAddr;

use portmap_common::{
    abi::{
        CT_F_DSR, CT_F_DSR_REPLY, CT_REPLY, CT_REQUEST, CT_STATE_CLOSING, CT_STATE_ESTABLISHED,
        CT_STATE_NEW, CtKey, CtValue,
    },
    dsr,
};
use portmap_tests::{
    packet::{
        Ext, Packet, TCP_ACK, TCP_RST, TCP_SYN, icmp_error, icmp_message, inspect, verify_checksums,
    },
    testrun::{Lab, TC_NEXT, XDP_PASS, desired},
};
use portmap_userspace::model::{DesiredState, Reach};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The length of the mark XDP leaves for tc ingress, and its kind byte.
const HANDOFF_LEN: usize = 8;
const KIND_DSR: u8 = 1;

const SPECS: [&str; 4] = [
    "8080:198.19.0.2:3000",
    "8080:198.19.0.2:3000/udp",
    "8080:[2001:db8:1::2]:3000",
    "8080:[2001:db8:1::2]:3000/udp",
];

/// This node's view: every backend on another node, reached by DSR.
fn dsr_state() -> DesiredState {
    let mut d = desired(&SPECS).unwrap();
    for ep in d.services.iter_mut().flat_map(|s| &mut s.endpoints) {
        ep.reach = Reach::Dsr;
    }
    d
}

fn packet(src: SocketAddr, dst: SocketAddr, udp: bool, flags: u8) -> Packet {
    if udp {
        Packet::udp(src, dst, b"ping-pong")
    } else {
        Packet::tcp(src, dst, flags)
    }
}

/// `packet` carrying the DSR option for `frontend`.
fn with_option(mut p: Packet, frontend: SocketAddr) -> Packet {
    match frontend.ip() {
        std::net::IpAddr::V4(a) => {
            p.ip_options = dsr::opt4(a.octets(), frontend.port().to_be()).to_vec();
        }
        std::net::IpAddr::V6(_) => p.ipv6_ext = vec![Ext::Dsr(frontend)],
    }
    p
}

fn entries(lab: &Lab) -> Vec<(CtKey, CtValue)> {
    lab.dp.conntrack_entries().unwrap()
}

#[test]
fn opening_packets_are_marked_for_the_option_and_the_rest_rewritten_keeping_the_client() {
    let lab = Lab::with_state(&dsr_state(), &["198.18.0.1", "2001:db8::1"]).expect("lab");
    let cases = [
        ("198.18.0.2:40000", "198.18.0.1:8080", "198.19.0.2:3000"),
        (
            "[2001:db8::2]:40000",
            "[2001:db8::1]:8080",
            "[2001:db8:1::2]:3000",
        ),
    ];
    for (client, frontend, backend) in cases {
        let (client, frontend, backend) = (sa(client), sa(frontend), sa(backend));
        for udp in [false, true] {
            let what = format!("{client} udp {udp}");
            let opening = packet(client, frontend, udp, TCP_SYN).build();
            let (action, out) = lab.xdp(&opening).unwrap();
            assert_eq!(action, XDP_PASS, "{what}");
            assert_eq!(out.len(), HANDOFF_LEN + opening.len(), "{what}");
            assert_eq!(&out[..4], b"pamp", "{what}: the handoff's mark");
            assert_eq!(out[4], KIND_DSR, "{what}: for the DSR program");
            assert_eq!(&out[HANDOFF_LEN..], &opening[..], "{what}: left whole");
            let proto = if udp { 17 } else { 6 };
            let request = entries(&lab)
                .into_iter()
                .find(|(k, _)| {
                    k.direction == CT_REQUEST
                        && u16::from_be(k.sport) == 40000
                        && k.proto == proto
                        && k.family == family(client)
                })
                .expect("a request entry");
            assert_ne!(request.1.flags & CT_F_DSR, 0, "{what}: a DSR flow");

            let next = packet(client, frontend, udp, TCP_ACK).build();
            let (action, out) = lab.xdp(&next).unwrap();
            assert_eq!(action, XDP_PASS, "{what}");
            if udp {
                // Every datagram carries the option: UDP has no opening
                // packet, and the first may be lost.
                assert_eq!(out[4], KIND_DSR, "{what}");
                continue;
            }
            // The connection's later segments: written here, the client's
            // address kept, no mark.
            let i = inspect(&out);
            assert_eq!((i.src, i.dst), (client, backend), "{what}");
            verify_checksums(&out).unwrap_or_else(|e| panic!("{what}: {e}"));
            let state = entries(&lab)
                .into_iter()
                .find(|(k, v)| {
                    k.direction == CT_REQUEST
                        && v.flags & CT_F_DSR != 0
                        && k.proto == 6
                        && k.family == family(client)
                })
                .map(|(_, v)| v.state);
            assert_eq!(
                state,
                Some(CT_STATE_ESTABLISHED),
                "{what}: the client's ACK says the backend answered"
            );
        }
    }
    let events = lab.events().unwrap();
    assert_eq!(events["flow_created"], 4);
    assert_eq!(events["dsr_option_skipped"], 0);
    let snap = lab.snapshot().unwrap();
    let backends: Vec<_> = snap.services.iter().flat_map(|s| &s.backends).collect();
    assert!(backends.iter().all(|b| b.reach == Reach::Dsr));
    let requests: u64 = backends.iter().map(|b| b.counters.request_packets).sum();
    assert_eq!(requests, 8, "requests counted per backend");
}

fn family(a: SocketAddr) -> u8 {
    if a.is_ipv4() { 4 } else { 6 }
}

/// The backend's node: the same Services, published on all of its
/// addresses (198.18.0.2); the client talked to node 198.18.0.1.
fn backend_node() -> Lab {
    Lab::new(&SPECS, &["198.18.0.2", "2001:db8::3"]).expect("lab")
}

#[test]
fn a_request_carrying_the_option_is_learned_and_the_reply_leaves_from_the_frontend() {
    let lab = backend_node();
    let cases = [
        ("198.18.100.100:41000", "198.18.0.1:8080", "198.19.0.2:3000"),
        (
            "[2001:db8:100::100]:41000",
            "[2001:db8::1]:8080",
            "[2001:db8:1::2]:3000",
        ),
    ];
    let mut learned = 0;
    for (client, frontend, backend) in cases {
        let (client, frontend, backend) = (sa(client), sa(frontend), sa(backend));
        for udp in [false, true] {
            let what = format!("{client} udp {udp}");
            let request = with_option(packet(client, backend, udp, TCP_SYN), frontend).build();
            let (verdict, out) = lab.tc_dsr(&request).unwrap();
            assert_eq!(verdict, TC_NEXT, "{what}");
            assert_eq!(out, request, "{what}: delivered as it came");
            learned += 1;
            let entry = entries(&lab).into_iter().find(|(k, _)| {
                k.direction == CT_REPLY
                    && u16::from_be(k.dport) == client.port()
                    && k.family == family(client)
                    && k.proto == if udp { 17 } else { 6 }
            });
            let (_, v) = entry.unwrap_or_else(|| panic!("{what}: a reply entry"));
            assert_eq!(v.flags, CT_F_DSR_REPLY, "{what}");

            // The backend answers the client; tc egress writes the frontend.
            let reply = packet(backend, client, udp, TCP_SYN | TCP_ACK).build();
            let (verdict, back) = lab.tc(&reply).unwrap();
            assert_eq!(verdict, TC_NEXT);
            let i = inspect(&back);
            assert_eq!(i.src, frontend, "{what}: from the frontend the client used");
            assert_eq!(i.dst, client, "{what}");
            verify_checksums(&back).unwrap_or_else(|e| panic!("{what}: {e}"));
        }
    }
    let events = lab.events().unwrap();
    assert_eq!(events["dsr_learned"], learned);
    assert_eq!(events["reply_translated"], learned);
    // Learned entries have no request twin on this node.
    assert!(
        entries(&lab).iter().all(|(k, _)| k.direction == CT_REPLY),
        "no request entries"
    );
    // The replies count under this node's frontend (the backend's counters
    // are the other node's).
    let snap = lab.snapshot().unwrap();
    let replies: u64 = snap
        .services
        .iter()
        .flat_map(|s| &s.frontends)
        .map(|f| f.counters.reply_packets)
        .sum();
    assert_eq!(replies, learned);
}

#[test]
fn options_that_are_not_portmaps_and_unknown_frontends_are_left_alone() {
    let lab = backend_node();
    let client = sa("198.18.100.100:42000");
    let backend = sa("198.19.0.2:3000");
    let mut strays = Vec::new();
    // NOPs and end-of-list: an option, but not ours.
    let mut p = Packet::tcp(client, backend, TCP_SYN);
    p.ip_options = vec![1, 1, 1, 0];
    strays.push(p);
    // Our type with a wrong length.
    let mut p = Packet::tcp(client, backend, TCP_SYN);
    p.ip_options = vec![dsr::OPT4_TYPE, 4, 0x1f, 0x90, 0, 0, 0, 0];
    strays.push(p);
    // Other destination options on IPv6.
    let mut p = Packet::tcp(
        sa("[2001:db8:100::100]:42000"),
        sa("[2001:db8:1::2]:3000"),
        TCP_SYN,
    );
    p.ipv6_ext = vec![Ext::DestOpts(2)];
    strays.push(p);
    for p in &strays {
        let bytes = p.build();
        let (verdict, out) = lab.tc_dsr(&bytes).unwrap();
        assert_eq!((verdict, &out), (TC_NEXT, &bytes));
    }
    // A frontend this node does not publish: not learned, counted.
    let unknown = with_option(Packet::tcp(client, backend, TCP_SYN), sa("198.18.0.1:9999"));
    lab.tc_dsr(&unknown.build()).unwrap();
    // Truncated right after the option: malformed, passed.
    let mut cut = with_option(Packet::tcp(client, backend, TCP_SYN), sa("198.18.0.1:8080")).build();
    cut.truncate(14 + 28 + 10);
    let (verdict, _) = lab.tc_dsr(&cut).unwrap();
    assert_eq!(verdict, TC_NEXT);

    assert!(entries(&lab).is_empty(), "nothing learned");
    let events = lab.events().unwrap();
    assert_eq!(events["dsr_learned"], 0);
    assert_eq!(events["dsr_unknown_frontend"], 1);
}

/// An option never takes over a current flow of the node's own: a client
/// of this node's frontend, translated here, keeps its reply entry even if
/// its packets carry an option naming another frontend.
#[test]
fn an_option_never_takes_over_a_flow_of_the_nodes_own() {
    let lab = backend_node();
    let client = sa("198.18.100.100:43000");
    let own = sa("198.18.0.2:8080");
    let (action, _) = lab.xdp(&Packet::tcp(client, own, TCP_SYN).build()).unwrap();
    assert_eq!(action, XDP_PASS);
    let backend = sa("198.19.0.2:3000");
    let forged = with_option(Packet::tcp(client, backend, TCP_ACK), sa("198.18.0.1:8080"));
    lab.tc_dsr(&forged.build()).unwrap();
    let reply = Packet::tcp(backend, client, TCP_SYN | TCP_ACK).build();
    let (_, back) = lab.tc(&reply).unwrap();
    assert_eq!(inspect(&back).src, own, "still from the frontend it used");
    assert_eq!(lab.events().unwrap()["dsr_learned"], 0);
}

/// An ICMP error on the backend's node about a DSR request (the backend's
/// port unreachable, say) goes to the client quoting the frontend it used.
#[test]
fn icmp_errors_about_dsr_requests_quote_the_frontend() {
    let lab = backend_node();
    let client = sa("198.18.100.100:44000");
    let frontend = sa("198.18.0.1:8080");
    let backend = sa("198.19.0.2:3000");
    let request = with_option(packet(client, backend, true, 0), frontend).build();
    lab.tc_dsr(&request).unwrap();
    // As the backend's stack quotes it: the request it got, option included.
    let keep = 20 + dsr::OPT4_LEN + 8;
    let error = icmp_error(
        "198.19.0.2",
        "198.18.100.100",
        3,
        3,
        [0; 4],
        &request[14..],
        keep,
    );
    let (verdict, out) = lab.tc(&error).unwrap();
    assert_eq!(verdict, TC_NEXT);
    let m = icmp_message(&out);
    let quoted = &m[8..];
    assert_eq!(
        &quoted[16..20],
        &[198, 18, 0, 1],
        "quoted destination: the frontend"
    );
    let l4 = 20 + dsr::OPT4_LEN;
    assert_eq!(&quoted[l4 + 2..l4 + 4], &8080u16.to_be_bytes());
    assert_eq!(lab.events().unwrap()["icmp_translated"], 1);
}

/// The client's RST of a learned flow reaches the backend's node without an
/// option: its entry is closing there (it would otherwise stay established
/// for hours, since that node sees only the backend's side of the flow).
#[test]
fn the_clients_reset_closes_a_learned_flow() {
    let lab = backend_node();
    let client = sa("198.18.100.100:45000");
    let backend = sa("198.19.0.2:3000");
    let syn = with_option(Packet::tcp(client, backend, TCP_SYN), sa("198.18.0.1:8080"));
    lab.tc_dsr(&syn.build()).unwrap();
    let state = |lab: &Lab| {
        entries(lab)
            .into_iter()
            .find(|(k, _)| k.direction == CT_REPLY && u16::from_be(k.dport) == 45000)
            .map(|(_, v)| v.state)
    };
    assert_eq!(state(&lab), Some(CT_STATE_NEW));
    let rst = Packet::tcp(client, backend, TCP_RST | TCP_ACK).build();
    let (verdict, out) = lab.tc_dsr(&rst).unwrap();
    assert_eq!((verdict, &out), (TC_NEXT, &rst), "passed as it came");
    assert_eq!(state(&lab), Some(CT_STATE_CLOSING));
}
