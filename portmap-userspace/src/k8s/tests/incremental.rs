//! The API server's objects translated incrementally ([`translate_api`])
//! give what translating them whole ([`translate_each`]) gives, after any
//! sequence of Services and EndpointSlices added, edited and deleted (and
//! the node changing), as a reflector holds them: an object that changes is
//! a new `Arc`, the others keep theirs.

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::api::{core::v1::Service as KService, discovery::v1::EndpointSlice};
use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

/// A few of each, so that Services clash (ClusterIPs, nodePorts, external
/// IPs), share creation times, and endpoints repeat.
const CLUSTER_IPS: [&str; 4] = ["10.96.0.1", "10.96.0.2", "10.96.0.3", "bogus"];
const ENDPOINTS_V4: [&str; 4] = ["10.244.1.1", "10.244.1.2", "10.244.2.1", "198.18.0.9"];
const ENDPOINTS_V6: [&str; 2] = ["fd00:244::1", "fd00:244::2"];
const NODES: [Option<&str>; 3] = [None, Some("node-a"), Some("node-b")];

#[derive(Clone, Debug)]
struct SvcSpec {
    namespace: usize,
    name: usize,
    created: u8,
    kind: u8,
    cluster_ip: usize,
    dual: bool,
    ports: u8,
    node_port: Option<u8>,
    external_ip: Option<usize>,
    policy: u8,
    affinity: u8,
}

#[derive(Clone, Debug)]
struct SliceSpec {
    namespace: usize,
    service: usize,
    index: u8,
    v6: bool,
    port_name: u8,
    endpoints: Vec<(usize, u8, usize)>,
}

#[derive(Clone, Debug)]
enum Op {
    Service(SvcSpec),
    DeleteService(usize, usize),
    Slice(SliceSpec),
    DeleteSlice(usize, usize, u8),
    Node(u8),
    /// The reflector's order of objects changes.
    Reorder(u64),
}

fn svc_spec() -> impl Strategy<Value = SvcSpec> {
    (
        (
            0..2usize,
            0..5usize,
            0..3u8,
            0..5u8,
            0..4usize,
            any::<bool>(),
        ),
        (
            1..3u8,
            proptest::option::of(0..3u8),
            proptest::option::weighted(0.3, 0..3usize),
            0..4u8,
            0..5u8,
        ),
    )
        .prop_map(
            |(
                (namespace, name, created, kind, cluster_ip, dual),
                (ports, node_port, external_ip, policy, affinity),
            )| SvcSpec {
                namespace,
                name,
                created,
                kind,
                cluster_ip,
                dual,
                ports,
                node_port,
                external_ip,
                policy,
                affinity,
            },
        )
}

fn slice_spec() -> impl Strategy<Value = SliceSpec> {
    (
        0..2usize,
        0..5usize,
        0..2u8,
        proptest::bool::weighted(0.2),
        0..3u8,
        proptest::collection::vec((0..4usize, 0..5u8, 0..3usize), 0..4),
    )
        .prop_map(
            |(namespace, service, index, v6, port_name, endpoints)| SliceSpec {
                namespace,
                service,
                index,
                v6,
                port_name,
                endpoints,
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => svc_spec().prop_map(Op::Service),
        1 => (0..2usize, 0..5usize).prop_map(|(n, s)| Op::DeleteService(n, s)),
        4 => slice_spec().prop_map(Op::Slice),
        1 => (0..2usize, 0..5usize, 0..2u8).prop_map(|(n, s, i)| Op::DeleteSlice(n, s, i)),
        1 => (0..3u8).prop_map(Op::Node),
        1 => any::<u64>().prop_map(Op::Reorder),
    ]
}

fn namespace(n: usize) -> String {
    ["default", "shop"][n].to_string()
}

fn service(s: &SvcSpec) -> Arc<KService> {
    let kind = [
        "ClusterIP",
        "NodePort",
        "LoadBalancer",
        "ExternalName",
        "ClusterIP",
    ][s.kind as usize];
    let ip = CLUSTER_IPS[s.cluster_ip];
    let mut spec = json!({"type": kind, "clusterIP": ip, "clusterIPs": [ip]});
    if s.dual && ip != "bogus" {
        let v6 = format!("fd00:96::{}", s.cluster_ip + 1);
        spec["clusterIPs"] = json!([ip, v6]);
        spec["ipFamilies"] = json!(["IPv4", "IPv6"]);
        spec["ipFamilyPolicy"] = json!("RequireDualStack");
    }
    let mut ports = Vec::new();
    for p in 0..s.ports {
        let (name, protocol) = [("http", "TCP"), ("dns", "UDP")][p as usize];
        let mut port = json!({"name": name, "port": 80 + u16::from(p),
            "protocol": protocol, "targetPort": 8080});
        // Sometimes left out: a nodePort to assign (translated whole).
        if kind != "ClusterIP"
            && let Some(np) = s.node_port
        {
            port["nodePort"] = json!(30000 + u16::from(np) + u16::from(p));
        }
        ports.push(port);
    }
    spec["ports"] = Value::Array(ports);
    if let Some(e) = s.external_ip {
        // Another Service's ClusterIP, sometimes.
        spec["externalIPs"] = json!([CLUSTER_IPS[e]]);
    }
    match s.policy {
        1 => spec["externalTrafficPolicy"] = json!("Local"),
        2 => spec["internalTrafficPolicy"] = json!("Local"),
        3 => spec["loadBalancerSourceRanges"] = json!(["198.18.0.0/15"]),
        _ => {}
    }
    match s.affinity {
        1 => spec["sessionAffinity"] = json!("ClientIP"),
        2 => spec["sessionAffinity"] = json!("Sometimes"),
        _ => {}
    }
    let status = json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}});
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {
                "name": format!("svc-{}", s.name),
                "namespace": namespace(s.namespace),
                "creationTimestamp": format!("2026-01-0{}T00:00:00Z", s.created + 1),
            },
            "spec": spec,
            "status": status,
        }))
        .expect("a Service"),
    )
}

fn slice(s: &SliceSpec) -> Arc<EndpointSlice> {
    let endpoints: Vec<Value> = s
        .endpoints
        .iter()
        .map(|(addr, cond, node)| {
            let addr = if s.v6 {
                ENDPOINTS_V6[addr % 2]
            } else {
                ENDPOINTS_V4[*addr]
            };
            let (ready, serving, terminating) = match cond {
                0 | 1 => (true, true, false),
                2 => (false, true, true),
                3 => (false, false, true),
                _ => (false, false, false),
            };
            let mut ep = json!({"addresses": [addr],
                "conditions": {"ready": ready, "serving": serving, "terminating": terminating}});
            if let Some(n) = NODES[*node] {
                ep["nodeName"] = json!(n);
            }
            ep
        })
        .collect();
    let port_name = ["http", "", "dns"][s.port_name as usize];
    let protocol = if s.port_name == 2 { "UDP" } else { "TCP" };
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {
                "name": format!("svc-{}-{}", s.service, s.index),
                "namespace": namespace(s.namespace),
                "labels": {"kubernetes.io/service-name": format!("svc-{}", s.service)},
            },
            "addressType": if s.v6 { "IPv6" } else { "IPv4" },
            "ports": [{"name": port_name, "port": 8080, "protocol": protocol}],
            "endpoints": endpoints,
        }))
        .expect("an EndpointSlice"),
    )
}

fn node_variant(v: u8) -> NodeConfig {
    let mut node = NodeConfig {
        node_name: Some("node-a".to_string()),
        ..NodeConfig::default()
    };
    match v {
        1 => node.pod_cidrs = vec![cidr("10.244.1.0/24")],
        2 => node.node_ips = vec![ip("198.18.0.1"), ip("2001:db8::1")],
        _ => {}
    }
    node
}

/// What a reflector holds: by kind and name, in an order of its own.
#[derive(Default)]
struct Store {
    services: BTreeMap<(usize, usize), Arc<KService>>,
    slices: BTreeMap<(usize, usize, u8), Arc<EndpointSlice>>,
    rotation: u64,
}

impl Store {
    fn lists(&self) -> (Vec<Arc<KService>>, Vec<Arc<EndpointSlice>>) {
        let mut services: Vec<_> = self.services.values().cloned().collect();
        let mut slices: Vec<_> = self.slices.values().cloned().collect();
        if !services.is_empty() {
            let by = (self.rotation % services.len() as u64) as usize;
            services.rotate_left(by);
        }
        if !slices.is_empty() {
            let by = (self.rotation / 7 % slices.len() as u64) as usize;
            slices.rotate_left(by);
            if self.rotation % 2 == 1 {
                slices.reverse();
            }
        }
        (services, slices)
    }
}

fn whole(
    services: &[Arc<KService>],
    slices: &[Arc<EndpointSlice>],
    node: &NodeConfig,
) -> Translation {
    let mut m = Manifests::default();
    m.add_api_objects(services.iter().cloned(), slices.iter().cloned());
    translate_each(&m, node, None)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn incremental_translation_is_the_whole_translation(
        ops in proptest::collection::vec(op(), 1..40)
    ) {
        let mut store = Store::default();
        let mut node = node_variant(0);
        let mut memo = ApiMemo::default();
        for op in &ops {
            match op {
                Op::Service(s) => {
                    store.services.insert((s.namespace, s.name), service(s));
                }
                Op::DeleteService(n, s) => {
                    store.services.remove(&(*n, *s));
                }
                Op::Slice(s) => {
                    store.slices.insert((s.namespace, s.service, s.index), slice(s));
                }
                Op::DeleteSlice(n, s, i) => {
                    store.slices.remove(&(*n, *s, *i));
                }
                Op::Node(v) => node = node_variant(*v),
                Op::Reorder(r) => store.rotation = *r,
            }
            let (services, slices) = store.lists();
            let expected = whole(&services, &slices, &node);
            if let Some(got) = translate_api(&services, &slices, &node, &mut memo) {
                prop_assert_eq!(got, expected, "after {:?}", op);
            }
        }
    }
}

/// A sync after one EndpointSlice changed translates that Service alone,
/// and gives the whole translation's result.
#[test]
fn only_what_changed_is_translated_again() {
    let node = node_variant(0);
    let specs: Vec<SvcSpec> = (0..3)
        .map(|name| SvcSpec {
            namespace: 0,
            name,
            created: 0,
            kind: 0,
            cluster_ip: name,
            dual: false,
            ports: 1,
            node_port: None,
            external_ip: None,
            policy: 0,
            affinity: 0,
        })
        .collect();
    let services: Vec<_> = specs.iter().map(service).collect();
    let mut slice_spec = SliceSpec {
        namespace: 0,
        service: 1,
        index: 0,
        v6: false,
        port_name: 0,
        endpoints: vec![(0, 0, 1)],
    };
    let mut memo = ApiMemo::default();
    let slices = vec![slice(&slice_spec)];
    let first = translate_api(&services, &slices, &node, &mut memo).expect("nothing to assign");
    assert_eq!(memo.translated_last(), 3);
    assert_eq!(first, whole(&services, &slices, &node));
    assert_eq!(first.services.len(), 3, "{first:#?}");

    let again = translate_api(&services, &slices, &node, &mut memo).expect("nothing to assign");
    assert_eq!(memo.translated_last(), 0);
    assert_eq!(again, first);

    slice_spec.endpoints.push((1, 2, 2));
    let slices = vec![slice(&slice_spec)];
    let edited = translate_api(&services, &slices, &node, &mut memo).expect("nothing to assign");
    assert_eq!(memo.translated_last(), 1, "svc-1 alone");
    assert_eq!(edited, whole(&services, &slices, &node));
    let svc1 = edited
        .services
        .iter()
        .find(|s| s.name == "default/svc-1")
        .expect("svc-1");
    assert_eq!(svc1.endpoints.len(), 2, "{svc1:#?}");

    // A Service to assign a ClusterIP to: translated whole by the caller.
    let mut to_assign = (*services[0]).clone();
    to_assign.metadata.name = Some("svc-new".into());
    let spec = to_assign.spec.as_mut().expect("a spec");
    spec.cluster_ip = None;
    spec.cluster_ips = None;
    let mut more = services.clone();
    more.push(Arc::new(to_assign));
    assert_eq!(translate_api(&more, &slices, &node, &mut memo), None);
    assert!(memo.is_empty());
}
