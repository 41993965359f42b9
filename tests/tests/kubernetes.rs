//! `portmap run --manifests`: Kubernetes Services from manifests, end to end
//! through namespaces, with live edits.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use portmap_tests::{
    client::{
        LineConn, connect, http_get, local_seen, served_by, udp_ask, udp_exchange, udp_socket,
    },
    daemon::Portmap,
    kube::{Ep, ManifestDir, reloads, slice, wait_reloaded},
    load::Load,
    server::Server,
    topo::{NODE_IFACE, NODE_V4, NODE_V4_ALT, Topology, backend_v4, node_backend_if},
};

const SERVICE_CIDR: &str = "198.18.128.0/20";

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

fn b(i: usize) -> IpAddr {
    backend_v4(i)
}

/// `portmap run` on the node with the manifests in `dir`.
fn run(topo: &Topology, dir: &ManifestDir, extra: &[&str]) -> Portmap {
    let dir = dir.arg().to_str().unwrap().to_string();
    let mut args = vec![
        "--iface",
        NODE_IFACE,
        "--manifests",
        &dir,
        "--service-cidr",
        SERVICE_CIDR,
        "--node-name",
        "node-a",
    ];
    args.extend_from_slice(extra);
    Portmap::start(&topo.node, &args).unwrap()
}

fn servers(topo: &Topology, tcp: &[u16], udp: &[u16]) -> Vec<Server> {
    (0..topo.backends.len())
        .map(|i| {
            let t: Vec<SocketAddr> = tcp.iter().map(|p| SocketAddr::new(b(i), *p)).collect();
            let u: Vec<SocketAddr> = udp.iter().map(|p| SocketAddr::new(b(i), *p)).collect();
            Server::start(&topo.backends[i], &format!("b{i}"), &t, &u).unwrap()
        })
        .collect()
}

/// A ClusterIP Service `name` at `ip`, port 80 → 3000 (TCP, named "http")
/// and 53 → 3000 (UDP, "dns"), with extra spec lines.
fn service(name: &str, ip: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  clusterIP: {ip}\n{extra_spec}  ports:\n  - {{name: http, port: 80, targetPort: 3000, protocol: TCP}}\n  - {{name: dns, port: 53, targetPort: 3000, protocol: UDP}}\n"
    )
}

const PORTS: [(&str, u16, &str); 2] = [("http", 3000, "TCP"), ("dns", 3000, "UDP")];

#[test]
fn seed_example_nodeport_service_as_written() {
    let topo = Topology::new("seed", 1).unwrap();
    let _s = Server::start(&topo.backends[0], "b0", &[sa("198.19.0.2", 8080)], &[]).unwrap();
    let dir = ManifestDir::new("seed").unwrap();
    // The seed document's Pod and Service, verbatim, once the Pod has an IP.
    dir.write("banking.yaml", include_str!("../../examples/banking.yaml"))
        .unwrap();
    let pm = run(&topo, &dir, &[]);
    // <node-ip>:30001, on every node address.
    for node in [NODE_V4, NODE_V4_ALT] {
        let body = http_get(&topo.client, sa(node, 30001)).unwrap();
        assert_eq!(local_seen(&body), Some(sa("198.19.0.2", 8080)), "{body}");
    }
    // And the ClusterIP the daemon assigned, as `portmap list` shows it.
    let list: serde_json::Value = serde_json::from_str(&pm.list(&["--json"]).unwrap()).unwrap();
    let cluster_ip = list["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["service"] == "default/backend-service")
        .flat_map(|s| s["frontends"].as_array().unwrap().iter())
        .filter_map(|f| {
            f["frontend"]
                .as_str()?
                .strip_suffix(":80/tcp")
                .map(str::to_string)
        })
        .next()
        .expect("a ClusterIP frontend on port 80");
    let ip: IpAddr = cluster_ip.parse().unwrap();
    assert!(
        pm.logs().contains(&format!("clusterIP {ip} (assigned)")),
        "{}",
        pm.logs()
    );
    assert_eq!(
        served_by(&http_get(&topo.client, SocketAddr::new(ip, 80)).unwrap()),
        "b0"
    );
    let table = pm.list(&[]).unwrap();
    assert!(
        table.contains("default/backend-service") && table.contains("*:30001/tcp"),
        "{table}"
    );
}

#[test]
fn every_service_type_named_ports_and_multiple_ports() {
    let topo = Topology::new("types", 1).unwrap();
    let _s = Server::start(
        &topo.backends[0],
        "b0",
        &[sa("198.19.0.2", 8080)],
        &[sa("198.19.0.2", 5353)],
    )
    .unwrap();
    let dir = ManifestDir::new("types").unwrap();
    dir.write(
        "web.yaml",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\nspec:\n  type: LoadBalancer\n  clusterIP: 198.18.128.50\n  selector: {{app: web}}\n  ports:\n  - {{name: http, port: 80, targetPort: web-port, nodePort: 30080, protocol: TCP}}\n  - {{name: dns, port: 53, targetPort: 5353, nodePort: 30053, protocol: UDP}}\nstatus:\n  loadBalancer:\n    ingress: [{{ip: 198.18.200.10}}]\n---\n{}",
            slice("web", "web-1", &[Ep::ready(b(0), "node-a")], &[("http", 8080, "TCP"), ("dns", 5353, "UDP")])
        ),
    )
    .unwrap();
    let pm = run(&topo, &dir, &[]);
    for fe in [
        sa("198.18.128.50", 80),
        sa(NODE_V4, 30080),
        sa(NODE_V4_ALT, 30080),
        sa("198.18.200.10", 80),
    ] {
        let body = http_get(&topo.client, fe).unwrap();
        assert_eq!(
            local_seen(&body),
            Some(sa("198.19.0.2", 8080)),
            "{fe}: {body}"
        );
    }
    for fe in [
        sa("198.18.128.50", 53),
        sa(NODE_V4, 30053),
        sa("198.18.200.10", 53),
    ] {
        let (answer, from) = udp_exchange(&topo.client, fe, "q").unwrap();
        assert_eq!(from, fe, "UDP answer from the address used");
        assert_eq!(local_seen(&answer), Some(sa("198.19.0.2", 5353)));
    }
    let m = pm.metrics(&topo.node).unwrap();
    for port_name in ["http", "dns"] {
        let labels = [
            ("service", "default/web"),
            ("port_name", port_name),
            ("direction", "request"),
        ];
        assert!(
            m.sum("portmap_packets_total", &labels) > 0.0,
            "{port_name} counted per frontend"
        );
        assert!(
            m.sum("portmap_backend_packets_total", &labels) > 0.0,
            "{port_name} counted per backend"
        );
    }
    assert!(m.has(
        "portmap_backend_packets_total",
        &[("backend", "198.19.0.2:8080"), ("service", "default/web")]
    ));
    let table = pm.list(&[]).unwrap();
    assert!(
        table.contains("default/web:http") && table.contains("198.18.200.10:80/tcp"),
        "{table}"
    );
}

#[test]
fn a_thousand_flows_spread_over_four_backends() {
    let topo = Topology::new("spread", 4).unwrap();
    let _s = servers(&topo, &[], &[3000]);
    let dir = ManifestDir::new("spread").unwrap();
    let eps: Vec<Ep> = (0..4).map(|i| Ep::ready(b(i), "node-a")).collect();
    dir.write(
        "svc.yaml",
        &format!(
            "{}---\n{}",
            service("spread", "198.18.128.60", ""),
            slice("spread", "spread-1", &eps, &PORTS)
        ),
    )
    .unwrap();
    let _pm = run(&topo, &dir, &[]);
    let vip = sa("198.18.128.60", 53);
    let mut per_backend: BTreeMap<String, u32> = BTreeMap::new();
    // 1000 distinct flows: one source port each, chosen so the run repeats.
    let sockets: Vec<_> = (0..1000u16)
        .map(|i| {
            topo.client
                .run(move || std::net::UdpSocket::bind(("0.0.0.0", 40000 + i)))
                .unwrap()
        })
        .collect();
    for s in &sockets {
        s.set_read_timeout(Some(Duration::from_millis(700)))
            .unwrap();
        let (answer, _) = udp_ask(s, vip, "x").unwrap();
        *per_backend
            .entry(served_by(&answer).to_string())
            .or_default() += 1;
    }
    assert_eq!(per_backend.len(), 4, "{per_backend:?}");
    for (backend, n) in &per_backend {
        assert!(
            (213..=287).contains(n),
            "{backend} got {n} of 1000 flows (250 ± 15 %): {per_backend:?}"
        );
    }
}

#[test]
fn client_ip_affinity_keeps_a_client_on_one_backend() {
    let topo = Topology::new("affin", 4).unwrap();
    let _s = servers(&topo, &[3000], &[]);
    let dir = ManifestDir::new("affin").unwrap();
    let eps: Vec<Ep> = (0..4).map(|i| Ep::ready(b(i), "node-a")).collect();
    let spec =
        "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}\n";
    dir.write(
        "svc.yaml",
        &format!(
            "{}---\n{}",
            service("sticky", "198.18.128.70", spec),
            slice("sticky", "sticky-1", &eps, &PORTS)
        ),
    )
    .unwrap();
    let pm = run(&topo, &dir, &[]);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        seen.insert(
            served_by(&http_get(&topo.client, sa("198.18.128.70", 80)).unwrap()).to_string(),
        );
    }
    assert_eq!(seen.len(), 1, "one client, one backend: {seen:?}");
    let hits = pm.metrics(&topo.node).unwrap().sum(
        "portmap_datapath_events_total",
        &[("event", "affinity_hit")],
    );
    assert!(hits >= 39.0, "{hits} affinity hits");
}

#[test]
fn traffic_policy_local_and_services_without_endpoints() {
    let topo = Topology::new("local", 2).unwrap();
    let _s = servers(&topo, &[3000], &[]);
    let dir = ManifestDir::new("local").unwrap();
    // b0 runs on this node (node-a), b1 on another.
    let eps = [Ep::ready(b(0), "node-a"), Ep::ready(b(1), "node-b")];
    let local = "  type: NodePort\n  externalTrafficPolicy: Local\n";
    let mut yaml = format!(
        "{}---\n{}",
        service("local", "198.18.128.80", local),
        slice("local", "local-1", &eps, &PORTS)
    );
    yaml = yaml.replace(
        "targetPort: 3000, protocol: TCP}",
        "targetPort: 3000, protocol: TCP, nodePort: 30100}",
    );
    let mut remote = format!(
        "---\n{}---\n{}",
        service("remote", "198.18.128.81", local),
        slice("remote", "remote-1", &[Ep::ready(b(1), "node-b")], &PORTS)
    );
    remote = remote.replace(
        "targetPort: 3000, protocol: TCP}",
        "targetPort: 3000, protocol: TCP, nodePort: 30101}",
    );
    let empty = format!("---\n{}", service("empty", "198.18.128.82", ""));
    dir.write("svc.yaml", &(yaml + &remote + &empty)).unwrap();
    // b1 stands for a pod of another node: its flows are SNATed, and its
    // replies come back on the interface towards it, which must be an
    // --iface for them to be turned around.
    let pm = run(&topo, &dir, &["--iface", &node_backend_if(1)]);

    // NodePort with eTP Local: only the local endpoint.
    for _ in 0..20 {
        assert_eq!(
            served_by(&http_get(&topo.client, sa(NODE_V4, 30100)).unwrap()),
            "b0"
        );
    }
    // The ClusterIP keeps both (internalTrafficPolicy is Cluster).
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        seen.insert(
            served_by(&http_get(&topo.client, sa("198.18.128.80", 80)).unwrap()).to_string(),
        );
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    // eTP Local with no endpoint here: dropped (the connection times out).
    assert!(connect(&topo.client, sa(NODE_V4, 30101)).is_err());
    let m = pm.metrics(&topo.node).unwrap();
    assert!(
        m.sum(
            "portmap_datapath_events_total",
            &[("event", "dropped_no_backend")]
        ) >= 1.0
    );
    // No endpoints at all: refused, like kube-proxy's REJECT, not left to
    // time out. (The answer can beat connect() to the socket lock, which
    // makes it a soft error and costs one SYN retransmission; hence no
    // sub-second bound.)
    let err = connect(&topo.client, sa("198.18.128.82", 80)).unwrap_err();
    let refused = err
        .chain()
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|e| e.kind() == std::io::ErrorKind::ConnectionRefused);
    assert!(refused, "refused, not timed out: {err:#}");
    let m = pm.metrics(&topo.node).unwrap();
    assert!(
        m.sum("portmap_datapath_events_total", &[("event", "rejected")]) >= 1.0,
        "answered by portmap's reject"
    );
    let udp = udp_socket(&topo.client, sa("198.18.128.82", 53)).unwrap();
    udp.connect(sa("198.18.128.82", 53)).unwrap();
    let mut buf = [0u8; 64];
    // Every datagram is answered with a port unreachable (counted above); on
    // a loaded machine the client's veth may take its time to deliver it, so
    // a patient read and a few tries, and never an answer.
    udp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let refused = (0..4).any(|_| {
        udp.send(b"q").unwrap();
        match udp.recv(&mut buf) {
            Ok(n) => panic!("a service without endpoints answered: {:?}", &buf[..n]),
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        }
    });
    assert!(refused, "ICMP port unreachable for UDP");
}

#[test]
fn terminating_endpoint_keeps_its_connections_and_gets_no_new_ones() {
    let topo = Topology::new("term", 2).unwrap();
    let _s = servers(&topo, &[3000], &[]);
    let dir = ManifestDir::new("term").unwrap();
    let both = [Ep::ready(b(0), "node-a"), Ep::ready(b(1), "node-a")];
    dir.write(
        "svc.yaml",
        &format!(
            "{}---\n{}",
            service("term", "198.18.128.90", ""),
            slice("term", "term-1", &both, &PORTS)
        ),
    )
    .unwrap();
    let pm = run(&topo, &dir, &[]);
    // Open connections until one is on b0.
    let mut on_b0 = None;
    for _ in 0..40 {
        let mut conn = LineConn::open(&topo.client, sa("198.18.128.90", 80)).unwrap();
        if served_by(&conn.ask("hello").unwrap()) == "b0" {
            on_b0 = Some(conn);
            break;
        }
    }
    let mut conn = on_b0.expect("a connection on b0 within 40 tries");

    let before = reloads(&pm, &topo.node, "success").unwrap();
    let draining = [Ep::terminating(b(0), "node-a"), Ep::ready(b(1), "node-a")];
    dir.write(
        "svc.yaml",
        &format!(
            "{}---\n{}",
            service("term", "198.18.128.90", ""),
            slice("term", "term-1", &draining, &PORTS)
        ),
    )
    .unwrap();
    wait_reloaded(&pm, &topo.node, before).unwrap();

    for i in 0..10 {
        let answer = conn.ask(&format!("still {i}")).unwrap();
        assert_eq!(
            served_by(&answer),
            "b0",
            "the open connection stays on the terminating endpoint"
        );
    }
    for _ in 0..30 {
        assert_eq!(
            served_by(&http_get(&topo.client, sa("198.18.128.90", 80)).unwrap()),
            "b1",
            "new connections avoid it"
        );
    }
}

#[test]
fn live_edits_under_traffic_fail_no_request() {
    let topo = Topology::new("live", 3).unwrap();
    let _s = servers(&topo, &[3000], &[3000]);
    let dir = ManifestDir::new("live").unwrap();
    let write = |eps: &[Ep]| {
        dir.write(
            "svc.yaml",
            &format!(
                "{}---\n{}",
                service("live", "198.18.128.100", ""),
                slice("live", "live-1", eps, &PORTS)
            ),
        )
        .unwrap()
    };
    write(&[Ep::ready(b(0), "node-a"), Ep::ready(b(1), "node-a")]);
    let pm = run(&topo, &dir, &[]);
    let load = Load::start(
        &topo.client,
        sa("198.18.128.100", 80),
        sa("198.18.128.100", 53),
        0,
    )
    .unwrap();
    load.wait_for(30);
    // A rolling update: add b2, drain b0, remove it, bring it back.
    let steps: [&[Ep]; 4] = [
        &[
            Ep::ready(b(0), "node-a"),
            Ep::ready(b(1), "node-a"),
            Ep::ready(b(2), "node-a"),
        ],
        &[
            Ep::terminating(b(0), "node-a"),
            Ep::ready(b(1), "node-a"),
            Ep::ready(b(2), "node-a"),
        ],
        &[Ep::ready(b(1), "node-a"), Ep::ready(b(2), "node-a")],
        &[
            Ep::ready(b(0), "node-a"),
            Ep::ready(b(1), "node-a"),
            Ep::ready(b(2), "node-a"),
        ],
    ];
    for eps in steps {
        let before = reloads(&pm, &topo.node, "success").unwrap();
        write(eps);
        wait_reloaded(&pm, &topo.node, before).unwrap();
        load.wait_for(30);
    }
    load.stop().assert_no_failures();
}

#[test]
fn a_bad_edit_leaves_traffic_untouched() {
    let topo = Topology::new("bad", 2).unwrap();
    let _s = servers(&topo, &[3000], &[]);
    let dir = ManifestDir::new("bad").unwrap();
    let good = format!(
        "{}---\n{}",
        service("svc", "198.18.128.110", ""),
        slice("svc", "svc-1", &[Ep::ready(b(0), "node-a")], &PORTS)
    );
    dir.write("svc.yaml", &good).unwrap();
    let pm = run(&topo, &dir, &[]);
    assert_eq!(
        served_by(&http_get(&topo.client, sa("198.18.128.110", 80)).unwrap()),
        "b0"
    );

    // A port out of range, moving the service to b1: refused as a whole.
    let bad = good
        .replace("port: 80,", "port: 70000,")
        .replace(&b(0).to_string(), &b(1).to_string());
    dir.write("svc.yaml", &bad).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while reloads(&pm, &topo.node, "failure").unwrap() < 1.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let m = pm.metrics(&topo.node).unwrap();
    assert_eq!(m.sum("portmap_config_last_reload_successful", &[]), 0.0);
    let logs = pm.logs();
    assert!(
        logs.contains("svc.yaml")
            && logs.contains("Service default/svc")
            && logs.contains("spec.ports[0].port")
            && logs.contains("70000"),
        "{logs}"
    );
    for _ in 0..10 {
        assert_eq!(
            served_by(&http_get(&topo.client, sa("198.18.128.110", 80)).unwrap()),
            "b0",
            "the last good state stays"
        );
    }
    // Fixed: applied.
    let before = reloads(&pm, &topo.node, "success").unwrap();
    dir.write(
        "svc.yaml",
        &good.replace(&b(0).to_string(), &b(1).to_string()),
    )
    .unwrap();
    wait_reloaded(&pm, &topo.node, before).unwrap();
    assert_eq!(
        served_by(&http_get(&topo.client, sa("198.18.128.110", 80)).unwrap()),
        "b1"
    );
}
