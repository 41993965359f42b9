//! Hostile and wrong input: sources outside the allowed ranges, packets to
//! loopback from the wire (moby#45610), a catalogue of bad manifests against a
//! running daemon, maps that are full, and garbage collection of dead flows.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use portmap_common::abi::DatapathConfig;
use portmap_tests::{
    client::{http_get, served_by, udp_exchange},
    daemon::Portmap,
    kube::{Ep, ManifestDir, reloads, slice, wait_reloaded},
    netns::Netns,
    packet::{Packet, TCP_SYN},
    server::Server,
    testrun::{Lab, desired},
    topo::{NODE_IFACE, NODE_V4, Topology, backend_v4},
};
use portmap_userspace::dataplane::{Dataplane, Limits};

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

fn events(pm: &Portmap, node: &Netns, event: &str) -> f64 {
    pm.metrics(node)
        .unwrap()
        .sum("portmap_datapath_events_total", &[("event", event)])
}

#[test]
fn allow_from_drops_every_other_source() {
    let topo = Topology::new("allow", 1).unwrap();
    let b = SocketAddr::new(backend_v4(0), 3000);
    let _s = Server::start(&topo.backends[0], "b0", &[b], &[b]).unwrap();
    // A second client address, outside the allowed prefix.
    topo.client
        .ip(&["addr", "add", "198.18.0.4/24", "dev", "eth-n"])
        .unwrap();
    let pm = Portmap::start(
        &topo.node,
        &[
            "--iface",
            NODE_IFACE,
            "-p",
            "8080:198.19.0.2:3000",
            "-p",
            "8080:198.19.0.2:3000/udp",
            "--allow-from",
            "198.18.0.2/32",
        ],
    )
    .unwrap();
    assert_eq!(
        served_by(&http_get(&topo.client, sa(NODE_V4, 8080)).unwrap()),
        "b0",
        "the allowed source"
    );
    let (answer, _) = udp_exchange(&topo.client, sa(NODE_V4, 8080), "ok").unwrap();
    assert_eq!(served_by(&answer), "b0");

    let outsider = topo.client.run(|| UdpSocket::bind("198.18.0.4:0")).unwrap();
    outsider
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 256];
    for _ in 0..3 {
        outsider.send_to(b"let me in", sa(NODE_V4, 8080)).unwrap();
        assert!(
            outsider.recv_from(&mut buf).is_err(),
            "a source outside --allow-from got an answer"
        );
    }
    assert!(events(&pm, &topo.node, "dropped_source_range") >= 3.0);
}

/// An AF_PACKET socket on `ifname` in the calling thread's namespace.
fn raw_socket(ifname: &str) -> OwnedFd {
    let name = std::ffi::CString::new(ifname).unwrap();
    // SAFETY: plain socket and ioctl-free calls with valid arguments; the fd
    // is owned by the returned OwnedFd.
    unsafe {
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            i32::from((libc::ETH_P_ALL as u16).to_be()),
        );
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let owned = OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        addr.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
        let rc = libc::bind(
            fd,
            (&addr as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        );
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        owned
    }
}

fn mac(ns: &Netns, ifname: &str) -> [u8; 6] {
    let out = String::from_utf8(
        ns.exec("ip", &["-o", "link", "show", "dev", ifname])
            .unwrap()
            .stdout,
    )
    .unwrap();
    let hex = out
        .split("link/ether ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let bytes: Vec<u8> = hex
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

#[test]
fn a_port_published_on_loopback_is_unreachable_from_another_host() {
    // moby#45610: with iptables, a host on the same link could reach a port
    // published on 127.0.0.1 by sending to 127.0.0.1 with the node's MAC.
    let topo = Topology::new("moby", 1).unwrap();
    let b = SocketAddr::new(backend_v4(0), 3000);
    let _s = Server::start(&topo.backends[0], "b0", &[b], &[]).unwrap();
    let pm = Portmap::start(
        &topo.node,
        &[
            "--iface",
            NODE_IFACE,
            "-p",
            "127.0.0.1:8080:198.19.0.2:3000",
            "-p",
            "8081:198.19.0.2:3000",
        ],
    )
    .unwrap();
    let (node_mac, client_mac) = (mac(&topo.node, NODE_IFACE), mac(&topo.client, "eth-n"));
    let frame = |dst: &str, port: u16| {
        let mut f = Packet::tcp(sa("198.18.0.2", 45000), sa(dst, port), TCP_SYN).build();
        f[0..6].copy_from_slice(&node_mac);
        f[6..12].copy_from_slice(&client_mac);
        f
    };
    let (attack, control) = (frame("127.0.0.1", 8080), frame(NODE_V4, 8081));
    topo.client.run(move || {
        let sock = raw_socket("eth-n");
        for f in [&attack, &attack, &control] {
            // SAFETY: sends a valid buffer on a valid, bound socket.
            let n = unsafe { libc::send(sock.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
            assert_eq!(
                n,
                f.len() as isize,
                "send: {}",
                std::io::Error::last_os_error()
            );
        }
    });
    // The control frame shows injected frames do reach XDP: it was translated.
    let deadline = Instant::now() + Duration::from_secs(5);
    while events(&pm, &topo.node, "flow_created") < 1.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let m = pm.metrics(&topo.node).unwrap();
    assert_eq!(
        m.sum(
            "portmap_datapath_events_total",
            &[("event", "flow_created")]
        ),
        1.0,
        "only the control flow"
    );
    assert_eq!(
        m.sum(
            "portmap_packets_total",
            &[("frontend", "127.0.0.1:8080/tcp")]
        ),
        0.0
    );
    // The control SYN was translated (and the client's RST to the unexpected
    // SYN-ACK after it).
    assert!(
        m.sum(
            "portmap_packets_total",
            &[("frontend", "*:8081/tcp"), ("direction", "request")]
        ) >= 1.0
    );
}

#[test]
fn a_catalogue_of_bad_manifests_changes_nothing() {
    let topo = Topology::new("catal", 1).unwrap();
    let b = SocketAddr::new(backend_v4(0), 3000);
    let _s = Server::start(&topo.backends[0], "b0", &[b], &[]).unwrap();
    let dir = ManifestDir::new("catal").unwrap();
    let good = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\nspec:\n  type: NodePort\n  clusterIP: 198.18.128.10\n  ports: [{{name: http, port: 80, targetPort: 3000, nodePort: 30080}}]\n---\n{}",
        slice(
            "web",
            "web-1",
            &[Ep::ready(backend_v4(0), "node-a")],
            &[("http", 3000, "TCP")]
        )
    );
    dir.write("web.yaml", &good).unwrap();
    let d = dir.arg().to_str().unwrap().to_string();
    let pm = Portmap::start(&topo.node, &["--iface", NODE_IFACE, "--manifests", &d]).unwrap();
    // Each bad edit: what it breaks, and what the error must name.
    let cases: [(&str, String, &[&str]); 7] = [
        (
            "port out of range",
            good.replace("port: 80,", "port: 70000,"),
            &["spec.ports[0].port", "70000"],
        ),
        (
            "nodePort outside the range",
            good.replace("nodePort: 30080", "nodePort: 20000"),
            &["spec.ports[0].nodePort", "20000"],
        ),
        (
            "bad clusterIP",
            good.replace("198.18.128.10", "198.18.128.300"),
            &["spec.clusterIP", "198.18.128.300"],
        ),
        (
            "bad protocol",
            good.replace("targetPort: 3000,", "targetPort: 3000, protocol: QUIC,"),
            &["spec.ports[0].protocol", "QUIC"],
        ),
        (
            "wrong type",
            good.replace("port: 80,", "port: eighty,"),
            &["spec.ports[0].port", "eighty"],
        ),
        (
            "YAML syntax",
            good.replace("spec:\n", "spec:\n  - [\n"),
            &["web.yaml", "line"],
        ),
        (
            "bad endpoint address",
            good.replace(&backend_v4(0).to_string(), "198.19.0.999"),
            &["198.19.0.999"],
        ),
    ];
    for (what, yaml, names) in cases {
        let failures = reloads(&pm, &topo.node, "failure").unwrap();
        dir.write("web.yaml", &yaml).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while reloads(&pm, &topo.node, "failure").unwrap() <= failures && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            reloads(&pm, &topo.node, "failure").unwrap() > failures,
            "{what}: refused"
        );
        let logs = pm.logs();
        let last = logs
            .lines()
            .rev()
            .find(|l| l.contains("reload failed"))
            .unwrap_or_default();
        for name in names {
            assert!(
                last.contains(name),
                "{what}: the error names {name:?}: {last}"
            );
        }
        for fe in [sa("198.18.128.10", 80), sa(NODE_V4, 30080)] {
            assert_eq!(
                served_by(&http_get(&topo.client, fe).unwrap()),
                "b0",
                "{what}: {fe} still served"
            );
        }
    }
    let before = reloads(&pm, &topo.node, "success").unwrap();
    dir.write(
        "web.yaml",
        &good.replace("nodePort: 30080", "nodePort: 30090"),
    )
    .unwrap();
    wait_reloaded(&pm, &topo.node, before).unwrap();
    assert_eq!(
        served_by(&http_get(&topo.client, sa(NODE_V4, 30090)).unwrap()),
        "b0",
        "a good edit applies again"
    );
}

#[test]
fn a_service_that_does_not_fit_is_the_only_one_refused() {
    portmap_tests::require_root();
    let limits = Limits {
        frontends: 16,
        backends: 3,
        conntrack: 1024,
    };
    let mut dp = Dataplane::load(limits, DatapathConfig::default()).unwrap();
    let first = desired(&["8080:198.19.0.2:3000", "8081:198.19.0.3:3000"]).unwrap();
    assert!(dp.apply(&first).unwrap().is_complete());
    // Two more backends where one slot is left: the one that does not fit
    // is refused, with the map named; the other goes in.
    let more = desired(&[
        "8080:198.19.0.2:3000",
        "8081:198.19.0.3:3000",
        "8082:198.19.0.4:3000",
        "8083:198.19.0.5:3000",
    ])
    .unwrap();
    let report = dp.apply(&more).unwrap();
    assert_eq!(report.failed.len(), 1, "{report:?}");
    let (key, why) = &report.failed[0];
    assert!(
        key.contains("8083") && why.contains("backends") && why.contains("--max-backends"),
        "{key}: {why}"
    );
    let published: Vec<String> = dp
        .snapshot()
        .unwrap()
        .services
        .iter()
        .flat_map(|s| s.frontends.iter().map(|f| f.frontend.clone()))
        .collect();
    assert_eq!(
        published,
        ["*:8080/tcp", "*:8081/tcp", "*:8082/tcp"],
        "the others are applied"
    );
}

#[test]
fn flows_of_removed_backends_and_expired_flows_are_collected() {
    const SECOND: u64 = 1_000_000_000;
    let config = DatapathConfig {
        udp_timeout_ns: SECOND / 2,
        ..DatapathConfig::default()
    };
    let mut lab = Lab::with_config(
        &desired(&["8080:198.19.0.2:3000", "9090:198.19.0.3:3000/udp"]).unwrap(),
        &["198.18.0.1"],
        config,
    )
    .unwrap();
    for port in 40000..40010 {
        let c = SocketAddr::new("198.18.0.2".parse::<IpAddr>().unwrap(), port);
        lab.xdp(&Packet::tcp(c, sa("198.18.0.1", 8080), TCP_SYN).build())
            .unwrap();
        lab.xdp(&Packet::udp(c, sa("198.18.0.1", 9090), b"u").build())
            .unwrap();
    }
    assert_eq!(
        lab.dp.conntrack_entries().unwrap().len(),
        40,
        "two entries per flow"
    );
    // The TCP service goes away; the UDP flows expire.
    lab.dp
        .apply(&desired(&["9090:198.19.0.3:3000/udp"]).unwrap())
        .unwrap();
    std::thread::sleep(Duration::from_millis(1600));
    let report = lab.dp.collect_garbage().unwrap();
    assert_eq!((report.scanned, report.removed), (40, 40), "{report:?}");
    assert!(lab.dp.conntrack_entries().unwrap().is_empty());
}

/// The collection reads conntrack in batches of 1,024 entries: a table of
/// 3,000 is walked whole, across batches, and exactly the entries of a
/// removed Service go.
#[test]
fn a_collection_walks_every_batch_of_a_large_table() {
    let mut lab = Lab::with_config(
        &desired(&["8080:198.19.0.2:3000", "9090:198.19.0.3:3000/udp"]).unwrap(),
        &["198.18.0.1"],
        DatapathConfig::default(),
    )
    .unwrap();
    let client = "198.18.0.2".parse::<IpAddr>().unwrap();
    for port in 20_000..20_750 {
        let c = SocketAddr::new(client, port);
        lab.xdp(&Packet::tcp(c, sa("198.18.0.1", 8080), TCP_SYN).build())
            .unwrap();
        lab.xdp(&Packet::udp(c, sa("198.18.0.1", 9090), b"u").build())
            .unwrap();
    }
    assert_eq!(lab.dp.conntrack_entries().unwrap().len(), 3000);
    let report = lab.dp.collect_garbage().unwrap();
    assert_eq!((report.scanned, report.removed), (3000, 0), "{report:?}");
    // The TCP Service goes away: its 1,500 entries are stale, the UDP
    // flows' are not.
    lab.dp
        .apply(&desired(&["9090:198.19.0.3:3000/udp"]).unwrap())
        .unwrap();
    let report = lab.dp.collect_garbage().unwrap();
    assert_eq!((report.scanned, report.removed), (3000, 1500), "{report:?}");
    let left = lab.dp.conntrack_entries().unwrap();
    assert_eq!(left.len(), 1500);
    assert!(
        left.iter().all(|(k, _)| k.proto == 17),
        "only the UDP flows' entries are left"
    );
}

/// A map under pressure says so: `portmap_map_entries` against
/// `portmap_map_capacity`, and a warning in the log; a conntrack map that is
/// full evicts idle flows and new ones keep working.
#[test]
fn maps_under_pressure_show_in_metrics_and_log() {
    // The kernel's LRU evicts once its shared free list is empty, and it
    // evicts in batches of up to 128 nodes that go to the evicting CPU's own
    // free list: every CPU, the inserting one too, may hold that many free.
    // The map is sized so that this slack is at most a quarter of it: the
    // floor below never falls to zero, whatever the number of CPUs (with a
    // fixed size it did from 32 CPUs on, and the check passed whatever the
    // count).
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let slack = cpus * 128 + 64;
    let conntrack = (4 * slack).max(4096);
    // At least three quarters of the map (4096 entries, floor 3776, on 2 CPUs).
    let floor = conntrack - slack;
    let topo = Topology::new("pressure", 1).unwrap();
    let b = SocketAddr::new(backend_v4(0), 3000);
    let _s = Server::start(&topo.backends[0], "b0", &[], &[b]).unwrap();
    let pm = Portmap::start(
        &topo.node,
        &[
            "--iface",
            NODE_IFACE,
            "-p",
            "8080:198.19.0.2:3000/udp",
            "--max-frontends",
            "1",
            "--conntrack-entries",
            &conntrack.to_string(),
        ],
    )
    .unwrap();
    // More flows (two entries each) than the map holds.
    for i in 0..conntrack / 2 + 200 {
        let (answer, _) = udp_exchange(&topo.client, sa(NODE_V4, 8080), &format!("flow {i}"))
            .unwrap_or_else(|e| panic!("flow {i}: {e:#}\n{}", pm.logs()));
        assert_eq!(served_by(&answer), "b0");
    }
    // Conntrack is counted at each garbage collection, every 10 s.
    let deadline = Instant::now() + Duration::from_secs(25);
    let usage = |map: &str| {
        let m = pm.metrics(&topo.node).unwrap();
        (
            m.sum("portmap_map_entries", &[("map", map)]) as u64,
            m.sum("portmap_map_capacity", &[("map", map)]) as u64,
        )
    };
    while !pm
        .metrics(&topo.node)
        .unwrap()
        .has("portmap_map_entries", &[("map", "CONNTRACK")])
    {
        assert!(
            Instant::now() < deadline,
            "no conntrack usage after 25 s:\n{}",
            pm.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (entries, capacity) = usage("CONNTRACK");
    assert_eq!(capacity, conntrack);
    assert!(
        (floor..=conntrack).contains(&entries),
        "conntrack holds {entries} of {conntrack} (expected at least {floor})"
    );
    assert_eq!(usage("FRONTENDS"), (1, 1));
    let logs = pm.logs();
    assert!(
        logs.contains("map FRONTENDS is 100% full"),
        "no warning about FRONTENDS:\n{logs}"
    );
    // The log agrees with the metric about conntrack (90 % and more).
    assert_eq!(
        logs.contains("map CONNTRACK is"),
        entries * 10 >= capacity * 9,
        "conntrack at {entries} of {capacity}:\n{logs}"
    );
    // Evicted flows were idle; a new one still gets through.
    let (answer, _) = udp_exchange(&topo.client, sa(NODE_V4, 8080), "after").unwrap();
    assert_eq!(served_by(&answer), "b0");
}
