//! The API server's part of the desired state: the Node object's view of
//! this node, and the rule that its Services are each their own. One that
//! cannot be published (invalid for portmap, or claiming a frontend a `-p`
//! spec, a manifest file or an older Service has) is rejected alone, and
//! keeps the units it had published, unless they now clash too.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::Loaded;
use crate::{
    k8s::{Manifests, NodeConfig, Rejected},
    kubeapi::{NodeView, Snapshot},
    model::{DesiredState, Frontend},
};

/// The flags' node with the Node object's addresses and pod CIDRs.
pub(super) fn node_config(
    api: &Snapshot,
    base: &NodeConfig,
    warnings: &mut Vec<String>,
) -> NodeConfig {
    match &api.node {
        Some(node) => {
            let view = NodeView::of(node);
            for p in &view.problems {
                warnings.push(format!(
                    "Node {}: {p}",
                    node.metadata.name.as_deref().unwrap_or_default()
                ));
            }
            view.apply_to(base)
        }
        None => base.clone(),
    }
}

/// Rejects the API Services that claim what `specs` or a manifest file
/// publish, then gives each rejected Service back its units of `last`
/// where nothing published now claims their frontends.
pub(super) fn settle(
    loaded: &mut Loaded,
    manifests: &Manifests,
    specs: &DesiredState,
    last: Option<&DesiredState>,
) {
    let from_api: BTreeMap<String, &crate::k8s::Object<_>> = manifests
        .services
        .iter()
        .filter(|o| o.source.from_api())
        .map(|o| (format!("{}/{}", o.namespace, o.name), o))
        .collect();
    // What `-p` specs and files publish is theirs.
    let mut taken: BTreeMap<Frontend, String> = BTreeMap::new();
    for svc in &specs.services {
        for fe in &svc.frontends {
            taken.insert(*fe, format!("-p ({})", svc.key));
        }
    }
    for svc in loaded
        .desired
        .services
        .iter()
        .filter(|s| !from_api.contains_key(&s.name))
    {
        for fe in &svc.frontends {
            taken.insert(*fe, format!("Service {} of a manifest file", svc.name));
        }
    }
    let mut clashing: BTreeMap<String, String> = BTreeMap::new();
    for svc in loaded
        .desired
        .services
        .iter()
        .filter(|s| from_api.contains_key(&s.name))
    {
        for fe in &svc.frontends {
            if let Some(owner) = taken.get(fe) {
                clashing
                    .entry(svc.name.clone())
                    .or_insert_with(|| format!("frontend {fe} is already published by {owner}"));
            }
        }
    }
    loaded
        .desired
        .services
        .retain(|s| !clashing.contains_key(&s.name));
    for (service, why) in clashing {
        let obj = from_api[&service];
        loaded.rejected.push(Rejected {
            error: obj.source.err("", why),
            source: obj.source.clone(),
            service,
        });
    }

    let Some(last) = last else { return };
    let rejected: BTreeSet<&str> = loaded.rejected.iter().map(|r| r.service.as_str()).collect();
    let mut claimed: HashSet<Frontend> = taken.keys().copied().collect();
    claimed.extend(
        loaded
            .desired
            .services
            .iter()
            .flat_map(|s| s.frontends.iter().copied()),
    );
    let mut kept: BTreeMap<&str, Vec<&crate::model::Service>> = BTreeMap::new();
    for unit in last
        .services
        .iter()
        .filter(|s| rejected.contains(s.name.as_str()))
    {
        kept.entry(unit.name.as_str()).or_default().push(unit);
    }
    for (service, units) in kept {
        let clash = units
            .iter()
            .flat_map(|u| &u.frontends)
            .find(|fe| claimed.contains(fe));
        match clash {
            Some(fe) => loaded.warnings.push(format!(
                "Service {service}: its last published state is withdrawn too: {fe} is now \
                 published by another"
            )),
            None => {
                claimed.extend(units.iter().flat_map(|u| u.frontends.iter().copied()));
                loaded.desired.services.extend(units.into_iter().cloned());
            }
        }
    }
}
