//! Tests of the k8s module: fixtures inline or under `k8s/testdata/`.

use std::net::IpAddr;

use super::*;
use crate::model::{Cidr, EndpointState, Protocol, Service, WhenEmpty};

mod assign;
mod errors;
mod incremental;
mod policy;
mod reading;

const TESTDATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/k8s/testdata");

fn cidr(s: &str) -> Cidr {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Service CIDRs of both families, every node address.
fn node() -> NodeConfig {
    NodeConfig {
        service_cidrs: vec![cidr("10.96.0.0/16"), cidr("fd00:10:96::/112")],
        ..NodeConfig::default()
    }
}

fn parse(text: &str) -> Manifests {
    Manifests::parse("test.yaml", text).unwrap_or_else(|e| panic!("{e}"))
}

fn run(text: &str, node: &NodeConfig) -> Translation {
    translate(&parse(text), node, None).unwrap_or_else(|e| panic!("{e}"))
}

/// The error translating `text` (or reading it) gives.
fn error(text: &str, node: &NodeConfig) -> String {
    match Manifests::parse("/etc/portmap/svc.yaml", text) {
        Err(e) => e.to_string(),
        Ok(m) => match translate(&m, node, None) {
            Ok(t) => panic!("no error; units {:#?}", t.services),
            Err(e) => e.to_string(),
        },
    }
}

fn unit<'a>(t: &'a Translation, key: &str) -> &'a Service {
    t.services.iter().find(|s| s.key == key).unwrap_or_else(|| {
        let keys: Vec<&str> = t.services.iter().map(|s| s.key.as_str()).collect();
        panic!("no unit {key:?}; units: {keys:#?}")
    })
}

fn keys(t: &Translation) -> Vec<&str> {
    t.services.iter().map(|s| s.key.as_str()).collect()
}

fn frontends(s: &Service) -> Vec<String> {
    s.frontends.iter().map(|f| f.to_string()).collect()
}

/// `ADDR:PORT` for ready endpoints, with ` terminating` after the others.
fn endpoints(s: &Service) -> Vec<String> {
    s.endpoints
        .iter()
        .map(|e| match e.state {
            EndpointState::Ready => e.label(),
            EndpointState::Terminating => format!("{} terminating", e.label()),
        })
        .collect()
}

/// The seed document's example, as the demo and the namespace tests use it.
const SEED: &str = include_str!("../../../../examples/banking.yaml");

#[test]
fn seed_example_nodeport_service() {
    let node = NodeConfig {
        service_cidrs: vec![cidr("10.96.0.0/12")],
        ..NodeConfig::default()
    };
    let t = run(SEED, &node);
    assert_eq!(
        keys(&t),
        [
            "default/backend-service:80/tcp ipv4 internal",
            "default/backend-service:80/tcp ipv4 external",
        ]
    );
    let ext = unit(&t, "default/backend-service:80/tcp ipv4 external");
    assert_eq!(frontends(ext), ["*:30001/tcp"]);
    assert_eq!(endpoints(ext), ["198.19.0.2:8080"]);
    assert_eq!(ext.name, "default/backend-service");
    assert_eq!(ext.port_name, "");
    assert_eq!(ext.when_empty, WhenEmpty::Reject);
    assert_eq!(ext.affinity_timeout_s, None);
    assert!(ext.source_ranges.is_empty());

    let int = unit(&t, "default/backend-service:80/tcp ipv4 internal");
    assert_eq!(int.frontends.len(), 1);
    let cluster_ip = match int.frontends[0].addr {
        crate::model::HostAddr::Ip(ip) => ip,
        other => panic!("internal frontend on {other}"),
    };
    assert!(node.service_cidrs[0].contains(cluster_ip));
    assert_ne!(cluster_ip, ip("10.96.0.0"));
    assert_ne!(cluster_ip, ip("10.111.255.255"));
    assert_eq!(frontends(int), [format!("{cluster_ip}:80/tcp")]);
    assert_eq!(endpoints(int), ["198.19.0.2:8080"]);
    assert_eq!(
        t.assignments.cluster_ips("default/backend-service"),
        [cluster_ip]
    );
    assert_eq!(
        t.assignments.describe(),
        [format!(
            "default/backend-service: clusterIP {cluster_ip} (assigned)"
        )]
    );
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);

    // The same, before the Pod has an IP: published, rejecting.
    let without_ip = SEED.replace("status:\n  podIP: 198.19.0.2\n", "");
    assert_ne!(without_ip, SEED, "the example's status was removed");
    let t = run(&without_ip, &node);
    let ext = unit(&t, "default/backend-service:80/tcp ipv4 external");
    assert!(ext.endpoints.is_empty());
    assert_eq!(ext.when_empty, WhenEmpty::Reject);
    assert_eq!(
        t.warnings,
        [
            "test.yaml: Pod default/backend-pod: matches the selector of Service \
             default/backend-service but has no status.podIP yet: not an endpoint"
        ]
    );
}

#[test]
fn kubectl_list_with_slices_and_dual_stack() {
    let path = std::path::PathBuf::from(format!("{TESTDATA}/kubectl-list.yaml"));
    let m = read_manifests(std::slice::from_ref(&path)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (m.services.len(), m.endpoint_slices.len(), m.pods.len()),
        (4, 5, 1)
    );
    let t = translate(&m, &node(), None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        keys(&t),
        [
            "shop/api:https/tcp ipv4 internal",
            "shop/api:https/tcp ipv6 internal",
            "shop/api:quic/udp ipv4 internal",
            "shop/api:quic/udp ipv6 internal",
            "shop/idle:8080/tcp ipv4 internal",
            "shop/web:http/tcp ipv4 internal",
            "shop/web:http/tcp ipv4 external",
            "shop/web:metrics/tcp ipv4 internal",
            "shop/web:metrics/tcp ipv4 external",
        ]
    );
    // Several slices, ready/serving/terminating, a duplicate; the slice port
    // named like the Service port gives the number (targetPort: http).
    let http = unit(&t, "shop/web:http/tcp ipv4 external");
    assert_eq!(frontends(http), ["*:31080/tcp"]);
    let web_eps = [
        "10.244.1.5:8080",
        "10.244.1.6:8080 terminating",
        "10.244.2.7:8080",
        "10.244.3.10:8080",
    ];
    assert_eq!(endpoints(http), web_eps);
    assert_eq!(http.port_name, "http");
    let internal = unit(&t, "shop/web:http/tcp ipv4 internal");
    assert_eq!(frontends(internal), ["10.96.100.10:80/tcp"]);
    assert_eq!(endpoints(internal), web_eps);
    let metrics = unit(&t, "shop/web:metrics/tcp ipv4 external");
    assert_eq!(frontends(metrics), ["*:31090/tcp"]);
    assert_eq!(endpoints(metrics)[0], "10.244.1.5:9090");

    // Dual stack: one unit per family, each with its family's endpoints.
    let v4 = unit(&t, "shop/api:https/tcp ipv4 internal");
    assert_eq!(frontends(v4), ["10.96.100.20:443/tcp"]);
    assert_eq!(endpoints(v4), ["10.244.1.20:8443", "10.244.2.21:8443"]);
    assert_eq!(v4.affinity_timeout_s, Some(600));
    let v6 = unit(&t, "shop/api:quic/udp ipv6 internal");
    assert_eq!(frontends(v6), ["[fd00:10:96::20]:443/udp"]);
    assert_eq!(
        endpoints(v6),
        ["[fd00:10:244:1::20]:8443", "[fd00:10:244:2::21]:8443"]
    );

    // An empty slice (`endpoints: null`) stands: the Pods are not looked at.
    let idle = unit(&t, "shop/idle:8080/tcp ipv4 internal");
    assert!(idle.endpoints.is_empty());
    assert_eq!(idle.when_empty, WhenEmpty::Reject);

    assert!(t.assignments.is_empty(), "{:?}", t.assignments);
    let file = path.display();
    assert_eq!(
        t.warnings,
        [
            format!(
                "{file}: Deployment shop/web: apps/v1 Deployment is not read: ignored \
                 (portmap reads v1 Service, discovery.k8s.io/v1 EndpointSlice and v1 Pod)"
            ),
            format!("{file}: Service shop/db: headless: nothing to publish"),
        ]
    );
}

#[test]
fn named_target_port_from_pods() {
    let pod = |name: &str, extra: &str, port_name: &str, port: u16, ip: &str| {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: shop\n  \
             labels: {{app: web, tier: front}}\n{extra}spec:\n  nodeName: node-a\n  containers:\n  \
             - name: c\n    ports:\n    - {{name: {port_name}, containerPort: {port}}}\n\
             status:\n  phase: Running\n  podIP: {ip}\n"
        )
    };
    let mut text = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  \
         clusterIP: 10.96.0.80\n  selector: {app: web}\n  ports:\n  \
         - {name: http, port: 80, targetPort: http}\n",
    );
    text += &pod("a", "", "http", 8080, "10.244.0.1");
    text += &pod("b", "", "http", 8081, "10.244.0.2"); // another version
    text += &pod("c", "", "web", 8080, "10.244.0.3"); // no port named http
    text += &pod(
        "d",
        "  deletionTimestamp: \"2025-03-14T10:00:00Z\"\n",
        "http",
        8080,
        "10.244.0.4",
    );
    text += &pod("e", "", "http", 8080, "10.244.0.5").replace(
        "phase: Running",
        "phase: Running\n  conditions: [{type: Ready, status: \"False\"}]",
    );
    text += &pod("f", "", "http", 8080, "10.244.0.6").replace("Running", "Succeeded");
    text += &pod("g", "", "http", 8080, "10.244.0.7").replace("app: web", "app: db");
    text +=
        &pod("h", "", "http", 8080, "10.244.0.8").replace("namespace: shop", "namespace: other");
    let t = run(&text, &node());
    let s = unit(&t, "shop/web:http/tcp ipv4 internal");
    assert_eq!(
        endpoints(s),
        [
            "10.244.0.1:8080",
            "10.244.0.2:8081",
            "10.244.0.4:8080 terminating"
        ]
    );
    assert_eq!(
        t.warnings,
        [
            "test.yaml: Pod shop/c: has no TCP container port named 'http' (targetPort of \
          Service shop/web spec.ports[0]): not an endpoint"
        ]
    );

    // A UDP port does not match a TCP container port of the same name.
    let udp = text.replace("targetPort: http}", "targetPort: http, protocol: UDP}");
    let t = run(&udp, &node());
    assert!(
        unit(&t, "shop/web:http/udp ipv4 internal")
            .endpoints
            .is_empty()
    );
}

#[test]
fn numeric_and_absent_target_ports() {
    let text = r#"
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: kube-system}
spec:
  clusterIP: 10.96.0.10
  selector: {k8s-app: kube-dns}
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 5353}
---
apiVersion: v1
kind: Pod
metadata: {name: coredns-0, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec: {containers: [{name: coredns}]}
status: {podIPs: [{ip: 10.244.0.9}, {ip: "fd00:10:244::9"}]}
"#;
    let t = run(text, &node());
    let udp = unit(&t, "kube-system/dns:dns/udp ipv4 internal");
    assert_eq!(frontends(udp), ["10.96.0.10:53/udp"]);
    assert_eq!(endpoints(udp), ["10.244.0.9:53"]);
    let tcp = unit(&t, "kube-system/dns:dns-tcp/tcp ipv4 internal");
    assert_eq!(endpoints(tcp), ["10.244.0.9:5353"]);
    // A single-stack Service leaves the Pod's IPv6 address out.
    assert_eq!(t.services.len(), 2);
    assert_eq!(t.services[0].key, "kube-system/dns:dns/udp ipv4 internal");
}
