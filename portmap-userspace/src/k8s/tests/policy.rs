//! Traffic policies, what empty units do, external frontends, skipped
//! Services.

use super::*;

/// Endpoints on node-a (two) and node-b (one), as slices.
const SLICE: &str = r#"
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: NAME-1
  labels: {kubernetes.io/service-name: NAME}
addressType: IPv4
ports: [{name: "", port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.1], nodeName: node-a}
- {addresses: [10.244.1.2], nodeName: node-a, conditions: {ready: false, serving: true, terminating: true}}
- {addresses: [10.244.2.1], nodeName: node-b}
"#;

fn service(name: &str, spec: &str, with_slice: bool) -> String {
    let mut text = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  \
         ports: [{{port: 80, targetPort: 8080}}]\n{spec}"
    );
    if with_slice {
        text += &SLICE.replace("NAME", name);
    }
    text
}

fn on(node_name: &str) -> NodeConfig {
    NodeConfig {
        node_name: Some(node_name.to_string()),
        ..node()
    }
}

#[test]
fn traffic_policy_local_keeps_this_nodes_endpoints() {
    let text = service(
        "ext",
        "  type: NodePort\n  externalTrafficPolicy: Local\n",
        true,
    ) + &service("int", "  internalTrafficPolicy: Local\n", true);
    let t = run(&text, &on("node-a"));
    let local = ["10.244.1.1:8080", "10.244.1.2:8080 terminating"];
    let all = [
        "10.244.1.1:8080",
        "10.244.1.2:8080 terminating",
        "10.244.2.1:8080",
    ];
    assert_eq!(
        endpoints(unit(&t, "default/ext:80/tcp ipv4 external")),
        local
    );
    assert_eq!(endpoints(unit(&t, "default/ext:80/tcp ipv4 internal")), all);
    assert_eq!(
        endpoints(unit(&t, "default/int:80/tcp ipv4 internal")),
        local
    );

    // On a node without endpoints: Local units drop, the others still
    // have endpoints.
    let t = run(&text, &on("node-c"));
    let ext = unit(&t, "default/ext:80/tcp ipv4 external");
    assert!(ext.endpoints.is_empty());
    assert_eq!(ext.when_empty, WhenEmpty::Drop);
    assert_eq!(
        unit(&t, "default/ext:80/tcp ipv4 internal").endpoints.len(),
        3
    );
    let int = unit(&t, "default/int:80/tcp ipv4 internal");
    assert!(int.endpoints.is_empty());
    assert_eq!(int.when_empty, WhenEmpty::Drop);
}

#[test]
fn no_endpoints_at_all_rejects() {
    let text = service(
        "none",
        "  type: NodePort\n  externalTrafficPolicy: Local\n",
        false,
    ) + &service("cluster", "", false);
    let t = run(&text, &on("node-a"));
    for s in &t.services {
        assert!(s.endpoints.is_empty());
        assert_eq!(s.when_empty, WhenEmpty::Reject, "{}", s.key);
    }
    assert_eq!(t.services.len(), 3);
}

#[test]
fn headless_and_external_name_are_skipped() {
    let text = service("db", "  clusterIP: None\n", true)
        + "---\napiVersion: v1\nkind: Service\nmetadata: {name: mail, namespace: ops}\n\
           spec: {type: ExternalName, externalName: mail.example.com}\n";
    let t = run(&text, &node());
    assert!(t.services.is_empty());
    assert_eq!(
        t.warnings,
        [
            "test.yaml: Service default/db: headless: nothing to publish",
            "test.yaml: Service ops/mail: type ExternalName: nothing to publish (DNS only)",
        ]
    );
}

#[test]
fn load_balancer_ingress_gets_its_own_unit_with_source_ranges() {
    let spec = r#"  type: LoadBalancer
  clusterIP: 10.96.5.5
  externalIPs: [198.51.100.7]
  loadBalancerSourceRanges: [203.0.113.0/24, 192.0.2.0/28]
  sessionAffinity: ClientIP
status:
  loadBalancer:
    ingress:
    - ip: 198.51.100.80
    - hostname: lb.example.com
    - {ip: 198.51.100.81, ipMode: Proxy}
"#;
    let node = NodeConfig {
        node_ips: vec![ip("192.0.2.11"), ip("2001:db8::11")],
        ..node()
    };
    let t = run(&service("lb", spec, true), &node);
    assert_eq!(
        keys(&t),
        [
            "default/lb:80/tcp ipv4 internal",
            "default/lb:80/tcp ipv4 external",
            "default/lb:80/tcp ipv4 lb",
        ]
    );
    let ext = unit(&t, "default/lb:80/tcp ipv4 external");
    let np = t
        .assignments
        .node_port("default/lb", "", 80, Protocol::Tcp)
        .unwrap();
    assert_eq!(
        frontends(ext),
        [
            format!("192.0.2.11:{np}/tcp"),
            "198.51.100.7:80/tcp".to_string()
        ]
    );
    assert!(ext.source_ranges.is_empty());
    let lb = unit(&t, "default/lb:80/tcp ipv4 lb");
    assert_eq!(frontends(lb), ["198.51.100.80:80/tcp"]);
    assert_eq!(
        lb.source_ranges,
        [cidr("203.0.113.0/24"), cidr("192.0.2.0/28")]
    );
    assert_eq!(lb.affinity_timeout_s, Some(10800));
    assert_eq!(lb.endpoints.len(), 3);
}

#[test]
fn external_ips_on_any_type_and_two_claims_on_one_frontend() {
    let a = service("a", "  externalIPs: [198.51.100.7]\n", true);
    let t = run(&a, &node());
    assert_eq!(
        frontends(unit(&t, "default/a:80/tcp ipv4 external")),
        ["198.51.100.7:80/tcp"]
    );
    let b = service("b", "  externalIPs: [198.51.100.7]\n", false);
    assert_eq!(
        error(&(a + &b), &node()),
        "/etc/portmap/svc.yaml: Service default/b: spec.externalIPs[0]: frontend \
         198.51.100.7:80/tcp is already published by Service default/a \
         (/etc/portmap/svc.yaml) through spec.externalIPs[0]"
    );
}
