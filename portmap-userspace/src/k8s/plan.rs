//! A Service's spec, checked and parsed: what the translation needs of it.

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    Family, NodeConfig,
    error::{ManifestError, Source},
    read::Object,
};
use crate::model::{Cidr, Protocol};

/// A Service with this label belongs to another proxy (kube-proxy skips
/// it too).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";

/// kube-proxy's default `sessionAffinityConfig.clientIP.timeoutSeconds`.
const DEFAULT_AFFINITY_S: u32 = 10800;
const MAX_AFFINITY_S: u32 = 86400;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Type {
    ClusterIp,
    NodePort,
    LoadBalancer,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Target {
    /// No targetPort: the Service port.
    Same,
    Number(u16),
    /// A container port name.
    Name(String),
}

#[derive(Clone, Debug)]
pub(super) struct PortPlan {
    pub index: usize,
    /// The ServicePort name, "" when unnamed.
    pub name: String,
    pub proto: Protocol,
    pub port: u16,
    pub target: Target,
    /// Given in the manifest, or assigned (see `alloc`).
    pub node_port: Option<u16>,
    pub node_port_given: bool,
}

impl PortPlan {
    pub fn field(&self) -> String {
        format!("spec.ports[{}]", self.index)
    }

    /// The port's name, or its number when unnamed.
    pub fn label(&self) -> String {
        if self.name.is_empty() {
            self.port.to_string()
        } else {
            self.name.clone()
        }
    }
}

#[derive(Debug)]
pub(super) struct Plan<'a> {
    pub source: &'a Source,
    pub namespace: &'a str,
    pub name: &'a str,
    /// `NAMESPACE/NAME`.
    pub id: String,
    /// The ClusterIPs the manifest gives, with their field.
    pub given_ips: Vec<(String, IpAddr)>,
    /// The Service's IP families, primary first.
    pub families: Vec<Family>,
    /// One per family once `alloc` has run, in the order of `families`.
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<PortPlan>,
    /// Whether ports without a nodePort get one.
    pub wants_node_ports: bool,
    pub external_ips: Vec<(String, IpAddr)>,
    pub ingress_ips: Vec<(String, IpAddr)>,
    pub source_ranges: Vec<Cidr>,
    pub affinity_timeout_s: Option<u32>,
    pub external_local: bool,
    pub internal_local: bool,
    pub selector: Option<&'a BTreeMap<String, String>>,
    pub publish_not_ready: bool,
}

fn parse_ip(source: &Source, field: &str, text: &str) -> Result<IpAddr, ManifestError> {
    let ip: IpAddr = text
        .trim()
        .parse()
        .map_err(|_| source.err(field, format!("'{text}' is not an IP address")))?;
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    if ip.is_unspecified() || ip.is_multicast() || broadcast {
        return Err(source.err(field, format!("{ip} is not a unicast address")));
    }
    Ok(ip)
}

pub(super) fn port_number(source: &Source, field: &str, n: i32) -> Result<u16, ManifestError> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| source.err(field, format!("{n} is out of range 1-65535")))
}

/// Checks and parses one Service; `None` (with a warning) when it publishes
/// nothing.
pub(super) fn plan<'a>(
    obj: &'a Object<k8s_openapi::api::core::v1::Service>,
    node: &NodeConfig,
    warnings: &mut Vec<String>,
) -> Result<Option<Plan<'a>>, ManifestError> {
    let src = &obj.source;
    // What kube-proxy leaves alone, left alone quietly when it comes from a
    // cluster (where it is common), with a word when a file says it.
    let mut skip = |why: &str| {
        if !src.from_api() {
            warnings.push(src.warn("", why));
        }
        Ok(None)
    };
    let labels = obj.object.metadata.labels.as_ref();
    if let Some(proxy) = labels.and_then(|l| l.get(SERVICE_PROXY_NAME_LABEL)) {
        return skip(&format!(
            "labelled {SERVICE_PROXY_NAME_LABEL}={proxy}: left to that proxy"
        ));
    }
    let Some(spec) = &obj.object.spec else {
        return skip("no spec: nothing to publish");
    };
    let type_ = match spec.type_.as_deref() {
        None | Some("ClusterIP") => Type::ClusterIp,
        Some("NodePort") => Type::NodePort,
        Some("LoadBalancer") => Type::LoadBalancer,
        Some("ExternalName") => {
            return skip("type ExternalName: nothing to publish (DNS only)");
        }
        Some(other) => {
            return Err(src.err(
                "spec.type",
                format!("'{other}' is not ClusterIP, NodePort, LoadBalancer or ExternalName"),
            ));
        }
    };
    let cluster_ips = spec.cluster_ips.as_deref().unwrap_or_default();
    let cluster_ip = spec.cluster_ip.as_deref().unwrap_or_default();
    if cluster_ip == "None" || cluster_ips.first().is_some_and(|ip| ip == "None") {
        return skip("headless: nothing to publish");
    }

    // ClusterIPs and families.
    let mut given_ips = Vec::new();
    for (i, text) in cluster_ips.iter().enumerate() {
        let field = format!("spec.clusterIPs[{i}]");
        given_ips.push((field.clone(), parse_ip(src, &field, text)?));
    }
    if !cluster_ip.is_empty() {
        let ip = parse_ip(src, "spec.clusterIP", cluster_ip)?;
        match given_ips.first() {
            None => given_ips.push(("spec.clusterIP".to_string(), ip)),
            Some((_, first)) if *first == ip => {}
            Some((_, first)) => {
                return Err(src.err(
                    "spec.clusterIP",
                    format!("{ip} differs from spec.clusterIPs[0] {first}"),
                ));
            }
        }
    }
    let mut listed = Vec::new();
    for (i, text) in spec.ip_families.iter().flatten().enumerate() {
        let field = format!("spec.ipFamilies[{i}]");
        let family = match text.as_str() {
            "IPv4" => Family::V4,
            "IPv6" => Family::V6,
            _ => return Err(src.err(field, format!("'{text}' is not IPv4 or IPv6"))),
        };
        if listed.contains(&family) {
            return Err(src.err(field, format!("{text} is listed twice")));
        }
        listed.push(family);
    }
    let mut families: Vec<Family> = Vec::new();
    for (i, (field, ip)) in given_ips.iter().enumerate() {
        let family = Family::of(*ip);
        if let Some(want) = listed.get(i).filter(|want| **want != family) {
            return Err(src.err(
                field,
                format!("{ip} is {family} but spec.ipFamilies[{i}] is {want}"),
            ));
        }
        if families.contains(&family) {
            return Err(src.err(
                field,
                format!("{ip} is {family} like spec.clusterIPs[0]: one address per family"),
            ));
        }
        families.push(family);
    }
    for family in &listed {
        if !families.contains(family) {
            families.push(*family);
        }
    }
    let has_cidr = |f: Family| node.service_cidrs.iter().any(|c| Family::of(c.addr) == f);
    if families.is_empty() {
        let primary = node
            .service_cidrs
            .first()
            .map_or(Family::V4, |c| Family::of(c.addr));
        families.push(primary);
    }
    let other = families[0].other();
    let single = families.len() == 1;
    match spec.ip_family_policy.as_deref() {
        None | Some("SingleStack") if single => {}
        None => {}
        Some("SingleStack") => {
            return Err(src.err(
                "spec.ipFamilyPolicy",
                "SingleStack, but the Service has two IP families",
            ));
        }
        // Only when nothing is given: a Service read back from a cluster
        // has all its ClusterIPs.
        Some("PreferDualStack") if single && given_ips.is_empty() && has_cidr(other) => {
            families.push(other);
        }
        Some("RequireDualStack") if single => families.push(other),
        Some("PreferDualStack" | "RequireDualStack") => {}
        Some(p) => {
            return Err(src.err(
                "spec.ipFamilyPolicy",
                format!("'{p}' is not SingleStack, PreferDualStack or RequireDualStack"),
            ));
        }
    }

    // Ports.
    let mut ports: Vec<PortPlan> = Vec::new();
    for (index, sp) in spec.ports.iter().flatten().enumerate() {
        let field = format!("spec.ports[{index}]");
        let proto = match sp.protocol.as_deref() {
            None | Some("TCP") => Protocol::Tcp,
            Some("UDP") => Protocol::Udp,
            Some("SCTP") => {
                warnings.push(src.warn(&field, "protocol SCTP is not supported: skipped"));
                continue;
            }
            Some(other) => {
                return Err(src.err(
                    format!("{field}.protocol"),
                    format!("'{other}' is not TCP, UDP or SCTP"),
                ));
            }
        };
        let port = port_number(src, &format!("{field}.port"), sp.port)?;
        let target = match &sp.target_port {
            None => Target::Same,
            Some(IntOrString::Int(n)) => {
                Target::Number(port_number(src, &format!("{field}.targetPort"), *n)?)
            }
            Some(IntOrString::String(s)) if s.is_empty() => Target::Same,
            Some(IntOrString::String(s)) if s.bytes().all(|b| b.is_ascii_digit()) => {
                return Err(src.err(
                    format!("{field}.targetPort"),
                    format!(
                        "'{s}' is a string: write the number unquoted, or name a container port"
                    ),
                ));
            }
            Some(IntOrString::String(s)) => Target::Name(s.clone()),
        };
        let node_port = match sp.node_port {
            None | Some(0) => None,
            Some(_) if type_ == Type::ClusterIp => {
                warnings.push(src.warn(&format!("{field}.nodePort"), "ignored for type ClusterIP"));
                None
            }
            Some(n) => {
                let np_field = format!("{field}.nodePort");
                let np = port_number(src, &np_field, n)?;
                let range = &node.node_port_range;
                // The API server checked it against the cluster's range,
                // which --node-port-range need not repeat.
                if !src.from_api() && !range.contains(&np) {
                    return Err(src.err(
                        np_field,
                        format!(
                            "{np} is outside the node port range {}-{}",
                            range.start(),
                            range.end()
                        ),
                    ));
                }
                Some(np)
            }
        };
        let name = sp.name.clone().unwrap_or_default();
        if let Some(other) = ports.iter().find(|p| !name.is_empty() && p.name == name) {
            return Err(src.err(
                format!("{field}.name"),
                format!("'{name}' is also the name of spec.ports[{}]", other.index),
            ));
        }
        if let Some(other) = ports.iter().find(|p| p.port == port && p.proto == proto) {
            return Err(src.err(
                format!("{field}.port"),
                format!(
                    "{port}/{} is also spec.ports[{}]",
                    proto.as_str(),
                    other.index
                ),
            ));
        }
        ports.push(PortPlan {
            index,
            name,
            proto,
            port,
            target,
            node_port_given: node_port.is_some(),
            node_port,
        });
    }
    if ports.is_empty() {
        if spec.ports.as_ref().is_none_or(Vec::is_empty) {
            warnings.push(src.warn("spec.ports", "no ports: nothing to publish"));
        }
        return Ok(None);
    }

    // External addresses.
    let mut external_ips = Vec::new();
    for (i, text) in spec.external_ips.iter().flatten().enumerate() {
        let field = format!("spec.externalIPs[{i}]");
        let ip = parse_ip(src, &field, text)?;
        external_ips.push((field, ip));
    }
    let mut ingress_ips = Vec::new();
    if type_ == Type::LoadBalancer {
        let ingress = obj
            .object
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        for (i, ing) in ingress.into_iter().flatten().enumerate() {
            // ipMode Proxy: the load balancer proxies, kube-proxy does not
            // capture the address.
            if let Some(text) = &ing.ip
                && ing.ip_mode.as_deref() != Some("Proxy")
            {
                let field = format!("status.loadBalancer.ingress[{i}].ip");
                let ip = parse_ip(src, &field, text)?;
                ingress_ips.push((field, ip));
            }
        }
    }
    for (field, ip) in external_ips.iter().chain(&ingress_ips) {
        if !families.contains(&Family::of(*ip)) {
            warnings.push(src.warn(
                field,
                format_args!(
                    "{ip} is {}, which the Service has no ClusterIP of: ignored",
                    Family::of(*ip)
                ),
            ));
        }
    }
    let mut source_ranges = Vec::new();
    for (i, text) in spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .enumerate()
    {
        let field = format!("spec.loadBalancerSourceRanges[{i}]");
        source_ranges.push(text.trim().parse::<Cidr>().map_err(|e| src.err(field, e))?);
    }

    // Policies.
    let affinity_timeout_s = match spec.session_affinity.as_deref() {
        None | Some("None") => None,
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match timeout {
                None => Some(DEFAULT_AFFINITY_S),
                Some(t) => Some(
                    u32::try_from(t)
                        .ok()
                        .filter(|t| (1..=MAX_AFFINITY_S).contains(t))
                        .ok_or_else(|| {
                            src.err(
                                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                                format!("{t} is out of range 1-{MAX_AFFINITY_S}"),
                            )
                        })?,
                ),
            }
        }
        Some(other) => {
            return Err(src.err(
                "spec.sessionAffinity",
                format!("'{other}' is not None or ClientIP"),
            ));
        }
    };
    let external = type_ != Type::ClusterIp || !external_ips.is_empty();
    let external_local = external
        && local_policy(
            src,
            node,
            "spec.externalTrafficPolicy",
            spec.external_traffic_policy.as_deref(),
        )?;
    let internal_local = local_policy(
        src,
        node,
        "spec.internalTrafficPolicy",
        spec.internal_traffic_policy.as_deref(),
    )?;

    Ok(Some(Plan {
        source: src,
        namespace: &obj.namespace,
        name: &obj.name,
        id: format!("{}/{}", obj.namespace, obj.name),
        given_ips,
        families,
        cluster_ips: Vec::new(),
        ports,
        wants_node_ports: match type_ {
            Type::ClusterIp => false,
            Type::NodePort => true,
            Type::LoadBalancer => spec.allocate_load_balancer_node_ports != Some(false),
        },
        external_ips,
        ingress_ips,
        source_ranges,
        affinity_timeout_s,
        external_local,
        internal_local,
        selector: spec.selector.as_ref().filter(|s| !s.is_empty()),
        publish_not_ready: spec.publish_not_ready_addresses == Some(true),
    }))
}

/// Whether a traffic policy is `Local` (which needs `--node-name`).
fn local_policy(
    src: &Source,
    node: &NodeConfig,
    field: &str,
    value: Option<&str>,
) -> Result<bool, ManifestError> {
    match value {
        None | Some("Cluster") => Ok(false),
        Some("Local") if node.node_name.is_none() => Err(src.err(
            field,
            "Local needs --node-name, to tell which endpoints are on this node",
        )),
        Some("Local") => Ok(true),
        Some(other) => Err(src.err(field, format!("'{other}' is not Cluster or Local"))),
    }
}
