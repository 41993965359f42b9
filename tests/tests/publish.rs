//! `portmap run -p ...` end to end: real TCP and UDP from a client namespace
//! through the node's XDP and tc programs to backend namespaces and back.

use std::net::{IpAddr, SocketAddr};

use aya::programs::{SchedClassifier, TcAttachType};

use portmap_tests::{
    client::{
        LineConn, http_get, local_seen, peer_seen, served_by, udp_ask, udp_exchange, udp_socket,
    },
    daemon::Portmap,
    server::Server,
    topo::{
        CLIENT_V4, CLIENT_V6, NODE_IFACE, NODE_V4, NODE_V4_ALT, NODE_V6, Topology, backend_v4,
        backend_v6,
    },
};

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

fn at(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

#[test]
fn tcp_and_udp_over_ipv4_and_ipv6() {
    let topo = Topology::new("basic", 1).unwrap();
    let (b4, b6) = (backend_v4(0), backend_v6(0));
    let _server = Server::start(
        &topo.backends[0],
        "b0",
        &[at(b4, 3000), at(b6, 3000)],
        &[at(b4, 3000), at(b6, 3000)],
    )
    .unwrap();
    let _pm = Portmap::start(
        &topo.node,
        &[
            "--iface",
            NODE_IFACE,
            "-p",
            "8080:198.19.0.2:3000",
            "-p",
            "8080:198.19.0.2:3000/udp",
            "-p",
            "8080:[2001:db8:1:0::2]:3000",
            "-p",
            "8080:[2001:db8:1:0::2]:3000/udp",
        ],
    )
    .unwrap();

    for (node, client) in [(NODE_V4, CLIENT_V4), (NODE_V6, CLIENT_V6)] {
        // TCP: an HTTP exchange, the connection accepted only if every reply
        // came from the address and port the client connected to.
        let body = http_get(&topo.client, sa(node, 8080)).unwrap();
        assert_eq!(served_by(&body), "b0", "{body}");
        let peer = peer_seen(&body).unwrap();
        assert_eq!(
            peer.ip(),
            client.parse::<IpAddr>().unwrap(),
            "the backend sees the client's own address"
        );

        // UDP: the answer arrives from the frontend the datagram was sent to.
        let (answer, from) = udp_exchange(&topo.client, sa(node, 8080), "hello").unwrap();
        assert_eq!(from, sa(node, 8080), "UDP reply source");
        assert_eq!(served_by(&answer), "b0");
        assert!(answer.ends_with(" hello"), "{answer}");
        assert_eq!(
            peer_seen(&answer).unwrap().ip(),
            client.parse::<IpAddr>().unwrap()
        );
    }
}

#[test]
fn two_published_ports_share_one_backend_port() {
    let topo = Topology::new("twoport", 1).unwrap();
    let b4 = backend_v4(0);
    let _server = Server::start(&topo.backends[0], "b0", &[at(b4, 3000)], &[at(b4, 3000)]).unwrap();
    let pm = Portmap::start(
        &topo.node,
        &[
            "--iface",
            NODE_IFACE,
            "-p",
            "8080:198.19.0.2:3000",
            "-p",
            "8081:198.19.0.2:3000",
            "-p",
            "8080:198.19.0.2:3000/udp",
            "-p",
            "8081:198.19.0.2:3000/udp",
        ],
    )
    .unwrap();

    // Two long-lived connections, one through each port, used in turns.
    let mut a = LineConn::open(&topo.client, sa(NODE_V4, 8080)).unwrap();
    let mut b = LineConn::open(&topo.client, sa(NODE_V4, 8081)).unwrap();
    for round in 0..5 {
        let ra = a.ask(&format!("a{round}")).unwrap();
        let rb = b.ask(&format!("b{round}")).unwrap();
        assert!(
            ra.ends_with(&format!(" a{round}")) && served_by(&ra) == "b0",
            "{ra}"
        );
        assert!(
            rb.ends_with(&format!(" b{round}")) && served_by(&rb) == "b0",
            "{rb}"
        );
        assert_eq!(local_seen(&ra), Some(at(b4, 3000)));
        assert_eq!(local_seen(&rb), Some(at(b4, 3000)));
    }

    // Two UDP clients at once, each answered from the port it used.
    let ua = udp_socket(&topo.client, sa(NODE_V4, 8080)).unwrap();
    let ub = udp_socket(&topo.client, sa(NODE_V4, 8081)).unwrap();
    for round in 0..3 {
        let (ans, from) = udp_ask(&ua, sa(NODE_V4, 8080), &format!("x{round}")).unwrap();
        assert_eq!(from, sa(NODE_V4, 8080), "{ans}");
        let (ans, from) = udp_ask(&ub, sa(NODE_V4, 8081), &format!("y{round}")).unwrap();
        assert_eq!(from, sa(NODE_V4, 8081), "{ans}");
    }

    let m = pm.metrics(&topo.node).unwrap();
    for fe in ["*:8080/tcp", "*:8081/tcp", "*:8080/udp", "*:8081/udp"] {
        assert!(
            m.sum(
                "portmap_packets_total",
                &[("frontend", fe), ("direction", "reply")]
            ) >= 3.0,
            "{fe} counted its replies"
        );
    }
}

#[test]
fn port_ranges_map_port_by_port() {
    let topo = Topology::new("range", 1).unwrap();
    let b4 = backend_v4(0);
    let ports: Vec<SocketAddr> = (7000..7004).map(|p| at(b4, p)).collect();
    let _server = Server::start(&topo.backends[0], "b0", &ports, &ports).unwrap();
    let _pm = Portmap::start(
        &topo.node,
        &[
            "--iface",
            NODE_IFACE,
            "-p",
            "9000-9003:198.19.0.2:7000-7003",
            "-p",
            "9000-9003:198.19.0.2:7000-7003/udp",
        ],
    )
    .unwrap();
    for i in 0..4u16 {
        let body = http_get(&topo.client, sa(NODE_V4, 9000 + i)).unwrap();
        assert_eq!(local_seen(&body), Some(at(b4, 7000 + i)), "{body}");
        let (answer, from) = udp_exchange(&topo.client, sa(NODE_V4, 9000 + i), "r").unwrap();
        assert_eq!(from, sa(NODE_V4, 9000 + i));
        assert_eq!(local_seen(&answer), Some(at(b4, 7000 + i)), "{answer}");
    }
}

#[test]
fn a_port_published_on_one_address_does_not_answer_on_another() {
    let topo = Topology::new("oneaddr", 2).unwrap();
    let (b0, b1) = (backend_v4(0), backend_v4(1));
    let _s0 = Server::start(&topo.backends[0], "b0", &[at(b0, 3000)], &[]).unwrap();
    let _s1 = Server::start(&topo.backends[1], "b1", &[at(b1, 3000)], &[]).unwrap();
    let _pm = Portmap::start(
        &topo.node,
        &[
            "--iface",
            NODE_IFACE,
            "-p",
            "198.18.0.1:8080:198.19.0.2:3000",
            // All addresses on 8081, but 198.18.0.3:8081 to another backend.
            "-p",
            "8081:198.19.0.2:3000",
            "-p",
            "198.18.0.3:8081:198.19.1.2:3000",
        ],
    )
    .unwrap();
    assert_eq!(
        served_by(&http_get(&topo.client, sa(NODE_V4, 8080)).unwrap()),
        "b0"
    );
    // Nothing listens on the node itself: the untranslated SYN is refused.
    let err = http_get(&topo.client, sa(NODE_V4_ALT, 8080)).unwrap_err();
    let refused = err
        .chain()
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|e| e.kind() == std::io::ErrorKind::ConnectionRefused);
    assert!(refused, "{NODE_V4_ALT}:8080 must be refused, got {err:#}");

    assert_eq!(
        served_by(&http_get(&topo.client, sa(NODE_V4, 8081)).unwrap()),
        "b0"
    );
    assert_eq!(
        served_by(&http_get(&topo.client, sa(NODE_V4_ALT, 8081)).unwrap()),
        "b1"
    );
}

#[test]
fn counters_in_metrics_and_list_match_the_traffic() {
    let topo = Topology::new("count", 1).unwrap();
    let b4 = backend_v4(0);
    let _server = Server::start(&topo.backends[0], "b0", &[at(b4, 3000)], &[at(b4, 3000)]).unwrap();
    let pm = Portmap::start(
        &topo.node,
        &[
            "--iface",
            NODE_IFACE,
            "-p",
            "8080:198.19.0.2:3000",
            "-p",
            "5353:198.19.0.2:3000/udp",
        ],
    )
    .unwrap();
    let before = pm.metrics(&topo.node).unwrap();
    assert_eq!(
        before.sum("portmap_packets_total", &[("frontend", "*:8080/tcp")]),
        0.0
    );

    const REQUESTS: usize = 5;
    for _ in 0..REQUESTS {
        http_get(&topo.client, sa(NODE_V4, 8080)).unwrap();
    }
    let socket = udp_socket(&topo.client, sa(NODE_V4, 5353)).unwrap();
    const PAYLOAD: &str = "0123456789";
    let mut answers = 0;
    for _ in 0..4 {
        udp_ask(&socket, sa(NODE_V4, 5353), PAYLOAD).unwrap();
        answers += 1;
    }

    let m = pm.metrics(&topo.node).unwrap();
    let tcp =
        |name: &str, dir: &str| m.sum(name, &[("frontend", "*:8080/tcp"), ("direction", dir)]);
    // At least SYN, the request and the final ACK or FIN per connection.
    assert!(tcp("portmap_packets_total", "request") >= (3 * REQUESTS) as f64);
    assert!(tcp("portmap_packets_total", "reply") >= (2 * REQUESTS) as f64);
    // Every TCP/IPv4 packet has at least 40 bytes of headers.
    assert!(
        tcp("portmap_bytes_total", "request") >= 40.0 * tcp("portmap_packets_total", "request")
    );
    // One backend: its series carries the same totals as the frontend's.
    assert_eq!(
        m.sum(
            "portmap_backend_packets_total",
            &[("backend", "198.19.0.2:3000"), ("direction", "request")]
        ),
        tcp("portmap_packets_total", "request")
            + m.sum(
                "portmap_packets_total",
                &[("frontend", "*:5353/udp"), ("direction", "request")]
            )
    );

    // UDP: every datagram is 20 + 8 + payload IP bytes, each way counted.
    let udp =
        |name: &str, dir: &str| m.sum(name, &[("frontend", "*:5353/udp"), ("direction", dir)]);
    let sent = udp("portmap_packets_total", "request");
    assert!(
        sent >= answers as f64,
        "{sent} datagrams counted for {answers} answers"
    );
    assert_eq!(
        udp("portmap_bytes_total", "request"),
        sent * (28 + PAYLOAD.len()) as f64
    );
    assert!(udp("portmap_packets_total", "reply") >= answers as f64);
    assert!(
        m.sum(
            "portmap_datapath_events_total",
            &[("event", "flow_created")]
        ) >= (REQUESTS + 1) as f64
    );

    // `portmap list` shows the same frontends, backends and counters.
    let table = pm.list(&[]).unwrap();
    assert!(
        table.contains("*:8080/tcp") && table.contains("-> 198.19.0.2:3000"),
        "{table}"
    );
    let json: serde_json::Value = serde_json::from_str(&pm.list(&["--json"]).unwrap()).unwrap();
    let services = json["services"].as_array().unwrap();
    let tcp_svc = services
        .iter()
        .find(|s| s["frontends"][0]["frontend"] == "*:8080/tcp")
        .expect("the TCP frontend is listed");
    let listed = tcp_svc["frontends"][0]["counters"]["request_packets"]
        .as_f64()
        .unwrap();
    assert!(
        listed >= tcp("portmap_packets_total", "request"),
        "list is at least as fresh as the scrape"
    );
    assert_eq!(tcp_svc["backends"][0]["backend"], "198.19.0.2:3000");
}

#[test]
fn sigterm_detaches_everything() {
    let topo = Topology::new("stop", 1).unwrap();
    let b4 = backend_v4(0);
    let _server = Server::start(&topo.backends[0], "b0", &[at(b4, 3000)], &[]).unwrap();
    let mut pm = Portmap::start(
        &topo.node,
        &["--iface", NODE_IFACE, "-p", "8080:198.19.0.2:3000"],
    )
    .unwrap();
    let link = |ns: &portmap_tests::netns::Netns| {
        String::from_utf8(
            ns.exec("ip", &["-d", "link", "show", "dev", NODE_IFACE])
                .unwrap()
                .stdout,
        )
        .unwrap()
    };
    assert!(
        link(&topo.node).contains("xdp"),
        "XDP attached while running"
    );
    assert_eq!(
        tcx_egress_programs(&topo.node),
        ["portmap_egress"],
        "tc egress attached while running"
    );
    assert_eq!(
        served_by(&http_get(&topo.client, sa(NODE_V4, 8080)).unwrap()),
        "b0"
    );

    let status = pm.stop().unwrap();
    assert!(
        status.success(),
        "clean exit on SIGTERM: {status}\n{}",
        pm.logs()
    );
    assert!(!link(&topo.node).contains("xdp"), "XDP detached");
    assert!(!pm.socket.exists(), "control socket removed");
    assert!(
        tcx_egress_programs(&topo.node).is_empty(),
        "tc egress detached"
    );
    // No translation any more: the node itself refuses port 8080.
    assert!(http_get(&topo.client, sa(NODE_V4, 8080)).is_err());
}

/// Names of the tcx egress programs on the node's client-facing interface.
fn tcx_egress_programs(node: &portmap_tests::netns::Netns) -> Vec<String> {
    node.run(|| {
        let (_, programs) =
            SchedClassifier::query_tcx(NODE_IFACE, TcAttachType::Egress).expect("query tcx");
        programs
            .iter()
            .map(|p| p.name_as_str().unwrap_or("?").to_string())
            .collect()
    })
}

/// `getsockopt` of an int socket option.
fn sockopt_int(fd: i32, level: i32, name: i32) -> std::io::Result<i32> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[test]
fn path_mtu_discovery_works_through_the_translation() {
    use std::os::fd::AsRawFd as _;
    let topo = Topology::new("pmtu", 1).unwrap();
    let (b4, b6) = (backend_v4(0), backend_v6(0));
    let _server =
        Server::start(&topo.backends[0], "b0", &[], &[at(b4, 3000), at(b6, 3000)]).unwrap();
    // The backend link is narrower than the client's.
    topo.node
        .ip(&["link", "set", "eth-b0", "mtu", "1280"])
        .unwrap();
    topo.backends[0]
        .ip(&["link", "set", "eth-n", "mtu", "1280"])
        .unwrap();
    let pm = Portmap::start(
        &topo.node,
        &[
            "--iface",
            NODE_IFACE,
            "-p",
            "8080:198.19.0.2:3000/udp",
            "-p",
            "8080:[2001:db8:1:0::2]:3000/udp",
        ],
    )
    .unwrap();
    for (frontend, level, discover, do_, mtu) in [
        (
            sa(NODE_V4, 8080),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
            libc::IP_MTU,
        ),
        (
            sa(NODE_V6, 8080),
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DO,
            libc::IPV6_MTU,
        ),
    ] {
        let socket = udp_socket(&topo.client, frontend).unwrap();
        socket.connect(frontend).unwrap();
        let fd = socket.as_raw_fd();
        // SAFETY: setsockopt with a pointer to an int of the size given.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                discover,
                (&do_ as *const i32).cast(),
                size_of::<i32>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
        assert_eq!(udp_ask(&socket, frontend, "small").unwrap().1, frontend);
        // Too big for the backend link, with DF: the node answers with
        // "fragmentation needed" (IPv6: "packet too big"), quoting the packet
        // as translated. Translated back, it reaches this socket's path.
        let big = vec![b'x'; 1400];
        let _ = socket.send(&big);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let learned = sockopt_int(fd, level, mtu).unwrap();
            if learned == 1280 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{frontend}: path MTU still {learned}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
            let _ = socket.send(&big);
        }
        // Now the stack refuses what would not get through, instead of
        // sending it into a black hole.
        assert_eq!(
            socket.send(&big).unwrap_err().raw_os_error(),
            Some(libc::EMSGSIZE)
        );
    }
    let m = pm.metrics(&topo.node).unwrap();
    assert!(
        m.sum(
            "portmap_datapath_events_total",
            &[("event", "icmp_translated")]
        ) >= 2.0
    );
}
