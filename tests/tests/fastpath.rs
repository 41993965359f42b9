//! The XDP fast path (`--backend-iface`): translated packets forwarded by
//! XDP_REDIRECT both ways, and the kernel path when XDP cannot finish.

use std::{net::SocketAddr, os::fd::AsRawFd as _};

use portmap_tests::{
    client::{LineConn, http_get, peer_seen, served_by, udp_ask, udp_exchange, udp_socket},
    daemon::Portmap,
    metrics::Samples,
    server::Server,
    topo::{CLIENT_V4, NODE_IFACE, NODE_V4, NODE_V6, Topology, backend_v4, backend_v6},
};

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// A topology whose backend ends take XDP_REDIRECTed frames (NAPI on, as a
/// NIC's would be: GRO on a veth).
fn topology(tag: &str) -> (Topology, Server) {
    let topo = Topology::new(tag, 1).unwrap();
    topo.backends[0]
        .exec("ethtool", &["-K", "eth-n", "gro", "on"])
        .unwrap();
    let (b4, b6) = (
        SocketAddr::new(backend_v4(0), 3000),
        SocketAddr::new(backend_v6(0), 3000),
    );
    let server = Server::start(&topo.backends[0], "b0", &[b4, b6], &[b4, b6]).unwrap();
    (topo, server)
}

const ARGS: [&str; 12] = [
    "--iface",
    NODE_IFACE,
    "--backend-iface",
    "eth-b0",
    "-p",
    "8080:198.19.0.2:3000",
    "-p",
    "8080:198.19.0.2:3000/udp",
    "-p",
    "8080:[2001:db8:1:0::2]:3000",
    "-p",
    "8080:[2001:db8:1:0::2]:3000/udp",
];

fn events(m: &Samples, event: &str) -> f64 {
    m.sum("portmap_datapath_events_total", &[("event", event)])
}

#[test]
fn tcp_and_udp_go_both_ways_by_redirect() {
    let (topo, _server) = topology("fast");
    let pm = Portmap::start(&topo.node, &ARGS).unwrap();
    // The first packets meet no neighbour entry for the backend yet: the
    // kernel forwards them (and resolves it). Then XDP does.
    for node in [NODE_V4, NODE_V6] {
        let _ = http_get(&topo.client, sa(node, 8080)).unwrap();
    }
    let before = pm.metrics(&topo.node).unwrap();
    assert!(
        events(&before, "fast_path_fallback_no_neighbour") >= 1.0,
        "the first packet found no neighbour"
    );

    for node in [NODE_V4, NODE_V6] {
        let mut conn = LineConn::open(&topo.client, sa(node, 8080)).unwrap();
        for i in 0..20 {
            let answer = conn.ask(&format!("line {i}")).unwrap();
            assert!(
                answer.ends_with(&format!("line {i}")) && served_by(&answer) == "b0",
                "{answer}"
            );
        }
        let body = http_get(&topo.client, sa(node, 8080)).unwrap();
        assert_eq!(served_by(&body), "b0");
        let socket = udp_socket(&topo.client, sa(node, 8080)).unwrap();
        for i in 0..20 {
            let (answer, from) = udp_ask(&socket, sa(node, 8080), &format!("d{i}")).unwrap();
            assert_eq!(from, sa(node, 8080), "UDP replies come from the frontend");
            assert!(answer.ends_with(&format!("d{i}")));
        }
    }
    let after = pm.metrics(&topo.node).unwrap();
    let redirected =
        events(&after, "fast_path_redirected") - events(&before, "fast_path_redirected");
    // 2 × (≥ 40 line exchanges' packets + a connection + 20 datagrams), both ways.
    assert!(redirected >= 160.0, "only {redirected} packets redirected");
    // Replies were translated in XDP on the backend side, so counted there.
    assert!(
        after.sum(
            "portmap_packets_total",
            &[("frontend", "*:8080/udp"), ("direction", "reply")]
        ) >= 20.0,
        "reply counters count fast-path replies"
    );
}

#[test]
fn packets_too_big_for_the_backend_link_take_the_kernel_path() {
    let (topo, _server) = topology("frag");
    // A smaller MTU on the backend link (both ends, as a real link has one).
    topo.node
        .ip(&["link", "set", "eth-b0", "mtu", "1280"])
        .unwrap();
    topo.backends[0]
        .ip(&["link", "set", "eth-n", "mtu", "1280"])
        .unwrap();
    let pm = Portmap::start(&topo.node, &ARGS).unwrap();
    // Warm up: neighbour resolved, fast path in use.
    udp_exchange(&topo.client, sa(NODE_V4, 8080), "small").unwrap();
    udp_exchange(&topo.client, sa(NODE_V4, 8080), "small").unwrap();

    // A 1400-byte datagram the client lets the path fragment: XDP cannot
    // (it exceeds the backend link's MTU), so the kernel forwards it in
    // fragments, and the answer still arrives.
    let socket = udp_socket(&topo.client, sa(NODE_V4, 8080)).unwrap();
    let dont: libc::c_int = libc::IP_PMTUDISC_DONT;
    // SAFETY: setsockopt on a valid socket with a pointer to an int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&dont as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    let big = "x".repeat(1400);
    let (answer, _from) = udp_ask(&socket, sa(NODE_V4, 8080), &big).unwrap();
    // The kernel delivered the translated datagram in fragments: the backend
    // saw the client and answered. (Its answer is fragmented too, and
    // fragments are passed untranslated, so it comes back from the backend's
    // address: the known limitation the README states.)
    assert!(answer.ends_with(&big));
    assert_eq!(
        peer_seen(&answer).unwrap().ip(),
        CLIENT_V4.parse::<std::net::IpAddr>().unwrap()
    );
    let m = pm.metrics(&topo.node).unwrap();
    assert!(
        events(&m, "fast_path_fallback_frag_needed") >= 1.0,
        "counted as a fallback"
    );
    assert!(
        events(&m, "fast_path_redirected") >= 2.0,
        "small datagrams still redirected"
    );
}

#[test]
fn without_backend_ifaces_there_is_no_fast_path() {
    let (topo, _server) = topology("slow");
    let pm = Portmap::start(
        &topo.node,
        &ARGS[..2]
            .iter()
            .chain(&ARGS[4..])
            .copied()
            .collect::<Vec<_>>(),
    )
    .unwrap();
    for _ in 0..5 {
        assert_eq!(
            served_by(&http_get(&topo.client, sa(NODE_V4, 8080)).unwrap()),
            "b0"
        );
    }
    let m = pm.metrics(&topo.node).unwrap();
    for e in [
        "fast_path_redirected",
        "fast_path_fallback_no_neighbour",
        "fast_path_fallback_other",
    ] {
        assert_eq!(events(&m, e), 0.0, "{e}");
    }
}

/// Requests' next hops are cached per backend (see `HopSlot`); the cache
/// follows the routing under traffic. Each step changes the next hop of one
/// UDP flow's backend and checks the very next requests: a cache that kept
/// its answer would send them the old way for up to its second.
#[test]
fn cached_next_hops_follow_the_routing_under_traffic() {
    let topo = Topology::new("hop", 2).unwrap();
    for backend in &topo.backends {
        backend
            .exec("ethtool", &["-K", "eth-n", "gro", "on"])
            .unwrap();
    }
    let b0 = SocketAddr::new(backend_v4(0), 3000);
    // Backend 1 can answer on backend 0's address, once routes send it there.
    topo.backends[1]
        .ip(&["addr", "add", "198.19.0.2/32", "dev", "eth-n"])
        .unwrap();
    let _servers = [
        Server::start(&topo.backends[0], "b0", &[], &[b0]).unwrap(),
        Server::start(&topo.backends[1], "b1", &[], &[b0]).unwrap(),
    ];
    let pm = Portmap::start(
        &topo.node,
        &[
            "--iface",
            NODE_IFACE,
            "--backend-iface",
            "eth-b0",
            "--backend-iface",
            "eth-b1",
            "-p",
            "8080:198.19.0.2:3000/udp",
        ],
    )
    .unwrap();
    // Slots are per CPU, and a veth runs XDP on the sender's: every
    // request from one CPU meets the slot the ones before it filled.
    pin_to_first_cpu();
    let frontend = sa(NODE_V4, 8080);
    let socket = udp_socket(&topo.client, frontend).unwrap();
    let ask_all = |n: usize, expected: &str| {
        for i in 0..n {
            let (answer, _) = udp_ask(&socket, frontend, &format!("d{i}")).unwrap();
            assert_eq!(served_by(&answer), expected, "datagram {i}: {answer}");
        }
    };
    let looked_up = || events(&pm.metrics(&topo.node).unwrap(), "fast_path_hop_looked_up");
    let settle = || std::thread::sleep(std::time::Duration::from_millis(100));
    ask_all(10, "b0");

    // Cached: most requests need no lookup.
    let start = pm.metrics(&topo.node).unwrap();
    ask_all(20, "b0");
    let end = pm.metrics(&topo.node).unwrap();
    let cached_run =
        events(&end, "fast_path_hop_looked_up") - events(&start, "fast_path_hop_looked_up");
    let redirected = events(&end, "fast_path_redirected") - events(&start, "fast_path_redirected");
    assert!(redirected >= 40.0, "only {redirected} packets redirected");
    assert!(cached_run <= 10.0, "{cached_run} of 20 requests looked up");

    // A policy rule could route clients of one backend apart: no caching.
    let rule = |verb| {
        let args = [
            "rule",
            verb,
            "from",
            "198.18.0.0/24",
            "lookup",
            "main",
            "pref",
            "100",
        ];
        topo.node.ip(&args).unwrap();
    };
    rule("add");
    settle();
    let before = looked_up();
    ask_all(20, "b0");
    assert!(
        looked_up() - before >= 20.0,
        "requests looked up with a policy rule"
    );
    rule("del");
    settle();
    // A multipath route (to elsewhere) could send one backend's clients
    // different ways: no caching either, until it is gone.
    let multipath = [
        "route",
        "add",
        "198.19.200.0/24",
        "nexthop",
        "via",
        "198.19.0.2",
        "nexthop",
        "via",
        "198.19.1.2",
    ];
    topo.node.ip(&multipath).unwrap();
    settle();
    let before = looked_up();
    ask_all(10, "b0");
    assert!(
        looked_up() - before >= 10.0,
        "requests looked up with a multipath route"
    );
    topo.node.ip(&["route", "del", "198.19.200.0/24"]).unwrap();
    // The routes are read again at most once a second.
    std::thread::sleep(std::time::Duration::from_millis(1300));
    let before = looked_up();
    ask_all(10, "b0");
    let again = looked_up() - before;
    assert!(again <= 5.0, "{again} of 10 requests looked up after it");
    // Cached afresh, then moved: a route to backend 1.
    ask_all(5, "b0");
    topo.node
        .ip(&["route", "add", "198.19.0.2/32", "dev", "eth-b1"])
        .unwrap();
    settle();
    ask_all(20, "b1");

    // The neighbour's MAC changed: the next requests go to the new one (a
    // MAC no one has, so nothing answers), then back once it is right.
    topo.node
        .ip(&[
            "neigh",
            "replace",
            "198.19.0.2",
            "dev",
            "eth-b1",
            "lladdr",
            "02:00:5e:00:53:01",
            "nud",
            "permanent",
        ])
        .unwrap();
    settle();
    socket
        .set_read_timeout(Some(std::time::Duration::from_millis(150)))
        .unwrap();
    let mut buf = [0u8; 2048];
    for i in 0..3 {
        // No longer than the requests before (a longer one would be looked
        // up for its MTU anyway).
        socket
            .send_to(format!("L{i}").as_bytes(), frontend)
            .unwrap();
        assert!(
            socket.recv_from(&mut buf).is_err(),
            "answered through a neighbour entry that was replaced"
        );
    }
    topo.node
        .ip(&["neigh", "del", "198.19.0.2", "dev", "eth-b1"])
        .unwrap();
    settle();
    socket
        .set_read_timeout(Some(std::time::Duration::from_millis(700)))
        .unwrap();
    ask_all(5, "b1");
}

/// Keeps the calling thread on the first CPU it may use.
fn pin_to_first_cpu() {
    // SAFETY: a zeroed cpu_set_t is an empty set; the calls get and set the
    // calling thread's affinity through valid pointers of the size given.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let size = size_of::<libc::cpu_set_t>();
        assert_eq!(libc::sched_getaffinity(0, size, &mut set), 0);
        let first = (0..libc::CPU_SETSIZE as usize)
            .find(|c| libc::CPU_ISSET(*c, &set))
            .expect("a CPU to run on");
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(first, &mut set);
        assert_eq!(libc::sched_setaffinity(0, size, &set), 0);
    }
}
