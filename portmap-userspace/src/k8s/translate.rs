//! Service ports to [`model::Service`] units: one per IP family and scope
//! (ClusterIPs; nodePorts and externalIPs; load-balancer ingress).

use crate::model::Reach;
use std::collections::{BTreeMap, BTreeSet};

use super::{
    Family, Manifests, NodeConfig, Object, Rejected, Translation,
    alloc::{self, Assignments},
    endpoints::{self, Backend, Index, Locality},
    error::{ManifestError, Source},
    plan::{self, Plan, PortPlan},
};
use crate::model::{self, DesiredState, Endpoint, Frontend, HostAddr, Placement, WhenEmpty};

/// Which frontends of a Service port a unit holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scope {
    /// ClusterIPs: `internalTrafficPolicy`.
    Internal,
    /// nodePorts and externalIPs: `externalTrafficPolicy`.
    External,
    /// Load-balancer ingress IPs: `externalTrafficPolicy` and
    /// `loadBalancerSourceRanges`.
    Lb,
}

impl Scope {
    fn as_str(self) -> &'static str {
        match self {
            Scope::Internal => "internal",
            Scope::External => "external",
            Scope::Lb => "lb",
        }
    }
}

/// See [`super::translate_each`]: every Service that can be published is,
/// the others are in `rejected`, in the order found (parsing, then
/// assignments, then endpoints and frontends).
pub(super) fn translate(
    m: &Manifests,
    node: &NodeConfig,
    previous: Option<&Assignments>,
) -> Translation {
    let mut warnings = m.warnings.clone();
    let mut rejected = Vec::new();
    let mut objects: Vec<_> = m.services.iter().collect();
    // The older Service keeps what two claim; files (no timestamps) go by name.
    objects.sort_by(|a, b| {
        let created = |o: &Object<k8s_openapi::api::core::v1::Service>| {
            o.object.metadata.creation_timestamp.clone()
        };
        (created(a), &a.namespace, &a.name).cmp(&(created(b), &b.namespace, &b.name))
    });
    let mut plans = Vec::new();
    for obj in objects {
        match plan::plan(obj, node, &mut warnings) {
            Ok(Some(plan)) => plans.push(plan),
            Ok(None) => {}
            Err(error) => rejected.push(reject(&obj.source, &obj.namespace, &obj.name, error)),
        }
    }
    let mut assignments = Assignments::default();
    for stage in [alloc::assign_cluster_ips, alloc::assign_node_ports] {
        let failed = stage(&mut plans, node, previous, &mut assignments);
        let mut i = 0;
        plans.retain(|plan| {
            let error = failed.iter().find(|(at, _)| *at == i).map(|(_, e)| e);
            i += 1;
            match error {
                Some(error) => {
                    rejected.push(reject(
                        plan.source,
                        plan.namespace,
                        plan.name,
                        error.clone(),
                    ));
                    false
                }
                None => true,
            }
        });
    }

    let index = Index::new(m);
    let units: Vec<Units> = plans
        .iter()
        .map(|plan| units_of(plan, &index, node))
        .collect();
    let candidates: Vec<Candidate<'_>> = plans
        .iter()
        .zip(&units)
        .map(|(plan, units)| Candidate {
            source: plan.source,
            namespace: plan.namespace,
            name: plan.name,
            id: &plan.id,
            units,
        })
        .collect();
    let services = merge(&candidates, &mut warnings, &mut rejected);
    finish(services, assignments, warnings, rejected)
}

/// The translation, once every Service's units are settled: checked whole,
/// and each warning said once.
pub(super) fn finish(
    services: Vec<model::Service>,
    assignments: Assignments,
    mut warnings: Vec<String>,
    mut rejected: Vec<Rejected>,
) -> Translation {
    let state = DesiredState { services };
    if let Err(e) = state.validate() {
        // Units of one family and owners checked in `merge` make this
        // unreachable; if it is not, nothing goes out rather than an
        // inconsistent state.
        rejected.push(Rejected {
            service: String::new(),
            source: Source::api(""),
            error: ManifestError::new(e.to_string()),
        });
    }
    let mut seen = BTreeSet::new();
    warnings.retain(|w| seen.insert(w.clone()));
    Translation {
        services: state.services,
        assignments,
        warnings,
        rejected,
    }
}

/// One Service's units, translated alone: the frontends they claim and the
/// warnings, in the order the translation met them (for [`merge`] to
/// replay against the Services before it), and what stopped it, if
/// anything.
#[derive(Clone, Debug)]
pub(super) struct Units {
    pub steps: Vec<Step>,
    /// What is wrong with the Service (its endpoints, or two of its own
    /// units claiming one frontend), met after `steps`.
    pub error: Option<ManifestError>,
    /// In the order made.
    pub services: Vec<model::Service>,
}

#[derive(Clone, Debug)]
pub(super) enum Step {
    /// A unit takes a frontend, through a field of the Service.
    Claim {
        frontend: Frontend,
        field: String,
    },
    Warn(String),
}

/// A planned Service and its units, for [`merge`].
pub(super) struct Candidate<'r> {
    pub source: &'r Source,
    pub namespace: &'r str,
    pub name: &'r str,
    /// `NAMESPACE/NAME`.
    pub id: &'r str,
    pub units: &'r Units,
}

/// Settles the claims of `candidates`, oldest first: a Service that
/// claims a frontend an earlier one kept is rejected whole (as one whose
/// own units failed), and gives back what it had claimed. Returns the
/// units of the others, by Service name.
pub(super) fn merge(
    candidates: &[Candidate<'_>],
    warnings: &mut Vec<String>,
    rejected: &mut Vec<Rejected>,
) -> Vec<model::Service> {
    let mut owners: foldhash::HashMap<Frontend, (usize, &str)> =
        foldhash::HashMapExt::with_capacity(candidates.len());
    let mut accepted = Vec::new();
    for (c, candidate) in candidates.iter().enumerate() {
        let mut claimed = Vec::new();
        let mut error = None;
        for step in &candidate.units.steps {
            match step {
                Step::Warn(w) => warnings.push(w.clone()),
                Step::Claim { frontend, field } => {
                    if let Some((other, other_field)) = owners.get(frontend) {
                        let other = &candidates[*other];
                        let by = if other.source == candidate.source {
                            "this Service".to_string()
                        } else {
                            other.source.named()
                        };
                        error = Some(candidate.source.err(
                            field,
                            format!(
                                "frontend {frontend} is already published by {by} through \
                                 {other_field}"
                            ),
                        ));
                        break;
                    }
                    owners.insert(*frontend, (c, field));
                    claimed.push(*frontend);
                }
            }
        }
        match error.or_else(|| candidate.units.error.clone()) {
            Some(error) => {
                for frontend in claimed {
                    owners.remove(&frontend);
                }
                let c = candidate;
                rejected.push(reject(c.source, c.namespace, c.name, error));
            }
            None => accepted.push(c),
        }
    }
    // Claims were settled oldest first; the units go out by name, as ever.
    accepted.sort_by(|a, b| candidates[*a].id.cmp(candidates[*b].id));
    let count = accepted
        .iter()
        .map(|c| candidates[*c].units.services.len())
        .sum();
    let mut services = Vec::with_capacity(count);
    for c in accepted {
        services.extend(candidates[c].units.services.iter().cloned());
    }
    services
}

/// Translates one planned Service alone.
pub(super) fn units_of(plan: &Plan<'_>, index: &Index<'_>, node: &NodeConfig) -> Units {
    let mut b = Builder {
        node,
        owners: BTreeMap::new(),
        units: Units {
            steps: Vec::new(),
            error: None,
            services: Vec::new(),
        },
    };
    if let Err(error) = b.add_plan(plan, index) {
        b.units.error = Some(error);
    }
    b.units
}

fn reject(source: &Source, namespace: &str, name: &str, error: ManifestError) -> Rejected {
    Rejected {
        service: format!("{namespace}/{name}"),
        source: source.clone(),
        error,
    }
}

/// Which unit of the Service publishes a frontend, through which field.
struct Owner {
    unit: String,
    field: String,
}

/// The units of one Service built so far.
struct Builder<'a> {
    node: &'a NodeConfig,
    owners: BTreeMap<Frontend, Owner>,
    units: Units,
}

impl Builder<'_> {
    /// Adds the units of every port and family of a Service.
    fn add_plan(&mut self, plan: &Plan<'_>, index: &Index<'_>) -> Result<(), ManifestError> {
        for port in &plan.ports {
            let mut warnings = Vec::new();
            let backends = endpoints::backends(plan, port, index, self.node, &mut warnings);
            self.units
                .steps
                .extend(warnings.into_iter().map(Step::Warn));
            let backends = backends?;
            for family in [Family::V4, Family::V6] {
                if plan.families.contains(&family) {
                    self.add(plan, port, family, &backends)?;
                }
            }
        }
        Ok(())
    }

    /// Adds the units of one port and family.
    fn add(
        &mut self,
        plan: &Plan<'_>,
        port: &PortPlan,
        family: Family,
        backends: &[Backend],
    ) -> Result<(), ManifestError> {
        let node = self.node;
        let fe = |addr: HostAddr, port_number: u16| Frontend {
            addr,
            port: port_number,
            proto: port.proto,
        };
        let of_family = |ip: &std::net::IpAddr| Family::of(*ip) == family;

        // (frontend, field) per scope.
        let mut internal = Vec::new();
        for (i, ip) in plan
            .cluster_ips
            .iter()
            .enumerate()
            .filter(|(_, ip)| of_family(ip))
        {
            let field = match plan.given_ips.iter().find(|(_, given)| given == ip) {
                Some((field, _)) => field.clone(),
                None if i == 0 => "spec.clusterIP (assigned)".to_string(),
                None => format!("spec.clusterIPs[{i}] (assigned)"),
            };
            internal.push((fe(HostAddr::Ip(*ip), port.port), field));
        }
        let mut external = Vec::new();
        if let Some(np) = port.node_port {
            let field = format!("{}.nodePort", port.field());
            if node.node_ips.is_empty() {
                let all = match family {
                    Family::V4 => HostAddr::AllV4,
                    Family::V6 => HostAddr::AllV6,
                };
                external.push((fe(all, np), field));
            } else {
                for ip in node.node_ips.iter().filter(|ip| of_family(ip)) {
                    external.push((fe(HostAddr::Ip(*ip), np), field.clone()));
                }
            }
        }
        for (field, ip) in plan.external_ips.iter().filter(|(_, ip)| of_family(ip)) {
            external.push((fe(HostAddr::Ip(*ip), port.port), field.clone()));
        }
        let ranges: Vec<model::Cidr> = plan
            .source_ranges
            .iter()
            .filter(|c| of_family(&c.addr))
            .copied()
            .collect();
        let mut lb = Vec::new();
        for (field, ip) in plan.ingress_ips.iter().filter(|(_, ip)| of_family(ip)) {
            if ranges.is_empty() && !plan.source_ranges.is_empty() {
                // Allowing all would be the opposite of what was asked.
                self.units.steps.push(Step::Warn(plan.source.warn(
                    field,
                    format_args!(
                        "spec.loadBalancerSourceRanges has no {family} range: {ip} not published"
                    ),
                )));
                continue;
            }
            lb.push((fe(HostAddr::Ip(*ip), port.port), field.clone()));
        }

        let family_backends: Vec<&Backend> =
            backends.iter().filter(|b| of_family(&b.addr)).collect();
        for (scope, frontends) in [
            (Scope::Internal, internal),
            (Scope::External, external),
            (Scope::Lb, lb),
        ] {
            let mut list = Vec::new();
            for (frontend, field) in frontends {
                let key = unit_key(plan, port, family, scope);
                if let Some(other) = self.owners.get(&frontend) {
                    if other.unit == key {
                        continue; // the same address listed twice
                    }
                    let other_field = &other.field;
                    return Err(plan.source.err(
                        field,
                        format!(
                            "frontend {frontend} is already published by this Service through \
                             {other_field}"
                        ),
                    ));
                }
                self.units.steps.push(Step::Claim {
                    frontend,
                    field: field.clone(),
                });
                self.owners.insert(frontend, Owner { unit: key, field });
                list.push(frontend);
            }
            if list.is_empty() {
                continue;
            }
            list.sort();
            let local = match scope {
                Scope::Internal => plan.internal_local,
                Scope::External | Scope::Lb => plan.external_local,
            };
            let endpoints: Vec<Endpoint> = family_backends
                .iter()
                .filter(|b| !local || b.locality == Locality::Local)
                .map(|b| Endpoint {
                    addr: b.addr,
                    port: b.port,
                    state: b.state,
                    placement: placement(local, b.locality),
                    reach: Reach::Direct,
                })
                .collect();
            // kube-proxy drops when only the Local policy left nothing, and
            // rejects when the Service has no endpoints at all.
            let when_empty = if local && endpoints.is_empty() && !family_backends.is_empty() {
                WhenEmpty::Drop
            } else {
                WhenEmpty::Reject
            };
            self.units.services.push(model::Service {
                key: unit_key(plan, port, family, scope),
                name: plan.id.clone(),
                port_name: port.name.clone(),
                container: String::new(),
                frontends: list,
                endpoints,
                affinity_timeout_s: plan.affinity_timeout_s,
                when_empty,
                source_ranges: if scope == Scope::Lb {
                    ranges.clone()
                } else {
                    Vec::new()
                },
            });
        }
        Ok(())
    }
}

/// Where an endpoint runs: a Local traffic policy keeps the client's
/// address wherever it is; else what its source says (its `nodeName`
/// against `--node-name`, or without one this node's pod CIDRs and
/// addresses, as the Node object gives them with `--kubernetes`).
fn placement(policy_local: bool, locality: Locality) -> Placement {
    match locality {
        _ if policy_local => Placement::KeepClient,
        Locality::Local => Placement::Local,
        Locality::Remote => Placement::Remote,
        Locality::Unknown => Placement::Unknown,
    }
}

/// E.g. `default/web:http/tcp ipv4 internal` (the port number when the port
/// has no name).
fn unit_key(plan: &Plan<'_>, port: &PortPlan, family: Family, scope: Scope) -> String {
    format!(
        "{}:{}/{} {} {}",
        plan.id,
        port.label(),
        port.proto.as_str(),
        family.label(),
        scope.as_str()
    )
}
