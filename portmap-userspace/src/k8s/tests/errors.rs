//! Bad manifests and their messages: file, object, field, value.

use super::*;

/// The seed example's Service with `spec` changed.
fn web(spec: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n{spec}")
}

const F: &str = "/etc/portmap/svc.yaml: Service default/web";

#[test]
fn bad_values_name_file_object_field_and_value() {
    let cases = [
        (
            "  ports:\n  - port: 0\n",
            "spec.ports[0].port: 0 is out of range 1-65535",
        ),
        (
            "  ports:\n  - port: 70000\n",
            "spec.ports[0].port: 70000 is out of range 1-65535",
        ),
        (
            "  ports:\n  - {port: 80, targetPort: 65536}\n",
            "spec.ports[0].targetPort: 65536 is out of range 1-65535",
        ),
        (
            "  type: NodePort\n  ports:\n  - port: 80\n    nodePort: 20000\n",
            "spec.ports[0].nodePort: 20000 is outside the node port range 30000-32767",
        ),
        (
            "  clusterIP: 10.96.0.300\n  ports: [{port: 80}]\n",
            "spec.clusterIP: '10.96.0.300' is not an IP address",
        ),
        (
            "  clusterIPs: [10.96.0.3, 10.96.0.4]\n  ports: [{port: 80}]\n",
            "spec.clusterIPs[1]: 10.96.0.4 is IPv4 like spec.clusterIPs[0]: one address per family",
        ),
        (
            "  clusterIPs: [\"fd00::3\"]\n  ipFamilies: [IPv4]\n  ports: [{port: 80}]\n",
            "spec.clusterIPs[0]: fd00::3 is IPv6 but spec.ipFamilies[0] is IPv4",
        ),
        (
            "  ipFamilyPolicy: SingleStack\n  clusterIPs: [10.96.0.3, \"fd00::3\"]\n  \
             ports: [{port: 80}]\n",
            "spec.ipFamilyPolicy: SingleStack, but the Service has two IP families",
        ),
        (
            "  externalIPs: [banana]\n  ports: [{port: 80}]\n",
            "spec.externalIPs[0]: 'banana' is not an IP address",
        ),
        (
            "  type: LoadBalancer\n  loadBalancerSourceRanges: [10.0.0.0/8, 10.0.0.1/8]\n  \
             ports: [{port: 80}]\n",
            "spec.loadBalancerSourceRanges[1]: '10.0.0.1/8' has host bits set \
             (the network is 10.0.0.0/8)",
        ),
        (
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      \
             timeoutSeconds: 0\n  ports: [{port: 80}]\n",
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds: 0 is out of range 1-86400",
        ),
        (
            "  type: NodePort\n  externalTrafficPolicy: Local\n  ports: [{port: 80}]\n",
            "spec.externalTrafficPolicy: Local needs --node-name, to tell which endpoints are \
             on this node",
        ),
        (
            "  internalTrafficPolicy: Local\n  ports: [{port: 80}]\n",
            "spec.internalTrafficPolicy: Local needs --node-name, to tell which endpoints are \
             on this node",
        ),
        (
            "  ports: [{port: 80, protocol: ICMP}]\n",
            "spec.ports[0].protocol: 'ICMP' is not TCP, UDP or SCTP",
        ),
        (
            "  ports: [{name: a, port: 80}, {name: a, port: 81}]\n",
            "spec.ports[1].name: 'a' is also the name of spec.ports[0]",
        ),
        (
            "  ports: [{name: a, port: 80}, {name: b, port: 80}]\n",
            "spec.ports[1].port: 80/tcp is also spec.ports[0]",
        ),
        (
            "  type: Balanced\n  ports: [{port: 80}]\n",
            "spec.type: 'Balanced' is not ClusterIP, NodePort, LoadBalancer or ExternalName",
        ),
        // Wrong types are caught while reading, with the field's path.
        (
            "  ports:\n  - port: eighty\n",
            "spec.ports[0].port: invalid type: string \"eighty\", expected i32",
        ),
        (
            "  ports: [{port: 80, targetPort: \"8080\"}]\n",
            "spec.ports[0].targetPort: '8080' is a string: write the number unquoted, or name \
             a container port",
        ),
    ];
    for (spec, want) in cases {
        let got = error(&web(spec), &node());
        assert_eq!(got, format!("{F}: {want}"), "spec:\n{spec}");
    }
}

#[test]
fn nothing_partial_one_bad_service_fails_all() {
    let text = super::SEED.to_string() + "---\n" + &web("  ports: [{port: 0}]\n");
    assert!(error(&text, &node()).starts_with(F));
}

#[test]
fn yaml_syntax_error_has_document_line_and_column() {
    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: ok}\nspec: {ports: [{port: 1}]}\n\
                ---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: [a\nspec: {}\n";
    // Lines count from the top of the file.
    assert_eq!(
        error(text, &node()),
        "/etc/portmap/svc.yaml: document 2: line 11 column 5: did not find expected ',' or \
         ']', while parsing a flow sequence at line 10 column 14"
    );

    let dup = "apiVersion: v1\nkind: Service\nkind: Pod\n";
    assert_eq!(
        error(dup, &node()),
        "/etc/portmap/svc.yaml: document 1: line 1 column 1: duplicate entry with key \"kind\""
    );
}

#[test]
fn objects_without_kind_name_or_twice() {
    assert_eq!(
        error("apiVersion: v1\nmetadata: {name: x}\n", &node()),
        "/etc/portmap/svc.yaml: document 1: kind: missing"
    );
    assert_eq!(
        error("- just\n- a list\n", &node()),
        "/etc/portmap/svc.yaml: document 1: not a Kubernetes object (a mapping with apiVersion \
         and kind)"
    );
    assert_eq!(
        error(
            "apiVersion: v1\nkind: Service\nmetadata: {namespace: x}\n",
            &node()
        ),
        "/etc/portmap/svc.yaml: Service x/: metadata.name: missing"
    );
    let twice = web("  ports: [{port: 80}]\n") + "---\n" + &web("  ports: [{port: 81}]\n");
    assert_eq!(
        error(&twice, &node()),
        format!("{F}: defined twice (first in /etc/portmap/svc.yaml)")
    );
}
