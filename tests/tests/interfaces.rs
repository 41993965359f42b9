//! A changing machine: interfaces that go and come back while `portmap run`
//! runs, or while it is down (a restart after that), and a host without the
//! mounts portmap looks for.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use portmap_tests::{
    client::{LineConn, http_get, served_by},
    daemon::Portmap,
    metrics::Samples,
    netns::Netns,
    server::Server,
    topo::{self, LinkOptions, NODE_IFACE, NODE_V4, NODE_V6, Topology, backend_v4},
};

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

const PUBLISH: [&str; 4] = ["--iface", NODE_IFACE, "-p", "8080:198.19.0.2:3000"];

fn one_backend(tag: &str) -> (Topology, Server) {
    let topo = Topology::new(tag, 1).unwrap();
    let b = SocketAddr::new(backend_v4(0), 3000);
    let server = Server::start(&topo.backends[0], "b0", &[b], &[]).unwrap();
    (topo, server)
}

/// Deletes the node's client-facing veth (its client end goes with it),
/// as when a container's veth or a NIC goes away.
fn delete_client_link(topo: &Topology) {
    topo.node.ip(&["link", "del", NODE_IFACE]).unwrap();
}

/// Creates the client ↔ node veth pair again, addressed and routed as
/// `Topology::new` does.
fn recreate_client_link(topo: &Topology) {
    topo::link(
        &topo.client,
        "eth-n",
        &topo.node,
        NODE_IFACE,
        LinkOptions::default(),
    )
    .unwrap();
    topo.client
        .exec("ethtool", &["-K", "eth-n", "gro", "on"])
        .unwrap();
    for cidr in ["198.18.0.2/24", "2001:db8::2/64"] {
        topo::addr(&topo.client, cidr, "eth-n").unwrap();
    }
    for cidr in [
        "198.18.0.1/24",
        "198.18.0.3/24",
        "2001:db8::1/64",
        "2001:db8::3/64",
    ] {
        topo::addr(&topo.node, cidr, NODE_IFACE).unwrap();
    }
    topo.client
        .ip(&["route", "add", "default", "via", NODE_V4])
        .unwrap();
    topo.client
        .ip(&["-6", "route", "add", "default", "via", NODE_V6])
        .unwrap();
}

/// Waits (at most 10 s) until the daemon's log contains `text` `n` times.
fn wait_for_log(pm: &Portmap, text: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while pm.logs().matches(text).count() < n {
        assert!(
            Instant::now() < deadline,
            "no {n}× {text:?} in the log within 10 s:\n{}",
            pm.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn attached(m: &Samples, iface: &str) -> f64 {
    assert!(
        m.has("portmap_interface_attached", &[("interface", iface)]),
        "no portmap_interface_attached for {iface}"
    );
    m.sum("portmap_interface_attached", &[("interface", iface)])
}

fn translated(pm: &Portmap, ns: &Netns) -> f64 {
    pm.metrics(ns).unwrap().sum(
        "portmap_packets_total",
        &[("frontend", "*:8080/tcp"), ("direction", "request")],
    )
}

/// Nothing listens on the node's port 8080: an answer from b0 there means
/// XDP translated the request.
fn assert_published(topo: &Topology) {
    let body = http_get(&topo.client, sa(NODE_V4, 8080)).unwrap();
    assert_eq!(served_by(&body), "b0");
}

#[test]
fn an_interface_deleted_and_recreated_is_attached_again() {
    let (topo, _server) = one_backend("ifback");
    let pm = Portmap::start(&topo.node, &PUBLISH).unwrap();
    assert_published(&topo);
    assert_eq!(attached(&pm.metrics(&topo.node).unwrap(), NODE_IFACE), 1.0);
    assert!(
        pm.list(&[]).unwrap().contains("eth-c (attached)"),
        "{}",
        pm.list(&[]).unwrap()
    );

    delete_client_link(&topo);
    wait_for_log(&pm, "eth-c: the interface is gone; detached", 1);
    assert_eq!(attached(&pm.metrics(&topo.node).unwrap(), NODE_IFACE), 0.0);
    let list = pm.list(&[]).unwrap();
    assert!(list.contains("eth-c (detached)"), "{list}");
    let json: serde_json::Value = serde_json::from_str(&pm.list(&["--json"]).unwrap()).unwrap();
    assert_eq!(json["interfaces"][0]["attached"], false, "{json}");

    recreate_client_link(&topo);
    wait_for_log(&pm, "eth-c: the interface is there", 1);
    let before = translated(&pm, &topo.node);
    // New connections and a long-lived one, all through the new interface.
    for _ in 0..5 {
        assert_published(&topo);
    }
    let mut conn = LineConn::open(&topo.client, sa(NODE_V4, 8080)).unwrap();
    for i in 0..10 {
        let answer = conn.ask(&format!("line {i}")).unwrap();
        assert_eq!(served_by(&answer), "b0", "{answer}");
    }
    assert!(
        translated(&pm, &topo.node) >= before + 5.0,
        "the requests on the recreated interface were translated"
    );
    assert_eq!(attached(&pm.metrics(&topo.node).unwrap(), NODE_IFACE), 1.0);
    assert!(pm.list(&[]).unwrap().contains("eth-c (attached)"));

    // Gone and back once more: following does not stop after one round.
    delete_client_link(&topo);
    wait_for_log(&pm, "eth-c: the interface is gone; detached", 2);
    recreate_client_link(&topo);
    wait_for_log(&pm, "eth-c: the interface is there", 2);
    assert_published(&topo);
}

/// A `--backend-iface` that goes and comes back gets its reply program and
/// its fast-path entry again: replies are translated in XDP and requests
/// redirected into it.
#[test]
fn a_backend_interface_that_comes_back_gets_its_fast_path() {
    let (topo, _server) = one_backend("ifbe");
    let enable_napi = |topo: &Topology| {
        topo.backends[0]
            .exec("ethtool", &["-K", "eth-n", "gro", "on"])
            .unwrap();
    };
    enable_napi(&topo);
    let args = [
        "--iface",
        NODE_IFACE,
        "--backend-iface",
        "eth-b0",
        "-p",
        "8080:198.19.0.2:3000",
    ];
    let pm = Portmap::start(&topo.node, &args).unwrap();
    assert_published(&topo);

    topo.node.ip(&["link", "del", "eth-b0"]).unwrap();
    wait_for_log(&pm, "eth-b0: the interface is gone; detached", 1);
    assert_eq!(attached(&pm.metrics(&topo.node).unwrap(), "eth-b0"), 0.0);
    assert!(
        pm.list(&[])
            .unwrap()
            .contains("eth-b0 (towards backends, detached)"),
        "{}",
        pm.list(&[]).unwrap()
    );

    let backend = &topo.backends[0];
    topo::link(
        &topo.node,
        "eth-b0",
        backend,
        "eth-n",
        LinkOptions::default(),
    )
    .unwrap();
    enable_napi(&topo);
    topo::addr(&topo.node, "198.19.0.1/24", "eth-b0").unwrap();
    topo::addr(backend, "198.19.0.2/24", "eth-n").unwrap();
    backend
        .ip(&["route", "add", "default", "via", "198.19.0.1"])
        .unwrap();
    wait_for_log(&pm, "eth-b0: the interface is there", 1);
    assert_eq!(attached(&pm.metrics(&topo.node).unwrap(), "eth-b0"), 1.0);

    let redirected = |pm: &Portmap| {
        pm.metrics(&topo.node).unwrap().sum(
            "portmap_datapath_events_total",
            &[("event", "fast_path_redirected")],
        )
    };
    // The first packets resolve the new link's neighbour; then XDP redirects.
    assert_published(&topo);
    let before = redirected(&pm);
    let mut conn = LineConn::open(&topo.client, sa(NODE_V4, 8080)).unwrap();
    for i in 0..10 {
        let answer = conn.ask(&format!("line {i}")).unwrap();
        assert_eq!(served_by(&answer), "b0", "{answer}");
    }
    assert!(
        redirected(&pm) >= before + 10.0,
        "requests are redirected into the recreated backend interface ({before} then {})",
        redirected(&pm)
    );
}

/// Restart after the machine changed: the interface the pinned links were
/// on was deleted and recreated while no daemon ran. The next daemon
/// replaces the severed links and adopts the maps (counters and flows carry
/// on), instead of failing on `bpf_link_update`.
#[test]
fn a_restart_after_the_interface_was_recreated_replaces_severed_links() {
    let (topo, _server) = one_backend("ifrst");
    let mut args = PUBLISH.to_vec();
    args.push("--keep-datapath");
    let pm = Portmap::start(&topo.node, &args).unwrap();
    for _ in 0..3 {
        assert_published(&topo);
    }
    let before = translated(&pm, &topo.node);
    assert!(before >= 3.0);
    let mut child = pm.abandon().expect("running");
    child.kill().unwrap();
    child.wait().unwrap();

    delete_client_link(&topo);
    recreate_client_link(&topo);

    let pm = Portmap::start(&topo.node, &args).unwrap();
    let logs = pm.logs();
    assert!(logs.contains("adopted the dataplane"), "{logs}");
    assert!(
        logs.contains("eth-c: the pinned xdp link is severed")
            && logs.contains("eth-c: the pinned tc-egress link is severed"),
        "{logs}"
    );
    assert_published(&topo);
    let after = translated(&pm, &topo.node);
    assert!(
        after > before,
        "the pinned counters carry on: {before} then {after}"
    );
    assert_eq!(attached(&pm.metrics(&topo.node).unwrap(), NODE_IFACE), 1.0);
}

/// Under `ip netns exec` (a private /sys: no cgroup2, nothing can be
/// mounted there), socket-level load balancing is off with one warning, and
/// the packet path runs.
#[test]
fn without_a_cgroup2_hierarchy_the_packet_path_runs_and_says_socket_lb_is_off() {
    let (topo, _server) = one_backend("nocg");
    let pm = Portmap::start_under_ip_netns_exec(&topo.node, &PUBLISH).unwrap();
    assert_published(&topo);
    let logs = pm.logs();
    assert_eq!(
        logs.matches("socket-level load balancing is off").count(),
        1,
        "one warning:\n{logs}"
    );
    assert!(
        logs.contains("--cgroup PATH") && logs.contains("--no-socket-lb"),
        "the warning says how to choose:\n{logs}"
    );
    let m = pm.metrics(&topo.node).unwrap();
    assert!(m.has("portmap_socket_lb_enabled", &[]));
    assert_eq!(m.sum("portmap_socket_lb_enabled", &[]), 0.0);
    let list = pm.list(&[]).unwrap();
    assert!(
        list.contains("socket-level load balancing: off: no cgroup v2 hierarchy"),
        "{list}"
    );
    let json: serde_json::Value = serde_json::from_str(&pm.list(&["--json"]).unwrap()).unwrap();
    assert_eq!(json["socket_lb"]["enabled"], false, "{json}");
}
