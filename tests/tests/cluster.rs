//! Backends on other nodes: a cluster of three node namespaces with two pods
//! each (see `portmap_tests::cluster`), one `portmap run` per node, all
//! reading the same manifests with their own `--node-name`. A flow from the
//! client to a node whose endpoint runs on another node is SNATed (the pod
//! sees that node's address, the client sees the frontend it used); a flow
//! to a local endpoint keeps the client's address; `externalTrafficPolicy:
//! Local` never SNATs.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use portmap_testkit::topo::{LinkOptions, Offloads};
use portmap_tests::{
    client::{LineConn, connect, http_get, peer_seen, served_by, udp_ask, udp_socket},
    cluster::{
        BULK, Cluster, HTTP, NODE_NAMES, UNDERLAY_IF, at, client_ip, node_ip, pod_ip, servers,
        service, start_portmaps,
    },
    daemon::Portmap,
    kube::ManifestDir,
    transfer::{
        content::{Blob, DataDir, sha256_file},
        curl::{Client, download, upload, url},
        nginx::Nginx,
    },
};

#[test]
fn remote_endpoints_are_reached_through_snat_local_ones_keep_the_client() {
    remote_endpoints_through_snat(Offloads::Default);
}

/// The same with every checksum computed in full before it leaves, so a
/// checksum the SNAT rewrites got wrong shows.
#[test]
fn remote_endpoints_through_snat_with_tx_checksum_offload_off() {
    remote_endpoints_through_snat(Offloads::TxCsumOff);
}

fn remote_endpoints_through_snat(offloads: Offloads) {
    let links = LinkOptions {
        offloads,
        ..LinkOptions::default()
    };
    let cluster = Cluster::build("cls", links).expect("cluster");
    let _servers = servers(&cluster);
    let data = DataDir::new("cls").unwrap();
    let root = data.sub("root").unwrap();
    let blob = Blob::write(root.join("16m.bin"), 16 << 20, 13).unwrap();
    let work = data.sub("nginx").unwrap();
    let b0 = [pod_ip(1, 0, false), pod_ip(1, 0, true)].map(|ip| SocketAddr::new(ip, BULK));
    let nginx = Nginx::start(&cluster.pods[1][0], &b0, &root, &work).expect("nginx");

    let manifests = ManifestDir::new("cls").unwrap();
    // The only endpoint runs on node b.
    manifests
        .write("web.yaml", &service("web", 10, 30080, "", &[(1, 0)]))
        .unwrap();
    let pms = start_portmaps(&cluster, &manifests, &[]);

    for v6 in [false, true] {
        let client = client_ip(v6);
        // Through node a: SNATed. The pod sees node a; the client hears
        // from node a's nodePort.
        let answer = http_get(&cluster.client, at(0, v6, 30080)).unwrap();
        assert_eq!(served_by(&answer), "b0", "{answer}");
        assert_eq!(
            peer_seen(&answer).map(|p| p.ip()),
            Some(node_ip(0, v6)),
            "the pod sees node a (SNAT): {answer}"
        );
        let socket = udp_socket(&cluster.client, at(0, v6, 30081)).unwrap();
        let (answer, from) = udp_ask(&socket, at(0, v6, 30081), "hello").unwrap();
        assert_eq!(from, at(0, v6, 30081), "the reply comes from the frontend");
        assert_eq!(peer_seen(&answer).map(|p| p.ip()), Some(node_ip(0, v6)));

        // Through node b, where the endpoint runs: the client's address
        // reaches it.
        let answer = http_get(&cluster.client, at(1, v6, 30080)).unwrap();
        assert_eq!(peer_seen(&answer).map(|p| p.ip()), Some(client), "{answer}");

        // 16 MiB through node a, checked at the far end.
        let fetched = download(
            Client::Remote(&cluster.client),
            &url(at(0, v6, 30082), blob.name()),
        )
        .unwrap_or_else(|e| panic!("download through node a (v6 {v6}): {e:#}"));
        assert_eq!(fetched.bytes, blob.size);
        assert_eq!(
            fetched.sha256, blob.sha256,
            "content through SNAT (v6 {v6})"
        );
        // And 16 MiB the other way: the client's segments are the SNATed
        // requests tc ingress rewrites.
        let name = format!("up-{v6}.bin");
        upload(
            Client::Remote(&cluster.client),
            &blob.path,
            &url(at(0, v6, 30082), &format!("upload/{name}")),
        )
        .unwrap_or_else(|e| panic!("upload through node a (v6 {v6}): {e:#}"));
        assert_eq!(
            sha256_file(&nginx.uploaded(&name)).unwrap(),
            blob.sha256,
            "uploaded content through SNAT (v6 {v6})"
        );
    }

    let node_a = &cluster.nodes[0];
    let m = pms[0].metrics(node_a).unwrap();
    for v6 in [false, true] {
        let backend = SocketAddr::new(pod_ip(1, 0, v6), HTTP).to_string();
        let from = node_ip(0, v6).to_string();
        let labels = [("backend", backend.as_str()), ("snat_from", from.as_str())];
        assert_eq!(m.sum("portmap_backend_snat", &labels), 1.0, "{backend}");
        assert!(
            m.sum(
                "portmap_backend_packets_total",
                &[("backend", backend.as_str()), ("direction", "reply")]
            ) > 0.0,
            "replies of {backend} counted on node a"
        );
    }
    assert_eq!(
        m.sum(
            "portmap_datapath_events_total",
            &[("event", "snat_exhausted")]
        ),
        0.0
    );
    // Node b's own endpoint is not SNATed there.
    let m = pms[1].metrics(&cluster.nodes[1]).unwrap();
    // Node a's marks for its tc programs stay on node a.
    assert_eq!(
        m.sum(
            "portmap_datapath_events_total",
            &[("event", "rewrite_failed")]
        ),
        0.0
    );
    let backend = SocketAddr::new(pod_ip(1, 0, false), HTTP).to_string();
    assert_eq!(
        m.sum(
            "portmap_backend_snat",
            &[("backend", backend.as_str()), ("snat_from", "")]
        ),
        0.0
    );
    assert!(m.has(
        "portmap_backend_snat",
        &[("backend", backend.as_str()), ("snat_from", "")]
    ));
}

#[test]
fn local_traffic_policy_keeps_the_client_and_drops_without_a_local_endpoint() {
    let cluster = Cluster::build("cll", LinkOptions::default()).expect("cluster");
    let _servers = servers(&cluster);
    let manifests = ManifestDir::new("cll").unwrap();
    manifests
        .write(
            "local.yaml",
            &service(
                "local",
                11,
                30090,
                "  externalTrafficPolicy: Local\n",
                &[(0, 0), (1, 0)],
            ),
        )
        .unwrap();
    let _pms = start_portmaps(&cluster, &manifests, &[&["--masquerade-all"], &[], &[]]);
    for v6 in [false, true] {
        for node in [0, 1] {
            // Even under --masquerade-all (node a): Local keeps the client.
            let answer = http_get(&cluster.client, at(node, v6, 30090)).unwrap();
            assert_eq!(served_by(&answer), format!("{}0", &NODE_NAMES[node][5..]));
            assert_eq!(
                peer_seen(&answer).map(|p| p.ip()),
                Some(client_ip(v6)),
                "{answer}"
            );
        }
        // Node c has no local endpoint: new flows are dropped there.
        assert!(
            connect(&cluster.client, at(2, v6, 30090)).is_err(),
            "node c has no local endpoint (v6 {v6})"
        );
    }
}

#[test]
fn a_load_balancer_ip_spreads_over_pods_on_every_node() {
    let cluster = Cluster::build("clb", LinkOptions::default()).expect("cluster");
    let _servers = servers(&cluster);
    let manifests = ManifestDir::new("clb").unwrap();
    let every: Vec<(usize, usize)> = (0..3).flat_map(|n| (0..2).map(move |p| (n, p))).collect();
    let lb = service("lb", 12, 30100, "", &every).replace(
        "type: NodePort",
        "type: LoadBalancer\n  externalIPs: [198.18.200.2]",
    ) + "";
    let lb = lb.replacen(
        "---\n",
        "status:\n  loadBalancer:\n    ingress: [{ip: 198.18.200.1}]\n---\n",
        1,
    );
    manifests.write("lb.yaml", &lb).unwrap();
    let _pms = start_portmaps(&cluster, &manifests, &[]);
    // The cloud's load balancer sends the LB IP to node a, the external IP
    // to node b.
    cluster
        .client
        .ip(&[
            "route",
            "add",
            "198.18.200.1/32",
            "via",
            &node_ip(0, false).to_string(),
        ])
        .unwrap();
    cluster
        .client
        .ip(&[
            "route",
            "add",
            "198.18.200.2/32",
            "via",
            &node_ip(1, false).to_string(),
        ])
        .unwrap();
    for (vip, node) in [("198.18.200.1", 0usize), ("198.18.200.2", 1)] {
        let to = SocketAddr::new(vip.parse().unwrap(), 80);
        let mut seen = BTreeSet::new();
        for _ in 0..80 {
            let answer = http_get(&cluster.client, to).unwrap();
            let pod = served_by(&answer).to_string();
            let peer = peer_seen(&answer).map(|p| p.ip());
            // Pods on the node the client reached see the client; the others
            // see that node.
            let here = pod.starts_with(&NODE_NAMES[node][5..]);
            let expected: IpAddr = if here {
                client_ip(false)
            } else {
                node_ip(node, false)
            };
            assert_eq!(peer, Some(expected), "{vip} → {pod}: {answer}");
            seen.insert(pod);
        }
        assert_eq!(
            seen.len(),
            6,
            "{vip}: every pod on every node serves: {seen:?}"
        );
    }
}

#[test]
fn exhausted_snat_ports_refuse_new_flows_until_flows_end() {
    let cluster = Cluster::build("clx", LinkOptions::default()).expect("cluster");
    let _servers = servers(&cluster);
    let manifests = ManifestDir::new("clx").unwrap();
    manifests
        .write("web.yaml", &service("web", 13, 30110, "", &[(1, 0)]))
        .unwrap();
    let tiny = [
        "--snat-port-range",
        "62000-62001",
        "--tcp-closing-timeout",
        "1s",
        "--tcp-syn-timeout",
        "2s",
    ];
    let pms = start_portmaps(&cluster, &manifests, &[&tiny]);
    let node_a = &cluster.nodes[0];
    let frontend = at(0, false, 30110);

    let mut held: Vec<LineConn> = (0..2)
        .map(|_| LineConn::open(&cluster.client, frontend).expect("a port is free"))
        .collect();
    for conn in &mut held {
        let answer = conn.ask("hi").unwrap();
        let port = peer_seen(&answer).expect("peer").port();
        assert!(
            (62000..=62001).contains(&port),
            "SNAT port {port} of the range"
        );
    }
    assert!(
        connect(&cluster.client, frontend).is_err(),
        "a third flow finds no free port"
    );
    let m = pms[0].metrics(node_a).unwrap();
    assert!(
        m.sum(
            "portmap_datapath_events_total",
            &[("event", "snat_exhausted")]
        ) >= 1.0
    );
    // The established flows are unharmed.
    for conn in &mut held {
        assert_eq!(served_by(&conn.ask("still there?").unwrap()), "b0");
    }
    // Another protocol has ports of its own.
    let (answer, _) = udp_ask(
        &udp_socket(&cluster.client, at(0, false, 30111)).unwrap(),
        at(0, false, 30111),
        "udp",
    )
    .unwrap();
    assert_eq!(served_by(&answer), "b0");

    // Once the flows end, garbage collection (every 10 s) frees their ports.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match http_get(&cluster.client, frontend) {
            Ok(answer) => {
                assert_eq!(served_by(&answer), "b0");
                break;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("no port freed within 30 s: {e:#}\n{}", pms[0].logs()),
        }
    }
    assert!(
        pms[0].logs().contains("no free SNAT port"),
        "the refusals are in the log:\n{}",
        pms[0].logs()
    );
}

#[test]
fn snated_flows_carry_on_across_a_kill_and_restart() {
    let cluster = Cluster::build("clr", LinkOptions::default()).expect("cluster");
    let _servers = servers(&cluster);
    let manifests = ManifestDir::new("clr").unwrap();
    manifests
        .write("web.yaml", &service("web", 14, 30120, "", &[(1, 0)]))
        .unwrap();
    let mut pms = start_portmaps(&cluster, &manifests, &[]);
    let node_a = &cluster.nodes[0];
    let mut conns: Vec<LineConn> = [false, true]
        .iter()
        .map(|v6| LineConn::open(&cluster.client, at(0, *v6, 30120)).unwrap())
        .collect();
    let udp: Vec<_> = [false, true]
        .iter()
        .map(|v6| {
            (
                udp_socket(&cluster.client, at(0, *v6, 30121)).unwrap(),
                at(0, *v6, 30121),
            )
        })
        .collect();
    let mut before = Vec::new();
    for conn in &mut conns {
        before.push(peer_seen(&conn.ask("before").unwrap()).expect("peer"));
    }

    // kill -9: the pinned programs and maps go on forwarding alone.
    let pm = pms.remove(0);
    let pins = pm.pins.clone();
    let mut child = pm.abandon().expect("running");
    child.kill().unwrap();
    child.wait().unwrap();
    for (conn, peer) in conns.iter_mut().zip(&before) {
        let answer = conn.ask("while down").unwrap();
        assert_eq!(peer_seen(&answer), Some(*peer), "same SNAT port while down");
    }
    for (socket, to) in &udp {
        let (_, from) = udp_ask(socket, *to, "while down").unwrap();
        assert_eq!(from, *to);
    }

    // A new daemon adopts the pinned state: the flows keep their ports.
    let dir = manifests.arg().to_str().unwrap().to_string();
    let restarted = Portmap::start(
        node_a,
        &[
            "--iface",
            UNDERLAY_IF,
            "--manifests",
            &dir,
            "--node-name",
            NODE_NAMES[0],
            "--service-cidr",
            "198.18.128.0/20",
            "--service-cidr",
            "2001:db8:ffff::/112",
        ],
    )
    .unwrap();
    assert_eq!(restarted.pins, pins);
    for (conn, peer) in conns.iter_mut().zip(&before) {
        let answer = conn.ask("after").unwrap();
        assert_eq!(
            peer_seen(&answer),
            Some(*peer),
            "same SNAT port after restart"
        );
    }
    for v6 in [false, true] {
        let answer = http_get(&cluster.client, at(0, v6, 30120)).unwrap();
        assert_eq!(peer_seen(&answer).map(|p| p.ip()), Some(node_ip(0, v6)));
    }
    assert!(
        restarted.logs().contains("adopted the dataplane"),
        "{}",
        restarted.logs()
    );
}

#[test]
fn a_pod_reaches_a_cluster_ip_whose_endpoint_is_on_another_node() {
    let cluster = Cluster::build("clp", LinkOptions::default()).expect("cluster");
    let _servers = servers(&cluster);
    let data = DataDir::new("clp").unwrap();
    let root = data.sub("root").unwrap();
    let blob = Blob::write(root.join("4m.bin"), 4 << 20, 17).unwrap();
    let work = data.sub("nginx").unwrap();
    let b0 = [pod_ip(1, 0, false), pod_ip(1, 0, true)].map(|ip| SocketAddr::new(ip, BULK));
    let _nginx = Nginx::start(&cluster.pods[1][0], &b0, &root, &work).expect("nginx");
    let manifests = ManifestDir::new("clp").unwrap();
    let svc =
        service("inner", 15, 30130, "", &[(1, 0)]).replace("type: NodePort", "type: ClusterIP");
    let svc = svc.replace(&format!(", nodePort: {}", 30130), "");
    let svc = svc
        .replace(&format!(", nodePort: {}", 30131), "")
        .replace(&format!(", nodePort: {}", 30132), "");
    manifests.write("inner.yaml", &svc).unwrap();
    // Node a translates what pod a0 sends, on the pod's veth (packet path),
    // and the connects of processes in a cgroup (socket path).
    let cg = portmap_tests::cgroup::Cgroup::new("clp").unwrap();
    let pms = start_portmaps(
        &cluster,
        &manifests,
        &[&["--iface", "p0", "--cgroup", cg.arg()]],
    );
    let pod = &cluster.pods[0][0];
    for v6 in [false, true] {
        let ip: IpAddr = if v6 {
            "2001:db8:ffff::15"
        } else {
            "198.18.128.15"
        }
        .parse()
        .unwrap();
        // Packet path: a socket of the pod, outside the cgroup.
        let answer = http_get(pod, SocketAddr::new(ip, 80)).unwrap();
        assert_eq!(served_by(&answer), "b0", "{answer}");
        assert_eq!(
            peer_seen(&answer).map(|p| p.ip()),
            Some(node_ip(0, v6)),
            "SNATed on node a: {answer}"
        );
        // Socket path: curl in the cgroup connects to the pod on node b
        // itself, from its own address; replies route back through node a.
        let fetched = download(
            Client::Node(pod, &cg),
            &url(SocketAddr::new(ip, 81), blob.name()),
        )
        .unwrap_or_else(|e| panic!("socket path (v6 {v6}): {e:#}"));
        assert_eq!(fetched.sha256, blob.sha256);
    }
    let m = pms[0].metrics(&cluster.nodes[0]).unwrap();
    assert!(
        m.sum(
            "portmap_datapath_events_total",
            &[("event", "flow_created")]
        ) >= 2.0,
        "the packet path created the pod's flows"
    );
}
