//! ClusterIPs and nodePorts the manifests leave out, assigned as the API
//! server would, and kept stable across reloads.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use super::{
    Family, NodeConfig,
    error::{ManifestError, Source},
    plan::Plan,
};
use crate::model::{Cidr, Protocol};

/// What was assigned by us rather than given in the manifests. Pass the last
/// [`super::Translation`]'s to [`super::translate`] to keep it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Assignments {
    /// `NAMESPACE/NAME` → assigned ClusterIPs.
    cluster_ips: BTreeMap<String, Vec<IpAddr>>,
    /// (`NAMESPACE/NAME`, port, protocol) → (Service port, nodePort).
    node_ports: BTreeMap<(String, PortId, Protocol), (u16, u16)>,
}

/// Which port of a Service an assigned nodePort belongs to: by name, so it
/// follows a named port whose number changes; by number when unnamed (two
/// unnamed ports of one Service must not share an assignment, or a reload
/// could swap their nodePorts).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum PortId {
    Name(String),
    Number(u16),
}

impl PortId {
    fn of(name: &str, port: u16) -> Self {
        if name.is_empty() {
            PortId::Number(port)
        } else {
            PortId::Name(name.to_string())
        }
    }
}

impl Assignments {
    /// The ClusterIPs assigned to a Service (`NAMESPACE/NAME`).
    pub fn cluster_ips(&self, service: &str) -> &[IpAddr] {
        self.cluster_ips.get(service).map_or(&[], Vec::as_slice)
    }

    /// The nodePort assigned to a Service's port: the port named
    /// `port_name`, or, with `""`, the unnamed port `port`.
    pub fn node_port(
        &self,
        service: &str,
        port_name: &str,
        port: u16,
        proto: Protocol,
    ) -> Option<u16> {
        self.node_ports
            .get(&(service.to_string(), PortId::of(port_name, port), proto))
            .map(|(_, np)| *np)
    }

    pub fn is_empty(&self) -> bool {
        self.cluster_ips.is_empty() && self.node_ports.is_empty()
    }

    /// One line per assignment, e.g.
    /// `default/backend-service: clusterIP 10.96.12.7 (assigned)`.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for (svc, ips) in &self.cluster_ips {
            for ip in ips {
                lines.push(format!("{svc}: clusterIP {ip} (assigned)"));
            }
        }
        for ((svc, id, proto), (port, np)) in &self.node_ports {
            let port = match id {
                PortId::Name(name) => name.clone(),
                PortId::Number(_) => port.to_string(),
            };
            lines.push(format!(
                "{svc}: port {port}/{}: nodePort {np} (assigned)",
                proto.as_str()
            ));
        }
        lines.sort();
        lines
    }
}

/// Which plans (by index) could not be given what they need, and why.
pub(super) type Failed = Vec<(usize, ManifestError)>;

/// Fills `plan.cluster_ips`: given ones are reserved first, then a missing
/// one keeps its previous address if that is still free and in a service
/// CIDR, and otherwise gets one picked by a hash of `NAMESPACE/NAME`.
pub(super) fn assign_cluster_ips(
    plans: &mut [Plan<'_>],
    node: &NodeConfig,
    previous: Option<&Assignments>,
    out: &mut Assignments,
) -> Failed {
    let mut failed = Failed::new();
    let mut taken: BTreeSet<IpAddr> = plans
        .iter()
        .flat_map(|p| p.given_ips.iter().map(|(_, ip)| *ip))
        .collect();
    let cidrs = |f: Family| -> Vec<Cidr> {
        node.service_cidrs
            .iter()
            .filter(|c| Family::of(c.addr) == f)
            .copied()
            .collect()
    };
    // Per plan, per family: the address, once known.
    let mut chosen: Vec<BTreeMap<Family, IpAddr>> = plans
        .iter()
        .map(|p| {
            p.given_ips
                .iter()
                .map(|(_, ip)| (Family::of(*ip), *ip))
                .collect()
        })
        .collect();
    // Previous assignments first, so a new Service cannot take them.
    if let Some(prev) = previous {
        for (plan, chosen) in plans.iter().zip(&mut chosen) {
            for ip in prev.cluster_ips(&plan.id) {
                let family = Family::of(*ip);
                let usable = cidrs(family)
                    .iter()
                    .any(|c| usable(c).is_some_and(|r| r.contains(ip)));
                if plan.families.contains(&family)
                    && !chosen.contains_key(&family)
                    && usable
                    && taken.insert(*ip)
                {
                    chosen.insert(family, *ip);
                }
            }
        }
    }
    'plans: for (i, (plan, chosen)) in plans.iter_mut().zip(&mut chosen).enumerate() {
        let mut assigned = Vec::new();
        for family in plan.families.clone() {
            let ip = match chosen.get(&family) {
                Some(ip) => *ip,
                None => {
                    let ranges = cidrs(family);
                    if ranges.is_empty() {
                        failed.push((
                            i,
                            plan.source.err(
                                "spec.clusterIP",
                                format!(
                                    "not set, and no {family} --service-cidr to assign one from"
                                ),
                            ),
                        ));
                        continue 'plans;
                    }
                    let Some(ip) = pick(&ranges, &plan.id, &taken) else {
                        let list: Vec<String> = ranges.iter().map(Cidr::to_string).collect();
                        failed.push((
                            i,
                            plan.source.err(
                                "spec.clusterIP",
                                format!("not set, and no free address left in {}", list.join(", ")),
                            ),
                        ));
                        continue 'plans;
                    };
                    taken.insert(ip);
                    ip
                }
            };
            if !plan.given_ips.iter().any(|(_, given)| *given == ip) {
                assigned.push(ip);
            }
            plan.cluster_ips.push(ip);
        }
        if !assigned.is_empty() {
            out.cluster_ips.insert(plan.id.clone(), assigned);
        }
    }
    failed
}

/// The addresses of a CIDR that may be assigned (not the network or
/// broadcast address), or `None` if there are none.
fn usable(cidr: &Cidr) -> Option<std::ops::RangeInclusive<IpAddr>> {
    let (net, host_bits) = match cidr.addr {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32 - u32::from(cidr.prefix)),
        IpAddr::V6(a) => (u128::from(a), 128 - u32::from(cidr.prefix)),
    };
    let last = net
        | 1u128
            .checked_shl(host_bits)
            .map_or(u128::MAX, |s| s.wrapping_sub(1));
    let last = if cidr.addr.is_ipv4() {
        last & u128::from(u32::MAX)
    } else {
        last
    };
    let (first, last) = if host_bits <= 1 {
        (net, last)
    } else {
        (net + 1, last - 1)
    };
    let ip = |n: u128| match cidr.addr {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(n as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(n)),
    };
    (first <= last).then(|| ip(first)..=ip(last))
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// FNV-1a, stable across Rust releases (unlike `DefaultHasher`).
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A free address in the first CIDR that has one: the one at the key's hash,
/// or the next free one after it.
fn pick(cidrs: &[Cidr], key: &str, taken: &BTreeSet<IpAddr>) -> Option<IpAddr> {
    for cidr in cidrs {
        let Some(range) = usable(cidr) else { continue };
        let (first, last) = (to_u128(*range.start()), to_u128(*range.end()));
        let count = (last - first).saturating_add(1);
        let used = taken.range(range.clone()).count() as u128;
        if used >= count {
            continue;
        }
        let mut offset = u128::from(fnv1a(key)) % count;
        loop {
            let n = first + offset;
            let candidate = match cidr.addr {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(n as u32)),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(n)),
            };
            if !taken.contains(&candidate) {
                return Some(candidate);
            }
            offset = (offset + 1) % count;
        }
    }
    None
}

/// A nodePort a Service's manifest gives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct GivenNodePort {
    pub node_port: u16,
    pub proto: Protocol,
    /// `spec.ports[N].nodePort`.
    pub field: String,
}

/// The nodePorts `plan` gives, in port order.
pub(super) fn given_node_ports(plan: &Plan<'_>) -> Vec<GivenNodePort> {
    plan.ports
        .iter()
        .filter(|p| p.node_port_given)
        .filter_map(|p| {
            Some(GivenNodePort {
                node_port: p.node_port?,
                proto: p.proto,
                field: format!("{}.nodePort", p.field()),
            })
        })
        .collect()
}

/// Reserves the given nodePorts of each Service in turn (by index in
/// `services`): a Service's are reserved together, or not at all when one
/// is already taken (by an earlier Service, or by another of its ports).
/// Returns who holds each, and the Services refused.
pub(super) fn reserve_given_node_ports<'s>(
    services: impl Iterator<Item = (&'s Source, &'s [GivenNodePort])>,
) -> (BTreeMap<(u16, Protocol), usize>, Failed) {
    let mut failed = Failed::new();
    let mut owners: BTreeMap<(u16, Protocol), usize> = BTreeMap::new();
    let mut sources: Vec<&Source> = Vec::new();
    for (i, (source, ports)) in services.enumerate() {
        sources.push(source);
        let mut mine: BTreeMap<(u16, Protocol), usize> = BTreeMap::new();
        let mut clash = None;
        for port in ports {
            let key = (port.node_port, port.proto);
            let other = if mine.contains_key(&key) {
                Some("another port of this Service".to_string())
            } else {
                owners.get(&key).map(|first| sources[*first].named())
            };
            if let Some(other) = other {
                clash = Some(source.err(
                    &port.field,
                    format!(
                        "{}/{} is already used by {other}",
                        port.node_port,
                        port.proto.as_str()
                    ),
                ));
                break;
            }
            mine.insert(key, i);
        }
        match clash {
            Some(e) => failed.push((i, e)),
            None => owners.extend(mine),
        }
    }
    (owners, failed)
}

/// Fills `plan.cluster_ips` with the ClusterIPs its manifest gives, as
/// [`assign_cluster_ips`] would, if they and its given nodePorts are all
/// it needs; `false` (and `plan` unchanged) when something is left to
/// assign, which depends on every other Service.
pub(super) fn given_only(plan: &mut Plan<'_>) -> bool {
    let given = |f: Family| {
        plan.given_ips
            .iter()
            .map(|(_, ip)| *ip)
            .find(|ip| Family::of(*ip) == f)
    };
    let ips: Option<Vec<IpAddr>> = plan.families.iter().map(|f| given(*f)).collect();
    let node_ports_left = plan.wants_node_ports && plan.ports.iter().any(|p| p.node_port.is_none());
    match ips {
        Some(ips) if !node_ports_left && plan.cluster_ips.is_empty() => {
            plan.cluster_ips = ips;
            true
        }
        _ => false,
    }
}

/// Fills `node_port` of the ports of NodePort and LoadBalancer Services:
/// given ones are reserved first (two Services with the same nodePort and
/// protocol are an error), then missing ones keep their previous port if it
/// is still free and in the range, then the rest get the lowest free port,
/// in (namespace, name, port index) order.
pub(super) fn assign_node_ports(
    plans: &mut [Plan<'_>],
    node: &NodeConfig,
    previous: Option<&Assignments>,
    out: &mut Assignments,
) -> Failed {
    let range = node.node_port_range.clone();
    let given: Vec<Vec<GivenNodePort>> = plans.iter().map(given_node_ports).collect();
    let (mut owners, mut failed) = reserve_given_node_ports(
        plans
            .iter()
            .zip(&given)
            .map(|(plan, ports)| (plan.source, ports.as_slice())),
    );
    let skip = |i: usize, failed: &Failed| failed.iter().any(|(at, _)| *at == i);
    if let Some(prev) = previous {
        for (i, plan) in plans.iter_mut().enumerate() {
            if !plan.wants_node_ports || skip(i, &failed) {
                continue;
            }
            for port in plan.ports.iter_mut().filter(|p| p.node_port.is_none()) {
                if let Some(np) = prev.node_port(&plan.id, &port.name, port.port, port.proto)
                    && range.contains(&np)
                    && !owners.contains_key(&(np, port.proto))
                {
                    owners.insert((np, port.proto), i);
                    port.node_port = Some(np);
                }
            }
        }
    }
    // The lowest free port only grows, so each protocol keeps a cursor.
    let mut cursor: BTreeMap<Protocol, u32> = BTreeMap::new();
    'plans: for (i, plan) in plans.iter_mut().enumerate() {
        if !plan.wants_node_ports || skip(i, &failed) {
            continue;
        }
        for port in plan.ports.iter_mut() {
            if port.node_port.is_none() {
                let next = cursor
                    .entry(port.proto)
                    .or_insert(u32::from(*range.start()));
                let free = (*next..=u32::from(*range.end()))
                    .filter_map(|n| u16::try_from(n).ok())
                    .find(|n| !owners.contains_key(&(*n, port.proto)));
                let Some(np) = free else {
                    failed.push((
                        i,
                        plan.source.err(
                            format!("{}.nodePort", port.field()),
                            format!(
                                "no free node port left in {}-{} to assign",
                                range.start(),
                                range.end()
                            ),
                        ),
                    ));
                    continue 'plans;
                };
                *next = u32::from(np) + 1;
                owners.insert((np, port.proto), i);
                port.node_port = Some(np);
            }
            if !port.node_port_given
                && let Some(np) = port.node_port
            {
                out.node_ports.insert(
                    (
                        plan.id.clone(),
                        PortId::of(&port.name, port.port),
                        port.proto,
                    ),
                    (port.port, np),
                );
            }
        }
    }
    failed
}
