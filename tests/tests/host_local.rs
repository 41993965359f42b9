//! Socket-level load balancing: traffic that never crosses XDP, from
//! processes on the node (`curl localhost:8080`, the node's own address,
//! ClusterIPs, NodePorts) and from pods (hairpin), translated at connect and
//! send time by portmap's cgroup programs.
//!
//! Each test gives `portmap run --cgroup` a cgroup of its own and runs its
//! client processes (`portmap-testclient`) in it, in the node's network
//! namespace or another; nothing attaches to the machine's root cgroup.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
};

use portmap_tests::{
    cgroup::Cgroup,
    client::{http_get, local_seen, served_by},
    daemon::Portmap,
    kube::{Ep, ManifestDir, slice},
    server::Server,
    topo::{NODE_IFACE, NODE_V4, NODE_V6, Topology, backend_v4, backend_v6},
};

const ECONNREFUSED: i32 = 111;

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

fn at(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// Backend `i` serving TCP and UDP on port 3000, IPv4 and IPv6.
fn server(topo: &Topology, i: usize) -> Server {
    let addrs = [at(backend_v4(i), 3000), at(backend_v6(i), 3000)];
    Server::start(&topo.backends[i], &format!("b{i}"), &addrs, &addrs).unwrap()
}

/// `portmap run --iface eth-c --cgroup CG ARGS...` on the node.
fn portmap(topo: &Topology, cg: &Cgroup, args: &[&str]) -> Portmap {
    let mut all = vec!["--iface", NODE_IFACE, "--cgroup", cg.arg()];
    all.extend_from_slice(args);
    Portmap::start(&topo.node, &all).unwrap()
}

/// Checks a TCP exchange and UDP exchanges (unconnected and connected) with
/// frontend `fe` from `ns`, in `cg`: answered by one of `backends` (by name),
/// with `getpeername` and the UDP source showing `fe`. Returns who served TCP.
fn exchanges(
    cg: &Cgroup,
    ns: &portmap_tests::netns::Netns,
    fe: SocketAddr,
    udp: bool,
    backends: &[&str],
) -> String {
    let target = fe.to_string();
    let tcp = cg.ask(ns, &["tcp", &target]).unwrap();
    let by = served_by(tcp.answer()).to_string();
    assert!(backends.contains(&by.as_str()), "{fe}: {tcp:?}");
    assert_eq!(tcp.peer(), Some(fe), "{fe}: getpeername shows the frontend");
    let backend_port = local_seen(tcp.answer()).map(|a| a.port());
    assert_eq!(backend_port, Some(3000), "{fe}: reached a backend: {tcp:?}");
    if udp {
        let r = cg.ask(ns, &["udp", &target, "ping"]).unwrap();
        assert!(
            backends.contains(&served_by(r.answer())) && r.answer().ends_with(" ping"),
            "{fe}: {r:?}"
        );
        assert_eq!(
            r.from(),
            Some(fe),
            "{fe}: the UDP answer comes from the frontend"
        );
        let r = cg.ask(ns, &["udp-connected", &target, "pong"]).unwrap();
        assert!(backends.contains(&served_by(r.answer())), "{fe}: {r:?}");
        assert_eq!(r.peer(), Some(fe), "{fe}: connected UDP getpeername");
        assert_eq!(r.from(), Some(fe), "{fe}: connected UDP answer source");
    }
    by
}

#[test]
fn node_reaches_published_ports_on_localhost_and_its_own_addresses() {
    let topo = Topology::new("hlpub", 1).unwrap();
    let cg = Cgroup::new("hlpub").unwrap();
    let _s = server(&topo, 0);
    // docker run -p 8080:3000 (TCP and UDP, both families).
    let pm = portmap(
        &topo,
        &cg,
        &[
            "-p",
            "8080:198.19.0.2:3000",
            "-p",
            "8080:198.19.0.2:3000/udp",
            "-p",
            "8080:[2001:db8:1:0::2]:3000",
            "-p",
            "8080:[2001:db8:1:0::2]:3000/udp",
        ],
    );
    assert!(
        pm.logs().contains(&format!(
            "socket-level load balancing on cgroup {}",
            cg.arg()
        )),
        "{}",
        pm.logs()
    );
    for fe in [
        sa("127.0.0.1", 8080),
        sa("::1", 8080),
        sa(NODE_V4, 8080),
        sa(NODE_V6, 8080),
    ] {
        exchanges(&cg, &topo.node, fe, true, &["b0"]);
    }

    // Counted per connection (TCP, connected UDP) or message (UDP), no bytes.
    let m = pm.metrics(&topo.node).unwrap();
    for fe in ["*:8080/tcp", "[*]:8080/tcp"] {
        let req = [("frontend", fe), ("direction", "request")];
        assert_eq!(
            m.sum("portmap_packets_total", &req),
            2.0,
            "{fe}: two connects"
        );
        assert_eq!(m.sum("portmap_bytes_total", &req), 0.0, "{fe}: no bytes");
        let rep = [("frontend", fe), ("direction", "reply")];
        assert_eq!(
            m.sum("portmap_packets_total", &rep),
            0.0,
            "{fe}: no replies"
        );
    }
    for fe in ["*:8080/udp", "[*]:8080/udp"] {
        let req = [("frontend", fe), ("direction", "request")];
        assert!(
            m.sum("portmap_packets_total", &req) >= 4.0,
            "{fe}: a connect and at least one message, twice"
        );
    }
    for be in ["198.19.0.2:3000", "[2001:db8:1::2]:3000"] {
        let req = [("backend", be), ("direction", "request")];
        assert!(
            m.sum("portmap_backend_packets_total", &req) >= 6.0,
            "{be}: counted per backend"
        );
    }
}

#[test]
fn a_port_published_on_loopback_is_for_the_node_only() {
    let topo = Topology::new("hllo", 1).unwrap();
    let cg = Cgroup::new("hllo").unwrap();
    let _s = server(&topo, 0);
    // Something of the client's own on its 127.0.0.1:8080 and [::1]:8080.
    let own = [sa("127.0.0.1", 8080), sa("::1", 8080)];
    let _own = Server::start(&topo.client, "own", &own, &own).unwrap();
    // docker run -p 127.0.0.1:8080:3000
    let _pm = portmap(
        &topo,
        &cg,
        &[
            "-p",
            "127.0.0.1:8080:198.19.0.2:3000",
            "-p",
            "127.0.0.1:8080:198.19.0.2:3000/udp",
            "-p",
            "[::1]:8080:[2001:db8:1:0::2]:3000",
        ],
    );
    // From the node itself: translated.
    exchanges(&cg, &topo.node, sa("127.0.0.1", 8080), true, &["b0"]);
    exchanges(&cg, &topo.node, sa("::1", 8080), false, &["b0"]);
    // Not on the node's other addresses.
    for fe in [sa(NODE_V4, 8080), sa(NODE_V6, 8080)] {
        let r = cg.client(&topo.node, &["tcp", &fe.to_string()]).unwrap();
        assert_eq!(r.errno(), Some(ECONNREFUSED), "{fe}: {r:?}");
    }
    // A process in another namespace (in the cgroup too) connecting to its
    // own loopback reaches its own server, untranslated.
    for fe in own {
        let r = cg.ask(&topo.client, &["tcp", &fe.to_string()]).unwrap();
        assert_eq!(served_by(r.answer()), "own", "{fe}: {r:?}");
        let r = cg.ask(&topo.client, &["udp", &fe.to_string()]).unwrap();
        assert_eq!(served_by(r.answer()), "own", "{fe}: {r:?}");
    }
    // And from the network, the port is not published at all.
    assert!(http_get(&topo.client, sa(NODE_V4, 8080)).is_err());
}

/// A dual-stack NodePort Service `web` (80/tcp → 3000, 53/udp → 3000,
/// nodePorts 30080 and 30053) over both backends, a Service `none` without
/// endpoints, and a ClientIP-affinity Service `sticky`.
fn manifests(dir: &ManifestDir) {
    let ports = [("http", 3000, "TCP"), ("dns", 3000, "UDP")];
    let v4: Vec<Ep> = (0..2).map(|i| Ep::ready(backend_v4(i), "node-a")).collect();
    let v6: Vec<Ep> = (0..2).map(|i| Ep::ready(backend_v6(i), "node-a")).collect();
    let web = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  type: NodePort\n  clusterIP: 198.18.128.10\n  clusterIPs: [198.18.128.10, \"2001:db8:ffff::10\"]\n  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n  ports:\n  - {name: http, port: 80, targetPort: 3000, nodePort: 30080, protocol: TCP}\n  - {name: dns, port: 53, targetPort: 3000, nodePort: 30053, protocol: UDP}\n";
    let none = "apiVersion: v1\nkind: Service\nmetadata: {name: none, namespace: default}\nspec:\n  clusterIP: 198.18.128.11\n  ports:\n  - {name: http, port: 80, targetPort: 3000, protocol: TCP}\n";
    let sticky = "apiVersion: v1\nkind: Service\nmetadata: {name: sticky, namespace: default}\nspec:\n  clusterIP: 198.18.128.12\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}\n  ports:\n  - {name: http, port: 80, targetPort: 3000, protocol: TCP}\n";
    let yaml = [
        web.to_string(),
        slice("web", "web-v4", &v4, &ports),
        slice("web", "web-v6", &v6, &ports),
        none.to_string(),
        slice("none", "none-1", &[], &[("http", 3000, "TCP")]),
        sticky.to_string(),
        slice("sticky", "sticky-1", &v4, &[("http", 3000, "TCP")]),
    ]
    .join("---\n");
    dir.write("services.yaml", &yaml).unwrap();
}

#[test]
fn cluster_ips_and_node_ports_from_the_node_and_hairpin_from_a_backend() {
    let topo = Topology::new("hlk8s", 2).unwrap();
    let cg = Cgroup::new("hlk8s").unwrap();
    let _s: Vec<Server> = (0..2).map(|i| server(&topo, i)).collect();
    let dir = ManifestDir::new("hlk8s").unwrap();
    manifests(&dir);
    let manifests = dir.arg().to_str().unwrap().to_string();
    let pm = portmap(
        &topo,
        &cg,
        &[
            "--manifests",
            &manifests,
            "--service-cidr",
            "198.18.128.0/20",
            "--service-cidr",
            "2001:db8:ffff::/112",
            "--node-name",
            "node-a",
        ],
    );
    let both = ["b0", "b1"];
    let cluster_v4 = sa("198.18.128.10", 80);
    let cluster_v6 = sa("2001:db8:ffff::10", 80);

    // From the node: ClusterIPs, NodePorts on the node's addresses and on
    // localhost, TCP and UDP, both families.
    for (tcp, udp) in [
        (cluster_v4, sa("198.18.128.10", 53)),
        (cluster_v6, sa("2001:db8:ffff::10", 53)),
        (sa(NODE_V4, 30080), sa(NODE_V4, 30053)),
        (sa(NODE_V6, 30080), sa(NODE_V6, 30053)),
        (sa("127.0.0.1", 30080), sa("127.0.0.1", 30053)),
    ] {
        exchanges(&cg, &topo.node, tcp, false, &both);
        // UDP through the Service's UDP port.
        let r = cg.ask(&topo.node, &["udp", &udp.to_string(), "q"]).unwrap();
        assert_eq!(r.from(), Some(udp), "{r:?}");
        assert!(both.contains(&served_by(r.answer())), "{r:?}");
        let r = cg
            .ask(&topo.node, &["udp-connected", &udp.to_string(), "q"])
            .unwrap();
        assert_eq!((r.peer(), r.from()), (Some(udp), Some(udp)), "{r:?}");
    }

    // Hairpin: a backend reaching its own Service, through the ClusterIP.
    let mut hairpin = BTreeSet::new();
    for _ in 0..6 {
        hairpin.insert(exchanges(&cg, &topo.backends[0], cluster_v4, false, &both));
    }
    exchanges(&cg, &topo.backends[0], cluster_v6, false, &both);
    let r = cg
        .ask(&topo.backends[0], &["udp", "198.18.128.10:53", "hair"])
        .unwrap();
    assert_eq!(r.from(), Some(sa("198.18.128.10", 53)), "{r:?}");
    assert!(!hairpin.is_empty());

    // A Service without endpoints refuses the connect (kube-proxy's reject).
    let r = cg.client(&topo.node, &["tcp", "198.18.128.11:80"]).unwrap();
    assert_eq!(r.errno(), Some(ECONNREFUSED), "{r:?}");

    // ClientIP affinity: the node is one client.
    let mut sticky = BTreeSet::new();
    for _ in 0..8 {
        let r = cg.ask(&topo.node, &["tcp", "198.18.128.12:80"]).unwrap();
        sticky.insert(served_by(r.answer()).to_string());
    }
    assert_eq!(sticky.len(), 1, "one client, one backend: {sticky:?}");

    let m = pm.metrics(&topo.node).unwrap();
    let events = |e: &str| m.sum("portmap_datapath_events_total", &[("event", e)]);
    assert!(events("rejected") >= 1.0, "the refused connect is counted");
    assert!(events("affinity_hit") >= 7.0, "affinity hits are counted");
    let fe = |f: &str| {
        m.sum(
            "portmap_packets_total",
            &[("frontend", f), ("direction", "request")],
        )
    };
    // One from the node, six hairpin connects.
    assert_eq!(fe("198.18.128.10:80/tcp"), 7.0);
    assert_eq!(fe("[2001:db8:ffff::10]:80/tcp"), 2.0);
    // NodePort on the node's address and on localhost.
    assert_eq!(fe("*:30080/tcp"), 2.0);
    assert_eq!(fe("[*]:30080/tcp"), 1.0);
    let backends: f64 = m.sum(
        "portmap_backend_packets_total",
        &[
            ("service", "default/web"),
            ("port_name", "http"),
            ("direction", "request"),
        ],
    );
    assert_eq!(backends, 12.0, "every TCP connect counted for its backend");
}

#[test]
fn socket_lb_survives_restarts_and_turns_off() {
    let topo = Topology::new("hloff", 1).unwrap();
    let cg = Cgroup::new("hloff").unwrap();
    let _s = server(&topo, 0);
    let localhost = "127.0.0.1:8080";
    let served = |cg: &Cgroup| {
        served_by(cg.ask(&topo.node, &["tcp", localhost]).unwrap().answer()).to_string()
    };
    let refused = |cg: &Cgroup| cg.client(&topo.node, &["tcp", localhost]).unwrap().errno();
    let publish = ["-p", "8080:198.19.0.2:3000"];
    let keep = [&publish[..], &["--keep-datapath"]].concat();

    let mut pm = portmap(&topo, &cg, &keep);
    let pins = pm.pins.clone();
    assert!(pins.join("links/cgroup-connect4").exists());
    assert_eq!(served(&cg), "b0");
    assert!(pm.stop().unwrap().success(), "{}", pm.logs());
    drop(pm.abandon());
    // No daemon: the pinned programs keep translating.
    assert_eq!(served(&cg), "b0");

    // The next daemon replaces the programs in the pinned links.
    let mut pm = portmap(&topo, &cg, &keep);
    assert!(
        pm.logs().contains("replaced the socket programs"),
        "{}",
        pm.logs()
    );
    assert_eq!(served(&cg), "b0");
    assert!(pm.stop().unwrap().success());
    drop(pm.abandon());

    // --no-socket-lb: the pinned links go, localhost:8080 is not translated.
    let mut args = vec!["--iface", NODE_IFACE, "--no-socket-lb"];
    args.extend_from_slice(&publish);
    let mut pm = Portmap::start(&topo.node, &args).unwrap();
    assert!(
        pm.logs().contains("socket-level load balancing off"),
        "{}",
        pm.logs()
    );
    assert!(!pins.join("links/cgroup-connect4").exists());
    assert_eq!(refused(&cg), Some(ECONNREFUSED));
    assert!(pm.stop().unwrap().success());

    // A plain stop detaches everything.
    let mut pm = portmap(&topo, &cg, &publish);
    assert_eq!(served(&cg), "b0");
    assert!(pm.stop().unwrap().success());
    assert!(!pins.exists(), "nothing left in {}", pins.display());
    assert_eq!(refused(&cg), Some(ECONNREFUSED));
}

#[test]
fn a_bad_cgroup_is_refused_before_anything_is_attached() {
    portmap_tests::require_root();
    let ns = portmap_tests::netns::Netns::new(&portmap_tests::unique_name("hlcli")).unwrap();
    let not_cgroup2 = std::env::temp_dir();
    for (args, mentions) in [
        (
            vec!["--cgroup", "/nonexistent/portmap"],
            "'/nonexistent/portmap' for '--cgroup <PATH>': no such directory",
        ),
        (
            vec!["--cgroup", not_cgroup2.to_str().unwrap()],
            "not a directory of a cgroup v2",
        ),
        (
            vec!["--cgroup", "/tmp", "--no-socket-lb"],
            "cannot be used with",
        ),
    ] {
        let out = ns
            .command_net_only(portmap_tests::bin_path("portmap"))
            .unwrap()
            .args(["run", "--iface", "lo", "--control-socket"])
            .arg(format!("/run/portmap-tests/{}.sock", ns.name()))
            .args(["--bpffs-dir", "/sys/fs/bpf/portmap-test-never"])
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(mentions), "{args:?}: {stderr}");
    }
    assert!(!std::path::Path::new("/sys/fs/bpf/portmap-test-never").exists());
}
