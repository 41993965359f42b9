//! nodePort and ClusterIP assignment.

use super::*;

/// A NodePort Service in `default`, with `nodePort` when given.
fn nodeport(name: &str, node_port: Option<u16>, proto: &str) -> String {
    let np = node_port.map_or(String::new(), |p| format!(", nodePort: {p}"));
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  \
         type: NodePort\n  clusterIP: 10.96.1.{}\n  ports:\n  \
         - {{name: p, port: 80, protocol: {proto}{np}}}\n",
        name.bytes().map(usize::from).sum::<usize>() % 250
    )
}

fn small_range() -> NodeConfig {
    NodeConfig {
        node_port_range: 30000..=30010,
        ..node()
    }
}

fn node_port(t: &Translation, name: &str) -> u16 {
    let s = unit(t, &format!("default/{name}:p/tcp ipv4 external"));
    s.frontends[0].port
}

#[test]
fn node_ports_explicit_first_then_lowest_free_then_stable() {
    let node = small_range();
    let text = nodeport("b", None, "TCP")
        + &nodeport("a", None, "TCP")
        + &nodeport("d", Some(30000), "TCP");
    let first = run(&text, &node);
    assert_eq!(
        (
            node_port(&first, "a"),
            node_port(&first, "b"),
            node_port(&first, "d")
        ),
        (30001, 30002, 30000)
    );
    assert_eq!(
        first
            .assignments
            .node_port("default/a", "p", 0, Protocol::Tcp),
        Some(30001)
    );
    assert_eq!(
        first
            .assignments
            .node_port("default/d", "p", 0, Protocol::Tcp),
        None
    );
    assert_eq!(
        first.assignments.describe(),
        [
            "default/a: port p/tcp: nodePort 30001 (assigned)",
            "default/b: port p/tcp: nodePort 30002 (assigned)",
        ]
    );

    // A new Service sorted between them: without `previous` it would take
    // b's port; with it, a and b keep theirs.
    let more = text.clone() + &nodeport("a0", None, "TCP");
    let fresh = run(&more, &node);
    assert_eq!(node_port(&fresh, "b"), 30003);
    let m = parse(&more);
    let again = translate(&m, &node, Some(&first.assignments)).unwrap();
    assert_eq!(
        (
            node_port(&again, "a"),
            node_port(&again, "b"),
            node_port(&again, "a0")
        ),
        (30001, 30002, 30003)
    );
    // Stable when nothing changes.
    let same = translate(&m, &node, Some(&again.assignments)).unwrap();
    assert_eq!(same, again);

    // An explicit port wins over a previous assignment: b moves.
    let taken = text.clone() + &nodeport("e", Some(30002), "TCP");
    let t = translate(&parse(&taken), &node, Some(&first.assignments)).unwrap();
    assert_eq!((node_port(&t, "b"), node_port(&t, "e")), (30003, 30002));

    // The same nodePort for another protocol is no conflict.
    let udp = text + &nodeport("u", Some(30001), "UDP");
    let t = run(&udp, &node);
    assert_eq!(node_port(&t, "a"), 30001);
    let u = unit(&t, "default/u:p/udp ipv4 external");
    assert_eq!(frontends(u), ["*:30001/udp"]);
}

/// Found by the `manifests` fuzz target: two unnamed ports of one Service
/// shared one assignment record, so a reload swapped their nodePorts.
#[test]
fn unnamed_ports_keep_their_node_ports_across_reloads() {
    let node = small_range();
    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: two}\nspec:\n  \
                type: NodePort\n  clusterIP: 10.96.1.2\n  ports:\n  \
                - {port: 80}\n  - {port: 53}\n";
    let first = run(text, &node);
    let again = translate(&parse(text), &node, Some(&first.assignments)).unwrap();
    assert_eq!(again, first);
    let np = |port| {
        first
            .assignments
            .node_port("default/two", "", port, Protocol::Tcp)
    };
    assert_eq!((np(80), np(53)), (Some(30000), Some(30001)));
}

#[test]
fn node_port_conflicts_and_exhaustion() {
    let node = small_range();
    let text = nodeport("a", Some(30005), "TCP") + &nodeport("b", Some(30005), "TCP");
    assert_eq!(
        error(&text, &node),
        "/etc/portmap/svc.yaml: Service default/b: spec.ports[0].nodePort: 30005/tcp is \
         already used by Service default/a (/etc/portmap/svc.yaml)"
    );
    let tiny = NodeConfig {
        node_port_range: 30000..=30001,
        ..node
    };
    let text =
        nodeport("a", None, "TCP") + &nodeport("b", None, "TCP") + &nodeport("c", None, "TCP");
    assert_eq!(
        error(&text, &tiny),
        "/etc/portmap/svc.yaml: Service default/c: spec.ports[0].nodePort: no free node port \
         left in 30000-30001 to assign"
    );
    // A LoadBalancer that asks for no node ports gets none.
    let lb = nodeport("c", None, "TCP").replace(
        "type: NodePort",
        "type: LoadBalancer\n  allocateLoadBalancerNodePorts: false",
    );
    let t = run(
        &(nodeport("a", None, "TCP") + &nodeport("b", None, "TCP") + &lb),
        &tiny,
    );
    assert_eq!(t.services.len(), 5, "{:?}", keys(&t));
}

fn cluster_ip_service(name: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: ns}}\n\
         spec:\n  ports: [{{port: 80}}]\n"
    )
}

#[test]
fn cluster_ips_assigned_stable_and_never_network_or_broadcast() {
    let node = node();
    let text = cluster_ip_service("one") + &cluster_ip_service("two");
    let first = run(&text, &node);
    let one = first.assignments.cluster_ips("ns/one").to_vec();
    let two = first.assignments.cluster_ips("ns/two").to_vec();
    assert_eq!(one.len(), 1);
    assert!(node.service_cidrs[0].contains(one[0]));
    assert_ne!(one, two);
    assert_eq!(
        frontends(unit(&first, "ns/one:80/tcp ipv4 internal")),
        [format!("{}:80/tcp", one[0])]
    );
    // Deterministic without `previous` too.
    assert_eq!(run(&text, &node), first);

    // A Service given two's address: two moves; with `previous`, one stays
    // even when a new Service would hash to its address.
    let text2 = text.replace(
        "name: two, namespace: ns}\nspec:\n",
        &format!(
            "name: two, namespace: ns}}\nspec:\n  clusterIP: {}\n",
            one[0]
        ),
    );
    let m = parse(&(text2 + &cluster_ip_service("three")));
    let t = translate(&m, &node, Some(&first.assignments)).unwrap();
    assert_ne!(t.assignments.cluster_ips("ns/one"), one.as_slice());
    let m = parse(&(text.clone() + &cluster_ip_service("three")));
    let t = translate(&m, &node, Some(&first.assignments)).unwrap();
    assert_eq!(t.assignments.cluster_ips("ns/one"), one.as_slice());
    assert_eq!(t.assignments.cluster_ips("ns/two"), two.as_slice());

    // A /30 has two assignable addresses, not the network or broadcast one.
    let tiny = NodeConfig {
        service_cidrs: vec![cidr("10.96.0.0/30")],
        ..NodeConfig::default()
    };
    let t = run(&text, &tiny);
    let mut got: Vec<IpAddr> = ["ns/one", "ns/two"]
        .iter()
        .map(|s| t.assignments.cluster_ips(s)[0])
        .collect();
    got.sort();
    assert_eq!(got, [ip("10.96.0.1"), ip("10.96.0.2")]);
    let three = text + &cluster_ip_service("three");
    // Sorted by name, "two" comes last and finds the /30 full.
    assert_eq!(
        error(&three, &tiny),
        "/etc/portmap/svc.yaml: Service ns/two: spec.clusterIP: not set, and no free address \
         left in 10.96.0.0/30"
    );

    // No service CIDR of the family.
    let v6 = cluster_ip_service("one").replace("spec:\n", "spec:\n  ipFamilies: [IPv6]\n");
    assert_eq!(
        error(&v6, &tiny),
        "/etc/portmap/svc.yaml: Service ns/one: spec.clusterIP: not set, and no IPv6 \
         --service-cidr to assign one from"
    );
}

#[test]
fn dual_stack_assignment_from_both_cidrs() {
    let text = cluster_ip_service("dual")
        .replace("spec:\n", "spec:\n  ipFamilyPolicy: RequireDualStack\n");
    let t = run(&text, &node());
    let ips = t.assignments.cluster_ips("ns/dual");
    assert_eq!(ips.len(), 2);
    assert!(ips[0].is_ipv4() && ips[1].is_ipv6(), "{ips:?}");
    assert!(cidr("fd00:10:96::/112").contains(ips[1]));
    assert_eq!(
        keys(&t),
        [
            "ns/dual:80/tcp ipv4 internal",
            "ns/dual:80/tcp ipv6 internal"
        ]
    );
    // PreferDualStack takes what the node has.
    let prefer = text.replace("RequireDualStack", "PreferDualStack");
    let v4_only = NodeConfig {
        service_cidrs: vec![cidr("10.96.0.0/16")],
        ..NodeConfig::default()
    };
    assert_eq!(run(&prefer, &v4_only).services.len(), 1);
    assert_eq!(run(&prefer, &node()).services.len(), 2);
}
