//! The API server's bytes: objects in the field order Go's encoder writes
//! them (struct order, not alphabetical), and the envelopes around them —
//! lists, watch events, bookmarks, `Status` errors — as kube-apiserver
//! writes them (see `tests/fixtures/apiserver/`, which the unit tests below
//! compare with byte for byte).

use std::fmt::Write as _;

use serde_json::Value;

/// What is served: Services, EndpointSlices, Nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Service,
    EndpointSlice,
    Node,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Service, Kind::EndpointSlice, Kind::Node];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Service | Kind::Node => "v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
        }
    }

    /// The collection across namespaces, as clients list and watch it.
    pub fn path(self) -> &'static str {
        match self {
            Kind::Service => "/api/v1/services",
            Kind::EndpointSlice => "/apis/discovery.k8s.io/v1/endpointslices",
            Kind::Node => "/api/v1/nodes",
        }
    }

    pub fn namespaced(self) -> bool {
        self != Kind::Node
    }

    /// What Go's encoder writes for the kind's zero value besides metadata
    /// (a BOOKMARK carries one): fields without `omitempty`.
    fn empty_fields(self) -> &'static str {
        match self {
            Kind::Service => r#","spec":{},"status":{"loadBalancer":{}}"#,
            Kind::EndpointSlice => r#","addressType":"","endpoints":null"#,
            Kind::Node => {
                r#","spec":{},"status":{"daemonEndpoints":{"kubeletEndpoint":{"Port":0}},"nodeInfo":{"machineID":"","systemUUID":"","bootID":"","kernelVersion":"","osImage":"","containerRuntimeVersion":"","kubeletVersion":"","kubeProxyVersion":"","operatingSystem":"","architecture":""}}"#
            }
        }
    }
}

/// Field names in the order of the Go structs that hold them (TypeMeta,
/// ObjectMeta, ServiceSpec, ServicePort, EndpointSlice, Endpoint,
/// EndpointConditions, EndpointPort, NodeSpec, NodeStatus, Status). A name
/// in several structs is placed for all of them: the orders agree.
const GO_ORDER: &[&str] = &[
    "kind",
    "apiVersion",
    "metadata",
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
    "continue",
    "remainingItemCount",
    "addressType",
    "endpoints",
    "addresses",
    "conditions",
    "ready",
    "serving",
    "terminating",
    "hostname",
    "targetRef",
    "nodeName",
    "zone",
    "hints",
    "spec",
    "podCIDR",
    "podCIDRs",
    "providerID",
    "unschedulable",
    "taints",
    "ports",
    "protocol",
    "appProtocol",
    "port",
    "targetPort",
    "nodePort",
    "selector",
    "clusterIP",
    "clusterIPs",
    "type",
    "externalIPs",
    "sessionAffinity",
    "loadBalancerIP",
    "loadBalancerSourceRanges",
    "externalName",
    "externalTrafficPolicy",
    "healthCheckNodePort",
    "publishNotReadyAddresses",
    "sessionAffinityConfig",
    "ipFamilies",
    "ipFamilyPolicy",
    "allocateLoadBalancerNodePorts",
    "loadBalancerClass",
    "internalTrafficPolicy",
    "trafficDistribution",
    "status",
    "loadBalancer",
    "ingress",
    "ip",
    "ipMode",
    "message",
    "reason",
    "details",
    "code",
    "items",
];

/// Structs whose order disagrees with [`GO_ORDER`], by the field that
/// holds them.
const OWN_ORDER: &[(&str, &[&str])] = &[
    (
        "targetRef",
        &[
            "kind",
            "namespace",
            "name",
            "uid",
            "apiVersion",
            "resourceVersion",
            "fieldPath",
        ],
    ),
    (
        "ownerReferences",
        &[
            "apiVersion",
            "kind",
            "name",
            "uid",
            "controller",
            "blockOwnerDeletion",
        ],
    ),
    (
        "managedFields",
        &[
            "manager",
            "operation",
            "apiVersion",
            "time",
            "fieldsType",
            "fieldsV1",
            "subresource",
        ],
    ),
];

fn rank(order: &[&str], key: &str) -> usize {
    order.iter().position(|k| *k == key).unwrap_or(order.len())
}

/// `value` as Go's encoder writes it: compact, struct fields in struct
/// order, map keys (labels, selectors) sorted.
pub fn go_json(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value, "");
    out
}

/// Maps whose keys are data, not fields (Go sorts them), and managed
/// fields' sets (kept sorted by the server).
const MAPS: &[&str] = &[
    "labels",
    "annotations",
    "selector",
    "nodeSelector",
    "fieldsV1",
];

/// Writes `value`, held by the field `holder` (an array's items are held
/// by the array's field).
fn write_value(out: &mut String, value: &Value, holder: &str) {
    match value {
        Value::Object(fields) => {
            let mut keys: Vec<&String> = fields.keys().collect();
            let own = OWN_ORDER.iter().find(|(h, _)| *h == holder);
            if MAPS.contains(&holder)
                || holder.starts_with("f:")
                || holder.starts_with("k:")
                || holder == "."
            {
                keys.sort();
            } else {
                let order = own.map_or(GO_ORDER, |(_, o)| *o);
                keys.sort_by(|a, b| rank(order, a).cmp(&rank(order, b)).then(a.cmp(b)));
            }
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_value(out, &fields[key], key);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item, holder);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// A list response: items without kind and apiVersion, as the API server
/// sends them.
pub fn list(kind: Kind, rv: u64, cont: Option<(&str, u64)>, items: &[&Value]) -> String {
    let mut meta = format!(r#"{{"resourceVersion":"{rv}""#);
    if let Some((token, remaining)) = cont {
        let _ = write!(
            meta,
            r#","continue":"{token}","remainingItemCount":{remaining}"#
        );
    }
    meta.push('}');
    let mut out = format!(
        r#"{{"kind":"{}List","apiVersion":"{}","metadata":{meta},"items":["#,
        kind.name(),
        kind.api_version()
    );
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let mut item = (*item).clone();
        if let Some(o) = item.as_object_mut() {
            o.remove("kind");
            o.remove("apiVersion");
        }
        out.push_str(&go_json(&item));
    }
    out.push_str("]}\n");
    out
}

/// One watch event, one line, objects with kind and apiVersion.
pub fn event(type_: &str, object: &Value) -> String {
    format!(r#"{{"type":"{type_}","object":{}}}"#, go_json(object)) + "\n"
}

/// A BOOKMARK: the kind's zero value with only a resourceVersion.
pub fn bookmark(kind: Kind, rv: u64) -> String {
    format!(
        r#"{{"type":"BOOKMARK","object":{{"kind":"{}","apiVersion":"{}","metadata":{{"resourceVersion":"{rv}","creationTimestamp":null}}{}}}}}"#,
        kind.name(),
        kind.api_version(),
        kind.empty_fields()
    ) + "\n"
}

/// A `Status` failure: the body of an error response, or (in an ERROR
/// event) of a watch that cannot go on.
pub fn status(code: u16, reason: &str, message: &str) -> String {
    let message = Value::String(message.to_string());
    format!(
        r#"{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure","message":{message},"reason":"{reason}","code":{code}}}"#
    )
}

/// The ERROR event of a watch from a resourceVersion older than the
/// history kept (compacted): the client must list again.
pub fn expired(requested: u64, oldest: u64) -> String {
    let message = format!("too old resource version: {requested} ({oldest})");
    format!(
        r#"{{"type":"ERROR","object":{}}}"#,
        status(410, "Expired", &message)
    ) + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/apiserver");

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap()
    }

    /// The fixture's objects, served again: the same bytes.
    #[test]
    fn a_service_list_is_written_as_recorded() {
        let recorded = fixture("services-list.json");
        let v: Value = serde_json::from_str(&recorded).unwrap();
        let items: Vec<&Value> = v["items"].as_array().unwrap().iter().collect();
        let rv = v["metadata"]["resourceVersion"].as_str().unwrap();
        assert_eq!(
            list(Kind::Service, rv.parse().unwrap(), None, &items),
            recorded
        );
    }

    #[test]
    fn an_endpointslice_list_page_is_written_as_recorded() {
        let recorded = fixture("endpointslices-list-page.json");
        let v: Value = serde_json::from_str(&recorded).unwrap();
        let items: Vec<&Value> = v["items"].as_array().unwrap().iter().collect();
        let meta = &v["metadata"];
        let rv = meta["resourceVersion"].as_str().unwrap().parse().unwrap();
        let cont = (
            meta["continue"].as_str().unwrap(),
            meta["remainingItemCount"].as_u64().unwrap(),
        );
        let written = list(Kind::EndpointSlice, rv, Some(cont), &items);
        assert_eq!(written, recorded);
    }

    #[test]
    fn watch_events_are_written_as_recorded() {
        let recorded = fixture("services-watch.jsonl");
        let mut written = String::new();
        for line in recorded.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            let type_ = v["type"].as_str().unwrap();
            written += &match type_ {
                "BOOKMARK" => {
                    let rv = v["object"]["metadata"]["resourceVersion"].as_str().unwrap();
                    bookmark(Kind::Service, rv.parse().unwrap())
                }
                "ERROR" => {
                    let message = v["object"]["message"].as_str().unwrap();
                    let numbers: Vec<u64> = message
                        .split(|c: char| !c.is_ascii_digit())
                        .filter_map(|n| n.parse().ok())
                        .collect();
                    expired(numbers[0], numbers[1])
                }
                _ => event(type_, &v["object"]),
            };
        }
        assert_eq!(written, recorded);
    }

    #[test]
    fn bookmarks_of_every_kind_parse_as_the_kind() {
        for kind in Kind::ALL {
            let v: Value = serde_json::from_str(&bookmark(kind, 7)).unwrap();
            assert_eq!(v["object"]["kind"], kind.name());
            assert_eq!(v["object"]["metadata"]["resourceVersion"], "7");
        }
    }
}
