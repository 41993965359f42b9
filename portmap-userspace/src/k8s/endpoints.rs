//! The endpoints of a Service port: from its EndpointSlices, or, when it has
//! none, from the Pods its selector picks.

use std::{
    collections::{BTreeMap, btree_map::Entry},
    net::IpAddr,
};

use k8s_openapi::api::{core::v1::Pod, discovery::v1::EndpointSlice};

use super::{
    Family, Manifests, NodeConfig,
    error::ManifestError,
    plan::{Plan, PortPlan, Target, port_number},
    read::Object,
};
use crate::model::{EndpointState, Protocol};

/// The label that ties an EndpointSlice to its Service.
pub(super) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A usable endpoint and whether it is on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Backend {
    pub addr: IpAddr,
    pub port: u16,
    pub state: EndpointState,
    pub locality: Locality,
}

/// Where an endpoint runs, as its source tells: on this node, on another
/// node, or not said (no `nodeName`, and this node's pod CIDRs unknown).
/// The `Local` traffic policies and the `healthCheckNodePort` counts keep
/// the local ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Locality {
    #[default]
    Unknown,
    Local,
    Remote,
}

/// Whether an endpoint at `addr`, on the node named `node_name` if its
/// source says, runs on this node: `nodeName` decides when both it and
/// `--node-name` are known (as for the `Local` traffic policies); without
/// `nodeName`, this node's pod CIDRs and addresses do, if known.
pub fn locality(node_name: Option<&str>, addr: IpAddr, node: &NodeConfig) -> Locality {
    match (node_name, node.node_name.as_deref()) {
        (Some(there), Some(here)) if there == here => Locality::Local,
        (Some(_), Some(_)) => Locality::Remote,
        (Some(_), None) => Locality::Unknown,
        (None, _) => {
            let in_pod_cidr = node.pod_cidrs.iter().any(|c| c.contains(addr));
            if in_pod_cidr || node.node_ips.contains(&addr) {
                Locality::Local
            } else if node.pod_cidrs.is_empty() {
                Locality::Unknown
            } else {
                Locality::Remote
            }
        }
    }
}

/// Slices by (namespace, Service name), Pods by namespace.
pub(super) struct Index<'a> {
    slices: BTreeMap<(&'a str, &'a str), Vec<&'a Object<EndpointSlice>>>,
    pods: BTreeMap<&'a str, Vec<&'a Object<Pod>>>,
}

impl<'a> Index<'a> {
    pub fn new(m: &'a Manifests) -> Self {
        let mut slices: BTreeMap<_, Vec<_>> = BTreeMap::new();
        for slice in &m.endpoint_slices {
            let service = slice
                .object
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL));
            if let Some(service) = service {
                slices
                    .entry((slice.namespace.as_str(), service.as_str()))
                    .or_default()
                    .push(slice);
            }
        }
        let mut pods: BTreeMap<_, Vec<_>> = BTreeMap::new();
        for pod in &m.pods {
            pods.entry(pod.namespace.as_str()).or_default().push(pod);
        }
        Index { slices, pods }
    }
}

fn protocol(text: Option<&str>) -> Option<Protocol> {
    match text {
        None | Some("TCP") => Some(Protocol::Tcp),
        Some("UDP") => Some(Protocol::Udp),
        _ => None,
    }
}

fn state(ready: bool, serving: bool, terminating: bool) -> Option<EndpointState> {
    if ready && !terminating {
        Some(EndpointState::Ready)
    } else if terminating && serving {
        Some(EndpointState::Terminating)
    } else {
        None
    }
}

/// The usable endpoints of one port, each address and port once (a ready
/// one wins over a terminating one), sorted.
pub(super) fn backends(
    plan: &Plan<'_>,
    port: &PortPlan,
    index: &Index<'_>,
    node: &NodeConfig,
    warnings: &mut Vec<String>,
) -> Result<Vec<Backend>, ManifestError> {
    let found = if let Some(slices) = index.slices.get(&(plan.namespace, plan.name)) {
        from_slices(port, slices, node, warnings)?
    } else if let Some(selector) = plan.selector {
        let pods = index
            .pods
            .get(plan.namespace)
            .map_or(&[][..], Vec::as_slice);
        let matching = pods.iter().filter(|pod| {
            let labels = pod.object.metadata.labels.as_ref();
            selector
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        });
        let mut found = Vec::new();
        for pod in matching {
            found.extend(from_pod(plan, port, pod, node, warnings)?);
        }
        found
    } else {
        Vec::new()
    };
    let mut unique: BTreeMap<(IpAddr, u16), Backend> = BTreeMap::new();
    for b in found {
        match unique.entry((b.addr, b.port)) {
            Entry::Vacant(e) => {
                e.insert(b);
            }
            Entry::Occupied(mut e) => {
                if b.state < e.get().state {
                    e.insert(b);
                }
            }
        }
    }
    Ok(unique.into_values().collect())
}

fn from_slices(
    port: &PortPlan,
    slices: &[&Object<EndpointSlice>],
    node: &NodeConfig,
    warnings: &mut Vec<String>,
) -> Result<Vec<Backend>, ManifestError> {
    let mut found = Vec::new();
    for slice in slices {
        let src = &slice.source;
        let family = match slice.object.address_type.as_str() {
            "IPv4" => Family::V4,
            "IPv6" => Family::V6,
            "FQDN" => continue,
            other => {
                warnings.push(src.warn(
                    "addressType",
                    format_args!("'{other}' is not IPv4, IPv6 or FQDN: ignored"),
                ));
                continue;
            }
        };
        let ports = slice.object.ports.as_deref().unwrap_or_default();
        let matching = ports.iter().enumerate().find(|(_, sp)| {
            sp.name.as_deref().unwrap_or_default() == port.name
                && protocol(sp.protocol.as_deref()) == Some(port.proto)
        });
        // A port without a number is not usable (kube-proxy skips it too).
        let Some((j, Some(number))) = matching.map(|(j, sp)| (j, sp.port)) else {
            continue;
        };
        let number = port_number(src, &format!("ports[{j}].port"), number)?;
        for (k, ep) in slice.object.endpoints.iter().enumerate() {
            // Consumers use the first address (the others are the same
            // endpoint's).
            let Some(text) = ep.addresses.first() else {
                continue;
            };
            let field = format!("endpoints[{k}].addresses[0]");
            let addr: IpAddr = text
                .parse()
                .ok()
                .filter(|ip| Family::of(*ip) == family)
                .ok_or_else(|| src.err(&field, format!("'{text}' is not an {family} address")))?;
            let c = ep.conditions.as_ref();
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let serving = c.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            if let Some(state) = state(ready, serving, terminating) {
                found.push(Backend {
                    addr,
                    port: number,
                    state,
                    locality: locality(ep.node_name.as_deref(), addr, node),
                });
            }
        }
    }
    Ok(found)
}

fn from_pod(
    plan: &Plan<'_>,
    port: &PortPlan,
    pod: &Object<Pod>,
    node: &NodeConfig,
    warnings: &mut Vec<String>,
) -> Result<Vec<Backend>, ManifestError> {
    let src = &pod.source;
    let status = pod.object.status.as_ref();
    if matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    ) {
        return Ok(Vec::new());
    }
    let mut ips = Vec::new();
    match status
        .and_then(|s| s.pod_ips.as_ref())
        .filter(|ips| !ips.is_empty())
    {
        Some(list) => {
            for (i, ip) in list.iter().enumerate() {
                ips.push((format!("status.podIPs[{i}].ip"), ip.ip.as_str()));
            }
        }
        None => {
            if let Some(ip) = status
                .and_then(|s| s.pod_ip.as_deref())
                .filter(|ip| !ip.is_empty())
            {
                ips.push(("status.podIP".to_string(), ip));
            }
        }
    }
    if ips.is_empty() {
        warnings.push(src.warn(
            "",
            format_args!(
                "matches the selector of Service {} but has no status.podIP yet: not an endpoint",
                plan.id
            ),
        ));
        return Ok(Vec::new());
    }
    let number = match &port.target {
        Target::Same => port.port,
        Target::Number(n) => *n,
        Target::Name(name) => {
            let containers = pod.object.spec.as_ref().map(|s| s.containers.as_slice());
            let mut found = None;
            for (c, container) in containers.unwrap_or_default().iter().enumerate() {
                for (j, cp) in container.ports.iter().flatten().enumerate() {
                    if cp.name.as_deref() == Some(name.as_str())
                        && protocol(cp.protocol.as_deref()) == Some(port.proto)
                    {
                        let field = format!("spec.containers[{c}].ports[{j}].containerPort");
                        found = Some(port_number(src, &field, cp.container_port)?);
                    }
                }
            }
            let Some(number) = found else {
                warnings.push(src.warn(
                    "",
                    format_args!(
                        "has no {} container port named '{name}' (targetPort of Service {} \
                         {}): not an endpoint",
                        port.proto.as_str().to_uppercase(),
                        plan.id,
                        port.field()
                    ),
                ));
                return Ok(Vec::new());
            };
            number
        }
    };
    let ready = plan.publish_not_ready
        || !status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "False");
    let terminating = pod.object.metadata.deletion_timestamp.is_some();
    let Some(state) = state(ready, ready, terminating) else {
        return Ok(Vec::new());
    };
    let node_name = pod
        .object
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref());
    let mut found = Vec::new();
    for (field, text) in ips {
        let addr: IpAddr = text
            .parse()
            .map_err(|_| src.err(&field, format!("'{text}' is not an IP address")))?;
        found.push(Backend {
            addr,
            port: number,
            state,
            locality: locality(node_name, addr, node),
        });
    }
    Ok(found)
}
