//! `portmap run --kubernetes`: the API server as a source, served by the
//! test's fake API server (`portmap_tests::apiserver`, the real wire
//! protocol over HTTP) in the node's namespace and reached through a
//! kubeconfig, with traffic from the client namespace through what it
//! publishes.

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use portmap_tests::{
    apiserver::{ApiServer, Kind},
    client::{connect, http_get, served_by},
    daemon::Portmap,
    load::Load,
    server::Server,
    topo::{NODE_IFACE, NODE_V4, Topology, backend_v4},
};
use portmap_userspace::{control, dataplane::Snapshot};
use serde_json::{Value, json};

const SERVICE_CIDR: &str = "198.18.128.0/20";
const HEALTHZ_PORT: u16 = 10256;

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

fn b(i: usize) -> IpAddr {
    backend_v4(i)
}

/// This node's Node object: its address, and a pod CIDR none of the
/// backends is in (their `nodeName` says where they run).
fn node() -> Value {
    json!({
        "kind": "Node", "apiVersion": "v1",
        "metadata": {"name": "node-a", "labels": {"kubernetes.io/hostname": "node-a"}},
        "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]},
        "status": {"addresses": [
            {"type": "InternalIP", "address": NODE_V4},
            {"type": "Hostname", "address": "node-a"}
        ]}
    })
}

/// A ClusterIP Service: `http` 80 → 3000/TCP and `dns` 53 → 3000/UDP.
fn service(name: &str, ip: &str) -> Value {
    json!({
        "kind": "Service", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "ports": [
                {"name": "http", "protocol": "TCP", "port": 80, "targetPort": 3000},
                {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 3000}
            ],
            "selector": {"app": name},
            "clusterIP": ip, "clusterIPs": [ip], "type": "ClusterIP",
            "sessionAffinity": "None", "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack", "internalTrafficPolicy": "Cluster"
        },
        "status": {"loadBalancer": {}}
    })
}

/// An endpoint: address, node, and (ready, serving, terminating).
struct Ep(IpAddr, &'static str, (bool, bool, bool));

fn ready(ip: IpAddr) -> Ep {
    Ep(ip, "node-a", (true, true, false))
}

fn terminating(ip: IpAddr) -> Ep {
    Ep(ip, "node-a", (false, true, true))
}

/// The EndpointSlice `<service>-1` of `service`, ports as [`service`]'s.
fn slice(service: &str, endpoints: &[Ep]) -> Value {
    let eps: Vec<Value> = endpoints
        .iter()
        .map(|Ep(ip, node, (r, s, t))| {
            json!({
                "addresses": [ip.to_string()],
                "conditions": {"ready": r, "serving": s, "terminating": t},
                "nodeName": node
            })
        })
        .collect();
    json!({
        "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
        "metadata": {
            "name": format!("{service}-1"), "namespace": "default",
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"
            }
        },
        "addressType": "IPv4",
        "endpoints": eps,
        "ports": [
            {"name": "http", "protocol": "TCP", "port": 3000},
            {"name": "dns", "protocol": "UDP", "port": 3000}
        ]
    })
}

fn args<'a>(api: &'a ApiServer, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--iface",
        NODE_IFACE,
        "--kubernetes",
        "--kubeconfig",
        api.kubeconfig.to_str().unwrap(),
        "--node-name",
        "node-a",
        "--service-cidr",
        SERVICE_CIDR,
        "--healthz-addr",
        "127.0.0.1:10256",
    ];
    args.extend_from_slice(extra);
    args
}

fn servers(topo: &Topology) -> Vec<Server> {
    (0..topo.backends.len())
        .map(|i| {
            let a = SocketAddr::new(b(i), 3000);
            Server::start(&topo.backends[i], &format!("b{i}"), &[a], &[a]).unwrap()
        })
        .collect()
}

fn snapshot(pm: &Portmap) -> Snapshot {
    control::request_list(&pm.socket).unwrap()
}

/// `(service, frontend)` of everything published.
fn published(pm: &Portmap) -> BTreeSet<(String, String)> {
    snapshot(pm)
        .services
        .iter()
        .flat_map(|s| {
            s.frontends
                .iter()
                .map(|f| (s.service.clone(), f.frontend.clone()))
        })
        .collect()
}

fn syncs(pm: &Portmap, topo: &Topology) -> f64 {
    pm.metrics(&topo.node)
        .unwrap()
        .sum("portmap_kubernetes_syncs_total", &[("result", "success")])
}

/// Polls `f` until it holds (every 50 ms, at most `limit`); returns how
/// long that took.
fn wait_until(what: &str, limit: Duration, pm: &Portmap, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < limit,
            "{what}: not within {limit:?}\n{}",
            pm.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

/// One GET from `ns`: the status code and the body.
fn get(ns: &portmap_tests::netns::Netns, to: SocketAddr, path: &str) -> (u16, String) {
    let mut s = connect(ns, to).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {response:?}"));
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (code, body.to_string())
}

#[test]
fn a_hundred_services_then_a_rolling_update_without_a_failed_request() {
    let topo = Topology::new("kapi100", 3).unwrap();
    let _s = servers(&topo);
    let api = ApiServer::start(&topo.node).unwrap();
    api.apply(node());
    let ip = |i: usize| format!("198.18.129.{}", 10 + i);
    for i in 0..100 {
        let name = format!("svc-{i:03}");
        api.apply(service(&name, &ip(i)));
        api.apply(slice(&name, &[ready(b(i % 3))]));
    }
    let pm = Portmap::start(&topo.node, &args(&api, &[])).unwrap();
    // Everything is published at start (one full sync), each to its backend.
    for i in 0..100 {
        let body = http_get(&topo.client, sa(&ip(i), 80)).unwrap();
        assert_eq!(served_by(&body), format!("b{}", i % 3), "svc-{i:03}");
    }
    // Watched as kube-proxy watches: every namespace, without the Services
    // of other proxies and headless ones' slices, this node only.
    let requests = api.requests();
    for (path, selector) in [
        (
            "/api/v1/services?",
            "labelSelector=!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name",
        ),
        (
            "/apis/discovery.k8s.io/v1/endpointslices?",
            "labelSelector=!service.kubernetes.io/headless",
        ),
        ("/api/v1/nodes?", "fieldSelector=metadata.name=node-a"),
    ] {
        assert!(
            requests
                .iter()
                .any(|r| r.contains(path) && r.contains(selector)),
            "no request for {path} with {selector}: {requests:#?}"
        );
        assert!(
            requests
                .iter()
                .any(|r| r.contains(path) && r.contains("watch=true")),
            "no watch of {path}: {requests:#?}"
        );
    }

    // A rolling update of svc-000: a new endpoint, the old one draining,
    // then gone, then back; traffic never fails.
    let load = Load::start(&topo.client, sa(&ip(0), 80), sa(&ip(0), 53), 0).unwrap();
    load.wait_for(30);
    let steps: [Vec<Ep>; 4] = [
        vec![ready(b(0)), ready(b(1))],
        vec![terminating(b(0)), ready(b(1))],
        vec![ready(b(1))],
        vec![ready(b(0)), ready(b(1)), ready(b(2))],
    ];
    for eps in steps {
        let before = syncs(&pm, &topo);
        api.apply(slice("svc-000", &eps));
        wait_until("a sync", Duration::from_secs(10), &pm, || {
            syncs(&pm, &topo) > before
        });
        load.wait_for(30);
    }
    load.stop().assert_no_failures();
    let backends: BTreeSet<String> = snapshot(&pm)
        .services
        .iter()
        .filter(|s| s.service == "default/svc-000")
        .flat_map(|s| s.backends.iter().map(|b| b.backend.clone()))
        .collect();
    assert_eq!(
        backends,
        ["198.19.0.2:3000", "198.19.1.2:3000", "198.19.2.2:3000"]
            .map(String::from)
            .into(),
    );
}

/// Not a speed target: a change must be followed through the watch (not
/// by some later relist), so it shows within a few sync periods.
const WITHIN: Duration = Duration::from_secs(5);

#[test]
fn a_service_added_edited_and_deleted_takes_effect_within_the_sync_period() {
    let topo = Topology::new("kapiedit", 1).unwrap();
    let _s = servers(&topo);
    let api = ApiServer::start(&topo.node).unwrap();
    api.apply(node());
    api.apply(service("first", "198.18.129.1"));
    api.apply(slice("first", &[ready(b(0))]));
    let pm = Portmap::start(&topo.node, &args(&api, &["--min-sync-period", "1s"])).unwrap();
    assert!(published(&pm).contains(&("default/first".into(), "198.18.129.1:80/tcp".into())));

    // Added.
    api.apply(service("web", "198.18.129.2"));
    api.apply(slice("web", &[ready(b(0))]));
    wait_until("the added Service", WITHIN, &pm, || {
        http_get(&topo.client, sa("198.18.129.2", 80)).is_ok()
    });

    // Edited: another port, and ClusterIP → NodePort.
    let mut web = service("web", "198.18.129.2");
    web["spec"]["type"] = json!("NodePort");
    web["spec"]["externalTrafficPolicy"] = json!("Cluster");
    web["spec"]["ports"][0]["port"] = json!(8080);
    web["spec"]["ports"][0]["nodePort"] = json!(30080);
    web["spec"]["ports"][1]["nodePort"] = json!(30053);
    api.apply(web);
    let want = [
        "198.18.129.2:8080/tcp",
        &format!("{NODE_V4}:30080/tcp"),
        &format!("{NODE_V4}:30053/udp"),
    ]
    .map(|f| ("default/web".to_string(), f.to_string()));
    wait_until("the edited Service", WITHIN, &pm, || {
        let now = published(&pm);
        want.iter().all(|w| now.contains(w))
            && !now.contains(&("default/web".into(), "198.18.129.2:80/tcp".into()))
    });
    for fe in [sa("198.18.129.2", 8080), sa(NODE_V4, 30080)] {
        assert_eq!(
            served_by(&http_get(&topo.client, fe).unwrap()),
            "b0",
            "{fe}"
        );
    }

    // Deleted (the Service; its slice goes with it in a cluster).
    api.delete(Kind::Service, "default", "web");
    api.delete(Kind::EndpointSlice, "default", "web-1");
    wait_until("the deleted Service", WITHIN, &pm, || {
        published(&pm).iter().all(|(s, _)| s != "default/web")
    });
    assert_eq!(
        served_by(&http_get(&topo.client, sa("198.18.129.1", 80)).unwrap()),
        "b0",
        "the other Service stays"
    );
}

#[test]
fn an_api_server_away_for_ten_seconds_withdraws_nothing_and_is_followed_again() {
    let topo = Topology::new("kapidown", 2).unwrap();
    let _s = servers(&topo);
    let api = ApiServer::start(&topo.node).unwrap();
    api.apply(node());
    for i in 0..3 {
        let name = format!("svc-{i}");
        api.apply(service(&name, &format!("198.18.129.{}", 20 + i)));
        api.apply(slice(&name, &[ready(b(0)), ready(b(1))]));
    }
    let pm = Portmap::start(&topo.node, &args(&api, &[])).unwrap();
    let load = Load::start(
        &topo.client,
        sa("198.18.129.20", 80),
        sa("198.18.129.20", 53),
        0,
    )
    .unwrap();
    load.wait_for(30);
    let before = published(&pm);

    api.stop();
    // Meanwhile the cluster moves on: a Service is added, one deleted.
    api.apply(service("later", "198.18.129.30"));
    api.apply(slice("later", &[ready(b(1))]));
    api.delete(Kind::Service, "default", "svc-2");
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(
        published(&pm),
        before,
        "nothing withdrawn while the API is away"
    );
    load.wait_for(30);

    // Back with a resourceVersion far ahead and no history: resumed
    // watches get 410 Gone and list again.
    api.restart(10_000);
    wait_until(
        "the state after the restart",
        Duration::from_secs(45),
        &pm,
        || {
            // The Service with its endpoint: both watches have caught up.
            let now = snapshot(&pm);
            let later = now.services.iter().find(|s| {
                s.service == "default/later"
                    && s.frontends.iter().any(|f| f.frontend.ends_with(":80/tcp"))
            });
            later.is_some_and(|s| s.backends.iter().any(|b| b.backend == "198.19.1.2:3000"))
                && now.services.iter().all(|s| s.service != "default/svc-2")
        },
    );
    load.wait_for(30);
    load.stop().assert_no_failures();
    assert_eq!(
        served_by(&http_get(&topo.client, sa("198.18.129.30", 80)).unwrap()),
        "b1"
    );
    let m = pm.metrics(&topo.node).unwrap();
    assert!(
        m.sum(
            "portmap_kubernetes_relists_total",
            &[("resource", "services")]
        ) >= 1.0,
        "the Services were listed again"
    );
    assert!(m.sum("portmap_kubernetes_watch_errors_total", &[]) >= 1.0);
    assert!(
        pm.logs().contains("too old resource version"),
        "the 410 is what made it list again: {}",
        pm.logs()
    );
}

#[test]
fn an_invalid_service_is_reported_and_the_others_apply() {
    let topo = Topology::new("kapibad", 1).unwrap();
    let _s = servers(&topo);
    let api = ApiServer::start(&topo.node).unwrap();
    api.apply(node());
    let mut bad = service("bad", "198.18.129.41");
    bad["spec"]["type"] = json!("LoadBalancer");
    bad["spec"]["loadBalancerSourceRanges"] = json!(["198.18.0.0/33"]);
    bad["spec"]["ports"][0]["nodePort"] = json!(30041);
    bad["spec"]["ports"][1]["nodePort"] = json!(30042);
    api.apply(bad.clone());
    api.apply(slice("bad", &[ready(b(0))]));
    api.apply(service("good", "198.18.129.40"));
    api.apply(slice("good", &[ready(b(0))]));
    let pm = Portmap::start(&topo.node, &args(&api, &[])).unwrap();

    assert_eq!(
        served_by(&http_get(&topo.client, sa("198.18.129.40", 80)).unwrap()),
        "b0"
    );
    assert!(published(&pm).iter().all(|(s, _)| s != "default/bad"));
    let logs = pm.logs();
    assert!(
        logs.contains("Service default/bad") && logs.contains("spec.loadBalancerSourceRanges[0]"),
        "{logs}"
    );
    let m = pm.metrics(&topo.node).unwrap();
    assert_eq!(m.sum("portmap_kubernetes_rejected_services", &[]), 1.0);
    // An Event on the Service, as `kubectl describe service bad` shows.
    wait_until("an Event", Duration::from_secs(10), &pm, || {
        api.events().iter().any(|e| {
            e["reason"] == "FailedToPublish"
                && e["regarding"]["name"] == "bad"
                && e["note"]
                    .as_str()
                    .is_some_and(|n| n.contains("loadBalancerSourceRanges"))
        })
    });

    // Fixed, it is published.
    bad["spec"]["loadBalancerSourceRanges"] = json!(["198.18.0.0/15"]);
    api.apply(bad);
    wait_until("the fixed Service", WITHIN, &pm, || {
        http_get(&topo.client, sa("198.18.129.41", 80)).is_ok()
    });
    let m = pm.metrics(&topo.node).unwrap();
    assert_eq!(m.sum("portmap_kubernetes_rejected_services", &[]), 0.0);
}

#[test]
fn healthz_before_and_after_the_first_sync_and_health_check_node_ports() {
    let topo = Topology::new("kapihealth", 1).unwrap();
    let _s = servers(&topo);
    let api = ApiServer::start(&topo.node).unwrap();
    api.apply(node());
    let hc_port = 32100;
    let mut lb = service("lb", "198.18.129.50");
    lb["spec"]["type"] = json!("LoadBalancer");
    lb["spec"]["externalTrafficPolicy"] = json!("Local");
    lb["spec"]["healthCheckNodePort"] = json!(hc_port);
    lb["spec"]["ports"][0]["nodePort"] = json!(30050);
    lb["spec"]["ports"][1]["nodePort"] = json!(30051);
    api.apply(lb);
    api.apply(slice("lb", &[ready(b(0))]));
    // The API server away at start: nothing can be synced.
    api.stop();
    let pm = Portmap::start_listening(&topo.node, &args(&api, &[]), HEALTHZ_PORT).unwrap();
    let healthz = sa("127.0.0.1", HEALTHZ_PORT);
    for path in ["/healthz", "/livez"] {
        let (code, body) = get(&topo.node, healthz, path);
        assert_eq!(code, 503, "{path} before the first sync: {body}");
        assert!(body.contains("\"lastUpdated\": \"0001-01-01"), "{body}");
    }
    assert!(
        !topo.node.listening(hc_port).unwrap(),
        "no health check port yet"
    );

    api.restart(0);
    wait_until("the first sync", Duration::from_secs(30), &pm, || {
        get(&topo.node, healthz, "/healthz").0 == 200
    });
    let (code, body) = get(&topo.node, healthz, "/livez");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"nodeEligible\": true"), "{body}");

    // A local endpoint: the load balancer may send here.
    let hc = sa(NODE_V4, hc_port);
    wait_until("the health check port", WITHIN, &pm, || {
        topo.node.listening(hc_port).unwrap()
    });
    let (code, body) = get(&topo.client, hc, "/");
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["localEndpoints"], 1, "{body}");
    assert_eq!(v["service"]["name"], "lb");
    // Its only endpoint on another node: 503, none here.
    api.apply(slice("lb", &[Ep(b(0), "node-b", (true, true, false))]));
    wait_until("503 without local endpoints", WITHIN, &pm, || {
        get(&topo.client, hc, "/").0 == 503
    });
    let (_, body) = get(&topo.client, hc, "/");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["localEndpoints"], 0, "{body}");
    // The Service gone, the port closes.
    api.delete(Kind::Service, "default", "lb");
    wait_until("the health check port closed", WITHIN, &pm, || {
        !topo.node.listening(hc_port).unwrap()
    });
}
