//! Direct server return on the cluster of namespaces (see
//! `portmap_tests::cluster`), portmap on every node with `--lb-mode dsr` or
//! `hybrid`: a flow from the client to node a whose endpoint runs on node b
//! reaches the pod with the client's address; the pod's replies leave node
//! b from node a's frontend, straight to the client (which has no route to
//! any pod: a reply from anywhere else is refused), and never pass node a.

use std::net::SocketAddr;

use portmap_testkit::topo::{LinkOptions, Offloads};
use portmap_tests::{
    client::{LineConn, http_get, peer_seen, served_by, udp_ask, udp_socket},
    cluster::{
        BULK, Cluster, HTTP, at, client_ip, node_ip, pod_ip, servers, service, start_portmap,
        start_portmaps,
    },
    daemon::Portmap,
    kube::ManifestDir,
    metrics::Samples,
    server::Server,
    transfer::{
        content::{Blob, DataDir, sha256_file},
        curl::{Client, download, upload, url},
        nginx::Nginx,
    },
};

#[test]
fn dsr_keeps_the_client_and_replies_leave_the_backends_node_from_the_frontend() {
    dsr_transfers(Offloads::Default);
}

/// The same with every checksum computed in full before it leaves, so a
/// checksum the option or the rewrites got wrong shows.
#[test]
fn dsr_with_tx_checksum_offload_off() {
    dsr_transfers(Offloads::TxCsumOff);
}

fn event(m: &Samples, name: &str) -> f64 {
    m.sum("portmap_datapath_events_total", &[("event", name)])
}

fn dsr_transfers(offloads: Offloads) {
    let links = LinkOptions {
        offloads,
        ..LinkOptions::default()
    };
    let cluster = Cluster::build("cld", links).expect("cluster");
    let _servers = servers(&cluster);
    let data = DataDir::new("cld").unwrap();
    let root = data.sub("root").unwrap();
    let blob = Blob::write(root.join("16m.bin"), 16 << 20, 19).unwrap();
    let work = data.sub("nginx").unwrap();
    let b0 = [pod_ip(1, 0, false), pod_ip(1, 0, true)].map(|ip| SocketAddr::new(ip, BULK));
    let nginx = Nginx::start(&cluster.pods[1][0], &b0, &root, &work).expect("nginx");

    let manifests = ManifestDir::new("cld").unwrap();
    // The only endpoint runs on node b.
    manifests
        .write("web.yaml", &service("web", 20, 30200, "", &[(1, 0)]))
        .unwrap();
    let dsr: &[&str] = &["--lb-mode", "dsr"];
    let pms = start_portmaps(&cluster, &manifests, &[dsr, dsr, dsr]);

    for v6 in [false, true] {
        let client = client_ip(v6);
        let answer = http_get(&cluster.client, at(0, v6, 30200)).unwrap();
        assert_eq!(served_by(&answer), "b0", "{answer}");
        assert_eq!(
            peer_seen(&answer).map(|p| p.ip()),
            Some(client),
            "the pod sees the client (DSR): {answer}"
        );
        let socket = udp_socket(&cluster.client, at(0, v6, 30201)).unwrap();
        for i in 0..5 {
            let (answer, from) = udp_ask(&socket, at(0, v6, 30201), &format!("hello {i}")).unwrap();
            assert_eq!(from, at(0, v6, 30201), "the reply comes from the frontend");
            assert_eq!(peer_seen(&answer).map(|p| p.ip()), Some(client));
        }

        // 16 MiB each way through node a, checked at the far end.
        let fetched = download(
            Client::Remote(&cluster.client),
            &url(at(0, v6, 30202), blob.name()),
        )
        .unwrap_or_else(|e| panic!("download through node a (v6 {v6}): {e:#}"));
        assert_eq!(fetched.bytes, blob.size);
        assert_eq!(fetched.sha256, blob.sha256, "content by DSR (v6 {v6})");
        let name = format!("up-{v6}.bin");
        upload(
            Client::Remote(&cluster.client),
            &blob.path,
            &url(at(0, v6, 30202), &format!("upload/{name}")),
        )
        .unwrap_or_else(|e| panic!("upload through node a (v6 {v6}): {e:#}"));
        assert_eq!(
            sha256_file(&nginx.uploaded(&name)).unwrap(),
            blob.sha256,
            "uploaded content by DSR (v6 {v6})"
        );
    }

    let a = pms[0].metrics(&cluster.nodes[0]).unwrap();
    for v6 in [false, true] {
        let backend = SocketAddr::new(pod_ip(1, 0, v6), HTTP).to_string();
        let labels = [("backend", backend.as_str())];
        assert_eq!(a.sum("portmap_backend_dsr", &labels), 1.0, "{backend}");
        assert_eq!(a.sum("portmap_backend_snat", &labels), 0.0, "{backend}");
        let requests = [("backend", backend.as_str()), ("direction", "request")];
        assert!(a.sum("portmap_backend_packets_total", &requests) > 0.0);
        // The replies never came back through node a.
        let replies = [("backend", backend.as_str()), ("direction", "reply")];
        assert_eq!(
            a.sum("portmap_backend_packets_total", &replies),
            0.0,
            "{backend}"
        );
    }
    // HTTP and bulk connections, 2 families, plus the UDP datagrams.
    assert!(event(&a, "dsr_option_added") >= 2.0 * 3.0 + 10.0);
    assert_eq!(event(&a, "dsr_option_skipped"), 0.0);
    assert_eq!(event(&a, "snat_exhausted"), 0.0);

    let b = pms[1].metrics(&cluster.nodes[1]).unwrap();
    assert!(event(&b, "dsr_learned") >= 2.0 * 3.0);
    assert_eq!(event(&b, "rewrite_failed"), 0.0);
    assert_eq!(event(&b, "dsr_unknown_frontend"), 0.0);
    let replies = b.sum("portmap_packets_total", &[("direction", "reply")]);
    assert!(
        replies > 2.0 * 2.0 * 16.0 * 1024.0 * 1024.0 / 65536.0,
        "node b sent the replies, from the frontend: {replies} packets"
    );
}

#[test]
fn hybrid_sends_tcp_by_dsr_and_snats_udp() {
    let cluster = Cluster::build("clh", LinkOptions::default()).expect("cluster");
    let _servers = servers(&cluster);
    let manifests = ManifestDir::new("clh").unwrap();
    manifests
        .write("web.yaml", &service("web", 21, 30210, "", &[(1, 0)]))
        .unwrap();
    let hybrid: &[&str] = &["--lb-mode", "hybrid"];
    let pms = start_portmaps(&cluster, &manifests, &[hybrid, hybrid, hybrid]);
    for v6 in [false, true] {
        let answer = http_get(&cluster.client, at(0, v6, 30210)).unwrap();
        assert_eq!(
            peer_seen(&answer).map(|p| p.ip()),
            Some(client_ip(v6)),
            "TCP by DSR: {answer}"
        );
        let socket = udp_socket(&cluster.client, at(0, v6, 30211)).unwrap();
        let (answer, from) = udp_ask(&socket, at(0, v6, 30211), "hello").unwrap();
        assert_eq!(from, at(0, v6, 30211));
        assert_eq!(
            peer_seen(&answer).map(|p| p.ip()),
            Some(node_ip(0, v6)),
            "UDP SNATed: {answer}"
        );
    }
    let a = pms[0].metrics(&cluster.nodes[0]).unwrap();
    let tcp = SocketAddr::new(pod_ip(1, 0, false), HTTP).to_string();
    assert_eq!(
        a.sum("portmap_backend_dsr", &[("backend", tcp.as_str())]),
        1.0
    );
    let udp = SocketAddr::new(pod_ip(1, 0, false), portmap_tests::cluster::DNS).to_string();
    assert_eq!(
        a.sum("portmap_backend_dsr", &[("backend", udp.as_str())]),
        0.0
    );
    assert_eq!(
        a.sum("portmap_backend_snat", &[("backend", udp.as_str())]),
        1.0
    );
}

/// kill -9 of the portmap on either node under DSR flows: the pinned
/// programs and maps go on alone (the first node's conntrack, the backend
/// node's learned reply entries), and a restarted daemon adopts them.
#[test]
fn dsr_flows_carry_on_across_a_kill_and_restart_of_either_node() {
    let cluster = Cluster::build("clk", LinkOptions::default()).expect("cluster");
    let _servers = servers(&cluster);
    let manifests = ManifestDir::new("clk").unwrap();
    manifests
        .write("web.yaml", &service("web", 22, 30220, "", &[(1, 0)]))
        .unwrap();
    let dsr: &[&str] = &["--lb-mode", "dsr"];
    let mut pms: Vec<Option<Portmap>> = start_portmaps(&cluster, &manifests, &[dsr, dsr, dsr])
        .into_iter()
        .map(Some)
        .collect();
    let mut conns: Vec<LineConn> = [false, true]
        .iter()
        .map(|v6| LineConn::open(&cluster.client, at(0, *v6, 30220)).unwrap())
        .collect();
    let udp: Vec<_> = [false, true]
        .iter()
        .map(|v6| {
            let to = at(0, *v6, 30221);
            (udp_socket(&cluster.client, to).unwrap(), to)
        })
        .collect();
    let mut ask_all = |when: &str| {
        for (v6, conn) in [false, true].iter().zip(conns.iter_mut()) {
            let answer = conn.ask(when).unwrap_or_else(|e| panic!("{when}: {e:#}"));
            assert_eq!(
                peer_seen(&answer).map(|p| p.ip()),
                Some(client_ip(*v6)),
                "{when}"
            );
        }
        for (socket, to) in &udp {
            let (_, from) = udp_ask(socket, *to, when).unwrap_or_else(|e| panic!("{when}: {e:#}"));
            assert_eq!(from, *to, "{when}");
        }
    };
    ask_all("before");
    for node in [1, 0] {
        let pm = pms[node].take().expect("running");
        let mut child = pm.abandon().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
        ask_all(&format!("node {node} down"));
        let restarted = start_portmap(&cluster, node, &manifests, dsr);
        let logs = restarted.logs();
        assert!(logs.contains("adopted the dataplane"), "{logs}");
        pms[node] = Some(restarted);
        ask_all(&format!("node {node} restarted"));
    }
}

/// Sends `payload` to `to` and returns the answer and who sent it, trying a
/// few times (UDP may lose the first while neighbours are resolved).
fn exchange(socket: &std::net::UdpSocket, to: SocketAddr, payload: &[u8]) -> (Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 4096];
    for _ in 0..4 {
        socket.send_to(payload, to).unwrap();
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            return (buf[..n].to_vec(), from);
        }
    }
    panic!("no answer from {to} to {} bytes", payload.len());
}

/// A UDP datagram that fits the MTU but not with the option goes without
/// it (counted), and still gets its answer from the frontend: the backend's
/// node knows the flow from its earlier datagrams.
#[test]
fn a_udp_datagram_without_room_for_the_option_goes_without_it() {
    let cluster = Cluster::build("clm", LinkOptions::default()).expect("cluster");
    let b1 = [pod_ip(1, 1, false), pod_ip(1, 1, true)].map(|ip| SocketAddr::new(ip, BULK));
    let _mirror = Server::udp_mirror(&cluster.pods[1][1], "mirror", &b1).expect("mirror");
    let manifests = ManifestDir::new("clm").unwrap();
    // The "bulk" port as UDP, to the mirror in pod b1 on node b.
    let svc = service("big", 23, 30230, "", &[(1, 1)])
        .replace(
            &format!("targetPort: {BULK}, nodePort: 30232, protocol: TCP"),
            &format!("targetPort: {BULK}, nodePort: 30232, protocol: UDP"),
        )
        .replace(
            &format!("- name: \"bulk\"\n  port: {BULK}\n  protocol: TCP"),
            &format!("- name: \"bulk\"\n  port: {BULK}\n  protocol: UDP"),
        );
    manifests.write("big.yaml", &svc).unwrap();
    let dsr: &[&str] = &["--lb-mode", "dsr"];
    let pms = start_portmaps(&cluster, &manifests, &[dsr, dsr, dsr]);
    for v6 in [false, true] {
        let to = at(0, v6, 30232);
        let socket = udp_socket(&cluster.client, to).unwrap();
        // IP packets of 1496 (IPv4) and 1488 (IPv6) bytes: under the
        // underlay's 1500-byte MTU, over it with the 8- or 24-byte option.
        let big = if v6 { 1440 } else { 1468 };
        for len in [5, big] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let (answer, from) = exchange(&socket, to, &payload);
            assert_eq!(from, to, "{len} bytes (v6 {v6}): from the frontend");
            let mirrored: Vec<u8> = payload.iter().map(|b| !b).collect();
            assert_eq!(answer, mirrored, "{len} bytes (v6 {v6})");
        }
    }
    let a = pms[0].metrics(&cluster.nodes[0]).unwrap();
    assert!(event(&a, "dsr_option_added") >= 2.0);
    assert!(
        event(&a, "dsr_option_skipped") >= 2.0,
        "the big ones went without"
    );
    // Node a's mark for its tc program does not travel on with the packet
    // (XDP metadata survives forwarding and veth pairs): node b would take
    // it for its own.
    let b = pms[1].metrics(&cluster.nodes[1]).unwrap();
    assert_eq!(event(&b, "rewrite_failed"), 0.0);
}
