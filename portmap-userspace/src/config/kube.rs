//! The API server's part of the desired state: the Node object's view of
//! this node, and the rule that its Services are each their own. One that
//! cannot be published (invalid for portmap, or claiming a frontend a `-p`
//! spec, a manifest file or an older Service has) is rejected alone, and
//! keeps the units it had published, unless they now clash too.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::Loaded;
use crate::{
    k8s::{NodeConfig, Rejected, Source},
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

/// Rejects the API Services (the units `from_api` says are theirs) that
/// claim what `specs` or a manifest file publish, then gives each rejected
/// Service back its units of `last` where nothing published now claims
/// their frontends.
pub(super) fn settle(
    loaded: &mut Loaded,
    from_api: &dyn Fn(&str) -> bool,
    specs: &DesiredState,
    last: Option<&DesiredState>,
) {
    // What `-p` specs and files publish is theirs.
    let mut taken: HashMap<Frontend, String> = HashMap::new();
    for svc in &specs.services {
        for fe in &svc.frontends {
            taken.insert(*fe, format!("-p ({})", svc.key));
        }
    }
    for svc in loaded
        .desired
        .services
        .iter()
        .filter(|s| !from_api(&s.name))
    {
        for fe in &svc.frontends {
            taken.insert(*fe, format!("Service {} of a manifest file", svc.name));
        }
    }
    let mut clashing: BTreeMap<String, String> = BTreeMap::new();
    if !taken.is_empty() {
        for svc in loaded.desired.services.iter().filter(|s| from_api(&s.name)) {
            for fe in &svc.frontends {
                if let Some(owner) = taken.get(fe) {
                    clashing.entry(svc.name.clone()).or_insert_with(|| {
                        format!("frontend {fe} is already published by {owner}")
                    });
                }
            }
        }
    }
    if !clashing.is_empty() {
        loaded
            .desired
            .services
            .retain(|s| !clashing.contains_key(&s.name));
    }
    for (service, why) in clashing {
        // As the translation names an API Service.
        let source = Source::api(format!("Service {service}"));
        loaded.rejected.push(Rejected {
            error: source.err("", why),
            source,
            service,
        });
    }

    let Some(last) = last else { return };
    if loaded.rejected.is_empty() {
        return;
    }
    let rejected: BTreeSet<&str> = loaded.rejected.iter().map(|r| r.service.as_str()).collect();
    let mut kept: BTreeMap<&str, Vec<&crate::model::Service>> = BTreeMap::new();
    for unit in last
        .services
        .iter()
        .filter(|s| rejected.contains(s.name.as_str()))
    {
        kept.entry(unit.name.as_str()).or_default().push(unit);
    }
    if kept.is_empty() {
        return;
    }
    let mut claimed: HashSet<Frontend> = taken.keys().copied().collect();
    claimed.extend(
        loaded
            .desired
            .services
            .iter()
            .flat_map(|s| s.frontends.iter().copied()),
    );
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::super::Sources;
    use crate::kubeapi::Snapshot;

    fn sources(specs: &[&str]) -> Sources {
        Sources {
            specs: specs
                .iter()
                .map(|s| (s.to_string(), s.parse().unwrap()))
                .collect(),
            allow_from: Vec::new(),
            manifests: Vec::new(),
            node: crate::k8s::NodeConfig {
                node_name: Some("node-a".into()),
                ..crate::k8s::NodeConfig::default()
            },
            docker: None,
            masquerade: crate::locality::Masquerade::default(),
        }
    }

    fn service(
        name: &str,
        ip: &str,
        port: u16,
        extra: serde_json::Value,
    ) -> Arc<k8s_openapi::api::core::v1::Service> {
        let mut spec = json!({
            "clusterIP": ip, "clusterIPs": [ip], "type": "ClusterIP",
            "ports": [{"name": "http", "protocol": "TCP", "port": port, "targetPort": 3000}]
        });
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default"},
                "spec": spec
            }))
            .unwrap(),
        )
    }

    fn names(loaded: &super::Loaded) -> Vec<&str> {
        loaded
            .desired
            .services
            .iter()
            .map(|s| s.name.as_str())
            .collect()
    }

    #[test]
    fn a_bad_service_is_left_out_alone_and_keeps_what_it_had() {
        let s = sources(&[]);
        let good = service("good", "10.96.0.10", 80, json!({}));
        let web = service("web", "10.96.0.11", 80, json!({}));
        let api = Snapshot {
            services: vec![good.clone(), web],
            ..Snapshot::default()
        };
        let first = s.load_with_api(None, &api).unwrap();
        assert_eq!(names(&first), ["default/good", "default/web"]);
        assert!(first.rejected.is_empty());

        // web becomes invalid: reported, its last units stay; good applies.
        let bad = service(
            "web",
            "10.96.0.11",
            8080,
            json!({"sessionAffinity": "Sticky"}),
        );
        let api = Snapshot {
            services: vec![service("good", "10.96.0.10", 81, json!({})), bad],
            ..Snapshot::default()
        };
        let second = s.load_with_api(Some(&first), &api).unwrap();
        assert_eq!(second.rejected.len(), 1);
        assert_eq!(second.rejected[0].service, "default/web");
        let e = second.rejected[0].error.to_string();
        assert!(
            e.contains("Service default/web") && e.contains("spec.sessionAffinity"),
            "{e}"
        );
        let web_units: Vec<_> = second
            .desired
            .services
            .iter()
            .filter(|u| u.name == "default/web")
            .flat_map(|u| u.frontends.iter().map(|f| f.port))
            .collect();
        assert_eq!(
            web_units,
            [80],
            "its last published state, not the bad edit"
        );
        let good_ports: Vec<_> = second
            .desired
            .services
            .iter()
            .filter(|u| u.name == "default/good")
            .flat_map(|u| u.frontends.iter().map(|f| f.port))
            .collect();
        assert_eq!(good_ports, [81], "the others apply");
    }

    #[test]
    fn a_frontend_of_a_spec_stays_the_specs() {
        let s = sources(&["10.96.0.10:80:198.18.2.2:3000"]);
        let api = Snapshot {
            services: vec![
                service("clash", "10.96.0.10", 80, json!({})),
                service("fine", "10.96.0.12", 80, json!({})),
            ],
            ..Snapshot::default()
        };
        let loaded = s.load_with_api(None, &api).unwrap();
        assert_eq!(loaded.rejected.len(), 1);
        assert_eq!(loaded.rejected[0].service, "default/clash");
        assert!(
            loaded.rejected[0]
                .error
                .to_string()
                .contains("already published by -p"),
            "{}",
            loaded.rejected[0].error
        );
        assert!(names(&loaded).contains(&"default/fine"));
        assert!(names(&loaded).iter().all(|n| *n != "default/clash"));
    }

    /// The API server's endpoints are placed for SNAT as the manifests'
    /// are: by `nodeName` against this node's, else by the Node object's
    /// pod CIDRs; `Sources::load_with_api` then resolves their SNAT address.
    #[test]
    fn api_endpoints_are_placed_by_node_name_else_the_nodes_pod_cidrs() {
        use crate::model::Placement;
        let s = sources(&[]);
        let node = serde_json::from_value(json!({
            "metadata": {"name": "node-a"},
            "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]}
        }))
        .unwrap();
        let endpoint = |addr: &str, node: Option<&str>| {
            let mut ep = json!({"addresses": [addr], "conditions": {"ready": true}});
            if let Some(node) = node {
                ep["nodeName"] = json!(node);
            }
            ep
        };
        let slice = serde_json::from_value(json!({
            "metadata": {
                "name": "web-1", "namespace": "default",
                "labels": {"kubernetes.io/service-name": "web"}
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "protocol": "TCP", "port": 3000}],
            "endpoints": [
                endpoint("10.244.1.5", Some("node-a")),
                endpoint("10.244.2.5", Some("node-b")),
                endpoint("10.244.1.6", None),
                endpoint("10.244.3.7", None),
            ]
        }))
        .unwrap();
        let api = Snapshot {
            services: vec![service("web", "10.96.0.11", 80, json!({}))],
            slices: vec![Arc::new(slice)],
            node: Some(Arc::new(node)),
        };
        let loaded = s.load_with_api(None, &api).unwrap();
        let mut placed: Vec<(String, Placement)> = loaded
            .desired
            .services
            .iter()
            .flat_map(|u| &u.endpoints)
            .map(|e| (e.addr.to_string(), e.placement))
            .collect();
        placed.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            placed,
            [
                ("10.244.1.5".to_string(), Placement::Local),
                ("10.244.1.6".to_string(), Placement::Local),
                ("10.244.2.5".to_string(), Placement::Remote),
                ("10.244.3.7".to_string(), Placement::Remote),
            ]
        );
    }
}
